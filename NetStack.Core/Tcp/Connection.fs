namespace NetStack.Core.Tcp

open NetStack.Core.Wire

/// The pure TCP connection engine (RFC 9293): every function takes the current time (µs, from
/// the caller's monotonic clock), an input and a `Connection`, and returns the next
/// `Connection` with the `TcpOutput` to carry out. Nothing here reads a clock, holds payload
/// bytes or performs I/O; the caller owns the send and receive buffers and follows the
/// actions (copy these send-stream bytes into a segment, store these received bytes at that
/// receive-stream position, these bytes are now readable).
///
/// State changes are reported as `TcpAction.Transition` and are always edges of `StateModel`.
///
/// Each entry point comes twice: `xxxInto out ...` appends its actions to the caller's reusable
/// `TcpActions` sink and returns the new `Connection` (the timer deadline is `nextDeadline` of
/// it), allocating nothing on the data path; `xxx ...` is the same call returning the actions as
/// a list in a `TcpOutput`, for tests, scripts and anything not per packet.
[<RequireQualifiedAccess; CompilationRepresentation(CompilationRepresentationFlags.ModuleSuffix)>]
module Connection =

    type private Out = TcpActions

    // ---- Sequence numbers and stream positions ---------------------------------------------

    /// Send-stream byte `p` has sequence number ISS + 1 + p (the SYN takes ISS).
    let private sendSeqOf (c: Connection) (position: int64) = c.Iss + 1 + int position

    /// Receive-stream byte `p` has sequence number IRS + 1 + p.
    let private recvSeqOf (c: Connection) (position: int64) = c.Irs + 1 + int position

    /// The sequence number of our FIN (once queued): just past the last byte written.
    let private finSeq (c: Connection) = sendSeqOf c c.Written

    /// The send-stream position of sequence number `s` (at or after SND.UNA).
    let private sendPosOf (c: Connection) (s: SeqNum) =
        c.Acked + int64 (s - sendSeqOf c c.Acked)

    /// Our SYN has been acknowledged. Only SYN-SENT and SYN-RECEIVED wait for that, and there
    /// SND.UNA is still within a few bytes of ISS; afterwards the comparison with ISS would be
    /// meaningless (sequence numbers compare modulo 2^32, so after 2 GiB sent SND.UNA looks
    /// "before" ISS, which once stopped every send past the 2 GiB mark).
    let private synAckedIn (c: inref<Connection>) =
        match c.State with
        | TcpState.Closed
        | TcpState.Listen
        | TcpState.SynSent
        | TcpState.SynReceived -> SeqNum.gt c.SndUna c.Iss
        | _ -> true

    /// `synAckedIn` of a value.
    let private synAcked (c: Connection) = synAckedIn &c

    /// True when our FIN has been sent and acknowledged.
    let private finAcked (c: Connection) =
        c.FinQueued && SeqNum.gt c.SndUna (finSeq c)

    /// States in which queued data (and then our FIN) may go out.
    let private sendsData (state: TcpState) =
        match state with
        | TcpState.Established
        | TcpState.CloseWait
        | TcpState.FinWait1
        | TcpState.Closing
        | TcpState.LastAck -> true
        | _ -> false

    /// States in which the peer's data is taken (RFC 9293 §3.10.7.4, seventh step).
    let private receivesData (state: TcpState) =
        match state with
        | TcpState.Established
        | TcpState.FinWait1
        | TcpState.FinWait2 -> true
        | _ -> false

    /// RFC 6928 initial window: min(10·MSS, max(2·MSS, 14600)).
    let private initialWindow (mss: int) = Congestion.initialWindow mss

    /// Bytes the timestamps option takes in every segment (10, NOP-padded to 12): the data of a
    /// segment shrinks by as much so header + options + data still fit the MSS (RFC 6691).
    [<Literal>]
    let private TimestampsLength = 12

    /// PAWS forgets TS.Recent after 24 days idle (RFC 7323 §5.5), in µs.
    let private PawsIdleLimit = 24L * 86_400_000_000L

    /// Our TSval: a 1 ms clock (RFC 7323 §5.4 asks for 1 ms to 1 s per tick) plus the
    /// connection's offset.
    let private tsNow (now: int64) (c: Connection) = uint32 (now / 1000L) + c.TsOffset

    /// The first argument is newer than the second in the 32-bit timestamp space (§5.2).
    let private tsAfter (a: uint32) (b: uint32) = int (a - b) > 0

    // ---- Timers -------------------------------------------------------------------------------

    /// The earliest running timer, if any.
    let nextDeadline (c: Connection) : int64 voption =
        let pick (a: int64 voption) (b: int64 voption) =
            match a, b with
            | ValueSome x, ValueSome y -> ValueSome(min x y)
            | ValueSome _, ValueNone -> a
            | _ -> b

        pick (pick (pick c.RetransmitAt c.PersistAt) (pick c.DelayedAckAt c.LingerAt)) (pick c.KeepAliveAt c.ProbeAt)

    /// RFC 6298 §5.1: start the timer when data goes out and it is not running.
    let private armRetransmit (now: int64) (c: Connection) =
        if c.RetransmitAt.IsNone then
            { c with
                RetransmitAt = ValueSome(now + c.Rtt.Rto)
            }
        else
            c

    /// Zero-window probes back off like retransmissions, up to `MaxPersistInterval`.
    let private persistInterval (c: inref<Connection>) =
        let shift = min c.ProbesUnanswered 20
        min c.Config.MaxPersistInterval (c.Rtt.Rto <<< shift)

    // ---- State changes ------------------------------------------------------------------------

    let private move (out: Out) (trigger: TcpTrigger) (target: TcpState) (c: Connection) =
        out.Add(
            TcpAction.Transition
                {
                    From = c.State
                    Trigger = trigger
                    To = target
                }
        )

        { c with State = target }

    let private enterClosed (out: Out) (trigger: TcpTrigger) (c: Connection) =
        let c = move out trigger TcpState.Closed c
        out.Add(TcpAction.Event TcpEvent.Closed)

        { c with
            RetransmitAt = ValueNone
            PersistAt = ValueNone
            DelayedAckAt = ValueNone
            LingerAt = ValueNone
            KeepAliveAt = ValueNone
            ProbeAt = ValueNone
            AckPending = false
        }

    /// TIME-WAIT holds the connection for 2·MSL (RFC 9293 §3.4.2) so that late duplicates die
    /// and a lost final ACK can be repeated; nothing else runs.
    let private enterTimeWait (now: int64) (out: Out) (trigger: TcpTrigger) (c: Connection) =
        let c = move out trigger TcpState.TimeWait c

        { c with
            RetransmitAt = ValueNone
            PersistAt = ValueNone
            KeepAliveAt = ValueNone
            ProbeAt = ValueNone
            LingerAt = ValueSome(now + 2L * c.Config.Msl)
        }

    // ---- Receive window (RFC 9293 §3.8.6.2.2) --------------------------------------------------

    /// Moves the offered right edge to the free end of the receive buffer, but only in steps of
    /// at least min(buffer/2, MSS): receiver-side silly window syndrome avoidance. The edge
    /// never moves left, which the RFC forbids ("shrinking the window", §3.8.6).
    let private refreshWindowIn (c: byref<Connection>) =
        let inOrderEdge = c.Irs + 1 + int c.Delivered
        let room = c.Consumed + int64 c.RcvBuf - c.Delivered
        // The 16-bit field, scaled by our shift (RFC 7323 §2.2), bounds what can be offered.
        let candidate = inOrderEdge + int (min (65535L <<< c.RcvWndShift) room)
        let threshold = max 1 (min (c.RcvBuf / 2) c.Config.Mss)

        if SeqNum.gt candidate c.RcvRight && candidate - c.RcvRight >= threshold then
            c.RcvRight <- candidate

    /// `refreshWindowIn` on a copy.
    let private refreshWindow (c: Connection) =
        let mutable c = c
        refreshWindowIn &c
        c

    /// RCV.WND as we last offered it, in bytes.
    let private offeredWindow (c: Connection) = max 0 (c.RcvRight - c.RcvNxt)

    /// The window-update rule (RFC 9293 §3.8.6.2.2, RFC 1122 §4.2.3.3, after Linux's
    /// tcp_cleanup_rbuf), in two halves that must agree, kept here side by side.
    ///
    /// The engine half: after a read that moved the offered right edge, a pure window update
    /// goes out only when the window we had
    /// offered (`before`, in bytes) was below one MSS, where the peer may be stopped, or had
    /// shrunk to half the buffer or less and the read at least doubles it (`after`). A reader
    /// that keeps up gets its window carried by the ACKs the data triggers anyway, so an update
    /// per couple of segments read would only double the ACKs the peer has to process.
    let private windowUpdateWorthIt (mss: int) (buffer: int) (before: int) (after: int) =
        before < mss || (2 * before <= buffer && after >= 2 * before)

    /// Below this much free receive buffer (64 KiB: the largest window a SYN can offer, and 44
    /// full-sized segments at MTU 1500) a read is always reported promptly
    /// (`readWantsWindowUpdate`).
    [<Literal>]
    let LazyWindowMinimum = 65536

    /// The reader's half of the window-update rule: true when a read must reach the engine at
    /// once (`receiveWindowUpdateInto` without delay) rather than with the next packet, timer
    /// or write. `bufferSize` is the receive buffer's size and `unreadBytes` what was delivered
    /// and not yet reported read. Prompt while the free space is at most half the buffer or
    /// below `LazyWindowMinimum`: above both, the window the engine offers with every ACK is
    /// already more than half the buffer and at least 64 KiB, so by the engine's half
    /// (`windowUpdateWorthIt`) no pure window update would go out and no peer waits for one.
    /// Pure arithmetic, so the reader may call it on its own thread.
    let readWantsWindowUpdate (bufferSize: int) (unreadBytes: int64) : bool =
        let free = int64 bufferSize - unreadBytes
        2L * free <= int64 bufferSize || free < int64 LazyWindowMinimum

    // ---- Receive-buffer auto-tuning (dynamic right-sizing) -----------------------------------

    /// Receiver-side round-trip measurement (after Linux's tcp_rcv_rtt_measure_ts): a full-sized
    /// data segment whose TSecr echoes a TSval not measured with yet left the peer about one
    /// round trip after we sent that TSval (RFC 7323 §4: the peer echoes our latest timestamp).
    /// The estimate follows the smallest samples at once and rises only by 1/8 per sample,
    /// since a peer that holds data back makes samples longer than the path.
    let private measureReceiverRttIn (now: int64) (seg: inref<Segment>) (c: byref<Connection>) =
        match seg.Options.Timestamps with
        | ValueSome ts when
            c.TsEnabled
            && c.Config.ReceiveBufferLimit > c.RcvBuf
            && ts.EchoReply <> 0u
            && ts.EchoReply <> c.RcvRttEcho
            && seg.PayloadLength >= c.RcvMss
            ->
            let ms = int (uint32 (now / 1000L) + c.TsOffset - ts.EchoReply)

            if ms < 0 || int64 ms * 1000L > c.Config.MaxRto then
                ()
            else
                // The timestamp clock ticks in ms: 0 means "under a millisecond", taken as one.
                let sample = max 1000L (int64 ms * 1000L)

                let rtt =
                    if c.RcvRtt = 0L || sample < c.RcvRtt then
                        sample
                    else
                        c.RcvRtt - c.RcvRtt / 8L + sample / 8L

                c.RcvRtt <- rtt
                c.RcvRttEcho <- ts.EchoReply
        | _ -> ()

    /// `measureReceiverRttIn` on a copy.
    let private measureReceiverRtt (now: int64) (seg: Segment) (c: Connection) =
        let mutable c = c
        measureReceiverRttIn now &seg &c
        c

    /// Receive-buffer auto-tuning (dynamic right-sizing, after Linux's tcp_rcv_space_adjust).
    /// Once per receiver round trip (the timestamp estimate, else the sender's SRTT) it looks at
    /// how much the reader consumed per round trip. A reader that took more than half the
    /// buffer is limited by the window (a buffer B sustains at most B per round trip, and a
    /// sender in slow start wants twice last round's), so the buffer grows to twice that
    /// consumption plus four segments of headroom (data held out of order after a loss, reads
    /// that come in bursts), up to `Config.ReceiveBufferLimit`. An idle or slow reader never
    /// grows it. The buffer never shrinks, so the offered right edge never moves left (RFC 9293
    /// §3.8.6), and the shift chosen at SYN time covers the limit (RFC 7323 §2.3). The caller
    /// learns the size from `ReceiveBufferGrown` before any segment offers the larger window.
    let private tuneReceiveBuffer (now: int64) (out: Out) (c: Connection) =
        // Without window scaling no window beyond 65535 can be offered: growing past it is waste.
        let limit =
            if c.WindowScaled then
                c.Config.ReceiveBufferLimit
            else
                max c.RcvBuf (min 65535 c.Config.ReceiveBufferLimit)

        let rtt =
            if c.RcvRtt > 0L then c.RcvRtt
            elif c.Rtt.HasSample then max 1000L c.Rtt.Srtt
            else 0L

        match c.RcvSpaceFrom with
        | _ when c.RcvBuf >= limit -> c
        | ValueNone ->
            { c with
                RcvSpaceFrom = ValueSome(struct (now, c.Consumed))
            }
        | ValueSome(struct (since, from)) when rtt > 0L && now - since >= rtt ->
            // Reads may come in bursts: the count is scaled to one round trip.
            let perRtt = (c.Consumed - from) * rtt / (now - since)

            let c =
                { c with
                    RcvSpaceFrom = ValueSome(struct (now, c.Consumed))
                }

            if 2L * perRtt > int64 c.RcvBuf then
                let size = int (min (int64 limit) (2L * perRtt + 4L * int64 c.RcvMss))
                out.Add(TcpAction.ReceiveBufferGrown size)
                { c with RcvBuf = size }
            else
                c
        | _ -> c

    /// The options every non-SYN segment carries: timestamps once negotiated (RFC 7323 §3.2:
    /// "on all others"), TSecr = TS.Recent.
    let private withTimestamps (now: int64) (options: TcpOptions) (c: inref<Connection>) =
        if c.TsEnabled then
            { options with
                Timestamps =
                    ValueSome
                        {
                            Value = uint32 (now / 1000L) + c.TsOffset
                            EchoReply = c.TsRecent
                        }
            }
        else
            options

    /// SACK blocks (RFC 2018 §4) from the out-of-order ranges, at most `room` of them: first
    /// the range holding the most recently received segment, then those of the other recent
    /// arrivals (the blocks most recently reported), then the rest from the highest down.
    let private sackBlocksFrom (room: int) (options: TcpOptions) (c: Connection) =
        let mutable options = options
        let mutable count = 0

        let add (struct (s: int64, e: int64)) =
            let left = (recvSeqOf c s).Value
            let right = (recvSeqOf c e).Value
            let mutable seen = false

            for i in 0 .. count - 1 do
                if options.GetSackBlock(i).Left = left then
                    seen <- true

            if not seen && count < room then
                options <- options.WithSackBlock(count, { Left = left; Right = right })
                count <- count + 1

        for p in c.SackRecent do
            for struct (s, e) in c.OutOfOrder.Ranges do
                if s <= p && p < e then
                    add (struct (s, e))

        for range in List.rev c.OutOfOrder.Ranges do
            add range

        { options with SackBlockCount = count }

    /// `sackBlocksFrom`, skipped in order (the usual case): there is nothing to report then, and
    /// its search keeps its counters in heap cells for the closure that updates them.
    let private withSackBlocks (room: int) (options: TcpOptions) (c: Connection) =
        if c.OutOfOrder.IsEmpty then
            { options with SackBlockCount = 0 }
        else
            sackBlocksFrom room options c

    // ---- Sending ------------------------------------------------------------------------------

    /// Queues one segment. Every segment with ACK carries the current RCV.NXT and window, so it
    /// settles any ACK we owed. Updates `c` in place (the body of `emit` and of the fast path's
    /// ACKs).
    let private emitIn
        (now: int64)
        (out: Out)
        (flags: TcpFlags)
        (seq: SeqNum)
        (position: int64)
        (length: int)
        (options: TcpOptions)
        (c: byref<Connection>)
        =
        let withAck = flags &&& TcpFlags.Ack = TcpFlags.Ack
        let syn = flags &&& TcpFlags.Syn = TcpFlags.Syn

        if withAck then
            refreshWindowIn &c

            // The window field of a SYN is never scaled (RFC 7323 §2.2): a SYN,ACK offers at
            // most 65535, and the right edge we remember is what the peer will compute from it.
            if syn && c.RcvRight - c.RcvNxt > 65535 then
                c.RcvRight <- c.RcvNxt + 65535

        // Other segments send the window shifted right by Rcv.Wind.Shift (RFC 7323 §2.3). The
        // truncation can make the edge the peer computes retract by less than 2^shift when
        // RCV.NXT moves by a non-multiple; §2.4 accepts that, and we keep taking data up to
        // RcvRight, the edge we meant, which never moves left and never passes the buffer.
        let window =
            if withAck && not syn then
                min 65535 (max 0 (c.RcvRight - c.RcvNxt) >>> c.RcvWndShift)
            elif withAck then
                max 0 (c.RcvRight - c.RcvNxt)
            elif syn then
                min 65535 c.RcvBuf
            else
                0

        let options =
            if syn || flags &&& TcpFlags.Rst = TcpFlags.Rst then
                options
            else
                withTimestamps now options &c

        // SACK blocks ride on every ACK while data waits out of order: 4 fit in the 40 option
        // bytes, 3 next to timestamps; on a data segment only as many as leave the MSS intact.
        let options =
            if withAck && not syn && c.SackEnabled && not c.OutOfOrder.IsEmpty then
                let most = if c.TsEnabled then 3 else 4

                let room =
                    if length = 0 then
                        most
                    else
                        min most ((c.SendMss - length - 4) / 8)

                if room > 0 then withSackBlocks room options c else options
            else
                options

        out.Add(
            TcpAction.Transmit
                {
                    Seq = seq
                    Ack = (if withAck then c.RcvNxt else SeqNum 0u)
                    Flags = flags
                    Window = uint16 window
                    Options = options
                    DataPosition = position
                    DataLength = length
                }
        )

        if withAck then
            c.AckPending <- false
            c.UnackedBytes <- 0
            c.DelayedAckAt <- ValueNone
            c.LastAckSent <- c.RcvNxt

    /// `emitIn` on a copy, returned.
    let private emit
        (now: int64)
        (out: Out)
        (flags: TcpFlags)
        (seq: SeqNum)
        (position: int64)
        (length: int)
        (options: TcpOptions)
        (c: Connection)
        =
        let mutable c = c
        emitIn now out flags seq position length options &c
        c

    /// A bare ACK: <SEQ=SND.MAX><ACK=RCV.NXT><CTL=ACK>. RFC 9293 writes SND.NXT; after a
    /// timeout pulled SND.NXT back, the peer may already hold data past it, and an ACK numbered
    /// below its RCV.NXT would fail its acceptability test and be dropped (two such peers then
    /// trade unacceptable ACKs forever). SND.MAX never lies beyond the window the peer offered,
    /// so the ACK is always acceptable; Linux does the same (snd_nxt is never pulled back there).
    let private sendAck (now: int64) (out: Out) (c: Connection) =
        emit now out TcpFlags.Ack c.SndMax 0L 0 TcpOptions.None c

    /// The ACK owed to an invalid segment, unless one went out less than
    /// `OutOfWindowAckInterval` ago (RFC 5961 §7; Linux's __tcp_oow_rate_limited).
    let private sendLimitedAck (now: int64) (out: Out) (c: Connection) =
        let interval = c.Config.OutOfWindowAckInterval

        if
            interval > 0L
            && c.LastInvalidAckAt <> System.Int64.MinValue
            && now - c.LastInvalidAckAt < interval
        then
            out.Add(TcpAction.Event TcpEvent.AckRateLimited)
            c
        else
            sendAck now out { c with LastInvalidAckAt = now }

    /// The ACK of an unacceptable segment (RFC 9293 §3.10.7.4 first check) or of a PAWS reject:
    /// always for one with data (its sender needs the answer to recover), rate limited for one
    /// without data or with a SYN (what two confused ends would trade forever; Linux's
    /// tcp_oow_rate_limited).
    let private answerInvalid (now: int64) (out: Out) (seg: Segment) (c: Connection) =
        if seg.Length > 0 && not (seg.Has TcpFlags.Syn) then
            sendAck now out c
        else
            sendLimitedAck now out c

    /// The options of our SYN or SYN,ACK: MSS always; window scale and timestamps as configured
    /// in a SYN, and in a SYN,ACK only when the peer's SYN offered them too (RFC 7323 §2.2,
    /// §3.2: never offered in a SYN,ACK to a SYN without them).
    let private synOptions (now: int64) (c: Connection) =
        let active = c.State = TcpState.SynSent
        let offerWs = c.Config.WindowScaling && (active || c.WindowScaled)
        let offerTs = c.Config.Timestamps && (active || c.TsEnabled)
        let offerSack = c.Config.SelectiveAck && (active || c.SackEnabled)

        { TcpOptions.None with
            MaximumSegmentSize = ValueSome(uint16 (min 65535 c.Config.Mss))
            SackPermitted = offerSack
            WindowScale =
                if offerWs then
                    ValueSome(byte (TcpConfig.WindowShiftFor c.Config.ReceiveBufferLimit))
                else
                    ValueNone
            Timestamps =
                if offerTs then
                    ValueSome
                        {
                            Value = tsNow now c
                            EchoReply = (if active then 0u else c.TsRecent)
                        }
                else
                    ValueNone
        }

    // ---- Loss recovery helpers (RFC 6675 over the scoreboard) ---------------------------------

    /// DupThresh (RFC 6675 §2, RFC 5681 §3.2).
    [<Literal>]
    let private DupThresh = 3

    /// The most retransmissions one recovery watches for loss (`RetransmitMarks`); a loss of
    /// an older one is left to the retransmission timer.
    [<Literal>]
    let private MaxRetransmitMarks = 32

    /// The most disjoint ranges the scoreboard keeps: a hostile peer SACKing every other byte
    /// cannot make it (and the work per ACK) grow without bound; blocks beyond are ignored.
    [<Literal>]
    let private MaxScoreboardRanges = 512

    /// SACKed bytes in [Acked, position).
    let private sackedBelow (position: int64) (c: Connection) =
        c.Scoreboard.Ranges
        |> List.sumBy (fun struct (s, e) -> if s >= position then 0L else min e position - s)

    /// Pipe (RFC 6675 §4 SetPipe) over the holes of the scoreboard: a hole's bytes count as in
    /// flight unless IsLost holds for it (DupThresh discontiguous SACKed ranges, or more than
    /// (DupThresh - 1)·SMSS SACKed bytes, above it); bytes below HighRxt were retransmitted and
    /// count (again) too.
    let private pipe (c: Connection) =
        let top = sendPosOf c c.SndMax
        let mutable sackedAbove = RangeSet.count c.Scoreboard
        let mutable rangesAbove = RangeSet.rangeCount c.Scoreboard
        let mutable cursor = c.Acked
        let mutable total = 0L
        let threshold = int64 ((DupThresh - 1) * c.SendMss)

        // What the hole [a, b) adds to the pipe. A plain function, not a closure over the
        // mutable counters: a closure would put them in heap cells on every call.
        let inline hole (a: int64) (b: int64) (lost: bool) =
            if b > a then
                let lost = lost || a < c.LostBelow
                let retransmitted = max 0L (min b c.HighRxt - a)
                (if lost then 0L else b - a) + retransmitted
            else
                0L

        for struct (s, e) in c.Scoreboard.Ranges do
            total <- total + hole cursor s (rangesAbove >= DupThresh || sackedAbove > threshold)
            sackedAbove <- sackedAbove - (e - s)
            rangesAbove <- rangesAbove - 1
            cursor <- e

        total <- total + hole cursor top (rangesAbove >= DupThresh || sackedAbove > threshold)
        int (min total (int64 System.Int32.MaxValue))

    /// NextSeg rule 1 (RFC 6675 §4): the first byte at or above HighRxt in a hole for which
    /// IsLost holds, and how much of the hole (at most one segment) to resend.
    let private nextLost (c: Connection) : struct (int64 * int) voption =
        let mutable sackedAbove = RangeSet.count c.Scoreboard
        let mutable rangesAbove = RangeSet.rangeCount c.Scoreboard
        let mutable cursor = c.Acked
        let mutable found = ValueNone
        let threshold = int64 ((DupThresh - 1) * c.SendMss)

        for struct (s, e) in c.Scoreboard.Ranges do
            if found.IsNone then
                let from = max cursor c.HighRxt

                if
                    from < s
                    && (rangesAbove >= DupThresh || sackedAbove > threshold || from < c.LostBelow)
                then
                    found <- ValueSome(struct (from, int (min (int64 c.SendMss) (s - from))))

                sackedAbove <- sackedAbove - (e - s)
                rangesAbove <- rangesAbove - 1
                cursor <- e

        found

    /// The largest segment to send: SendMss, but no more than half the largest window the peer
    /// offered (once that is above 536 bytes, the RFC 9293 §3.7.1 default MSS). A peer whose
    /// window holds one segment only (a 64 KiB unscaled window at MTU 65000) ACKs it after its
    /// delayed-ACK timer (RFC 9293 §3.8.6.3 ACKs every second full segment), which paced bulk
    /// sends to ~0.01 Gbit/s; two segments per window keep its ACKs immediate (Linux does the
    /// same in tcp_bound_to_half_wnd).
    let private segmentCap (c: inref<Connection>) =
        if c.MaxSndWnd > 2 * 536 then
            min c.SendMss (max 536 (c.MaxSndWnd / 2))
        else
            c.SendMss

    /// One segment from SND.NXT (see `sendDataIn`), on `c` in place. Returns whether sending
    /// may go on (a segment went out and it did not carry our FIN).
    let private sendSegmentIn (now: int64) (out: Out) (c: byref<Connection>) =
        let fin = c.Iss + 1 + int c.Written
        let retransmitting = SeqNum.lt c.SndNxt c.SndMax
        let position = c.Acked + int64 (c.SndNxt - (c.Iss + 1 + int c.Acked))
        let pending = max 0 (fin - c.SndNxt)

        let cwndRoom =
            if c.InRecovery && c.SackEnabled then
                c.Cwnd - pipe c
            else
                let sacked =
                    if c.Scoreboard.IsEmpty then
                        0
                    else
                        int (sackedBelow position c)

                let inFlight = (c.SndNxt - c.SndUna) - sacked

                let limited =
                    if not c.InRecovery && c.DupAcks > 0 && not retransmitting then
                        min 2 c.DupAcks * c.SendMss
                    else
                        0

                c.Cwnd + limited - inFlight

        let usable = max 0 (min (c.SndUna + c.SndWnd - c.SndNxt) cwndRoom)

        // A resent stretch stops where the next SACKed range begins.
        let beforeSacked =
            if retransmitting then
                match RangeSet.nextStartAfter position c.Scoreboard with
                | ValueSome s -> int (min (int64 pending) (s - position))
                | ValueNone -> pending
            else
                pending

        let cap = segmentCap &c

        let length = min cap (min beforeSacked usable)
        // The FIN needs no window: it takes no buffer space at the receiver.
        let withFin = c.FinQueued && SeqNum.le c.SndNxt fin && c.SndNxt + length = fin

        // Nagle (RFC 9293 §3.7.4, RFC 1122 §4.2.3.4) in Minshall's variant (as Linux): new data
        // shorter than a full segment waits while a short segment we sent is unacknowledged;
        // the ACK (or enough data for a full segment) releases it, so small writes coalesce
        // instead of each taking a packet. Full segments in flight do not hold the short tail of
        // a write: with classic Nagle a send buffer under two segments long (a large MTU) sent
        // one segment per delayed ACK of the peer. Retransmissions and the segment carrying our
        // FIN are never held: the user's close is a push, and holding it would only delay the
        // end of the stream.
        let nagleHolds =
            length < cap
            && not c.Config.NoDelay
            && not withFin
            && not retransmitting
            && SeqNum.gt c.SndSml c.SndUna
            && SeqNum.le c.SndSml c.SndNxt

        let worthSending =
            if length > 0 then
                length = cap
                || ((length = pending || length = beforeSacked) && not nagleHolds)
                || length >= c.MaxSndWnd / 2
            else
                withFin

        if not worthSending then
            false
        else
            let seq = c.SndNxt

            let flags =
                TcpFlags.Ack
                ||| (if length > 0 && length = pending then
                         TcpFlags.Psh
                     else
                         TcpFlags.None)
                ||| (if withFin then TcpFlags.Fin else TcpFlags.None)

            emitIn now out flags seq position length TcpOptions.None &c
            let next = seq + (length + if withFin then 1 else 0)
            let firstTime = SeqNum.ge seq c.SndMax
            c.SndNxt <- next
            c.SndMax <- SeqNum.max c.SndMax next

            if length > 0 && length < cap then
                c.SndSml <- seq + length

            // Time one segment per round trip, never a retransmission (Karn's rule).
            if firstTime && c.RttTimed.IsNone then
                c.RttTimed <- ValueSome(struct (next, now))

            // `armRetransmit`.
            if c.RetransmitAt.IsNone then
                c.RetransmitAt <- ValueSome(now + c.Rtt.Rto)

            not withFin

    /// Sends what the windows allow from SND.NXT: full segments; a short one only when it
    /// empties the queue or fills at least half the largest window the peer offered (sender
    /// SWS avoidance, RFC 9293 §3.8.6.2.1) and Nagle allows it; our FIN after the last byte.
    ///
    /// The congestion window limits what is in flight: outside SACK recovery that is
    /// [SND.UNA, SND.NXT) less what the scoreboard holds, plus up to two segments of limited
    /// transmit (RFC 3042) on the first duplicate ACKs; in SACK recovery it is the pipe. When
    /// SND.NXT was pulled back by a timeout, SACKed ranges are skipped, never resent.
    let private sendDataIn (now: int64) (out: Out) (c: byref<Connection>) =
        let mutable going = true

        while going do
            let fin = c.Iss + 1 + int c.Written
            let retransmitting = SeqNum.lt c.SndNxt c.SndMax

            let skip =
                if retransmitting && c.SndNxt <> fin then
                    RangeSet.endOfRangeAt (c.Acked + int64 (c.SndNxt - (c.Iss + 1 + int c.Acked))) c.Scoreboard
                else
                    ValueNone

            match skip with
            | ValueSome skipTo ->
                // The peer holds these bytes already (RFC 6675 §5.1: only unSACKed data again).
                c.SndNxt <- c.Iss + 1 + int skipTo
            | ValueNone -> going <- sendSegmentIn now out &c

    /// `sendDataIn` on a copy.
    let private sendData (now: int64) (out: Out) (c: Connection) =
        let mutable c = c
        sendDataIn now out &c
        c

    /// One segment from SND.NXT, then `sendData`, on a copy.
    let private sendSegment (now: int64) (out: Out) (c: Connection) =
        let mutable c = c

        if sendSegmentIn now out &c then
            sendDataIn now out &c

        c

    /// Resends [position, position + length) (with the FIN when it ends there and the FIN was
    /// sent) during fast recovery: SND.NXT stays where it is; HighRxt moves up.
    let private retransmitAt (now: int64) (out: Out) (position: int64) (length: int) (c: Connection) =
        let seq = sendSeqOf c position
        let fin = finSeq c
        let withFin = c.FinQueued && SeqNum.gt c.SndMax fin && seq + length = fin

        let flags = TcpFlags.Ack ||| (if withFin then TcpFlags.Fin else TcpFlags.None)

        let c = emit now out flags seq position length TcpOptions.None c

        let marks =
            if c.InRecovery && c.SackEnabled && length > 0 then
                struct (position, position + int64 length, sendPosOf c c.SndMax)
                :: List.truncate (MaxRetransmitMarks - 1) c.RetransmitMarks
            else
                c.RetransmitMarks

        { c with
            RetransmitMarks = marks
            HighRxt = max c.HighRxt (position + int64 length)
            // Karn's rule: a resent segment gives no classic sample (timestamps still do).
            RttTimed = ValueNone
        }
        |> armRetransmit now

    /// Runs the persist timer (RFC 9293 §3.8.6.1) exactly when data waits, nothing is in flight,
    /// and so no ACK will come to reopen the window unless we probe.
    let private updatePersistIn (now: int64) (c: byref<Connection>) =
        let waiting =
            synAckedIn &c
            && sendsData c.State
            && SeqNum.lt c.SndNxt (c.Iss + 1 + int c.Written)
            && c.SndNxt = c.SndUna

        if not waiting then
            c.PersistAt <- ValueNone
        elif c.PersistAt.IsNone then
            c.PersistAt <- ValueSome(now + persistInterval &c)

    /// `updatePersistIn` on a copy.
    let private updatePersist (now: int64) (c: Connection) =
        let mutable c = c
        updatePersistIn now &c
        c

    /// Sends whatever is due: the SYN (or SYN,ACK) when SND.NXT is at ISS, else data and FIN.
    let private transmit (now: int64) (out: Out) (c: Connection) =
        match c.State with
        | TcpState.SynSent
        | TcpState.SynReceived when c.SndNxt = c.Iss ->
            let flags =
                if c.State = TcpState.SynSent then
                    TcpFlags.Syn
                else
                    TcpFlags.Syn ||| TcpFlags.Ack

            let firstTime = c.SndMax = c.Iss
            let c = emit now out flags c.Iss 0L 0 (synOptions now c) c

            let c =
                { c with
                    SndNxt = c.Iss + 1
                    SndMax = SeqNum.max c.SndMax (c.Iss + 1)
                    RttTimed =
                        if firstTime then
                            ValueSome(struct (c.Iss + 1, now))
                        else
                            c.RttTimed
                }

            armRetransmit now c
        // A CLOSE in SYN-RECEIVED sent our FIN before our SYN was acknowledged (§3.10.4); when a
        // timeout pulled SND.NXT back to ISS, the SYN,ACK goes again, then the FIN.
        | TcpState.FinWait1
        | TcpState.Closing when c.SndNxt = c.Iss ->
            let mutable c =
                emit now out (TcpFlags.Syn ||| TcpFlags.Ack) c.Iss 0L 0 (synOptions now c) c

            c.SndNxt <- c.Iss + 1
            sendDataIn now out &c
            c
        | state when sendsData state && synAcked c ->
            let mutable c = c
            sendDataIn now out &c
            updatePersistIn now &c
            c
        | _ -> c

    // ---- Acknowledgments of our data ----------------------------------------------------------

    /// SND.UNA advances to `ack` (SND.UNA < ack =< SND.MAX): free the send buffer, take an RTT
    /// sample, grow the congestion window, restart or stop the retransmission timer.
    let private newlyAckedIn (now: int64) (out: Out) (seg: inref<Segment>) (c: byref<Connection>) =
        let ack = seg.Ack

        let ackedPosition =
            min c.Written (c.Acked + int64 (ack - (c.Iss + 1 + int c.Acked)))

        let freed = ackedPosition - c.Acked

        if freed > 0L then
            out.Add(TcpAction.Event(TcpEvent.SendBufferFreed freed))

        let cfg = c.Config

        // RFC 7323 §4: with timestamps, every ACK of new data measures the round trip of the
        // segment whose TSval it echoes (retransmissions included: the echo tells which copy
        // arrived). An echo from the future or older than MaxRto is no measurement (a hostile
        // or confused peer), and the classic one-segment timing is the fallback.
        let tsRtt =
            match seg.Options.Timestamps with
            | ValueSome ts when c.TsEnabled ->
                let ms = int (uint32 (now / 1000L) + c.TsOffset - ts.EchoReply)

                if ms >= 0 && int64 ms * 1000L <= cfg.MaxRto then
                    ValueSome(int64 ms * 1000L)
                else
                    ValueNone
            | _ -> ValueNone

        let rtt, timed =
            match tsRtt, c.RttTimed with
            | ValueSome sample, _ ->
                // Appendix G: about FlightSize / (2·SMSS) samples arrive per round trip.
                let flight = c.SndMax - c.SndUna
                let expected = (flight + 2 * c.SendMss - 1) / (2 * c.SendMss)

                Rto.sampleWeighted cfg.ClockGranularity cfg.MinRto cfg.MaxRto expected sample c.Rtt, ValueNone
            | _, ValueSome(struct (timedSeq, sentAt)) when SeqNum.ge ack timedSeq ->
                Rto.sample cfg.ClockGranularity cfg.MinRto cfg.MaxRto (now - sentAt) c.Rtt, ValueNone
            | _ -> Rto.resetBackoff cfg.ClockGranularity cfg.MinRto cfg.MaxRto c.Rtt, c.RttTimed

        // The congestion control grows the window (`Congestion.onAck`); in fast recovery the
        // recovery rules set it instead (`lossRecovery`).
        let struct (cwnd, cubic) =
            if freed <= 0L || c.InRecovery then
                struct (c.Cwnd, c.Cubic)
            else
                Congestion.onAck cfg.CongestionControl now rtt.Srtt c.SendMss freed c.Cwnd c.Ssthresh c.Cubic

        c.SndUna <- ack
        c.SndNxt <- SeqNum.max c.SndNxt ack
        c.Acked <- ackedPosition
        c.Rtt <- rtt
        c.RttTimed <- timed
        c.Retries <- 0
        c.Cwnd <- min cwnd (1 <<< 30)
        c.Cubic <- cubic

        if not c.Scoreboard.IsEmpty then
            c.Scoreboard <- RangeSet.trimBelow ackedPosition c.Scoreboard

        c.DupAcks <- 0
        // Something got through: a soft ICMP error seen before no longer explains a timeout
        // (as Linux's tcp_ack clears sk_err_soft).
        c.SoftError <- ValueNone
        // Progress: the probe timer starts again from now (`scheduleProbe`).
        c.ProbeAt <- ValueNone

        // RFC 6298 §5.2/§5.3: stop the timer when everything is acknowledged, otherwise restart
        // it, so a long flight on a high-RTT path is not retransmitted spuriously.
        c.RetransmitAt <-
            if SeqNum.lt c.SndUna c.SndNxt then
                ValueSome(now + c.Rtt.Rto)
            else
                ValueNone

    /// `newlyAckedIn` on a copy.
    let private newlyAcked (now: int64) (out: Out) (seg: Segment) (c: Connection) =
        let mutable c = c
        newlyAckedIn now out &seg &c
        c

    /// The window update rule of RFC 9293 §3.10.7.4 (fifth step): only a segment newer than the
    /// one that last set SND.WND may change it, so reordered old segments cannot. A segment with
    /// the same SEG.SEQ and SEG.ACK as the last update is a duplicate as far as ordering can tell:
    /// it may open the window or close it to zero, never shrink it (as Linux's
    /// tcp_may_update_window). Otherwise an older window update that the network reordered behind
    /// a newer one would shrink the window again, and a retransmission cut to that stale window
    /// leaves the FIN behind.
    let private updateSendWindowIn (seg: inref<Segment>) (c: byref<Connection>) =
        let window = int seg.Window <<< c.SndWndShift

        if
            SeqNum.ge seg.Ack c.SndUna
            && (SeqNum.lt c.SndWl1 seg.Seq
                || (c.SndWl1.Value = seg.Seq.Value
                    && (SeqNum.lt c.SndWl2 seg.Ack
                        || (c.SndWl2.Value = seg.Ack.Value && (window >= c.SndWnd || window = 0)))))
        then
            // RFC 7323 §2.3: SND.WND = SEG.WND << Snd.Wind.Shift (SYNs never come here).
            c.SndWnd <- window
            c.SndWl1 <- seg.Seq
            c.SndWl2 <- seg.Ack
            c.MaxSndWnd <- max c.MaxSndWnd window

    /// `updateSendWindowIn` on a copy.
    let private updateSendWindow (seg: Segment) (c: Connection) =
        let mutable c = c
        updateSendWindowIn &seg &c
        c

    /// Takes the SACK blocks of an acceptable ACK into the scoreboard (RFC 6675 §5: before the
    /// cumulative ACK). Hostile input is expected: a block counts only when it is non-empty and
    /// lies within [max(SND.UNA, SEG.ACK), SND.MAX) (D-SACK blocks and old or forged ones do
    /// not), and the scoreboard stops growing at MaxScoreboardRanges. Returns whether any byte
    /// was newly SACKed.
    let private takeSackBlocks (seg: Segment) (c: Connection) : struct (Connection * bool) =
        if not c.SackEnabled || seg.Options.SackBlockCount <= 0 then
            struct (c, false)
        else
            let floor = SeqNum.max c.SndUna seg.Ack
            let mutable board = c.Scoreboard
            let before = RangeSet.count board

            for i in 0 .. min Tcp.MaxSackBlocks seg.Options.SackBlockCount - 1 do
                let block = seg.Options.GetSackBlock i
                let left = SeqNum block.Left
                let right = SeqNum block.Right

                if
                    SeqNum.lt left right
                    && SeqNum.ge left floor
                    && SeqNum.le right c.SndMax
                    && RangeSet.rangeCount board < MaxScoreboardRanges
                then
                    // The FIN has a sequence number but no stream position: never on the board.
                    let e = min c.Written (sendPosOf c right)
                    board <- RangeSet.add (sendPosOf c left) e board

            struct ({ c with Scoreboard = board }, RangeSet.count board > before)

    /// Resends holes IsLost says are gone while the pipe leaves a segment's room (RFC 6675 §5
    /// step C); new data then follows in `transmit` under the same pipe rule.
    let rec private sackRetransmit (now: int64) (out: Out) (c: Connection) =
        if c.Cwnd - pipe c < c.SendMss then
            c
        else
            match nextLost c with
            | ValueSome(struct (position, length)) -> sackRetransmit now out (retransmitAt now out position length c)
            | ValueNone -> c

    /// Lost retransmissions (as Linux's tcp_mark_lost_retrans; RACK, RFC 8985 §6.2, finds the
    /// same by time): a retransmitted range that is still neither acknowledged nor SACKed when
    /// more than (DupThresh - 1)·SMSS bytes sent after it (above the SND.MAX it went out
    /// under) have been SACKed was lost again. RFC 6675 alone leaves it to the retransmission
    /// timer; here it is resent as soon as the pipe allows, and watched again.
    let rec private resendLostRetransmissions (now: int64) (out: Out) (c: Connection) =
        let threshold = int64 ((DupThresh - 1) * c.SendMss)
        let sacked = RangeSet.count c.Scoreboard

        // What of [start, end) is still missing: from the first byte that is neither
        // acknowledged nor SACKed up to the next SACKed range.
        let missing (struct (start: int64, finish: int64, _top: int64)) =
            let from =
                let a = max start c.Acked

                match RangeSet.endOfRangeAt a c.Scoreboard with
                | ValueSome e -> e
                | ValueNone -> a

            let until =
                match RangeSet.nextStartAfter from c.Scoreboard with
                | ValueSome s -> min s finish
                | ValueNone -> finish

            struct (from, until)

        let live =
            c.RetransmitMarks
            |> List.filter (fun mark ->
                let struct (from, until) = missing mark
                from < until)

        let lost =
            live
            |> List.tryFindBack (fun (struct (_, _, top)) -> sacked - sackedBelow top c > threshold)

        let c =
            if live.Length <> c.RetransmitMarks.Length then
                { c with RetransmitMarks = live }
            else
                c

        match lost with
        | Some mark when c.Cwnd - pipe c >= c.SendMss ->
            let struct (from, until) = missing mark
            let length = int (min (int64 c.SendMss) (until - from))

            let c =
                { c with
                    RetransmitMarks = c.RetransmitMarks |> List.filter (fun m -> m <> mark)
                }

            retransmitAt now out from length c |> resendLostRetransmissions now out
        | _ -> c

    /// The first unacknowledged stretch: from SND.UNA to the first SACKed range, never past what
    /// was sent (SND.MAX), at most a segment.
    let private firstHoleLength (c: Connection) =
        let sent = min c.Written (sendPosOf c c.SndMax)

        let limit =
            match RangeSet.nextStartAfter c.Acked c.Scoreboard with
            | ValueSome s -> min s sent
            | ValueNone -> sent

        int (min (int64 c.SendMss) (limit - c.Acked))

    /// Fast retransmit and fast recovery after an acceptable ACK: SACK-based loss recovery
    /// (RFC 6675) when SACK is on, NewReno (RFC 6582) otherwise. `una` is SND.UNA before the
    /// ACK; `advanced` says it moved; `sackedNew` that the ACK SACKed new data.
    let private lossRecovery
        (now: int64)
        (out: Out)
        (seg: Segment)
        (una: SeqNum)
        (advanced: bool)
        (sackedNew: bool)
        (windowChanged: bool)
        (c: Connection)
        =
        let mss = c.SendMss

        if c.InRecovery then
            if SeqNum.ge c.SndUna c.RecoveryPoint then
                // Everything outstanding at the loss is acknowledged: recovery ends with cwnd at
                // ssthresh (RFC 6675 §5; RFC 6582 §3.2 step 3, the "min" option against bursts).
                let cwnd =
                    if c.SackEnabled then
                        c.Ssthresh
                    else
                        min c.Ssthresh (max (c.SndMax - c.SndUna) mss + mss)

                { c with
                    InRecovery = false
                    DupAcks = 0
                    Cwnd = max mss cwnd
                    RetransmitMarks = []
                    LostBelow = 0L
                }
            elif c.SackEnabled then
                c |> resendLostRetransmissions now out |> sackRetransmit now out
            elif advanced then
                // RFC 6582 §3.2 step 5, a partial ACK: the next hole is at SND.UNA; resend it at
                // once and deflate the window by what was acknowledged (plus one MSS back).
                let acked = c.SndUna - una

                let c =
                    { c with
                        Cwnd = max mss (c.Cwnd - acked + (if acked >= mss then mss else 0))
                    }

                if SeqNum.lt c.SndUna c.SndMax then
                    retransmitAt now out c.Acked (firstHoleLength c) c
                else
                    c
            elif seg.Ack = una && SeqNum.lt c.SndUna c.SndMax then
                // Step 4: each further duplicate inflates the window by a segment.
                { c with Cwnd = c.Cwnd + mss }
            else
                c
        else
            let duplicate =
                not advanced
                && seg.Ack = una
                && SeqNum.lt c.SndUna c.SndMax
                && (sackedNew
                    || (seg.PayloadLength = 0 && not windowChanged && not (seg.Has TcpFlags.Fin)))

            let c = if duplicate then { c with DupAcks = c.DupAcks + 1 } else c

            // The peer SACKed a tail loss probe while bytes sent two round trips before it are
            // still missing: those are lost (RFC 8985 §6.2's time rule; DupThresh SACKed
            // segments may never come after a lost tail).
            let probeShowsLoss =
                match c.ProbeEnd with
                | ValueSome finish when c.SackEnabled && finish > c.Acked ->
                    (RangeSet.endOfRangeAt (finish - 1L) c.Scoreboard).IsSome
                | _ -> false

            // IsLost(SND.UNA) (RFC 6675 §4): enough SACKed above the first hole.
            let lostAtUna =
                c.SackEnabled
                && (RangeSet.rangeCount c.Scoreboard >= DupThresh
                    || RangeSet.count c.Scoreboard > int64 ((DupThresh - 1) * mss)
                    || probeShowsLoss)

            // RFC 6582 §3.2 step 2 / RFC 6675 §5.1: no new recovery for data sent before the last
            // one (or before a timeout) began.
            let fresh =
                if c.SackEnabled then
                    SeqNum.ge c.SndUna c.RecoveryPoint
                else
                    SeqNum.gt c.SndUna c.RecoveryPoint

            if
                fresh
                && SeqNum.lt c.SndUna c.SndMax
                && (c.DupAcks >= DupThresh || (lostAtUna && (duplicate || sackedNew)))
            then
                // Enter recovery (RFC 6675 §5 steps 4.1-4.3; RFC 6582 §3.2 step 2): ssthresh is
                // half the flight, the segment at SND.UNA goes out at once, whatever the window.
                let flight = c.SndMax - c.SndUna

                let struct (ssthresh, cubic) =
                    Congestion.onLoss c.Config.CongestionControl flight mss c.Cwnd c.Cubic

                out.Add(TcpAction.Event TcpEvent.FastRetransmit)

                let c =
                    { c with
                        InRecovery = true
                        Cubic = cubic
                        RecoveryPoint = c.SndMax
                        HighRxt = c.Acked
                        RetransmitMarks = []
                        LostBelow =
                            match c.ProbeEnd with
                            | ValueSome finish when probeShowsLoss -> finish
                            | _ -> 0L
                        ProbeAt = ValueNone
                        ProbeEnd = ValueNone
                        Ssthresh = ssthresh
                        Cwnd =
                            if c.SackEnabled then
                                ssthresh
                            else
                                ssthresh + DupThresh * mss
                    }

                let c = retransmitAt now out c.Acked (firstHoleLength c) c
                if c.SackEnabled then sackRetransmit now out c else c
            else
                c

    // ---- Tail loss probe (RFC 8985 §7) --------------------------------------------------------

    /// WCDelAckT (RFC 8985 §7.2): the longest a peer may hold the ACK of a lone segment.
    [<Literal>]
    let private WorstCaseDelayedAck = 200_000L

    /// Added to 2·SRTT with more than one segment in flight (Linux's TCP_TIMEOUT_MIN, 2 ms), so
    /// a probe on a sub-millisecond path does not race ACKs that are merely late.
    [<Literal>]
    let private ProbeSlack = 2_000L

    /// RFC 8985 §7.2: a probe may be scheduled with data outstanding on a synchronized, SACK
    /// connection that is neither in recovery nor after a timeout, once SRTT is known, and no
    /// earlier probe is unresolved.
    let private probeEligible (c: inref<Connection>) =
        c.SackEnabled
        && synAckedIn &c
        && c.Rtt.HasSample
        && not c.InRecovery
        && c.Retries = 0
        && c.ProbeEnd.IsNone
        && SeqNum.lt c.SndUna c.SndMax
        && (match c.State with
            | TcpState.Established
            | TcpState.CloseWait
            | TcpState.FinWait1
            | TcpState.Closing
            | TcpState.LastAck -> true
            | _ -> false)

    /// Arms PTO when eligible and not armed (2·SRTT, plus WCDelAckT with one segment in flight,
    /// else ProbeSlack), unless the retransmission timer would fire first; disarms it otherwise.
    let private scheduleProbeIn (now: int64) (c: byref<Connection>) =
        if not (probeEligible &c) then
            if c.ProbeAt.IsSome then
                c.ProbeAt <- ValueNone
        elif c.ProbeAt.IsNone then
            let flight = c.SndMax - c.SndUna

            let pto =
                2L * c.Rtt.Srtt
                + (if flight <= c.SendMss then
                       WorstCaseDelayedAck
                   else
                       ProbeSlack)

            match c.RetransmitAt with
            | ValueSome rto when now + pto >= rto -> ()
            | _ -> c.ProbeAt <- ValueSome(now + pto)

    /// `scheduleProbeIn` on a copy.
    let private scheduleProbe (now: int64) (c: Connection) =
        let mutable c = c
        scheduleProbeIn now &c
        c

    /// PTO fired (RFC 8985 §7.3): one segment of new data if the windows allow one more, else
    /// the last segment sent again, so that the peer's ACK (with SACK) shows what the tail lost
    /// and fast recovery repairs it instead of a retransmission timeout. The RTO restarts.
    let private onProbe (now: int64) (out: Out) (c: Connection) =
        let c = { c with ProbeAt = ValueNone }

        if not (probeEligible &c) then
            c
        else
            let sentBefore = c.SndMax

            let withNewData =
                if SeqNum.lt c.SndNxt c.SndMax then
                    c // resending after a timeout: no new data now
                else
                    let grown = sendSegment now out { c with Cwnd = c.Cwnd + c.SendMss }
                    { grown with Cwnd = c.Cwnd }

            let struct (c, resent) =
                if SeqNum.gt withNewData.SndMax sentBefore then
                    struct (withNewData, false)
                else
                    // The last segment the peer does not hold: the end of the highest hole
                    // (there is always one at SND.UNA), never bytes it SACKed.
                    let top = min c.Written (sendPosOf c c.SndMax)

                    let struct (holeStart, holeEnd) =
                        let mutable hole = struct (c.Acked, top)
                        let mutable cursor = c.Acked

                        for struct (s, e) in c.Scoreboard.Ranges do
                            if s > cursor then
                                hole <- struct (cursor, s)

                            cursor <- max cursor e

                        if top > cursor || (top = cursor && c.Scoreboard.IsEmpty) then
                            struct (cursor, top)
                        else
                            hole

                    let length = int (min (int64 c.SendMss) (holeEnd - holeStart))
                    struct (retransmitAt now out (holeEnd - int64 length) length c, true)

            out.Add(TcpAction.Event TcpEvent.LossProbe)

            { c with
                ProbeEnd = ValueSome(min c.Written (sendPosOf c c.SndMax))
                ProbeResent = resent
                RetransmitAt = ValueSome(now + c.Rtt.Rto)
            }

    /// The ACK that passes the probe ends its episode (RFC 8985 §7.4). Without DSACK the sender
    /// cannot tell whether a resent probe repaired a loss or duplicated data that had arrived,
    /// so, as Linux does, it assumes a loss and reduces the window once, as a fast recovery
    /// would have.
    let private endProbeEpisode (c: Connection) =
        match c.ProbeEnd with
        | ValueSome finish when c.Acked >= finish ->
            if c.ProbeResent && not c.InRecovery then
                let struct (ssthresh, cubic) =
                    Congestion.onLoss c.Config.CongestionControl (c.SndMax - c.SndUna) c.SendMss c.Cwnd c.Cubic

                { c with
                    ProbeEnd = ValueNone
                    Ssthresh = ssthresh
                    Cwnd = max c.SendMss ssthresh
                    Cubic = cubic
                }
            else
                { c with ProbeEnd = ValueNone }
        | _ -> c

    /// The ACK field in a synchronized state (RFC 9293 §3.10.7.4 fifth step, RFC 5961 §5.2).
    /// Returns the connection and whether processing of the segment goes on.
    let private processAck (now: int64) (out: Out) (seg: Segment) (c: Connection) : struct (Connection * bool) =
        if SeqNum.gt seg.Ack c.SndMax then
            // It acknowledges something not yet sent: ACK (rate limited, RFC 5961 §5.2, §7) and drop.
            struct (sendLimitedAck now out c, false)
        elif SeqNum.lt seg.Ack (c.SndUna - c.MaxSndWnd) then
            // RFC 5961 §5.2: too old to be from this connection's peer: challenge ACK, drop.
            struct (sendLimitedAck now out c, false)
        else
            let una = c.SndUna
            let struct (c, sackedNew) = takeSackBlocks seg c
            let advanced = SeqNum.gt seg.Ack c.SndUna
            let c = if advanced then newlyAcked now out seg c else c

            // RFC 2018 §8 reneging: a receiver holding a SACKed range would acknowledge past it,
            // so a cumulative ACK ending at (or in) one means it dropped that data. Forget the
            // scoreboard and, if a timeout's resending is under way, start it again from SND.UNA.
            let c =
                if advanced && (RangeSet.endOfRangeAt c.Acked c.Scoreboard).IsSome then
                    { c with
                        Scoreboard = RangeSet.empty
                        SndNxt =
                            if SeqNum.lt c.SndNxt c.SndMax && not c.InRecovery then
                                c.SndUna
                            else
                                c.SndNxt
                    }
                else
                    c

            let windowBefore = c.SndWnd

            // Any acceptable ACK shows the peer is alive, which is what probes ask.
            let c =
                { (updateSendWindow seg c) with
                    ProbesUnanswered = 0
                }

            let c = lossRecovery now out seg una advanced sackedNew (c.SndWnd <> windowBefore) c
            let c = endProbeEpisode c

            if not (finAcked c) then
                struct (c, true)
            else
                match c.State with
                // FIN-WAIT-1 leaves only after the segment's text and FIN (`leaveFinWait1`): a
                // segment that acknowledges our FIN and carries the peer's is Figure 5's diagonal
                // to TIME-WAIT, one transition (RcvFinAckOfFin), not two.
                | TcpState.Closing -> struct (enterTimeWait now out TcpTrigger.RcvAckOfFin c, true)
                | TcpState.LastAck -> struct (enterClosed out TcpTrigger.RcvAckOfFin c, false)
                | _ -> struct (c, true)

    // ---- Receiving data -----------------------------------------------------------------------

    /// Takes the FIN once everything before it has been delivered (RFC 9293 §3.10.7.4 eighth step).
    let private takeFinIfDue (now: int64) (out: Out) (c: Connection) : struct (Connection * bool) =
        match c.PeerFinAt with
        | ValueSome at when at = c.Delivered && not c.FinReceived ->
            let c =
                { c with
                    RcvNxt = c.RcvNxt + 1
                    FinReceived = true
                    AckPending = true
                }

            out.Add(TcpAction.Event TcpEvent.PeerClosed)

            let c =
                match c.State with
                | TcpState.Established -> move out TcpTrigger.RcvFin TcpState.CloseWait c
                // §3.10.7.4 eighth step: "If our FIN has been ACKed (perhaps in this segment),
                // then enter TIME-WAIT"; RFC 9293 Figure 5, note 2.
                | TcpState.FinWait1 when finAcked c -> enterTimeWait now out TcpTrigger.RcvFinAckOfFin c
                | TcpState.FinWait1 -> move out TcpTrigger.RcvFin TcpState.Closing c
                | TcpState.FinWait2 -> enterTimeWait now out TcpTrigger.RcvFin c
                | _ -> c

            // The ACK of a FIN that starts a passive close may wait like any delayed ACK
            // (RFC 9293 §3.8.6.3 allows it for every segment; Linux enters its delayed-ACK
            // "pingpong" mode here): the application usually closes at once, and our FIN then
            // carries it, one segment instead of two. A FIN that ends our own close is
            // acknowledged at once, since the peer waits in LAST-ACK or CLOSING for it.
            struct (c, not c.State.IsCloseWait)
        | _ -> struct (c, false)

    /// The segment text (seventh step) and FIN (eighth): keep what falls in the window, deliver
    /// what is now in order, remember early ranges. Returns whether the ACK must go at once:
    /// for data out of order or filling a gap (RFC 5681 §4.2), for every second full-sized
    /// segment, and for a FIN; other data may wait for the delayed-ACK timer.
    let private receiveData (now: int64) (out: Out) (seg: Segment) (c: Connection) : struct (Connection * bool) =
        if not (receivesData c.State) then
            struct (c, false)
        else
            let dataStart = seg.Seq + (if seg.Has TcpFlags.Syn then 1 else 0)
            let dataEnd = dataStart + seg.PayloadLength
            // Nothing beyond a FIN already seen is data, and nothing beyond the buffer's end is
            // kept (a defence in depth: RcvRight never passes it).
            let bufferEnd = recvSeqOf c (c.Consumed + int64 c.RcvBuf)

            let limit =
                match c.PeerFinAt with
                | ValueSome at -> SeqNum.min (SeqNum.min c.RcvRight bufferEnd) (recvSeqOf c at)
                | ValueNone -> SeqNum.min c.RcvRight bufferEnd

            let c =
                if seg.PayloadLength > c.RcvMss then
                    { c with
                        RcvMss = min seg.PayloadLength c.Config.Mss
                    }
                else
                    c

            let c = measureReceiverRtt now seg c
            let lo = SeqNum.max dataStart c.RcvNxt
            let hi = SeqNum.min dataEnd limit
            let mutable ackNow = seg.PayloadLength > 0 && not (SeqNum.lt lo hi)

            let c =
                if SeqNum.lt lo hi then
                    let position = c.Delivered + int64 (lo - c.RcvNxt)
                    let length = hi - lo
                    out.Add(TcpAction.StoreReceived(lo - dataStart, position, length))

                    if lo = c.RcvNxt then
                        let hadGaps = not c.OutOfOrder.IsEmpty
                        let mutable delivered = position + int64 length
                        let mutable ranges = c.OutOfOrder
                        let mutable moving = true

                        while moving do
                            let struct (next, rest) = RangeSet.advance delivered ranges
                            moving <- next <> delivered || rest.Ranges.Length <> ranges.Ranges.Length
                            delivered <- next
                            ranges <- rest

                        out.Add(TcpAction.Deliver delivered)
                        let unacked = c.UnackedBytes + int (delivered - c.Delivered)
                        // RFC 5681 §4.2 / RFC 9293 §3.8.6.3: at least every second full-sized
                        // segment (full-sized as the peer sends them, options taken off).
                        ackNow <- ackNow || hadGaps || unacked >= 2 * c.RcvMss

                        { c with
                            Delivered = delivered
                            RcvNxt = recvSeqOf c delivered
                            OutOfOrder = ranges
                            UnackedBytes = unacked
                            AckPending = true
                        }
                    else
                        ackNow <- true

                        { c with
                            OutOfOrder = RangeSet.add position (position + int64 length) c.OutOfOrder
                            AckPending = true
                            SackRecent =
                                position
                                :: (c.SackRecent |> List.filter (fun p -> p > c.Delivered) |> List.truncate 3)
                        }
                else
                    { c with
                        AckPending = c.AckPending || ackNow
                    }

            // A FIN counts when nothing of the segment was cut off at the right edge.
            let c =
                if
                    seg.Has TcpFlags.Fin
                    && c.PeerFinAt.IsNone
                    && SeqNum.ge dataEnd c.RcvNxt
                    && SeqNum.le dataEnd c.RcvRight
                then
                    { c with
                        PeerFinAt = ValueSome(c.Delivered + int64 (dataEnd - c.RcvNxt))
                    }
                else
                    c

            let struct (c, tookFin) = takeFinIfDue now out c
            struct (c, ackNow || tookFin)

    /// After a segment: send what is due, then the ACK (now, or armed for later).
    let private finish (now: int64) (out: Out) (ackNow: bool) (c: Connection) =
        let c = transmit now out c

        if not c.AckPending then
            c
        elif ackNow || c.Config.DelayedAckTimeout = 0L then
            sendAck now out c
        elif c.DelayedAckAt.IsNone then
            { c with
                DelayedAckAt = ValueSome(now + c.Config.DelayedAckTimeout)
            }
        else
            c

    // ---- Arriving segments, by state (RFC 9293 §3.10.7) ---------------------------------------

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

    /// What the peer's SYN tells us: its ISN, its window, its MSS, and which options both sides
    /// use. We offered window scaling and timestamps in our SYN exactly when configured (and
    /// answer a SYN in kind), so each is on when configured and present in the peer's SYN.
    let private learnSyn (now: int64) (seg: Segment) (c: Connection) =
        let peerMss =
            match seg.Options.MaximumSegmentSize with
            | ValueSome m when m > 0us -> int m
            | _ -> c.Config.DefaultPeerMss

        let scaled = c.Config.WindowScaling && seg.Options.WindowScale.IsSome
        let ts = c.Config.Timestamps && seg.Options.Timestamps.IsSome
        let optionBytes = if ts then TimestampsLength else 0
        // RFC 9293 §3.7.1: the peer's MSS, our own and what the path MTU allows (`PathMss`).
        let mss = max 1 (min (min peerMss c.Config.Mss) c.PathMss - optionBytes)

        { c with
            WindowScaled = scaled
            // RFC 7323 §2.3: a shift above 14 is taken as 14.
            SndWndShift =
                (match seg.Options.WindowScale with
                 | ValueSome shift when scaled -> min 14 (int shift)
                 | _ -> 0)
            RcvWndShift =
                (if scaled then
                     TcpConfig.WindowShiftFor c.Config.ReceiveBufferLimit
                 else
                     0)
            TsEnabled = ts
            TsRecent =
                (match seg.Options.Timestamps with
                 | ValueSome t when ts -> t.Value
                 | _ -> 0u)
            TsRecentAt = now
            RcvMss = mss
            SackEnabled = c.Config.SelectiveAck && seg.Options.SackPermitted
            Irs = seg.Seq
            RcvNxt = seg.Seq + 1
            RcvRight = seg.Seq + 1
            SndWnd = int seg.Window
            MaxSndWnd = max c.MaxSndWnd (int seg.Window)
            SndWl1 = seg.Seq
            SndWl2 = seg.Ack
            SendMss = mss
            Cwnd = initialWindow mss
        }

    let private rst (out: Out) (seq: SeqNum) (c: Connection) =
        emit 0L out TcpFlags.Rst seq 0L 0 TcpOptions.None c

    /// §3.10.7.2: LISTEN answers a SYN with SYN,ACK. (Data on the SYN is not taken: it is not
    /// acknowledged, so the peer sends it again once the connection is up.)
    let private onListen (now: int64) (out: Out) (seg: Segment) (c: Connection) =
        if seg.Has TcpFlags.Rst then
            c
        elif seg.Has TcpFlags.Ack then
            rst out seg.Ack c
        elif seg.Has TcpFlags.Syn then
            learnSyn now seg c
            |> move out TcpTrigger.RcvSyn TcpState.SynReceived
            |> transmit now out
        else
            c

    /// §3.10.7.3: SYN-SENT waits for the SYN,ACK (or a SYN: simultaneous open).
    let private onSynSent (now: int64) (out: Out) (seg: Segment) (c: Connection) =
        let hasAck = seg.Has TcpFlags.Ack

        let ackOk = hasAck && SeqNum.gt seg.Ack c.Iss && SeqNum.le seg.Ack c.SndMax

        if hasAck && not ackOk then
            if seg.Has TcpFlags.Rst then c else rst out seg.Ack c
        elif seg.Has TcpFlags.Rst then
            // RFC 5961 §3.2: in SYN-SENT a RST is believed only when it acknowledges our SYN.
            if ackOk then
                out.Add(TcpAction.Event TcpEvent.Refused)
                enterClosed out TcpTrigger.RcvRst c
            else
                c
        elif seg.Has TcpFlags.Syn then
            let c = learnSyn now seg c

            if ackOk then
                let c =
                    newlyAcked now out seg c |> move out TcpTrigger.RcvSynAck TcpState.Established

                out.Add(TcpAction.Event TcpEvent.Connected)
                // The SYN itself is acknowledged at once; data riding on it is taken as usual.
                let struct (c, _) = receiveData now out seg { c with AckPending = true }
                finish now out true c
            else
                // Simultaneous open: our SYN is sent again, now with the ACK of theirs.
                let c =
                    move out TcpTrigger.RcvSyn TcpState.SynReceived c
                    |> emit now out (TcpFlags.Syn ||| TcpFlags.Ack) c.Iss 0L 0 (synOptions now c)

                { c with RttTimed = ValueNone }
        else
            c

    /// A RST that passed the checks (§3.10.7.4 second step).
    let private onReset (out: Out) (c: Connection) =
        match c.State with
        | TcpState.SynReceived when not c.Passive -> out.Add(TcpAction.Event TcpEvent.Refused)
        | TcpState.Established
        | TcpState.FinWait1
        | TcpState.FinWait2
        | TcpState.CloseWait -> out.Add(TcpAction.Event TcpEvent.Reset)
        | _ -> ()

        enterClosed out TcpTrigger.RcvRst c

    /// §3.10.7.4 first step: is any of the segment inside the receive window?
    let private acceptable (seg: Segment) (c: Connection) =
        let window = max 0 (c.RcvRight - c.RcvNxt)
        let length = seg.Length

        if length = 0 then
            if window = 0 then
                seg.Seq = c.RcvNxt
            else
                SeqNum.inWindow c.RcvNxt seg.Seq c.RcvRight
        elif window = 0 then
            // A bare FIN needs no buffer space: taken at RCV.NXT even in a zero window, as Linux
            // does (the RFC's table would refuse it until the window opens).
            seg.Seq = c.RcvNxt && seg.PayloadLength = 0 && not (seg.Has TcpFlags.Syn)
        else
            SeqNum.inWindow c.RcvNxt seg.Seq c.RcvRight
            || SeqNum.inWindow c.RcvNxt (seg.Seq + (length - 1)) c.RcvRight

    /// PAWS (RFC 7323 §5.3 R1): a segment whose TSval is older than TS.Recent is an old
    /// duplicate, unless TS.Recent itself is over 24 days old (§5.5, then it is stale). RSTs
    /// are exempt (§5.2 leaves them to the sequence checks).
    let private pawsRejects (now: int64) (seg: Segment) (c: Connection) =
        match seg.Options.Timestamps with
        | ValueSome ts when c.TsEnabled && not (seg.Has TcpFlags.Rst) ->
            tsAfter c.TsRecent ts.Value && now - c.TsRecentAt <= PawsIdleLimit
        | _ -> false

    /// RFC 7323 §4.3 (and §5.3 R3): TS.Recent takes SEG.TSval when it is not older and the
    /// segment starts at or before Last.ACK.sent, so the echoed time is that of the segment
    /// that advanced the left edge, never of one sent later and delivered early.
    let private updateTsRecentIn (now: int64) (seg: inref<Segment>) (c: byref<Connection>) =
        match seg.Options.Timestamps with
        | ValueSome ts when
            c.TsEnabled
            && not (tsAfter c.TsRecent ts.Value)
            && SeqNum.le seg.Seq c.LastAckSent
            ->
            c.TsRecent <- ts.Value
            c.TsRecentAt <- now
        | _ -> ()

    /// `updateTsRecentIn` on a copy.
    let private updateTsRecent (now: int64) (seg: Segment) (c: Connection) =
        let mutable c = c
        updateTsRecentIn now &seg &c
        c

    /// RFC 6191 §2 (which refines RFC 1122 §4.2.2.13): may a SYN (without ACK) for a connection
    /// in TIME-WAIT open a new incarnation of it? With timestamps on the old connection and on
    /// the SYN (so on the new one too), when its TSval is newer than TS.Recent, the last one
    /// seen from the peer, or equal to it with a sequence number beyond; otherwise (either side
    /// without timestamps) when its sequence number lies beyond RCV.NXT, past everything the
    /// old incarnation carried from the peer. Either way no old duplicate of the peer's can pass
    /// (PAWS and the sequence space both move forward); a TSval older than TS.Recent marks an
    /// old duplicate whatever its sequence number. A TS.Recent older than 24 days says nothing
    /// (RFC 7323 §5.5) and leaves the sequence number to decide.
    let private reopens (now: int64) (seg: Segment) (c: Connection) =
        let beyond = SeqNum.gt seg.Seq c.RcvNxt

        match seg.Options.Timestamps with
        | ValueSome ts when c.TsEnabled && now - c.TsRecentAt <= PawsIdleLimit ->
            tsAfter ts.Value c.TsRecent || (ts.Value = c.TsRecent && beyond)
        | _ -> beyond

    /// A SYN (without ACK) in TIME-WAIT. An acceptable one (`reopens`) ends this incarnation:
    /// `Reopened` tells the caller to hand the SYN to the listener as a new connection request
    /// (with an ISS from `reopenIss`), and the connection goes to CLOSED. Any other gets a
    /// rate-limited challenge ACK and leaves TIME-WAIT as it is, its timer included (RFC 6191
    /// says drop it; RFC 5961 §4 and Linux answer it, and the peer's answer to that ACK, a RST
    /// at RCV.NXT, ends TIME-WAIT so that a genuine new connection is not held up for 2·MSL).
    let private onTimeWaitSyn (now: int64) (out: Out) (seg: Segment) (c: Connection) =
        if reopens now seg c then
            out.Add(TcpAction.Event TcpEvent.Reopened)
            enterClosed out TcpTrigger.RcvReopeningSyn c
        else
            sendLimitedAck now out c

    /// §3.10.7.4 fifth step, FIN-WAIT-1: "if the FIN segment is now acknowledged, then enter
    /// FIN-WAIT-2". Taken after the segment's text and FIN (a FIN in the same segment went to
    /// TIME-WAIT instead, `takeFinIfDue`); FIN-WAIT-2's idle timer starts.
    let private leaveFinWait1 (now: int64) (out: Out) (c: Connection) =
        if c.State = TcpState.FinWait1 && finAcked c then
            let c = move out TcpTrigger.RcvAckOfFin TcpState.FinWait2 c

            { c with
                LingerAt = c.Config.FinWait2Timeout |> ValueOption.map (fun t -> now + t)
            }
        else
            c

    /// §3.10.7.4: SYN-RECEIVED and the synchronized states.
    let private onSynchronized (now: int64) (out: Out) (seg: Segment) (c: Connection) =
        if
            c.State = TcpState.SynReceived
            && seg.Has TcpFlags.Syn
            && not (seg.Has TcpFlags.Ack)
            && seg.Seq = c.Irs
        then
            // The peer's SYN again: our SYN,ACK was lost. Answer it now instead of waiting for
            // our timer (the model's ignored RcvSyn: no state change).
            emit now out (TcpFlags.Syn ||| TcpFlags.Ack) c.Iss 0L 0 (synOptions now c) c
        elif
            c.State = TcpState.TimeWait
            && seg.Has TcpFlags.Syn
            && not (seg.Has TcpFlags.Ack)
            && not (seg.Has TcpFlags.Rst)
        then
            // Before the timestamp and window checks: RFC 6191 decides, not PAWS or §3.10.7.4.
            onTimeWaitSyn now out seg c
        elif c.TsEnabled && not (seg.Has TcpFlags.Rst) && seg.Options.Timestamps.IsNone then
            // RFC 7323 §3.2: once timestamps are on, a non-RST segment without them is dropped.
            c
        elif pawsRejects now seg c then
            // RFC 7323 §5.3 R1: an old duplicate (its TSval is behind TS.Recent): ACK and drop.
            if seg.Has TcpFlags.Rst then
                c
            else
                answerInvalid now out seg c
        elif not (acceptable seg c) then
            if seg.Has TcpFlags.Rst then
                c
            elif
                c.State = TcpState.TimeWait
                && seg.Has TcpFlags.Fin
                && seg.Seq + seg.Length = c.RcvNxt
            then
                // The peer repeats its FIN: our last ACK was lost. ACK again and restart 2·MSL.
                let c =
                    move out TcpTrigger.RcvFin TcpState.TimeWait c
                    |> fun c ->
                        { c with
                            LingerAt = ValueSome(now + 2L * c.Config.Msl)
                        }

                sendAck now out c
            else
                answerInvalid now out seg c
        elif seg.Has TcpFlags.Rst then
            // RFC 5961 §3.2: only a RST exactly at RCV.NXT resets; one elsewhere in the window
            // gets a challenge ACK, so a blind attacker has to guess the exact number. TIME-WAIT
            // ends on such a RST too (not RFC 1337: see StateModel for why) and ignores any other
            // without an answer: the peer's side is closed, so no legitimate sender of an
            // in-window RST would learn anything from a challenge ACK (Linux does the same).
            if seg.Seq = c.RcvNxt then onReset out c
            elif c.State = TcpState.TimeWait then c
            else sendLimitedAck now out c
        elif seg.Has TcpFlags.Syn then
            // RFC 5961 §4.2: a SYN in a synchronized state gets a challenge ACK, never a reset.
            sendLimitedAck now out c
        elif not (seg.Has TcpFlags.Ack) then
            c
        else
            let c = updateTsRecent now seg c

            let struct (c, goOn) =
                if c.State <> TcpState.SynReceived then
                    processAck now out seg c
                elif SeqNum.lt c.SndUna seg.Ack && SeqNum.le seg.Ack c.SndMax then
                    let c =
                        move out TcpTrigger.RcvAckOfSyn TcpState.Established c
                        |> fun c ->
                            { c with
                                SndWnd = int seg.Window <<< c.SndWndShift
                                MaxSndWnd = max c.MaxSndWnd (int seg.Window <<< c.SndWndShift)
                                SndWl1 = seg.Seq
                                SndWl2 = seg.Ack
                            }

                    out.Add(TcpAction.Event TcpEvent.Connected)
                    let struct (c, goOn) = processAck now out seg c
                    // A CLOSE during SYN-RECEIVED was queued until now (§3.10.4).
                    let c =
                        if goOn && c.FinQueued then
                            move out TcpTrigger.Close TcpState.FinWait1 c
                        else
                            c

                    struct (c, goOn)
                else
                    // An ACK of something we never sent: reset that peer (§3.10.7.4 fifth step).
                    struct (rst out seg.Ack c, false)

            if not goOn || c.State = TcpState.Closed then
                c
            else
                // FIN-WAIT-2's idle timer restarts on every segment from the peer.
                let c =
                    match c.State, c.Config.FinWait2Timeout with
                    | TcpState.FinWait2, ValueSome t -> { c with LingerAt = ValueSome(now + t) }
                    | _ -> c

                let struct (c, ackNow) = receiveData now out seg c
                finish now out ackNow (leaveFinWait1 now out c)

    let private handle (now: int64) (out: Out) (seg: Segment) (c: Connection) =
        match c.State with
        | TcpState.Closed ->
            match resetFor seg with
            | ValueSome reply -> out.Add(TcpAction.Transmit reply)
            | ValueNone -> ()

            c
        | TcpState.Listen -> onListen now out seg c
        | TcpState.SynSent -> onSynSent now out seg c
        | _ -> onSynchronized now out seg c

    /// Keep-alive (RFC 9293 §3.8.4) runs only in ESTABLISHED and CLOSE-WAIT, where the peer owes
    /// us nothing and may fall silent for good; TIME-WAIT and the closing states have timers.
    let private keepsAlive (c: inref<Connection>) =
        c.Config.KeepAliveIdle.IsSome
        && (c.State = TcpState.Established || c.State = TcpState.CloseWait)

    /// Any segment from the peer shows it is alive: the idle time starts again and the count of
    /// unanswered probes goes back to zero. Also arms the timer on entering ESTABLISHED.
    let private peerHeardFromIn (now: int64) (c: byref<Connection>) =
        match c.Config.KeepAliveIdle with
        | ValueSome idle when keepsAlive &c ->
            c.KeepAliveAt <- ValueSome(now + idle)
            c.KeepAliveProbes <- 0
        | _ when c.KeepAliveAt.IsSome -> c.KeepAliveAt <- ValueNone
        | _ -> ()

    // ---- Header prediction: the per-segment fast path -----------------------------------------

    /// Header prediction (Van Jacobson's; Linux's tcp_rcv_established): in ESTABLISHED almost
    /// every segment is either a pure ACK of new data or the next in-order data, and for those
    /// most of RFC 9293 §3.10.7.4's steps are known to pass or to change nothing. This says
    /// whether `seg` is such a segment for `c`:
    /// - only ACK (and PSH) set, SEG.SEQ = RCV.NXT (so it is acceptable, and no RST/SYN/FIN
    ///   step applies);
    /// - with timestamps on, a TSval not older than TS.Recent (PAWS passes, RFC 7323 §5.3);
    /// - no SACK blocks; SND.UNA =< SEG.ACK =< SND.MAX (nothing unsent acknowledged, nothing
    ///   too old: RFC 5961 §5.2), and either new data acknowledged or payload carried, so it is
    ///   never a duplicate ACK (RFC 5681 §2);
    /// - nothing unusual in the connection: not in recovery, no duplicate ACKs counted, an
    ///   empty scoreboard, no unresolved tail loss probe, SND.NXT = SND.MAX (no timeout's
    ///   go-back-N), no FIN queued or seen, nothing held out of order;
    /// - its payload fits entirely in the window we offered and the receive buffer.
    /// `fastPathIn` then does exactly what the general path would (the equivalence is a
    /// property test), touching only the fields that change.
    let private predictedIn (seg: inref<Segment>) (c: inref<Connection>) =
        c.State = TcpState.Established
        && seg.Flags &&& ~~~TcpFlags.Psh = TcpFlags.Ack
        && seg.Seq.Value = c.RcvNxt.Value
        && seg.Options.SackBlockCount = 0
        && (not c.TsEnabled
            || (match seg.Options.Timestamps with
                | ValueSome ts -> not (tsAfter c.TsRecent ts.Value)
                | ValueNone -> false))
        && not c.InRecovery
        && c.DupAcks = 0
        && c.Scoreboard.IsEmpty
        && c.ProbeEnd.IsNone
        && c.SndNxt.Value = c.SndMax.Value
        && not c.FinQueued
        && c.PeerFinAt.IsNone
        && c.OutOfOrder.IsEmpty
        && SeqNum.le c.SndUna seg.Ack
        && SeqNum.le seg.Ack c.SndMax
        && not (SeqNum.lt seg.Ack (c.SndUna - c.MaxSndWnd))
        && (if seg.PayloadLength = 0 then
                seg.Ack.Value <> c.SndUna.Value
            else
                // The data's end within both the offered right edge and the buffer's end.
                let bufferEnd = c.Irs + 1 + int (c.Consumed + int64 c.RcvBuf)
                let limit = SeqNum.min c.RcvRight bufferEnd
                c.RcvRight - c.RcvNxt > 0 && seg.PayloadLength <= limit - c.RcvNxt)

    /// The fast path for a segment `predictedIn` accepted: the steps of `onSynchronized`,
    /// `processAck`, `receiveData`, `finish`, `peerHeardFrom` and `scheduleProbe` that can do
    /// anything for it, in the same order, on `c` in place. Loss recovery, the probe episode,
    /// reneging, FIN handling and out-of-order bookkeeping are skipped because the prediction
    /// guarantees they change nothing.
    let private fastPathIn (now: int64) (out: Out) (seg: inref<Segment>) (c: byref<Connection>) =
        updateTsRecentIn now &seg &c

        // Fifth step (processAck): new data acknowledged, then the send window.
        if SeqNum.gt seg.Ack c.SndUna then
            newlyAckedIn now out &seg &c

        updateSendWindowIn &seg &c
        c.ProbesUnanswered <- 0

        // Seventh step (receiveData): the whole payload is the next in-order data.
        let length = seg.PayloadLength
        let mutable ackNow = false

        if length > 0 then
            if length > c.RcvMss then
                c.RcvMss <- min length c.Config.Mss

            measureReceiverRttIn now &seg &c
            let position = c.Delivered
            out.Add(TcpAction.StoreReceived(0, position, length))
            let delivered = position + int64 length
            out.Add(TcpAction.Deliver delivered)
            let unacked = c.UnackedBytes + length
            // RFC 5681 §4.2 / RFC 9293 §3.8.6.3: at least every second full-sized segment.
            ackNow <- unacked >= 2 * c.RcvMss
            c.Delivered <- delivered
            c.RcvNxt <- c.Irs + 1 + int delivered
            c.UnackedBytes <- unacked
            c.AckPending <- true

        // finish: send what the window now allows (nothing to do when nothing is queued), the
        // persist timer, then the ACK now or the delayed-ACK timer.
        if SeqNum.lt c.SndNxt (c.Iss + 1 + int c.Written) then
            sendDataIn now out &c

        updatePersistIn now &c

        if c.AckPending then
            if ackNow || c.Config.DelayedAckTimeout = 0L then
                emitIn now out TcpFlags.Ack c.SndMax 0L 0 TcpOptions.None &c
            elif c.DelayedAckAt.IsNone then
                c.DelayedAckAt <- ValueSome(now + c.Config.DelayedAckTimeout)

        peerHeardFromIn now &c
        scheduleProbeIn now &c

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

    // ---- Timers -------------------------------------------------------------------------------

    let private due (now: int64) (deadline: int64 voption) =
        match deadline with
        | ValueSome t -> t <= now
        | ValueNone -> false

    /// Go-back-N from SND.UNA: SND.NXT returns to SND.UNA, the RTT sample in progress is
    /// dropped, recovery ends and nothing sent before counts as a new loss episode ("recover" =
    /// SND.MAX, RFC 6582; RFC 6675 §5.1), and the loss marks and tail-loss probe are cleared.
    /// SACKed ranges are skipped as in any go-back-N. Shared by the retransmission timeout and
    /// the resend after a lower path MTU.
    let private goBackN (c: Connection) =
        { c with
            SndNxt = c.SndUna
            RttTimed = ValueNone
            InRecovery = false
            DupAcks = 0
            RecoveryPoint = c.SndMax
            HighRxt = c.Acked
            RetransmitMarks = []
            LostBelow = 0L
            ProbeAt = ValueNone
            ProbeEnd = ValueNone
        }

    /// RFC 6298 §5.4–5.7: back off, retransmit from SND.UNA (go-back-N, with the congestion
    /// window down to one segment, RFC 5681 §3.1), or give up after too many tries.
    let private onRetransmitTimeout (now: int64) (out: Out) (c: Connection) =
        let c =
            { c with
                RetransmitAt = ValueNone
                Retries = c.Retries + 1
            }

        let limit =
            match c.State with
            | TcpState.SynSent
            | TcpState.SynReceived -> c.Config.MaxSynRetransmissions
            | _ -> c.Config.MaxRetransmissions

        if
            c.SndUna = c.SndNxt
            && c.State <> TcpState.SynSent
            && c.State <> TcpState.SynReceived
        then
            // Nothing outstanding (a probe byte is the persist timer's business).
            { c with Retries = c.Retries - 1 }
        elif c.Retries > limit then
            out.Add(TcpAction.Event TcpEvent.TimedOut)
            enterClosed out TcpTrigger.Timeout c
        else
            let flight = c.SndMax - c.SndUna

            // RFC 5681 §3.1 / RFC 9438 §4.8: ssthresh as for a loss, then one segment. A second
            // timeout of the same data (Retries > 1) does not lower ssthresh again.
            let struct (ssthresh, cubic) =
                if c.Retries > 1 then
                    struct (c.Ssthresh, c.Cubic)
                else
                    Congestion.onLoss c.Config.CongestionControl flight c.SendMss c.Cwnd c.Cubic

            { goBackN c with
                Rtt = Rto.backoff c.Config.MaxRto c.Rtt
                Ssthresh = ssthresh
                Cubic = cubic
                Cwnd = c.SendMss
            }
            |> transmit now out

    /// RFC 9293 §3.8.6.1: the window stayed shut (or too small to be worth a segment, the
    /// override of §3.8.6.2.1): send what fits, or probe.
    let private onPersist (now: int64) (out: Out) (c: Connection) =
        let c = { c with PersistAt = ValueNone }
        let pending = finSeq c - c.SndNxt

        if not (synAcked c && sendsData c.State) || pending <= 0 || c.SndNxt <> c.SndUna then
            updatePersist now c
        else
            let usable = max 0 (c.SndUna + c.SndWnd - c.SndNxt)

            if usable > 0 then
                let length = min usable (min pending c.SendMss)
                let seq = c.SndNxt

                let c =
                    emit now out (TcpFlags.Ack ||| TcpFlags.Psh) seq (sendPosOf c seq) length TcpOptions.None c

                let next = seq + length

                { c with
                    SndNxt = next
                    SndMax = SeqNum.max c.SndMax next
                }
                |> armRetransmit now
            elif c.ProbesUnanswered >= c.Config.MaxRetransmissions then
                out.Add(TcpAction.Event TcpEvent.TimedOut)
                enterClosed out TcpTrigger.Timeout c
            else
                // The probe is an ACK numbered SND.UNA - 1, as Linux sends: already acknowledged,
                // so the peer must answer with an ACK carrying its current window, and no
                // sequence space is used. (RFC 9293 §3.8.6.1 suggests one byte of new data; a
                // byte past a closed window is dropped by the peer anyway.)
                let c = emit now out TcpFlags.Ack (c.SndUna - 1) 0L 0 TcpOptions.None c

                let c =
                    { c with
                        ProbesUnanswered = c.ProbesUnanswered + 1
                    }

                { c with
                    PersistAt = ValueSome(now + persistInterval &c)
                }

    /// The keep-alive timer (RFC 9293 §3.8.4, RFC 1122 §4.2.3.6). A probe is an ACK numbered
    /// SND.NXT - 1 with no data: already acknowledged, so the peer answers with an ACK (and
    /// its answer resets the timer in `handleSegment`). While data is in flight or waiting the
    /// retransmission and persist timers watch the peer, so the idle period just starts over.
    /// `KeepAliveCount` probes without an answer end the connection with TimedOut.
    let private onKeepAlive (now: int64) (out: Out) (c: Connection) =
        match c.Config.KeepAliveIdle with
        | ValueSome idle when keepsAlive &c ->
            if c.SndMax <> c.SndUna || SeqNum.lt c.SndNxt (finSeq c) then
                { c with
                    KeepAliveAt = ValueSome(now + idle)
                }
            elif c.KeepAliveProbes >= c.Config.KeepAliveCount then
                out.Add(TcpAction.Event TcpEvent.TimedOut)
                enterClosed out TcpTrigger.Timeout c
            else
                let c = emit now out TcpFlags.Ack (c.SndNxt - 1) 0L 0 TcpOptions.None c

                { c with
                    KeepAliveProbes = c.KeepAliveProbes + 1
                    KeepAliveAt = ValueSome(now + c.Config.KeepAliveInterval)
                }
        | _ -> { c with KeepAliveAt = ValueNone }

    /// To CLOSED by `trigger`, with a RST first when the peer may hold state for us (RFC 9293
    /// §3.10.5: SYN-RECEIVED, ESTABLISHED, FIN-WAIT-1/2, CLOSE-WAIT): the user's ABORT, and the
    /// user timeout.
    let private resetAndClose (trigger: TcpTrigger) (out: Out) (c: Connection) =
        match c.State with
        | TcpState.Closed -> c
        | TcpState.SynReceived
        | TcpState.Established
        | TcpState.FinWait1
        | TcpState.FinWait2
        | TcpState.CloseWait -> rst out c.SndNxt c |> enterClosed out trigger
        | _ -> enterClosed out trigger c

    /// The user timeout (RFC 9293 §3.10.8, RFC 5482), checked when a timer runs: data or our FIN
    /// waiting in a synchronized state with no progress for `UserTimeout` resets the connection
    /// (the peer may be alive, answering zero-window probes: the RST lets it go too).
    let private checkUserTimeout (now: int64) (out: Out) (c: Connection) =
        match c.Config.UserTimeout with
        | ValueNone -> c
        | ValueSome timeout ->
            // The synchronized states in which data or our FIN can wait for an ACK.
            if not (sendsData c.State && (c.Written > c.Acked || c.SndMax <> c.SndUna)) then
                { c with
                    StalledSince = System.Int64.MinValue
                }
            elif c.StalledSince = System.Int64.MinValue || c.Acked <> c.StalledAcked then
                { c with
                    StalledSince = now
                    StalledAcked = c.Acked
                }
            elif now - c.StalledSince < timeout then
                c
            else
                out.Add(TcpAction.Event TcpEvent.UserTimedOut)
                resetAndClose TcpTrigger.Timeout out c

    /// Runs every timer whose deadline is at or before `now`. Calling it early is harmless.
    let handleTimerInto (out: TcpActions) (now: int64) (c: Connection) : Connection =

        let c =
            if due now c.LingerAt then
                match c.State with
                | TcpState.TimeWait -> enterClosed out TcpTrigger.TimeWaitTimeout c
                | TcpState.FinWait2 ->
                    out.Add(TcpAction.Event TcpEvent.TimedOut)
                    enterClosed out TcpTrigger.Timeout c
                | _ -> { c with LingerAt = ValueNone }
            else
                c

        let live (c: Connection) = c.State <> TcpState.Closed
        // First, so that an expired connection sends its RST and no probe or retransmission.
        let c = if live c then checkUserTimeout now out c else c

        let c =
            if live c && due now c.RetransmitAt then
                onRetransmitTimeout now out c
            else
                c

        let c =
            if live c && due now c.PersistAt then
                onPersist now out c
            else
                c

        let c =
            if live c && due now c.DelayedAckAt then
                if c.AckPending then
                    sendAck now out c
                else
                    { c with DelayedAckAt = ValueNone }
            else
                c

        let c =
            if live c && due now c.KeepAliveAt then
                onKeepAlive now out c
            else
                c

        let c = if live c && due now c.ProbeAt then onProbe now out c else c

        scheduleProbe now c

    // ---- ICMP errors (RFC 1122 §4.2.3.9, RFC 5927, RFC 1191, RFC 8201) -------------------------

    /// RFC 5927 §4.1: an ICMP error is about data in flight only when the quoted SEG.SEQ lies in
    /// [SND.UNA, SND.NXT). SND.MAX stands for the RFC's SND.NXT here: after a timeout pulled
    /// SND.NXT back, segments up to SND.MAX are still out there. In SYN-SENT and SYN-RECEIVED
    /// that is our SYN (ISS) alone.
    let private quotesInFlight (seq: SeqNum) (c: Connection) =
        SeqNum.le c.SndUna seq && SeqNum.lt seq c.SndMax

    /// Sends again, at the current (lowered) MSS, everything outstanding: SND.NXT goes back to
    /// SND.UNA as after a timeout, but without the congestion response (the packets were
    /// dropped for their size, not for congestion: Linux's tcp_simple_retransmit keeps cwnd
    /// and ssthresh too), without backoff, and with the recovery state cleared so nothing sent
    /// before counts as a new loss episode (RFC 6582's "recover" = SND.MAX). SACKed ranges are
    /// skipped as in any go-back-N.
    let private resendOutstanding (now: int64) (out: Out) (c: Connection) =
        if sendsData c.State && synAcked c && SeqNum.lt c.SndUna c.SndMax then
            { goBackN c with
                RetransmitAt = ValueNone
            }
            |> transmit now out
        else
            c

    /// `PathMss` and `SendMss` for a path MTU of `pathMtu` (already at least the floor).
    let private withPathMtu (ipv6: bool) (pathMtu: int) (c: Connection) =
        let pathMss = pathMtu - TcpIcmp.ipHeaderLength ipv6 - 20
        let optionBytes = if c.TsEnabled then TimestampsLength else 0

        { c with
            PathMss = min c.PathMss pathMss
            SendMss = max 1 (min c.SendMss (pathMss - optionBytes))
        }

    /// The connection's current path MTU as TCP sees it.
    let private currentPathMtu (ipv6: bool) (c: Connection) =
        c.PathMss + TcpIcmp.ipHeaderLength ipv6 + 20

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
    let private failByIcmp (out: Out) (error: System.Net.Sockets.SocketError) (c: Connection) =
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

                    if lowered.SendMss < c.SendMss then
                        resendOutstanding now out lowered |> scheduleProbe now
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

    // ---- User calls (RFC 9293 §3.10.1–3.10.5) -------------------------------------------------

    /// A CLOSED connection with ISS `iss` and nothing else.
    let private create (config: TcpConfig) (iss: SeqNum) : Connection =
        config.Validate()

        {
            Config = config
            State = TcpState.Closed
            Passive = false
            Iss = iss
            SndUna = iss
            SndNxt = iss
            SndMax = iss
            SndSml = iss
            SndWnd = 0
            SndWl1 = SeqNum 0u
            SndWl2 = SeqNum 0u
            MaxSndWnd = 0
            SendMss = min config.DefaultPeerMss config.Mss
            PathMss = config.Mss
            SoftError = ValueNone
            Cwnd = initialWindow (min config.DefaultPeerMss config.Mss)
            Ssthresh = 1 <<< 30
            Written = 0L
            Acked = 0L
            FinQueued = false
            Irs = SeqNum 0u
            RcvNxt = SeqNum 0u
            RcvRight = SeqNum 0u
            Delivered = 0L
            Consumed = 0L
            OutOfOrder = RangeSet.empty
            PeerFinAt = ValueNone
            FinReceived = false
            UnackedBytes = 0
            AckPending = false
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
            WindowScaled = false
            SndWndShift = 0
            RcvWndShift = 0
            TsEnabled = false
            // A per-connection offset for TSval (RFC 7323 §7.1): the ISS is already secret and
            // per 4-tuple (RFC 6528); the multiplier spreads it so the two do not look alike.
            TsOffset = iss.Value * 2654435761u
            TsRecent = 0u
            TsRecentAt = 0L
            LastAckSent = SeqNum 0u
            LastInvalidAckAt = System.Int64.MinValue
            StalledSince = System.Int64.MinValue
            StalledAcked = 0L
            RcvMss = min config.DefaultPeerMss config.Mss
            SackEnabled = false
            SackRecent = []
            Scoreboard = RangeSet.empty
            DupAcks = 0
            InRecovery = false
            RecoveryPoint = iss
            HighRxt = 0L
            Cubic = CubicState.Initial
            RcvBuf = config.ReceiveBufferSize
            RcvRtt = 0L
            RcvRttEcho = 0u
            RcvSpaceFrom = ValueNone
            ProbeAt = ValueNone
            ProbeEnd = ValueNone
            ProbeResent = false
            RetransmitMarks = []
            LostBelow = 0L
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
    /// `accept`), so `iss` is that SYN's 4-tuple's ISN; the listener itself, with its accept
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
        let largestUsed = old.SndMax - 1

        if generated - largestUsed > ReopenIssGap then
            generated
        else
            old.SndMax + ReopenIssGap

    /// True when `send` is allowed: the connection is open or opening and the user has not closed it.
    let canSend (c: Connection) =
        not c.FinQueued
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
            invalidOp $"Cannot send in {c.State} (closed for sending: {c.FinQueued})."

        let c = { c with Written = c.Written + bytes }
        transmit now out c |> scheduleProbe now

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
            let flight = int64 (max 0 (min c.Cwnd c.SndWnd))
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

    /// The user read `bytes` more of the delivered data, freeing receive buffer space (and, with
    /// auto-tuning on, maybe growing the buffer: `ReceiveBufferGrown` comes first). When that
    /// opens the window noticeably (from below one MSS, or from at most half the buffer to at
    /// least twice what was offered) a window update is sent at once, so a peer stopped by a
    /// small window need not wait for its persist timer. Throws ArgumentException when more is read than was delivered.
    let receiveWindowUpdateInto (out: TcpActions) (now: int64) (bytes: int64) (c: Connection) : Connection =
        if bytes < 0L || c.Consumed + bytes > c.Delivered then
            invalidArg
                (nameof bytes)
                $"{bytes} bytes read, but only {c.Delivered - c.Consumed} were delivered and unread."

        let c = { c with Consumed = c.Consumed + bytes }

        let c =
            if receivesData c.State && not c.FinReceived then
                let c = tuneReceiveBuffer now out c
                let before = offeredWindow c
                let refreshed = refreshWindow c
                let growth = refreshed.RcvRight - c.RcvRight

                let after = offeredWindow refreshed

                let worthIt = growth > 0 && windowUpdateWorthIt c.Config.Mss c.RcvBuf before after

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
            | TcpState.SynReceived when c.Written = 0L && not c.FinQueued ->
                { c with FinQueued = true }
                |> move out TcpTrigger.Close TcpState.FinWait1
                |> transmit now out
            | TcpState.SynReceived -> { c with FinQueued = true }
            | TcpState.Established ->
                { c with FinQueued = true }
                |> move out TcpTrigger.Close TcpState.FinWait1
                |> transmit now out
            | TcpState.CloseWait ->
                { c with FinQueued = true }
                |> move out TcpTrigger.Close TcpState.LastAck
                |> transmit now out
            | _ -> c

        scheduleProbe now c

    /// User ABORT (§3.10.5): a RST to the peer when it may hold state for us, then CLOSED.
    let abortInto (out: TcpActions) (now: int64) (c: Connection) : Connection =
        ignore now
        resetAndClose TcpTrigger.Abort out c
