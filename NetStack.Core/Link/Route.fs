namespace NetStack.Core.Link

open System
open NetStack.Core.Wire

/// How an outgoing IP packet leaves the interface.
type RouteKind =
    /// To ff:ff:ff:ff:ff:ff: the limited broadcast or the prefix's directed broadcast (RFC 919, RFC 922).
    | Broadcast = 0
    /// To the group's MAC (RFC 1112 §6.4, RFC 2464 §7).
    | Multicast = 1
    /// To a neighbor: the destination itself when on-link, else a router.
    | Neighbor = 2
    /// Off-link with no router to send it to.
    | NoRoute = 3

/// Next-hop choice for a host on one link (RFC 1122 §3.3.1 for IPv4, RFC 4861 §5.2 for IPv6):
/// on-link destinations are their own next hop, everything else goes to a router.
[<RequireQualifiedAccess>]
module Route =

    /// The IPv4 netmask of a prefix length (0..32).
    let mask4 (prefixLength: int) : uint32 =
        if prefixLength <= 0 then 0u
        elif prefixLength >= 32 then UInt32.MaxValue
        else UInt32.MaxValue <<< (32 - prefixLength)

    /// IPv4: the limited broadcast and the directed broadcast of our prefix (not for /32 or /31
    /// style masks whose host part is all of it) go to broadcast; 224/4 to its group MAC; our
    /// prefix to the destination; the rest to the gateway, when there is one.
    let choose4
        (ours: Ipv4Address)
        (mask: uint32)
        (gateway: Ipv4Address voption)
        (destination: Ipv4Address)
        : struct (RouteKind * Ipv4Address) =
        let d = destination.Value

        if
            d = UInt32.MaxValue
            || (mask <> UInt32.MaxValue
                && (d &&& ~~~mask) = ~~~mask
                && ((d ^^^ ours.Value) &&& mask) = 0u)
        then
            struct (RouteKind.Broadcast, destination)
        elif (d >>> 28) = 0xEu then
            struct (RouteKind.Multicast, destination)
        elif ((d ^^^ ours.Value) &&& mask) = 0u then
            struct (RouteKind.Neighbor, destination)
        else
            match gateway with
            | ValueSome g -> struct (RouteKind.Neighbor, g)
            | ValueNone -> struct (RouteKind.NoRoute, destination)

    /// Whether `destination` shares the first `prefixLength` bits of `prefix` (0..128).
    let inPrefix6 (prefix: Ipv6Address) (prefixLength: int) (destination: Ipv6Address) : bool =
        let highMask =
            if prefixLength >= 64 then UInt64.MaxValue
            elif prefixLength <= 0 then 0UL
            else UInt64.MaxValue <<< (64 - prefixLength)

        let lowMask =
            if prefixLength <= 64 then 0UL
            elif prefixLength >= 128 then UInt64.MaxValue
            else UInt64.MaxValue <<< (128 - prefixLength)

        ((destination.High ^^^ prefix.High) &&& highMask) = 0UL
        && ((destination.Low ^^^ prefix.Low) &&& lowMask) = 0UL

    /// RFC 4861 §5.2: on-link are link-local addresses (fe80::/10), the configured prefix (a
    /// prefix length of 0 makes everything on-link), and the /64 prefixes a router advertised
    /// with the L flag (§6.3.4) while their autoconfigured addresses last.
    let onLink6
        (ours: Ipv6Address)
        (prefixLength: int)
        (autoconfigured: SlaacAddress list)
        (destination: Ipv6Address)
        : bool =
        if Ndp.isLinkLocal destination || prefixLength = 0 then
            true
        else
            let mutable found = false
            let mutable rest = autoconfigured

            while not found && not rest.IsEmpty do
                let a = rest.Head

                if a.OnLink && a.Prefix.High = destination.High then
                    found <- true

                rest <- rest.Tail

            found || inPrefix6 ours prefixLength destination

    /// IPv6: multicast to its group MAC; on-link to the destination; else the configured gateway,
    /// or the router of the last router advertisement with a non-zero lifetime (§6.3.6).
    let choose6
        (ours: Ipv6Address)
        (prefixLength: int)
        (autoconfigured: SlaacAddress list)
        (gateway: Ipv6Address voption)
        (router: Ipv6Address voption)
        (destination: Ipv6Address)
        : struct (RouteKind * Ipv6Address) =
        if destination.IsMulticast then
            struct (RouteKind.Multicast, destination)
        elif onLink6 ours prefixLength autoconfigured destination then
            struct (RouteKind.Neighbor, destination)
        else
            match gateway, router with
            | ValueSome g, _ -> struct (RouteKind.Neighbor, g)
            | ValueNone, ValueSome r -> struct (RouteKind.Neighbor, r)
            | ValueNone, ValueNone -> struct (RouteKind.NoRoute, destination)
