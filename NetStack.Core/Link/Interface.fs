namespace NetStack.Core.Link

open System
open System.Buffers.Binary
open NetStack.Core.Wire

/// The settings of a link interface, set by name (from C#: an object initializer). Times are in
/// microseconds; the defaults are RFC 4861 §10's constants and Linux-like bounds.
/// `Interface.create` checks them.
[<Sealed; AllowNullLiteral>]
type InterfaceSettings() =
    /// The interface's unicast MAC.
    member val Mac = MacAddress.Zero with get, set
    /// The IEEE 802.1Q VLAN id (1..4094) every frame carries, or -1: untagged.
    member val VlanId = -1 with get, set
    /// Whether the interface has an IPv4 address.
    member val HasAddress4 = false with get, set
    /// The IPv4 address (with HasAddress4).
    member val Address4 = Ipv4Address.Any with get, set
    /// Its prefix length (0..32): the on-link prefix.
    member val PrefixLength4 = 24 with get, set
    /// Whether there is an IPv4 default gateway.
    member val HasGateway4 = false with get, set
    /// The IPv4 default gateway (with HasGateway4).
    member val Gateway4 = Ipv4Address.Any with get, set
    /// Whether the interface has a configured IPv6 address.
    member val HasAddress6 = false with get, set
    /// The configured IPv6 address (with HasAddress6).
    member val Address6 = Ipv6Address.Any with get, set
    /// Its prefix length (0..128): the on-link prefix.
    member val PrefixLength6 = 64 with get, set
    /// Whether there is a configured IPv6 default gateway.
    member val HasGateway6 = false with get, set
    /// The configured IPv6 default gateway (with HasGateway6).
    member val Gateway6 = Ipv6Address.Any with get, set
    /// BaseReachableTime (REACHABLE_TIME).
    member val ReachableTime = 30_000_000L with get, set
    /// RetransTimer: between solicitations, and DAD's wait.
    member val RetransTimer = 1_000_000L with get, set
    /// DELAY_FIRST_PROBE_TIME.
    member val DelayFirstProbeTime = 5_000_000L with get, set
    /// How long an unused STALE entry is kept.
    member val StaleLifetime = 60_000_000L with get, set
    /// Entries per neighbor cache.
    member val MaxEntries = 256 with get, set
    /// Packets one unresolved neighbor holds.
    member val MaxQueuedPerEntry = 64 with get, set
    /// Bytes all waiting packets of one cache hold.
    member val MaxQueuedBytes = 256 * 1024 with get, set
    /// DupAddrDetectTransmits (RFC 4862; 0: no duplicate address detection), 0..10.
    member val DadTransmits = 1 with get, set
    /// Gratuitous ARP announcements of the IPv4 address at start (RFC 5227 §2.3), 0..10.
    member val GratuitousArps = 1 with get, set
    /// The RFC 7217 secret of stateless address autoconfiguration (null: autoconfiguration off;
    /// it needs an IPv6 address too).
    member val SlaacSecret: byte[] = null with get, set
    /// The seed of the interface's random draws (ReachableTime, the first router solicitation's
    /// delay): the caller's randomness, so the interface itself stays deterministic.
    member val Seed = 0UL with get, set

/// The frozen, checked addresses of an interface.
type InterfaceConfig =
    {
        /// Our MAC.
        Mac: MacAddress
        /// The VLAN id, or -1.
        VlanId: int
        /// The IPv4 address, if any.
        Address4: Ipv4Address voption
        /// Its netmask.
        Mask4: uint32
        /// The IPv4 gateway, if any.
        Gateway4: Ipv4Address voption
        /// The configured IPv6 address, if any.
        Address6: Ipv6Address voption
        /// Its prefix length.
        PrefixLength6: int
        /// The configured IPv6 gateway, if any.
        Gateway6: Ipv6Address voption
        /// Gratuitous ARPs at start.
        GratuitousArps: int
    }

