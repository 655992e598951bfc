namespace NetStack.Core.Stack

open Stateless
open NetStack.Core

/// Where a connection request to the TCP forwarder stands, per 4-tuple: Absent (no request),
/// Waiting (a SYN no listener took, waiting for the user's decision, nothing answered), or
/// Connection (accepted: the TCP state model takes over from SYN-RECEIVED).
[<RequireQualifiedAccess>]
type ForwardRequestState =
    | Absent
    | Waiting
    | Connection

/// What happens to a 4-tuple's request.
[<RequireQualifiedAccess>]
type ForwardRequestTrigger =
    /// A SYN no listener takes, with room for one more waiting request.
    | Syn
    /// A SYN no listener takes, with the waiting requests at their cap: dropped unanswered.
    | SynOverCap
    /// The user accepts: the SYN,ACK goes out.
    | Accept
    /// The user refuses (a RST, an ICMP error, or nothing).
    | Refuse
    /// The decision timeout passed: the request goes, unanswered.
    | Timeout
    /// The forwarder stops: its waiting requests go, unanswered.
    | ForwarderGone

/// Where a UDP flow of the forwarder stands, per 4-tuple.
[<RequireQualifiedAccess>]
type UdpFlowState =
    | Absent
    | Open

/// What happens to a 4-tuple's flow.
[<RequireQualifiedAccess>]
type UdpFlowTrigger =
    /// A datagram from the peer no bound socket takes, with room for one more flow.
    | Datagram
    /// Such a datagram with the flows at their cap: dropped.
    | DatagramOverCap
    /// A reply goes out on the flow.
    | Reply
    /// No datagram either way for the idle timeout.
    | IdleTimeout
    /// The user closes the flow (or refuses it).
    | Close
    /// The forwarder stops.
    | ForwarderGone

/// The forwarders' per-4-tuple state graphs declared with Stateless: the formal models the TCP
/// endpoint table's requests and the UDP endpoint table's flows are checked against, as the TCP
/// StateModel and the NeighborModel are. Configured once; queries use lookup tables.
[<RequireQualifiedAccess>]
module ForwardModel =

    /// Declares the request graph on a fresh machine starting in `initial`.
    let internal configureRequest (initial: ForwardRequestState) =
        let machine = StateMachine<ForwardRequestState, ForwardRequestTrigger>(initial)

        machine
            .Configure(ForwardRequestState.Absent)
            .Permit(ForwardRequestTrigger.Syn, ForwardRequestState.Waiting)
            .Ignore(ForwardRequestTrigger.SynOverCap)
        |> ignore

        // Nothing is answered while the user decides: the SYN's retransmissions are absorbed
        // (there is room: the request itself holds its place).
        machine
            .Configure(ForwardRequestState.Waiting)
            .Ignore(ForwardRequestTrigger.Syn)
            .Ignore(ForwardRequestTrigger.SynOverCap)
            .Permit(ForwardRequestTrigger.Accept, ForwardRequestState.Connection)
            .Permit(ForwardRequestTrigger.Refuse, ForwardRequestState.Absent)
            .Permit(ForwardRequestTrigger.Timeout, ForwardRequestState.Absent)
            .Permit(ForwardRequestTrigger.ForwarderGone, ForwardRequestState.Absent)
        |> ignore

        // A SYN for an existing connection is that connection's (RFC 9293 §3.10.7.4).
        machine
            .Configure(ForwardRequestState.Connection)
            .Ignore(ForwardRequestTrigger.Syn)
            .Ignore(ForwardRequestTrigger.SynOverCap)
            .Ignore(ForwardRequestTrigger.ForwarderGone)
        |> ignore

        machine

    /// Declares the flow graph on a fresh machine starting in `initial`.
    let internal configureFlow (initial: UdpFlowState) =
        let machine = StateMachine<UdpFlowState, UdpFlowTrigger>(initial)

        machine
            .Configure(UdpFlowState.Absent)
            .Permit(UdpFlowTrigger.Datagram, UdpFlowState.Open)
            .Ignore(UdpFlowTrigger.DatagramOverCap)
        |> ignore

        // Traffic either way keeps a flow open (its idle timer starts again).
        machine
            .Configure(UdpFlowState.Open)
            .PermitReentry(UdpFlowTrigger.Datagram)
            .PermitReentry(UdpFlowTrigger.DatagramOverCap)
            .PermitReentry(UdpFlowTrigger.Reply)
            .Permit(UdpFlowTrigger.IdleTimeout, UdpFlowState.Absent)
            .Permit(UdpFlowTrigger.Close, UdpFlowState.Absent)
            .Permit(UdpFlowTrigger.ForwarderGone, UdpFlowState.Absent)
        |> ignore

        machine

    let private requests =
        lazy (StatelessModel(configureRequest ForwardRequestState.Absent))

    let private flows = lazy (StatelessModel(configureFlow UdpFlowState.Absent))

    /// Where `trigger` takes a request in `state`: the target, itself for an ignore, or
    /// ValueNone when the model does not permit the trigger there.
    let requestAfter (state: ForwardRequestState) (trigger: ForwardRequestTrigger) =
        match requests.Value.Target(state, trigger) with
        | ValueSome t -> ValueSome t
        | ValueNone when requests.Value.IsIgnored(state, trigger) -> ValueSome state
        | ValueNone -> ValueNone

    /// Where `trigger` takes a flow in `state` (as `requestAfter`).
    let flowAfter (state: UdpFlowState) (trigger: UdpFlowTrigger) =
        match flows.Value.Target(state, trigger) with
        | ValueSome t -> ValueSome t
        | ValueNone when flows.Value.IsIgnored(state, trigger) -> ValueSome state
        | ValueNone -> ValueNone

    /// The request graph in Graphviz DOT (committed as docs/forward-request-states.dot).
    let requestDot () : string = requests.Value.Dot()

    /// The flow graph in Graphviz DOT (committed as docs/udp-flow-states.dot).
    let flowDot () : string = flows.Value.Dot()
