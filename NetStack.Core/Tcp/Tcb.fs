namespace NetStack.Core.Tcp

open System
open NetStack.Core.Wire

/// Settings of one connection. Times are in microseconds, like every `now` the engine is given.
type TcpConfig =
    {
        /// The MSS we announce in our SYN (RFC 9293 §3.7.1): the largest segment payload we
        /// accept, from our MTU (`TcpConfig.MssForMtu`). It also caps what we send.
        Mss: int
        /// The MSS assumed when the peer's SYN carries no MSS option (RFC 9293 §3.7.1: 536 for
        /// IPv4, 1220 for IPv6).
        DefaultPeerMss: int
        /// Receive buffer capacity in bytes: the most data held for the user (in order and out
        /// of order). Without window scaling at most 65535 of it can be offered; with it, up to
        /// 65535·2^14 bytes (RFC 7323 §2.3).
        ReceiveBufferSize: int
        /// RTO before the first RTT sample (RFC 6298 §2.1: 1 s).
        InitialRto: int64
        /// Lower bound of the RTO. RFC 6298 §2.4 says 1 s; Linux uses 200 ms, as does this default.
        MinRto: int64
        /// Upper bound of the RTO (RFC 6298 §2.5: at least 60 s).
        MaxRto: int64
        /// Clock granularity G of RFC 6298 §2.
        ClockGranularity: int64
        /// Retransmissions of one segment (or unanswered zero-window probes) before the
        /// connection fails with TimedOut (RFC 9293 §3.8.3's R2; Linux tcp_retries2 = 15).
        MaxRetransmissions: int
        /// Retransmissions of a SYN before the connection attempt fails (Linux tcp_syn_retries = 6).
        MaxSynRetransmissions: int
        /// Longest wait before a delayed ACK is sent (RFC 9293 §3.8.6.3: under 0.5 s; RFC 5681
        /// §4.2: at most 500 ms; we require at most 200 ms).
        DelayedAckTimeout: int64
        /// Maximum segment lifetime: TIME-WAIT lasts 2·MSL (RFC 9293 §3.4.2).
        Msl: int64
        /// How long FIN-WAIT-2 may sit idle (no segment from the peer) before the connection is
        /// dropped with TimedOut; ValueNone (the default) waits forever. After a half-close the
        /// peer may legitimately stay silent, so only a caller that knows nobody reads any more
        /// (an orphaned connection, like Linux's tcp_fin_timeout = 60 s) should set it, and
        /// above MaxRto so a retransmitting peer always refreshes it.
        FinWait2Timeout: int64 voption
        /// Longest interval between zero-window probes.
        MaxPersistInterval: int64
        /// Offer the window scale option (RFC 7323 §2) in our SYN, with the shift the receive
        /// buffer needs; scaling is used only when the peer's SYN carries it too.
        WindowScaling: bool
        /// Offer timestamps (RFC 7323 §3-5: RTT measurement and PAWS); used only when both SYNs
        /// carry them.
        Timestamps: bool
        /// Offer SACK (RFC 2018, SACK-permitted); SACK blocks are sent and taken only when both
        /// SYNs carry it. Without it, loss recovery is NewReno (RFC 6582).
        SelectiveAck: bool
        /// The congestion control algorithm (`Congestion`): CUBIC (RFC 9438) by default, or Reno
        /// (RFC 5681).
        CongestionControl: CongestionControl
        /// Turns the Nagle algorithm off (RFC 9293 §3.7.4, RFC 1122 §4.2.3.4; like TCP_NODELAY).
        /// When false (the default) a segment smaller than the send MSS is held while earlier
        /// data is unacknowledged, so a stream of small writes becomes few full segments; when
        /// true every write goes out as soon as the windows allow.
        NoDelay: bool
        /// Keep-alive (RFC 9293 §3.8.4, RFC 1122 §4.2.3.6): after this long without any
        /// segment from the peer an ESTABLISHED (or CLOSE-WAIT) connection with nothing in
        /// flight sends a probe. ValueNone (the default) sends none, as the RFCs require
        /// unless the application asks; Linux's tcp_keepalive_time is 2 hours.
        KeepAliveIdle: int64 voption
        /// Time between unanswered keep-alive probes (Linux tcp_keepalive_intvl = 75 s).
        KeepAliveInterval: int64
        /// Unanswered keep-alive probes after which the connection fails with TimedOut (Linux
        /// tcp_keepalive_probes = 9).
        KeepAliveCount: int
        /// The largest the receive buffer may grow to by auto-tuning (dynamic right-sizing, like
        /// Linux's tcp_rcv_space_adjust): every connection starts with `ReceiveBufferSize` and
        /// grows, up to this, while its reader consumes more than half the buffer per round
        /// trip. The window shift of our SYN is chosen from this (RFC 7323 §2.3), since the
        /// shift cannot change later. At or below `ReceiveBufferSize` (the default) the buffer
        /// stays fixed, as SO_RCVBUF pins Linux's.
        ReceiveBufferMax: int
        /// The shortest interval between two ACKs sent for invalid segments (µs): challenge ACKs
        /// (RFC 5961 §7: an in-window RST not at RCV.NXT, a SYN in a synchronized state, an ACK
        /// field outside the acceptable range) and the ACKs of unacceptable segments that carry
        /// no data or a SYN (data out of the window is always ACKed: a sender's retransmission
        /// needs that answer). A limited ACK is not sent, and `TcpEvent.AckRateLimited` says
        /// so. Stops ACK wars and keeps a blind attacker from making us send at its rate. Linux:
        /// tcp_invalid_ratelimit = 500 ms, per connection. 0: no limit.
        OutOfWindowAckInterval: int64
        /// The user timeout (RFC 9293 §3.10.8, RFC 5482), µs: when data or our FIN has waited
        /// this long in a synchronized state without any of it being acknowledged, the
        /// connection is reset and ends with `TcpEvent.UserTimedOut`, even while the peer keeps
        /// answering zero-window probes (which `MaxRetransmissions` never counts). Checked
        /// whenever a timer of the connection runs. ValueNone (the default): none.
        UserTimeout: int64 voption
        /// The IP header settings of the connection's packets (IP_TTL, IP_TOS, Don't Fragment):
        /// every segment it sends carries them, its SYN, ACKs and RSTs included. TCP's
        /// defaults: `IpHeaderSettings.Tcp`.
        IpHeader: IpHeaderSettings
    }

    /// The MSS for a link MTU: the MTU less the minimal IP and TCP headers (RFC 9293 §3.7.1).
    static member MssForMtu(mtu: int, ipv6: bool) =
        let overhead = (if ipv6 then 40 else 20) + 20

        if mtu < overhead + 1 then
            invalidArg (nameof mtu) $"An MTU of {mtu} leaves no room for TCP data."

        mtu - overhead

    /// Defaults for an IPv4 link with a 1500-byte MTU and a 64 KiB receive buffer.
    static member Default =
        {
            Mss = 1460
            DefaultPeerMss = 536
            ReceiveBufferSize = 65535
            InitialRto = 1_000_000L
            MinRto = 200_000L
            MaxRto = 60_000_000L
            ClockGranularity = 1_000L
            MaxRetransmissions = 15
            MaxSynRetransmissions = 6
            DelayedAckTimeout = 40_000L
            Msl = 30_000_000L
            FinWait2Timeout = ValueNone
            MaxPersistInterval = 60_000_000L
            WindowScaling = true
            Timestamps = true
            SelectiveAck = true
            CongestionControl = CongestionControl.Cubic
            NoDelay = false
            KeepAliveIdle = ValueNone
            KeepAliveInterval = 75_000_000L
            KeepAliveCount = 9
            ReceiveBufferMax = 0
            OutOfWindowAckInterval = 500_000L
            UserTimeout = ValueNone
            IpHeader = IpHeaderSettings.Tcp
        }

    /// The window shift (RFC 7323 §2.3) that lets a 16-bit window field cover `receiveBuffer`:
    /// the smallest s in 0..14 with receiveBuffer <= 65535·2^s.
    static member WindowShiftFor(receiveBuffer: int) =
        let mutable shift = 0

        while shift < 14 && int64 receiveBuffer > (65535L <<< shift) do
            shift <- shift + 1

        shift

    /// The receive buffer's upper bound: `ReceiveBufferMax`, or `ReceiveBufferSize` when that is
    /// larger (auto-tuning off).
    member this.ReceiveBufferLimit = max this.ReceiveBufferSize this.ReceiveBufferMax

    /// Throws ArgumentException when a setting is out of range.
    member this.Validate() =
        if this.Mss < 1 || this.Mss > 65495 then
            invalidArg "Mss" $"Mss {this.Mss} is not in 1..65495."

        if this.DefaultPeerMss < 1 then
            invalidArg "DefaultPeerMss" "DefaultPeerMss must be positive."

        if this.ReceiveBufferSize < 1 then
            invalidArg "ReceiveBufferSize" "ReceiveBufferSize must be positive."

        if int64 this.ReceiveBufferSize > (65535L <<< 14) then
            invalidArg
                "ReceiveBufferSize"
                "ReceiveBufferSize exceeds 65535·2^14, the largest scaled window (RFC 7323 §2.3)."

        if this.ReceiveBufferMax < 0 || int64 this.ReceiveBufferMax > (65535L <<< 14) then
            invalidArg
                "ReceiveBufferMax"
                "ReceiveBufferMax is negative or exceeds 65535·2^14, the largest scaled window (RFC 7323 §2.3)."

        if
            this.MinRto < 1L
            || this.InitialRto < this.MinRto
            || this.MaxRto < this.InitialRto
        then
            invalidArg "MinRto" "Need 0 < MinRto <= InitialRto <= MaxRto."

        if this.DelayedAckTimeout < 0L || this.DelayedAckTimeout > 200_000L then
            invalidArg "DelayedAckTimeout" "DelayedAckTimeout must be 0..200 ms."

        if this.MaxRetransmissions < 1 || this.MaxSynRetransmissions < 1 then
            invalidArg "MaxRetransmissions" "Retransmission limits must be positive."

        match this.KeepAliveIdle with
        | ValueSome idle when idle < 1L -> invalidArg "KeepAliveIdle" "KeepAliveIdle must be positive."
        | _ -> ()

        if this.KeepAliveInterval < 1L || this.KeepAliveCount < 1 then
            invalidArg "KeepAliveInterval" "KeepAliveInterval and KeepAliveCount must be positive."

        match this.UserTimeout with
        | ValueSome timeout when timeout < 1L -> invalidArg "UserTimeout" "UserTimeout must be positive."
        | _ -> ()

        if this.IpHeader.Ttl < 1uy then
            invalidArg "IpHeader" "The TTL / hop limit must be 1..255."

        if this.OutOfWindowAckInterval < 0L then
            invalidArg "OutOfWindowAckInterval" "OutOfWindowAckInterval cannot be negative."

        if this.Msl < 0L || this.MaxPersistInterval < 1L || this.ClockGranularity < 1L then
            invalidArg "Msl" "Msl, MaxPersistInterval and ClockGranularity must be positive."