/// What an interface reports besides frames and counters.
type LinkEventKind =
    /// Duplicate address detection passed (or was not asked for) and the start announcements
    /// went out: the interface is up.
    | Ready = 0
    /// Duplicate address detection found Address6 in use by Mac (RFC 4862 §5.4.5).
    | DuplicateAddress = 1
    /// Mac claimed our IPv4 address (Address4) and we defended it (RFC 5227 §2.4 c).
    | ConflictDefended = 2
    /// Mac claimed our IPv4 address again within DEFEND_INTERVAL: not defended (reported once per interval).
    | ConflictNotDefended = 3
    /// The autoconfigured addresses changed (read them with Interface.autoconfigured).
    | AddressesChanged = 4

/// One event: its kind and the addresses it names (the others are zero).
[<Struct>]
type LinkEvent =
    {
        Kind: LinkEventKind
        Mac: MacAddress
        Address4: Ipv4Address
        Address6: Ipv6Address
    }

/// Where the interface's actions go. Called during the interface's functions, on the caller's
/// thread; a span is valid only during the call.
type ILinkSink =
    /// Send a frame to `destination` with this EtherType and payload (the caller adds the
    /// Ethernet header and any VLAN tag).
    abstract Transmit: destination: MacAddress * etherType: uint16 * payload: ReadOnlySpan<byte> -> unit
    /// Count one of `counter` (link.*, arp.*, ndp.*).
    abstract Count: counter: string -> unit
    /// Report an event.
    abstract Event: linkEvent: LinkEvent -> unit

/// What became of a received frame: an IP packet to pass up (at Offset, Length bytes long,
/// padding excluded; Offset is also the Ethernet header's length, VLAN tags included), or nothing
/// (consumed by ARP/NDP, or dropped and counted).
[<Struct>]
type FrameVerdict =
    {
        Deliver: bool
        Offset: int
        Length: int
    }

/// How an outgoing IP packet is to leave.
type NextHopKind =
    /// Frame it to Mac with EtherType now.
    | Send = 0
    /// Its neighbor is not resolved (or is STALE): hand a copy to Interface.queue.
    | Pending = 1
    /// Dropped and counted (no route).
    | Dropped = 2
    /// Not an IPv4 or IPv6 packet.
    | NotIp = 3

/// The answer of Interface.resolve.
[<Struct>]
type NextHop =
    {
        Kind: NextHopKind
        Mac: MacAddress
        EtherType: uint16
    }

/// One neighbor cache entry, for display.
[<Struct>]
type NeighborInfo =
    {
        IsIpv6: bool
        Address4: Ipv4Address
        Address6: Ipv6Address
        /// Zero while unresolved.
        Mac: MacAddress
        State: NeighborState
    }

/// The state of one Ethernet interface: neighbor caches, duplicate address detection, conflict
/// defence, the router of the last advertisement, autoconfiguration, and the last next hop
/// resolved per family (a memo of NeighborCache.tryResolve, valid while the cache is the same
/// value). An immutable value except Scratch, the bytes control messages are built in during one call.
type InterfaceState =
    {
        Config: InterfaceConfig
        Arp: NeighborCache<Ipv4Address>
        Ndp: NeighborCache<Ipv6Address>
        Reachable4: ReachableTimeState
        Reachable6: ReachableTimeState
        /// The router of the last router advertisement with a non-zero lifetime.
        Router6: Ipv6Address voption
        /// Duplicate address detection of Address6.
        Dad: Dad
        /// Ready not reported yet: due at StartAt once DAD has passed.
        StartPending: bool
        StartAt: int64
        /// RFC 5227 §2.4: when we last defended our IPv4 address, and last reported an undefended conflict.
        LastDefence: int64 voption
        LastConflictReported: int64 voption
        Slaac: SlaacState voption
        /// The random draws' generator state (splitmix64).
        Rng: uint64
        Memo4Cache: obj
        Memo4Hop: Ipv4Address
        Memo4Mac: MacAddress
        Memo6Cache: obj
        Memo6Hop: Ipv6Address
        Memo6Mac: MacAddress
        Scratch: byte[]
    }

