namespace NetStack.Core.Tcp

open NetStack.Core.Wire
open NetStack.Core.Tcp.ConnectionBasics
open NetStack.Core.Tcp.ReceiveWindow
open NetStack.Core.Tcp.Scoreboard
open NetStack.Core.Tcp.SegmentOutput
open NetStack.Core.Tcp.LossRecovery
open NetStack.Core.Tcp.LossProbe
open NetStack.Core.Tcp.ConnectionTimers

/// Arriving segments by state (RFC 9293 §3.10.7): the ACK step (§3.10.7.4 fifth), taking data
/// and the FIN (seventh and eighth), LISTEN (§3.10.7.2), SYN-SENT (§3.10.7.3), and the
/// synchronized states with acceptability, RST and SYN checks (RFC 5961), PAWS (RFC 7323 §5),
/// and TIME-WAIT reopening (RFC 6191).
module internal SegmentInput =

    // ---- The ACK field (RFC 9293 §3.10.7.4, fifth step) -----------------------------------------

    /// The ACK field in a synchronized state (RFC 9293 §3.10.7.4 fifth step, RFC 5961 §5.2).
    /// Returns the connection and whether processing of the segment goes on.
    let processAck (now: int64) (out: TcpActions) (seg: Segment) (c: Connection) : struct (Connection * bool) =
        if SeqNum.gt seg.Ack c.Snd.Max then
            // It acknowledges something not yet sent: ACK (rate limited, RFC 5961 §5.2, §7) and drop.
            struct (sendLimitedAck now out c, false)
        elif SeqNum.lt seg.Ack (c.Snd.Una - c.Snd.MaxWnd) then
            // RFC 5961 §5.2: too old to be from this connection's peer: challenge ACK, drop.
            struct (sendLimitedAck now out c, false)
        else
            let una = c.Snd.Una
            let struct (c, sackedNew) = takeSackBlocks seg c
            let advanced = SeqNum.gt seg.Ack c.Snd.Una
            let mutable c = c

            if advanced then
                newlyAckedIn now out &seg &c

            // RFC 2018 §8 reneging: a receiver holding a SACKed range would acknowledge past it,
            // so a cumulative ACK ending at (or in) one means it dropped that data. Forget the
            // scoreboard and, if a timeout's resending is under way, start it again from SND.UNA.
            let c =
                if advanced && (RangeSet.endOfRangeAt c.Snd.Acked c.Recovery.Scoreboard).IsSome then
                    { c with
                        Recovery.Scoreboard = RangeSet.empty
                        Snd.Nxt =
                            if SeqNum.lt c.Snd.Nxt c.Snd.Max && not c.Recovery.InRecovery then
                                c.Snd.Una
                            else
                                c.Snd.Nxt
                    }
                else
                    c

            let windowBefore = c.Snd.Wnd

            // Any acceptable ACK shows the peer is alive, which is what probes ask.
            let mutable c = c
            updateSendWindowIn &seg &c
            c.Timers.ProbesUnanswered <- 0

            let c =
                lossRecovery now out seg una advanced sackedNew (c.Snd.Wnd <> windowBefore) c

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

    // ---- Receiving data (§3.10.7.4, seventh and eighth steps) -----------------------------------

    /// Takes the FIN once everything before it has been delivered (RFC 9293 §3.10.7.4 eighth step).
    let takeFinIfDue (now: int64) (out: TcpActions) (c: Connection) : struct (Connection * bool) =
        match c.Rcv.PeerFinAt with
        | ValueSome at when at = c.Rcv.Delivered && not c.Rcv.FinReceived ->
            let c =
                { c with
                    Rcv.Nxt = c.Rcv.Nxt + 1
                    Rcv.FinReceived = true
                    Rcv.AckPending = true
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
    let receiveData (now: int64) (out: TcpActions) (seg: Segment) (c: Connection) : struct (Connection * bool) =
        if not (receivesData c.State) then
            struct (c, false)
        else
            let dataStart = seg.Seq + (if seg.Has TcpFlags.Syn then 1 else 0)
            let dataEnd = dataStart + seg.PayloadLength
            // Nothing beyond a FIN already seen is data, and nothing beyond the buffer's end is
            // kept (a defence in depth: RcvRight never passes it).
            let bufferEnd = recvSeqOf c (c.Rcv.Consumed + int64 c.Tuning.RcvBuf)

            let limit =
                match c.Rcv.PeerFinAt with
                | ValueSome at -> SeqNum.min (SeqNum.min c.Rcv.Right bufferEnd) (recvSeqOf c at)
                | ValueNone -> SeqNum.min c.Rcv.Right bufferEnd

            let c =
                if seg.PayloadLength > c.Rcv.Mss then
                    { c with
                        Rcv.Mss = min seg.PayloadLength c.Config.Mss
                    }
                else
                    c

            let mutable c = c
            measureReceiverRttIn now &seg &c
            let lo = SeqNum.max dataStart c.Rcv.Nxt
            let hi = SeqNum.min dataEnd limit
            let mutable ackNow = seg.PayloadLength > 0 && not (SeqNum.lt lo hi)

            let c =
                if SeqNum.lt lo hi then
                    let position = c.Rcv.Delivered + int64 (lo - c.Rcv.Nxt)
                    let length = hi - lo
                    out.Add(TcpAction.StoreReceived(lo - dataStart, position, length))

                    if lo = c.Rcv.Nxt then
                        let hadGaps = not c.Rcv.OutOfOrder.IsEmpty
                        let mutable delivered = position + int64 length
                        let mutable ranges = c.Rcv.OutOfOrder
                        let mutable moving = true

                        while moving do
                            let struct (next, rest) = RangeSet.advance delivered ranges
                            moving <- next <> delivered || rest.Ranges.Length <> ranges.Ranges.Length
                            delivered <- next
                            ranges <- rest

                        out.Add(TcpAction.Deliver delivered)
                        let unacked = c.Rcv.UnackedBytes + int (delivered - c.Rcv.Delivered)
                        // RFC 5681 §4.2 / RFC 9293 §3.8.6.3: at least every second full-sized
                        // segment (full-sized as the peer sends them, options taken off).
                        ackNow <- ackNow || hadGaps || unacked >= 2 * c.Rcv.Mss

                        { c with
                            Rcv.Delivered = delivered
                            Rcv.Nxt = recvSeqOf c delivered
                            Rcv.OutOfOrder = ranges
                            Rcv.UnackedBytes = unacked
                            Rcv.AckPending = true
                        }
                    else
                        ackNow <- true

                        { c with
                            Rcv.OutOfOrder = RangeSet.add position (position + int64 length) c.Rcv.OutOfOrder
                            Rcv.AckPending = true
                            Rcv.SackRecent =
                                position
                                :: (c.Rcv.SackRecent
                                    |> List.filter (fun p -> p > c.Rcv.Delivered)
                                    |> List.truncate 3)
                        }
                else
                    { c with
                        Rcv.AckPending = c.Rcv.AckPending || ackNow
                    }

            // A FIN counts when nothing of the segment was cut off at the right edge.
            let c =
                if
                    seg.Has TcpFlags.Fin
                    && c.Rcv.PeerFinAt.IsNone
                    && SeqNum.ge dataEnd c.Rcv.Nxt
                    && SeqNum.le dataEnd c.Rcv.Right
                then
                    { c with
                        Rcv.PeerFinAt = ValueSome(c.Rcv.Delivered + int64 (dataEnd - c.Rcv.Nxt))
                    }
                else
                    c

            let struct (c, tookFin) = takeFinIfDue now out c
            struct (c, ackNow || tookFin)

    /// After a segment: send what is due, then the ACK (now, or armed for later).
    let finish (now: int64) (out: TcpActions) (ackNow: bool) (c: Connection) =
        let c = transmit now out c

        if not c.Rcv.AckPending then
            c
        elif ackNow || c.Config.DelayedAckTimeout = 0L then
            sendAck now out c
        elif c.Timers.DelayedAckAt.IsNone then
            { c with
                Timers.DelayedAckAt = ValueSome(now + c.Config.DelayedAckTimeout)
            }
        else
            c

    // ---- Arriving segments, by state (RFC 9293 §3.10.7) -----------------------------------------

    /// What the peer's SYN tells us: its ISN, its window, its MSS, and which options both sides
    /// use. We offered window scaling and timestamps in our SYN exactly when configured (and
    /// answer a SYN in kind), so each is on when configured and present in the peer's SYN.
    let learnSyn (now: int64) (seg: Segment) (c: Connection) =
        let peerMss =
            match seg.Options.MaximumSegmentSize with
            | ValueSome m when m > 0us -> int m
            | _ -> c.Config.DefaultPeerMss

        let scaled = c.Config.WindowScaling && seg.Options.WindowScale.IsSome
        let ts = c.Config.Timestamps && seg.Options.Timestamps.IsSome
        let optionBytes = if ts then TimestampsLength else 0
        // RFC 9293 §3.7.1: the peer's MSS, our own and what the path MTU allows (`PathMss`).
        let mss = max 1 (min (min peerMss c.Config.Mss) c.Snd.PathMss - optionBytes)

        { c with
            WindowScaled = scaled
            // RFC 7323 §2.3: a shift above 14 is taken as 14.
            Snd.WndShift =
                (match seg.Options.WindowScale with
                 | ValueSome shift when scaled -> min 14 (int shift)
                 | _ -> 0)
            Rcv.WndShift =
                (if scaled then
                     TcpConfig.WindowShiftFor c.Config.ReceiveBufferLimit
                 else
                     0)
            Ts.Enabled = ts
            Ts.Recent =
                (match seg.Options.Timestamps with
                 | ValueSome t when ts -> t.Value
                 | _ -> 0u)
            Ts.RecentAt = now
            Rcv.Mss = mss
            SackEnabled = c.Config.SelectiveAck && seg.Options.SackPermitted
            Rcv.Irs = seg.Seq
            Rcv.Nxt = seg.Seq + 1
            Rcv.Right = seg.Seq + 1
            Snd.Wnd = int seg.Window
            Snd.MaxWnd = max c.Snd.MaxWnd (int seg.Window)
            Snd.Wl1 = seg.Seq
            Snd.Wl2 = seg.Ack
            Snd.Mss = mss
            Recovery.Cwnd = initialWindow mss
        }

    /// §3.10.7.2: LISTEN answers a SYN with SYN,ACK. (Data on the SYN is not taken: it is not
    /// acknowledged, so the peer sends it again once the connection is up.)
    let onListen (now: int64) (out: TcpActions) (seg: Segment) (c: Connection) =
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
    let onSynSent (now: int64) (out: TcpActions) (seg: Segment) (c: Connection) =
        let hasAck = seg.Has TcpFlags.Ack

        let ackOk = hasAck && SeqNum.gt seg.Ack c.Snd.Iss && SeqNum.le seg.Ack c.Snd.Max

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
                let mutable c = c
                newlyAckedIn now out &seg &c
                let c = move out TcpTrigger.RcvSynAck TcpState.Established c

                out.Add(TcpAction.Event TcpEvent.Connected)
                // The SYN itself is acknowledged at once; data riding on it is taken as usual.
                let struct (c, _) = receiveData now out seg { c with Rcv.AckPending = true }
                finish now out true c
            else
                // Simultaneous open: our SYN is sent again, now with the ACK of theirs.
                let mutable c = move out TcpTrigger.RcvSyn TcpState.SynReceived c
                emitIn now out (TcpFlags.Syn ||| TcpFlags.Ack) c.Snd.Iss 0L 0 (synOptions now c) &c
                c.Timers.RttTimed <- ValueNone
                c
        else
            c

    /// A RST that passed the checks (§3.10.7.4 second step).
    let onReset (out: TcpActions) (c: Connection) =
        match c.State with
        | TcpState.SynReceived when not c.Passive -> out.Add(TcpAction.Event TcpEvent.Refused)
        | TcpState.Established
        | TcpState.FinWait1
        | TcpState.FinWait2
        | TcpState.CloseWait -> out.Add(TcpAction.Event TcpEvent.Reset)
        | _ -> ()

        enterClosed out TcpTrigger.RcvRst c

    /// §3.10.7.4 first step: is any of the segment inside the receive window?
    let acceptable (seg: Segment) (c: Connection) =
        let window = max 0 (c.Rcv.Right - c.Rcv.Nxt)
        let length = seg.Length

        if length = 0 then
            if window = 0 then
                seg.Seq = c.Rcv.Nxt
            else
                SeqNum.inWindow c.Rcv.Nxt seg.Seq c.Rcv.Right
        elif window = 0 then
            // A bare FIN needs no buffer space: taken at RCV.NXT even in a zero window, as Linux
            // does (the RFC's table would refuse it until the window opens).
            seg.Seq = c.Rcv.Nxt && seg.PayloadLength = 0 && not (seg.Has TcpFlags.Syn)
        else
            SeqNum.inWindow c.Rcv.Nxt seg.Seq c.Rcv.Right
            || SeqNum.inWindow c.Rcv.Nxt (seg.Seq + (length - 1)) c.Rcv.Right

    /// PAWS (RFC 7323 §5.3 R1): a segment whose TSval is older than TS.Recent is an old
    /// duplicate, unless TS.Recent itself is over 24 days old (§5.5, then it is stale). RSTs
    /// are exempt (§5.2 leaves them to the sequence checks).
    let pawsRejects (now: int64) (seg: Segment) (c: Connection) =
        match seg.Options.Timestamps with
        | ValueSome ts when c.Ts.Enabled && not (seg.Has TcpFlags.Rst) ->
            tsAfter c.Ts.Recent ts.Value && now - c.Ts.RecentAt <= PawsIdleLimit
        | _ -> false

    /// RFC 7323 §4.3 (and §5.3 R3): TS.Recent takes SEG.TSval when it is not older and the
    /// segment starts at or before Last.ACK.sent, so the echoed time is that of the segment
    /// that advanced the left edge, never of one sent later and delivered early.
    let updateTsRecentIn (now: int64) (seg: inref<Segment>) (c: byref<Connection>) =
        match seg.Options.Timestamps with
        | ValueSome ts when
            c.Ts.Enabled
            && not (tsAfter c.Ts.Recent ts.Value)
            && SeqNum.le seg.Seq c.Ts.LastAckSent
            ->
            c.Ts.Recent <- ts.Value
            c.Ts.RecentAt <- now
        | _ -> ()

    /// RFC 6191 §2 (which refines RFC 1122 §4.2.2.13): may a SYN (without ACK) for a connection
    /// in TIME-WAIT open a new incarnation of it? With timestamps on the old connection and on
    /// the SYN (so on the new one too), when its TSval is newer than TS.Recent, the last one
    /// seen from the peer, or equal to it with a sequence number beyond; otherwise (either side
    /// without timestamps) when its sequence number lies beyond RCV.NXT, past everything the
    /// old incarnation carried from the peer. Either way no old duplicate of the peer's can pass
    /// (PAWS and the sequence space both move forward); a TSval older than TS.Recent marks an
    /// old duplicate whatever its sequence number. A TS.Recent older than 24 days says nothing
    /// (RFC 7323 §5.5) and leaves the sequence number to decide.
    let reopens (now: int64) (seg: Segment) (c: Connection) =
        let beyond = SeqNum.gt seg.Seq c.Rcv.Nxt

        match seg.Options.Timestamps with
        | ValueSome ts when c.Ts.Enabled && now - c.Ts.RecentAt <= PawsIdleLimit ->
            tsAfter ts.Value c.Ts.Recent || (ts.Value = c.Ts.Recent && beyond)
        | _ -> beyond

    /// A SYN (without ACK) in TIME-WAIT. An acceptable one (`reopens`) ends this incarnation:
    /// `Reopened` tells the caller to hand the SYN to the listener as a new connection request
    /// (with an ISS from `reopenIss`), and the connection goes to CLOSED. Any other gets a
    /// rate-limited challenge ACK and leaves TIME-WAIT as it is, its timer included (RFC 6191
    /// says drop it; RFC 5961 §4 and Linux answer it, and the peer's answer to that ACK, a RST
    /// at RCV.NXT, ends TIME-WAIT so that a genuine new connection is not held up for 2·MSL).
    let onTimeWaitSyn (now: int64) (out: TcpActions) (seg: Segment) (c: Connection) =
        if reopens now seg c then
            out.Add(TcpAction.Event TcpEvent.Reopened)
            enterClosed out TcpTrigger.RcvReopeningSyn c
        else
            sendLimitedAck now out c

    /// §3.10.7.4 fifth step, FIN-WAIT-1: "if the FIN segment is now acknowledged, then enter
    /// FIN-WAIT-2". Taken after the segment's text and FIN (a FIN in the same segment went to
    /// TIME-WAIT instead, `takeFinIfDue`); FIN-WAIT-2's idle timer starts.
    let leaveFinWait1 (now: int64) (out: TcpActions) (c: Connection) =
        if c.State = TcpState.FinWait1 && finAcked c then
            let c = move out TcpTrigger.RcvAckOfFin TcpState.FinWait2 c

            { c with
                Timers.LingerAt = c.Config.FinWait2Timeout |> ValueOption.map (fun t -> now + t)
            }
        else
            c

    /// §3.10.7.4: SYN-RECEIVED and the synchronized states.
    let onSynchronized (now: int64) (out: TcpActions) (seg: Segment) (c: Connection) =
        if
            c.State = TcpState.SynReceived
            && seg.Has TcpFlags.Syn
            && not (seg.Has TcpFlags.Ack)
            && seg.Seq = c.Rcv.Irs
        then
            // The peer's SYN again: our SYN,ACK was lost. Answer it now instead of waiting for
            // our timer (the model's ignored RcvSyn: no state change).
            let mutable c = c
            emitIn now out (TcpFlags.Syn ||| TcpFlags.Ack) c.Snd.Iss 0L 0 (synOptions now c) &c
            c
        elif
            c.State = TcpState.TimeWait
            && seg.Has TcpFlags.Syn
            && not (seg.Has TcpFlags.Ack)
            && not (seg.Has TcpFlags.Rst)
        then
            // Before the timestamp and window checks: RFC 6191 decides, not PAWS or §3.10.7.4.
            onTimeWaitSyn now out seg c
        elif c.Ts.Enabled && not (seg.Has TcpFlags.Rst) && seg.Options.Timestamps.IsNone then
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
                && seg.Seq + seg.Length = c.Rcv.Nxt
            then
                // The peer repeats its FIN: our last ACK was lost. ACK again and restart 2·MSL.
                let c =
                    move out TcpTrigger.RcvFin TcpState.TimeWait c
                    |> fun c ->
                        { c with
                            Timers.LingerAt = ValueSome(now + 2L * c.Config.Msl)
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
            if seg.Seq = c.Rcv.Nxt then onReset out c
            elif c.State = TcpState.TimeWait then c
            else sendLimitedAck now out c
        elif seg.Has TcpFlags.Syn then
            // RFC 5961 §4.2: a SYN in a synchronized state gets a challenge ACK, never a reset.
            sendLimitedAck now out c
        elif not (seg.Has TcpFlags.Ack) then
            c
        else
            let mutable c = c
            updateTsRecentIn now &seg &c

            let struct (c, goOn) =
                if c.State <> TcpState.SynReceived then
                    processAck now out seg c
                elif SeqNum.lt c.Snd.Una seg.Ack && SeqNum.le seg.Ack c.Snd.Max then
                    let c =
                        move out TcpTrigger.RcvAckOfSyn TcpState.Established c
                        |> fun c ->
                            { c with
                                Snd.Wnd = int seg.Window <<< c.Snd.WndShift
                                Snd.MaxWnd = max c.Snd.MaxWnd (int seg.Window <<< c.Snd.WndShift)
                                Snd.Wl1 = seg.Seq
                                Snd.Wl2 = seg.Ack
                            }

                    out.Add(TcpAction.Event TcpEvent.Connected)
                    let struct (c, goOn) = processAck now out seg c
                    // A CLOSE during SYN-RECEIVED was queued until now (§3.10.4).
                    let c =
                        if goOn && c.Snd.FinQueued then
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
                    | TcpState.FinWait2, ValueSome t ->
                        { c with
                            Timers.LingerAt = ValueSome(now + t)
                        }
                    | _ -> c

                let struct (c, ackNow) = receiveData now out seg c
                finish now out ackNow (leaveFinWait1 now out c)