/// What one socket (a listener, a connection before or after it opens) sets for itself over the
/// stack's defaults, as the options of a kernel socket (IP_TTL, IP_TOS, Don't Fragment,
/// SO_RCVBUF, TCP_NODELAY, SO_KEEPALIVE with TCP_KEEPIDLE / KEEPINTVL / KEEPCNT). A listener's
/// settings are inherited by the connections it accepts, as on Linux.
[<Struct>]
type TcpSocketSettings =
    {
        /// The IP header settings of its packets.
        IpHeader: IpHeaderSettings
        /// SO_RCVBUF: the receive buffer in bytes, locked (auto-tuning off for this socket, as
        /// Linux's SOCK_RCVBUF_LOCK); 0 keeps the stack's size and its auto-tuning.
        ReceiveBufferSize: int
        /// TCP_NODELAY.
        NoDelay: bool
        /// Keep-alive idle time (SO_KEEPALIVE on with TCP_KEEPIDLE), µs; ValueNone: off.
        KeepAliveIdle: int64 voption
        /// TCP_KEEPINTVL, µs.
        KeepAliveInterval: int64
        /// TCP_KEEPCNT.
        KeepAliveCount: int
    }

    /// The settings a connection with `config` has (no locked receive buffer).
    static member Of(config: TcpConfig) =
        {
            IpHeader = config.IpHeader
            ReceiveBufferSize = 0
            NoDelay = config.NoDelay
            KeepAliveIdle = config.KeepAliveIdle
            KeepAliveInterval = config.KeepAliveInterval
            KeepAliveCount = config.KeepAliveCount
        }

    /// `config` with these settings: a locked receive buffer is both its size and its limit
    /// (no auto-tuning). Throws ArgumentException for a setting out of range.
    member this.Apply(config: TcpConfig) : TcpConfig =
        let config =
            { config with
                IpHeader = this.IpHeader
                NoDelay = this.NoDelay
                KeepAliveIdle = this.KeepAliveIdle
                KeepAliveInterval = this.KeepAliveInterval
                KeepAliveCount = this.KeepAliveCount
            }

        let config =
            if this.ReceiveBufferSize > 0 then
                { config with
                    ReceiveBufferSize = this.ReceiveBufferSize
                    ReceiveBufferMax = 0
                }
            else
                config

        config.Validate()
        config