/// A host's Ethernet interface as pure functions (smoltcp's iface/interface): frames in, IP
/// packets up; IP packets out, the MAC to frame them with; timers. No clock, no I/O: `now` is
/// an input (microseconds) and every action goes to the caller's ILinkSink.
[<RequireQualifiedAccess>]
module Interface =

    /// RFC 4861 §6.3.7 MAX_RTR_SOLICITATION_DELAY: the first router solicitation waits up to 1 s.
    [<Literal>]
    let MaxRouterSolicitationDelay = 1_000_000L

    /// Prefix options read from one router advertisement at most.
    [<Literal>]
    let MaxPrefixesPerAdvertisement = 32

    // splitmix64: a draw in [0, 1) and the next generator state.
    let private draw (rng: uint64) : struct (float * uint64) =
        let next = rng + 0x9E3779B97F4A7C15UL
        let mutable z = next
        z <- (z ^^^ (z >>> 30)) * 0xBF58476D1CE4E5B9UL
        z <- (z ^^^ (z >>> 27)) * 0x94D049BB133111EBUL
        z <- z ^^^ (z >>> 31)
        struct (float (z >>> 11) * (1.0 / 9007199254740992.0), next)

    let private event kind mac (a4: Ipv4Address) (a6: Ipv6Address) =
        {
            Kind = kind
            Mac = mac
            Address4 = a4
            Address6 = a6
        }

    /// Checks `settings` and makes an interface at `now` (throws ArgumentException naming the
    /// first bad setting). Duplicate address detection of Address6 starts at `now`; Ready is
    /// reported by the first `handleTimer` after it passed.
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
        let reachable4 = ReachableTime.create now neighbor.ReachableTime d4
        let reachable6 = ReachableTime.create now neighbor.ReachableTime d6

        let v6 =
            if settings.HasAddress6 then
                ValueSome settings.Address6
            else
                ValueNone

        let slaac =
            match v6 with
            | ValueSome address when not (isNull settings.SlaacSecret) ->
                let config =
                    { Slaac.config settings.SlaacSecret mac (ValueSome address) with
                        DadTransmits = settings.DadTransmits
                        RetransTimer = settings.RetransTimer
                    }

                // RFC 4861 §6.3.7: hosts starting together do not solicit together.
                ValueSome(Slaac.create config (now + int64 (dSolicit * float MaxRouterSolicitationDelay)))
            | _ -> ValueNone

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
            Rng = rng
            Memo4Cache = null
            Memo4Hop = Ipv4Address.Any
            Memo4Mac = MacAddress.Zero
            Memo6Cache = null
            Memo6Hop = Ipv6Address.Any
            Memo6Mac = MacAddress.Zero
            Scratch = Array.zeroCreate 256
        }

    let private address4 (s: InterfaceState) =
        match s.Config.Address4 with
        | ValueSome a -> a
        | ValueNone -> Ipv4Address.Any

    let private address6 (s: InterfaceState) =
        match s.Config.Address6 with
        | ValueSome a -> a
        | ValueNone -> Ipv6Address.Any

    let private autoconfiguredList (s: InterfaceState) =
        match s.Slaac with
        | ValueSome slaac -> slaac.Addresses
        | ValueNone -> []

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
    let private ipv6Control (s: InterfaceState) (source: Ipv6Address) (destination: Ipv6Address) (icmp: int) =
        let header =
            { Ipv6.header source destination IpProtocol.Icmpv6 with
                PayloadLength = icmp
                HopLimit = Ndp.HopLimit
            }

        Ipv6.write header (Span s.Scratch) |> ignore
        Ipv6.HeaderLength + icmp

    let private applyArp
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

    let private applyNdp
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
                let source = address6 s

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

    let private send mac etherType =
        {
            Kind = NextHopKind.Send
            Mac = mac
            EtherType = etherType
        }

    let private other kind =
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
                Route.choose4 (address4 state) state.Config.Mask4 state.Config.Gateway4 destination

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
                let struct (_, hop) =
                    Route.choose4
                        (address4 state)
                        state.Config.Mask4
                        state.Config.Gateway4
                        (Ipv4Address.Read(ReadOnlySpan(packet, 16, 4)))

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

    let private slaacCounter (e: SlaacEvent) =
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
    let private sendDadProbe (s: InterfaceState) (target: Ipv6Address) (sink: ILinkSink) =
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

    let private applySlaac (s: byref<InterfaceState>) (result: SlaacState * SlaacEvent list) (sink: ILinkSink) =
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
                // RFC 4861 §6.3.7: to all routers, from our address with our MAC.
                let source = address6 s

                let icmp =
                    Ndp.writeRouterSolicitation
                        source
                        Ndp.AllRouters
                        (ValueSome s.Config.Mac)
                        (Span(s.Scratch, Ipv6.HeaderLength, s.Scratch.Length - Ipv6.HeaderLength))

                let n = ipv6Control s source Ndp.AllRouters icmp

                sink.Transmit(MacAddress.OfIpv6Multicast Ndp.AllRouters, EtherType.Ipv6, ReadOnlySpan(s.Scratch, 0, n))

                sink.Count "ndp.rs.sent"
            | e -> sink.Count(slaacCounter e)

        if not (obj.ReferenceEquals(before, next.Addresses)) then
            sink.Event(event LinkEventKind.AddressesChanged MacAddress.Zero Ipv4Address.Any Ipv6Address.Any)

    let private tryFindAutoconfigured (s: InterfaceState) (address: Ipv6Address) : SlaacAddress voption =
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

    let private announce (s: InterfaceState) (sink: ILinkSink) =
        let n = Arp.write (Arp.announcement s.Config.Mac (address4 s)) (Span s.Scratch)
        sink.Transmit(MacAddress.Broadcast, EtherType.Arp, ReadOnlySpan(s.Scratch, 0, n))

    let private onArp
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
    let private sendAdvertisement
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

    let private toAllNodes = ValueSome(MacAddress.OfIpv6Multicast Ndp.AllNodes)

    // A solicitation for an autoconfigured address: DAD (§5.4.3) while it is tentative, else
    // answered as for the configured one.
    let private onSolicitationForAutoconfigured
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

    let private dadFailed (owner: MacAddress) (s: byref<InterfaceState>) (sink: ILinkSink) =
        s <-
            { s with
                Dad = Dad.conflict owner s.Dad
                StartPending = false
            }

        sink.Count "ndp.dad.failed"
        sink.Event(event LinkEventKind.DuplicateAddress owner Ipv4Address.Any s.Dad.Target)

    // RFC 4861 §6.3.4: a router advertisement's Reachable Time and Retrans Timer, when non-zero,
    // set the IPv6 cache's.
    let private onAdvertisedTimers
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

    let private onNdp
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

                    match s.Slaac with
                    | ValueSome slaac ->
                        let prefixes = Ndp.prefixes body MaxPrefixesPerAdvertisement
                        applySlaac &s (Slaac.onRouterAdvertisement now m.RouterLifetime prefixes slaac) sink
                    | ValueNone -> ()
                | _ ->
                    // Router solicitations are for routers; redirects are not acted on.
                    sink.Count "ndp.ignored"

    // ------------------------------------------------------------------------------------------
    // Received frames
    // ------------------------------------------------------------------------------------------

    // Frames for our MAC, broadcast, the all-nodes group and the solicited-node groups of our
    // addresses, tentative autoconfigured ones included (RFC 4861 §7.2.1, RFC 4862 §5.4.2).
    let private accepts (s: InterfaceState) (destination: MacAddress) =
        if destination.Value = s.Config.Mac.Value || destination.IsBroadcast then
            true
        else
            match s.Config.Address6 with
            | ValueSome v6 when (destination.Value >>> 32) = 0x3333UL ->
                let group = uint32 destination.Value

                if group = 1u || group = (0xFF000000u ||| uint32 (v6.Low &&& 0xFFFFFFUL)) then
                    true
                else
                    let mutable found = false
                    let mutable rest = autoconfiguredList s

                    while not found && not rest.IsEmpty do
                        if group = (0xFF000000u ||| uint32 (rest.Head.Address.Low &&& 0xFFFFFFUL)) then
                            found <- true

                        rest <- rest.Tail

                    found
            | _ -> false

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
                sink.Count "link.drop.not-for-us"
                nothing
            else
                let offset = eth.PayloadOffset
                let payload = frame.Slice offset

                if eth.EtherType = EtherType.Arp then
                    onArp now payload eth.Source &state sink
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
                    && state.Config.Address6.IsSome
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

    /// Whether the configured IPv6 address is still tentative (duplicate address detection runs).
    let isTentative (state: InterfaceState) = Dad.isTentative state.Dad
