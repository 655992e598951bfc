namespace NetStack.Core.Stack

open System
open System.Collections.Generic

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

/// The UDP port table: which socket a datagram or an ICMP error about one of our datagrams
/// belongs to, what a datagram for no socket gets (RFC 1122 §4.1.3.1: port unreachable, but
/// never for a broadcast, RFC 1122 §3.2.2), and ephemeral ports (RFC 6056 §3.3.1). Sans-I/O and
/// owned by the engine loop: not thread-safe.
[<Sealed>]
type UdpEndpointTable() =
    let bound4 = Dictionary<uint16, UdpEndpoint>()
    let bound6 = Dictionary<uint16, UdpEndpoint>()

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
