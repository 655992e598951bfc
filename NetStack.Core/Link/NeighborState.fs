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
/// An advertisement is one of four triggers, by its Solicited (S) and Override (O) flags and
/// whether its link-layer address is the one cached, as Appendix C's rows tell them apart.
[<RequireQualifiedAccess>]
type NeighborTrigger =
    /// A packet is sent to the address.
    | Send
    /// RetransTimer expired with solicitations left (INCOMPLETE, PROBE): solicit again.
    | RetransmitTimeout
    /// The last solicitation went unanswered: the entry is deleted, its queue dropped.
    | GiveUp
    /// A solicited advertisement (S set; an ARP reply for us) the entry takes: any in INCOMPLETE;
    /// otherwise one with O set or with the cached address. It confirms reachability.
    | SolicitedAdvertisement
    /// An unsolicited advertisement (S clear) with a new address: any in INCOMPLETE; otherwise one
    /// with O set and an address other than the cached one. The address is recorded, unconfirmed.
    | UnsolicitedAdvertisement
    /// An unsolicited advertisement with the cached address (either O): nothing new.
    | UnsolicitedSameAddress
    /// An advertisement without O whose address differs from the cached one (either S): §7.2.5
    /// keeps the cached address; a REACHABLE entry becomes STALE, others stay.
    | ConflictingAdvertisement
    /// A solicitation (NS, RS or Redirect with a source link-layer address; an ARP request for
    /// us, or an existing entry's sender: RFC 826 "merge") with a new address: no entry yet, an
    /// INCOMPLETE one, or an address other than the cached one (§7.2.3).
    | LearnNewAddress
    /// A solicitation with the cached address: nothing new.
    | LearnSameAddress
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
            .Permit(NeighborTrigger.LearnNewAddress, NeighborState.Stale)
            .Ignore(NeighborTrigger.SolicitedAdvertisement)
            .Ignore(NeighborTrigger.UnsolicitedAdvertisement)
        |> ignore

        // The soliciting states, INCOMPLETE and PROBE, share their exits: a solicitation again
        // every RetransTimer until the last goes unanswered (§7.2.2, §7.3.3), then the entry is
        // deleted; a solicited NA makes it REACHABLE, an unsolicited one (a new address) STALE,
        // and so does a solicitation with a new address (§7.2.3, §7.2.5).
        let soliciting (state: NeighborState) =
            machine
                .Configure(state)
                .Ignore(NeighborTrigger.Send)
                .PermitReentry(NeighborTrigger.RetransmitTimeout)
                .Permit(NeighborTrigger.GiveUp, NeighborState.Absent)
                .Permit(NeighborTrigger.SolicitedAdvertisement, NeighborState.Reachable)
                .Permit(NeighborTrigger.UnsolicitedAdvertisement, NeighborState.Stale)
                .Permit(NeighborTrigger.LearnNewAddress, NeighborState.Stale)

        // §7.2.2: retransmit every RetransTimer up to MAX_MULTICAST_SOLICIT, then give up. With
        // nothing cached there is no "same" or "conflicting" address.
        soliciting NeighborState.Incomplete |> ignore

        // The states with a cached address: the cached address again changes nothing; an
        // advertisement without O that contradicts it is ignored (§7.2.5 b), except that a
        // REACHABLE entry becomes STALE (§7.2.5 a).
        let cached (state: NeighborState) =
            machine
                .Configure(state)
                .Ignore(NeighborTrigger.UnsolicitedSameAddress)
                .Ignore(NeighborTrigger.LearnSameAddress)

        cached(NeighborState.Reachable)
            .Ignore(NeighborTrigger.Send)
            .PermitReentry(NeighborTrigger.SolicitedAdvertisement)
            .Permit(NeighborTrigger.UnsolicitedAdvertisement, NeighborState.Stale)
            .Permit(NeighborTrigger.ConflictingAdvertisement, NeighborState.Stale)
            .Permit(NeighborTrigger.LearnNewAddress, NeighborState.Stale)
            .Permit(NeighborTrigger.ReachableTimeout, NeighborState.Stale)
            .Permit(NeighborTrigger.Evict, NeighborState.Absent)
        |> ignore

        // §7.3.3: the first packet to a STALE neighbor moves it to DELAY.
        cached(NeighborState.Stale)
            .Permit(NeighborTrigger.Send, NeighborState.Delay)
            .Permit(NeighborTrigger.SolicitedAdvertisement, NeighborState.Reachable)
            .PermitReentry(NeighborTrigger.UnsolicitedAdvertisement)
            .Ignore(NeighborTrigger.ConflictingAdvertisement)
            .PermitReentry(NeighborTrigger.LearnNewAddress)
            .Permit(NeighborTrigger.Forget, NeighborState.Absent)
            .Permit(NeighborTrigger.Evict, NeighborState.Absent)
        |> ignore

        cached(NeighborState.Delay)
            .Ignore(NeighborTrigger.Send)
            .Permit(NeighborTrigger.SolicitedAdvertisement, NeighborState.Reachable)
            .Permit(NeighborTrigger.UnsolicitedAdvertisement, NeighborState.Stale)
            .Ignore(NeighborTrigger.ConflictingAdvertisement)
            .Permit(NeighborTrigger.LearnNewAddress, NeighborState.Stale)
            .Permit(NeighborTrigger.DelayTimeout, NeighborState.Probe)
        |> ignore

        // §7.3.3: unicast probes every RetransTimer up to MAX_UNICAST_SOLICIT, then delete.
        (soliciting NeighborState.Probe)
            .Ignore(NeighborTrigger.UnsolicitedSameAddress)
            .Ignore(NeighborTrigger.LearnSameAddress)
            .Ignore(NeighborTrigger.ConflictingAdvertisement)
        |> ignore

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
