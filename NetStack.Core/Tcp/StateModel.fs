namespace NetStack.Core.Tcp

open Stateless
open NetStack.Core

/// The connection states of RFC 9293 §3.3.2.
[<RequireQualifiedAccess>]
type TcpState =
    /// No connection (the fictional state before and after a connection).
    | Closed
    /// Waiting for a connection request from any remote TCP.
    | Listen
    /// A SYN was sent; waiting for the matching SYN (and ACK).
    | SynSent
    /// A SYN was received and one sent; waiting for the ACK of ours.
    | SynReceived
    /// An open connection: data flows both ways.
    | Established
    /// We closed (FIN sent or queued); waiting for its ACK or the peer's FIN.
    | FinWait1
    /// Our FIN is acknowledged; waiting for the peer's FIN.
    | FinWait2
    /// The peer closed; waiting for our user to close.
    | CloseWait
    /// Both sides closed at once; waiting for the ACK of our FIN.
    | Closing
    /// The peer closed first, then we did; waiting for the ACK of our FIN.
    | LastAck
    /// Both FINs are acknowledged; waiting 2·MSL so late segments die out.
    | TimeWait

/// The events that move a connection between states (the labels of RFC 9293 Figure 5 plus the
/// resets, aborts and timeouts of §3.10).
[<RequireQualifiedAccess>]
type TcpTrigger =
    /// User OPEN, passive: listen for a SYN.
    | PassiveOpen
    /// User OPEN, active: send a SYN.
    | ActiveOpen
    /// A SYN without an ACK of ours arrives (LISTEN: a new connection; SYN-SENT: simultaneous
    /// open; synchronized states: answered with a challenge ACK, RFC 5961 §4).
    | RcvSyn
    /// A SYN that acknowledges our SYN arrives in SYN-SENT.
    | RcvSynAck
    /// The ACK of our SYN arrives in SYN-RECEIVED.
    | RcvAckOfSyn
    /// User CLOSE: we have no more data to send.
    | Close
    /// The peer's FIN arrives (in order).
    | RcvFin
    /// The ACK of our FIN arrives.
    | RcvAckOfFin
    /// In FIN-WAIT-1, one segment both acknowledges our FIN and completes the peer's (RFC 9293
    /// Figure 5, note 2: the transition from FIN-WAIT-1 to TIME-WAIT the figure omits; §3.10.7.4
    /// eighth step: "If our FIN has been ACKed (perhaps in this segment), then enter TIME-WAIT").
    | RcvFinAckOfFin
    /// The 2·MSL timer of TIME-WAIT expires.
    | TimeWaitTimeout
    /// An acceptable RST arrives (RFC 9293 §3.10.7.4, RFC 5961 §3.2: in the synchronized states
    /// exactly at RCV.NXT; in TIME-WAIT only such a RST counts, any other is ignored).
    | RcvRst
    /// User ABORT.
    | Abort
    /// Retransmissions (or zero-window probes, or the FIN-WAIT-2 wait) ran out: the connection fails.
    | Timeout
    /// An ICMP error that ends the connection (RFC 1122 §4.2.3.9, RFC 5927): in SYN-SENT (and
    /// the SYN-RECEIVED of a simultaneous open) any destination unreachable, time exceeded or
    /// parameter problem, as Linux's tcp_v4_err/tcp_v6_err fail a connect; elsewhere a hard
    /// error (`TcpIcmp.classify`). Only one quoting a sequence number in [SND.UNA, SND.MAX)
    /// counts (RFC 5927 §4.1), so FIN-WAIT-2 and TIME-WAIT, with nothing in flight, never see it.
    | IcmpHardError
    /// An acceptable new SYN for a connection in TIME-WAIT (RFC 6191 §2, RFC 1122 §4.2.2.13: a
    /// timestamp newer than TS.Recent, or without timestamps a sequence number beyond RCV.NXT):
    /// the old incarnation ends, and the SYN goes to the listener as a new connection request.
    | RcvReopeningSyn

