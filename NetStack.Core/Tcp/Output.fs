namespace NetStack.Core.Tcp

open NetStack.Core.Wire
open NetStack.Core.Tcp.ConnectionBasics
open NetStack.Core.Tcp.ReceiveWindow
open NetStack.Core.Tcp.Scoreboard

/// Everything that puts a segment in the actions: options (timestamps RFC 7323 §3, SACK blocks
/// RFC 2018 §4, the SYN's options), `emitIn` (the one place a segment is built), ACKs and rate
/// limited ACKs (RFC 5961 §7), sending data under the windows (Nagle RFC 9293 §3.7.4, sender
/// SWS avoidance §3.8.6.2.1, limited transmit RFC 3042), retransmission during recovery, the
/// persist timer's rule (§3.8.6.1), SYN and SYN,ACK (§3.10.7), and RST.
module internal SegmentOutput =

    /// The options every non-SYN segment carries: timestamps once negotiated (RFC 7323 §3.2:
    /// "on all others"), TSecr = TS.Recent.
    let withTimestamps (now: int64) (options: TcpOptions) (c: inref<Connection>) =
        if c.Ts.Enabled then
            { options with
                Timestamps =
                    ValueSome
                        {
                            Value = uint32 (now / 1000L) + c.Ts.Offset
                            EchoReply = c.Ts.Recent
                        }
            }
        else
            options

    /// SACK blocks (RFC 2018 §4) from the out-of-order ranges, at most `room` of them: first
    /// the range holding the most recently received segment, then those of the other recent
    /// arrivals (the blocks most recently reported), then the rest from the highest down.
    let sackBlocksFrom (room: int) (options: TcpOptions) (c: Connection) =
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

        for p in c.Rcv.SackRecent do
            for struct (s, e) in c.Rcv.OutOfOrder.Ranges do
                if s <= p && p < e then
                    add (struct (s, e))

        for range in List.rev c.Rcv.OutOfOrder.Ranges do
            add range

        { options with SackBlockCount = count }

    /// `sackBlocksFrom`, skipped in order (the usual case): there is nothing to report then, and
    /// its search keeps its counters in heap cells for the closure that updates them.
    let withSackBlocks (room: int) (options: TcpOptions) (c: Connection) =
        if c.Rcv.OutOfOrder.IsEmpty then
            { options with SackBlockCount = 0 }
        else
            sackBlocksFrom room options c

    // ---- Sending (RFC 9293 §3.10.7, §3.8.6.2.1; RFC 5681) ---------------------------------------

    /// Queues one segment. Every segment with ACK carries the current RCV.NXT and window, so it
    /// settles any ACK we owed. Updates `c` in place; every segment the engine sends goes through
    /// here.
    let emitIn
        (now: int64)
        (out: TcpActions)
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
            if syn && c.Rcv.Right - c.Rcv.Nxt > 65535 then
                c.Rcv.Right <- c.Rcv.Nxt + 65535

        // Other segments send the window shifted right by Rcv.Wind.Shift (RFC 7323 §2.3). The
        // truncation can make the edge the peer computes retract by less than 2^shift when
        // RCV.NXT moves by a non-multiple; §2.4 accepts that, and we keep taking data up to
        // RcvRight, the edge we meant, which never moves left and never passes the buffer.
        let window =
            if withAck && not syn then
                min 65535 (max 0 (c.Rcv.Right - c.Rcv.Nxt) >>> c.Rcv.WndShift)
            elif withAck then
                max 0 (c.Rcv.Right - c.Rcv.Nxt)
            elif syn then
                min 65535 c.Tuning.RcvBuf
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
            if withAck && not syn && c.SackEnabled && not c.Rcv.OutOfOrder.IsEmpty then
                let most = if c.Ts.Enabled then 3 else 4

                let room =
                    if length = 0 then
                        most
                    else
                        min most ((c.Snd.Mss - length - 4) / 8)

                if room > 0 then withSackBlocks room options c else options
            else
                options

        out.Add(
            TcpAction.Transmit
                {
                    Seq = seq
                    Ack = (if withAck then c.Rcv.Nxt else SeqNum 0u)
                    Flags = flags
                    Window = uint16 window
                    Options = options
                    DataPosition = position
                    DataLength = length
                }
        )

        if withAck then
            c.Rcv.AckPending <- false
            c.Rcv.UnackedBytes <- 0
            c.Timers.DelayedAckAt <- ValueNone
            c.Ts.LastAckSent <- c.Rcv.Nxt

    /// The sequence number of a segment without data (an ACK, a RST) that would be `seq`: `seq`
    /// itself, or the right edge of the peer's window (SND.UNA + SND.WND) when `seq` lies beyond
    /// it. A peer may take back window it offered (Linux rounds its window down to its scale and
    /// announces zero when its buffer fills): data we sent into that window then lies past its
    /// edge, and a segment numbered there fails its acceptability test (RFC 9293 §3.10.7.4; with
    /// a zero window only SEG.SEQ = RCV.NXT passes) and is dropped with its ACK and SACK blocks
    /// unread. Two ends can then wait on each other for good: the peer resends what we have
    /// acknowledged, our ACKs never count. Linux's tcp_acceptable_seq, with its allowance: past
    /// the edge by less than one unit of our window scale, `seq` stands, since that much is the
    /// rounding of a scaled window (the peer's edge is its window field times its scale, rounded
    /// down) and the peer may already hold data up to `seq`; an ACK numbered below its RCV.NXT
    /// would fail its test as surely (two of our stacks across a bridge stalled so, 459 ACKs
    /// answered as invalid). Before our SYN is acknowledged the window is not yet the peer's,
    /// and `seq` stands.
    let acceptableSeq (seq: SeqNum) (c: Connection) =
        let edge = c.Snd.Una + c.Snd.Wnd

        if
            SeqNum.le c.Snd.Una c.Snd.Iss
            || SeqNum.le seq edge
            || (c.WindowScaled && seq - edge < (1 <<< c.Rcv.WndShift))
        then
            seq
        else
            edge

    /// A bare ACK: <SEQ=SND.MAX><ACK=RCV.NXT><CTL=ACK>. RFC 9293 writes SND.NXT; after a
    /// timeout pulled SND.NXT back, the peer may already hold data past it, and an ACK numbered
    /// below its RCV.NXT would fail its acceptability test and be dropped (two such peers then
    /// trade unacceptable ACKs forever); Linux numbers it the same way (snd_nxt is never pulled
    /// back there). When the peer took back window, SND.MAX lies past it: then the window's
    /// right edge (`acceptableSeq`).
    let sendAck (now: int64) (out: TcpActions) (c: Connection) =
        let mutable c = c
        emitIn now out TcpFlags.Ack (acceptableSeq c.Snd.Max c) 0L 0 TcpOptions.None &c
        c

    /// The ACK owed to an invalid segment, unless one went out less than
    /// `OutOfWindowAckInterval` ago (RFC 5961 §7; Linux's __tcp_oow_rate_limited).
    let sendLimitedAck (now: int64) (out: TcpActions) (c: Connection) =
        let interval = c.Config.OutOfWindowAckInterval

        if
            interval > 0L
            && c.Timers.LastInvalidAckAt <> System.Int64.MinValue
            && now - c.Timers.LastInvalidAckAt < interval
        then
            out.Add(TcpAction.Event TcpEvent.AckRateLimited)
            c
        else
            sendAck now out { c with Timers.LastInvalidAckAt = now }

    /// The ACK of an unacceptable segment (RFC 9293 §3.10.7.4 first check) or of a PAWS reject:
    /// always for one with data (its sender needs the answer to recover), rate limited for one
    /// without data or with a SYN (what two confused ends would trade forever; Linux's
    /// tcp_oow_rate_limited).
    let answerInvalid (now: int64) (out: TcpActions) (seg: Segment) (c: Connection) =
        if seg.Length > 0 && not (seg.Has TcpFlags.Syn) then
            sendAck now out c
        else
            sendLimitedAck now out c

    /// The options of our SYN or SYN,ACK: MSS always; window scale and timestamps as configured
    /// in a SYN, and in a SYN,ACK only when the peer's SYN offered them too (RFC 7323 §2.2,
    /// §3.2: never offered in a SYN,ACK to a SYN without them).
    let synOptions (now: int64) (c: Connection) =
        let active = c.State = TcpState.SynSent
        let offerWs = c.Config.WindowScaling && (active || c.WindowScaled)
        let offerTs = c.Config.Timestamps && (active || c.Ts.Enabled)
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
                            EchoReply = (if active then 0u else c.Ts.Recent)
                        }
                else
                    ValueNone
        }

    /// The largest segment to send: SendMss, but no more than half the largest window the peer
    /// offered (once that is above 536 bytes, the RFC 9293 §3.7.1 default MSS). A peer whose
    /// window holds one segment only (a 64 KiB unscaled window at MTU 65000) ACKs it after its
    /// delayed-ACK timer (RFC 9293 §3.8.6.3 ACKs every second full segment), which paced bulk
    /// sends to ~0.01 Gbit/s; two segments per window keep its ACKs immediate (Linux does the
    /// same in tcp_bound_to_half_wnd).
    let segmentCap (c: inref<Connection>) =
        if c.Snd.MaxWnd > 2 * 536 then
            min c.Snd.Mss (max 536 (c.Snd.MaxWnd / 2))
        else
            c.Snd.Mss

    /// One segment from SND.NXT (see `sendDataIn`), on `c` in place. Returns whether sending
    /// may go on (a segment went out and it did not carry our FIN).
    let sendSegmentIn (now: int64) (out: TcpActions) (c: byref<Connection>) =
        let fin = c.Snd.Iss + 1 + int c.Snd.Written
        let retransmitting = SeqNum.lt c.Snd.Nxt c.Snd.Max
        let position = c.Snd.Acked + int64 (c.Snd.Nxt - (c.Snd.Iss + 1 + int c.Snd.Acked))
        let pending = max 0 (fin - c.Snd.Nxt)

        let cwndRoom =
            if c.Recovery.InRecovery && c.SackEnabled then
                c.Recovery.Cwnd - pipe c
            else
                let sacked =
                    if c.Recovery.Scoreboard.IsEmpty then
                        0
                    else
                        int (sackedBelow position c)

                let inFlight = (c.Snd.Nxt - c.Snd.Una) - sacked

                let limited =
                    if not c.Recovery.InRecovery && c.Recovery.DupAcks > 0 && not retransmitting then
                        min 2 c.Recovery.DupAcks * c.Snd.Mss
                    else
                        0

                c.Recovery.Cwnd + limited - inFlight

        let usable = max 0 (min (c.Snd.Una + c.Snd.Wnd - c.Snd.Nxt) cwndRoom)

        // A resent stretch stops where the next SACKed range begins.
        let beforeSacked =
            if retransmitting then
                match RangeSet.nextStartAfter position c.Recovery.Scoreboard with
                | ValueSome s -> int (min (int64 pending) (s - position))
                | ValueNone -> pending
            else
                pending

        let cap = segmentCap &c

        let length = min cap (min beforeSacked usable)
        // The FIN needs no window: it takes no buffer space at the receiver.
        let withFin = c.Snd.FinQueued && SeqNum.le c.Snd.Nxt fin && c.Snd.Nxt + length = fin

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
            && SeqNum.gt c.Snd.Sml c.Snd.Una
            && SeqNum.le c.Snd.Sml c.Snd.Nxt

        let worthSending =
            if length > 0 then
                length = cap
                || ((length = pending || length = beforeSacked) && not nagleHolds)
                || length >= c.Snd.MaxWnd / 2
            else
                withFin

        if not worthSending then
            false
        else
            let seq = c.Snd.Nxt

            let flags =
                TcpFlags.Ack
                ||| (if length > 0 && length = pending then
                         TcpFlags.Psh
                     else
                         TcpFlags.None)
                ||| (if withFin then TcpFlags.Fin else TcpFlags.None)

            emitIn now out flags seq position length TcpOptions.None &c
            let next = seq + (length + if withFin then 1 else 0)
            let firstTime = SeqNum.ge seq c.Snd.Max
            c.Snd.Nxt <- next
            c.Snd.Max <- SeqNum.max c.Snd.Max next

            if length > 0 && length < cap then
                c.Snd.Sml <- seq + length

            // Time one segment per round trip, never a retransmission (Karn's rule).
            if firstTime && c.Timers.RttTimed.IsNone then
                c.Timers.RttTimed <- ValueSome(struct (next, now))

            // `armRetransmit`.
            if c.Timers.RetransmitAt.IsNone then
                c.Timers.RetransmitAt <- ValueSome(now + c.Timers.Rtt.Rto)

            not withFin

    /// Sends what the windows allow from SND.NXT: full segments; a short one only when it
    /// empties the queue or fills at least half the largest window the peer offered (sender
    /// SWS avoidance, RFC 9293 §3.8.6.2.1) and Nagle allows it; our FIN after the last byte.
    ///
    /// The congestion window limits what is in flight: outside SACK recovery that is
    /// [SND.UNA, SND.NXT) less what the scoreboard holds, plus up to two segments of limited
    /// transmit (RFC 3042) on the first duplicate ACKs; in SACK recovery it is the pipe. When
    /// SND.NXT was pulled back by a timeout, SACKed ranges are skipped, never resent.
    let sendDataIn (now: int64) (out: TcpActions) (c: byref<Connection>) =
        let mutable going = true

        while going do
            let fin = c.Snd.Iss + 1 + int c.Snd.Written
            let retransmitting = SeqNum.lt c.Snd.Nxt c.Snd.Max

            let skip =
                if retransmitting && c.Snd.Nxt <> fin then
                    RangeSet.endOfRangeAt
                        (c.Snd.Acked + int64 (c.Snd.Nxt - (c.Snd.Iss + 1 + int c.Snd.Acked)))
                        c.Recovery.Scoreboard
                else
                    ValueNone

            match skip with
            | ValueSome skipTo ->
                // The peer holds these bytes already (RFC 6675 §5.1: only unSACKed data again).
                c.Snd.Nxt <- c.Snd.Iss + 1 + int skipTo
            | ValueNone -> going <- sendSegmentIn now out &c

    /// Resends [position, position + length) (with the FIN when it ends there and the FIN was
    /// sent) during fast recovery: SND.NXT stays where it is; HighRxt moves up.
    let retransmitAt (now: int64) (out: TcpActions) (position: int64) (length: int) (c: Connection) =
        let seq = sendSeqOf c position
        let fin = finSeq c
        let withFin = c.Snd.FinQueued && SeqNum.gt c.Snd.Max fin && seq + length = fin

        let flags = TcpFlags.Ack ||| (if withFin then TcpFlags.Fin else TcpFlags.None)

        let mutable c = c
        emitIn now out flags seq position length TcpOptions.None &c

        let marks =
            if c.Recovery.InRecovery && c.SackEnabled && length > 0 then
                struct (position, position + int64 length, sendPosOf c c.Snd.Max)
                :: List.truncate (MaxRetransmitMarks - 1) c.Recovery.RetransmitMarks
            else
                c.Recovery.RetransmitMarks

        { c with
            Recovery.RetransmitMarks = marks
            Recovery.HighRxt = max c.Recovery.HighRxt (position + int64 length)
            // Karn's rule: a resent segment gives no classic sample (timestamps still do).
            Timers.RttTimed = ValueNone
        }
        |> armRetransmit now

    /// Runs the persist timer (RFC 9293 §3.8.6.1) exactly when data waits, nothing is in flight,
    /// and so no ACK will come to reopen the window unless we probe.
    let updatePersistIn (now: int64) (c: byref<Connection>) =
        let waiting =
            synAckedIn &c
            && sendsData c.State
            && SeqNum.lt c.Snd.Nxt (c.Snd.Iss + 1 + int c.Snd.Written)
            && c.Snd.Nxt = c.Snd.Una

        if not waiting then
            c.Timers.PersistAt <- ValueNone
        elif c.Timers.PersistAt.IsNone then
            c.Timers.PersistAt <- ValueSome(now + persistInterval &c)

    /// Sends whatever is due: the SYN (or SYN,ACK) when SND.NXT is at ISS, else data and FIN.
    let transmit (now: int64) (out: TcpActions) (c: Connection) =
        match c.State with
        | TcpState.SynSent
        | TcpState.SynReceived when c.Snd.Nxt = c.Snd.Iss ->
            let flags =
                if c.State = TcpState.SynSent then
                    TcpFlags.Syn
                else
                    TcpFlags.Syn ||| TcpFlags.Ack

            let firstTime = c.Snd.Max = c.Snd.Iss
            let mutable c = c
            emitIn now out flags c.Snd.Iss 0L 0 (synOptions now c) &c

            let c =
                { c with
                    Snd.Nxt = c.Snd.Iss + 1
                    Snd.Max = SeqNum.max c.Snd.Max (c.Snd.Iss + 1)
                    Timers.RttTimed =
                        if firstTime then
                            ValueSome(struct (c.Snd.Iss + 1, now))
                        else
                            c.Timers.RttTimed
                }

            armRetransmit now c
        // A CLOSE in SYN-RECEIVED sent our FIN before our SYN was acknowledged (§3.10.4); when a
        // timeout pulled SND.NXT back to ISS, the SYN,ACK goes again, then the FIN.
        | TcpState.FinWait1
        | TcpState.Closing when c.Snd.Nxt = c.Snd.Iss ->
            let mutable c = c
            emitIn now out (TcpFlags.Syn ||| TcpFlags.Ack) c.Snd.Iss 0L 0 (synOptions now c) &c
            c.Snd.Nxt <- c.Snd.Iss + 1
            sendDataIn now out &c
            c
        | state when sendsData state && synAckedIn &c ->
            let mutable c = c
            sendDataIn now out &c
            updatePersistIn now &c
            c
        | _ -> c

    let rst (out: TcpActions) (seq: SeqNum) (c: Connection) =
        let mutable c = c
        emitIn 0L out TcpFlags.Rst seq 0L 0 TcpOptions.None &c
        c
