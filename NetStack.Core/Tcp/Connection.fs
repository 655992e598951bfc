namespace NetStack.Core.Tcp

open NetStack.Core.Wire
open NetStack.Core.Tcp.ConnectionBasics
open NetStack.Core.Tcp.ReceiveWindow
open NetStack.Core.Tcp.Scoreboard
open NetStack.Core.Tcp.SegmentOutput
open NetStack.Core.Tcp.LossRecovery
open NetStack.Core.Tcp.LossProbe
open NetStack.Core.Tcp.ConnectionTimers
open NetStack.Core.Tcp.SegmentInput
open NetStack.Core.Tcp.FastPath

/// The pure TCP connection engine (RFC 9293): its public entry points. Every function takes the
/// current time (µs, from the caller's monotonic clock), an input and a `Connection`, appends
/// the actions to carry out to the caller's reusable `TcpActions` sink, and returns the next
/// `Connection` (the next timer deadline is `nextDeadline` of it). Nothing here reads a clock,
/// holds payload bytes or performs I/O; the caller owns the send and receive buffers and follows
/// the actions (copy these send-stream bytes into a segment, store these received bytes at that
/// receive-stream position, these bytes are now readable). Steady traffic allocates nothing.
///
/// State changes are reported as `TcpAction.Transition` and are always edges of `StateModel`.
///
/// The rules live by concern in the files before this one: `Basics.fs`, `Window.fs`,
/// `Scoreboard.fs`, `Output.fs`, `Recovery.fs`, `LossProbe.fs`, `Timers.fs`, `Input.fs`,
/// `FastPath.fs`.
[<RequireQualifiedAccess; CompilationRepresentation(CompilationRepresentationFlags.ModuleSuffix)>]
module Connection =

    /// The earliest running timer, if any: when to call `handleTimerInto` next.
    let nextDeadline (c: Connection) : int64 voption =
        let pick (a: int64 voption) (b: int64 voption) =
            match a, b with
            | ValueSome x, ValueSome y -> ValueSome(min x y)
            | ValueSome _, ValueNone -> a
            | _ -> b

        pick
            (pick (pick c.Timers.RetransmitAt c.Timers.PersistAt) (pick c.Timers.DelayedAckAt c.Timers.LingerAt))
            (pick c.Timers.KeepAliveAt c.Timers.ProbeAt)

    // ---- Arriving segments (RFC 9293 §3.10.7) ---------------------------------------------------

    /// §3.10.7.1: the reply to a segment for which no connection exists (a closed port, or a
    /// CLOSED connection): RST, unless the segment is itself a RST. Ports are the segment's, swapped.
    let resetFor (seg: Segment) : OutgoingSegment voption =
        if seg.Has TcpFlags.Rst then
            ValueNone
        elif seg.Has TcpFlags.Ack then
            ValueSome
                {
                    Seq = seg.Ack
                    Ack = SeqNum 0u
                    Flags = TcpFlags.Rst
                    Window = 0us
                    Options = TcpOptions.None
                    DataPosition = 0L
                    DataLength = 0
                }
        else
            ValueSome
                {
                    Seq = SeqNum 0u
                    Ack = seg.Seq + seg.Length
                    Flags = TcpFlags.Rst ||| TcpFlags.Ack
                    Window = 0us
                    Options = TcpOptions.None
                    DataPosition = 0L
                    DataLength = 0
                }

    /// RFC 9293 §3.10.7, by state: CLOSED answers with `resetFor` (§3.10.7.1), LISTEN and
    /// SYN-SENT have their own steps (`Input.fs`: `onListen` §3.10.7.2, `onSynSent` §3.10.7.3),
    /// every other state the synchronized steps (`onSynchronized`, §3.10.7.4).
    let private handle (now: int64) (out: TcpActions) (seg: Segment) (c: Connection) =
        match c.State with
        | TcpState.Closed ->
            match resetFor seg with
            | ValueSome reply -> out.Add(TcpAction.Transmit reply)
            | ValueNone -> ()

            c
        | TcpState.Listen -> onListen now out seg c
        | TcpState.SynSent -> onSynSent now out seg c
        | _ -> onSynchronized now out seg c

    /// True when `seg` takes the fast path (`predictedIn`) for `c`. For tests.
    let internal takesFastPath (seg: Segment) (c: Connection) = predictedIn &seg &c

    /// `handleSegmentInto` without the fast path: every segment through the general steps of
    /// RFC 9293 §3.10.7. For tests, which check that both paths give the same result.
    let internal handleSegmentGeneralInto (out: TcpActions) (now: int64) (seg: Segment) (c: Connection) : Connection =
        let mutable c = handle now out seg c
        peerHeardFromIn now &c
        scheduleProbeIn now &c
        c

    /// Processes one arriving segment (its checksum already verified by the caller). The common
    /// segments of ESTABLISHED (in-order data, ACKs of new data) take a fast path with the same
    /// result (`predictedIn`).
    let handleSegmentInto (out: TcpActions) (now: int64) (seg: Segment) (c: Connection) : Connection =
        let mutable c = c

        if predictedIn &seg &c then
            fastPathIn now out &seg &c
        else
            c <- handle now out seg c
            peerHeardFromIn now &c
            scheduleProbeIn now &c

        c

    // ---- Timers (what each does: `Timers.fs`) ---------------------------------------------------

    /// Runs every timer whose deadline is at or before `now`. Calling it early is harmless.
    let handleTimerInto (out: TcpActions) (now: int64) (c: Connection) : Connection =

        let c =
            if due now c.Timers.LingerAt then
                match c.State with
                | TcpState.TimeWait -> enterClosed out TcpTrigger.TimeWaitTimeout c
                | TcpState.FinWait2 ->
                    out.Add(TcpAction.Event TcpEvent.TimedOut)
                    enterClosed out TcpTrigger.Timeout c
                | _ -> { c with Timers.LingerAt = ValueNone }
            else
                c

        let live (c: Connection) = c.State <> TcpState.Closed
        // First, so that an expired connection sends its RST and no probe or retransmission.
        let c = if live c then checkUserTimeout now out c else c

        let c =
            if live c && due now c.Timers.RetransmitAt then
                onRetransmitTimeout now out c
            else
                c

        let c =
            if live c && due now c.Timers.PersistAt then
                onPersist now out c
            else
                c

        let c =
            if live c && due now c.Timers.DelayedAckAt then
                if c.Rcv.AckPending then
                    sendAck now out c
                else
                    { c with
                        Timers.DelayedAckAt = ValueNone
                    }
            else
                c

        let c =
            if live c && due now c.Timers.KeepAliveAt then
                onKeepAlive now out c
            else
                c

        let mutable c =
            if live c && due now c.Timers.ProbeAt then
                onProbe now out c
            else
                c

        scheduleProbeIn now &c
        c

    // ---- ICMP errors (RFC 1122 §4.2.3.9, RFC 5927, RFC 1191, RFC 8201) --------------------------

    /// RFC 5927 §4.1: an ICMP error is about data in flight only when the quoted SEG.SEQ lies in
    /// [SND.UNA, SND.NXT). SND.MAX stands for the RFC's SND.NXT here: after a timeout pulled
    /// SND.NXT back, segments up to SND.MAX are still out there. In SYN-SENT and SYN-RECEIVED
    /// that is our SYN (ISS) alone.
    let private quotesInFlight (seq: SeqNum) (c: Connection) =
        SeqNum.le c.Snd.Una seq && SeqNum.lt seq c.Snd.Max

    /// Sends again, at the current (lowered) MSS, everything outstanding: SND.NXT goes back to
    /// SND.UNA as after a timeout, but without the congestion response (the packets were
    /// dropped for their size, not for congestion: Linux's tcp_simple_retransmit keeps cwnd
    /// and ssthresh too), without backoff, and with the recovery state cleared so nothing sent
    /// before counts as a new loss episode (RFC 6582's "recover" = SND.MAX). SACKed ranges are
    /// skipped as in any go-back-N.
    let private resendOutstanding (now: int64) (out: TcpActions) (c: Connection) =
        if sendsData c.State && synAckedIn &c && SeqNum.lt c.Snd.Una c.Snd.Max then
            { goBackN c with
                Timers.RetransmitAt = ValueNone
            }
            |> transmit now out
        else
            c

    /// `PathMss` and `SendMss` for a path MTU of `pathMtu` (already at least the floor).
    let private withPathMtu (ipv6: bool) (pathMtu: int) (c: Connection) =
        let pathMss = pathMtu - TcpIcmp.ipHeaderLength ipv6 - 20
        let optionBytes = if c.Ts.Enabled then TimestampsLength else 0

        { c with
            Snd.PathMss = min c.Snd.PathMss pathMss
            Snd.Mss = max 1 (min c.Snd.Mss (pathMss - optionBytes))
        }

    /// The connection's current path MTU as TCP sees it.
    let private currentPathMtu (ipv6: bool) (c: Connection) =
        c.Snd.PathMss + TcpIcmp.ipHeaderLength ipv6 + 20

    /// Caps a new connection's segments at what `pathMtu` allows (clamped to the floor,
    /// `TcpIcmp.MinPathMtu4/6`): the caller's path MTU cache remembers what ICMP taught about the
    /// destination before (as Linux's tcp_sync_mss takes the route's MTU at connect and accept).
    /// Only lowers; no action, since nothing but a SYN or SYN,ACK was sent at the old size. The
    /// MSS we announce stays our link's (RFC 9293 §3.7.1, as Linux's advmss).
    let limitToPathMtu (ipv6: bool) (pathMtu: int) (c: Connection) : Connection =
        let mtu = TcpIcmp.clampPathMtu ipv6 pathMtu

        if mtu >= currentPathMtu ipv6 c then
            c
        else
            withPathMtu ipv6 mtu c

    /// Fails the connection with `error` (RFC 1122 §4.2.3.9 "abort"): no RST, since the ICMP
    /// says the peer cannot be reached or has no such connection (as Linux's tcp_done).
    let private failByIcmp (out: TcpActions) (error: System.Net.Sockets.SocketError) (c: Connection) =
        out.Add(TcpAction.Event(TcpEvent.IcmpError error))
        enterClosed out TcpTrigger.IcmpHardError c

    /// An ICMP error quoting a segment of this connection (its 4-tuple matched by the caller):
    /// - the quoted sequence number must lie in [SND.UNA, SND.MAX) (RFC 5927 §4.1), else it is
    ///   ignored (`TcpIcmpNote.OutOfWindow`);
    /// - "fragmentation needed" / "packet too big" (RFC 1191, RFC 8201) with an MTU below the
    ///   current one (clamped to 576 / 1280) lowers `PathMss` and `SendMss`
    ///   (`TcpEvent.PathMtuLowered`) and, when that shrinks segments, resends what is
    ///   outstanding at the new size (Linux's tcp_v4_mtu_reduced + tcp_simple_retransmit); a
    ///   higher or equal MTU is ignored (`MtuNotLower`, RFC 1191 §6.3);
    /// - in SYN-SENT (and the SYN-RECEIVED of a simultaneous open) any destination unreachable,
    ///   time exceeded or parameter problem fails the connect at once with its error, as Linux's
    ///   tcp_v4_err / tcp_v6_err do (`TcpEvent.IcmpError`, then CLOSED);
    /// - elsewhere a hard error (`TcpIcmp.classify`: RFC 1122 §4.2.3.9 protocol and port
    ///   unreachable; for ICMPv6 also the codes Linux deems fatal) aborts the connection; a soft
    ///   one is remembered (`Connection.SoftError`) and reported only if the connection later
    ///   times out (RFC 1122 §4.2.3.9 DISCUSSION, Linux's sk_err_soft).
    /// Passive SYN-RECEIVED is treated as synchronized: a hard error drops the half-open
    /// connection (nobody has accepted it: Linux drops its request sock silently too).
    let handleIcmpInto (out: TcpActions) (now: int64) (error: TcpIcmpError) (c: Connection) : Connection =
        let note (n: TcpIcmpNote) =
            out.Add(TcpAction.Event(TcpEvent.IcmpNoted n))
            c

        match c.State with
        | TcpState.Closed
        | TcpState.Listen -> note TcpIcmpNote.Ignored
        | _ when not (quotesInFlight error.QuotedSeq c) -> note TcpIcmpNote.OutOfWindow
        | state ->
            match TcpIcmp.classify error.Ipv6 error.Type error.Code with
            | TcpIcmpMeaning.Ignore -> note TcpIcmpNote.Ignored
            | TcpIcmpMeaning.PacketTooBig ->
                let mtu = TcpIcmp.clampPathMtu error.Ipv6 error.PathMtu

                if mtu >= currentPathMtu error.Ipv6 c then
                    note TcpIcmpNote.MtuNotLower
                else
                    let lowered = withPathMtu error.Ipv6 mtu c
                    out.Add(TcpAction.Event(TcpEvent.PathMtuLowered mtu))

                    if lowered.Snd.Mss < c.Snd.Mss then
                        let mutable c = resendOutstanding now out lowered
                        scheduleProbeIn now &c
                        c
                    else
                        lowered
            | TcpIcmpMeaning.Hard e -> failByIcmp out e c
            | TcpIcmpMeaning.Soft e ->
                if state = TcpState.SynSent || (state = TcpState.SynReceived && not c.Passive) then
                    failByIcmp out e c
                else
                    let c = { c with SoftError = ValueSome e }
                    out.Add(TcpAction.Event(TcpEvent.IcmpNoted TcpIcmpNote.SoftErrorRemembered))
                    c

    /// The error a connection that ended with `TcpEvent.TimedOut` or `UserTimedOut` fails
    /// with: the soft ICMP error it saw last, if any (RFC 1122 §4.2.3.9: "report it to the
    /// application only when and if the TCP connection times out"; Linux's tcp_write_err gives
    /// sk_err_soft before ETIMEDOUT), else TimedOut.
    let timeoutError (c: Connection) : System.Net.Sockets.SocketError =
        match c.SoftError with
        | ValueSome e -> e
        | ValueNone -> System.Net.Sockets.SocketError.TimedOut

    // ---- User calls (RFC 9293 §3.10.1–3.10.5) ---------------------------------------------------

    /// A CLOSED connection with ISS `iss` and nothing else.
    let private create (config: TcpConfig) (iss: SeqNum) : Connection =
        config.Validate()
        let mss = min config.DefaultPeerMss config.Mss

        {
            Config = config
            State = TcpState.Closed
            Passive = false
            WindowScaled = false
            SackEnabled = false
            SoftError = ValueNone
            Snd =
                {
                    Iss = iss
                    Una = iss
                    Nxt = iss
                    Max = iss
                    Sml = iss
                    Wnd = 0
                    Wl1 = SeqNum 0u
                    Wl2 = SeqNum 0u
                    MaxWnd = 0
                    WndShift = 0
                    Mss = mss
                    PathMss = config.Mss
                    Written = 0L
                    Acked = 0L
                    FinQueued = false
                }
            Rcv =
                {
                    Irs = SeqNum 0u
                    Nxt = SeqNum 0u
                    Right = SeqNum 0u
                    WndShift = 0
                    Delivered = 0L
                    Consumed = 0L
                    OutOfOrder = RangeSet.empty
                    PeerFinAt = ValueNone
                    FinReceived = false
                    UnackedBytes = 0
                    AckPending = false
                    Mss = mss
                    SackRecent = []
                }
            Timers =
                {
                    Rtt = Rto.initial config.InitialRto
                    RttTimed = ValueNone
                    Retries = 0
                    ProbesUnanswered = 0
                    RetransmitAt = ValueNone
                    PersistAt = ValueNone
                    DelayedAckAt = ValueNone
                    LingerAt = ValueNone
                    KeepAliveAt = ValueNone
                    KeepAliveProbes = 0
                    ProbeAt = ValueNone
                    LastInvalidAckAt = System.Int64.MinValue
                    StalledSince = System.Int64.MinValue
                    StalledAcked = 0L
                }
            Recovery =
                {
                    Cwnd = initialWindow mss
                    Ssthresh = 1 <<< 30
                    Cubic = CubicState.Initial
                    Scoreboard = RangeSet.empty
                    DupAcks = 0
                    InRecovery = false
                    RecoveryPoint = iss
                    HighRxt = 0L
                    RetransmitMarks = []
                    LostBelow = 0L
                    ProbeEnd = ValueNone
                    ProbeResent = false
                }
            Ts =
                {
                    Enabled = false
                    // A per-connection offset for TSval (RFC 7323 §7.1): the ISS is already
                    // secret and per 4-tuple (RFC 6528); the multiplier spreads it so the two do
                    // not look alike.
                    Offset = iss.Value * 2654435761u
                    Recent = 0u
                    RecentAt = 0L
                    LastAckSent = SeqNum 0u
                }
            Tuning =
                {
                    RcvBuf = config.ReceiveBufferSize
                    RcvRtt = 0L
                    RcvRttEcho = 0u
                    RcvSpaceFrom = ValueNone
                }
        }

    /// Active OPEN: a connection in SYN-SENT whose SYN (with our MSS) is in the output. `iss`
    /// comes from `Isn.generate` for the connection's 4-tuple.
    let openActiveInto (out: TcpActions) (config: TcpConfig) (iss: SeqNum) (now: int64) : Connection =

        let c =
            create config iss
            |> move out TcpTrigger.ActiveOpen TcpState.SynSent
            |> transmit now out

        c

    /// Passive OPEN: a connection in LISTEN. A listener makes one per arriving SYN (see
    /// `acceptInto`), so `iss` is that SYN's 4-tuple's ISN; the listener itself, with its accept
    /// queue, belongs to the caller.
    let listenInto (out: TcpActions) (config: TcpConfig) (iss: SeqNum) : Connection =

        let c =
            { create config iss with
                Passive = true
            }
            |> move out TcpTrigger.PassiveOpen TcpState.Listen

        c

    /// A listener's reaction to a segment for no existing connection: a new LISTEN connection
    /// (`listenInto`) handed `seg` through `handleSegmentInto`, so there is one implementation
    /// of LISTEN processing (RFC 9293 §3.10.7.2, `onListen`). A SYN yields SYN-RECEIVED and a
    /// SYN,ACK; anything else leaves it useless (in LISTEN or answered with a RST), and the
    /// caller drops it.
    let acceptInto (out: TcpActions) (config: TcpConfig) (iss: SeqNum) (now: int64) (seg: Segment) : Connection =
        listenInto out config iss |> handleSegmentInto out now seg

    /// How far beyond the old incarnation's SND.MAX `reopenIss` puts the new ISS when the
    /// generator's value is not already past it: one unscaled window and two, as Linux
    /// (tcp_timewait_state_process: tw_snd_nxt + 65535 + 2).
    [<Literal>]
    let ReopenIssGap = 65537

    /// The ISS for the connection a SYN opens when it ends `old`'s TIME-WAIT (`TcpEvent.Reopened`):
    /// RFC 1122 §4.2.2.13 lets a SYN reopen a connection in TIME-WAIT only when the new ISN
    /// is larger than the largest sequence number the old incarnation used (SND.MAX - 1, its
    /// FIN's), so that no old duplicate of ours can land in the new connection's sequence space
    /// at the peer. "Larger" is in sequence space: ahead by less than 2^31 (RFC 9293 §3.4). The
    /// RFC 6528 value `generated` (the same 4-tuple's offset plus the 4 µs clock) is kept when it
    /// lies at least `ReopenIssGap` beyond old SND.MAX, so the ISS stays unpredictable; when the
    /// old incarnation sent more than the clock advanced (or the generator lies 2^31 or more
    /// ahead, which reads as behind), it is old SND.MAX + `ReopenIssGap` instead.
    let reopenIss (old: Connection) (generated: SeqNum) : SeqNum =
        let largestUsed = old.Snd.Max - 1

        if generated - largestUsed > ReopenIssGap then
            generated
        else
            old.Snd.Max + ReopenIssGap

    /// True when `sendInto` is allowed: the connection is open or opening and the user has not closed it.
    let canSend (c: Connection) =
        not c.Snd.FinQueued
        && (match c.State with
            | TcpState.SynSent
            | TcpState.SynReceived
            | TcpState.Established
            | TcpState.CloseWait -> true
            | _ -> false)

    /// The user appended `bytes` to the send buffer (send-stream positions [Written, Written +
    /// bytes)). Data queued before ESTABLISHED goes out once the handshake completes. Throws
    /// InvalidOperationException when `canSend` is false (writing after close is a caller bug;
    /// the API reports it as the kernel does) and ArgumentException for a negative count.
    let sendInto (out: TcpActions) (now: int64) (bytes: int64) (c: Connection) : Connection =
        if bytes < 0L then
            invalidArg (nameof bytes) "A byte count cannot be negative."

        if not (canSend c) then
            invalidOp $"Cannot send in {c.State} (closed for sending: {c.Snd.FinQueued})."

        let mutable c = c
        c.Snd.Written <- c.Snd.Written + bytes
        c <- transmit now out c
        scheduleProbeIn now &c
        c

    /// Send-buffer auto-tuning (the idea of Linux's tcp_sndbuf_expand): the size in bytes the
    /// send buffer of a connection should have whose writer is waiting for room in a buffer of
    /// `capacity` bytes, at most `maximum`. Twice what the congestion and peer windows let into
    /// flight (one flight in the network, the next one queued), rounded up to a power of two; a
    /// buffer that already holds that, or a maximum not above `capacity`, stays as it is. The
    /// buffer never shrinks.
    let sendBufferWanted (capacity: int) (maximum: int) (c: Connection) : int =
        if maximum <= capacity then
            capacity
        else
            let flight = int64 (max 0 (min c.Recovery.Cwnd c.Snd.Wnd))
            let wanted = 2L * flight

            if wanted <= int64 capacity then
                capacity
            else
                let mutable size = int64 capacity

                while size < wanted && size < int64 maximum do
                    size <- size * 2L

                int (min size (int64 maximum))

    /// Switches the Nagle algorithm off (`noDelay` true) or back on for this connection (the
    /// `TcpConfig.NoDelay` setting, like setting TCP_NODELAY on a socket). Turning it off sends
    /// any data Nagle was holding at once.
    let setNoDelayInto (out: TcpActions) (now: int64) (noDelay: bool) (c: Connection) : Connection =

        let c =
            { c with
                Config = { c.Config with NoDelay = noDelay }
            }

        let c = if noDelay then transmit now out c else c
        c

    /// The user changed the connection's socket options (`settings`, as setsockopt on a kernel
    /// socket, at any time): later segments carry the new IP header settings; TCP_NODELAY on
    /// sends what Nagle held (as `setNoDelayInto`); keep-alive turned on, or its idle time
    /// changed, starts the idle time again from `now` (Linux re-arms its keep-alive timer the
    /// same way), turned off stops it. A locked receive buffer (`ReceiveBufferSize` > 0) ends
    /// auto-tuning; one larger than the current buffer grows it (`ReceiveBufferGrown` first,
    /// then a window update when that opens the window noticeably), up to what the window
    /// scale agreed at SYN time can offer (65535·2^shift, RFC 7323 §2.3: the shift cannot
    /// change after the handshake); a smaller one never shrinks it (the right edge offered may
    /// not move left, RFC 9293 §3.8.6). Before the handshake completes the size also decides
    /// the shift our SYN offers, if the SYN has not left yet (it has, after an active OPEN).
    /// Throws ArgumentException for settings out of range.
    let configureInto (out: TcpActions) (now: int64) (settings: TcpSocketSettings) (c: Connection) : Connection =
        let config = settings.Apply c.Config
        let keepAliveChanged = config.KeepAliveIdle <> c.Config.KeepAliveIdle
        let nagleOff = config.NoDelay && not c.Config.NoDelay
        let mutable c = { c with Config = config }

        if keepAliveChanged then
            peerHeardFromIn now &c

        let c = if nagleOff then transmit now out c else c

        if settings.ReceiveBufferSize > c.Tuning.RcvBuf then
            let limit =
                if c.State = TcpState.Closed || c.State = TcpState.Listen then
                    settings.ReceiveBufferSize
                elif c.WindowScaled then
                    int (min (int64 settings.ReceiveBufferSize) (65535L <<< c.Rcv.WndShift))
                else
                    min settings.ReceiveBufferSize 65535

            if limit > c.Tuning.RcvBuf then
                out.Add(TcpAction.ReceiveBufferGrown limit)
                let grown = { c with Tuning.RcvBuf = limit }

                if receivesData grown.State && not grown.Rcv.FinReceived then
                    let before = offeredWindow grown
                    let mutable refreshed = grown
                    refreshWindowIn &refreshed
                    let after = offeredWindow refreshed

                    if
                        refreshed.Rcv.Right - grown.Rcv.Right > 0
                        && windowUpdateWorthIt grown.Config.Mss grown.Tuning.RcvBuf before after
                    then
                        sendAck now out grown
                    else
                        grown
                else
                    grown
            else
                c
        else
            c

    /// The user read `bytes` more of the delivered data, freeing receive buffer space (and, with
    /// auto-tuning on, maybe growing the buffer: `ReceiveBufferGrown` comes first). When that
    /// opens the window noticeably (from below one MSS, or from at most half the buffer to at
    /// least twice what was offered) a window update is sent at once, so a peer stopped by a
    /// small window need not wait for its persist timer. Throws ArgumentException when more is read than was delivered.
    let receiveWindowUpdateInto (out: TcpActions) (now: int64) (bytes: int64) (c: Connection) : Connection =
        if bytes < 0L || c.Rcv.Consumed + bytes > c.Rcv.Delivered then
            invalidArg
                (nameof bytes)
                $"{bytes} bytes read, but only {c.Rcv.Delivered - c.Rcv.Consumed} were delivered and unread."

        let c =
            { c with
                Rcv.Consumed = c.Rcv.Consumed + bytes
            }

        let c =
            if receivesData c.State && not c.Rcv.FinReceived then
                let c = tuneReceiveBuffer now out c
                let before = offeredWindow c
                let mutable refreshed = c
                refreshWindowIn &refreshed
                let growth = refreshed.Rcv.Right - c.Rcv.Right

                let after = offeredWindow refreshed

                let worthIt =
                    growth > 0 && windowUpdateWorthIt c.Config.Mss c.Tuning.RcvBuf before after

                if worthIt then sendAck now out c else c
            else
                c

        c

    /// User CLOSE (§3.10.4): no more data from us. LISTEN and SYN-SENT close at once;
    /// SYN-RECEIVED sends its FIN and enters FIN-WAIT-1 when nothing was written, else the FIN
    /// waits for ESTABLISHED; ESTABLISHED and CLOSE-WAIT send a FIN after the queued data.
    /// Closing a closing or closed connection changes nothing.
    let closeInto (out: TcpActions) (now: int64) (c: Connection) : Connection =

        let c =
            match c.State with
            | TcpState.Listen
            | TcpState.SynSent -> enterClosed out TcpTrigger.Close c
            // §3.10.4, SYN-RECEIVED: "If no SENDs have been issued and there is no pending data
            // to send, then form a FIN segment and send it, and enter FIN-WAIT-1 state; otherwise,
            // queue for processing after entering ESTABLISHED state" (RFC 9293 Figure 5's
            // SYN-RCVD --CLOSE--> FIN-WAIT-1). The FIN follows the SYN,ACK (ISS + 1).
            | TcpState.SynReceived when c.Snd.Written = 0L && not c.Snd.FinQueued ->
                { c with Snd.FinQueued = true }
                |> move out TcpTrigger.Close TcpState.FinWait1
                |> transmit now out
            | TcpState.SynReceived -> { c with Snd.FinQueued = true }
            | TcpState.Established ->
                { c with Snd.FinQueued = true }
                |> move out TcpTrigger.Close TcpState.FinWait1
                |> transmit now out
            | TcpState.CloseWait ->
                { c with Snd.FinQueued = true }
                |> move out TcpTrigger.Close TcpState.LastAck
                |> transmit now out
            | _ -> c

        let mutable c = c
        scheduleProbeIn now &c
        c

    /// User ABORT (§3.10.5): a RST to the peer when it may hold state for us, then CLOSED.
    let abortInto (out: TcpActions) (now: int64) (c: Connection) : Connection =
        ignore now
        resetAndClose TcpTrigger.Abort out c
