using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using Microsoft.FSharp.Core;
using NetStack.Core.Link;
using NetStack.Core.Wire;
using NetStack.Device;

namespace NetStack.Engine;

/// <summary>
/// The link layer between the engine and a device that carries Ethernet frames (a TAP device):
/// the engine still reads and writes whole IP packets, and this adapter frames them, answers ARP
/// (RFC 826) and Neighbor Discovery (RFC 4861) itself, and resolves each packet's next hop through
/// the pure <see cref="NeighborCache{Address}"/> of its family, queueing packets until the
/// neighbor answers.
/// </summary>
/// <remarks>
/// <para>
/// Inbound: frames for our MAC, broadcast, the all-nodes group and our solicited-node group are
/// accepted (the implicit multicast memberships of RFC 4861 §7.2.1); ARP and ND messages (ICMPv6
/// types 133–137 right after the IPv6 header) are consumed here, so the IP layer never sees them;
/// IPv4 and IPv6 packets are passed up without their Ethernet header and padding. Without
/// <see cref="NetStackOptions.VlanId"/>, tagged frames with a VLAN id other than 0 are dropped: the
/// stack is an untagged host. With it (IEEE 802.1Q), every frame sent carries that tag and only
/// frames with exactly that one tag are accepted; untagged frames (<c>link.drop.untagged</c>) and
/// other VLANs (<c>link.drop.vlan</c>) are dropped and counted.
/// </para>
/// <para>
/// Outbound: the next hop is the destination when it is on-link (the configured prefix, or
/// fe80::/10), else the gateway (for IPv6 also the router of the last router advertisement);
/// multicast maps to its group MAC (RFC 1112 §6.4, RFC 2464 §7), broadcast to ff:ff:ff:ff:ff:ff.
/// </para>
/// <para>
/// Start: constructing the adapter runs duplicate address detection for the IPv6 address (RFC
/// 4862 §5.4: a solicitation from ::, then <see cref="NeighborSettings.RetransTimer"/> of
/// listening) and announces the IPv4 address with gratuitous ARP (RFC 5227 §2.3).
/// </para>
/// <para>
/// Offloads: over a TAP device opened with a virtio-net header (<see cref="IOffloadPacketDevice"/>)
/// the adapter carries each packet's <see cref="VirtioNetHeader"/> through, moving csum_start and
/// hdr_len between the frame (where the kernel counts them) and the IP packet (where the engine
/// does) with <see cref="VirtioNet.shift"/>; the ARP and NDP frames it makes go with an empty header.
/// </para>
/// <para>
/// Threading: <see cref="TryRead"/> runs on the engine thread and also drives the neighbor timers
/// (its waits end at the next neighbor deadline); <see cref="Write(ReadOnlySpan{byte})"/> may come from any thread.
/// The caches and the frame buffer are guarded by one lock.
/// </para>
/// </remarks>
public sealed class EthernetPacketDevice : IOffloadPacketDevice
{
    // Room for a super-segment frame too: an IPv6 payload of 65535 bytes after its header.
    private const int FrameRoom = 65536 + 128 + Ethernet.HeaderLength + 2 * Ethernet.VlanTagLength;

    private readonly IPacketDevice _frames;
    private readonly IOffloadPacketDevice? _offloadFrames;
    private readonly Lock _gate = new();
    private readonly byte[] _in = new byte[FrameRoom];
    private readonly byte[] _out = new byte[FrameRoom];
    private readonly byte[] _control = new byte[256];
    private readonly long _epoch = Stopwatch.GetTimestamp();
    private readonly MacAddress _mac;
    private readonly bool _hasV4;
    private readonly Ipv4Address _v4;
    private readonly uint _mask4;
    private readonly bool _hasGateway4;
    private readonly Ipv4Address _gateway4;
    private readonly bool _hasV6;
    private readonly Ipv6Address _v6;
    private readonly int _prefix6;
    private readonly bool _hasGateway6;
    private readonly Ipv6Address _gateway6;
    private readonly string _name;
    private readonly int _vlan = -1;
    private NeighborCache<Ipv4Address> _arp;
    private NeighborCache<Ipv6Address> _ndp;
    private Ipv6Address _router6;
    private bool _hasRouter6;

    // The last next hop the fast path resolved, valid while the cache is the same immutable value.
    private NeighborCache<Ipv4Address>? _memo4Cache;
    private Ipv4Address _memo4Hop;
    private MacAddress _memo4Mac;
    private NeighborCache<Ipv6Address>? _memo6Cache;
    private Ipv6Address _memo6Hop;
    private MacAddress _memo6Mac;

    // Duplicate address detection in progress, and what it found.
    private bool _tentative;
    private MacAddress? _conflict;

    // Stateless address autoconfiguration (null: off), and the last addresses published to the
    // engine thread and to callers (a fresh array per change; readers take it with Volatile).
    private SlaacState? _slaac;
    private SlaacAddress[] _slaacAddresses = [];
    private const int MaxPrefixesPerAdvertisement = 32;

    // RFC 4861 §6.3.2 ReachableTime of each cache, drawn again from time to time and when a
    // router advertisement changes the IPv6 base.
    private ReachableTimeState _reachable4;
    private ReachableTimeState _reachable6;

    // RFC 5227 §2.4 conflict defence: when we last announced our IPv4 address against a conflict.
    private long? _lastDefence;
    private long? _lastConflictLogged;
    private readonly Microsoft.Extensions.Logging.ILogger _log;

