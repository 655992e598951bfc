/// IP datagram reassembly as a pure state machine: RFC 791 §3.2 (IPv4), RFC 8200 §4.5 (IPv6),
/// with the hardening later RFCs and hard experience ask for: overlapping fragments drop the whole
/// datagram (RFC 5722), atomic fragments bypass the state (RFC 6946), the reassembled length is
/// bounded by the 16-bit length fields (the "ping of death"), and the memory and the number of
/// datagrams in progress are capped, the oldest giving way first.
///
/// Nothing here reads a clock: `now` is a monotonic time in microseconds passed by the caller, and
/// `nextDeadline` tells the caller when to call `expire`. The state is an immutable value; the
/// payload bytes it holds are copied into arrays it owns (fragments are rare, so simplicity wins
/// over pooling here).
namespace NetStack.Core.Ip

open System
open System.Runtime.CompilerServices
open NetStack.Core.Wire

/// Which datagram a fragment belongs to.
[<RequireQualifiedAccess>]
type ReassemblyKey =
    /// RFC 791 §3.2: IPv4 fragments belong together when source, destination, protocol and
    /// identification all match.
    | V4 of source: Ipv4Address * destination: Ipv4Address * protocol: byte * identification: uint16
    /// RFC 8200 §4.5: IPv6 fragments belong together when source, destination and the Fragment
    /// header's identification match (the next header is not part of the key; it comes from the
    /// first fragment).
    | V6 of source: Ipv6Address * destination: Ipv6Address * identification: uint32

/// One received fragment, as the engine reads it from a parsed IPv4 header or IPv6 Fragment header.
/// The spans are read only during `Reassembly.add`; the state copies whatever it keeps.
[<Struct; IsByRefLike>]
type Fragment =
    {
        /// The datagram this fragment belongs to.
        Key: ReassemblyKey
        /// Where the payload starts in the datagram's fragmentable part, in bytes (the wire's
        /// fragment offset field times 8).
        Offset: int
        /// The more-fragments flag (IPv4 MF, IPv6 M).
        MoreFragments: bool
        /// IPv4: the protocol field. IPv6: the Fragment header's next header. Only the value
        /// carried by the offset-0 fragment is used (RFC 8200 §4.5).
        NextHeader: byte
        /// Offset-0 fragment only: the bytes that go in front of the reassembled payload. IPv4:
        /// the whole header with options. IPv6: the unfragmentable part (fixed header and the
        /// extension headers before the Fragment header). Ignored for other offsets.
        Header: ReadOnlySpan<byte>
        /// The fragment's data, after all headers.
        Payload: ReadOnlySpan<byte>
    }

/// Limits of a reassembly state. Times are in microseconds, like every `now`.
type ReassemblyConfig =
    {
        /// How long an IPv4 datagram may stay incomplete, from its first fragment's arrival.
        Ipv4Timeout: int64
        /// How long an IPv6 datagram may stay incomplete, from its first fragment's arrival.
        Ipv6Timeout: int64
        /// Bytes all datagrams in progress may hold together (payload, kept headers and a fixed
        /// bookkeeping charge per fragment, see `Reassembly.FragmentOverhead`).
        MaxBytes: int64
        /// Datagrams in progress (and remembered poisoned keys) held at once.
        MaxDatagrams: int
        /// Distinct fragments one datagram may hold; bounds the work a flood of tiny fragments
        /// can cause (every add scans the datagram's fragments).
        MaxFragmentsPerDatagram: int
    }

    /// 30 s for IPv4 (RFC 791 suggests a 15 s lower bound and RFC 1122 §3.3.2 60..120 s; 30 s is
    /// Linux's ipfrag_time), 60 s for IPv6 (RFC 8200 §4.5), 4 MiB in all (Linux's
    /// ipfrag_high_thresh), 256 datagrams, 256 fragments per datagram (a 65535-byte datagram
    /// needs 119 fragments at IPv4's 576-byte minimum reassembly size).
    static member Default =
        {
            Ipv4Timeout = 30_000_000L
            Ipv6Timeout = 60_000_000L
            MaxBytes = 4L * 1024L * 1024L
            MaxDatagrams = 256
            MaxFragmentsPerDatagram = 256
        }

