namespace NetStack.Core.Stack

open System
open System.Collections.Generic
open System.Runtime.InteropServices

/// A bound UDP port: on one of our addresses, or on every address of its families.
[<Sealed; AllowNullLiteral>]
type UdpEndpoint internal (address: IpAddr voption, ipv4: bool, ipv6: bool, port: uint16) =
    /// The one address it takes datagrams for, or ValueNone for every address of its families.
    member _.Address = address
    /// Takes IPv4 datagrams.
    member _.Ipv4 = ipv4
    /// Takes IPv6 datagrams.
    member _.Ipv6 = ipv6
    /// The port.
    member _.Port = port
    /// What the engine attached (its socket object).
    member val Owner: obj = null with get, set

/// A UDP flow of the forwarder (any-destination mode): the datagrams between one peer endpoint
/// (`Key.Remote`, `Key.RemotePort`) and one destination endpoint it sent to (`Key.Local`,
/// `Key.LocalPort`, any address), both ways. It ends after the table's idle timeout without a
/// datagram either way, or when its user closes it.
[<Sealed; AllowNullLiteral>]
type UdpFlowEntry internal (key: EndpointKey, now: int64) =
    [<DefaultValue>]
    val mutable internal Closed: bool

    /// When a datagram last went either way.
    member val LastActive = now with get, set

    /// The 4-tuple from our side: `Local` is the original destination.
    member _.Key = key
    /// Not yet expired or closed.
    member this.IsOpen = not this.Closed
    /// What the engine attached (its flow object).
    member val Owner: obj = null with get, set

/// Where a received datagram goes (`UdpEndpointTable.Classify`).
type UdpVerdict =
    /// To the bound socket.
    | Socket = 0
    /// To an existing flow of the forwarder.
    | Flow = 1
    /// To a new flow of the forwarder: the engine attaches its flow object and offers it.
    | NewFlow = 2
    /// To nobody: answer with an ICMP port unreachable (RFC 1122 §4.1.3.1).
    | PortUnreachable = 3
    /// To nobody, silently: to a broadcast address (RFC 1122 §3.2.2), or the forwarder is at
    /// its flow cap.
    | Drop = 4