/// An arriving segment as the engine sees it: the header fields, the parsed options and how
/// much payload follows. The payload bytes stay with the caller; `StoreReceived` actions say
/// which of them to keep, by offset within this payload.
[<Struct>]
type Segment =
    {
        /// SEG.SEQ.
        Seq: SeqNum
        /// SEG.ACK (meaningful when the ACK flag is set).
        Ack: SeqNum
        /// Control bits.
        Flags: TcpFlags
        /// SEG.WND as on the wire.
        Window: uint16
        /// The parsed options.
        Options: TcpOptions
        /// Payload bytes.
        PayloadLength: int
    }

    /// SEG.LEN: the sequence space the segment occupies (payload, plus one each for SYN and FIN).
    /// Flags are tested with a mask, not Enum.HasFlag: from F# that boxes both enums per call.
    member this.Length =
        this.PayloadLength
        + (if this.Flags &&& TcpFlags.Syn = TcpFlags.Syn then 1 else 0)
        + (if this.Flags &&& TcpFlags.Fin = TcpFlags.Fin then 1 else 0)

    /// True when `flag` is set.
    member this.Has(flag: TcpFlags) = this.Flags &&& flag = flag

    /// The view of a parsed header with its options.
    static member OfHeader(header: TcpHeader, options: TcpOptions) =
        {
            Seq = SeqNum header.SequenceNumber
            Ack = SeqNum header.AcknowledgmentNumber
            Flags = header.Flags
            Window = header.Window
            Options = options
            PayloadLength = header.PayloadLength
        }

