/// A test stand-in for the API: it owns the bytes the engine only names, carries out actions,
/// and checks every step against the model and the engine's invariants.
module NetStack.Tests.TcpHarness

open System
open NetStack.Core.Wire
open NetStack.Core.Tcp

/// Fails the test with `message`.
let fail (message: string) : 'T = raise (Exception message)

/// Set TCP_TRACE=1 to print every action (for replaying one seed).
let tracing = Environment.GetEnvironmentVariable "TCP_TRACE" = "1"

/// The peer-visible side of one engine: its connection plus the buffers the API would hold.
type Side =
    {
        Name: string
        mutable Conn: Connection
        /// Everything this side will send (the send buffer is a window onto it).
        Payload: byte[]
        /// The receive stream, indexed by position.
        Received: byte[]
        /// Which receive positions were stored.
        Stored: bool[]
        /// Receive position delivered so far (from Deliver actions).
        mutable Delivered: int64
        /// Send-stream bytes handed to `send`.
        mutable Written: int64
        /// Send-stream bytes freed by SendBufferFreed.
        mutable Freed: int64
        mutable CloseCalled: bool
        /// Highest (ACK + window) right edge this side has sent: must never move left (beyond
        /// the window scale's rounding).
        mutable SentRightEdge: SeqNum voption
        Transitions: ResizeArray<StateTransition>
        Events: ResizeArray<TcpEvent>
        /// Send positions the peer's SACK blocks (as they arrived here) reported. The peer never
        /// reneges, so none of them may be sent again, not even after a timeout.
        mutable PeerSacked: RangeSet
        /// Bytes sent again although `PeerSacked` held them: must stay 0 (RFC 6675).
        mutable SackedResent: int64
        /// Data bytes sent more than once.
        mutable Resent: int64
        /// The highest send position sent so far.
        mutable SentUpTo: int64
    }

/// A side that will send `payload` and receive up to `peerLength` bytes.
let newSide name (conn: Connection) (payload: byte[]) (peerLength: int) =
    {
        Name = name
        Conn = conn
        Payload = payload
        Received = Array.zeroCreate peerLength
        Stored = Array.zeroCreate peerLength
        Delivered = 0L
        Written = 0L
        Freed = 0L
        CloseCalled = false
        SentRightEdge = ValueNone
        Transitions = ResizeArray()
        Events = ResizeArray()
        PeerSacked = RangeSet.empty
        SackedResent = 0L
        Resent = 0L
        SentUpTo = 0L
    }

/// Records the SACK blocks of `seg`, arriving at `side`, that name data `side` has sent and
/// not had acknowledged, when the segment passes the checks that come before the ACK field
/// (RFC 7323 §5.3 PAWS, RFC 9293 §3.10.7.4 acceptability): a segment dropped there teaches the
/// engine nothing, legitimately.
let noteSackBlocks (side: Side) (seg: Segment) =
    let c = side.Conn
    let window = c.Rcv.Right - c.Rcv.Nxt

    let inWindow (s: SeqNum) =
        SeqNum.ge s c.Rcv.Nxt && SeqNum.lt s c.Rcv.Right

    let acceptable =
        if seg.Length = 0 then
            (if window <= 0 then
                 seg.Seq = c.Rcv.Nxt
             else
                 inWindow seg.Seq)
        else
            window > 0 && (inWindow seg.Seq || inWindow (seg.Seq + (seg.Length - 1)))

    let timestampsOk =
        not c.Ts.Enabled
        || (match seg.Options.Timestamps with
            | ValueSome ts -> int (ts.Value - c.Ts.Recent) >= 0
            | ValueNone -> false)

    if c.SackEnabled && acceptable && timestampsOk then
        for i in 0 .. seg.Options.SackBlockCount - 1 do
            let block = seg.Options.GetSackBlock i
            let left = SeqNum block.Left
            let right = SeqNum block.Right

            if SeqNum.lt left right && SeqNum.ge left c.Snd.Una && SeqNum.le right c.Snd.Max then
                let position (s: SeqNum) =
                    min c.Written (int64 (SeqNum.forward (c.Snd.Iss + 1) s))

                side.PeerSacked <- RangeSet.add (position left) (position right) side.PeerSacked