/// A datagram put back together.
type ReassembledDatagram =
    {
        /// The datagram's key.
        Key: ReassemblyKey
        /// The offset-0 fragment's header bytes followed by the whole payload. The caller
        /// still has to patch the header: IPv4 total length, flags, fragment offset and checksum;
        /// IPv6 payload length and the next header field of the last unfragmentable header.
        Packet: byte[]
        /// How many bytes at the start of `Packet` are the header.
        HeaderLength: int
        /// The next header (protocol) carried by the offset-0 fragment.
        NextHeader: byte
    }

    /// The reassembled payload's length in bytes.
    member this.PayloadLength = this.Packet.Length - this.HeaderLength

/// The offset-0 fragment of a datagram that was given up, kept so an ICMP Time Exceeded
/// (code 1, "fragment reassembly time exceeded") can quote it.
type FirstFragment =
    {
        /// The header bytes the offset-0 fragment carried (see `Fragment.Header`).
        Header: byte[]
        /// The offset-0 fragment's payload.
        Payload: byte[]
        /// The next header (protocol) the offset-0 fragment carried.
        NextHeader: byte
    }

/// Why a datagram in progress was given up without being completed.
[<RequireQualifiedAccess>]
type AbandonReason =
    /// Its timeout passed (RFC 791 §3.2, RFC 8200 §4.5).
    | TimedOut
    /// It was the oldest when the memory or datagram cap had to make room.
    | Evicted

/// A datagram in progress that was given up.
type Abandoned =
    {
        /// The datagram's key.
        Key: ReassemblyKey
        /// Why it was given up.
        Reason: AbandonReason
        /// The offset-0 fragment when it had arrived. RFC 792 and RFC 8200 §4.5 ask for an ICMP
        /// Time Exceeded (code 1) on a timeout only in that case, quoting this fragment.
        FirstFragment: FirstFragment voption
    }

/// Why a fragment was dropped.
[<RequireQualifiedAccess>]
type DropReason =
    /// It overlaps a fragment already held without being an exact duplicate (RFC 5722). The
    /// datagram is discarded and its key poisoned.
    | Overlap
    /// The reassembled datagram would exceed the 65535-byte IPv4 total length or IPv6 payload
    /// length (RFC 8200 §4.5; the IPv4 "ping of death"). The datagram is discarded and its key poisoned.
    | TooLarge
    /// More fragments follow but the payload is empty or not a multiple of 8 bytes (RFC 8200 §4.5;
    /// RFC 791 fragments on 8-byte boundaries). Only this fragment is dropped.
    | BadLength
    /// The offset is negative or not a multiple of 8: no wire header can say so. Only this
    /// fragment is dropped.
    | BadOffset
    /// It contradicts the datagram's end: two last fragments disagree, or data lies beyond the
    /// end a last fragment set. The datagram is discarded and its key poisoned.
    | Inconsistent
    /// The datagram would hold more than `MaxFragmentsPerDatagram` fragments. The datagram is
    /// discarded and its key poisoned.
    | TooManyFragments
    /// The datagram alone would hold more than `MaxBytes`. The datagram is discarded and its key poisoned.
    | MemoryLimit
    /// Its datagram was discarded earlier; the key is remembered until that datagram's deadline
    /// so its remaining fragments cannot start a new one.
    | KeyPoisoned

