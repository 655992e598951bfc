namespace NetStack.Core.Link

open Stateless
open NetStack.Core

/// The reachability states of a neighbor cache entry (RFC 4861 §7.3.2), plus Absent for "no
/// entry" so that creation and deletion are transitions of the model too.
[<RequireQualifiedAccess>]
type NeighborState =
    /// No entry for the address.
    | Absent
    /// Address resolution is in progress: solicitations are being sent, packets wait in a queue.
    | Incomplete
    /// The neighbor was recently confirmed reachable (within ReachableTime).
    | Reachable
    /// The link-layer address is known but unconfirmed; nothing happens until a packet is sent.
    | Stale
    /// A packet was sent to a STALE neighbor; waiting DELAY_FIRST_PROBE_TIME for an upper-layer
    /// confirmation before probing.
    | Delay
    /// Unicast solicitations are being sent to confirm reachability.
    | Probe

/// The events that move an entry between states (RFC 4861 §7.2.3–§7.2.5, §7.3.3, Appendix C).
[<RequireQualifiedAccess>]
type NeighborTrigger =
    /// A packet is sent to the address.
    | Send
    /// RetransTimer expired with solicitations left (INCOMPLETE, PROBE): solicit again.
    | RetransmitTimeout
    /// The last solicitation went unanswered: the entry is deleted, its queue dropped.
    | GiveUp
    /// A solicited advertisement (NA with S set, or an ARP reply) confirms the address.
    | SolicitedConfirmation
    /// An unsolicited advertisement, or one with a different link-layer address (§7.2.5).
    | UnsolicitedAdvertisement
    /// A solicitation (NS with a source link-layer address, or an ARP request for us) teaches
    /// the sender's address (§7.2.3; RFC 826 "merge").
    | LearnAddress
    /// ReachableTime passed since the last confirmation.
    | ReachableTimeout
    /// DELAY_FIRST_PROBE_TIME passed without confirmation.
    | DelayTimeout
    /// A STALE entry unused for the cache's stale lifetime is garbage-collected (as Linux's
    /// gc_staletime; RFC 4861 §7.3.3 leaves this to the implementation).
    | Forget
    /// The cache is full and this entry is the oldest one not busy resolving: it makes room.
    | Evict

/// The neighbor entry state graph declared with Stateless: the formal model NeighborCache is
/// checked against, in the same way as the TCP StateModel. Configured once; queries use lookup
/// tables and never fire a trigger.
[<RequireQualifiedAccess>]
module NeighborModel =

    /// Declares the graph on a fresh Stateless machine starting in `initial`.
    let internal configure (initial: NeighborState) : StateMachine<NeighborState, NeighborTrigger> =
        let machine = StateMachine<NeighborState, NeighborTrigger>(initial)

        // §7.2.5: an advertisement without an entry is discarded; §7.2.3: a solicitation with a
        // source link-layer address creates a STALE entry; §7.3.3: a first packet starts
        // resolution in INCOMPLETE.
        machine
            .Configure(NeighborState.Absent)
            .Permit(NeighborTrigger.Send, NeighborState.Incomplete)
            .Permit(NeighborTrigger.LearnAddress, NeighborState.Stale)
            .Ignore(NeighborTrigger.SolicitedConfirmation)
            .Ignore(NeighborTrigger.UnsolicitedAdvertisement)
        |> ignore

        // The soliciting states, INCOMPLETE and PROBE, share their exits: a solicitation again
        // every RetransTimer until the last goes unanswered (§7.2.2, §7.3.3), then the entry is
        // deleted; §7.2.5: a solicited NA makes it REACHABLE, an unsolicited one STALE.
        let soliciting (state: NeighborState) =
            machine
                .Configure(state)
                .Ignore(NeighborTrigger.Send)
                .PermitReentry(NeighborTrigger.RetransmitTimeout)
                .Permit(NeighborTrigger.GiveUp, NeighborState.Absent)
                .Permit(NeighborTrigger.SolicitedConfirmation, NeighborState.Reachable)
                .Permit(NeighborTrigger.UnsolicitedAdvertisement, NeighborState.Stale)
                .Permit(NeighborTrigger.LearnAddress, NeighborState.Stale)
            |> ignore

        // §7.2.2: retransmit every RetransTimer up to MAX_MULTICAST_SOLICIT, then give up.
        soliciting NeighborState.Incomplete

        machine
            .Configure(NeighborState.Reachable)
            .Ignore(NeighborTrigger.Send)
            .PermitReentry(NeighborTrigger.SolicitedConfirmation)
            .Permit(NeighborTrigger.UnsolicitedAdvertisement, NeighborState.Stale)
            .Permit(NeighborTrigger.LearnAddress, NeighborState.Stale)
            .Permit(NeighborTrigger.ReachableTimeout, NeighborState.Stale)
            .Permit(NeighborTrigger.Evict, NeighborState.Absent)
        |> ignore

        // §7.3.3: the first packet to a STALE neighbor moves it to DELAY.
        machine
            .Configure(NeighborState.Stale)
            .Permit(NeighborTrigger.Send, NeighborState.Delay)
            .Permit(NeighborTrigger.SolicitedConfirmation, NeighborState.Reachable)
            .PermitReentry(NeighborTrigger.UnsolicitedAdvertisement)
            .PermitReentry(NeighborTrigger.LearnAddress)
            .Permit(NeighborTrigger.Forget, NeighborState.Absent)
            .Permit(NeighborTrigger.Evict, NeighborState.Absent)
        |> ignore

        machine
            .Configure(NeighborState.Delay)
            .Ignore(NeighborTrigger.Send)
            .Permit(NeighborTrigger.SolicitedConfirmation, NeighborState.Reachable)
            .Permit(NeighborTrigger.UnsolicitedAdvertisement, NeighborState.Stale)
            .Permit(NeighborTrigger.LearnAddress, NeighborState.Stale)
            .Permit(NeighborTrigger.DelayTimeout, NeighborState.Probe)
        |> ignore

        // §7.3.3: unicast probes every RetransTimer up to MAX_UNICAST_SOLICIT, then delete.
        soliciting NeighborState.Probe

        machine

    /// The model's one configured machine, read into lookup tables on first use.
    let private model = lazy (StatelessModel(configure NeighborState.Absent))

    /// The state `trigger` leads to from `state` (itself for a reentry), or ValueNone when the
    /// model has no transition for it there.
    let target (state: NeighborState) (trigger: NeighborTrigger) : NeighborState voption =
        model.Value.Target(state, trigger)

    /// True when the model accepts `trigger` in `state` and changes nothing.
    let isIgnored (state: NeighborState) (trigger: NeighborTrigger) : bool = model.Value.IsIgnored(state, trigger)

    /// True when the model accepts `trigger` in `state`: a transition, a reentry or an ignore.
    let isPermitted (state: NeighborState) (trigger: NeighborTrigger) : bool =
        (target state trigger).IsSome || isIgnored state trigger

    /// True when an entry may move from `from` to `to'` on `trigger` (an ignore counts as staying).
    let allows (from: NeighborState) (trigger: NeighborTrigger) (to': NeighborState) : bool =
        match target from trigger with
        | ValueSome t -> t = to'
        | ValueNone -> from = to' && isIgnored from trigger

    /// The graph in Graphviz DOT, as Stateless draws it (committed as docs/neighbor-states.dot).
    let dot () : string = model.Value.Dot()