/// A segment the engine wants sent. Ports and addresses come from the connection's 4-tuple (for
/// a reply to a stray segment: the stray segment's, swapped). The payload is never held here:
/// it is the send stream's bytes [DataPosition, DataPosition + DataLength), which the caller
/// copies from its send buffer.
[<Struct>]
type OutgoingSegment =
    {
        /// SEG.SEQ.
        Seq: SeqNum
        /// SEG.ACK (sent as 0 when the ACK flag is clear).
        Ack: SeqNum
        /// Control bits.
        Flags: TcpFlags
        /// SEG.WND.
        Window: uint16
        /// Options to write (an MSS option on SYNs).
        Options: TcpOptions
        /// Send-stream position of the first payload byte (byte 0 is the first byte the user sent).
        DataPosition: int64
        /// Payload bytes.
        DataLength: int
    }

    /// The header to hand to `Tcp.buildV4`/`buildV6` for this segment between the given ports.
    member this.ToHeader(sourcePort: uint16, destinationPort: uint16) =
        TcpHeader.Create(
            sourcePort,
            destinationPort,
            this.Seq.Value,
            (if this.Flags &&& TcpFlags.Ack = TcpFlags.Ack then
                 this.Ack.Value
             else
                 0u),
            this.Flags,
            this.Window
        )

/// What the engine tells the user of a connection. A struct union: raising one allocates nothing.
[<RequireQualifiedAccess; Struct>]
type TcpEvent =
    /// The handshake completed: the connection is ESTABLISHED.
    | Connected
    /// The peer refused the connection attempt (RST in SYN-SENT): ConnectionRefused.
    | Refused
    /// The peer reset the connection: ConnectionReset.
    | Reset
    /// Retransmissions ran out: TimedOut.
    | TimedOut
    /// The peer's FIN arrived in order: reads return end of stream after the delivered bytes.
    | PeerClosed
    /// The connection reached CLOSED: its resources can be released.
    | Closed
    /// The peer acknowledged this many more bytes: the send buffer may drop them.
    | SendBufferFreed of bytes: int64
    /// Loss was detected from duplicate ACKs or SACK blocks and fast recovery began with a
    /// retransmission, without waiting for the timer (RFC 5681 §3.2, RFC 6675, RFC 6582).
    | FastRetransmit
    /// No ACK came for two round trips with data outstanding: a tail loss probe went out
    /// (RFC 8985 §7), so a lost tail is repaired by SACK recovery instead of a timeout.
    | LossProbe
    /// An ACK owed to an invalid segment (a challenge ACK, or the answer to an unacceptable
    /// segment without data) was not sent: the last one went out less than
    /// `TcpConfig.OutOfWindowAckInterval` ago (RFC 5961 §7).
    | AckRateLimited
    /// Data or our FIN waited `TcpConfig.UserTimeout` without being acknowledged: the
    /// connection was reset and is CLOSED (RFC 9293 §3.10.8, RFC 5482): TimedOut.
    | UserTimedOut
    /// A SYN reopened the connection's 4-tuple from TIME-WAIT (RFC 6191, RFC 1122 §4.2.2.13):
    /// this incarnation is CLOSED (`Closed` follows), and the SYN is a new connection request for
    /// the listener, whose new connection takes its ISS from `Connection.reopenIss` of this one.
    | Reopened
    /// An ICMP error ended the connection (RFC 1122 §4.2.3.9: a hard error; in SYN-SENT any
    /// unreachable, as Linux fails a connect): it fails with `error`, the SocketError the
    /// kernel's own socket reports for that ICMP type and code (`TcpIcmp.classify`). CLOSED follows.
    | IcmpError of error: System.Net.Sockets.SocketError
    /// A "fragmentation needed" / "packet too big" for data in flight lowered the path MTU to
    /// `pathMtu` (RFC 1191, RFC 8201, RFC 5927 §4.1 checked): segments are now at most that
    /// size and what was outstanding went out again at the new size. The caller's path MTU
    /// cache learns it, so new connections to the destination start with it.
    | PathMtuLowered of pathMtu: int
    /// An ICMP error was taken without ending the connection or lowering its MTU; `note` says
    /// why (out of window, MTU not lower, a soft error remembered, ignored).
    | IcmpNoted of note: TcpIcmpNote

