namespace NetStack.Core.Link

open System
open System.Buffers.Binary
open NetStack.Core.Wire

open NetStack.Core.Link.InterfaceOutput

/// Received ARP and Neighbor Discovery messages (used by Interface.receive): the responders,
/// RFC 5227 conflict defence, DAD conflicts, router advertisements and autoconfiguration.
module internal InterfaceInput =

    /// Prefix options read from one router advertisement at most.
    [<Literal>]
    let MaxPrefixesPerAdvertisement = 32

    /// DNS servers learned from router advertisements kept at most.
    [<Literal>]
    let MaxRdnss = 3

    // ------------------------------------------------------------------------------------------
    // ARP (RFC 826) and conflict defence (RFC 5227)
    // ------------------------------------------------------------------------------------------

    let onArp
        (now: int64)
        (payload: ReadOnlySpan<byte>)
        (frameSource: MacAddress)
        (s: byref<InterfaceState>)
        (sink: ILinkSink)
        =
        match Arp.parse payload with
        | Error _ -> sink.Count "arp.drop.malformed"
        | Ok arp ->
            sink.Count "arp.received"
            let ourMac = s.Config.Mac

            // RFC 5227 §2.1.1: while DHCP probes an address, any ARP packet from another host
            // with it as sender, or another host's probe for it, is a conflict.
            match s.Dhcp with
            | ValueSome client ->
                match Dhcp.probing client with
                | ValueSome candidate when
                    arp.SenderMac <> ourMac
                    && (arp.SenderIp = candidate
                        || (arp.SenderIp.Value = 0u
                            && arp.TargetIp = candidate
                            && arp.Operation = Arp.Operation.Request))
                    ->
                    sink.Count "dhcp.conflict"
                    applyDhcp now &s (Dhcp.conflict now client) sink
                | _ -> ()
            | ValueNone -> ()

            match s.Config.Address4 with
            | ValueSome ours when arp.SenderMac.Value <> ourMac.Value && not arp.SenderMac.IsMulticast ->
                if Arp.isConflict ours ourMac arp then
                    // Someone else claims our address (RFC 5227 §2.4 c): we keep it, and announce
                    // it once per DEFEND_INTERVAL at most; conflicts in between are only counted,
                    // and reported once per interval so forged packets cannot flood the log.
                    sink.Count "arp.conflict"
                    let interval = int64 Arp.DefendIntervalSeconds * 1_000_000L

                    if Arp.shouldDefend now s.LastDefence interval then
                        s <- { s with LastDefence = ValueSome now }
                        announce s sink
                        sink.Count "arp.defended"
                        sink.Event(event LinkEventKind.ConflictDefended arp.SenderMac ours Ipv6Address.Any)
                    elif Arp.shouldDefend now s.LastConflictReported interval then
                        s <-
                            { s with
                                LastConflictReported = ValueSome now
                            }

                        sink.Event(event LinkEventKind.ConflictNotDefended arp.SenderMac ours Ipv6Address.Any)
                else
                    let forUs = arp.TargetIp.Value = ours.Value

                    if arp.SenderIp.Value <> 0u then
                        // RFC 826: merge the sender into an existing entry; add it when the packet
                        // is for us. A reply for us confirms a resolution we started.
                        if arp.Operation = Arp.Operation.Reply && forUs then
                            applyArp &s (NeighborCache.advertise now arp.SenderIp arp.SenderMac true true s.Arp) sink
                        else
                            applyArp &s (NeighborCache.learn now arp.SenderIp arp.SenderMac forUs s.Arp) sink

                    if forUs && arp.Operation = Arp.Operation.Request then
                        let n = Arp.write (Arp.replyTo arp ourMac) (Span s.Scratch)
                        // An ARP probe (sender 0.0.0.0, RFC 5227 §2.1.1) is answered to its frame's source.
                        let destination =
                            if arp.SenderIp.Value = 0u then
                                frameSource
                            else
                                arp.SenderMac

                        sink.Transmit(destination, EtherType.Arp, ReadOnlySpan(s.Scratch, 0, n))
                        sink.Count "arp.reply.sent"
            | _ -> ()

    // ------------------------------------------------------------------------------------------
    // Neighbor Discovery (RFC 4861), DAD (RFC 4862 §5.4), router advertisements
    // ------------------------------------------------------------------------------------------

    // Answers a solicitation for one of our addresses (RFC 4861 §7.2.4), from it, with our MAC as
    // target link-layer address; to `destinationMac`, or through the neighbor cache.
    let sendAdvertisement
        (now: int64)
        (target: Ipv6Address)
        (destination: Ipv6Address)
        (solicited: bool)
        (destinationMac: MacAddress voption)
        (s: byref<InterfaceState>)
        (sink: ILinkSink)
        =
        let icmp =
            Ndp.writeNeighborAdvertisement
                target
                destination
                target
                false
                solicited
                true
                (ValueSome s.Config.Mac)
                (Span(s.Scratch, Ipv6.HeaderLength, s.Scratch.Length - Ipv6.HeaderLength))

        let n = ipv6Control s target destination icmp
        sink.Count "ndp.na.sent"

        match destinationMac with
        | ValueSome mac -> sink.Transmit(mac, EtherType.Ipv6, ReadOnlySpan(s.Scratch, 0, n))
        | ValueNone ->
            let next = resolve now (ReadOnlySpan(s.Scratch, 0, n)) &s sink

            match next.Kind with
            | NextHopKind.Send -> sink.Transmit(next.Mac, next.EtherType, ReadOnlySpan(s.Scratch, 0, n))
            | NextHopKind.Pending -> queue now (Array.sub s.Scratch 0 n) &s sink
            | _ -> ()

    let toAllNodes = ValueSome(MacAddress.OfIpv6Multicast Ndp.AllNodes)

    // A solicitation for an autoconfigured address: DAD (§5.4.3) while it is tentative, else
    // answered as for the configured one.
    let onSolicitationForAutoconfigured
        (now: int64)
        (own: SlaacAddress)
        (source: Ipv6Address)
        (sourceMac: MacAddress voption)
        (s: byref<InterfaceState>)
        (sink: ILinkSink)
        =
        let unspecified = source = Ipv6Address.Any

        if own.State = SlaacAddressState.Tentative then
            // Another node's DAD probe for the same tentative address: neither may have it.
            if unspecified then
                applySlaac &s (Slaac.duplicate now own.Address s.Slaac.Value) sink
        elif unspecified then
            sendAdvertisement now own.Address Ndp.AllNodes false toAllNodes &s sink
        else
            match sourceMac with
            | ValueSome mac -> applyNdp &s (NeighborCache.learn now source mac true s.Ndp) sink
            | ValueNone -> ()

            sendAdvertisement now own.Address source true sourceMac &s sink

    let dadFailed (owner: MacAddress) (s: byref<InterfaceState>) (sink: ILinkSink) =
        s <-
            { s with
                Dad = Dad.conflict owner s.Dad
                StartPending = false
            }

        sink.Count "ndp.dad.failed"
        sink.Event(event LinkEventKind.DuplicateAddress owner Ipv4Address.Any s.Dad.Target)

    // RFC 4861 §6.3.4: a router advertisement's Reachable Time and Retrans Timer, when non-zero,
    // set the IPv6 cache's.
    let onAdvertisedTimers
        (now: int64)
        (reachableMs: uint32)
        (retransMs: uint32)
        (s: byref<InterfaceState>)
        (sink: ILinkSink)
        =
        let struct (d, rng) = draw s.Rng

        let reachable, changed =
            ReachableTime.onAdvertisement now reachableMs d s.Reachable6

        let retrans = ReachableTime.retransTimer retransMs s.Ndp.Config.RetransTimer

        if changed || retrans <> s.Ndp.Config.RetransTimer then
            s <-
                { s with
                    Rng = rng
                    Reachable6 = reachable
                    Ndp = NeighborCache.withTimers reachable.Current retrans s.Ndp
                }

            sink.Count "ndp.ra.timers"

    /// RFC 8106 §5.3.1: the servers of an RDNSS option are kept for its lifetime (0: removed at
    /// once; 0xFFFFFFFF: for ever), most recent first, MaxRdnss at most (§6 leaves the bound to
    /// the host; 3, as resolv.conf's MAXNS).
    let onRecursiveDnsServers
        (now: int64)
        (servers: struct (Ipv6Address * uint32)[])
        (s: byref<InterfaceState>)
        (sink: ILinkSink)
        =
        if servers.Length > 0 then
            let mutable list = List.ofArray s.Rdnss

            // Backwards, so that the option's first server ends up first.
            for struct (address, lifetime) in Array.rev servers do
                list <- list |> List.filter (fun struct (a, _) -> a <> address)

                if lifetime > 0u then
                    let until =
                        if lifetime = UInt32.MaxValue then
                            Int64.MaxValue
                        else
                            now + int64 lifetime * 1_000_000L

                    list <- struct (address, until) :: list

            let updated = list |> List.truncate MaxRdnss |> Array.ofList

            if updated <> s.Rdnss then
                s <- { s with Rdnss = updated }
                sink.Count "ndp.rdnss.changed"
                sink.Event(event LinkEventKind.DnsServersChanged MacAddress.Zero Ipv4Address.Any Ipv6Address.Any)

    let onNdp
        (now: int64)
        (packet: ReadOnlySpan<byte>)
        (frameSource: MacAddress)
        (s: byref<InterfaceState>)
        (sink: ILinkSink)
        =
        match Ipv6.parse packet with
        | Error _ -> sink.Count "ndp.drop.malformed"
        | Ok h ->
            let body = packet.Slice(Ipv6.HeaderLength, h.PayloadLength)

            match Ndp.parse h.Source h.Destination h.HopLimit body with
            | Error _ -> sink.Count "ndp.drop.invalid"
            | Ok m ->
                let ours = address6 s
                let unspecified = h.Source = Ipv6Address.Any

                match m.Type with
                | Ndp.MessageType.NeighborSolicitation ->
                    sink.Count "ndp.ns.received"

                    if m.Target <> ours then
                        match tryFindAutoconfigured s m.Target with
                        | ValueSome own -> onSolicitationForAutoconfigured now own h.Source m.SourceLinkAddress &s sink
                        | ValueNone -> ()
                    elif Dad.isTentative s.Dad then
                        // RFC 4862 §5.4.3: a DAD probe for our tentative address means another
                        // node wants it too; any other solicitation for it is not answered yet.
                        if unspecified then
                            dadFailed frameSource &s sink
                    elif s.Dad.Phase = DadPhase.Failed then
                        ()
                    elif unspecified then
                        // Someone runs DAD for our address: defend it to all nodes (§7.2.4), S clear.
                        sendAdvertisement now ours Ndp.AllNodes false toAllNodes &s sink
                    else
                        match m.SourceLinkAddress with
                        | ValueSome mac -> applyNdp &s (NeighborCache.learn now h.Source mac true s.Ndp) sink
                        | ValueNone -> ()

                        sendAdvertisement now ours h.Source true m.SourceLinkAddress &s sink
                | Ndp.MessageType.NeighborAdvertisement ->
                    sink.Count "ndp.na.received"

                    if s.Config.Address6.IsSome && m.Target = ours then
                        sink.Count "ndp.conflict"

                        if Dad.isTentative s.Dad then
                            let owner =
                                match m.TargetLinkAddress with
                                | ValueSome mac -> mac
                                | ValueNone -> frameSource

                            dadFailed owner &s sink
                    else
                        match tryFindAutoconfigured s m.Target with
                        | ValueSome mine ->
                            // §5.4.4: an advertisement for a tentative address ends its DAD; for
                            // an assigned one it is a conflict we count and outlast.
                            sink.Count "ndp.conflict"

                            if mine.State = SlaacAddressState.Tentative then
                                applySlaac &s (Slaac.duplicate now mine.Address s.Slaac.Value) sink
                        | ValueNone ->
                            let mac =
                                match m.TargetLinkAddress with
                                | ValueSome mac -> ValueSome mac
                                | ValueNone ->
                                    match s.Ndp.Entries.TryFind m.Target with
                                    | Some e when e.State <> NeighborState.Incomplete -> ValueSome e.Mac
                                    | _ -> ValueNone // §7.2.5: no link-layer address to learn

                            match mac with
                            | ValueSome mac ->
                                applyNdp &s (NeighborCache.advertise now m.Target mac m.Solicited m.Override s.Ndp) sink
                            | ValueNone -> ()
                | Ndp.MessageType.RouterAdvertisement ->
                    sink.Count "ndp.ra.received"

                    if m.RouterLifetime > 0us then
                        s <- { s with Router6 = ValueSome h.Source }
                    elif s.Router6 = ValueSome h.Source then
                        s <- { s with Router6 = ValueNone }

                    match m.SourceLinkAddress with
                    | ValueSome mac -> applyNdp &s (NeighborCache.learn now h.Source mac true s.Ndp) sink
                    | ValueNone -> ()

                    onAdvertisedTimers now m.ReachableTime m.RetransTimer &s sink
                    onRecursiveDnsServers now (Ndp.recursiveDnsServers body MaxRdnss) &s sink

                    match s.Slaac with
                    | ValueSome slaac ->
                        let prefixes = Ndp.prefixes body MaxPrefixesPerAdvertisement
                        applySlaac &s (Slaac.onRouterAdvertisement now m.RouterLifetime prefixes slaac) sink
                    | ValueNone -> ()
                | _ ->
                    // Router solicitations are for routers; redirects are not acted on.
                    sink.Count "ndp.ignored"

    // ------------------------------------------------------------------------------------------
    // DHCP (RFC 2131): replies to the client port, taken before the IP layer
    // ------------------------------------------------------------------------------------------

    /// Whether an IPv4 payload is an unfragmented UDP datagram to port 68: the DHCP client's,
    /// whatever its destination address (an OFFER goes to the address offered, not ours yet).
    let isForDhcpClient (packet: ReadOnlySpan<byte>) =
        if packet.Length < 28 || int packet.[0] >>> 4 <> 4 || packet.[9] <> IpProtocol.Udp then
            false
        else
            let ihl = 4 * int (packet.[0] &&& 0xFuy)

            ihl >= 20
            && packet.Length >= ihl + 8
            && (BinaryPrimitives.ReadUInt16BigEndian(packet.Slice 6) &&& 0x3FFFus) = 0us
            && BinaryPrimitives.ReadUInt16BigEndian(packet.Slice(ihl + 2)) = DhcpMessage.ClientPort

    let onDhcp (now: int64) (packet: ReadOnlySpan<byte>) (s: byref<InterfaceState>) (sink: ILinkSink) =
        match Ipv4.parse packet with
        | Error _ -> sink.Count "dhcp.drop.malformed"
        | Ok ip ->
            let datagram = packet.Slice(ip.PayloadOffset, ip.PayloadLength)

            match Udp.parseV4 ip.Source ip.Destination datagram with
            | Error _ -> sink.Count "dhcp.drop.malformed"
            | Ok udp ->
                match DhcpMessage.parse (datagram.Slice(udp.PayloadOffset, udp.PayloadLength)) with
                | Error _ -> sink.Count "dhcp.drop.malformed"
                | Ok m ->
                    sink.Count "dhcp.received"
                    applyDhcp now &s (Dhcp.receive now m s.Dhcp.Value) sink