    /// <summary>
    /// Wraps <paramref name="frames"/>, runs duplicate address detection and announces the
    /// addresses of <paramref name="options"/> (see the remarks).
    /// </summary>
    /// <param name="frames">A device whose packets are Ethernet frames (a TAP device's <see cref="TunPacketDevice"/>); the adapter owns it.</param>
    /// <param name="options">The stack's addresses, prefix lengths, gateways, MAC, <see cref="NetStackOptions.VlanId"/> and <see cref="NetStackOptions.Neighbor"/> settings.</param>
    /// <param name="statistics">Where the link counters go (null: a new set, see <see cref="Statistics"/>).</param>
    /// <param name="interfaceName">The interface's name, for messages.</param>
    /// <exception cref="ArgumentException">An option is invalid (a MAC that is not 6 bytes or is multicast, a prefix out of range, a VLAN id outside 1..4094).</exception>
    /// <exception cref="DuplicateAddressException">Another node answered for the IPv6 address during duplicate address detection.</exception>
    public EthernetPacketDevice(IPacketDevice frames, NetStackOptions options, NetStackStatistics? statistics = null, string interfaceName = "tap")
    {
        ArgumentNullException.ThrowIfNull(frames);
        ArgumentNullException.ThrowIfNull(options);
        options.Neighbor.Validate();
        _frames = frames;
        _offloadFrames = frames as IOffloadPacketDevice;
        _name = interfaceName;
        _log = options.LoggerFactory is { } factory
            ? Microsoft.Extensions.Logging.LoggerFactoryExtensions.CreateLogger<EthernetPacketDevice>(factory)
            : Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;
        Statistics = statistics ?? new NetStackStatistics();
        _mac = ToMac(options.MacAddress);
        if (options.VlanId is { } vlan)
        {
            if (vlan is < 1 or > 4094)
                throw new ArgumentException($"VlanId {vlan} is outside 1..4094.", nameof(options));
            _vlan = vlan;
        }
        if (options.Address is not null)
        {
            if (options.PrefixLength is < 0 or > 32)
                throw new ArgumentException($"PrefixLength {options.PrefixLength} is outside 0..32.", nameof(options));
            _hasV4 = true;
            _v4 = Ipv4Address.OfIPAddress(options.Address);
            _mask4 = options.PrefixLength == 0 ? 0u : uint.MaxValue << (32 - options.PrefixLength);
            if (options.Gateway is not null)
            {
                _hasGateway4 = true;
                _gateway4 = Ipv4Address.OfIPAddress(options.Gateway);
            }
        }

        if (options.Address6 is not null)
        {
            if (options.PrefixLength6 is < 0 or > 128)
                throw new ArgumentException($"PrefixLength6 {options.PrefixLength6} is outside 0..128.", nameof(options));
            _hasV6 = true;
            _v6 = Ipv6Address.OfIPAddress(options.Address6);
            _prefix6 = options.PrefixLength6;
            if (options.Gateway6 is not null)
            {
                _hasGateway6 = true;
                _gateway6 = Ipv6Address.OfIPAddress(options.Gateway6);
            }
        }

        var n = options.Neighbor;
        var config = new NeighborCacheConfig(
            Micros(n.ReachableTime), Micros(n.RetransTimer), Micros(n.DelayFirstProbeTime),
            3, 3, Micros(n.StaleLifetime), n.MaxEntries, n.MaxQueuedPerEntry, n.MaxQueuedBytes);
        _arp = NeighborCache.create<Ipv4Address>(config);
        _ndp = NeighborCache.create<Ipv6Address>(config);
        long start = Now();
        _reachable4 = ReachableTime.create(start, config.ReachableTime, Random.Shared.NextDouble());
        _reachable6 = ReachableTime.create(start, config.ReachableTime, Random.Shared.NextDouble());
        _arp = NeighborCache.withTimers(_reachable4.Current, config.RetransTimer, _arp);
        _ndp = NeighborCache.withTimers(_reachable6.Current, config.RetransTimer, _ndp);
        Mtu = frames.Mtu;
        if (options.Slaac && _hasV6)
        {
            byte[] secret = options.SlaacSecretKey ?? System.Security.Cryptography.RandomNumberGenerator.GetBytes(32);
            var slaac = Core.Link.Slaac.config(secret, _mac, FSharpValueOption<Ipv6Address>.Some(_v6));
            slaac = new SlaacConfig(slaac.Secret, slaac.Mac, slaac.Configured, slaac.MaxAddresses, n.DadTransmits,
                Micros(n.RetransTimer), slaac.IdGenRetries, slaac.MaxRouterSolicitations, slaac.RouterSolicitationInterval,
                slaac.TicksPerSecond);
            // RFC 4861 §6.3.7: the first solicitation after a random delay of up to
            // MAX_RTR_SOLICITATION_DELAY (1 s), so hosts starting together do not collide.
            _slaac = Core.Link.Slaac.create(slaac, Now() + Random.Shared.NextInt64(1_000_000));
        }
        try
        {
            Announce(n);
        }
        catch
        {
            frames.Dispose();
            throw;
        }
    }

    /// <summary>The stack's MAC address on the link.</summary>
    public PhysicalAddress MacAddress => ToPhysical(_mac);

    /// <summary>
    /// The link counters: <c>arp.*</c>, <c>ndp.*</c>, <c>link.*</c> (drops by reason, frames
    /// not for us, packets dropped while waiting for resolution).
    /// </summary>
    public NetStackStatistics Statistics { get; }

    /// <summary>The IP MTU: the device's MTU (the Ethernet header is not part of it).</summary>
    public int Mtu { get; }

    /// <summary>The frame device underneath.</summary>
    public IPacketDevice Inner => _frames;

    /// <summary>
    /// The offloads of the frame device underneath (a TAP device opened with a virtio-net
    /// header), or <see cref="TunOffloads.None"/>. The headers this adapter reads and writes count
    /// their offsets from the IP packet, as on a TUN device; it moves them by the Ethernet header.
    /// </summary>
    public TunOffloads Offloads => _offloadFrames?.Offloads ?? TunOffloads.None;

    /// <summary>
    /// The addresses stateless address autoconfiguration formed so far (tentative ones included),
    /// oldest first; empty when <see cref="NetStackOptions.Slaac"/> is off. A snapshot, replaced
    /// on every change: compare references to notice one.
    /// </summary>
    public IReadOnlyList<SlaacAddress> AutoconfiguredAddresses => Volatile.Read(ref _slaacAddresses);

    /// <summary>The current time of the adapter's clock (microseconds), the clock of <see cref="AutoconfiguredAddresses"/>' lifetimes.</summary>
    public long Clock => Now();

    /// <summary>
    /// The IPv6 neighbor cache's ReachableTime (RFC 4861 §6.3.2: drawn between 0.5 and 1.5 times
    /// the base, <see cref="NeighborSettings.ReachableTime"/> or a router advertisement's Reachable
    /// Time) and RetransTimer (the settings' or a router advertisement's).
    /// </summary>
    public (TimeSpan ReachableTime, TimeSpan RetransTimer) Ipv6NeighborTimers
    {
        get
        {
            lock (_gate)
                return (TimeSpan.FromMicroseconds(_ndp.Config.ReachableTime), TimeSpan.FromMicroseconds(_ndp.Config.RetransTimer));
        }
    }