/// One state change, as reported for checking against `StateModel`.
[<Struct>]
type StateTransition =
    {
        /// The state before.
        From: TcpState
        /// What caused it.
        Trigger: TcpTrigger
        /// The state after (equal to From for a reentry).
        To: TcpState
    }

/// An instruction from the engine to its caller, in the order they must be carried out. A struct
/// union, so the per-segment actions live in a reused `TcpActions` sink rather than on the heap.
[<RequireQualifiedAccess; Struct>]
type TcpAction =
    /// Build and send this segment.
    | Transmit of segment: OutgoingSegment
    /// Copy the arriving segment's payload bytes [PayloadOffset, PayloadOffset + Length) to
    /// receive-stream position Position (byte 0 is the peer's first data byte). The position
    /// always lies within the receive buffer's free space.
    | StoreReceived of payloadOffset: int * position: int64 * length: int
    /// Receive-stream bytes below `upTo` are now in order and readable (each byte once).
    | Deliver of upTo: int64
    /// Auto-tuning grew the receive buffer to `size` bytes: the caller enlarges its receive
    /// buffer, keeping unread and out-of-order bytes at their stream positions, before it
    /// carries out any later action (the next segment may offer the larger window and later
    /// `StoreReceived` positions may use it).
    | ReceiveBufferGrown of size: int
    /// Tell the user.
    | Event of event: TcpEvent
    /// The connection changed state (for audit; nothing to do).
    | Transition of transition: StateTransition

/// A caller-owned, reusable sink the engine's `...Into` entry points append their actions to, in
/// order. The caller clears it before each call and reads the actions in place (`AsSpan`), so
/// steady traffic allocates nothing: the backing array only grows, to the most actions one call
/// ever produced. Not thread-safe: one sink per thread that drives connections.
[<Sealed>]
type TcpActions(capacity: int) =
    let mutable items: TcpAction array = Array.zeroCreate (max 4 capacity)
    let mutable count = 0

    /// An empty sink with room for 16 actions before it first grows.
    new() = TcpActions(16)

    /// How many actions the sink holds.
    member _.Count = count

    /// The action at `index` (0..Count-1); ArgumentOutOfRangeException outside that.
    member _.Item
        with get (index: int) =
            if uint index >= uint count then
                raise (ArgumentOutOfRangeException(nameof index, index, "Not an index of an action in the sink."))

            items[index]

    /// The actions in order, without copying them. Valid until the next `Add` or `Clear`.
    member _.AsSpan() =
        ReadOnlySpan<TcpAction>(items, 0, count)

    /// Appends one action, growing the backing array (doubling) when it is full.
    member _.Add(action: TcpAction) =
        if count = items.Length then
            let bigger = Array.zeroCreate (items.Length * 2)
            Array.Copy(items, bigger, count)
            items <- bigger

        items[count] <- action
        count <- count + 1

    /// Forgets every action (the array is kept for reuse; actions hold no references to release).
    member _.Clear() = count <- 0

    /// The actions as an F# list (allocates; for tests and scripts, not per packet).
    member _.ToList() : TcpAction list =
        let mutable list = []

        for i in count - 1 .. -1 .. 0 do
            list <- items[i] :: list

        list

