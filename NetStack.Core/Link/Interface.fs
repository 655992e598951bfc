namespace NetStack.Core.Link

open System
open System.Buffers.Binary
open NetStack.Core.Wire
open NetStack.Core.Link.InterfaceOutput
open NetStack.Core.Link.InterfaceInput

/// A host's Ethernet interface as pure functions (smoltcp's iface/interface): frames in, IP
/// packets up; IP packets out, the MAC to frame them with; timers. No clock, no I/O: `now` is
/// an input (microseconds) and every action goes to the caller's ILinkSink.
[<RequireQualifiedAccess>]
module Interface =

    /// RFC 4861 §6.3.7 MAX_RTR_SOLICITATION_DELAY: the first router solicitation waits up to 1 s.
    [<Literal>]
    let MaxRouterSolicitationDelay = 1_000_000L

    let create (settings: InterfaceSettings) (now: int64) : InterfaceState =
        if isNull settings then
            nullArg (nameof settings)

        let mac = settings.Mac

        if mac.IsMulticast || mac.Value = 0UL then
            invalidArg "options" $"MacAddress {mac} is not a unicast address."

        if settings.VlanId <> -1 && (settings.VlanId < 1 || settings.VlanId > 4094) then
            invalidArg "options" $"VlanId {settings.VlanId} is outside 1..4094."

        if
            settings.HasAddress4
            && (settings.PrefixLength4 < 0 || settings.PrefixLength4 > 32)
        then
            invalidArg "options" $"PrefixLength {settings.PrefixLength4} is outside 0..32."

        if
            settings.HasAddress6
            && (settings.PrefixLength6 < 0 || settings.PrefixLength6 > 128)
        then
            invalidArg "options" $"PrefixLength6 {settings.PrefixLength6} is outside 0..128."

        if settings.Dhcp && settings.HasAddress4 then
            invalidArg "options" "Dhcp and a configured IPv4 address exclude each other."

        if
            settings.DadTransmits < 0
            || settings.DadTransmits > 10
            || settings.GratuitousArps < 0
            || settings.GratuitousArps > 10
        then
            invalidArg "options" "DadTransmits and GratuitousArps must be in 0..10."

        let neighbor =
            {
                ReachableTime = settings.ReachableTime
                RetransTimer = settings.RetransTimer
                DelayFirstProbeTime = settings.DelayFirstProbeTime
                MaxMulticastSolicit = 3
                MaxUnicastSolicit = 3
                StaleLifetime = settings.StaleLifetime
                MaxEntries = settings.MaxEntries
                MaxQueuedPerEntry = settings.MaxQueuedPerEntry
                MaxQueuedBytes = settings.MaxQueuedBytes
            }

        let struct (d4, rng) = draw settings.Seed
        let struct (d6, rng) = draw rng
        let struct (dSolicit, rng) = draw rng
        let struct (_, dhcpSeed) = draw rng
        let reachable4 = ReachableTime.create now neighbor.ReachableTime d4
        let reachable6 = ReachableTime.create now neighbor.ReachableTime d6

        let v6 =
            if settings.HasAddress6 then
                ValueSome settings.Address6
            else
                ValueNone

        let slaac =
            if
                isNull settings.SlaacSecret
                || not (settings.Autoconfigure || settings.LinkLocal)
            then
                ValueNone
            else
                let config =
                    { Slaac.config settings.SlaacSecret mac v6 with
                        DadTransmits = settings.DadTransmits
                        RetransTimer = settings.RetransTimer
                        Prefixes = settings.Autoconfigure
                    }

                // RFC 4861 §6.3.7: hosts starting together do not solicit together.
                let slaac =
                    Slaac.create config (now + int64 (dSolicit * float MaxRouterSolicitationDelay))

                // The link-local address's DAD starts at once, like the configured address's.
                if settings.LinkLocal then
                    ValueSome(fst (Slaac.formLinkLocal now slaac))
                else
                    ValueSome slaac

        {
            Config =
                {
                    Mac = mac
                    VlanId = settings.VlanId
                    Address4 =
                        if settings.HasAddress4 then
                            ValueSome settings.Address4
                        else
                            ValueNone
                    Mask4 =
                        if settings.HasAddress4 then
                            Route.mask4 settings.PrefixLength4
                        else
                            0u
                    Gateway4 =
                        if settings.HasAddress4 && settings.HasGateway4 then
                            ValueSome settings.Gateway4
                        else
                            ValueNone
                    Address6 = v6
                    PrefixLength6 = settings.PrefixLength6
                    Gateway6 =
                        if settings.HasAddress6 && settings.HasGateway6 then
                            ValueSome settings.Gateway6
                        else
                            ValueNone
                    GratuitousArps = settings.GratuitousArps
                    Routes4 = [||]
                }
            Arp =
                NeighborCache.create neighbor
                |> NeighborCache.withTimers reachable4.Current neighbor.RetransTimer
            Ndp =
                NeighborCache.create neighbor
                |> NeighborCache.withTimers reachable6.Current neighbor.RetransTimer
            Reachable4 = reachable4
            Reachable6 = reachable6
            Router6 = ValueNone
            Dad =
                match v6 with
                | ValueSome address -> Dad.start now address settings.DadTransmits
                | ValueNone -> Dad.start now Ipv6Address.Any 0
            StartPending = true
            StartAt = now
            LastDefence = ValueNone
            LastConflictReported = ValueNone
            Slaac = slaac
            Dhcp =
                if settings.Dhcp then
                    ValueSome(
                        Dhcp.create
                            { Dhcp.settings mac with
                                HostName = settings.DhcpHostName
                                PreviousAddress =
                                    if settings.HasDhcpPreviousAddress then
                                        ValueSome settings.DhcpPreviousAddress
                                    else
                                        ValueNone
                                InitialDelayMax = settings.DhcpInitialDelayMax
                            }
                            (dhcpSeed * 0xD6E8FEB86659FD93UL)
                            now
                    )
                else
                    ValueNone
            Rdnss = [||]
            Rng = rng
            Memo4Cache = null
            Memo4Hop = Ipv4Address.Any
            Memo4Mac = MacAddress.Zero
            Memo6Cache = null
            Memo6Hop = Ipv6Address.Any
            Memo6Mac = MacAddress.Zero
            Scratch = Array.zeroCreate 1024
            GroupMacs = [||]
        }

    /// The interface taking frames to the multicast MACs of `groups` too (IPv4: 01:00:5e and
    /// the low 23 bits, RFC 1112 §6.4; IPv6: 33:33 and the low 32 bits, RFC 2464 §7), besides
    /// all-hosts, all-nodes and the solicited-node groups, which it always takes.
    let withMulticastGroups (groups4: Ipv4Address[]) (groups6: Ipv6Address[]) (state: InterfaceState) : InterfaceState =
        { state with
            GroupMacs =
                Array.append
                    (groups4 |> Array.map (fun g -> (MacAddress.OfIpv4Multicast g).Value))
                    (groups6 |> Array.map (fun g -> (MacAddress.OfIpv6Multicast g).Value))
                |> Array.distinct
        }

    /// The MAC to frame an outgoing IP packet with (`head`: at least its IP header): broadcast,
    /// a group MAC, or its next hop's resolved MAC (RFC 1122 §3.3.1, RFC 4861 §5.2). Pending: the
    /// next hop is not resolved yet or is STALE, so `queue` a copy of the packet. Dropped: no
    /// route (counted). A repeated resolved next hop costs no allocation.
    let resolve (now: int64) (head: ReadOnlySpan<byte>) (state: byref<InterfaceState>) (sink: ILinkSink) : NextHop =
        InterfaceOutput.resolve now head &state sink

    /// Sends `packet` (a whole, ordinary IP packet the interface may keep) by way of its next
    /// hop's neighbor entry (RFC 4861 §7.2.2): queued behind a resolution (bounded; drops are
    /// counted), passed through a STALE entry (which starts DELAY), or transmitted when resolved.
    let queue (now: int64) (packet: byte[]) (state: byref<InterfaceState>) (sink: ILinkSink) : unit =
        InterfaceOutput.queue now packet &state sink

    // ------------------------------------------------------------------------------------------
    // Received frames
    // ------------------------------------------------------------------------------------------

    // Frames for our MAC, broadcast, the all-nodes group and the solicited-node groups of our
    // addresses, tentative autoconfigured ones included (RFC 4861 §7.2.1, RFC 4862 §5.4.2).
    // IPv4: all-hosts 224.0.0.1's MAC always, the joined groups' MACs.
    let private accepts (s: InterfaceState) (destination: MacAddress) =
        if destination.Value = s.Config.Mac.Value || destination.IsBroadcast then
            true
        elif destination.IsMulticast && Array.contains destination.Value s.GroupMacs then
            true
        elif destination.Value = 0x01005E000001UL then
            s.Config.Address4.IsSome
        elif (destination.Value >>> 32) = 0x3333UL && hasIpv6 s then
            let group = uint32 destination.Value

            if
                group = 1u
                || (s.Config.Address6.IsSome
                    && group = (0xFF000000u ||| uint32 (s.Config.Address6.Value.Low &&& 0xFFFFFFUL)))
            then
                true
            else
                let mutable found = false
                let mutable rest = autoconfiguredList s

                while not found && not rest.IsEmpty do
                    if group = (0xFF000000u ||| uint32 (rest.Head.Address.Low &&& 0xFFFFFFUL)) then
                        found <- true

                    rest <- rest.Tail

                found
        else
            false

    let private nothing =
        {
            Deliver = false
            Offset = 0
            Length = 0
        }

    // An IP packet to pass up, without the Ethernet padding (frames are at least 60 bytes, RFC 894);
    // nothing while the configured IPv6 address is not ours (RFC 4862 §5.4: tentative, or taken).
    let private deliver (s: InterfaceState) (offset: int) (total: int) (available: int) (sink: ILinkSink) =
        if s.Dad.Phase <> DadPhase.Passed then
            sink.Count "link.drop.tentative"
            nothing
        else
            {
                Deliver = true
                Offset = offset
                Length = if total > 0 && total <= available then total else available
            }

    /// One received frame (without FCS): an IP packet to pass up, or consumed (ARP, NDP) or
    /// dropped, each drop counted by reason (`link.drop.*`). Hostile frames never throw.
    let receive
        (now: int64)
        (frame: ReadOnlySpan<byte>)
        (state: byref<InterfaceState>)
        (sink: ILinkSink)
        : FrameVerdict =
        match Ethernet.parse frame with
        | Error _ ->
            sink.Count "link.drop.malformed"
            nothing
        | Ok eth ->
            let vlan = state.Config.VlanId

            // Untagged host: tagged frames other than priority tags (VLAN 0) are not ours. With a
            // VLAN (IEEE 802.1Q): exactly one tag, ours.
            if
                (if vlan < 0 then
                     eth.VlanTags > 0 && eth.VlanId <> 0
                 else
                     eth.VlanTags <> 1 || eth.VlanId <> vlan)
            then
                sink.Count(
                    if eth.VlanTags = 0 then
                        "link.drop.untagged"
                    else
                        "link.drop.vlan"
                )

                nothing
            elif not (accepts state eth.Destination) then
                // RFC 1112 §6.4: frames to groups nobody joined are filtered here.
                sink.Count(
                    if eth.Destination.IsMulticast then
                        "link.drop.multicast"
                    else
                        "link.drop.not-for-us"
                )

                nothing
            else
                let offset = eth.PayloadOffset
                let payload = frame.Slice offset

                if eth.EtherType = EtherType.Arp then
                    onArp now payload eth.Source &state sink
                    nothing
                elif eth.EtherType = EtherType.Ipv4 && state.Dhcp.IsSome && isForDhcpClient payload then
                    onDhcp now payload &state sink
                    nothing
                elif
                    eth.EtherType = EtherType.Ipv4
                    && state.Config.Address4.IsSome
                    && payload.Length >= 20
                    && int payload.[0] >>> 4 = 4
                then
                    deliver
                        state
                        offset
                        (int (BinaryPrimitives.ReadUInt16BigEndian(payload.Slice 2)))
                        payload.Length
                        sink
                elif
                    eth.EtherType = EtherType.Ipv6
                    && hasIpv6 state
                    && payload.Length >= Ipv6.HeaderLength
                    && int payload.[0] >>> 4 = 6
                then
                    let total =
                        Ipv6.HeaderLength + int (BinaryPrimitives.ReadUInt16BigEndian(payload.Slice 4))

                    // ND messages (ICMPv6 133..137 right after the fixed header) stay in the link layer.
                    if
                        payload.[6] = IpProtocol.Icmpv6
                        && payload.Length > Ipv6.HeaderLength
                        && payload.[Ipv6.HeaderLength] >= Ndp.MessageType.RouterSolicitation
                        && payload.[Ipv6.HeaderLength] <= Ndp.MessageType.Redirect
                    then
                        onNdp now (payload.Slice(0, min total payload.Length)) eth.Source &state sink
                        nothing
                    else
                        deliver state offset total payload.Length sink
                else
                    sink.Count "link.drop.ethertype"
                    nothing

    // ------------------------------------------------------------------------------------------
    // Timers
    // ------------------------------------------------------------------------------------------

    /// When `handleTimer` next has something to do (Int64.MaxValue: nothing): neighbor timers,
    /// ReachableTime redraws, autoconfiguration, duplicate address detection, the start.
    let nextDeadline (state: InterfaceState) : int64 =
        let mutable next = min state.Arp.NextDeadline state.Ndp.NextDeadline
        next <- min next (min state.Reachable4.RecomputeAt state.Reachable6.RecomputeAt)
        next <- min next (Dad.nextDeadline state.Dad)

        if state.StartPending && state.Dad.Phase = DadPhase.Passed then
            next <- min next state.StartAt

        match state.Dhcp with
        | ValueSome dhcp -> next <- min next (Dhcp.nextDeadline dhcp)
        | ValueNone -> ()

        for struct (_, until) in state.Rdnss do
            next <- min next until

        match state.Slaac with
        | ValueSome slaac -> min next (Slaac.nextDeadline slaac)
        | ValueNone -> next

    /// Runs every timer due at `now`: neighbor solicitations, expiries and drops (RFC 4861 §7.3),
    /// a fresh ReachableTime every few hours (§6.3.2), autoconfiguration, DAD probes (RFC 4862
    /// §5.4.2) and, once DAD passed, the gratuitous ARPs of the start (RFC 5227 §2.3) and Ready.
    let handleTimer (now: int64) (state: byref<InterfaceState>) (sink: ILinkSink) : unit =
        if state.Arp.NextDeadline <= now then
            applyArp &state (NeighborCache.tick now state.Arp) sink

        if state.Ndp.NextDeadline <= now then
            applyNdp &state (NeighborCache.tick now state.Ndp) sink

        if state.Reachable4.RecomputeAt <= now then
            let struct (d, rng) = draw state.Rng
            let r, _ = ReachableTime.tick now d state.Reachable4

            state <-
                { state with
                    Rng = rng
                    Reachable4 = r
                    Arp = NeighborCache.withTimers r.Current state.Arp.Config.RetransTimer state.Arp
                }

        if state.Reachable6.RecomputeAt <= now then
            let struct (d, rng) = draw state.Rng
            let r, _ = ReachableTime.tick now d state.Reachable6

            state <-
                { state with
                    Rng = rng
                    Reachable6 = r
                    Ndp = NeighborCache.withTimers r.Current state.Ndp.Config.RetransTimer state.Ndp
                }

        match state.Slaac with
        | ValueSome slaac when Slaac.nextDeadline slaac <= now -> applySlaac &state (Slaac.tick now slaac) sink
        | _ -> ()

        match state.Dhcp with
        | ValueSome dhcp when Dhcp.nextDeadline dhcp <= now -> applyDhcp now &state (Dhcp.tick now dhcp) sink
        | _ -> ()

        if state.Rdnss |> Array.exists (fun struct (_, until) -> until <= now) then
            state <-
                { state with
                    Rdnss = state.Rdnss |> Array.filter (fun struct (_, until) -> until > now)
                }

            sink.Count "ndp.rdnss.expired"
            sink.Event(event LinkEventKind.DnsServersChanged MacAddress.Zero Ipv4Address.Any Ipv6Address.Any)

        if Dad.nextDeadline state.Dad <= now then
            let struct (dad, probe) = Dad.tick now state.Ndp.Config.RetransTimer state.Dad
            state <- { state with Dad = dad }

            if probe then
                sendDadProbe state dad.Target sink

        if state.StartPending && state.Dad.Phase = DadPhase.Passed && state.StartAt <= now then
            state <- { state with StartPending = false }

            if state.Config.Address4.IsSome then
                for _ in 1 .. state.Config.GratuitousArps do
                    announce state sink
                    sink.Count "arp.announcement.sent"

            sink.Event(event LinkEventKind.Ready MacAddress.Zero (address4 state) (address6 state))

    // ------------------------------------------------------------------------------------------
    // Views
    // ------------------------------------------------------------------------------------------

    /// Both neighbor caches' entries, IPv4 first.
    let neighbors (state: InterfaceState) : NeighborInfo[] =
        [|
            for KeyValue(address, e) in state.Arp.Entries do
                {
                    IsIpv6 = false
                    Address4 = address
                    Address6 = Ipv6Address.Any
                    Mac = e.Mac
                    State = e.State
                }
            for KeyValue(address, e) in state.Ndp.Entries do
                {
                    IsIpv6 = true
                    Address4 = Ipv4Address.Any
                    Address6 = address
                    Mac = e.Mac
                    State = e.State
                }
        |]

    /// The autoconfigured addresses, tentative ones included, oldest first.
    let autoconfigured (state: InterfaceState) : SlaacAddress[] = Array.ofList (autoconfiguredList state)

    /// The DNS servers router advertisements taught (RFC 8106), most recent first.
    let dnsServers6 (state: InterfaceState) : Ipv6Address[] =
        state.Rdnss |> Array.map (fun struct (a, _) -> a)

    /// The DHCP client's state and lease (ValueNone without DHCP).
    let dhcp (state: InterfaceState) : DhcpClient voption = state.Dhcp

    /// Whether the configured IPv6 address is still tentative (duplicate address detection runs).
    let isTentative (state: InterfaceState) = Dad.isTentative state.Dad
