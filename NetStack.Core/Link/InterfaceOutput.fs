namespace NetStack.Core.Link

open System
open System.Buffers.Binary
open NetStack.Core.Wire

/// The interface's actions and its way out (used by Interface): neighbor cache actions as frames
/// and counters, next-hop resolution with its memo, autoconfiguration steps, the random draws.
module internal InterfaceOutput =

    // splitmix64: a draw in [0, 1) and the next generator state.
    let draw (rng: uint64) : struct (float * uint64) =
        let next = rng + 0x9E3779B97F4A7C15UL
        let mutable z = next
        z <- (z ^^^ (z >>> 30)) * 0xBF58476D1CE4E5B9UL
        z <- (z ^^^ (z >>> 27)) * 0x94D049BB133111EBUL
        z <- z ^^^ (z >>> 31)
        struct (float (z >>> 11) * (1.0 / 9007199254740992.0), next)

    let event kind mac (a4: Ipv4Address) (a6: Ipv6Address) =
        {
            Kind = kind
            Mac = mac
            Address4 = a4
            Address6 = a6
        }

    /// Checks `settings` and makes an interface at `now` (throws ArgumentException naming the
    /// first bad setting). Duplicate address detection of Address6 starts at `now`; Ready is
    /// reported by the first `handleTimer` after it passed.
    let address4 (s: InterfaceState) =
        match s.Config.Address4 with
        | ValueSome a -> a
        | ValueNone -> Ipv4Address.Any

    let address6 (s: InterfaceState) =
        match s.Config.Address6 with
        | ValueSome a -> a
        | ValueNone -> Ipv6Address.Any

    let autoconfiguredList (s: InterfaceState) =
        match s.Slaac with
        | ValueSome slaac -> slaac.Addresses
        | ValueNone -> []

    /// Whether the interface speaks IPv6: it has a configured IPv6 address, or forms a
    /// link-local or autoconfigured one.
    let hasIpv6 (s: InterfaceState) =
        s.Config.Address6.IsSome || s.Slaac.IsSome

    /// The source of our neighbor and router solicitations: the link-local address once it is
    /// ours (RFC 4861 §4.1, §4.3 and §7.2.2 allow any address of the interface; the link-local
    /// one is valid on the link whatever prefixes come and go), else the configured address,
    /// else any assigned autoconfigured one, else the unspecified address (only a router
    /// solicitation may go from it, §4.1).
    let solicitationSource (s: InterfaceState) =
        match s.Slaac with
        | ValueSome slaac ->
            match Slaac.linkLocal slaac with
            | ValueSome ll -> ll
            | ValueNone ->
                match s.Config.Address6 with
                | ValueSome a -> a
                | ValueNone ->
                    match Slaac.assigned slaac with
                    | [||] -> Ipv6Address.Any
                    | assigned -> assigned.[0]
        | ValueNone -> address6 s

    // ------------------------------------------------------------------------------------------
    // Neighbor cache actions
    // ------------------------------------------------------------------------------------------

    /// The counter of a neighbor cache drop.
    let dropCounter (reason: NeighborDropReason) =
        match reason with
        | NeighborDropReason.QueueFull -> "link.drop.queue-full"
        | NeighborDropReason.QueueBytesFull -> "link.drop.queue-bytes-full"
        | NeighborDropReason.Unresolved -> "link.drop.unresolved"
        | NeighborDropReason.CacheFull -> "link.drop.cache-full"
        | _ -> "link.drop.other"

    // Builds IPv6 + ICMPv6 (already written at Scratch[40..]) and returns the packet's length.
    let ipv6Control (s: InterfaceState) (source: Ipv6Address) (destination: Ipv6Address) (icmp: int) =
        let header =
            { Ipv6.header source destination IpProtocol.Icmpv6 with
                PayloadLength = icmp
                HopLimit = Ndp.HopLimit
            }

        Ipv6.write header (Span s.Scratch) |> ignore
        Ipv6.HeaderLength + icmp

    let applyArp
        (s: byref<InterfaceState>)
        (result: NeighborCache<Ipv4Address> * NeighborAction<Ipv4Address> list)
        (sink: ILinkSink)
        =
        let cache, actions = result

        if not (obj.ReferenceEquals(cache, s.Arp)) then
            s <- { s with Arp = cache }

        for action in actions do
            match action with
            | Transmit(mac, packet) ->
                sink.Transmit(mac, EtherType.Ipv4, ReadOnlySpan packet)
                sink.Count "link.released"
            | Solicit(target, unicast) ->
                let n = Arp.write (Arp.request s.Config.Mac (address4 s) target) (Span s.Scratch)

                let destination =
                    match unicast with
                    | ValueSome mac -> mac
                    | ValueNone -> MacAddress.Broadcast

                sink.Transmit(destination, EtherType.Arp, ReadOnlySpan(s.Scratch, 0, n))
                sink.Count "arp.request.sent"
            | Dropped(_, reason) -> sink.Count(dropCounter reason)

    let applyNdp
        (s: byref<InterfaceState>)
        (result: NeighborCache<Ipv6Address> * NeighborAction<Ipv6Address> list)
        (sink: ILinkSink)
        =
        let cache, actions = result

        if not (obj.ReferenceEquals(cache, s.Ndp)) then
            s <- { s with Ndp = cache }

        for action in actions do
            match action with
            | Transmit(mac, packet) ->
                sink.Transmit(mac, EtherType.Ipv6, ReadOnlySpan packet)
                sink.Count "link.released"
            | Solicit(target, unicast) ->
                // Multicast to the solicited-node group, or a unicast probe (RFC 4861 §7.2.2, §7.3.3).
                let source = solicitationSource s

                let destination = if unicast.IsSome then target else Ndp.solicitedNode target

                let icmp =
                    Ndp.writeNeighborSolicitation
                        source
                        destination
                        target
                        (ValueSome s.Config.Mac)
                        (Span(s.Scratch, Ipv6.HeaderLength, s.Scratch.Length - Ipv6.HeaderLength))

                let n = ipv6Control s source destination icmp

                let mac =
                    match unicast with
                    | ValueSome mac -> mac
                    | ValueNone -> MacAddress.OfIpv6Multicast destination

                sink.Transmit(mac, EtherType.Ipv6, ReadOnlySpan(s.Scratch, 0, n))
                sink.Count "ndp.ns.sent"
            | Dropped(_, reason) -> sink.Count(dropCounter reason)

    // ------------------------------------------------------------------------------------------
    // Outgoing IP packets
    // ------------------------------------------------------------------------------------------

    /// The IPv4 gateway towards `destination`: with DHCP's classless static routes (RFC 3442)
    /// the router of the longest matching route (its destination itself for router 0.0.0.0, an
    /// on-link route), none when no route matches; otherwise the configured or leased gateway.
    let gateway4 (state: InterfaceState) (destination: Ipv4Address) : Ipv4Address voption =
        let routes = state.Config.Routes4

        if routes.Length = 0 then
            state.Config.Gateway4
        else
            let mutable best = -1
            let mutable router = ValueNone

            for r in routes do
                if
                    r.PrefixLength > best
                    && ((destination.Value ^^^ r.Destination.Value) &&& Route.mask4 r.PrefixLength) = 0u
                then
                    best <- r.PrefixLength

                    router <-
                        if r.Router.Value = 0u then
                            ValueSome destination
                        else
                            ValueSome r.Router

            router

    let send mac etherType =
        {
            Kind = NextHopKind.Send
            Mac = mac
            EtherType = etherType
        }

    let other kind =
        {
            Kind = kind
            Mac = MacAddress.Zero
            EtherType = 0us
        }

    /// The MAC to frame an outgoing IP packet with (`head`: at least its IP header): broadcast,
    /// a group MAC, or its next hop's resolved MAC (RFC 1122 §3.3.1, RFC 4861 §5.2). Pending: the
    /// next hop is not resolved yet or is STALE, so `queue` a copy of the packet. Dropped: no
    /// route (counted). A repeated resolved next hop costs no allocation.
    let resolve (now: int64) (head: ReadOnlySpan<byte>) (state: byref<InterfaceState>) (sink: ILinkSink) : NextHop =
        ignore now
        let version = if head.IsEmpty then 0 else int head.[0] >>> 4

        if version = 4 && head.Length >= 20 then
            let destination = Ipv4Address.Read(head.Slice 16)

            let struct (kind, hop) =
                Route.choose4 (address4 state) state.Config.Mask4 (gateway4 state destination) destination

            match kind with
            | RouteKind.Broadcast -> send MacAddress.Broadcast EtherType.Ipv4
            | RouteKind.Multicast -> send (MacAddress.OfIpv4Multicast destination) EtherType.Ipv4
            | RouteKind.NoRoute ->
                sink.Count "link.drop.no-route"
                other NextHopKind.Dropped
            | _ ->
                if
                    obj.ReferenceEquals(state.Memo4Cache, state.Arp)
                    && state.Memo4Hop.Value = hop.Value
                then
                    send state.Memo4Mac EtherType.Ipv4
                else
                    match NeighborCache.tryResolve hop state.Arp with
                    | ValueSome mac ->
                        state <-
                            { state with
                                Memo4Cache = state.Arp
                                Memo4Hop = hop
                                Memo4Mac = mac
                            }

                        send mac EtherType.Ipv4
                    | ValueNone -> other NextHopKind.Pending
        elif version = 6 && head.Length >= Ipv6.HeaderLength then
            let destination = Ipv6Address.Read(head.Slice 24)

            let struct (kind, hop) =
                Route.choose6
                    (address6 state)
                    state.Config.PrefixLength6
                    (autoconfiguredList state)
                    state.Config.Gateway6
                    state.Router6
                    destination

            match kind with
            | RouteKind.Multicast -> send (MacAddress.OfIpv6Multicast destination) EtherType.Ipv6
            | RouteKind.NoRoute ->
                sink.Count "link.drop.no-route"
                other NextHopKind.Dropped
            | _ ->
                if
                    obj.ReferenceEquals(state.Memo6Cache, state.Ndp)
                    && state.Memo6Hop.High = hop.High
                    && state.Memo6Hop.Low = hop.Low
                then
                    send state.Memo6Mac EtherType.Ipv6
                else
                    match NeighborCache.tryResolve hop state.Ndp with
                    | ValueSome mac ->
                        state <-
                            { state with
                                Memo6Cache = state.Ndp
                                Memo6Hop = hop
                                Memo6Mac = mac
                            }

                        send mac EtherType.Ipv6
                    | ValueNone -> other NextHopKind.Pending
        else
            other NextHopKind.NotIp

    /// Sends `packet` (a whole, ordinary IP packet the interface may keep) by way of its next
    /// hop's neighbor entry (RFC 4861 §7.2.2): queued behind a resolution (bounded; drops are
    /// counted), passed through a STALE entry (which starts DELAY), or transmitted when resolved.
    let queue (now: int64) (packet: byte[]) (state: byref<InterfaceState>) (sink: ILinkSink) : unit =
        let next = resolve now (ReadOnlySpan packet) &state sink

        match next.Kind with
        | NextHopKind.Send -> sink.Transmit(next.Mac, next.EtherType, ReadOnlySpan packet)
        | NextHopKind.Pending ->
            if int packet.[0] >>> 4 = 4 then
                let destination = Ipv4Address.Read(ReadOnlySpan(packet, 16, 4))

                let struct (_, hop) =
                    Route.choose4 (address4 state) state.Config.Mask4 (gateway4 state destination) destination

                applyArp &state (NeighborCache.send now hop packet state.Arp) sink
            else
                let struct (_, hop) =
                    Route.choose6
                        (address6 state)
                        state.Config.PrefixLength6
                        (autoconfiguredList state)
                        state.Config.Gateway6
                        state.Router6
                        (Ipv6Address.Read(ReadOnlySpan(packet, 24, 16)))

                applyNdp &state (NeighborCache.send now hop packet state.Ndp) sink
        | _ -> ()

    // ------------------------------------------------------------------------------------------
    // Autoconfiguration
    // ------------------------------------------------------------------------------------------

    let slaacCounter (e: SlaacEvent) =
        match e with
        | Formed _ -> "ndp.slaac.formed"
        | Assigned _ -> "ndp.slaac.assigned"
        | Deprecated _ -> "ndp.slaac.deprecated"
        | Removed _ -> "ndp.slaac.removed"
        | Duplicate _ -> "ndp.slaac.duplicate"
        | Refreshed _ -> "ndp.slaac.refreshed"
        | TwoHourRule _ -> "ndp.slaac.two-hour-rule"
        | Ignored reason -> "ndp.slaac.ignored." + reason
        | _ -> "ndp.slaac.other"

    // A DAD probe (RFC 4862 §5.4.2): from the unspecified address to the solicited-node group,
    // without a source link-layer address option.
    let sendDadProbe (s: InterfaceState) (target: Ipv6Address) (sink: ILinkSink) =
        let group = Ndp.solicitedNode target

        let icmp =
            Ndp.writeNeighborSolicitation
                Ipv6Address.Any
                group
                target
                ValueNone
                (Span(s.Scratch, Ipv6.HeaderLength, s.Scratch.Length - Ipv6.HeaderLength))

        let n = ipv6Control s Ipv6Address.Any group icmp
        sink.Transmit(MacAddress.OfIpv6Multicast group, EtherType.Ipv6, ReadOnlySpan(s.Scratch, 0, n))
        sink.Count "ndp.dad.sent"

    let applySlaac (s: byref<InterfaceState>) (result: SlaacState * SlaacEvent list) (sink: ILinkSink) =
        let next, events = result

        let before =
            match s.Slaac with
            | ValueSome slaac -> slaac.Addresses
            | ValueNone -> []

        s <- { s with Slaac = ValueSome next }

        for e in events do
            match e with
            | Probe address -> sendDadProbe s address sink
            | SolicitRouters ->
                // RFC 4861 §6.3.7: to all routers, from our address with our MAC; from the
                // unspecified address (no address is ours yet) without the MAC (§4.1).
                let source = solicitationSource s

                let icmp =
                    Ndp.writeRouterSolicitation
                        source
                        Ndp.AllRouters
                        (if source = Ipv6Address.Any then
                             ValueNone
                         else
                             ValueSome s.Config.Mac)
                        (Span(s.Scratch, Ipv6.HeaderLength, s.Scratch.Length - Ipv6.HeaderLength))

                let n = ipv6Control s source Ndp.AllRouters icmp

                sink.Transmit(MacAddress.OfIpv6Multicast Ndp.AllRouters, EtherType.Ipv6, ReadOnlySpan(s.Scratch, 0, n))

                sink.Count "ndp.rs.sent"
            | e -> sink.Count(slaacCounter e)

        if not (obj.ReferenceEquals(before, next.Addresses)) then
            sink.Event(event LinkEventKind.AddressesChanged MacAddress.Zero Ipv4Address.Any Ipv6Address.Any)

    let tryFindAutoconfigured (s: InterfaceState) (address: Ipv6Address) : SlaacAddress voption =
        let mutable found = ValueNone
        let mutable rest = autoconfiguredList s

        while found.IsNone && not rest.IsEmpty do
            if rest.Head.Address = address then
                found <- ValueSome rest.Head

            rest <- rest.Tail

        found

    // ------------------------------------------------------------------------------------------
    // ARP (RFC 826) and conflict defence (RFC 5227)
    // ------------------------------------------------------------------------------------------

    let announce (s: InterfaceState) (sink: ILinkSink) =
        let n = Arp.write (Arp.announcement s.Config.Mac (address4 s)) (Span s.Scratch)
        sink.Transmit(MacAddress.Broadcast, EtherType.Arp, ReadOnlySpan(s.Scratch, 0, n))

    // ------------------------------------------------------------------------------------------
    // DHCP (RFC 2131)
    // ------------------------------------------------------------------------------------------

    // Builds IPv4 + UDP (68 → 67) + the message in Scratch and returns the packet's length.
    let dhcpPacket (s: InterfaceState) (m: DhcpMessage) (destination: Ipv4Address) =
        let scratch = s.Scratch
        let n = DhcpMessage.write m (Span(scratch, 28, scratch.Length - 28))

        let udp =
            Udp.buildV4
                (Span(scratch, 20, scratch.Length - 20))
                m.ClientAddress
                destination
                DhcpMessage.ClientPort
                DhcpMessage.ServerPort
                (ReadOnlySpan(scratch, 28, n))

        let header = Ipv4.header m.ClientAddress destination IpProtocol.Udp

        Ipv4.write header ReadOnlySpan.Empty udp (Span scratch) + udp

    /// Carries out the DHCP client's actions: messages and ARP probes out, the lease into the
    /// interface's configuration (address, mask, gateway or classless routes), LeaseChanged.
    let applyDhcp (now: int64) (s: byref<InterfaceState>) (result: DhcpClient * DhcpAction list) (sink: ILinkSink) =
        let client, actions = result
        s <- { s with Dhcp = ValueSome client }

        for action in actions do
            match action with
            | DhcpAction.Broadcast m ->
                let n = dhcpPacket s m (Ipv4Address UInt32.MaxValue)
                sink.Transmit(MacAddress.Broadcast, EtherType.Ipv4, ReadOnlySpan(s.Scratch, 0, n))
            | DhcpAction.Unicast(m, server) ->
                let n = dhcpPacket s m server
                queue now (Array.sub s.Scratch 0 n) &s sink
            | DhcpAction.Probe address ->
                // RFC 5227 §2.1.1: sender IP 0.0.0.0, target the candidate, broadcast.
                let n =
                    Arp.write (Arp.request s.Config.Mac Ipv4Address.Any address) (Span s.Scratch)

                sink.Transmit(MacAddress.Broadcast, EtherType.Arp, ReadOnlySpan(s.Scratch, 0, n))
            | DhcpAction.Announce address ->
                let n = Arp.write (Arp.announcement s.Config.Mac address) (Span s.Scratch)
                sink.Transmit(MacAddress.Broadcast, EtherType.Arp, ReadOnlySpan(s.Scratch, 0, n))
            | DhcpAction.Bind lease ->
                s <-
                    { s with
                        Config =
                            { s.Config with
                                Address4 = ValueSome lease.Address
                                Mask4 = Route.mask4 lease.PrefixLength
                                // RFC 3442 §2: with classless routes, option 3 is ignored.
                                Gateway4 =
                                    if lease.ClasslessRoutes.Length = 0 && lease.Routers.Length > 0 then
                                        ValueSome lease.Routers.[0]
                                    else
                                        ValueNone
                                Routes4 = lease.ClasslessRoutes
                            }
                        Memo4Cache = null
                    }

                sink.Event(event LinkEventKind.LeaseChanged MacAddress.Zero lease.Address Ipv6Address.Any)
            | DhcpAction.Unbind ->
                s <-
                    { s with
                        Config =
                            { s.Config with
                                Address4 = ValueNone
                                Mask4 = 0u
                                Gateway4 = ValueNone
                                Routes4 = [||]
                            }
                        Memo4Cache = null
                    }

                sink.Event(event LinkEventKind.LeaseChanged MacAddress.Zero Ipv4Address.Any Ipv6Address.Any)
            | DhcpAction.Count counter -> sink.Count counter