/// The send sequence space (RFC 9293 §3.3.1, Figure 3) and the send stream. Stream positions
/// count data bytes only (the SYN and FIN take sequence numbers but no position): send byte p
/// has sequence number ISS + 1 + p.
[<Struct>]
type SendSequenceSpace =
    {
        /// ISS: our initial sequence number.
        mutable Iss: SeqNum
        /// SND.UNA: oldest unacknowledged sequence number.
        mutable Una: SeqNum
        /// SND.NXT: next sequence number to send. After a timeout it is pulled back to SND.UNA
        /// (go-back-N), and `Max` remembers how far we had gone.
        mutable Nxt: SeqNum
        /// The highest sequence number sent so far, plus one (BSD's snd_max). ACKs up to it are
        /// acceptable, and our bare ACKs carry it as their sequence number.
        mutable Max: SeqNum
        /// The end of the last data segment sent shorter than a full one (Linux's snd_sml): Nagle
        /// holds new short data only while such a segment is unacknowledged (Minshall's variant).
        mutable Sml: SeqNum
        /// SND.WND: the peer's offered window, in bytes.
        mutable Wnd: int
        /// SND.WL1: SEG.SEQ of the segment that last updated SND.WND.
        mutable Wl1: SeqNum
        /// SND.WL2: SEG.ACK of the segment that last updated SND.WND.
        mutable Wl2: SeqNum
        /// The largest window the peer has offered (RFC 9293 §3.8.6.2.1; RFC 5961 §5.2's MAX.SND.WND).
        mutable MaxWnd: int
        /// Snd.Wind.Shift (RFC 7323 §2.3): the peer's shift, applied to every SEG.WND except on
        /// SYNs. 0 when scaling is off.
        mutable WndShift: int
        /// Effective send MSS, the data bytes of a full segment: the peer's MSS option (or the
        /// default) capped by our own and by `PathMss`, less the timestamps option when on.
        mutable Mss: int
        /// The MSS the path MTU allows (RFC 9293 §3.7.1: path MTU − IP header − 20): our own
        /// MSS at first, or less when the path MTU cache already knew the destination
        /// (`Connection.limitToPathMtu`); lowered by "fragmentation needed" / "packet too big"
        /// (`Connection.handleIcmpInto`). Never below `TcpIcmp.mssForPathMtu` of the floor.
        mutable PathMss: int
        /// Bytes the user has handed to `Connection.sendInto`: send-stream positions [0, Written).
        mutable Written: int64
        /// Bytes acknowledged by the peer and freed: the send-stream position of SND.UNA.
        mutable Acked: int64
        /// The user closed: a FIN follows send-stream position `Written`.
        mutable FinQueued: bool
    }

/// The receive sequence space (RFC 9293 §3.3.1, Figure 4), the receive stream and what we owe
/// the peer in ACKs. Receive byte p has sequence number IRS + 1 + p.
[<Struct>]
type ReceiveSequenceSpace =
    {
        /// IRS: the peer's initial sequence number.
        mutable Irs: SeqNum
        /// RCV.NXT: next sequence number expected.
        mutable Nxt: SeqNum
        /// Right edge of the last window we offered (RCV.NXT + RCV.WND as sent). Never moves left.
        mutable Right: SeqNum
        /// Rcv.Wind.Shift (RFC 7323 §2.3): our shift, applied to every window we send except on
        /// SYNs. 0 when scaling is off.
        mutable WndShift: int
        /// Receive-stream bytes delivered in order: the position of RCV.NXT (FIN not counted).
        mutable Delivered: int64
        /// Receive-stream bytes the user has read (`receiveWindowUpdateInto`).
        mutable Consumed: int64
        /// Ranges beyond `Delivered` received early, stored, and waiting for the gap to fill.
        mutable OutOfOrder: RangeSet
        /// Receive-stream position of the peer's FIN, once a FIN has been seen (maybe early).
        mutable PeerFinAt: int64 voption
        /// The peer's FIN has been taken in order (RCV.NXT counts it).
        mutable FinReceived: bool
        /// Data received since our last ACK was sent (for "ACK every second full segment").
        mutable UnackedBytes: int
        /// An ACK is owed (sent at `Timers.DelayedAckAt` unless a segment carries it sooner).
        mutable AckPending: bool
        /// The largest segment payload received (as Linux's rcv_mss): "a full-sized segment"
        /// for the rule that every second one is ACKed at once.
        mutable Mss: int
        /// Receive-stream positions of the most recent out-of-order arrivals, newest first (at
        /// most four): the first SACK block covers the newest, the next ones the blocks reported
        /// recently (RFC 2018 §4).
        mutable SackRecent: int64 list
    }