/// Bytes of [start, end') in `set`.
let overlap (start: int64) (end': int64) (set: RangeSet) =
    set.Ranges
    |> List.sumBy (fun struct (s, e) -> max 0L (min e end' - max s start))

let private v4a = Ipv4Address.OfOctets(10uy, 0uy, 0uy, 1uy)
let private v4b = Ipv4Address.OfOctets(10uy, 0uy, 0uy, 2uy)

/// Builds the segment's bytes with the wire codec and parses them back, as the two APIs would:
/// returns the receiver's view and the payload bytes.
let throughWire (side: Side) (seg: OutgoingSegment) : Segment * byte[] =
    if seg.DataLength > 0 then
        if
            seg.DataPosition < 0L
            || seg.DataPosition + int64 seg.DataLength > int64 side.Payload.Length
        then
            fail $"{side.Name}: segment names send bytes [{seg.DataPosition}, +{seg.DataLength}) beyond the payload"

        if seg.DataPosition < side.Freed then
            fail $"{side.Name}: segment names freed send bytes at {seg.DataPosition} (freed {side.Freed})"

        if seg.DataPosition + int64 seg.DataLength > side.Written then
            fail $"{side.Name}: segment names bytes not yet written"

    let payload =
        if seg.DataLength = 0 then
            ReadOnlySpan<byte>.Empty
        else
            ReadOnlySpan(side.Payload, int seg.DataPosition, seg.DataLength)

    let buffer = Array.zeroCreate<byte>(Tcp.MaxHeaderLength + seg.DataLength)

    let length =
        Tcp.buildV4 (Span buffer) v4a v4b (seg.ToHeader(1000us, 2000us)) seg.Options payload

    let bytes = ReadOnlySpan(buffer, 0, length)

    match Tcp.parseV4 v4a v4b bytes with
    | Error e -> fail $"own segment does not parse: {e}"
    | Ok header ->
        match Tcp.parseOptions (bytes.Slice(header.OptionsOffset, header.OptionsLength)) with
        | Error e -> fail $"own options do not parse: {e}"
        | Ok options ->
            Segment.OfHeader(header, options), bytes.Slice(header.PayloadOffset, header.PayloadLength).ToArray()

/// Carries out `output` for `side`. `incoming` is the payload of the segment being processed
/// (for StoreReceived); `transmit` receives each outgoing segment.
let apply (side: Side) (incoming: byte[]) (transmit: OutgoingSegment -> unit) (output: TcpOutput) =
    if tracing then
        for action in output.Actions do
            match action with
            | TcpAction.Transmit s ->
                eprintfn
                    "  %s sends seq %d ack %d %A pos %d len %d wnd %d"
                    side.Name
                    s.Seq.Value
                    s.Ack.Value
                    s.Flags
                    s.DataPosition
                    s.DataLength
                    s.Window
            | a -> eprintfn "  %s %A" side.Name a

    let mutable state = side.Transitions |> Seq.tryLast |> Option.map (fun t -> t.To)

    for action in output.Actions do
        match action with
        | TcpAction.Transmit seg ->
            if seg.Flags.HasFlag TcpFlags.Ack && not (seg.Flags.HasFlag TcpFlags.Rst) then
                // RFC 7323 §2.2: the field is scaled by the sender's shift, except on a SYN.
                let shift =
                    if seg.Flags.HasFlag TcpFlags.Syn then
                        0
                    else
                        side.Conn.Rcv.WndShift

                let right = seg.Ack + (int seg.Window <<< shift)

                // §2.4: truncating the window to the scale's granularity may retract the edge by
                // less than 2^shift, never more.
                match side.SentRightEdge with
                | ValueSome previous when SeqNum.lt (right + ((1 <<< shift) - 1)) previous ->
                    fail $"{side.Name}: offered right edge moved left from {previous} to {right}"
                | ValueSome previous when SeqNum.lt right previous -> ()
                | _ -> side.SentRightEdge <- ValueSome right

            if
                not (seg.Flags.HasFlag TcpFlags.Rst)
                && seg.Flags.HasFlag TcpFlags.Ack
                && SeqNum.gt (seg.Seq + seg.DataLength) side.Conn.Snd.Max
            then
                fail $"{side.Name}: sends up to {seg.Seq + seg.DataLength}, beyond SND.MAX {side.Conn.Snd.Max}"

            if seg.DataLength > 0 then
                let e = seg.DataPosition + int64 seg.DataLength
                side.SackedResent <- side.SackedResent + overlap seg.DataPosition e side.PeerSacked
                side.Resent <- side.Resent + max 0L (min e side.SentUpTo - seg.DataPosition)
                side.SentUpTo <- max side.SentUpTo e

            transmit seg
        | TcpAction.StoreReceived(offset, position, length) ->
            if offset < 0 || length <= 0 || offset + length > incoming.Length then
                fail $"{side.Name}: store [{offset}, +{length}) outside a {incoming.Length}-byte payload"

            if position < side.Delivered then
                fail $"{side.Name}: store at {position} below the delivered point {side.Delivered}"

            if position + int64 length > int64 side.Received.Length then
                fail $"{side.Name}: store beyond the peer's payload ({position}+{length})"

            for i in 0 .. length - 1 do
                let p = int position + i

                if side.Stored.[p] && side.Received.[p] <> incoming.[offset + i] then
                    fail $"{side.Name}: byte {p} stored twice with different values"

                side.Received.[p] <- incoming.[offset + i]
                side.Stored.[p] <- true
        | TcpAction.Deliver upTo ->
            if upTo <= side.Delivered then
                fail $"{side.Name}: deliver up to {upTo} after {side.Delivered}: twice or backwards"

            for p in side.Delivered .. upTo - 1L do
                if not side.Stored.[int p] then
                    fail $"{side.Name}: byte {p} delivered but never stored"

            side.Delivered <- upTo
        | TcpAction.ReceiveBufferGrown size ->
            if
                size <= side.Conn.Config.ReceiveBufferSize
                || size > side.Conn.Config.ReceiveBufferLimit
            then
                fail $"{side.Name}: receive buffer grown to {size}, outside the configured bounds"
        | TcpAction.Event e ->
            match e with
            | TcpEvent.SendBufferFreed n ->
                if n <= 0L || side.Freed + n > side.Written then
                    fail $"{side.Name}: freed {n} bytes with {side.Freed} of {side.Written} freed"

                side.Freed <- side.Freed + n
            | _ -> ()

            side.Events.Add e
        | TcpAction.Transition t ->
            match state with
            | Some s when s <> t.From -> fail $"{side.Name}: transition {t} does not start from {s}"
            | _ -> ()

            if not (StateModel.allows t.From t.Trigger t.To) then
                fail $"{side.Name}: {t.From} --{t.Trigger}--> {t.To} is not in the model"

            state <- Some t.To
            side.Transitions.Add t

    match state with
    | Some s when s <> side.Conn.State -> fail $"{side.Name}: reported state {s}, connection is in {side.Conn.State}"
    | _ -> ()

    match Connection.audit side.Conn with
    | Some problem -> fail $"{side.Name}: {problem}"
    | None -> ()

// Small helpers for the unit tests that drive one or two engines by hand (Nagle, keep-alive,
// modern TCP options): time in milliseconds, the segments an output sends, and the handshake.

/// `n` milliseconds in the engine's microseconds.
let ms (n: int) = int64 n * 1000L

/// The segments `o` transmits.
let sent (o: TcpOutput) =
    o.Actions
    |> List.choose (function
        | TcpAction.Transmit s -> Some s
        | _ -> None)

/// The one segment `o` transmits; fails the test when there is not exactly one.
let single (o: TcpOutput) =
    match sent o with
    | [ s ] -> s
    | other -> Expecto.Tests.failtest $"expected one segment, got {other}"

/// What the peer sees of an outgoing segment (no payload bytes are needed by the engine).
let arriving (s: OutgoingSegment) : Segment =
    {
        Seq = s.Seq
        Ack = s.Ack
        Flags = s.Flags
        Window = s.Window
        Options = s.Options
        PayloadLength = s.DataLength
    }

/// `c`, once the engine's invariants hold for it (Connection.audit); fails the test otherwise.
let audited (c: Connection) =
    match Connection.audit c with
    | Some problem -> Expecto.Tests.failtest problem
    | None -> c

/// A client with `clientConfig` (ISS 1000, SYN at 0 ms) and a server with `serverConfig` (ISS
/// 7000, SYN-ACK at 1 ms) through the three-way handshake (the client's ACK at 2 ms reaches the
/// server at 3 ms); checks both are ESTABLISHED and returns both and the three segments.
let handshake (clientConfig: TcpConfig) (serverConfig: TcpConfig) =
    let client, o = Connection.openActive clientConfig (SeqNum 1000u) 0L
    let syn = single o
    let server, o = Connection.accept serverConfig (SeqNum 7000u) (ms 1) (arriving syn)
    let synAck = single o
    let client, o = Connection.handleSegment (ms 2) (arriving synAck) client
    let ack = single o
    let server, _ = Connection.handleSegment (ms 3) (arriving ack) server
    Expecto.Expect.equal client.State TcpState.Established "client established"
    Expecto.Expect.equal server.State TcpState.Established "server established"
    client, server, syn, synAck, ack
