namespace NetStack.Core.Tcp

open NetStack.Core.Wire
open NetStack.Core.Tcp.ConnectionBasics
open NetStack.Core.Tcp.ReceiveWindow
open NetStack.Core.Tcp.Scoreboard
open NetStack.Core.Tcp.SegmentOutput

/// What an ACK of our data does (RFC 9293 §3.10.7.4, fifth step): new data acknowledged
/// (RTT samples RFC 6298 / RFC 7323 §4, the congestion window RFC 5681 / RFC 9438), the send
/// window update, SACK blocks into the scoreboard (RFC 2018, RFC 6675 §5), and loss recovery:
/// fast retransmit and fast recovery with SACK (RFC 6675) or NewReno without (RFC 6582), and
/// lost retransmissions.
module internal LossRecovery =

    // ---- Acknowledgments of our data (RFC 9293 §3.10.7.4 fifth step) ----------------------------

    /// SND.UNA advances to `ack` (SND.UNA < ack =< SND.MAX): free the send buffer, take an RTT
    /// sample, grow the congestion window, restart or stop the retransmission timer.
    let newlyAckedIn (now: int64) (out: TcpActions) (seg: inref<Segment>) (c: byref<Connection>) =
        let ack = seg.Ack

        let ackedPosition =
            min c.Snd.Written (c.Snd.Acked + int64 (ack - (c.Snd.Iss + 1 + int c.Snd.Acked)))

        let freed = ackedPosition - c.Snd.Acked

        if freed > 0L then
            out.Add(TcpAction.Event(TcpEvent.SendBufferFreed freed))

        let cfg = c.Config

        // RFC 7323 §4: with timestamps, every ACK of new data measures the round trip of the
        // segment whose TSval it echoes (retransmissions included: the echo tells which copy
        // arrived). An echo from the future or older than MaxRto is no measurement (a hostile
        // or confused peer), and the classic one-segment timing is the fallback.
        let tsRtt =
            match seg.Options.Timestamps with
            | ValueSome ts when c.Ts.Enabled ->
                let ms = int (uint32 (now / 1000L) + c.Ts.Offset - ts.EchoReply)

                if ms >= 0 && int64 ms * 1000L <= cfg.MaxRto then
                    ValueSome(int64 ms * 1000L)
                else
                    ValueNone
            | _ -> ValueNone

        let rtt, timed =
            match tsRtt, c.Timers.RttTimed with
            // The timestamp clock ticks in milliseconds: a 0 ms sample says only "under one
            // tick". The classic timing of a segment, in microseconds, says how much under, so
            // it is taken instead when this ACK covers the timed segment (a fast link would
            // otherwise show an SRTT of 0).
            | ValueSome 0L, ValueSome(struct (timedSeq, sentAt)) when SeqNum.ge ack timedSeq ->
                Rto.sample cfg.ClockGranularity cfg.MinRto cfg.MaxRto (now - sentAt) c.Timers.Rtt, ValueNone
            | ValueSome sample, _ ->
                // Appendix G: about FlightSize / (2·SMSS) samples arrive per round trip.
                let flight = c.Snd.Max - c.Snd.Una
                let expected = (flight + 2 * c.Snd.Mss - 1) / (2 * c.Snd.Mss)

                Rto.sampleWeighted cfg.ClockGranularity cfg.MinRto cfg.MaxRto expected sample c.Timers.Rtt, ValueNone
            | _, ValueSome(struct (timedSeq, sentAt)) when SeqNum.ge ack timedSeq ->
                Rto.sample cfg.ClockGranularity cfg.MinRto cfg.MaxRto (now - sentAt) c.Timers.Rtt, ValueNone
            | _ -> Rto.resetBackoff cfg.ClockGranularity cfg.MinRto cfg.MaxRto c.Timers.Rtt, c.Timers.RttTimed

        // The congestion control grows the window (`Congestion.onAck`); in fast recovery the
        // recovery rules set it instead (`lossRecovery`).
        let struct (cwnd, cubic) =
            if freed <= 0L || c.Recovery.InRecovery then
                struct (c.Recovery.Cwnd, c.Recovery.Cubic)
            else
                Congestion.onAck
                    cfg.CongestionControl
                    now
                    rtt.Srtt
                    c.Snd.Mss
                    freed
                    c.Recovery.Cwnd
                    c.Recovery.Ssthresh
                    c.Recovery.Cubic

        c.Snd.Una <- ack
        c.Snd.Nxt <- SeqNum.max c.Snd.Nxt ack
        c.Snd.Acked <- ackedPosition
        c.Timers.Rtt <- rtt
        c.Timers.RttTimed <- timed
        c.Timers.Retries <- 0
        c.Recovery.Cwnd <- min cwnd (1 <<< 30)
        c.Recovery.Cubic <- cubic

        if not c.Recovery.Scoreboard.IsEmpty then
            c.Recovery.Scoreboard <- RangeSet.trimBelow ackedPosition c.Recovery.Scoreboard

        c.Recovery.DupAcks <- 0
        // Something got through: a soft ICMP error seen before no longer explains a timeout
        // (as Linux's tcp_ack clears sk_err_soft).
        c.SoftError <- ValueNone
        // Progress: the probe timer starts again from now (`scheduleProbeIn`).
        c.Timers.ProbeAt <- ValueNone

        // RFC 6298 §5.2/§5.3: stop the timer when everything is acknowledged, otherwise restart
        // it, so a long flight on a high-RTT path is not retransmitted spuriously.
        c.Timers.RetransmitAt <-
            if SeqNum.lt c.Snd.Una c.Snd.Nxt then
                ValueSome(now + c.Timers.Rtt.Rto)
            else
                ValueNone

    /// The window update rule of RFC 9293 §3.10.7.4 (fifth step): only a segment newer than the
    /// one that last set SND.WND may change it, so reordered old segments cannot. A segment with
    /// the same SEG.SEQ and SEG.ACK as the last update is a duplicate as far as ordering can tell:
    /// it may open the window or close it to zero, never shrink it (as Linux's
    /// tcp_may_update_window). Otherwise an older window update that the network reordered behind
    /// a newer one would shrink the window again, and a retransmission cut to that stale window
    /// leaves the FIN behind.
    let updateSendWindowIn (seg: inref<Segment>) (c: byref<Connection>) =
        let window = int seg.Window <<< c.Snd.WndShift

        if
            SeqNum.ge seg.Ack c.Snd.Una
            && (SeqNum.lt c.Snd.Wl1 seg.Seq
                || (c.Snd.Wl1.Value = seg.Seq.Value
                    && (SeqNum.lt c.Snd.Wl2 seg.Ack
                        || (c.Snd.Wl2.Value = seg.Ack.Value && (window >= c.Snd.Wnd || window = 0)))))
        then
            // RFC 7323 §2.3: SND.WND = SEG.WND << Snd.Wind.Shift (SYNs never come here).
            c.Snd.Wnd <- window
            c.Snd.Wl1 <- seg.Seq
            c.Snd.Wl2 <- seg.Ack
            c.Snd.MaxWnd <- max c.Snd.MaxWnd window

    /// Takes the SACK blocks of an acceptable ACK into the scoreboard (RFC 6675 §5: before the
    /// cumulative ACK). Hostile input is expected: a block counts only when it is non-empty and
    /// lies within [max(SND.UNA, SEG.ACK), SND.MAX) (D-SACK blocks and old or forged ones do
    /// not), and the scoreboard stops growing at MaxScoreboardRanges. Returns whether any byte
    /// was newly SACKed.
    let takeSackBlocks (seg: Segment) (c: Connection) : struct (Connection * bool) =
        if not c.SackEnabled || seg.Options.SackBlockCount <= 0 then
            struct (c, false)
        else
            let floor = SeqNum.max c.Snd.Una seg.Ack
            let mutable board = c.Recovery.Scoreboard
            let before = RangeSet.count board

            for i in 0 .. min Tcp.MaxSackBlocks seg.Options.SackBlockCount - 1 do
                let block = seg.Options.GetSackBlock i
                let left = SeqNum block.Left
                let right = SeqNum block.Right

                if
                    SeqNum.lt left right
                    && SeqNum.ge left floor
                    && SeqNum.le right c.Snd.Max
                    && RangeSet.rangeCount board < MaxScoreboardRanges
                then
                    // The FIN has a sequence number but no stream position: never on the board.
                    let e = min c.Snd.Written (sendPosOf c right)
                    board <- RangeSet.add (sendPosOf c left) e board

            struct ({ c with Recovery.Scoreboard = board }, RangeSet.count board > before)

    /// Resends holes IsLost says are gone while the pipe leaves a segment's room (RFC 6675 §5
    /// step C); new data then follows in `transmit` under the same pipe rule.
    let rec sackRetransmit (now: int64) (out: TcpActions) (c: Connection) =
        if c.Recovery.Cwnd - pipe c < c.Snd.Mss then
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
    let rec resendLostRetransmissions (now: int64) (out: TcpActions) (c: Connection) =
        let threshold = int64 ((DupThresh - 1) * c.Snd.Mss)
        let sacked = RangeSet.count c.Recovery.Scoreboard

        // What of [start, end) is still missing: from the first byte that is neither
        // acknowledged nor SACKed up to the next SACKed range.
        let missing (struct (start: int64, finish: int64, _top: int64)) =
            let from =
                let a = max start c.Snd.Acked

                match RangeSet.endOfRangeAt a c.Recovery.Scoreboard with
                | ValueSome e -> e
                | ValueNone -> a

            let until =
                match RangeSet.nextStartAfter from c.Recovery.Scoreboard with
                | ValueSome s -> min s finish
                | ValueNone -> finish

            struct (from, until)

        let live =
            c.Recovery.RetransmitMarks
            |> List.filter (fun mark ->
                let struct (from, until) = missing mark
                from < until)

        let lost =
            live
            |> List.tryFindBack (fun (struct (_, _, top)) -> sacked - sackedBelow top c > threshold)

        let c =
            if live.Length <> c.Recovery.RetransmitMarks.Length then
                { c with
                    Recovery.RetransmitMarks = live
                }
            else
                c

        match lost with
        | Some mark when c.Recovery.Cwnd - pipe c >= c.Snd.Mss ->
            let struct (from, until) = missing mark
            let length = int (min (int64 c.Snd.Mss) (until - from))

            let c =
                { c with
                    Recovery.RetransmitMarks = c.Recovery.RetransmitMarks |> List.filter (fun m -> m <> mark)
                }

            retransmitAt now out from length c |> resendLostRetransmissions now out
        | _ -> c

    /// The first unacknowledged stretch: from SND.UNA to the first SACKed range, never past what
    /// was sent (SND.MAX), at most a segment.
    let firstHoleLength (c: Connection) =
        let sent = min c.Snd.Written (sendPosOf c c.Snd.Max)

        let limit =
            match RangeSet.nextStartAfter c.Snd.Acked c.Recovery.Scoreboard with
            | ValueSome s -> min s sent
            | ValueNone -> sent

        int (min (int64 c.Snd.Mss) (limit - c.Snd.Acked))

    /// Fast retransmit and fast recovery after an acceptable ACK: SACK-based loss recovery
    /// (RFC 6675) when SACK is on, NewReno (RFC 6582) otherwise. `una` is SND.UNA before the
    /// ACK; `advanced` says it moved; `sackedNew` that the ACK SACKed new data.
    let lossRecovery
        (now: int64)
        (out: TcpActions)
        (seg: Segment)
        (una: SeqNum)
        (advanced: bool)
        (sackedNew: bool)
        (windowChanged: bool)
        (c: Connection)
        =
        let mss = c.Snd.Mss

        if c.Recovery.InRecovery then
            if SeqNum.ge c.Snd.Una c.Recovery.RecoveryPoint then
                // Everything outstanding at the loss is acknowledged: recovery ends with cwnd at
                // ssthresh (RFC 6675 §5; RFC 6582 §3.2 step 3, the "min" option against bursts).
                let cwnd =
                    if c.SackEnabled then
                        c.Recovery.Ssthresh
                    else
                        min c.Recovery.Ssthresh (max (c.Snd.Max - c.Snd.Una) mss + mss)

                { c with
                    Recovery.InRecovery = false
                    Recovery.DupAcks = 0
                    Recovery.Cwnd = max mss cwnd
                    Recovery.RetransmitMarks = []
                    Recovery.LostBelow = 0L
                }
            elif c.SackEnabled then
                c |> resendLostRetransmissions now out |> sackRetransmit now out
            elif advanced then
                // RFC 6582 §3.2 step 5, a partial ACK: the next hole is at SND.UNA; resend it at
                // once and deflate the window by what was acknowledged (plus one MSS back).
                let acked = c.Snd.Una - una

                let c =
                    { c with
                        Recovery.Cwnd = max mss (c.Recovery.Cwnd - acked + (if acked >= mss then mss else 0))
                    }

                if SeqNum.lt c.Snd.Una c.Snd.Max then
                    retransmitAt now out c.Snd.Acked (firstHoleLength c) c
                else
                    c
            elif seg.Ack = una && SeqNum.lt c.Snd.Una c.Snd.Max then
                // Step 4: each further duplicate inflates the window by a segment.
                { c with
                    Recovery.Cwnd = c.Recovery.Cwnd + mss
                }
            else
                c
        else
            let duplicate =
                not advanced
                && seg.Ack = una
                && SeqNum.lt c.Snd.Una c.Snd.Max
                && (sackedNew
                    || (seg.PayloadLength = 0 && not windowChanged && not (seg.Has TcpFlags.Fin)))

            let c =
                if duplicate then
                    { c with
                        Recovery.DupAcks = c.Recovery.DupAcks + 1
                    }
                else
                    c

            // The peer SACKed a tail loss probe while bytes sent two round trips before it are
            // still missing: those are lost (RFC 8985 §6.2's time rule; DupThresh SACKed
            // segments may never come after a lost tail).
            let probeShowsLoss =
                match c.Recovery.ProbeEnd with
                | ValueSome finish when c.SackEnabled && finish > c.Snd.Acked ->
                    (RangeSet.endOfRangeAt (finish - 1L) c.Recovery.Scoreboard).IsSome
                | _ -> false

            // IsLost(SND.UNA) (RFC 6675 §4): enough SACKed above the first hole.
            let lostAtUna =
                c.SackEnabled
                && (RangeSet.rangeCount c.Recovery.Scoreboard >= DupThresh
                    || RangeSet.count c.Recovery.Scoreboard > int64 ((DupThresh - 1) * mss)
                    || probeShowsLoss)

            // RFC 6582 §3.2 step 2 / RFC 6675 §5.1: no new recovery for data sent before the last
            // one (or before a timeout) began.
            let fresh =
                if c.SackEnabled then
                    SeqNum.ge c.Snd.Una c.Recovery.RecoveryPoint
                else
                    SeqNum.gt c.Snd.Una c.Recovery.RecoveryPoint

            if
                fresh
                && SeqNum.lt c.Snd.Una c.Snd.Max
                && (c.Recovery.DupAcks >= DupThresh || (lostAtUna && (duplicate || sackedNew)))
            then
                // Enter recovery (RFC 6675 §5 steps 4.1-4.3; RFC 6582 §3.2 step 2): ssthresh is
                // half the flight, the segment at SND.UNA goes out at once, whatever the window.
                let flight = c.Snd.Max - c.Snd.Una

                let struct (ssthresh, cubic) =
                    Congestion.onLoss c.Config.CongestionControl flight mss c.Recovery.Cwnd c.Recovery.Cubic

                out.Add(TcpAction.Event TcpEvent.FastRetransmit)

                let c =
                    { c with
                        Recovery.InRecovery = true
                        Recovery.Cubic = cubic
                        Recovery.RecoveryPoint = c.Snd.Max
                        Recovery.HighRxt = c.Snd.Acked
                        Recovery.RetransmitMarks = []
                        Recovery.LostBelow =
                            match c.Recovery.ProbeEnd with
                            | ValueSome finish when probeShowsLoss -> finish
                            | _ -> 0L
                        Timers.ProbeAt = ValueNone
                        Recovery.ProbeEnd = ValueNone
                        Recovery.Ssthresh = ssthresh
                        Recovery.Cwnd =
                            if c.SackEnabled then
                                ssthresh
                            else
                                ssthresh + DupThresh * mss
                    }

                let c = retransmitAt now out c.Snd.Acked (firstHoleLength c) c
                if c.SackEnabled then sackRetransmit now out c else c
            else
                c