/// The connection's timers (absolute deadlines in µs; ValueNone: not running) and the counts and
/// estimates that pace them (RFC 6298, RFC 9293 §3.8).
[<Struct>]
type TcpTimers =
    {
        /// RFC 6298 estimator.
        mutable Rtt: RtoEstimator
        /// The segment being timed for an RTT sample: the sequence number that acknowledges it
        /// and when it was sent. Cleared on retransmission (Karn's rule).
        mutable RttTimed: struct (SeqNum * int64) voption
        /// Consecutive timeouts of the retransmission timer without progress.
        mutable Retries: int
        /// Zero-window probes sent without any acceptable ACK coming back.
        mutable ProbesUnanswered: int
        /// Retransmission timer deadline (RFC 6298).
        mutable RetransmitAt: int64 voption
        /// Persist timer deadline: next zero-window probe (RFC 9293 §3.8.6.1).
        mutable PersistAt: int64 voption
        /// Delayed-ACK deadline.
        mutable DelayedAckAt: int64 voption
        /// TIME-WAIT's 2·MSL deadline, or FIN-WAIT-2's idle deadline.
        mutable LingerAt: int64 voption
        /// Keep-alive deadline: the next probe (RFC 9293 §3.8.4), when keep-alive is on.
        mutable KeepAliveAt: int64 voption
        /// Keep-alive probes sent since the peer's last segment.
        mutable KeepAliveProbes: int
        /// The tail loss probe's timer (RFC 8985 §7.2, PTO), armed while data is outstanding
        /// outside recovery and no probe is unresolved.
        mutable ProbeAt: int64 voption
        /// When the last rate-limited ACK for an invalid segment went out (µs;
        /// Int64.MinValue: never), for `TcpConfig.OutOfWindowAckInterval`.
        mutable LastInvalidAckAt: int64
        /// Since when unacknowledged data (or FIN) has waited with no progress (µs;
        /// Int64.MinValue: nothing waits), for `TcpConfig.UserTimeout`.
        mutable StalledSince: int64
        /// `Snd.Acked` when that wait began: progress restarts it.
        mutable StalledAcked: int64
    }

/// Congestion control (RFC 5681, RFC 9438) and loss recovery: the SACK scoreboard and fast
/// recovery (RFC 6675, NewReno RFC 6582), and the tail loss probe's episode (RFC 8985 §7).
[<Struct>]
type RecoveryState =
    {
        /// Congestion window in bytes.
        mutable Cwnd: int
        /// Slow-start threshold in bytes.
        mutable Ssthresh: int
        /// CUBIC's state (unused by Reno).
        mutable Cubic: CubicState
        /// The sender's scoreboard (RFC 6675 §3): send-stream positions in [Acked, Written) the
        /// peer has SACKed.
        mutable Scoreboard: RangeSet
        /// Duplicate ACKs (RFC 5681 §2, RFC 6675 §2) since SND.UNA last advanced.
        mutable DupAcks: int
        /// In fast recovery (RFC 6675 / RFC 6582) until SND.UNA reaches `RecoveryPoint`.
        mutable InRecovery: bool
        /// RecoveryPoint (RFC 6675) / "recover" (RFC 6582): SND.MAX when loss was detected (or
        /// at a timeout); no new recovery starts until SND.UNA passes it.
        mutable RecoveryPoint: SeqNum
        /// HighRxt (RFC 6675 §2) as a send-stream position: the end of the highest
        /// retransmission in this recovery.
        mutable HighRxt: int64
        /// Retransmissions of this SACK recovery as send-stream ranges with the send position
        /// of SND.MAX when each went out: data SACKed well above that mark was sent later and
        /// arrived, so the retransmission itself was lost (as Linux's tcp_mark_lost_retrans).
        /// At most `MaxRetransmitMarks` entries, newest first.
        mutable RetransmitMarks: struct (int64 * int64 * int64) list
        /// Unacknowledged, unSACKed bytes below this send-stream position count as lost in the
        /// current recovery: set when the peer SACKs a tail loss probe, which went out at least
        /// two round trips after them (RACK's time rule, RFC 8985 §6.2, applied to the probe).
        mutable LostBelow: int64
        /// The send-stream position just past the tail loss probe sent (TLP.end_seq, RFC 8985
        /// §7.3) while it is unresolved: the ACK that passes it ends the episode.
        mutable ProbeEnd: int64 voption
        /// The probe resent old data (rather than sending new data).
        mutable ProbeResent: bool
    }

