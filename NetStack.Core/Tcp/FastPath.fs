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

/// Header prediction: the per-segment fast path of ESTABLISHED.
module internal FastPath =

    // ---- Header prediction: the per-segment fast path -------------------------------------------

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
    let predictedIn (seg: inref<Segment>) (c: inref<Connection>) =
        c.State = TcpState.Established
        && seg.Flags &&& ~~~TcpFlags.Psh = TcpFlags.Ack
        && seg.Seq.Value = c.Rcv.Nxt.Value
        && seg.Options.SackBlockCount = 0
        && (not c.Ts.Enabled
            || (match seg.Options.Timestamps with
                | ValueSome ts -> not (tsAfter c.Ts.Recent ts.Value)
                | ValueNone -> false))
        && not c.Recovery.InRecovery
        && c.Recovery.DupAcks = 0
        && c.Recovery.Scoreboard.IsEmpty
        && c.Recovery.ProbeEnd.IsNone
        && c.Snd.Nxt.Value = c.Snd.Max.Value
        && not c.Snd.FinQueued
        && c.Rcv.PeerFinAt.IsNone
        && c.Rcv.OutOfOrder.IsEmpty
        && SeqNum.le c.Snd.Una seg.Ack
        && SeqNum.le seg.Ack c.Snd.Max
        && not (SeqNum.lt seg.Ack (c.Snd.Una - c.Snd.MaxWnd))
        && (if seg.PayloadLength = 0 then
                seg.Ack.Value <> c.Snd.Una.Value
            else
                // The data's end within both the offered right edge and the buffer's end.
                let bufferEnd = c.Rcv.Irs + 1 + int (c.Rcv.Consumed + int64 c.Tuning.RcvBuf)
                let limit = SeqNum.min c.Rcv.Right bufferEnd
                c.Rcv.Right - c.Rcv.Nxt > 0 && seg.PayloadLength <= limit - c.Rcv.Nxt)

    /// The fast path for a segment `predictedIn` accepted: the steps of `onSynchronized`,
    /// `processAck`, `receiveData`, `finish`, `peerHeardFromIn` and `scheduleProbeIn` that can do
    /// anything for it, in the same order, on `c` in place. Loss recovery, the probe episode,
    /// reneging, FIN handling and out-of-order bookkeeping are skipped because the prediction
    /// guarantees they change nothing.
    let fastPathIn (now: int64) (out: TcpActions) (seg: inref<Segment>) (c: byref<Connection>) =
        updateTsRecentIn now &seg &c

        // Fifth step (processAck): new data acknowledged, then the send window.
        if SeqNum.gt seg.Ack c.Snd.Una then
            newlyAckedIn now out &seg &c

        updateSendWindowIn &seg &c
        c.Timers.ProbesUnanswered <- 0

        // Seventh step (receiveData): the whole payload is the next in-order data.
        let length = seg.PayloadLength
        let mutable ackNow = false

        if length > 0 then
            if length > c.Rcv.Mss then
                c.Rcv.Mss <- min length c.Config.Mss

            measureReceiverRttIn now &seg &c
            let position = c.Rcv.Delivered
            out.Add(TcpAction.StoreReceived(0, position, length))
            let delivered = position + int64 length
            out.Add(TcpAction.Deliver delivered)
            let unacked = c.Rcv.UnackedBytes + length
            // RFC 5681 §4.2 / RFC 9293 §3.8.6.3: at least every second full-sized segment.
            ackNow <- unacked >= 2 * c.Rcv.Mss
            c.Rcv.Delivered <- delivered
            c.Rcv.Nxt <- c.Rcv.Irs + 1 + int delivered
            c.Rcv.UnackedBytes <- unacked
            c.Rcv.AckPending <- true

        // finish: send what the window now allows (nothing to do when nothing is queued), the
        // persist timer, then the ACK now or the delayed-ACK timer.
        if SeqNum.lt c.Snd.Nxt (c.Snd.Iss + 1 + int c.Snd.Written) then
            sendDataIn now out &c

        updatePersistIn now &c

        if c.Rcv.AckPending then
            if ackNow || c.Config.DelayedAckTimeout = 0L then
                emitIn now out TcpFlags.Ack (acceptableSeq c.Snd.Max c) 0L 0 TcpOptions.None &c
            elif c.Timers.DelayedAckAt.IsNone then
                c.Timers.DelayedAckAt <- ValueSome(now + c.Config.DelayedAckTimeout)

        peerHeardFromIn now &c
        scheduleProbeIn now &c
