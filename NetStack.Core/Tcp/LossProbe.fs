namespace NetStack.Core.Tcp

open NetStack.Core.Wire
open NetStack.Core.Tcp.ConnectionBasics
open NetStack.Core.Tcp.ReceiveWindow
open NetStack.Core.Tcp.Scoreboard
open NetStack.Core.Tcp.SegmentOutput
open NetStack.Core.Tcp.LossRecovery

/// The tail loss probe (RFC 8985 §7): scheduling the PTO, sending the probe, and ending the
/// probe episode.
module internal LossProbe =

    // ---- Tail loss probe (RFC 8985 §7) ----------------------------------------------------------

    /// WCDelAckT (RFC 8985 §7.2): the longest a peer may hold the ACK of a lone segment.
    [<Literal>]
    let WorstCaseDelayedAck = 200_000L

    /// Added to 2·SRTT with more than one segment in flight (Linux's TCP_TIMEOUT_MIN, 2 ms), so
    /// a probe on a sub-millisecond path does not race ACKs that are merely late.
    [<Literal>]
    let ProbeSlack = 2_000L

    /// RFC 8985 §7.2: a probe may be scheduled with data outstanding on a synchronized, SACK
    /// connection that is neither in recovery nor after a timeout, once SRTT is known, and no
    /// earlier probe is unresolved.
    let probeEligible (c: inref<Connection>) =
        c.SackEnabled
        && synAckedIn &c
        && c.Timers.Rtt.HasSample
        && not c.Recovery.InRecovery
        && c.Timers.Retries = 0
        && c.Recovery.ProbeEnd.IsNone
        && SeqNum.lt c.Snd.Una c.Snd.Max
        && (match c.State with
            | TcpState.Established
            | TcpState.CloseWait
            | TcpState.FinWait1
            | TcpState.Closing
            | TcpState.LastAck -> true
            | _ -> false)

    /// Arms PTO when eligible and not armed (2·SRTT, plus WCDelAckT with one segment in flight,
    /// else ProbeSlack), unless the retransmission timer would fire first; disarms it otherwise.
    let scheduleProbeIn (now: int64) (c: byref<Connection>) =
        if not (probeEligible &c) then
            if c.Timers.ProbeAt.IsSome then
                c.Timers.ProbeAt <- ValueNone
        elif c.Timers.ProbeAt.IsNone then
            let flight = c.Snd.Max - c.Snd.Una

            let pto =
                2L * c.Timers.Rtt.Srtt
                + (if flight <= c.Snd.Mss then
                       WorstCaseDelayedAck
                   else
                       ProbeSlack)

            match c.Timers.RetransmitAt with
            | ValueSome rto when now + pto >= rto -> ()
            | _ -> c.Timers.ProbeAt <- ValueSome(now + pto)

    /// PTO fired (RFC 8985 §7.3): one segment of new data if the windows allow one more, else
    /// the last segment sent again, so that the peer's ACK (with SACK) shows what the tail lost
    /// and fast recovery repairs it instead of a retransmission timeout. The RTO restarts.
    let onProbe (now: int64) (out: TcpActions) (c: Connection) =
        let c = { c with Timers.ProbeAt = ValueNone }

        if not (probeEligible &c) then
            c
        else
            let sentBefore = c.Snd.Max

            let withNewData =
                if SeqNum.lt c.Snd.Nxt c.Snd.Max then
                    c // resending after a timeout: no new data now
                else
                    let mutable grown = c
                    grown.Recovery.Cwnd <- c.Recovery.Cwnd + c.Snd.Mss

                    if sendSegmentIn now out &grown then
                        sendDataIn now out &grown

                    grown.Recovery.Cwnd <- c.Recovery.Cwnd
                    grown

            let struct (c, resent) =
                if SeqNum.gt withNewData.Snd.Max sentBefore then
                    struct (withNewData, false)
                else
                    // The last segment the peer does not hold: the end of the highest hole
                    // (there is always one at SND.UNA), never bytes it SACKed.
                    let top = min c.Snd.Written (sendPosOf c c.Snd.Max)

                    let struct (holeStart, holeEnd) =
                        let mutable hole = struct (c.Snd.Acked, top)
                        let mutable cursor = c.Snd.Acked

                        for struct (s, e) in c.Recovery.Scoreboard.Ranges do
                            if s > cursor then
                                hole <- struct (cursor, s)

                            cursor <- max cursor e

                        if top > cursor || (top = cursor && c.Recovery.Scoreboard.IsEmpty) then
                            struct (cursor, top)
                        else
                            hole

                    let length = int (min (int64 c.Snd.Mss) (holeEnd - holeStart))
                    struct (retransmitAt now out (holeEnd - int64 length) length c, true)

            out.Add(TcpAction.Event TcpEvent.LossProbe)

            { c with
                Recovery.ProbeEnd = ValueSome(min c.Snd.Written (sendPosOf c c.Snd.Max))
                Recovery.ProbeResent = resent
                Timers.RetransmitAt = ValueSome(now + c.Timers.Rtt.Rto)
            }

    /// The ACK that passes the probe ends its episode (RFC 8985 §7.4). Without DSACK the sender
    /// cannot tell whether a resent probe repaired a loss or duplicated data that had arrived,
    /// so, as Linux does, it assumes a loss and reduces the window once, as a fast recovery
    /// would have.
    let endProbeEpisode (c: Connection) =
        match c.Recovery.ProbeEnd with
        | ValueSome finish when c.Snd.Acked >= finish ->
            if c.Recovery.ProbeResent && not c.Recovery.InRecovery then
                let struct (ssthresh, cubic) =
                    Congestion.onLoss
                        c.Config.CongestionControl
                        (c.Snd.Max - c.Snd.Una)
                        c.Snd.Mss
                        c.Recovery.Cwnd
                        c.Recovery.Cubic

                { c with
                    Recovery.ProbeEnd = ValueNone
                    Recovery.Ssthresh = ssthresh
                    Recovery.Cwnd = max c.Snd.Mss ssthresh
                    Recovery.Cubic = cubic
                }
            else
                { c with Recovery.ProbeEnd = ValueNone }
        | _ -> c