/// The RFC 9293 state graph declared with Stateless: the formal model the pure engine
/// (`Connection`) is checked against. The machine is configured once, when this module is first
/// used; its reflection info is turned into lookup tables, so queries never fire a trigger
/// (Stateless allocates per Fire) and never touch the per-segment path.
[<RequireQualifiedAccess>]
module StateModel =

    /// Declares the graph on a fresh Stateless machine starting in `initial`. Reentry and ignore
    /// follow the RFC's "remain in the same state" cases.
    let internal configure (initial: TcpState) : StateMachine<TcpState, TcpTrigger> =
        let machine = StateMachine<TcpState, TcpTrigger>(initial)

        // Failure exits every synchronized or synchronizing state shares (§3.10.7.4 RST
        // processing, §3.10.4 ABORT, §3.8.3 "excessive retransmission" / user timeout).
        let failures (state: StateMachine<TcpState, TcpTrigger>.StateConfiguration) =
            state
                .Permit(TcpTrigger.RcvRst, TcpState.Closed)
                .Permit(TcpTrigger.Abort, TcpState.Closed)
                .Permit(TcpTrigger.Timeout, TcpState.Closed)
            |> ignore

        // §3.10.7.1: in CLOSED an incoming RST is discarded.
        machine
            .Configure(TcpState.Closed)
            .Permit(TcpTrigger.PassiveOpen, TcpState.Listen)
            .Permit(TcpTrigger.ActiveOpen, TcpState.SynSent)
            .Ignore(TcpTrigger.RcvRst)
        |> ignore

        // §3.10.7.2: a RST in LISTEN is ignored; a SYN makes the connection SYN-RECEIVED.
        machine
            .Configure(TcpState.Listen)
            .Permit(TcpTrigger.RcvSyn, TcpState.SynReceived)
            .Permit(TcpTrigger.Close, TcpState.Closed)
            .Permit(TcpTrigger.Abort, TcpState.Closed)
            .Ignore(TcpTrigger.RcvRst)
        |> ignore

        // §3.10.7.3: SYN,ACK completes the handshake, a bare SYN is a simultaneous open.
        machine
            .Configure(TcpState.SynSent)
            .Permit(TcpTrigger.IcmpHardError, TcpState.Closed)
            .Permit(TcpTrigger.RcvSynAck, TcpState.Established)
            .Permit(TcpTrigger.RcvSyn, TcpState.SynReceived)
            .Permit(TcpTrigger.Close, TcpState.Closed)
        |> failures

        // §3.10.7.4: the ACK of our SYN establishes. A reset connection that came from LISTEN
        // "returns to LISTEN" (Figure 5, note 1): here the listener is a separate object that
        // never left LISTEN, so this connection goes to CLOSED. A repeated SYN is answered, not a
        // transition. §3.10.4: a CLOSE with nothing written sends the FIN at once (FIN-WAIT-1);
        // after a SEND it waits for ESTABLISHED, and is then ESTABLISHED's CLOSE.
        machine
            .Configure(TcpState.SynReceived)
            .Permit(TcpTrigger.RcvAckOfSyn, TcpState.Established)
            .Permit(TcpTrigger.IcmpHardError, TcpState.Closed)
            .Permit(TcpTrigger.Close, TcpState.FinWait1)
            .Ignore(TcpTrigger.RcvSyn)
        |> failures

        machine
            .Configure(TcpState.Established)
            .Permit(TcpTrigger.Close, TcpState.FinWait1)
            .Permit(TcpTrigger.IcmpHardError, TcpState.Closed)
            .Permit(TcpTrigger.RcvFin, TcpState.CloseWait)
            .Ignore(TcpTrigger.RcvSyn)
        |> failures

        machine
            .Configure(TcpState.FinWait1)
            .Permit(TcpTrigger.RcvAckOfFin, TcpState.FinWait2)
            .Permit(TcpTrigger.IcmpHardError, TcpState.Closed)
            .Permit(TcpTrigger.RcvFin, TcpState.Closing)
            .Permit(TcpTrigger.RcvFinAckOfFin, TcpState.TimeWait)
            .Ignore(TcpTrigger.Close)
            .Ignore(TcpTrigger.RcvSyn)
        |> failures

        machine
            .Configure(TcpState.FinWait2)
            .Permit(TcpTrigger.RcvFin, TcpState.TimeWait)
            .Ignore(TcpTrigger.Close)
            .Ignore(TcpTrigger.RcvSyn)
        |> failures

        // §3.10.7.4 eighth step: a FIN in CLOSE-WAIT, CLOSING or LAST-ACK leaves the state as is.
        machine
            .Configure(TcpState.CloseWait)
            .Permit(TcpTrigger.Close, TcpState.LastAck)
            .Permit(TcpTrigger.IcmpHardError, TcpState.Closed)
            .Ignore(TcpTrigger.RcvFin)
            .Ignore(TcpTrigger.RcvSyn)
        |> failures

        machine
            .Configure(TcpState.Closing)
            .Permit(TcpTrigger.RcvAckOfFin, TcpState.TimeWait)
            .Permit(TcpTrigger.IcmpHardError, TcpState.Closed)
            .Ignore(TcpTrigger.Close)
            .Ignore(TcpTrigger.RcvFin)
            .Ignore(TcpTrigger.RcvSyn)
        |> failures

        machine
            .Configure(TcpState.LastAck)
            .Permit(TcpTrigger.RcvAckOfFin, TcpState.Closed)
            .Permit(TcpTrigger.IcmpHardError, TcpState.Closed)
            .Ignore(TcpTrigger.Close)
            .Ignore(TcpTrigger.RcvFin)
            .Ignore(TcpTrigger.RcvSyn)
        |> failures

        // A retransmitted FIN in TIME-WAIT is acknowledged and restarts the 2·MSL timer
        // (§3.10.7.4 eighth step): a reentry.
        //
        // A new SYN for the 4-tuple that RFC 6191 §2 finds acceptable (RFC 1122 §4.2.2.13)
        // ends this incarnation (RcvReopeningSyn) and opens the next one from the listener.
        // Any other SYN (an old duplicate, or a new one that cannot be told from one) gets a
        // rate-limited challenge ACK and changes nothing (RcvSyn ignored).
        //
        // RSTs: only one exactly at RCV.NXT ends TIME-WAIT (RcvRst; §3.10.7.4's second step with
        // RFC 5961 §3.2's exact match, as Linux with its default tcp_rfc1337=0); any other is
        // ignored. RFC 1337 §3 (fix F1) would ignore them all, against "TIME-WAIT assassination"
        // by a stray RST; but then a client whose new SYN is not acceptable stalls for 2·MSL: it
        // answers the challenge ACK with the only RST it can build from it, <SEQ=SEG.ACK> =
        // RCV.NXT (§3.10.7.3), and its SYN goes on meeting TIME-WAIT. Taking that RST bounds
        // every such connect to one SYN retransmission (two when the challenge ACK was rate
        // limited), and a blind attacker still has to hit RCV.NXT exactly.
        machine
            .Configure(TcpState.TimeWait)
            .Permit(TcpTrigger.TimeWaitTimeout, TcpState.Closed)
            .PermitReentry(TcpTrigger.RcvFin)
            .Permit(TcpTrigger.RcvRst, TcpState.Closed)
            .Permit(TcpTrigger.RcvReopeningSyn, TcpState.Closed)
            .Permit(TcpTrigger.Abort, TcpState.Closed)
            .Ignore(TcpTrigger.Close)
            .Ignore(TcpTrigger.RcvSyn)
        |> ignore

        machine

    /// The model's one configured machine, read into lookup tables on first use.
    let private model = lazy (StatelessModel(configure TcpState.Closed))

    /// The state `trigger` leads to from `state` (itself for a reentry), or ValueNone when the
    /// model has no transition for it there (ignored or not permitted).
    let target (state: TcpState) (trigger: TcpTrigger) : TcpState voption = model.Value.Target(state, trigger)

    /// True when the model says `trigger` in `state` is accepted and changes nothing.
    let isIgnored (state: TcpState) (trigger: TcpTrigger) : bool = model.Value.IsIgnored(state, trigger)

    /// True when the model accepts `trigger` in `state`: a transition, a reentry or an ignore.
    let isPermitted (state: TcpState) (trigger: TcpTrigger) : bool =
        (target state trigger).IsSome || isIgnored state trigger

    /// True when the engine may move from `from` to `to'` on `trigger`.
    let allows (from: TcpState) (trigger: TcpTrigger) (to': TcpState) : bool = target from trigger = ValueSome to'

    /// The graph in Graphviz DOT, as Stateless draws it (committed as docs/tcp-states.dot).
    let dot () : string = model.Value.Dot()
