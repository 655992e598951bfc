namespace NetStack.Core.Tcp

open NetStack.Core.Wire

/// The engine's vocabulary (RFC 9293 §3.3): sequence numbers and stream positions, which
/// states send and receive data, timestamps arithmetic (RFC 7323), arming the retransmission
/// and persist timers, and state changes (each reported as a `TcpAction.Transition`, an edge
/// of `StateModel`).
///
/// Conventions of the engine's internal modules (this one and the files after it up to
/// `Connection.fs`): a function named `xxxIn` updates the connection in place through a
/// `byref<Connection>` (the per-segment path: no copy of the ~450-byte block) and has no
/// by-value twin; a caller holding a value writes `let mutable c = c` and passes `&c`. The
/// other functions take a `Connection` and return the next one, as the public entry points do.
/// `out` is the caller's `TcpActions` sink, appended to in order.
module internal ConnectionBasics =

    // ---- Sequence numbers and stream positions --------------------------------------------------

    /// Send-stream byte `p` has sequence number ISS + 1 + p (the SYN takes ISS).
    let sendSeqOf (c: Connection) (position: int64) = c.Snd.Iss + 1 + int position

    /// Receive-stream byte `p` has sequence number IRS + 1 + p.
    let recvSeqOf (c: Connection) (position: int64) = c.Rcv.Irs + 1 + int position

    /// The sequence number of our FIN (once queued): just past the last byte written.
    let finSeq (c: Connection) = sendSeqOf c c.Snd.Written

    /// The send-stream position of sequence number `s` (at or after SND.UNA).
    let sendPosOf (c: Connection) (s: SeqNum) =
        c.Snd.Acked + int64 (s - sendSeqOf c c.Snd.Acked)

    /// Our SYN has been acknowledged. Only SYN-SENT and SYN-RECEIVED wait for that, and there
    /// SND.UNA is still within a few bytes of ISS; afterwards the comparison with ISS would be
    /// meaningless (sequence numbers compare modulo 2^32, so after 2 GiB sent SND.UNA looks
    /// "before" ISS, which once stopped every send past the 2 GiB mark).
    let synAckedIn (c: inref<Connection>) =
        match c.State with
        | TcpState.Closed
        | TcpState.Listen
        | TcpState.SynSent
        | TcpState.SynReceived -> SeqNum.gt c.Snd.Una c.Snd.Iss
        | _ -> true

    /// True when our FIN has been sent and acknowledged.
    let finAcked (c: Connection) =
        c.Snd.FinQueued && SeqNum.gt c.Snd.Una (finSeq c)

    /// States in which queued data (and then our FIN) may go out.
    let sendsData (state: TcpState) =
        match state with
        | TcpState.Established
        | TcpState.CloseWait
        | TcpState.FinWait1
        | TcpState.Closing
        | TcpState.LastAck -> true
        | _ -> false

    /// States in which the peer's data is taken (RFC 9293 §3.10.7.4, seventh step).
    let receivesData (state: TcpState) =
        match state with
        | TcpState.Established
        | TcpState.FinWait1
        | TcpState.FinWait2 -> true
        | _ -> false

    /// RFC 6928 initial window: min(10·MSS, max(2·MSS, 14600)).
    let initialWindow (mss: int) = Congestion.initialWindow mss

    /// Bytes the timestamps option takes in every segment (10, NOP-padded to 12): the data of a
    /// segment shrinks by as much so header + options + data still fit the MSS (RFC 6691).
    [<Literal>]
    let TimestampsLength = 12

    /// PAWS forgets TS.Recent after 24 days idle (RFC 7323 §5.5), in µs.
    let PawsIdleLimit = 24L * 86_400_000_000L

    /// Our TSval: a 1 ms clock (RFC 7323 §5.4 asks for 1 ms to 1 s per tick) plus the
    /// connection's offset.
    let tsNow (now: int64) (c: Connection) = uint32 (now / 1000L) + c.Ts.Offset

    /// The first argument is newer than the second in the 32-bit timestamp space (§5.2).
    let tsAfter (a: uint32) (b: uint32) = int (a - b) > 0

    /// RFC 6298 §5.1: start the timer when data goes out and it is not running.
    let armRetransmit (now: int64) (c: Connection) =
        if c.Timers.RetransmitAt.IsNone then
            { c with
                Timers.RetransmitAt = ValueSome(now + c.Timers.Rtt.Rto)
            }
        else
            c

    /// Zero-window probes back off like retransmissions, up to `MaxPersistInterval`.
    let persistInterval (c: inref<Connection>) =
        let shift = min c.Timers.ProbesUnanswered 20
        min c.Config.MaxPersistInterval (c.Timers.Rtt.Rto <<< shift)

    // ---- State changes --------------------------------------------------------------------------

    let move (out: TcpActions) (trigger: TcpTrigger) (target: TcpState) (c: Connection) =
        out.Add(
            TcpAction.Transition
                {
                    From = c.State
                    Trigger = trigger
                    To = target
                }
        )

        { c with State = target }

    let enterClosed (out: TcpActions) (trigger: TcpTrigger) (c: Connection) =
        let c = move out trigger TcpState.Closed c
        out.Add(TcpAction.Event TcpEvent.Closed)

        { c with
            Timers.RetransmitAt = ValueNone
            Timers.PersistAt = ValueNone
            Timers.DelayedAckAt = ValueNone
            Timers.LingerAt = ValueNone
            Timers.KeepAliveAt = ValueNone
            Timers.ProbeAt = ValueNone
            Rcv.AckPending = false
        }

    /// TIME-WAIT holds the connection for 2·MSL (RFC 9293 §3.4.2) so that late duplicates die
    /// and a lost final ACK can be repeated; nothing else runs.
    let enterTimeWait (now: int64) (out: TcpActions) (trigger: TcpTrigger) (c: Connection) =
        let c = move out trigger TcpState.TimeWait c

        { c with
            Timers.RetransmitAt = ValueNone
            Timers.PersistAt = ValueNone
            Timers.KeepAliveAt = ValueNone
            Timers.ProbeAt = ValueNone
            Timers.LingerAt = ValueSome(now + 2L * c.Config.Msl)
        }