/// What became of one fragment.
[<RequireQualifiedAccess>]
type FragmentOutcome =
    /// It completed its datagram.
    | Completed of datagram: ReassembledDatagram
    /// It is held until the rest of its datagram arrives.
    | Held
    /// An exact copy (offset, length, flag and bytes) of a fragment already held; nothing changed.
    | DuplicateIgnored
    /// Offset 0 with no more fragments: a whole datagram with a fragment header or ID (RFC 6946).
    /// Deliver the packet as it is; the state was not touched.
    | Atomic
    /// It was dropped, for the reason given.
    | Dropped of reason: DropReason

/// The result of `Reassembly.add`.
type AddResult =
    {
        /// What became of the fragment.
        Outcome: FragmentOutcome
        /// Other datagrams this call gave up, oldest first: those whose deadline had passed at
        /// `now`, then those evicted to make room.
        Abandoned: Abandoned list
    }

/// One fragment held by a datagram in progress.
[<Struct>]
type internal Piece =
    {
        Offset: int
        Data: byte[]
        More: bool
    }

/// A datagram in progress. Pieces never overlap, so `Received` is also the number of distinct
/// payload bytes covered.
type internal Progress =
    {
        /// The fragments held, newest first (order does not matter: each knows its offset).
        Pieces: Piece list
        PieceCount: int
        Received: int
        /// The highest end of any piece.
        MaxEnd: int
        /// The payload length, known once a last fragment (no more fragments) arrived.
        End: int voption
        First: FirstFragment voption
        /// Bytes charged against `MaxBytes`.
        Charge: int64
    }

type internal EntryState =
    | InProgress of Progress
    /// Discarded; its fragments are dropped until the deadline.
    | Poisoned

type internal Entry =
    {
        /// Creation order: the smaller, the older.
        Seq: int64
        Deadline: int64
        State: EntryState
    }

/// The datagrams in progress. An immutable value: every operation returns a new state.
type ReassemblyState =
    internal
        {
            Config: ReassemblyConfig
            Entries: Map<ReassemblyKey, Entry>
            /// Creation order, for eviction.
            ByAge: Map<int64, ReassemblyKey>
            /// Deadline order (ties by creation), for expiry.
            ByDeadline: Map<struct (int64 * int64), ReassemblyKey>
            BytesHeld: int64
            NextSeq: int64
        }

