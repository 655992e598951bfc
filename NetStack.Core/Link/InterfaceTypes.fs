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
    /// The RFC 7217 secret of the interface identifiers of the link-local address and of
    /// stateless address autoconfiguration (null: neither).
    member val SlaacSecret: byte[] = null with get, set
    /// With SlaacSecret: router advertisements' prefixes form addresses, and router
    /// solicitations go out at start (RFC 4862 §5.5).
    member val Autoconfigure = true with get, set
    /// With SlaacSecret: a link-local address (fe80::/64, RFC 4862 §5.3) is formed and tested
    /// (DAD) at start, and neighbor and router solicitations come from it once it is ours.
    member val LinkLocal = false with get, set
    /// Whether the IPv4 address comes from DHCP (RFC 2131; then HasAddress4 must be false).
    member val Dhcp = false with get, set
    /// The DHCP host name (option 12), or null.
    member val DhcpHostName: string = null with get, set
    /// Whether DHCP starts in INIT-REBOOT, asking for DhcpPreviousAddress again.
    member val HasDhcpPreviousAddress = false with get, set
    /// The previous DHCP address (with HasDhcpPreviousAddress).
    member val DhcpPreviousAddress = Ipv4Address.Any with get, set
    /// The longest random wait before the first DHCP message.
    member val DhcpInitialDelayMax = 1_000_000L with get, set
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
        /// DHCP's classless static routes (RFC 3442); when not empty they replace Gateway4.
        Routes4: ClasslessRoute[]
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
    /// The DHCP lease changed: bound, renewed, or lost (read it with Interface.dhcpLease).
    | LeaseChanged = 5
    /// The DNS servers of router advertisements (RFC 8106 RDNSS) changed (Interface.dnsServers6).
    | DnsServersChanged = 6

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
        /// The DHCP client, when the IPv4 address comes from DHCP.
        Dhcp: DhcpClient voption
        /// DNS servers of router advertisements' RDNSS options (RFC 8106), most recent first,
        /// with the time each expires (Int64.MaxValue: never).
        Rdnss: struct (Ipv6Address * int64)[]
        /// The random draws' generator state (splitmix64).
        Rng: uint64
        Memo4Cache: obj
        Memo4Hop: Ipv4Address
        Memo4Mac: MacAddress
        Memo6Cache: obj
        Memo6Hop: Ipv6Address
        Memo6Mac: MacAddress
        Scratch: byte[]
        /// The multicast MACs of the groups joined above (RFC 1112 §6.4, RFC 2464 §7), whose
        /// frames are taken besides all-hosts, all-nodes and the solicited-node groups.
        GroupMacs: uint64[]
    }
