namespace NetStack.Core.Tcp

open NetStack.Core.Wire
open NetStack.Core.Tcp.ConnectionBasics
open NetStack.Core.Tcp.ReceiveWindow
open NetStack.Core.Tcp.Scoreboard
open NetStack.Core.Tcp.SegmentOutput
open NetStack.Core.Tcp.LossRecovery
open NetStack.Core.Tcp.LossProbe

/// What each timer does when it fires: retransmission (RFC 6298 §5, go-back-N), persist
/// (zero-window probes, RFC 9293 §3.8.6.1), keep-alive (§3.8.4, RFC 1122 §4.2.3.6), the user
/// timeout (§3.10.8, RFC 5482), and the keep-alive idle time a segment from the peer restarts.
module internal ConnectionTimers =

    /// Keep-alive (RFC 9293 §3.8.4) runs only in ESTABLISHED and CLOSE-WAIT, where the peer owes
    /// us nothing and may fall silent for good; TIME-WAIT and the closing states have timers.
    let keepsAlive (c: inref<Connection>) =
        c.Config.KeepAliveIdle.IsSome
        && (c.State = TcpState.Established || c.State = TcpState.CloseWait)

    /// Any segment from the peer shows it is alive: the idle time starts again and the count of
    /// unanswered probes goes back to zero. Also arms the timer on entering ESTABLISHED.
    let peerHeardFromIn (now: int64) (c: byref<Connection>) =
        match c.Config.KeepAliveIdle with
        | ValueSome idle when keepsAlive &c ->
            c.Timers.KeepAliveAt <- ValueSome(now + idle)
            c.Timers.KeepAliveProbes <- 0
        | _ when c.Timers.KeepAliveAt.IsSome -> c.Timers.KeepAliveAt <- ValueNone
        | _ -> ()

    // ---- Timers firing --------------------------------------------------------------------------

    let due (now: int64) (deadline: int64 voption) =
        match deadline with
        | ValueSome t -> t <= now
        | ValueNone -> false

    /// Go-back-N from SND.UNA: SND.NXT returns to SND.UNA, the RTT sample in progress is
    /// dropped, recovery ends and nothing sent before counts as a new loss episode ("recover" =
    /// SND.MAX, RFC 6582; RFC 6675 §5.1), and the loss marks and tail-loss probe are cleared.
    /// SACKed ranges are skipped as in any go-back-N. Shared by the retransmission timeout and
    /// the resend after a lower path MTU.
    let goBackN (c: Connection) =
        { c with
            Snd.Nxt = c.Snd.Una
            Timers.RttTimed = ValueNone
            Recovery.InRecovery = false
            Recovery.DupAcks = 0
            Recovery.RecoveryPoint = c.Snd.Max
            Recovery.HighRxt = c.Snd.Acked
            Recovery.RetransmitMarks = []
            Recovery.LostBelow = 0L
            Timers.ProbeAt = ValueNone
            Recovery.ProbeEnd = ValueNone
        }

    /// RFC 6298 §5.4–5.7: back off, retransmit from SND.UNA (go-back-N, with the congestion
    /// window down to one segment, RFC 5681 §3.1), or give up after too many tries.
    let onRetransmitTimeout (now: int64) (out: TcpActions) (c: Connection) =
        let c =
            { c with
                Timers.RetransmitAt = ValueNone
                Timers.Retries = c.Timers.Retries + 1
            }

        let limit =
            match c.State with
            | TcpState.SynSent
            | TcpState.SynReceived -> c.Config.MaxSynRetransmissions
            | _ -> c.Config.MaxRetransmissions

        if
            c.Snd.Una = c.Snd.Nxt
            && c.State <> TcpState.SynSent
            && c.State <> TcpState.SynReceived
        then
            // Nothing outstanding (a probe byte is the persist timer's business).
            { c with
                Timers.Retries = c.Timers.Retries - 1
            }
        elif c.Timers.Retries > limit then
            out.Add(TcpAction.Event TcpEvent.TimedOut)
            enterClosed out TcpTrigger.Timeout c
        else
            let flight = c.Snd.Max - c.Snd.Una

            // RFC 5681 §3.1 / RFC 9438 §4.8: ssthresh as for a loss, then one segment. A second
            // timeout of the same data (Retries > 1) does not lower ssthresh again.
            let struct (ssthresh, cubic) =
                if c.Timers.Retries > 1 then
                    struct (c.Recovery.Ssthresh, c.Recovery.Cubic)
                else
                    Congestion.onLoss c.Config.CongestionControl flight c.Snd.Mss c.Recovery.Cwnd c.Recovery.Cubic

            { goBackN c with
                Timers.Rtt = Rto.backoff c.Config.MaxRto c.Timers.Rtt
                Recovery.Ssthresh = ssthresh
                Recovery.Cubic = cubic
                Recovery.Cwnd = c.Snd.Mss
            }
            |> transmit now out

    /// RFC 9293 §3.8.6.1: the window stayed shut (or too small to be worth a segment, the
    /// override of §3.8.6.2.1): send what fits, or probe.
    let onPersist (now: int64) (out: TcpActions) (c: Connection) =
        let c = { c with Timers.PersistAt = ValueNone }
        let pending = finSeq c - c.Snd.Nxt

        if
            not (synAckedIn &c && sendsData c.State)
            || pending <= 0
            || c.Snd.Nxt <> c.Snd.Una
        then
            let mutable c = c
            updatePersistIn now &c
            c
        else
            let usable = max 0 (c.Snd.Una + c.Snd.Wnd - c.Snd.Nxt)

            if usable > 0 then
                let length = min usable (min pending c.Snd.Mss)
                let seq = c.Snd.Nxt

                let mutable c = c
                emitIn now out (TcpFlags.Ack ||| TcpFlags.Psh) seq (sendPosOf c seq) length TcpOptions.None &c

                let next = seq + length

                { c with
                    Snd.Nxt = next
                    Snd.Max = SeqNum.max c.Snd.Max next
                }
                |> armRetransmit now
            elif c.Timers.ProbesUnanswered >= c.Config.MaxRetransmissions then
                out.Add(TcpAction.Event TcpEvent.TimedOut)
                enterClosed out TcpTrigger.Timeout c
            else
                // The probe is an ACK numbered SND.UNA - 1, as Linux sends: already acknowledged,
                // so the peer must answer with an ACK carrying its current window, and no
                // sequence space is used. (RFC 9293 §3.8.6.1 suggests one byte of new data; a
                // byte past a closed window is dropped by the peer anyway.)
                let mutable c = c
                emitIn now out TcpFlags.Ack (c.Snd.Una - 1) 0L 0 TcpOptions.None &c

                let c =
                    { c with
                        Timers.ProbesUnanswered = c.Timers.ProbesUnanswered + 1
                    }

                { c with
                    Timers.PersistAt = ValueSome(now + persistInterval &c)
                }

    /// The keep-alive timer (RFC 9293 §3.8.4, RFC 1122 §4.2.3.6). A probe is an ACK numbered
    /// SND.NXT - 1 with no data: already acknowledged, so the peer answers with an ACK (and
    /// its answer resets the timer in `Connection.handleSegmentInto`). While data is in flight or waiting the
    /// retransmission and persist timers watch the peer, so the idle period just starts over.
    /// `KeepAliveCount` probes without an answer end the connection with TimedOut.
    let onKeepAlive (now: int64) (out: TcpActions) (c: Connection) =
        match c.Config.KeepAliveIdle with
        | ValueSome idle when keepsAlive &c ->
            if c.Snd.Max <> c.Snd.Una || SeqNum.lt c.Snd.Nxt (finSeq c) then
                { c with
                    Timers.KeepAliveAt = ValueSome(now + idle)
                }
            elif c.Timers.KeepAliveProbes >= c.Config.KeepAliveCount then
                out.Add(TcpAction.Event TcpEvent.TimedOut)
                enterClosed out TcpTrigger.Timeout c
            else
                let mutable c = c
                emitIn now out TcpFlags.Ack (c.Snd.Nxt - 1) 0L 0 TcpOptions.None &c

                { c with
                    Timers.KeepAliveProbes = c.Timers.KeepAliveProbes + 1
                    Timers.KeepAliveAt = ValueSome(now + c.Config.KeepAliveInterval)
                }
        | _ ->
            { c with
                Timers.KeepAliveAt = ValueNone
            }

    /// To CLOSED by `trigger`, with a RST first when the peer may hold state for us (RFC 9293
    /// §3.10.5: SYN-RECEIVED, ESTABLISHED, FIN-WAIT-1/2, CLOSE-WAIT): the user's ABORT, and the
    /// user timeout.
    let resetAndClose (trigger: TcpTrigger) (out: TcpActions) (c: Connection) =
        match c.State with
        | TcpState.Closed -> c
        | TcpState.SynReceived
        | TcpState.Established
        | TcpState.FinWait1
        | TcpState.FinWait2
        | TcpState.CloseWait -> rst out (acceptableSeq c.Snd.Nxt c) c |> enterClosed out trigger
        | _ -> enterClosed out trigger c

    /// The user timeout (RFC 9293 §3.10.8, RFC 5482), checked when a timer runs: data or our FIN
    /// waiting in a synchronized state with no progress for `UserTimeout` resets the connection
    /// (the peer may be alive, answering zero-window probes: the RST lets it go too).
    let checkUserTimeout (now: int64) (out: TcpActions) (c: Connection) =
        match c.Config.UserTimeout with
        | ValueNone -> c
        | ValueSome timeout ->
            // The synchronized states in which data or our FIN can wait for an ACK.
            if not (sendsData c.State && (c.Snd.Written > c.Snd.Acked || c.Snd.Max <> c.Snd.Una)) then
                { c with
                    Timers.StalledSince = System.Int64.MinValue
                }
            elif
                c.Timers.StalledSince = System.Int64.MinValue
                || c.Snd.Acked <> c.Timers.StalledAcked
            then
                { c with
                    Timers.StalledSince = now
                    Timers.StalledAcked = c.Snd.Acked
                }
            elif now - c.Timers.StalledSince < timeout then
                c
            else
                out.Add(TcpAction.Event TcpEvent.UserTimedOut)
                resetAndClose TcpTrigger.Timeout out c