    /// <summary>A snapshot of both neighbor caches: address, link-layer address (empty while unresolved) and RFC 4861 state.</summary>
    public IReadOnlyList<(IPAddress Address, PhysicalAddress Mac, string State)> Neighbors()
    {
        var list = new List<(IPAddress, PhysicalAddress, string)>();
        lock (_gate)
        {
            foreach (var kv in _arp.Entries)
                list.Add((kv.Key.ToIPAddress(), ToPhysical(kv.Value.Mac), kv.Value.State.ToString()));
            foreach (var kv in _ndp.Entries)
                list.Add((kv.Key.ToIPAddress(), ToPhysical(kv.Value.Mac), kv.Value.State.ToString()));
        }

        return list;
    }

    private long Now() => (long)Stopwatch.GetElapsedTime(_epoch).TotalMicroseconds;

    private static long Micros(TimeSpan t) => t.Ticks / (TimeSpan.TicksPerMillisecond / 1000);

    private static MacAddress ToMac(PhysicalAddress? address)
    {
        if (address is null)
            return Core.Link.MacAddress.LocallyAdministered((ulong)Random.Shared.NextInt64());
        byte[] bytes = address.GetAddressBytes();
        if (bytes.Length != 6)
            throw new ArgumentException($"MacAddress has {bytes.Length} bytes; Ethernet needs 6.", "options");
        var mac = Core.Link.MacAddress.Read(bytes);
        if (mac.IsMulticast || mac.Value == 0)
            throw new ArgumentException($"MacAddress {mac} is not a unicast address.", "options");
        return mac;
    }

    private static PhysicalAddress ToPhysical(MacAddress mac)
    {
        var bytes = new byte[6];
        mac.Write(bytes);
        return new PhysicalAddress(bytes);
    }

    // ------------------------------------------------------------------------------------------
    // Start: duplicate address detection and gratuitous ARP
    // ------------------------------------------------------------------------------------------

