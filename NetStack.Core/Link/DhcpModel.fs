namespace NetStack.Core.Link

open Stateless
open NetStack.Core

/// The states of the DHCP client (RFC 2131 §4.4, Figure 5), with Probing for the RFC 5227 check
/// of an address the server acknowledged before it is used (RFC 2131 §4.4.1 "SHOULD probe").
[<RequireQualifiedAccess>]
type DhcpState =
    /// No address; a DISCOVER is due (at start after a random delay, or 10 s after a DECLINE).
    | Init
    /// DISCOVER sent, waiting for an OFFER.
    | Selecting
    /// REQUEST for an offered address sent, waiting for ACK or NAK.
    | Requesting
    /// The acknowledged address is being probed with ARP (RFC 5227 §2.1); not used yet.
    | Probing
    /// The address is ours until T1.
    | Bound
    /// T1 passed: REQUESTs go to the server that gave the lease (unicast).
    | Renewing
    /// T2 passed: REQUESTs are broadcast to any server.
    | Rebinding
    /// Started with a previous address; the first REQUEST for it is due.
    | InitReboot
    /// REQUEST for the previous address broadcast, waiting for ACK or NAK.
    | Rebooting

/// What moves the client (RFC 2131 Figure 5's edges, plus the probe's).
[<RequireQualifiedAccess>]
type DhcpTrigger =
    /// INIT's or INIT-REBOOT's timer: the first DISCOVER / REQUEST goes out.
    | Start
    /// An OFFER with our xid (in SELECTING: the first one is taken).
    | Offer
    /// An ACK with our xid.
    | Ack
    /// A NAK with our xid.
    | Nak
    /// The retransmission timer of the state's message (DISCOVER or REQUEST) expired with tries left.
    | RetransmitTimeout
    /// REQUESTING or REBOOTING sent its last REQUEST without an answer: back to INIT (§3.1.5, §3.2).
    | GiveUp
    /// The probe timer: the next ARP probe (PROBE_MIN..PROBE_MAX apart, RFC 5227 §2.1.1).
    | ProbeTimeout
    /// ANNOUNCE_WAIT after the last probe passed without a conflict: the address is ours.
    | ProbeDone
    /// Another host has the probed address: DECLINE it (RFC 2131 §3.1.5) and go back to INIT.
    | Conflict
    /// The second RFC 5227 announcement (ANNOUNCE_INTERVAL after the first).
    | Announce
    /// T1 expired (RFC 2131 §4.4.5).
    | RenewalTimeout
    /// T2 expired.
    | RebindingTimeout
    /// The lease expired: the address is given up.
    | LeaseExpired

