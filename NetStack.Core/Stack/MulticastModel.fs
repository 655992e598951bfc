namespace NetStack.Core.Stack

open Stateless
open NetStack.Core

/// The host state of one multicast group on the interface (RFC 2236 §6, RFC 2710 §5, kept by
/// RFC 3376 §5 and RFC 3810 §6 in the form of per-group report timers).
[<RequireQualifiedAccess>]
type GroupState =
    /// Not a member (no socket joined it).
    | NonMember
    /// A member with a report timer running: unsolicited reports of a join still to repeat, or
    /// the answer to a query, due at a random moment within the interval.
    | Delaying
    /// A member with no report pending.
    | Idle

/// The events that move a group between states.
[<RequireQualifiedAccess>]
type GroupTrigger =
    /// The first socket joins the group: Robustness unsolicited reports are due, the first at once.
    | Join
    /// The last socket leaves the group (leave messages or state-change records follow).
    | Leave
    /// A query that starts this group's timer: a group-specific query for it, or (in IGMPv1/v2
    /// and MLDv1 compatibility mode) a general query (RFC 2236 §3, RFC 3376 §5.2).
    | Query
    /// Another host's IGMPv1/v2 or MLDv1 report for the group while ours is pending: ours is
    /// suppressed (RFC 2236 §3; IGMPv3 and MLDv2 hosts do not suppress, so it is not a trigger there).
    | ReportHeard
    /// The timer fired and a report went out, with more unsolicited repetitions to come.
    | Retransmit
    /// The timer fired and the last pending report went out.
    | TimerExpired

/// The group state graph declared with Stateless: the formal model `Multicast` is held to (as
/// the TCP StateModel and the NeighborModel). Configured once; queries use lookup tables.
[<RequireQualifiedAccess>]
module GroupModel =

    /// Declares the graph on a fresh Stateless machine starting in `initial`.
    let internal configure (initial: GroupState) : StateMachine<GroupState, GroupTrigger> =
        let machine = StateMachine<GroupState, GroupTrigger>(initial)

        // RFC 2236 §6: "join group" sends a report and starts the timer; queries and reports
        // about a group we are not in mean nothing to us.
        machine
            .Configure(GroupState.NonMember)
            .Permit(GroupTrigger.Join, GroupState.Delaying)
            .Ignore(GroupTrigger.Query)
            .Ignore(GroupTrigger.ReportHeard)
        |> ignore

        // A timer runs: a query resets it when it asks for a quicker answer; another host's
        // report stops it; it fires with repetitions left or for the last time; another socket
        // joining changes nothing.
        machine
            .Configure(GroupState.Delaying)
            .Ignore(GroupTrigger.Join)
            .Permit(GroupTrigger.Leave, GroupState.NonMember)
            .PermitReentry(GroupTrigger.Query)
            .Permit(GroupTrigger.ReportHeard, GroupState.Idle)
            .PermitReentry(GroupTrigger.Retransmit)
            .Permit(GroupTrigger.TimerExpired, GroupState.Idle)
        |> ignore

        machine
            .Configure(GroupState.Idle)
            .Ignore(GroupTrigger.Join)
            .Permit(GroupTrigger.Leave, GroupState.NonMember)
            .Permit(GroupTrigger.Query, GroupState.Delaying)
            .Ignore(GroupTrigger.ReportHeard)
        |> ignore

        machine

    let private model = lazy (StatelessModel(configure GroupState.NonMember))

    /// The state `trigger` leads to from `state` (itself for a reentry), or ValueNone when the
    /// model has no transition for it there.
    let target (state: GroupState) (trigger: GroupTrigger) : GroupState voption = model.Value.Target(state, trigger)

    /// True when the model accepts `trigger` in `state` and changes nothing.
    let isIgnored (state: GroupState) (trigger: GroupTrigger) : bool = model.Value.IsIgnored(state, trigger)

    /// True when a group may move from `from` to `to'` on `trigger` (an ignore counts as staying).
    let allows (from: GroupState) (trigger: GroupTrigger) (to': GroupState) : bool =
        match target from trigger with
        | ValueSome t -> t = to'
        | ValueNone -> from = to' && isIgnored from trigger

    /// The graph in Graphviz DOT (committed as docs/multicast-group-states.dot).
    let dot () : string = model.Value.Dot()
