namespace NetStack.Core

open System.Collections.Generic
open Stateless
open Stateless.Graph

/// A state graph declared with Stateless, read once into lookup tables: the shared machinery of
/// the formal models (Tcp.StateModel, Link.NeighborModel). The machine is only configured and
/// inspected, never fired: Stateless allocates on every Fire (boxed arguments, LINQ in its
/// handler lookup), so queries go to plain dictionaries and stay cheap enough for tests and
/// assertions, while the per-segment path does not touch the model at all.
[<Sealed>]
type internal StatelessModel<'State, 'Trigger when 'State: equality and 'Trigger: equality>
    (machine: StateMachine<'State, 'Trigger>) =
    let info = machine.GetInfo()
    let targets = Dictionary<struct ('State * 'Trigger), 'State>()
    let ignored = HashSet<struct ('State * 'Trigger)>()

    do
        for state in info.States do
            let from = state.UnderlyingState :?> 'State

            // Permit and PermitReentry both appear as fixed transitions (a reentry's destination
            // is its source); Ignore appears separately.
            for transition in state.FixedTransitions do
                let trigger = transition.Trigger.UnderlyingTrigger :?> 'Trigger
                targets.[struct (from, trigger)] <- transition.DestinationState.UnderlyingState :?> 'State

            for transition in state.IgnoredTriggers do
                ignored.Add(struct (from, transition.Trigger.UnderlyingTrigger :?> 'Trigger))
                |> ignore

    /// The state `trigger` leads to from `state` (itself for a reentry), or ValueNone when the
    /// graph has no transition for it there (ignored or not permitted).
    member _.Target(state: 'State, trigger: 'Trigger) : 'State voption =
        match targets.TryGetValue(struct (state, trigger)) with
        | true, destination -> ValueSome destination
        | _ -> ValueNone

    /// True when the graph says `trigger` in `state` is accepted and changes nothing.
    member _.IsIgnored(state: 'State, trigger: 'Trigger) : bool =
        ignored.Contains(struct (state, trigger))

    /// The graph in Graphviz DOT, as Stateless draws it.
    member _.Dot() : string = UmlDotGraph.Format info
