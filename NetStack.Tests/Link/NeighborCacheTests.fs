/// The neighbor cache: the Stateless model of one entry's states (committed as DOT), fixed
/// scenarios of RFC 4861 §7.3, and random event sequences checked against the model and bounds.
module NetStack.Tests.NeighborCacheTests

open System
open System.IO
open Expecto
open FsCheck
open FsCheck.FSharp
open Microsoft.FSharp.Reflection
open NetStack.Core.Link
open NetStack.Tests.TestUtil

let private casesOf<'T> () =
    FSharpType.GetUnionCases typeof<'T>
    |> Array.map (fun c -> FSharpValue.MakeUnion(c, [||]) :?> 'T)
    |> List.ofArray

let private allStates = casesOf<NeighborState>()
let private allTriggers = casesOf<NeighborTrigger>()

let private normalise (text: string) =
    text.Replace("\r\n", "\n").TrimEnd('\n')

/// Small timers (microseconds) so scenarios read easily.
let private config =
    { NeighborCache.defaultConfig with
        ReachableTime = 30_000L
        RetransTimer = 1_000L
        DelayFirstProbeTime = 5_000L
        StaleLifetime = 60_000L
        MaxEntries = 4
        MaxQueuedPerEntry = 3
        MaxQueuedBytes = 1000
    }

let private macA = MacAddress 0x0200_0000_0001UL
let private macB = MacAddress 0x0200_0000_0002UL

/// A packet that names itself: its first four bytes are its id.
let private packet (id: int) (size: int) =
    let p = Array.zeroCreate (max 4 size)
    BitConverter.TryWriteBytes(Span p, id) |> ignore
    p

let private idOf (p: byte[]) = BitConverter.ToInt32(p, 0)

/// One input to the cache.
type CacheStep =
    | SendTo of address: int * size: int
    | Advertise of address: int * mac: int * solicited: bool * override': bool
    | Learn of address: int * mac: int * create: bool
    | Advance of micros: int64

let private genStep =
    let address = Gen.choose (0, 7)
    let mac = Gen.choose (1, 3)

    Gen.frequency
        [
            6, Gen.map2 (fun a s -> SendTo(a, s)) address (Gen.choose (4, 300))
            3,
            Gen.map4
                (fun a m s o -> Advertise(a, m, s, o))
                address
                mac
                (ArbMap.defaults |> ArbMap.generate<bool>)
                (ArbMap.defaults |> ArbMap.generate<bool>)
            2, Gen.map3 (fun a m c -> Learn(a, m, c)) address mac (ArbMap.defaults |> ArbMap.generate<bool>)
            4,
            Gen.frequency
                [
                    3, Gen.choose64 (1L, 2_000L)
                    2, Gen.choose64 (1L, 10_000L)
                    1, Gen.choose64 (1L, 100_000L)
                ]
            |> Gen.map Advance
        ]

let private expectBounded (cache: NeighborCache<int>) =
    Expect.isLessThanOrEqual cache.Entries.Count cache.Config.MaxEntries "entries bounded"

    let queued = cache.Entries |> Seq.sumBy (fun kv -> kv.Value.QueuedBytes)
    Expect.equal cache.QueuedBytes queued "the byte count is the sum of the queues"
    Expect.isLessThanOrEqual queued cache.Config.MaxQueuedBytes "queued bytes bounded"

    let earliest =
        if cache.Entries.IsEmpty then
            Int64.MaxValue
        else
            cache.Entries |> Seq.map (fun kv -> kv.Value.Deadline) |> Seq.min

    Expect.equal cache.NextDeadline earliest "NextDeadline is the earliest deadline"

    for KeyValue(address, e) in cache.Entries do
        Expect.notEqual e.State NeighborState.Absent $"{address}: no Absent entries stored"
        Expect.isLessThanOrEqual e.Queue.Length cache.Config.MaxQueuedPerEntry $"{address}: queue bounded"
        Expect.equal (e.Queue |> List.sumBy Array.length) e.QueuedBytes $"{address}: queue bytes"

        if e.State <> NeighborState.Incomplete then
            Expect.isEmpty e.Queue $"{address}: only INCOMPLETE entries hold packets"

// ---- The oracle: the test classifies each input itself, the model says where it leads -----

/// What the oracle holds for one address: the state the model says, the cached address (a MAC
/// number), the timer RFC 4861 runs for that state, the solicitations sent in this INCOMPLETE or
/// PROBE phase, when the entry last moved (the eviction order), and the waiting packets.
type private OracleEntry =
    {
        State: NeighborState
        Mac: int
        Deadline: int64
        Solicitations: int
        Touched: int64
        /// (packet id, size), oldest first.
        Queue: (int * int) list
    }

/// The oracle of one cache: its entries, and what the current input is expected to do.
type private NeighborOracle =
    {
        Entries: Collections.Generic.Dictionary<int, OracleEntry>
        /// Solicitations the input must send: (address, unicast MAC or 0 for multicast).
        Solicits: ResizeArray<int * int>
        /// Every (state, trigger) classified.
        Classified: ResizeArray<struct (NeighborState * NeighborTrigger)>
    }

let private stateIn (o: NeighborOracle) (address: int) =
    match o.Entries.TryGetValue address with
    | true, e -> e.State
    | _ -> NeighborState.Absent

let private queuedBytes (o: NeighborOracle) =
    o.Entries.Values |> Seq.sumBy (fun e -> e.Queue |> List.sumBy snd)

/// `trigger` happens to `address` at `now`: the model says where it leads; the timers and the
/// queue follow RFC 4861 (§7.2.2 queue and RetransTimer, §7.3.3 ReachableTime,
/// DELAY_FIRST_PROBE_TIME, MAX_*_SOLICIT) and the cache's documented bounds (the stale lifetime,
/// MaxQueuedPerEntry with the oldest dropped, MaxQueuedBytes). `mac` is the address an
/// advertisement or solicitation carries, `packet` the packet a Send carries.
let private fireNeighbor
    (o: NeighborOracle)
    (now: int64)
    (address: int)
    (trigger: NeighborTrigger)
    (mac: int)
    (packet: int * int)
    =
    let state = stateIn o address
    o.Classified.Add(struct (state, trigger))

    let entry =
        match o.Entries.TryGetValue address with
        | true, e -> e
        | _ -> Unchecked.defaultof<OracleEntry>

    let resolved (next: NeighborState) (mac: int) =
        o.Entries.[address] <-
            {
                State = next
                Mac = mac
                Deadline =
                    now
                    + (if next = NeighborState.Reachable then
                           config.ReachableTime
                       else
                           config.StaleLifetime)
                Solicitations = 0
                Touched = now
                Queue = []
            }

    match NeighborModel.target state trigger with
    | ValueSome NeighborState.Absent -> o.Entries.Remove address |> ignore
    | ValueSome next ->
        match trigger with
        | NeighborTrigger.Send when state = NeighborState.Absent ->
            // §7.2.2: create the entry, queue the packet, multicast a solicitation.
            o.Entries.[address] <-
                {
                    State = next
                    Mac = 0
                    Deadline = now + config.RetransTimer
                    Solicitations = 1
                    Touched = now
                    Queue = [ packet ]
                }

            o.Solicits.Add((address, 0))
        | NeighborTrigger.Send ->
            // §7.3.3: STALE → DELAY.
            o.Entries.[address] <-
                { entry with
                    State = next
                    Deadline = now + config.DelayFirstProbeTime
                    Touched = now
                }
        | NeighborTrigger.RetransmitTimeout ->
            o.Entries.[address] <-
                { entry with
                    Solicitations = entry.Solicitations + 1
                    Deadline = now + config.RetransTimer
                }

            o.Solicits.Add((address, (if state = NeighborState.Probe then entry.Mac else 0)))
        | NeighborTrigger.DelayTimeout ->
            o.Entries.[address] <-
                { entry with
                    State = next
                    Solicitations = 1
                    Deadline = now + config.RetransTimer
                    Touched = now
                }

            o.Solicits.Add((address, entry.Mac))
        | NeighborTrigger.ReachableTimeout
        | NeighborTrigger.ConflictingAdvertisement ->
            // The cached address stays; only the state and its timer change (§7.2.5 a).
            o.Entries.[address] <-
                { entry with
                    State = next
                    Deadline = now + config.StaleLifetime
                    Touched = now
                }
        | _ -> resolved next mac
    | ValueNone ->
        // Ignored: an INCOMPLETE entry queues the packet (§7.2.2), the oldest making room.
        if trigger = NeighborTrigger.Send && state = NeighborState.Incomplete then
            if queuedBytes o + snd packet <= config.MaxQueuedBytes then
                let queue = entry.Queue @ [ packet ]

                o.Entries.[address] <-
                    { entry with
                        Queue =
                            if queue.Length > config.MaxQueuedPerEntry then
                                List.tail queue
                            else
                                queue
                    }

/// The entries a full cache may give up for a newcomer: the least recently moved REACHABLE or
/// STALE ones (the cache's documented policy; RFC 4861 leaves it to the implementation).
let private evictable (o: NeighborOracle) =
    let candidates =
        o.Entries
        |> Seq.filter (fun kv -> kv.Value.State = NeighborState.Reachable || kv.Value.State = NeighborState.Stale)
        |> Seq.toList

    if candidates.IsEmpty then
        []
    else
        let oldest = candidates |> List.map (fun kv -> kv.Value.Touched) |> List.min

        candidates
        |> List.filter (fun kv -> kv.Value.Touched = oldest)
        |> List.map (fun kv -> kv.Key)

/// Makes room for a new entry when the cache is full: the victim is the candidate the engine
/// removed (which of equally old ones is the engine's choice). Returns false when nothing can go.
let private makeRoom (o: NeighborOracle) (now: int64) (after: NeighborCache<int>) =
    if o.Entries.Count < config.MaxEntries then
        true
    else
        match evictable o with
        | [] -> false
        | candidates ->
            let victim =
                candidates
                |> List.tryFind (fun a -> NeighborCache.state a after = NeighborState.Absent)
                |> Option.defaultValue candidates.Head

            fireNeighbor o now victim NeighborTrigger.Evict 0 (0, 0)
            true

/// The engine's cache must be the oracle's: every address's state, every resolved address, the
/// next deadline, and the solicitations of the input. (Messages are made only on failure: this
/// runs after every input of thousands of sequences.)
let private expectOracle
    (what: unit -> string)
    (o: NeighborOracle)
    (cache: NeighborCache<int>)
    (actions: NeighborAction<int> list)
    =
    for address in 0..7 do
        let expected = stateIn o address
        let actual = NeighborCache.state address cache

        if actual <> expected then
            failtest $"{what ()}: address {address} is {actual}, {expected} by the model"

        match o.Entries.TryGetValue address with
        | true, e when
            e.State <> NeighborState.Incomplete
            && cache.Entries.[address].Mac <> MacAddress(uint64 e.Mac)
            ->
            failtest $"{what ()}: address {address} has {cache.Entries.[address].Mac}, MAC {e.Mac} by the model"
        | _ -> ()

    let deadline =
        if o.Entries.Count = 0 then
            Int64.MaxValue
        else
            o.Entries.Values |> Seq.map (fun e -> e.Deadline) |> Seq.min

    if cache.NextDeadline <> deadline then
        failtest $"{what ()}: the next timer is at {cache.NextDeadline}, RFC 4861's at {deadline}"

    let solicits =
        actions
        |> List.choose (function
            | Solicit(a, ValueNone) -> Some(a, 0)
            | Solicit(a, ValueSome m) -> Some(a, int m.Value)
            | _ -> None)
        |> List.sort

    let expectedSolicits = List.sort (List.ofSeq o.Solicits)

    if solicits <> expectedSolicits then
        failtest $"{what ()}: solicitations %A{solicits}, RFC 4861's %A{expectedSolicits}"

/// Runs steps under the oracle: each input classified into its trigger by the test (from the
/// address's entry as the oracle holds it, the S and O flags, the link-layer address against the
/// cached one, the timers the oracle keeps), the model's target compared with the cache after
/// each. Returns the packets sent, transmitted, dropped and still queued (by id), and every
/// (state, trigger) classified.
let private run (steps: CacheStep list) =
    let mutable cache: NeighborCache<int> = NeighborCache.create config

    let o =
        {
            Entries = Collections.Generic.Dictionary()
            Solicits = ResizeArray()
            Classified = ResizeArray()
        }

    let mutable now = 0L
    let mutable nextId = 0
    let sent = ResizeArray<int>()
    let transmitted = ResizeArray<int>()
    let dropped = ResizeArray<int>()

    let take (actions: NeighborAction<int> list) =
        for a in actions do
            match a with
            | Transmit(_, p) -> transmitted.Add(idOf p)
            | Dropped(p, _) -> dropped.Add(idOf p)
            | Solicit _ -> ()

    for step in steps do
        o.Solicits.Clear()

        match step with
        | SendTo(address, size) ->
            let id = nextId
            sent.Add id
            nextId <- nextId + 1
            let c, actions = NeighborCache.send now address (packet id size) cache
            take actions

            if stateIn o address <> NeighborState.Absent then
                fireNeighbor o now address NeighborTrigger.Send 0 (id, max 4 size)
            elif queuedBytes o + max 4 size > config.MaxQueuedBytes then
                () // No room for the packet: dropped, no entry (nothing evicted).
            elif makeRoom o now c then
                fireNeighbor o now address NeighborTrigger.Send 0 (id, max 4 size)

            cache <- c
            expectOracle (fun () -> $"send to {address}") o cache actions
        | Advertise(address, mac, solicited, override') ->
            let c, actions =
                NeighborCache.advertise now address (MacAddress(uint64 mac)) solicited override' cache

            take actions

            // RFC 4861 §7.2.5 and Appendix C: which row the advertisement is.
            let trigger =
                match o.Entries.TryGetValue address with
                | true, e when e.State <> NeighborState.Incomplete ->
                    if mac <> e.Mac && not override' then
                        NeighborTrigger.ConflictingAdvertisement
                    elif solicited then
                        NeighborTrigger.SolicitedAdvertisement
                    elif mac <> e.Mac then
                        NeighborTrigger.UnsolicitedAdvertisement
                    else
                        NeighborTrigger.UnsolicitedSameAddress
                | _ when solicited -> NeighborTrigger.SolicitedAdvertisement
                | _ -> NeighborTrigger.UnsolicitedAdvertisement

            fireNeighbor o now address trigger mac (0, 0)
            cache <- c
            expectOracle (fun () -> $"advertisement {address} mac {mac} S={solicited} O={override'}") o cache actions
        | Learn(address, mac, create) ->
            let c, actions =
                NeighborCache.learn now address (MacAddress(uint64 mac)) create cache

            take actions

            // §7.2.3, RFC 826: a stranger is learned only from a message for us, and only if a
            // full cache has an entry to give up.
            match o.Entries.TryGetValue address with
            | true, e when e.State <> NeighborState.Incomplete && e.Mac = mac ->
                fireNeighbor o now address NeighborTrigger.LearnSameAddress mac (0, 0)
            | true, _ -> fireNeighbor o now address NeighborTrigger.LearnNewAddress mac (0, 0)
            | _ when create && makeRoom o now c -> fireNeighbor o now address NeighborTrigger.LearnNewAddress mac (0, 0)
            | _ -> ()

            cache <- c
            expectOracle (fun () -> $"solicitation from {address} mac {mac} for us={create}") o cache actions
        | Advance micros ->
            // The oracle's own timers, in deadline order: at each, every entry due fires once.
            let target = now + micros

            let nextDue () =
                if o.Entries.Count = 0 then
                    Int64.MaxValue
                else
                    o.Entries.Values |> Seq.map (fun e -> e.Deadline) |> Seq.min

            while nextDue () <= target do
                now <- nextDue ()
                o.Solicits.Clear()
                let c, actions = NeighborCache.tick now cache
                take actions

                for KeyValue(address, e) in List.ofSeq o.Entries do
                    if e.Deadline <= now then
                        let trigger =
                            match e.State with
                            | NeighborState.Incomplete when e.Solicitations < config.MaxMulticastSolicit ->
                                NeighborTrigger.RetransmitTimeout
                            | NeighborState.Probe when e.Solicitations < config.MaxUnicastSolicit ->
                                NeighborTrigger.RetransmitTimeout
                            | NeighborState.Incomplete
                            | NeighborState.Probe -> NeighborTrigger.GiveUp
                            | NeighborState.Reachable -> NeighborTrigger.ReachableTimeout
                            | NeighborState.Delay -> NeighborTrigger.DelayTimeout
                            | _ -> NeighborTrigger.Forget

                        fireNeighbor o now address trigger 0 (0, 0)

                cache <- c
                expectOracle (fun () -> $"timers at {now}") o cache actions

            now <- target

        expectBounded cache

    let queued =
        [
            for KeyValue(_, e) in cache.Entries do
                for p in e.Queue do
                    idOf p
        ]

    List.ofSeq sent, List.ofSeq transmitted, List.ofSeq dropped, queued, List.ofSeq o.Classified

/// The model's entries: transitions, reentries and ignores.
let private neighborEntries =
    [
        for s in allStates do
            for t in allTriggers do
                if (NeighborModel.target s t).IsSome || NeighborModel.isIgnored s t then
                    yield struct (s, t)
    ]

let private neighborEntryName (struct (s: NeighborState, t: NeighborTrigger)) =
    match NeighborModel.target s t with
    | ValueSome next when next = s -> $"{s} --{t}--> {s} (reentry)"
    | ValueSome next -> $"{s} --{t}--> {next}"
    | ValueNone when NeighborModel.isIgnored s t -> $"{s} --{t}--> (ignored)"
    | ValueNone -> $"{s} --{t}--> (not permitted: no change)"

/// Where an RFC 4861 event leads.
type NeighborOutcome =
    | Becomes of NeighborState
    | Unchanged

/// RFC 4861 Appendix C ("State Machine for the Reachability State"), with §7.2.3–§7.2.5 and
/// §7.3.3, written out as (state, event, new state, the row). The four advertisement triggers
/// are Appendix C's NA rows by S, O and same/different link-layer address; "NS, RS, Redirect"
/// rows are the Learn triggers. Rows NetStack has no input for are listed at the end (not in
/// the model): upper-layer reachability confirmation (no hint from TCP), an NA without a target
/// link-layer address (the caller passes the cached address, which §7.2.5 makes equivalent), the
/// IsRouter flag (no router bit per entry). Forget and Evict are the cache's own management
/// (§7.3.3 leaves deleting unused entries to the implementation).
let rfc4861: (NeighborState * NeighborTrigger * NeighborOutcome * string) list =
    let absent = NeighborState.Absent
    let incomplete = NeighborState.Incomplete
    let reachable = NeighborState.Reachable
    let stale = NeighborState.Stale
    let delay = NeighborState.Delay
    let probe = NeighborState.Probe

    [
        absent, NeighborTrigger.Send, Becomes incomplete, "- | Packet to send | Create entry, send multicast NS"
        absent,
        NeighborTrigger.LearnNewAddress,
        Becomes stale,
        "- | NS, RS, Redirect, link-layer address | Create entry"
        absent, NeighborTrigger.SolicitedAdvertisement, Unchanged, "§7.2.5: no entry, the NA is discarded"
        absent, NeighborTrigger.UnsolicitedAdvertisement, Unchanged, "§7.2.5: no entry, the NA is discarded"

        incomplete, NeighborTrigger.Send, Unchanged, "§7.2.2: queued while resolving"
        incomplete,
        NeighborTrigger.RetransmitTimeout,
        Becomes incomplete,
        "INCOMPLETE | Retransmit timeout, < N | Retransmit NS"
        incomplete, NeighborTrigger.GiveUp, Becomes absent, "INCOMPLETE | Retransmit timeout, N or more | Discard entry"
        incomplete,
        NeighborTrigger.SolicitedAdvertisement,
        Becomes reachable,
        "INCOMPLETE | NA, S=1, O=any | Send queued packets"
        incomplete,
        NeighborTrigger.UnsolicitedAdvertisement,
        Becomes stale,
        "INCOMPLETE | NA, S=0, O=any | Send queued packets"
        incomplete, NeighborTrigger.LearnNewAddress, Becomes stale, "INCOMPLETE | NS, RS, Redirect, link-layer address"

        reachable, NeighborTrigger.Send, Unchanged, "§7.3.3: REACHABLE sends at once"
        reachable,
        NeighborTrigger.SolicitedAdvertisement,
        Becomes reachable,
        "!INCOMPLETE | NA, S=1, O=1 or same address"
        reachable,
        NeighborTrigger.UnsolicitedAdvertisement,
        Becomes stale,
        "!INCOMPLETE | NA, S=0, O=1, different | Record"
        reachable, NeighborTrigger.UnsolicitedSameAddress, Unchanged, "!INCOMPLETE | NA, S=0, same address"
        reachable, NeighborTrigger.ConflictingAdvertisement, Becomes stale, "REACHABLE | NA, O=0, different (§7.2.5 a)"
        reachable, NeighborTrigger.LearnNewAddress, Becomes stale, "!INCOMPLETE | NS, RS, Redirect, different"
        reachable, NeighborTrigger.LearnSameAddress, Unchanged, "!INCOMPLETE | NS, RS, Redirect, same address"
        reachable, NeighborTrigger.ReachableTimeout, Becomes stale, "REACHABLE | timeout, N s since confirmation"
        reachable, NeighborTrigger.Evict, Becomes absent, "cache management: full cache, oldest entry"

        stale, NeighborTrigger.Send, Becomes delay, "STALE | Sending packet | Start delay timer"
        stale, NeighborTrigger.SolicitedAdvertisement, Becomes reachable, "!INCOMPLETE | NA, S=1, O=1 or same address"
        stale, NeighborTrigger.UnsolicitedAdvertisement, Becomes stale, "!INCOMPLETE | NA, S=0, O=1, different | Record"
        stale, NeighborTrigger.UnsolicitedSameAddress, Unchanged, "!INCOMPLETE | NA, S=0, same address"
        stale, NeighborTrigger.ConflictingAdvertisement, Unchanged, "STALE | NA, O=0, different (§7.2.5 b)"
        stale, NeighborTrigger.LearnNewAddress, Becomes stale, "!INCOMPLETE | NS, RS, Redirect, different"
        stale, NeighborTrigger.LearnSameAddress, Unchanged, "!INCOMPLETE | NS, RS, Redirect, same address"
        stale, NeighborTrigger.Forget, Becomes absent, "cache management: unused for the stale lifetime"
        stale, NeighborTrigger.Evict, Becomes absent, "cache management: full cache, oldest entry"

        delay, NeighborTrigger.Send, Unchanged, "§7.3.3: DELAY sends at once"
        delay, NeighborTrigger.SolicitedAdvertisement, Becomes reachable, "!INCOMPLETE | NA, S=1, O=1 or same address"
        delay, NeighborTrigger.UnsolicitedAdvertisement, Becomes stale, "!INCOMPLETE | NA, S=0, O=1, different | Record"
        delay, NeighborTrigger.UnsolicitedSameAddress, Unchanged, "!INCOMPLETE | NA, S=0, same address"
        delay, NeighborTrigger.ConflictingAdvertisement, Unchanged, "DELAY | NA, O=0, different (§7.2.5 b)"
        delay, NeighborTrigger.LearnNewAddress, Becomes stale, "!INCOMPLETE | NS, RS, Redirect, different"
        delay, NeighborTrigger.LearnSameAddress, Unchanged, "!INCOMPLETE | NS, RS, Redirect, same address"
        delay, NeighborTrigger.DelayTimeout, Becomes probe, "DELAY | Delay timeout | Send unicast NS probe"

        probe, NeighborTrigger.Send, Unchanged, "§7.3.3: PROBE sends at once"
        probe, NeighborTrigger.RetransmitTimeout, Becomes probe, "PROBE | Retransmit timeout, < N | Retransmit NS"
        probe, NeighborTrigger.GiveUp, Becomes absent, "PROBE | Retransmit timeout, N or more | Discard entry"
        probe, NeighborTrigger.SolicitedAdvertisement, Becomes reachable, "!INCOMPLETE | NA, S=1, O=1 or same address"
        probe, NeighborTrigger.UnsolicitedAdvertisement, Becomes stale, "!INCOMPLETE | NA, S=0, O=1, different | Record"
        probe, NeighborTrigger.UnsolicitedSameAddress, Unchanged, "!INCOMPLETE | NA, S=0, same address"
        probe, NeighborTrigger.ConflictingAdvertisement, Unchanged, "PROBE | NA, O=0, different (§7.2.5 b)"
        probe, NeighborTrigger.LearnNewAddress, Becomes stale, "!INCOMPLETE | NS, RS, Redirect, different"
        probe, NeighborTrigger.LearnSameAddress, Unchanged, "!INCOMPLETE | NS, RS, Redirect, same address"
    ]

/// A fixed sample of random event sequences for the coverage test.
let private coverageSteps =
    lazy (Gen.sampleWithSeed (Rnd 4861UL) 50 600 (Gen.listOfLength 80 genStep))

[<Tests>]
let tests =
    testList
        "Neighbor cache"
        [
            test "docs/neighbor-states.dot is the model's DOT export" {
                let path = Path.Combine(repoRoot.Value, "docs", "neighbor-states.dot")
                let current = normalise (NeighborModel.dot ())

                let committed =
                    if File.Exists path then
                        normalise (File.ReadAllText path)
                    else
                        ""

                if committed <> current then
                    File.WriteAllText(path + ".actual", current + "\n")

                Expect.equal committed current $"{path} differs from NeighborModel.dot (); see {path}.actual"
            }

            test "the lookup tables agree with firing a Stateless machine, for every state and trigger" {
                for state in allStates do
                    for trigger in allTriggers do
                        let machine = NeighborModel.configure state

                        Expect.equal
                            (machine.CanFire trigger)
                            (NeighborModel.isPermitted state trigger)
                            $"{state} {trigger}"

                        if machine.CanFire trigger then
                            machine.Fire trigger

                            let expected =
                                match NeighborModel.target state trigger with
                                | ValueSome t -> t
                                | ValueNone -> state

                            Expect.equal machine.State expected $"{state} --{trigger}-->"
            }

            test "resolution: a first packet waits, the solicited advertisement releases it, REACHABLE" {
                let cache: NeighborCache<int> = NeighborCache.create config
                let cache, actions = NeighborCache.send 0L 1 (packet 1 100) cache
                Expect.equal actions [ Solicit(1, ValueNone) ] "a multicast solicitation"
                Expect.equal (NeighborCache.state 1 cache) NeighborState.Incomplete "INCOMPLETE"
                let cache, actions = NeighborCache.send 10L 1 (packet 2 100) cache
                Expect.isEmpty actions "the second packet waits too"
                Expect.equal (NeighborCache.tryResolve 1 cache) ValueNone "not resolved yet"
                let cache, actions = NeighborCache.advertise 500L 1 macA true true cache

                Expect.equal
                    (actions
                     |> List.map (fun a ->
                         match a with
                         | Transmit(m, p) -> m, idOf p
                         | _ -> failtest "only transmits"))
                    [ macA, 1; macA, 2 ]
                    "both released in order"

                Expect.equal (NeighborCache.state 1 cache) NeighborState.Reachable "REACHABLE"
                Expect.equal (NeighborCache.tryResolve 1 cache) (ValueSome macA) "the fast path now answers"
                Expect.equal cache.QueuedBytes 0 "nothing queued"
            }

            test "REACHABLE -> STALE -> DELAY -> PROBE -> unicast probes -> deleted (RFC 4861 §7.3.3)" {
                let cache: NeighborCache<int> = NeighborCache.create config
                let cache, _ = NeighborCache.send 0L 1 (packet 1 10) cache
                let cache, _ = NeighborCache.advertise 0L 1 macA true false cache
                let cache, _ = NeighborCache.tick 29_999L cache
                Expect.equal (NeighborCache.state 1 cache) NeighborState.Reachable "still REACHABLE"
                let cache, _ = NeighborCache.tick 30_000L cache
                Expect.equal (NeighborCache.state 1 cache) NeighborState.Stale "STALE after ReachableTime"
                Expect.equal (NeighborCache.tryResolve 1 cache) ValueNone "STALE goes through send"
                let cache, actions = NeighborCache.send 31_000L 1 (packet 2 10) cache

                Expect.equal
                    (actions
                     |> List.map (function
                         | Transmit(m, _) -> m
                         | _ -> MacAddress.Zero))
                    [ macA ]
                    "sent at once"

                Expect.equal (NeighborCache.state 1 cache) NeighborState.Delay "DELAY"
                let cache, actions = NeighborCache.tick 36_000L cache
                Expect.equal actions [ Solicit(1, ValueSome macA) ] "a unicast probe"
                Expect.equal (NeighborCache.state 1 cache) NeighborState.Probe "PROBE"
                let cache, a2 = NeighborCache.tick 37_000L cache
                let cache, a3 = NeighborCache.tick 38_000L cache
                Expect.equal (a2 @ a3) [ Solicit(1, ValueSome macA); Solicit(1, ValueSome macA) ] "two more"
                let cache, a4 = NeighborCache.tick 39_000L cache
                Expect.isEmpty a4 "no fourth probe (MAX_UNICAST_SOLICIT = 3)"
                Expect.equal (NeighborCache.state 1 cache) NeighborState.Absent "deleted"
            }

            test "a probe answered in time returns the entry to REACHABLE" {
                let cache: NeighborCache<int> = NeighborCache.create config
                let cache, _ = NeighborCache.learn 0L 1 macA true cache
                Expect.equal (NeighborCache.state 1 cache) NeighborState.Stale "learned STALE"
                let cache, _ = NeighborCache.send 1L 1 (packet 1 10) cache
                let cache, _ = NeighborCache.tick 5_001L cache
                Expect.equal (NeighborCache.state 1 cache) NeighborState.Probe "PROBE"
                let cache, _ = NeighborCache.advertise 5_500L 1 macA true false cache
                Expect.equal (NeighborCache.state 1 cache) NeighborState.Reachable "REACHABLE again"
            }

            test "unanswered resolution gives up after MAX_MULTICAST_SOLICIT and drops the queue" {
                let cache: NeighborCache<int> = NeighborCache.create config
                let cache, _ = NeighborCache.send 0L 1 (packet 1 10) cache
                let cache, _ = NeighborCache.send 0L 1 (packet 2 10) cache
                let cache, a1 = NeighborCache.tick 1_000L cache
                let cache, a2 = NeighborCache.tick 2_000L cache
                Expect.equal (a1 @ a2) [ Solicit(1, ValueNone); Solicit(1, ValueNone) ] "retransmitted twice"
                let cache, a3 = NeighborCache.tick 3_000L cache

                Expect.equal
                    (a3
                     |> List.map (function
                         | Dropped(p, r) -> idOf p, r
                         | _ -> -1, NeighborDropReason.QueueFull))
                    [ 1, NeighborDropReason.Unresolved; 2, NeighborDropReason.Unresolved ]
                    "both dropped as unresolved"

                Expect.equal (NeighborCache.state 1 cache) NeighborState.Absent "deleted"
                Expect.equal cache.QueuedBytes 0 "no bytes left"
            }

            test
                "a full queue drops its oldest packet; an advertisement with another MAC and no O flag only makes REACHABLE STALE" {
                let cache: NeighborCache<int> = NeighborCache.create config
                let mutable c = cache

                for i in 1..4 do
                    let next, actions = NeighborCache.send 0L 1 (packet i 10) c
                    c <- next

                    if i = 4 then
                        Expect.equal
                            (actions
                             |> List.map (function
                                 | Dropped(p, r) -> idOf p, r
                                 | _ -> -1, NeighborDropReason.CacheFull))
                            [ 1, NeighborDropReason.QueueFull ]
                            "the oldest made room"

                let cache, _ = NeighborCache.advertise 0L 1 macA true false c
                let cache, actions = NeighborCache.advertise 1L 1 macB false false cache
                Expect.isEmpty actions "nothing to send"
                Expect.equal (NeighborCache.state 1 cache) NeighborState.Stale "STALE"
                Expect.equal cache.Entries.[1].Mac macA "the cached address is kept"
                let cache, _ = NeighborCache.advertise 2L 1 macB true true cache
                Expect.equal cache.Entries.[1].Mac macB "an override replaces it"
            }

            test "a flood of strangers keeps the cache bounded; busy entries are never evicted" {
                let mutable cache: NeighborCache<int> = NeighborCache.create config
                let cache0, _ = NeighborCache.send 0L 1000 (packet 1 10) cache
                cache <- cache0
                let random = Random 7

                for i in 0..9999 do
                    let address = random.Next()

                    let c, _ =
                        NeighborCache.learn (int64 i) address (MacAddress(uint64 address)) true cache

                    cache <- c
                    Expect.isLessThanOrEqual cache.Entries.Count config.MaxEntries "bounded"

                Expect.equal (NeighborCache.state 1000 cache) NeighborState.Incomplete "the resolving entry stayed"

                for i in 0..9999 do
                    let c, _ = NeighborCache.send 0L (random.Next()) (packet i 10) cache
                    cache <- c

                Expect.isLessThanOrEqual cache.Entries.Count config.MaxEntries "bounded under sends too"
                Expect.isLessThanOrEqual cache.QueuedBytes config.MaxQueuedBytes "queued bytes bounded"
            }

            testPropertyWithConfig
                heavyConfig
                "oracle: every input leads where the model says for the trigger the test classified, timers run as RFC 4861 says, bounds hold, each packet leaves once"
            <| Prop.forAll (Arb.fromGen (Gen.listOf genStep)) (fun steps ->
                let sent, transmitted, dropped, queued, _ = run steps
                let accounted = transmitted @ dropped @ queued
                Expect.equal (List.sort accounted) sent "every packet transmitted, dropped or still queued, once")

            test "oracle: the random sequences exercise every edge, reentry and ignore of the model" {
                let classified =
                    coverageSteps.Value
                    |> Array.collect (fun steps ->
                        let _, _, _, _, c = run steps
                        Array.ofList c)
                    |> Array.countBy id
                    |> dict

                let count e =
                    match classified.TryGetValue e with
                    | true, n -> n
                    | _ -> 0

                let hit = neighborEntries |> List.filter (fun e -> count e > 0)

                printfn
                    "Neighbor model coverage: %d of %d entries exercised (%d sequences)"
                    hit.Length
                    neighborEntries.Length
                    coverageSteps.Value.Length

                for e in neighborEntries do
                    printfn "  %7d  %s" (count e) (neighborEntryName e)

                for KeyValue(e, n) in classified do
                    if not (List.contains e neighborEntries) then
                        printfn "  %7d  %s" n (neighborEntryName e)

                Expect.isEmpty
                    (neighborEntries
                     |> List.filter (fun e -> count e = 0)
                     |> List.map neighborEntryName)
                    "every model entry is exercised"
            }

            test "the model's edge set is RFC 4861 Appendix C's table, in both directions" {
                let expected = set [ for (s, t, o, _) in rfc4861 -> s, t, o ]

                let actual =
                    set
                        [
                            for s in allStates do
                                for t in allTriggers do
                                    match NeighborModel.target s t with
                                    | ValueSome next -> yield s, t, Becomes next
                                    | ValueNone when NeighborModel.isIgnored s t -> yield s, t, Unchanged
                                    | ValueNone -> ()
                        ]

                let show (s: NeighborState, t: NeighborTrigger, o: NeighborOutcome) = $"{s} --{t}--> %A{o}"

                Expect.isEmpty
                    (Set.difference actual expected |> Set.toList |> List.map show)
                    "the model has no entry the RFC table lacks"

                Expect.isEmpty
                    (Set.difference expected actual |> Set.toList |> List.map show)
                    "the model has every entry of the RFC table"

                Expect.equal (List.length rfc4861) expected.Count "no row twice"
            }

            testPropertyWithConfig codecConfig "invalid configurations are refused"
            <| fun (which: bool) ->
                let bad =
                    if which then
                        { config with RetransTimer = 0L }
                    else
                        { config with MaxEntries = 0 }

                Expect.throwsT<ArgumentException>
                    (fun () -> (NeighborCache.create bad: NeighborCache<int>) |> ignore)
                    "refused"
        ]