/// Operations on a `ReassemblyState`.
[<RequireQualifiedAccess>]
module Reassembly =

    /// The largest IPv4 total length or IPv6 payload length a 16-bit field can state.
    [<Literal>]
    let MaxDatagramLength = 65535

    /// Bytes charged per held fragment on top of its data: an estimate of the array and list
    /// cell headers, so that a flood of 8-byte fragments is not nearly free.
    [<Literal>]
    let FragmentOverhead = 64

    // The header bytes that count against MaxDatagramLength before the first fragment shows the
    // real ones: IPv4 total length includes the header (at least 20 bytes); IPv6 payload length
    // excludes the 40-byte fixed header but includes the unfragmentable extension headers.
    [<Literal>]
    let private Ipv4MinimumHeader = 20

    [<Literal>]
    let private Ipv6FixedHeader = 40

    /// An empty state with the given limits; throws ArgumentException for a limit below 1.
    let empty (config: ReassemblyConfig) : ReassemblyState =
        if config.Ipv4Timeout <= 0L then
            invalidArg (nameof config) "Ipv4Timeout must be positive."

        if config.Ipv6Timeout <= 0L then
            invalidArg (nameof config) "Ipv6Timeout must be positive."

        if config.MaxBytes <= 0L then
            invalidArg (nameof config) "MaxBytes must be positive."

        if config.MaxDatagrams <= 0 then
            invalidArg (nameof config) "MaxDatagrams must be positive."

        if config.MaxFragmentsPerDatagram <= 0 then
            invalidArg (nameof config) "MaxFragmentsPerDatagram must be positive."

        {
            Config = config
            Entries = Map.empty
            ByAge = Map.empty
            ByDeadline = Map.empty
            BytesHeld = 0L
            NextSeq = 0L
        }

    /// Bytes held by all datagrams in progress, as charged against `MaxBytes`.
    let bytesHeld (state: ReassemblyState) = state.BytesHeld

    /// Datagrams in progress plus remembered poisoned keys.
    let count (state: ReassemblyState) = state.Entries.Count

    /// The earliest deadline of any datagram (or poisoned key): call `expire` then.
    let nextDeadline (state: ReassemblyState) : int64 voption =
        if state.ByDeadline.IsEmpty then
            ValueNone
        else
            let struct (deadline, _), _ = Map.minKeyValue state.ByDeadline
            ValueSome deadline

    let private timeoutOf (config: ReassemblyConfig) (key: ReassemblyKey) =
        match key with
        | ReassemblyKey.V4 _ -> config.Ipv4Timeout
        | ReassemblyKey.V6 _ -> config.Ipv6Timeout

    /// Header bytes that count against MaxDatagramLength (see above).
    let private headerOverhead (key: ReassemblyKey) (headerLength: int voption) =
        match key, headerLength with
        | ReassemblyKey.V4 _, ValueSome h -> h
        | ReassemblyKey.V4 _, ValueNone -> Ipv4MinimumHeader
        | ReassemblyKey.V6 _, ValueSome h -> max 0 (h - Ipv6FixedHeader)
        | ReassemblyKey.V6 _, ValueNone -> 0

    let private chargeOf (p: Piece) =
        int64 (FragmentOverhead + p.Data.Length)

    let private emptyProgress =
        {
            Pieces = []
            PieceCount = 0
            Received = 0
            MaxEnd = 0
            End = ValueNone
            First = ValueNone
            Charge = 0L
        }

    let private chargeOfEntry (entry: Entry) =
        match entry.State with
        | InProgress p -> p.Charge
        | Poisoned -> 0L

    let private remove (key: ReassemblyKey) (entry: Entry) (state: ReassemblyState) =
        { state with
            Entries = Map.remove key state.Entries
            ByAge = Map.remove entry.Seq state.ByAge
            ByDeadline = Map.remove (struct (entry.Deadline, entry.Seq)) state.ByDeadline
            BytesHeld = state.BytesHeld - chargeOfEntry entry
        }

    /// Replaces an existing entry's state (its age and deadline stay).
    let private replace (key: ReassemblyKey) (entry: Entry) (newState: EntryState) (state: ReassemblyState) =
        let updated = { entry with State = newState }

        { state with
            Entries = Map.add key updated state.Entries
            BytesHeld = state.BytesHeld - chargeOfEntry entry + chargeOfEntry updated
        }

    let private abandonedOf (key: ReassemblyKey) (reason: AbandonReason) (entry: Entry) =
        match entry.State with
        | InProgress p ->
            ValueSome
                {
                    Key = key
                    Reason = reason
                    FirstFragment = p.First
                }
        | Poisoned -> ValueNone

    let private consIf (item: Abandoned voption) (acc: Abandoned list) =
        match item with
        | ValueSome a -> a :: acc
        | ValueNone -> acc

    /// Removes every entry whose deadline is at or before `now`; `acc` collects reports newest first.
    let rec private expireInto (now: int64) (state: ReassemblyState) (acc: Abandoned list) =
        if state.ByDeadline.IsEmpty then
            state, acc
        else
            let struct (deadline, _), key = Map.minKeyValue state.ByDeadline

            if deadline > now then
                state, acc
            else
                let entry = state.Entries[key]
                expireInto now (remove key entry state) (consIf (abandonedOf key AbandonReason.TimedOut entry) acc)

    /// Gives up every datagram whose deadline is at or before `now`, returning the new state and
    /// the datagrams timed out, earliest deadline first. Poisoned keys are forgotten silently.
    let expire (now: int64) (state: ReassemblyState) : ReassemblyState * Abandoned list =
        let state, acc = expireInto now state []
        state, List.rev acc

    /// Makes room for one more entry by evicting the oldest ones.
    let rec private evictForCount (state: ReassemblyState) (acc: Abandoned list) =
        if state.Entries.Count < state.Config.MaxDatagrams then
            state, acc
        else
            let _, key = Map.minKeyValue state.ByAge
            let entry = state.Entries[key]
            evictForCount (remove key entry state) (consIf (abandonedOf key AbandonReason.Evicted entry) acc)

    /// Evicts the oldest datagrams in progress other than `keep` until the memory cap holds.
    let rec private evictForMemory (keep: ReassemblyKey) (state: ReassemblyState) (acc: Abandoned list) =
        if state.BytesHeld <= state.Config.MaxBytes then
            state, acc
        else
            let victim =
                state.ByAge
                |> Seq.tryPick (fun (KeyValue(_, key)) ->
                    if key = keep || chargeOfEntry state.Entries[key] = 0L then
                        None
                    else
                        Some key)

            match victim with
            | Some key ->
                let entry = state.Entries[key]
                evictForMemory keep (remove key entry state) (consIf (abandonedOf key AbandonReason.Evicted entry) acc)
            | None -> state, acc

    /// Adds a fresh entry, evicting the oldest first when the datagram cap is reached.
    let private create (now: int64) (key: ReassemblyKey) (entryState: EntryState) (state: ReassemblyState) acc =
        let state, acc = evictForCount state acc

        let entry =
            {
                Seq = state.NextSeq
                Deadline = now + timeoutOf state.Config key
                State = entryState
            }

        { state with
            Entries = Map.add key entry state.Entries
            ByAge = Map.add entry.Seq key state.ByAge
            ByDeadline = Map.add (struct (entry.Deadline, entry.Seq)) key state.ByDeadline
            BytesHeld = state.BytesHeld + chargeOfEntry entry
            NextSeq = state.NextSeq + 1L
        },
        acc

    /// Discards a datagram (existing or not) and remembers its key until its deadline.
    let private poison (now: int64) (key: ReassemblyKey) (existing: Entry voption) (state: ReassemblyState) acc =
        match existing with
        | ValueSome entry -> replace key entry Poisoned state, acc
        | ValueNone -> create now key Poisoned state acc

    /// Puts the payload back together behind the first fragment's header.
    let private assemble (key: ReassemblyKey) (progress: Progress) (first: FirstFragment) (payloadLength: int) =
        let headerLength = first.Header.Length
        let packet = Array.zeroCreate<byte>(headerLength + payloadLength)
        Buffer.BlockCopy(first.Header, 0, packet, 0, headerLength)

        for p in progress.Pieces do
            Buffer.BlockCopy(p.Data, 0, packet, headerLength + p.Offset, p.Data.Length)

        {
            Key = key
            Packet = packet
            HeaderLength = headerLength
            NextHeader = first.NextHeader
        }

    // How a new fragment relates to the pieces held.
    [<Literal>]
    let private Fits = 0

    [<Literal>]
    let private Duplicate = 1

    [<Literal>]
    let private Overlaps = 2

    [<Literal>]
    let private Contradicts = 3

    /// Compares the fragment [offset, offset + payload.Length) with every piece held (RFC 5722:
    /// any overlap that is not an exact duplicate condemns the datagram).
    let private classify (pieces: Piece list) (offset: int) (more: bool) (payload: ReadOnlySpan<byte>) =
        let fragmentEnd = offset + payload.Length
        let mutable verdict = Fits
        let mutable rest = pieces

        while verdict = Fits && not rest.IsEmpty do
            let p = rest.Head
            let pieceEnd = p.Offset + p.Data.Length

            if p.Offset = offset && p.Data.Length = payload.Length then
                if not (MemoryExtensions.SequenceEqual(payload, ReadOnlySpan<byte>(p.Data))) then
                    verdict <- Overlaps
                elif p.More <> more then
                    // Same bytes, but one says it ends the datagram and the other does not.
                    verdict <- Contradicts
                else
                    verdict <- Duplicate
            elif offset < pieceEnd && p.Offset < fragmentEnd then
                verdict <- Overlaps

            rest <- rest.Tail

        verdict

    /// Checks a fragment against the datagram's end (RFC 791 §3.2, RFC 8200 §4.5): a last
    /// fragment fixes the end, which every other fragment must respect.
    let private contradictsEnd (progress: Progress) (fragmentEnd: int) (more: bool) =
        match progress.End with
        | ValueSome e -> if more then fragmentEnd > e else fragmentEnd <> e
        | ValueNone -> not more && progress.MaxEnd > fragmentEnd

    /// Feeds one fragment received at `now`. Due datagrams are expired first (reported in
    /// `Abandoned`), so a fragment never joins a datagram past its deadline. Never throws on
    /// any descriptor values (a null key, a caller bug, raises ArgumentNullException).
    let add (now: int64) (fragment: Fragment) (state: ReassemblyState) : ReassemblyState * AddResult =
        let key = fragment.Key

        if isNull (box key) then
            nullArg (nameof fragment)

        let state, acc = expireInto now state []

        let finish (state: ReassemblyState) (outcome: FragmentOutcome) (acc: Abandoned list) =
            state,
            {
                Outcome = outcome
                Abandoned = List.rev acc
            }

        let offset = fragment.Offset
        let more = fragment.MoreFragments
        let length = fragment.Payload.Length

        // RFC 6946 §4: an atomic fragment is processed on its own, whatever else is in progress.
        if offset = 0 && not more then
            finish state FragmentOutcome.Atomic acc
        else
            let existing =
                match Map.tryFind key state.Entries with
                | Some e -> ValueSome e
                | None -> ValueNone

            let drop reason =
                finish state (FragmentOutcome.Dropped reason) acc

            let discard reason =
                let state, acc = poison now key existing state acc
                finish state (FragmentOutcome.Dropped reason) acc

            match existing with
            | ValueSome { State = Poisoned } -> drop DropReason.KeyPoisoned
            | _ when offset < 0 || offset % 8 <> 0 -> drop DropReason.BadOffset
            // RFC 8200 §4.5: a fragment with M set must carry a multiple of 8 bytes; an empty one
            // would add nothing but bookkeeping.
            | _ when more && (length = 0 || length % 8 <> 0) -> drop DropReason.BadLength
            | _ ->
                let progress =
                    match existing with
                    | ValueSome { State = InProgress p } -> p
                    | _ -> emptyProgress

                let headerLength =
                    if offset = 0 then
                        ValueSome fragment.Header.Length
                    else
                        progress.First |> ValueOption.map (fun f -> f.Header.Length)

                // int64: a garbage offset plus length must not wrap around.
                let fragmentEnd64 = int64 offset + int64 length
                let highest = max fragmentEnd64 (int64 progress.MaxEnd)

                if highest + int64 (headerOverhead key headerLength) > int64 MaxDatagramLength then
                    discard DropReason.TooLarge
                else
                    let fragmentEnd = int fragmentEnd64

                    if contradictsEnd progress fragmentEnd more then
                        discard DropReason.Inconsistent
                    else
                        match classify progress.Pieces offset more fragment.Payload with
                        | Duplicate -> finish state FragmentOutcome.DuplicateIgnored acc
                        | Overlaps -> discard DropReason.Overlap
                        | Contradicts -> discard DropReason.Inconsistent
                        | _ when progress.PieceCount >= state.Config.MaxFragmentsPerDatagram ->
                            discard DropReason.TooManyFragments
                        | _ ->
                            let piece =
                                {
                                    Offset = offset
                                    Data = fragment.Payload.ToArray()
                                    More = more
                                }

                            let first =
                                if offset = 0 then
                                    ValueSome
                                        {
                                            Header = fragment.Header.ToArray()
                                            Payload = piece.Data
                                            NextHeader = fragment.NextHeader
                                        }
                                else
                                    progress.First

                            let headerCharge =
                                match first with
                                | ValueSome f -> int64 f.Header.Length
                                | ValueNone -> 0L

                            let pieceCharges =
                                progress.Charge
                                - (match progress.First with
                                   | ValueSome f -> int64 f.Header.Length
                                   | ValueNone -> 0L)
                                + chargeOf piece

                            let grown =
                                {
                                    Pieces = piece :: progress.Pieces
                                    PieceCount = progress.PieceCount + 1
                                    Received = progress.Received + length
                                    MaxEnd = max progress.MaxEnd fragmentEnd
                                    End = if more then progress.End else ValueSome fragmentEnd
                                    First = first
                                    Charge = pieceCharges + headerCharge
                                }

                            match grown.End, grown.First with
                            | ValueSome e, ValueSome f when grown.Received = e ->
                                // Complete: pieces never overlap and all lie below the end, so
                                // they cover [0, end) exactly.
                                let state =
                                    match existing with
                                    | ValueSome entry -> remove key entry state
                                    | ValueNone -> state

                                finish state (FragmentOutcome.Completed(assemble key grown f e)) acc
                            | _ when grown.Charge > state.Config.MaxBytes -> discard DropReason.MemoryLimit
                            | _ ->
                                let state, acc =
                                    match existing with
                                    | ValueSome entry -> replace key entry (InProgress grown) state, acc
                                    | ValueNone -> create now key (InProgress grown) state acc

                                let state, acc = evictForMemory key state acc
                                finish state FragmentOutcome.Held acc

    /// Checks the state's internal bookkeeping; returns the first broken invariant, if any.
    /// For tests.
    let internal audit (state: ReassemblyState) : string option =
        let problems = ResizeArray<string>()
        let mutable total = 0L

        for KeyValue(key, entry) in state.Entries do
            if Map.tryFind entry.Seq state.ByAge <> Some key then
                problems.Add $"{key}: missing from the age index"

            if Map.tryFind (struct (entry.Deadline, entry.Seq)) state.ByDeadline <> Some key then
                problems.Add $"{key}: missing from the deadline index"

            match entry.State with
            | Poisoned -> ()
            | InProgress p ->
                let header =
                    match p.First with
                    | ValueSome f -> int64 f.Header.Length
                    | ValueNone -> 0L

                let charge = header + (p.Pieces |> List.sumBy chargeOf)

                if charge <> p.Charge then
                    problems.Add $"{key}: charge {p.Charge} but holds {charge}"

                if p.PieceCount <> p.Pieces.Length then
                    problems.Add $"{key}: piece count"

                if p.Received <> (p.Pieces |> List.sumBy (fun x -> x.Data.Length)) then
                    problems.Add $"{key}: received"

                let sorted = p.Pieces |> List.sortBy (fun x -> x.Offset) |> List.toArray

                for i in 1 .. sorted.Length - 1 do
                    if sorted[i - 1].Offset + sorted[i - 1].Data.Length > sorted[i].Offset then
                        problems.Add $"{key}: pieces overlap"

                if p.PieceCount > state.Config.MaxFragmentsPerDatagram then
                    problems.Add $"{key}: too many pieces"

                total <- total + p.Charge

        if total <> state.BytesHeld then
            problems.Add $"bytes held {state.BytesHeld} but entries hold {total}"

        if state.BytesHeld > state.Config.MaxBytes then
            problems.Add $"bytes held {state.BytesHeld} above the cap {state.Config.MaxBytes}"

        if state.Entries.Count > state.Config.MaxDatagrams then
            problems.Add $"{state.Entries.Count} datagrams above the cap {state.Config.MaxDatagrams}"

        if
            state.ByAge.Count <> state.Entries.Count
            || state.ByDeadline.Count <> state.Entries.Count
        then
            problems.Add "index sizes differ"

        if problems.Count = 0 then None else Some problems[0]