/// Timestamps (RFC 7323 §3-5): RTT measurement and PAWS.
[<Struct>]
type TimestampState =
    {
        /// Both SYNs carried timestamps: every segment we send carries TSval and TSecr.
        mutable Enabled: bool
        /// Added to `now` in milliseconds to make our TSval, so the clock does not reveal uptime
        /// and differs per connection (RFC 7323 §5.4, §7.1). Derived from the ISS.
        mutable Offset: uint32
        /// TS.Recent (RFC 7323 §4.3): the timestamp to echo in TSecr.
        mutable Recent: uint32
        /// When TS.Recent was last set (µs), for the 24-day PAWS rule (§5.5).
        mutable RecentAt: int64
        /// Last.ACK.sent: the ACK number of the last segment we sent (RFC 7323 §4.3).
        mutable LastAckSent: SeqNum
    }

/// Receive-buffer auto-tuning (dynamic right-sizing, after Linux's tcp_rcv_space_adjust).
[<Struct>]
type AutoTuneState =
    {
        /// The receive buffer's current size: `Config.ReceiveBufferSize` at first, grown by
        /// auto-tuning up to `Config.ReceiveBufferLimit`; never shrinks.
        mutable RcvBuf: int
        /// The receiver's round-trip estimate in µs (Linux's rcv_rtt_est), from the TSecr of
        /// arriving data; 0 before the first measurement.
        mutable RcvRtt: int64
        /// The TSecr last used for `RcvRtt`: one echo gives one sample.
        mutable RcvRttEcho: uint32
        /// The current auto-tuning measurement: since when (µs) and the `Rcv.Consumed` count
        /// then; ValueNone before the first read.
        mutable RcvSpaceFrom: struct (int64 * int64) voption
    }

/// A connection's transmission control block (RFC 9293 §3.3.1), grouped by concern: the send
/// and receive sequence spaces (`Snd`, `Rcv`, with the RFC's variable names), the timers,
/// congestion control and loss recovery, timestamps and receive-buffer auto-tuning.
///
/// A struct value, about 450 bytes. For its users it behaves as a value: the entry points of
/// `Connection` take one and return the next, so a test can keep a copy, replay an input on it
/// and compare the results with `=`. Inside one call the engine updates its own copy in place
/// (through `byref`, which is why every field is mutable) instead of rebuilding it per change:
/// nothing outside the engine should set a field. Copying is not free at this size, and a
/// holder that other threads might read while its owner writes must not share it (a struct
/// this size can tear).
[<Struct>]
type Connection =
    {
        /// Settings.
        mutable Config: TcpConfig
        /// RFC 9293 state.
        mutable State: TcpState
        /// True when the connection began with a passive OPEN (from LISTEN).
        mutable Passive: bool
        /// Both SYNs carried the window scale option (RFC 7323 §2.2).
        mutable WindowScaled: bool
        /// Both SYNs carried SACK-permitted (RFC 2018 §2).
        mutable SackEnabled: bool
        /// A soft ICMP error (RFC 1122 §4.2.3.9) seen since data was last acknowledged: a
        /// connection that then times out fails with it instead of TimedOut (Linux's
        /// sk_err_soft, reported by tcp_write_err). Cleared by an ACK of new data.
        mutable SoftError: System.Net.Sockets.SocketError voption
        /// The send sequence space and send stream.
        mutable Snd: SendSequenceSpace
        /// The receive sequence space, receive stream and ACKs owed.
        mutable Rcv: ReceiveSequenceSpace
        /// Timers and their counts.
        mutable Timers: TcpTimers
        /// Congestion window and loss recovery.
        mutable Recovery: RecoveryState
        /// Timestamps and PAWS.
        mutable Ts: TimestampState
        /// Receive-buffer auto-tuning.
        mutable Tuning: AutoTuneState
    }

    /// `Snd.Written`, under the name the C# API reads (the engine reads the field: a member
    /// call on a struct it holds by `inref` would copy the whole block).
    member c.Written = c.Snd.Written

    /// `Rcv.Consumed`, for the C# API.
    member c.Consumed = c.Rcv.Consumed

    /// `Rcv.Delivered`, for the C# API.
    member c.Delivered = c.Rcv.Delivered

    /// `Timers.Rtt`, for the C# API.
    member c.Rtt = c.Timers.Rtt

    /// `Timers.Retries`, for the C# API.
    member c.Retries = c.Timers.Retries