/// The DHCP client's state graph declared with Stateless: the formal model Dhcp is checked
/// against. Configured once; queries use lookup tables and never fire a trigger.
[<RequireQualifiedAccess>]
module DhcpModel =

    /// Declares the graph on a fresh Stateless machine starting in `initial`.
    let internal configure (initial: DhcpState) : StateMachine<DhcpState, DhcpTrigger> =
        let machine = StateMachine<DhcpState, DhcpTrigger>(initial)

        // Replies that do not belong to the state (a late OFFER, an ACK while selecting) are
        // discarded: RFC 2131 §4.4.1 "the client discards any ... messages with other xids or types".
        machine
            .Configure(DhcpState.Init)
            .Permit(DhcpTrigger.Start, DhcpState.Selecting)
            .Ignore(DhcpTrigger.Offer)
            .Ignore(DhcpTrigger.Ack)
            .Ignore(DhcpTrigger.Nak)
        |> ignore

        // §4.4.1: DISCOVER, retransmitted 4, 8, 16, 32, 64, 64 ... s (±1 s) until an OFFER.
        machine
            .Configure(DhcpState.Selecting)
            .Permit(DhcpTrigger.Offer, DhcpState.Requesting)
            .PermitReentry(DhcpTrigger.RetransmitTimeout)
            .Ignore(DhcpTrigger.Ack)
            .Ignore(DhcpTrigger.Nak)
        |> ignore

        // §3.1.3–5: ACK → check the address (RFC 5227); NAK or no answer → INIT.
        machine
            .Configure(DhcpState.Requesting)
            .Permit(DhcpTrigger.Ack, DhcpState.Probing)
            .Permit(DhcpTrigger.Nak, DhcpState.Init)
            .PermitReentry(DhcpTrigger.RetransmitTimeout)
            .Permit(DhcpTrigger.GiveUp, DhcpState.Init)
            .Ignore(DhcpTrigger.Offer)
        |> ignore

        machine
            .Configure(DhcpState.InitReboot)
            .Permit(DhcpTrigger.Start, DhcpState.Rebooting)
            .Ignore(DhcpTrigger.Offer)
            .Ignore(DhcpTrigger.Ack)
            .Ignore(DhcpTrigger.Nak)
        |> ignore

        // §3.2: the previous address confirmed → checked as a new one; NAK or silence → INIT.
        machine
            .Configure(DhcpState.Rebooting)
            .Permit(DhcpTrigger.Ack, DhcpState.Probing)
            .Permit(DhcpTrigger.Nak, DhcpState.Init)
            .PermitReentry(DhcpTrigger.RetransmitTimeout)
            .Permit(DhcpTrigger.GiveUp, DhcpState.Init)
            .Ignore(DhcpTrigger.Offer)
        |> ignore

        // RFC 5227 §2.1: PROBE_NUM probes, then ANNOUNCE_WAIT; any conflict → DECLINE (§2.1.1).
        machine
            .Configure(DhcpState.Probing)
            .PermitReentry(DhcpTrigger.ProbeTimeout)
            .Permit(DhcpTrigger.ProbeDone, DhcpState.Bound)
            .Permit(DhcpTrigger.Conflict, DhcpState.Init)
            .Ignore(DhcpTrigger.Offer)
            .Ignore(DhcpTrigger.Ack)
            .Ignore(DhcpTrigger.Nak)
        |> ignore

        machine
            .Configure(DhcpState.Bound)
            .PermitReentry(DhcpTrigger.Announce)
            .Permit(DhcpTrigger.RenewalTimeout, DhcpState.Renewing)
            .Ignore(DhcpTrigger.Offer)
            .Ignore(DhcpTrigger.Ack)
            .Ignore(DhcpTrigger.Nak)
        |> ignore

        // §4.4.5: an ACK extends the lease, a NAK ends it at once.
        machine
            .Configure(DhcpState.Renewing)
            .Permit(DhcpTrigger.Ack, DhcpState.Bound)
            .Permit(DhcpTrigger.Nak, DhcpState.Init)
            .PermitReentry(DhcpTrigger.RetransmitTimeout)
            .Permit(DhcpTrigger.RebindingTimeout, DhcpState.Rebinding)
            .Ignore(DhcpTrigger.Offer)
        |> ignore

        machine
            .Configure(DhcpState.Rebinding)
            .Permit(DhcpTrigger.Ack, DhcpState.Bound)
            .Permit(DhcpTrigger.Nak, DhcpState.Init)
            .PermitReentry(DhcpTrigger.RetransmitTimeout)
            .Permit(DhcpTrigger.LeaseExpired, DhcpState.Init)
            .Ignore(DhcpTrigger.Offer)
        |> ignore

        machine

    let private model = lazy (StatelessModel(configure DhcpState.Init))

    /// The state `trigger` leads to from `state` (itself for a reentry), or ValueNone.
    let target (state: DhcpState) (trigger: DhcpTrigger) : DhcpState voption = model.Value.Target(state, trigger)

    /// True when the model accepts `trigger` in `state` and changes nothing.
    let isIgnored (state: DhcpState) (trigger: DhcpTrigger) : bool = model.Value.IsIgnored(state, trigger)

    /// The graph in Graphviz DOT, as Stateless draws it (committed as docs/dhcp-client-states.dot).
    let dot () : string = model.Value.Dot()