    private void Announce(NeighborSettings settings)
    {
        if (_hasV6 && settings.DadTransmits > 0)
        {
            var group = Ndp.solicitedNode(_v6);
            _tentative = true;
            var scratch = new byte[FrameRoom];
            for (int i = 0; i < settings.DadTransmits && _conflict is null; i++)
            {
                lock (_gate)
                {
                    // RFC 4862 §5.4.2: from the unspecified address, no source link-layer option.
                    int icmp = Ndp.writeNeighborSolicitation(Ipv6Address.Any, group, _v6, FSharpValueOption<MacAddress>.None, _control.AsSpan(Ipv6.HeaderLength));
                    WriteIpv6Header(Ipv6Address.Any, group, icmp);
                    WriteFrame(Core.Link.MacAddress.OfIpv6Multicast(group), EtherType.Ipv6, _control.AsSpan(0, Ipv6.HeaderLength + icmp));
                    Statistics.Increment("ndp.dad.sent");
                }

                long until = Now() + Micros(settings.RetransTimer);
                while (_conflict is null)
                {
                    long left = until - Now();
                    if (left <= 0)
                        break;
                    if (_frames.TryRead(_in, (int)Math.Max(1, left / 1000), out int n))
                        Receive(_in.AsSpan(0, n), scratch);
                }
            }

            _tentative = false;
            if (_conflict is { } owner)
            {
                Statistics.Increment("ndp.dad.failed");
                throw new DuplicateAddressException(_v6.ToIPAddress(), ToPhysical(owner), _name);
            }
        }

        if (_hasV4)
        {
            for (int i = 0; i < settings.GratuitousArps; i++)
            {
                lock (_gate)
                {
                    int n = Arp.write(Arp.announcement(_mac, _v4), _control);
                    WriteFrame(Core.Link.MacAddress.Broadcast, EtherType.Arp, _control.AsSpan(0, n));
                    Statistics.Increment("arp.announcement.sent");
                }
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // Reading
    // ------------------------------------------------------------------------------------------

    /// <inheritdoc/>
    /// <remarks>
    /// Over a device with offloads, a partial checksum is completed here and a super-segment,
    /// which a reader without offload support could not take, is dropped (<c>link.drop.gso</c>).
    /// </remarks>
    public bool TryRead(Span<byte> buffer, int millisecondsTimeout, out int length)
    {
        while (TryReadWithHeader(buffer, millisecondsTimeout, out length, out var header))
        {
            if (header.IsSegmented)
            {
                Statistics.Increment("link.drop.gso");
                continue;
            }

            if (header.NeedsChecksum)
                VirtioNet.completeChecksum(header, buffer[..length]);
            return true;
        }

        return false;
    }

    /// <inheritdoc/>
    public bool TryReadWithHeader(Span<byte> buffer, int millisecondsTimeout, out int length, out VirtioNetHeader header)
    {
        long start = Now();
        long deadline = millisecondsTimeout < 0 ? long.MaxValue : start + millisecondsTimeout * 1000L;
        while (true)
        {
            long now = Now();
            RunTimers(now);
            long next = Math.Min(deadline, NextNeighborDeadline());
            int wait = next == long.MaxValue ? -1 : (int)Math.Clamp((next - now + 999) / 1000, 0, int.MaxValue);
            var frameHeader = VirtioNetHeader.None;
            bool read = _offloadFrames is not null
                ? _offloadFrames.TryReadWithHeader(_in, wait, out int n, out frameHeader)
                : _frames.TryRead(_in, wait, out n);
            if (read)
            {
                int ip = Receive(_in.AsSpan(0, n), buffer, out int linkHeader);
                if (ip > 0)
                {
                    // The frame's offsets count the Ethernet header (and any VLAN tag); ours do not.
                    var shifted = VirtioNet.shift(-linkHeader, frameHeader);
                    if (shifted.IsNone)
                    {
                        Statistics.Increment("link.drop.bad-vnet-header");
                        continue;
                    }

                    length = ip;
                    header = shifted.Value;
                    return true;
                }

                continue;
            }

            now = Now();
            // Out of time, or woken early (Wake) before any neighbor timer was due.
            if (now >= deadline || now < next)
            {
                length = 0;
                header = VirtioNetHeader.None;
                return false;
            }
        }
    }

    private long NextNeighborDeadline()
    {
        lock (_gate)
        {
            long next = Math.Min(Math.Min(_arp.NextDeadline, _ndp.NextDeadline), Math.Min(_reachable4.RecomputeAt, _reachable6.RecomputeAt));
            return _slaac is null ? next : Math.Min(next, Core.Link.Slaac.nextDeadline(_slaac));
        }
    }

    private void RunTimers(long now)
    {
        lock (_gate)
        {
            if (_arp.NextDeadline <= now)
                Apply(NeighborCache.tick(now, _arp));
            if (_ndp.NextDeadline <= now)
                Apply(NeighborCache.tick(now, _ndp));
            // §6.3.2: a fresh random ReachableTime every few hours even when the base stays.
            var r4 = ReachableTime.tick(now, Random.Shared.NextDouble(), _reachable4);
            if (r4.Item2)
            {
                _reachable4 = r4.Item1;
                _arp = NeighborCache.withTimers(_reachable4.Current, _arp.Config.RetransTimer, _arp);
            }

            var r6 = ReachableTime.tick(now, Random.Shared.NextDouble(), _reachable6);
            if (r6.Item2)
            {
                _reachable6 = r6.Item1;
                _ndp = NeighborCache.withTimers(_reachable6.Current, _ndp.Config.RetransTimer, _ndp);
            }
            if (_slaac is not null && Core.Link.Slaac.nextDeadline(_slaac) <= now)
                Apply(Core.Link.Slaac.tick(now, _slaac));
        }
    }

    // ------------------------------------------------------------------------------------------
    // Stateless address autoconfiguration (RFC 4862 §5.5; the pure part is Core.Link.Slaac)
    // ------------------------------------------------------------------------------------------

    /// <summary>Takes a new autoconfiguration state, does what its events ask and publishes the addresses (callers hold the lock).</summary>
    private void Apply(Tuple<SlaacState, Microsoft.FSharp.Collections.FSharpList<SlaacEvent>> result)
    {
        var before = _slaac;
        _slaac = result.Item1;
        foreach (var e in result.Item2)
        {
            switch (e)
            {
                case SlaacEvent.Probe p:
                    {
                        // RFC 4862 §5.4.2: from the unspecified address to the solicited-node group.
                        var group = Ndp.solicitedNode(p.probe);
                        int icmp = Ndp.writeNeighborSolicitation(Ipv6Address.Any, group, p.probe, FSharpValueOption<MacAddress>.None, _control.AsSpan(Ipv6.HeaderLength));
                        WriteIpv6Header(Ipv6Address.Any, group, icmp);
                        WriteFrame(Core.Link.MacAddress.OfIpv6Multicast(group), EtherType.Ipv6, _control.AsSpan(0, Ipv6.HeaderLength + icmp));
                        Statistics.Increment("ndp.dad.sent");
                        break;
                    }

                case SlaacEvent.Ignored i:
                    Statistics.Increment("ndp.slaac.ignored." + i.reason);
                    break;
                default:
                    if (e.IsSolicitRouters)
                        SendRouterSolicitation();
                    else
                        Statistics.Increment("ndp.slaac." + EventName(e));
                    break;
            }
        }

        if (before is null || !ReferenceEquals(before.Addresses, _slaac.Addresses))
            Volatile.Write(ref _slaacAddresses, [.. _slaac.Addresses]);
    }

    private static string EventName(SlaacEvent e) => e switch
    {
        SlaacEvent.Formed => "formed",
        SlaacEvent.Assigned => "assigned",
        SlaacEvent.Deprecated => "deprecated",
        SlaacEvent.Removed => "removed",
        SlaacEvent.Duplicate => "duplicate",
        SlaacEvent.Refreshed => "refreshed",
        SlaacEvent.TwoHourRule => "two-hour-rule",
        _ => "other",
    };

    /// <summary>RFC 4861 §6.3.7: to all routers, from our address with our MAC as source link-layer address.</summary>
    private void SendRouterSolicitation()
    {
        int icmp = Ndp.writeRouterSolicitation(_v6, Ndp.AllRouters, FSharpValueOption<MacAddress>.Some(_mac), _control.AsSpan(Ipv6.HeaderLength));
        WriteIpv6Header(_v6, Ndp.AllRouters, icmp);
        WriteFrame(Core.Link.MacAddress.OfIpv6Multicast(Ndp.AllRouters), EtherType.Ipv6, _control.AsSpan(0, Ipv6.HeaderLength + icmp));
        Statistics.Increment("ndp.rs.sent");
    }

    /// <summary>The autoconfigured address equal to <paramref name="address"/>, if any (callers hold the lock).</summary>
    private bool TryFindAutoconfigured(Ipv6Address address, out SlaacAddress found)
    {
        if (_slaac is not null)
        {
            foreach (var a in _slaac.Addresses)
            {
                if (a.Address.Equals(address))
                {
                    found = a;
                    return true;
                }
            }
        }

        found = default;
        return false;
    }

    private bool Accepts(MacAddress destination)
    {
        if (destination.Equals(_mac) || destination.IsBroadcast)
            return true;
        // 33:33 + the low 32 bits of the group: all-nodes (ff02::1) and our solicited-node group.
        if (_hasV6 && (destination.Value >> 32) == 0x3333)
        {
            uint group = (uint)destination.Value;
            if (group == 1 || group == (0xFF000000u | (uint)(_v6.Low & 0xFFFFFF)))
                return true;
            // The solicited-node groups of the autoconfigured addresses, tentative ones too
            // (RFC 4862 §5.4.2: joined before the first DAD probe).
            foreach (var a in Volatile.Read(ref _slaacAddresses))
            {
                if (group == (0xFF000000u | (uint)(a.Address.Low & 0xFFFFFF)))
                    return true;
            }
        }

        return false;
    }

    /// <summary>Handles one frame; returns the length of the IP packet copied to <paramref name="buffer"/>, or 0.</summary>
    private int Receive(ReadOnlySpan<byte> frame, Span<byte> buffer) => Receive(frame, buffer, out _);

    /// <summary>As above; <paramref name="linkHeader"/> is the Ethernet header's length, VLAN tags included.</summary>
    private int Receive(ReadOnlySpan<byte> frame, Span<byte> buffer, out int linkHeader)
    {
        linkHeader = 0;
        var parsed = Ethernet.parse(frame);
        if (parsed.IsError)
        {
            Statistics.Increment("link.drop.malformed");
            return 0;
        }

        var eth = parsed.ResultValue;
        if (_vlan < 0 ? eth.VlanTags > 0 && eth.VlanId != 0 : eth.VlanTags != 1 || eth.VlanId != _vlan)
        {
            Statistics.Increment(eth.VlanTags == 0 ? "link.drop.untagged" : "link.drop.vlan");
            return 0;
        }

        if (!Accepts(eth.Destination))
        {
            Statistics.Increment("link.drop.not-for-us");
            return 0;
        }

        linkHeader = eth.PayloadOffset;
        var payload = frame[eth.PayloadOffset..];
        switch (eth.EtherType)
        {
            case EtherType.Arp:
                lock (_gate)
                    OnArp(payload, eth.Source);
                return 0;
            case EtherType.Ipv4 when _hasV4 && payload.Length >= 20 && payload[0] >> 4 == 4:
                {
                    int total = BinaryPrimitives.ReadUInt16BigEndian(payload[2..]);
                    return CopyUp(payload, total, buffer);
                }

            case EtherType.Ipv6 when _hasV6 && payload.Length >= Ipv6.HeaderLength && payload[0] >> 4 == 6:
                {
                    int total = Ipv6.HeaderLength + BinaryPrimitives.ReadUInt16BigEndian(payload[4..]);
                    if (payload[6] == IpProtocol.Icmpv6 && payload.Length > Ipv6.HeaderLength
                        && payload[Ipv6.HeaderLength] is >= Ndp.MessageType.RouterSolicitation and <= Ndp.MessageType.Redirect)
                    {
                        lock (_gate)
                            OnNdp(payload[..Math.Min(total, payload.Length)], eth.Source);
                        return 0;
                    }

                    return CopyUp(payload, total, buffer);
                }

            default:
                Statistics.Increment("link.drop.ethertype");
                return 0;
        }
    }

    // The IP packet without the Ethernet padding (frames are at least 60 bytes, RFC 894).
    private int CopyUp(ReadOnlySpan<byte> payload, int total, Span<byte> buffer)
    {
        int length = total > 0 && total <= payload.Length ? total : payload.Length;
        if (length > buffer.Length)
        {
            Statistics.Increment("link.drop.too-long");
            return 0;
        }

        payload[..length].CopyTo(buffer);
        return length;
    }

    private void OnArp(ReadOnlySpan<byte> payload, MacAddress frameSource)
    {
        var parsed = Arp.parse(payload);
        if (parsed.IsError)
        {
            Statistics.Increment("arp.drop.malformed");
            return;
        }

        var arp = parsed.ResultValue;
        Statistics.Increment("arp.received");
        if (!_hasV4 || arp.SenderMac.Equals(_mac) || arp.SenderMac.IsMulticast)
            return;
        if (Arp.isConflict(_v4, _mac, arp))
        {
            // Someone else claims our address (RFC 5227 §2.4 c): we keep it, and announce it once
            // per DEFEND_INTERVAL at most; conflicts in between are only counted and logged.
            Statistics.Increment("arp.conflict");
            long at = Now();
            var last = _lastDefence is { } l ? FSharpValueOption<long>.Some(l) : FSharpValueOption<long>.None;
            if (Arp.shouldDefend(at, last, Arp.DefendIntervalSeconds * 1_000_000L))
            {
                _lastDefence = at;
                int n = Arp.write(Arp.announcement(_mac, _v4), _control);
                WriteFrame(Core.Link.MacAddress.Broadcast, EtherType.Arp, _control.AsSpan(0, n));
                Statistics.Increment("arp.defended");
                Diagnostics.LinkLog.ArpConflictDefended(_log, _name, ToPhysical(arp.SenderMac), _v4.ToIPAddress());
            }
            else if (_lastConflictLogged is not { } logged || at - logged >= Arp.DefendIntervalSeconds * 1_000_000L)
            {
                // Logged once per interval too, so a flood of forged packets cannot flood the log.
                _lastConflictLogged = at;
                Diagnostics.LinkLog.ArpConflictNotDefended(_log, _name, ToPhysical(arp.SenderMac), _v4.ToIPAddress());
            }

            return;
        }

        bool forUs = arp.TargetIp.Equals(_v4);
        long now = Now();
        if (arp.SenderIp.Value != 0)
        {
            // RFC 826: merge the sender into an existing entry; add it when the packet is for us.
            // A reply for us confirms a resolution we started.
            if (arp.Operation == Arp.Operation.Reply && forUs)
                Apply(NeighborCache.advertise(now, arp.SenderIp, arp.SenderMac, true, true, _arp));
            else
                Apply(NeighborCache.learn(now, arp.SenderIp, arp.SenderMac, forUs, _arp));
        }

        if (forUs && arp.Operation == Arp.Operation.Request)
        {
            int n = Arp.write(Arp.replyTo(arp, _mac), _control);
            WriteFrame(arp.SenderIp.Value == 0 ? frameSource : arp.SenderMac, EtherType.Arp, _control.AsSpan(0, n));
            Statistics.Increment("arp.reply.sent");
        }
    }

    private void OnNdp(ReadOnlySpan<byte> packet, MacAddress frameSource)
    {
        var header = Ipv6.parse(packet);
        if (header.IsError)
        {
            Statistics.Increment("ndp.drop.malformed");
            return;
        }

        var h = header.ResultValue;
        var parsed = Ndp.parse(h.Source, h.Destination, h.HopLimit, packet.Slice(Ipv6.HeaderLength, h.PayloadLength));
        if (parsed.IsError)
        {
            Statistics.Increment("ndp.drop.invalid");
            return;
        }

        var m = parsed.ResultValue;
        long now = Now();
        bool unspecified = h.Source.Equals(Ipv6Address.Any);
        switch (m.Type)
        {
            case Ndp.MessageType.NeighborSolicitation:
                Statistics.Increment("ndp.ns.received");
                if (!m.Target.Equals(_v6))
                {
                    if (TryFindAutoconfigured(m.Target, out var own))
                        OnSolicitationForAutoconfigured(own, h.Source, m.SourceLinkAddress, now);
                    return;
                }

                if (_tentative)
                {
                    // RFC 4862 §5.4.3: a DAD probe for our tentative address means another node
                    // wants it too; any other solicitation for it is not answered yet.
                    if (unspecified)
                        _conflict = frameSource;
                    return;
                }

                if (unspecified)
                {
                    // Someone runs DAD for our address: defend it to all nodes (§7.2.4), S clear.
                    SendAdvertisement(_v6, Ndp.AllNodes, solicited: false, FSharpValueOption<MacAddress>.Some(Core.Link.MacAddress.OfIpv6Multicast(Ndp.AllNodes)), now);
                    return;
                }

                if (m.SourceLinkAddress.IsSome)
                    Apply(NeighborCache.learn(now, h.Source, m.SourceLinkAddress.Value, true, _ndp));
                SendAdvertisement(_v6, h.Source, solicited: true, m.SourceLinkAddress, now);
                return;

            case Ndp.MessageType.NeighborAdvertisement:
                Statistics.Increment("ndp.na.received");
                if (m.Target.Equals(_v6))
                {
                    Statistics.Increment("ndp.conflict");
                    if (_tentative)
                        _conflict = m.TargetLinkAddress.IsSome ? m.TargetLinkAddress.Value : frameSource;
                    return;
                }

                if (TryFindAutoconfigured(m.Target, out var mine))
                {
                    // §5.4.4: an advertisement for a tentative address ends its DAD; for an
                    // assigned one it is a conflict we count and outlast (we keep answering).
                    Statistics.Increment("ndp.conflict");
                    if (mine.State == SlaacAddressState.Tentative)
                        Apply(Core.Link.Slaac.duplicate(now, mine.Address, _slaac));
                    return;
                }

                MacAddress mac;
                if (m.TargetLinkAddress.IsSome)
                    mac = m.TargetLinkAddress.Value;
                else if (_ndp.Entries.TryGetValue(m.Target, out var entry) && entry.State != NeighborState.Incomplete)
                    mac = entry.Mac;
                else
                    return; // §7.2.5: no link-layer address to learn
                Apply(NeighborCache.advertise(now, m.Target, mac, m.Solicited, m.Override, _ndp));
                return;

            case Ndp.MessageType.RouterAdvertisement:
                Statistics.Increment("ndp.ra.received");
                if (m.RouterLifetime > 0)
                {
                    _router6 = h.Source;
                    _hasRouter6 = true;
                }
                else if (_hasRouter6 && _router6.Equals(h.Source))
                {
                    _hasRouter6 = false;
                }

                if (m.SourceLinkAddress.IsSome)
                    Apply(NeighborCache.learn(now, h.Source, m.SourceLinkAddress.Value, true, _ndp));
                OnAdvertisedTimers(now, m.ReachableTime, m.RetransTimer);
                if (_slaac is not null)
                {
                    var prefixes = Ndp.prefixes(packet.Slice(Ipv6.HeaderLength, h.PayloadLength), MaxPrefixesPerAdvertisement);
                    Apply(Core.Link.Slaac.onRouterAdvertisement(now, m.RouterLifetime, prefixes, _slaac));
                }

                return;

            default:
                // Router solicitations are for routers; redirects are not acted on.
                Statistics.Increment("ndp.ignored");
                return;
        }
    }

    /// <summary>RFC 4861 §6.3.4: a router advertisement's Reachable Time and Retrans Timer, when non-zero, set the IPv6 cache's (callers hold the lock).</summary>
    private void OnAdvertisedTimers(long now, uint reachableMs, uint retransMs)
    {
        var r = ReachableTime.onAdvertisement(now, reachableMs, Random.Shared.NextDouble(), _reachable6);
        long retrans = ReachableTime.retransTimer(retransMs, _ndp.Config.RetransTimer);
        if (!r.Item2 && retrans == _ndp.Config.RetransTimer)
            return;
        _reachable6 = r.Item1;
        _ndp = NeighborCache.withTimers(_reachable6.Current, retrans, _ndp);
        Statistics.Increment("ndp.ra.timers");
    }

    /// <summary>A solicitation for an autoconfigured address: DAD (§5.4.3) while it is tentative, else answered as for the configured one.</summary>
    private void OnSolicitationForAutoconfigured(SlaacAddress own, Ipv6Address source, FSharpValueOption<MacAddress> sourceMac, long now)
    {
        bool unspecified = source.Equals(Ipv6Address.Any);
        if (own.State == SlaacAddressState.Tentative)
        {
            // Another node's DAD probe for the same tentative address: neither may have it.
            if (unspecified)
                Apply(Core.Link.Slaac.duplicate(now, own.Address, _slaac));
            return;
        }

        if (unspecified)
        {
            SendAdvertisement(own.Address, Ndp.AllNodes, solicited: false, FSharpValueOption<MacAddress>.Some(Core.Link.MacAddress.OfIpv6Multicast(Ndp.AllNodes)), now);
            return;
        }

        if (sourceMac.IsSome)
            Apply(NeighborCache.learn(now, source, sourceMac.Value, true, _ndp));
        SendAdvertisement(own.Address, source, solicited: true, sourceMac, now);
    }

    /// <summary>Answers a solicitation for one of our addresses (RFC 4861 §7.2.4), from it, with our MAC as target link-layer address.</summary>
    private void SendAdvertisement(Ipv6Address target, Ipv6Address destination, bool solicited, FSharpValueOption<MacAddress> destinationMac, long now)
    {
        int icmp = Ndp.writeNeighborAdvertisement(target, destination, target, false, solicited, true,
            FSharpValueOption<MacAddress>.Some(_mac), _control.AsSpan(Ipv6.HeaderLength));
        WriteIpv6Header(target, destination, icmp);
        int length = Ipv6.HeaderLength + icmp;
        Statistics.Increment("ndp.na.sent");
        if (destinationMac.IsSome)
            WriteFrame(destinationMac.Value, EtherType.Ipv6, _control.AsSpan(0, length));
        else
            SendVia(destination, _control.AsSpan(0, length), now);
    }

    private void WriteIpv6Header(Ipv6Address source, Ipv6Address destination, int payloadLength)
    {
        var header = new Ipv6Header(0, 0, payloadLength, IpProtocol.Icmpv6, Ndp.HopLimit, source, destination, Ipv6.HeaderLength);
        Ipv6.write(header, _control);
    }

    // ------------------------------------------------------------------------------------------
    // Writing
    // ------------------------------------------------------------------------------------------

    /// <inheritdoc/>
    public void Write(ReadOnlySpan<byte> packet) => Write(packet, VirtioNetHeader.None);

    /// <inheritdoc/>
    /// <remarks>
    /// The header's offsets count from the IP packet; the frame's header gets them moved by the
    /// Ethernet header's length. The neighbor queue holds ordinary packets: for a neighbor still
    /// being resolved, a partial checksum is completed before queueing, a UDP super-datagram is
    /// cut into its datagrams (<c>link.uso.cut-for-queue</c>), and a TCP super-segment is dropped
    /// (<c>link.drop.unresolved-gso</c>; TCP sends it again).
    /// </remarks>
    /// <exception cref="ArgumentException">The packet is empty or not IPv4/IPv6.</exception>
    /// <exception cref="InvalidOperationException">The header is not None but the frame device carries no virtio-net header.</exception>
    public void Write(ReadOnlySpan<byte> packet, in VirtioNetHeader header) =>
        WritePieces(new Pieces(packet, default, default), header);

    /// <inheritdoc/>
    /// <remarks>
    /// The frame device gets the pieces as they are, behind the frame header and
    /// <paramref name="head"/> (a gather write: the payload is not copied here). A
    /// <paramref name="head"/> shorter than the IP header is joined with the rest first.
    /// </remarks>
    public void WriteGather(ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload, ReadOnlySpan<byte> payloadTail) =>
        WriteGather(head, payload, payloadTail, VirtioNetHeader.None);

    /// <inheritdoc/>
    /// <remarks>As <see cref="WriteGather(ReadOnlySpan{byte}, ReadOnlySpan{byte}, ReadOnlySpan{byte})"/>, with the offload metadata moved by the frame header.</remarks>
    public void WriteGather(ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload, ReadOnlySpan<byte> payloadTail, in VirtioNetHeader header)
    {
        int ipHeader = !head.IsEmpty && head[0] >> 4 == 6 ? Ipv6.HeaderLength : 20;
        if (head.Length >= ipHeader || (payload.IsEmpty && payloadTail.IsEmpty))
        {
            WritePieces(new Pieces(head, payload, payloadTail), header);
            return;
        }

        int length = head.Length + payload.Length + payloadTail.Length;
        byte[] joined = System.Buffers.ArrayPool<byte>.Shared.Rent(Math.Max(length, 1));
        try
        {
            PacketPieces.Join(head, payload, payloadTail, joined);
            WritePieces(new Pieces(joined.AsSpan(0, length), default, default), header);
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(joined);
        }
    }

    /// <summary>An IP packet in three consecutive pieces, its IP header whole in the first.</summary>
    private readonly ref struct Pieces(ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload, ReadOnlySpan<byte> tail)
    {
        public readonly ReadOnlySpan<byte> Head = head;
        public readonly ReadOnlySpan<byte> Payload = payload;
        public readonly ReadOnlySpan<byte> Tail = tail;

        public int Length => Head.Length + Payload.Length + Tail.Length;

        public bool IsWhole => Payload.IsEmpty && Tail.IsEmpty;

        public byte[] ToArray()
        {
            var joined = new byte[Length];
            PacketPieces.Join(Head, Payload, Tail, joined);
            return joined;
        }
    }

    private void WritePieces(in Pieces packet, in VirtioNetHeader header)
    {
        if (packet.Length == 0)
            throw new ArgumentException("An IP packet cannot be empty.", nameof(packet));
        if (_offloadFrames is null && !IsPlain(header))
            throw new InvalidOperationException("The frame device under the Ethernet adapter carries no offload metadata.");
        var head = packet.Head;
        int version = head.IsEmpty ? 0 : head[0] >> 4;
        lock (_gate)
        {
            if (version == 4 && head.Length >= 20)
            {
                var destination = Ipv4Address.Read(head[16..]);
                WriteIpv4(destination, packet, header);
            }
            else if (version == 6 && head.Length >= Ipv6.HeaderLength)
            {
                var destination = Ipv6Address.Read(head[24..]);
                if (destination.IsMulticast)
                {
                    WriteFrame(Core.Link.MacAddress.OfIpv6Multicast(destination), EtherType.Ipv6, packet, header);
                    return;
                }

                SendVia(destination, packet, Now(), header);
            }
            else
            {
                throw new ArgumentException("Not an IPv4 or IPv6 packet.", nameof(packet));
            }
        }
    }

    private static bool IsPlain(in VirtioNetHeader header) =>
        header.Flags == VirtioNetFlags.None && header.GsoType == VirtioGsoType.None;

    /// <summary>
    /// The copies of <paramref name="packet"/> the neighbor queue keeps: an ordinary packet (its
    /// partial checksum completed); a UDP super-datagram cut into its datagrams (UDP has no
    /// retransmission to make up for a drop); nothing for a TCP super-segment, which is counted
    /// and dropped (TCP sends it again).
    /// </summary>
    private List<byte[]> Queueable(in Pieces packet, in VirtioNetHeader header)
    {
        if (header.IsSegmented)
        {
            if (header.Segmentation == VirtioGsoType.UdpL4)
            {
                Statistics.Increment("link.uso.cut-for-queue");
                return [.. Core.Stack.IpLayer.cutUdpSegments(packet.ToArray(), header.GsoSize)];
            }
            Statistics.Increment("link.drop.unresolved-gso");
            return [];
        }

        var copy = packet.ToArray();
        if (header.NeedsChecksum)
            VirtioNet.completeChecksum(header, copy);
        return [copy];
    }

    private void WriteIpv4(Ipv4Address destination, in Pieces packet, in VirtioNetHeader header)
    {
        uint d = destination.Value;
        if (d == uint.MaxValue || (_mask4 != uint.MaxValue && (d & ~_mask4) == ~_mask4 && ((d ^ _v4.Value) & _mask4) == 0))
        {
            WriteFrame(Core.Link.MacAddress.Broadcast, EtherType.Ipv4, packet, header);
            return;
        }

        if ((d >> 28) == 0xE)
        {
            WriteFrame(Core.Link.MacAddress.OfIpv4Multicast(destination), EtherType.Ipv4, packet, header);
            return;
        }

        Ipv4Address hop;
        if (((d ^ _v4.Value) & _mask4) == 0)
            hop = destination;
        else if (_hasGateway4)
            hop = _gateway4;
        else
        {
            Statistics.Increment("link.drop.no-route");
            return;
        }

        if (ReferenceEquals(_memo4Cache, _arp) && _memo4Hop.Equals(hop))
        {
            WriteFrame(_memo4Mac, EtherType.Ipv4, packet, header);
            return;
        }

        var mac = NeighborCache.tryResolve(hop, _arp);
        if (mac.IsSome)
        {
            (_memo4Cache, _memo4Hop, _memo4Mac) = (_arp, hop, mac.Value);
            WriteFrame(mac.Value, EtherType.Ipv4, packet, header);
            return;
        }

        long before = _arp.NextDeadline;
        foreach (var queued in Queueable(packet, header))
            Apply(NeighborCache.send(Now(), hop, queued, _arp));
        if (_arp.NextDeadline < before)
            _frames.Wake(); // a new resolution timer the reader's current wait does not know
    }

    private bool OnLink6(Ipv6Address destination)
    {
        if (Ndp.isLinkLocal(destination))
            return true;
        if (_prefix6 == 0)
            return true;
        // Prefixes advertised with the L flag are on-link too (RFC 4861 §6.3.4), while their
        // addresses last.
        foreach (var a in Volatile.Read(ref _slaacAddresses))
        {
            if (a.OnLink && a.Prefix.High == destination.High)
                return true;
        }

        ulong highMask = _prefix6 >= 64 ? ulong.MaxValue : ulong.MaxValue << (64 - _prefix6);
        ulong lowMask = _prefix6 <= 64 ? 0 : _prefix6 == 128 ? ulong.MaxValue : ulong.MaxValue << (128 - _prefix6);
        return ((destination.High ^ _v6.High) & highMask) == 0 && ((destination.Low ^ _v6.Low) & lowMask) == 0;
    }

    private void SendVia(Ipv6Address destination, ReadOnlySpan<byte> packet, long now) =>
        SendVia(destination, new Pieces(packet, default, default), now, VirtioNetHeader.None);

    private void SendVia(Ipv6Address destination, in Pieces packet, long now, in VirtioNetHeader header)
    {
        Ipv6Address hop;
        if (OnLink6(destination))
            hop = destination;
        else if (_hasGateway6)
            hop = _gateway6;
        else if (_hasRouter6)
            hop = _router6;
        else
        {
            Statistics.Increment("link.drop.no-route");
            return;
        }

        if (ReferenceEquals(_memo6Cache, _ndp) && _memo6Hop.Equals(hop))
        {
            WriteFrame(_memo6Mac, EtherType.Ipv6, packet, header);
            return;
        }

        var mac = NeighborCache.tryResolve(hop, _ndp);
        if (mac.IsSome)
        {
            (_memo6Cache, _memo6Hop, _memo6Mac) = (_ndp, hop, mac.Value);
            WriteFrame(mac.Value, EtherType.Ipv6, packet, header);
            return;
        }

        long before = _ndp.NextDeadline;
        foreach (var queued in Queueable(packet, header))
            Apply(NeighborCache.send(now, hop, queued, _ndp));
        if (_ndp.NextDeadline < before)
            _frames.Wake();
    }

    private void Apply(Tuple<NeighborCache<Ipv4Address>, Microsoft.FSharp.Collections.FSharpList<NeighborAction<Ipv4Address>>> result)
    {
        _arp = result.Item1;
        foreach (var action in result.Item2)
        {
            switch (action)
            {
                case NeighborAction<Ipv4Address>.Transmit t:
                    WriteFrame(t.mac, EtherType.Ipv4, t.packet);
                    Statistics.Increment("link.released");
                    break;
                case NeighborAction<Ipv4Address>.Solicit s:
                    {
                        var request = Arp.request(_mac, _v4, s.target);
                        int n = Arp.write(request, _control);
                        WriteFrame(s.unicast.IsSome ? s.unicast.Value : Core.Link.MacAddress.Broadcast, EtherType.Arp, _control.AsSpan(0, n));
                        Statistics.Increment("arp.request.sent");
                        break;
                    }

                case NeighborAction<Ipv4Address>.Dropped d:
                    Statistics.Increment(DropName(d.reason));
                    break;
            }
        }
    }

    private void Apply(Tuple<NeighborCache<Ipv6Address>, Microsoft.FSharp.Collections.FSharpList<NeighborAction<Ipv6Address>>> result)
    {
        _ndp = result.Item1;
        foreach (var action in result.Item2)
        {
            switch (action)
            {
                case NeighborAction<Ipv6Address>.Transmit t:
                    WriteFrame(t.mac, EtherType.Ipv6, t.packet);
                    Statistics.Increment("link.released");
                    break;
                case NeighborAction<Ipv6Address>.Solicit s:
                    {
                        // Multicast to the solicited-node group, or a unicast probe (RFC 4861 §7.2.2, §7.3.3).
                        var destination = s.unicast.IsSome ? s.target : Ndp.solicitedNode(s.target);
                        var control = _control.AsSpan(Ipv6.HeaderLength + 64);
                        int icmp = Ndp.writeNeighborSolicitation(_v6, destination, s.target, FSharpValueOption<MacAddress>.Some(_mac), control[Ipv6.HeaderLength..]);
                        var header = new Ipv6Header(0, 0, icmp, IpProtocol.Icmpv6, Ndp.HopLimit, _v6, destination, Ipv6.HeaderLength);
                        Ipv6.write(header, control);
                        WriteFrame(s.unicast.IsSome ? s.unicast.Value : Core.Link.MacAddress.OfIpv6Multicast(destination), EtherType.Ipv6, control[..(Ipv6.HeaderLength + icmp)]);
                        Statistics.Increment("ndp.ns.sent");
                        break;
                    }

                case NeighborAction<Ipv6Address>.Dropped d:
                    Statistics.Increment(DropName(d.reason));
                    break;
            }
        }
    }

    private static string DropName(NeighborDropReason reason) => reason switch
    {
        NeighborDropReason.QueueFull => "link.drop.queue-full",
        NeighborDropReason.QueueBytesFull => "link.drop.queue-bytes-full",
        NeighborDropReason.Unresolved => "link.drop.unresolved",
        NeighborDropReason.CacheFull => "link.drop.cache-full",
        _ => "link.drop.other",
    };

    /// <summary>Frames <paramref name="payload"/> in _out and writes it (callers hold the lock).</summary>
    private void WriteFrame(MacAddress destination, ushort etherType, ReadOnlySpan<byte> payload) =>
        WriteFrame(destination, etherType, new Pieces(payload, default, default), VirtioNetHeader.None);

    /// <summary>
    /// Frames <paramref name="packet"/> and writes it with <paramref name="offload"/>, whose
    /// offsets move from the IP packet to the frame (callers hold the lock). The frame header
    /// and the packet's head are joined here; its other pieces go to the frame device as they
    /// are, a gather write.
    /// </summary>
    private void WriteFrame(MacAddress destination, ushort etherType, in Pieces packet, in VirtioNetHeader offload)
    {
        // IEEE 802.1Q: with a VLAN every frame carries its tag (priority 0); the offsets then count 18 bytes.
        int header = _vlan < 0
            ? Ethernet.write(destination, _mac, etherType, _out)
            : Ethernet.writeTagged(destination, _mac, _vlan, etherType, _out);
        packet.Head.CopyTo(_out.AsSpan(header));
        var frame = _out.AsSpan(0, header + packet.Head.Length);
        if (IsPlain(offload))
        {
            if (packet.IsWhole)
                _frames.Write(frame);
            else
                _frames.WriteGather(frame, packet.Payload, packet.Tail);
            return;
        }

        var shifted = VirtioNet.shift(header, offload);
        if (shifted.IsNone)
            throw new ArgumentException("The virtio-net header's offsets do not fit a frame.", nameof(offload));
        if (packet.IsWhole)
            _offloadFrames!.Write(frame, shifted.Value);
        else
            _offloadFrames!.WriteGather(frame, packet.Payload, packet.Tail, shifted.Value);
    }

    /// <inheritdoc/>
    public void Wake() => _frames.Wake();

    /// <summary>Disposes the frame device.</summary>
    public void Dispose() => _frames.Dispose();
}