/// The UDP port table: which socket a datagram or an ICMP error about one of our datagrams
/// belongs to, what a datagram for no socket gets (RFC 1122 §4.1.3.1: port unreachable, but
/// never for a broadcast, RFC 1122 §3.2.2), and ephemeral ports (RFC 6056 §3.3.1). Sans-I/O and
/// owned by the engine loop: not thread-safe.
[<Sealed>]
type UdpEndpointTable() =
    let bound4 = Dictionary<uint16, UdpEndpoint>()
    let bound6 = Dictionary<uint16, UdpEndpoint>()
    // The forwarder's flows, and when each is next looked at for expiry (its last activity
    // plus the idle timeout as of its last check).
    let flows = Dictionary<EndpointKey, UdpFlowEntry>()
    let flowChecks = PriorityQueue<UdpFlowEntry, int64>()
    let mutable forwarding = false
    let mutable maxFlows = 0
    let mutable idleTimeout = 0L

    let closeFlow (f: UdpFlowEntry) =
        if not f.Closed then
            f.Closed <- true
            flows.Remove f.Key |> ignore

    let free (v4: bool) (v6: bool) (port: uint16) =
        not (v4 && bound4.ContainsKey port) && not (v6 && bound6.ContainsKey port)

    let bind (address: IpAddr voption) (v4: bool) (v6: bool) (port: int) (random: int) =
        if port < 0 || port > 65535 then
            invalidArg (nameof port) "A port lies in 0..65535."

        let chosen =
            if port <> 0 then
                port
            else
                EphemeralPorts.pick (free v4 v6) random

        if chosen < 0 || not (free v4 v6 (uint16 chosen)) then
            null
        else
            let e = UdpEndpoint(address, v4, v6, uint16 chosen)

            if v4 then
                bound4[uint16 chosen] <- e

            if v6 then
                bound6[uint16 chosen] <- e

            e

    let find (local: IpAddr) (port: uint16) =
        match (if local.IsIpv6 then bound6 else bound4).TryGetValue port with
        | true, e when e.Address.IsNone || IpAddr.Compare(e.Address.Value, local) = 0 -> e
        | _ -> null

    /// Binds `port` (0: an ephemeral one, drawn with `random`) on every address of the families
    /// given. Null when it is taken for one of them (AddressAlreadyInUse).
    member _.BindAll(ipv4: bool, ipv6: bool, port: int, random: int) : UdpEndpoint =
        if not ipv4 && not ipv6 then
            invalidArg (nameof ipv4) "A socket takes at least one family."

        bind ValueNone ipv4 ipv6 port random

    /// Binds (`address`, `port`) (0: an ephemeral port, drawn with `random`). Null when the port
    /// is taken for the address's family (AddressAlreadyInUse).
    member _.BindOn(address: IpAddr, port: int, random: int) : UdpEndpoint =
        bind (ValueSome address) (not address.IsIpv6) address.IsIpv6 port random

    /// Frees `endpoint`'s port.
    member _.Unbind(endpoint: UdpEndpoint) =
        let drop (table: Dictionary<uint16, UdpEndpoint>) =
            match table.TryGetValue endpoint.Port with
            | true, e when obj.ReferenceEquals(e, endpoint) -> table.Remove endpoint.Port |> ignore
            | _ -> ()

        drop bound4
        drop bound6

    /// The socket a datagram to (destination, port) goes to, or null: then the caller answers
    /// with an ICMP port unreachable exactly when `PortUnreachableFor` says so.
    member _.Find(destination: IpAddr, port: uint16) : UdpEndpoint = find destination port

    /// RFC 1122 §4.1.3.1: a datagram for no socket gets a port unreachable, unless it was sent
    /// to a broadcast address (RFC 1122 §3.2.2: no ICMP error about a broadcast).
    member _.PortUnreachableFor(toBroadcast: bool) = not toBroadcast

    /// The socket an ICMP error about one of our datagrams from (source, sourcePort) concerns
    /// (RFC 1122 §4.1.3.3), or null.
    member _.ForError(source: IpAddr, sourcePort: uint16) : UdpEndpoint = find source sourcePort

    /// Every bound socket (each once).
    member _.Endpoints: UdpEndpoint array =
        Seq.append bound4.Values bound6.Values |> Seq.distinct |> Seq.toArray

    /// Forwarding is on (`ForwardFlows`).
    member _.IsForwarding = forwarding

    /// The forwarder's open flows.
    member _.FlowCount = flows.Count

    /// Turns the forwarder on (any-destination mode): datagrams no bound socket takes, to any
    /// address and port, go to flows (at most `maximum` at once), each ending `idle`
    /// microseconds after its last datagram either way. False when it is on already.
    member _.ForwardFlows(maximum: int, idle: int64) : bool =
        if maximum < 1 || idle < 1L then
            invalidArg (nameof maximum) "The flow cap and the idle timeout must be positive."

        if forwarding then
            false
        else
            forwarding <- true
            maxFlows <- maximum
            idleTimeout <- idle
            true

    /// Turns the forwarder off: every flow ends. Returns them.
    member _.StopForwarding() : UdpFlowEntry array =
        let ended = Seq.toArray flows.Values

        for f in ended do
            closeFlow f

        flowChecks.Clear()
        forwarding <- false
        ended

    /// Where a datagram from (source, sourcePort) to (destination, destinationPort) goes, at
    /// `now`. `foreign`: the destination is not one of our addresses (any-destination mode), so
    /// no bound socket takes it. For Socket, `endpoint` is the socket; for Flow and NewFlow,
    /// `flow` is the flow (its activity noted). `note` names a counter for the two refusals
    /// (null otherwise).
    member _.Classify
        (
            now: int64,
            source: IpAddr,
            sourcePort: uint16,
            destination: IpAddr,
            destinationPort: uint16,
            foreign: bool,
            toBroadcast: bool,
            [<Out>] endpoint: byref<UdpEndpoint>,
            [<Out>] flow: byref<UdpFlowEntry>,
            [<Out>] note: byref<string>
        ) : UdpVerdict =
        endpoint <- if foreign then null else find destination destinationPort
        flow <- null
        note <- null

        if not (isNull endpoint) then
            UdpVerdict.Socket
        elif toBroadcast then
            // RFC 1122 §3.2.2: no ICMP error about a broadcast; nor is a broadcast forwarded.
            note <- "udp.drop.no-socket"
            UdpVerdict.Drop
        elif not forwarding then
            note <- "udp.drop.no-socket"
            UdpVerdict.PortUnreachable
        else
            let key =
                {
                    Local = destination
                    LocalPort = destinationPort
                    Remote = source
                    RemotePort = sourcePort
                }

            match flows.TryGetValue key with
            | true, f ->
                f.LastActive <- now
                flow <- f
                UdpVerdict.Flow
            | _ when flows.Count >= maxFlows ->
                note <- "udp.forward.drop.flows-full"
                UdpVerdict.Drop
            | _ ->
                let f = UdpFlowEntry(key, now)
                flows[key] <- f
                flowChecks.Enqueue(f, now + idleTimeout)
                flow <- f
                UdpVerdict.NewFlow

    /// A datagram went out on `flow` at `now`: it stays open.
    member _.Touch(flow: UdpFlowEntry, now: int64) =
        if now > flow.LastActive then
            flow.LastActive <- now

    /// The flow's user closed it.
    member _.Close(flow: UdpFlowEntry) = closeFlow flow

    /// The flow an ICMP error about one of its datagrams (quoting our `source` endpoint and the
    /// peer's `destination` endpoint) concerns, or null.
    member _.FlowForError
        (source: IpAddr, sourcePort: uint16, destination: IpAddr, destinationPort: uint16)
        : UdpFlowEntry =
        match
            flows.TryGetValue
                {
                    Local = source
                    LocalPort = sourcePort
                    Remote = destination
                    RemotePort = destinationPort
                }
        with
        | true, f -> f
        | _ -> null

    /// When `ExpireFlows` next has something to look at (Int64.MaxValue: never).
    member _.NextDeadline =
        match flowChecks.TryPeek() with
        | true, _, at -> at
        | _ -> Int64.MaxValue

    /// Ends the flows idle for the timeout by `now`, adding them to `expired`.
    member _.ExpireFlows(now: int64, expired: List<UdpFlowEntry>) =
        let mutable f = null
        let mutable at = 0L

        while flowChecks.TryPeek(&f, &at) && at <= now do
            flowChecks.Dequeue() |> ignore

            if not f.Closed then
                let due = f.LastActive + idleTimeout

                if due <= now then
                    closeFlow f
                    expired.Add f
                else
                    flowChecks.Enqueue(f, due)
