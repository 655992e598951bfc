using System.Net;
using System.Net.NetworkInformation;
using NetStack.Core.Link;
using NetStack.Core.Wire;
using NetStack.Device;

namespace NetStack.Engine;

/// <summary>
/// The framing between the engine and a device that carries Ethernet frames (a TAP device): the
/// engine still reads and writes whole IP packets, and this adapter adds and strips the Ethernet
/// header (and the 802.1Q tag of <see cref="NetStackOptions.VlanId"/>) and moves the virtio-net
/// header's offsets by it. Every link decision (ARP, NDP, duplicate address detection, conflict
/// defence, router advertisements, autoconfiguration, next hops, resolution queues) is the pure
/// <see cref="Interface"/> of NetStack.Core, whose state this adapter holds for the engine.
/// </summary>
/// <remarks>
/// <para>
/// One loop, one clock: a <see cref="NetworkStack"/> started on this adapter lends it its clock
/// and drives its timers (<see cref="RunTimers"/> when <see cref="NextDeadline"/> is due) from the
/// engine loop, which also makes every read and write; none of this class is for other threads
/// (<see cref="Neighbors"/>, <see cref="AutoconfiguredAddresses"/> and
/// <see cref="Ipv6NeighborTimers"/> read snapshots and are). Used without an engine (tests), the
/// caller passes a clock and calls <see cref="RunTimers"/> itself.
/// </para>
/// <para>
/// Start: constructing the adapter sends nothing. Duplicate address detection of the IPv6 address
/// (RFC 4862 §5.4) and the gratuitous ARP of the IPv4 address (RFC 5227 §2.3) run on the engine's
/// timers; <see cref="Started"/> completes when they are done, or fails with a
/// <see cref="DuplicateAddressException"/>, which <see cref="NetworkStack.Start(NetStackOptions)"/>
/// waits for and throws. Until then IP packets are not passed up (<c>link.drop.tentative</c>).
/// </para>
/// <para>
/// Reads: a frame the interface consumes (ARP, NDP) or drops is not returned; the read then takes
/// only frames already waiting, so the engine soon looks at the interface's new deadlines.
/// Offloads: over a TAP device opened with a virtio-net header (<see cref="IOffloadPacketDevice"/>)
/// the adapter carries each packet's <see cref="VirtioNetHeader"/> through, moving csum_start and
/// hdr_len between the frame and the IP packet with <see cref="VirtioNet.shift"/>; the ARP and NDP
/// frames go with an empty header.
/// </para>
/// </remarks>
public sealed class EthernetPacketDevice : IOffloadPacketDevice
{
    // Room for a super-segment frame too: an IPv6 payload of 65535 bytes after its header.
    private const int FrameRoom = 65536 + 128 + Ethernet.HeaderLength + 2 * Ethernet.VlanTagLength;

    // Frames a read consumes (ARP, NDP, drops) before it gives the engine its turn.
    private const int MaxConsumedPerRead = 64;

    private readonly IPacketDevice _frames;
    private readonly IOffloadPacketDevice? _offloadFrames;
    private readonly byte[] _in = new byte[FrameRoom];
    private readonly byte[] _out = new byte[FrameRoom];
    private readonly MacAddress _mac;
    private readonly int _vlan = -1;
    private readonly string _name;
    private readonly InterfaceSettings _settings;
    private readonly Sink _sink;
    private readonly TaskCompletionSource _started = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Microsoft.Extensions.Logging.ILogger _log;
    private Func<long>? _clock;

    // The interface (null until a clock is given); the loop's, read by others only as a snapshot.
    private InterfaceState _state = null!;

    // The autoconfigured addresses last published (a fresh array per change; readers take it with Volatile).
    private SlaacAddress[] _slaacAddresses = [];

    // The DNS servers learned from the link (a fresh array per change; readers take it with Volatile).
    private IPAddress[] _learnedDnsServers = [];

    // The DHCP lease last bound (null: none); the loop's copy, published on every change.
    private DhcpLease? _lease;

    // The servers of DHCP option 6 and of router advertisements' RDNSS options (RFC 8106; the
    // interface drops them when their lifetime ends).
    private IPAddress[] _dhcpDns = [];
    private IPAddress[] _rdnss = [];

    /// <summary>Wraps <paramref name="frames"/> for the addresses of <paramref name="options"/> (see the remarks).</summary>
    /// <param name="frames">A device whose packets are Ethernet frames (a TAP device's <see cref="TunPacketDevice"/>); the adapter owns it.</param>
    /// <param name="options">The stack's addresses, prefix lengths, gateways, MAC, <see cref="NetStackOptions.VlanId"/> and <see cref="NetStackOptions.Neighbor"/> settings.</param>
    /// <param name="statistics">Where the link counters go (null: a new set, see <see cref="Statistics"/>).</param>
    /// <param name="interfaceName">The interface's name, for messages.</param>
    /// <param name="clock">The time in microseconds, for an adapter used without an engine (null: the engine's, given when a <see cref="NetworkStack"/> starts on it).</param>
    /// <exception cref="ArgumentException">An option is invalid (a MAC that is not 6 bytes or is multicast, a prefix out of range, a VLAN id outside 1..4094).</exception>
    public EthernetPacketDevice(IPacketDevice frames, NetStackOptions options, NetStackStatistics? statistics = null, string interfaceName = "tap", Func<long>? clock = null)
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
        _settings = Settings(options, _mac);
        _vlan = _settings.VlanId;
        // Checked now, so a bad option fails here; the interface itself starts with the clock.
        _ = Interface.create(_settings, 0);
        _sink = new Sink(this);
        Mtu = frames.Mtu;
        if (clock is not null)
            UseClock(clock);
    }

    private static InterfaceSettings Settings(NetStackOptions options, MacAddress mac)
    {
        var n = options.Neighbor;
        var settings = new InterfaceSettings
        {
            Mac = mac,
            VlanId = options.VlanId ?? -1,
            ReachableTime = Micros(n.ReachableTime),
            RetransTimer = Micros(n.RetransTimer),
            DelayFirstProbeTime = Micros(n.DelayFirstProbeTime),
            StaleLifetime = Micros(n.StaleLifetime),
            MaxEntries = n.MaxEntries,
            MaxQueuedPerEntry = n.MaxQueuedPerEntry,
            MaxQueuedBytes = n.MaxQueuedBytes,
            DadTransmits = n.DadTransmits,
            GratuitousArps = n.GratuitousArps,
            Seed = (ulong)Random.Shared.NextInt64(),
        };
        if (options.Address is not null)
        {
            settings.HasAddress4 = true;
            settings.Address4 = Ipv4Address.OfIPAddress(options.Address);
            settings.PrefixLength4 = options.PrefixLength;
            if (options.Gateway is not null)
            {
                settings.HasGateway4 = true;
                settings.Gateway4 = Ipv4Address.OfIPAddress(options.Gateway);
            }
        }

        if (options.Dhcp)
        {
            settings.Dhcp = true;
            settings.DhcpHostName = options.DhcpHostName;
            if (options.DhcpPreviousAddress is not null)
            {
                settings.HasDhcpPreviousAddress = true;
                settings.DhcpPreviousAddress = Ipv4Address.OfIPAddress(options.DhcpPreviousAddress);
            }
        }

        if (options.Address6 is not null)
        {
            settings.HasAddress6 = true;
            settings.Address6 = Ipv6Address.OfIPAddress(options.Address6);
            settings.PrefixLength6 = options.PrefixLength6;
            if (options.Gateway6 is not null)
            {
                settings.HasGateway6 = true;
                settings.Gateway6 = Ipv6Address.OfIPAddress(options.Gateway6);
            }
        }

        if (options.Slaac || options.LinkLocalAddress)
        {
            settings.SlaacSecret = options.SlaacSecretKey ?? System.Security.Cryptography.RandomNumberGenerator.GetBytes(32);
            settings.Autoconfigure = options.Slaac;
            settings.LinkLocal = options.LinkLocalAddress;
        }

        return settings;
    }

    /// <summary>
    /// Gives the adapter its clock (microseconds) and starts the interface at its present time:
    /// what a <see cref="NetworkStack"/> started on the adapter does with its own.
    /// </summary>
    /// <exception cref="InvalidOperationException">The adapter has a clock already.</exception>
    internal void UseClock(Func<long> clock)
    {
        if (_clock is not null)
            throw new InvalidOperationException("The Ethernet adapter has a clock already: one engine drives it.");
        _clock = clock;
        _state = Interface.create(_settings, clock());
    }

    /// <summary>Whether an engine (or the constructor's clock) drives the adapter.</summary>
    internal bool HasClock => _clock is not null;

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
    /// Completes once duplicate address detection has passed and the start announcements went
    /// out; fails with <see cref="DuplicateAddressException"/> when another node has the IPv6
    /// address. Runs on the engine's timers.
    /// </summary>
    public Task Started => _started.Task;

    /// <summary>
    /// The addresses stateless address autoconfiguration formed so far (tentative ones included),
    /// oldest first; empty when <see cref="NetStackOptions.Slaac"/> is off. A snapshot, replaced
    /// on every change: compare references to notice one.
    /// </summary>
    public IReadOnlyList<SlaacAddress> AutoconfiguredAddresses => Volatile.Read(ref _slaacAddresses);

    /// <summary>
    /// The DNS servers the link taught the stack: DHCPv4 option 6 (<see cref="NetStackOptions.Dhcp"/>)
    /// first, then those of router advertisements' RDNSS options (RFC 8106, while their lifetime
    /// lasts, the most recent first, 3 at most); empty until one was learned. A snapshot,
    /// replaced on every change.
    /// </summary>
    public IReadOnlyList<IPAddress> LearnedDnsServers => Volatile.Read(ref _learnedDnsServers);

    /// <summary>
    /// The DHCP lease bound now (<see cref="NetStackOptions.Dhcp"/>), or null. A snapshot,
    /// replaced on every change (bound, renewed, lost): compare references to notice one.
    /// </summary>
    public DhcpLease? CurrentLease => Volatile.Read(ref _lease);

    /// <summary>A snapshot of the DHCP client (state, transaction, lease), or null without DHCP.</summary>
    public DhcpClient? DhcpClient => Volatile.Read(ref _state) is { } state && state.Dhcp.IsSome ? state.Dhcp.Value : null;

    /// <summary>The current time of the adapter's clock (the engine's; microseconds), the clock of <see cref="AutoconfiguredAddresses"/>' lifetimes.</summary>
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
            var config = Volatile.Read(ref _state)?.Ndp.Config ?? Interface.create(_settings, 0).Ndp.Config;
            return (TimeSpan.FromMicroseconds(config.ReachableTime), TimeSpan.FromMicroseconds(config.RetransTimer));
        }
    }

    /// <summary>A snapshot of both neighbor caches: address, link-layer address (empty while unresolved) and RFC 4861 state.</summary>
    public IReadOnlyList<(IPAddress Address, PhysicalAddress Mac, string State)> Neighbors()
    {
        var list = new List<(IPAddress, PhysicalAddress, string)>();
        if (Volatile.Read(ref _state) is { } state)
        {
            foreach (var n in Interface.neighbors(state))
                list.Add((n.IsIpv6 ? n.Address6.ToIPAddress() : n.Address4.ToIPAddress(), ToPhysical(n.Mac), n.State.ToString()));
        }

        return list;
    }

    /// <summary>
    /// The frame filter takes the multicast MACs of <paramref name="groups4"/> and
    /// <paramref name="groups6"/> (the groups the stack joined) besides its own, broadcast,
    /// all-hosts, all-nodes and the solicited-node groups; frames to other group MACs are
    /// dropped (<c>link.drop.multicast</c>). Called from the engine loop.
    /// </summary>
    internal void SetMulticastGroups(Ipv4Address[] groups4, Ipv6Address[] groups6)
    {
        if (_state is not null)
            _state = Interface.withMulticastGroups(groups4, groups6, _state);
    }

    // The learned DNS servers: DHCP's, then the router advertisements'.
    private void PublishDnsServers() =>
        Volatile.Write(ref _learnedDnsServers, [.. _dhcpDns, .. _rdnss]);

    /// <summary>When <see cref="RunTimers"/> next has something to do (microseconds of the adapter's clock; <see cref="long.MaxValue"/>: nothing).</summary>
    public long NextDeadline => _state is { } state ? Interface.nextDeadline(state) : long.MaxValue;

    /// <summary>Runs the interface's timers due at <paramref name="now"/> (the adapter's clock): the engine loop calls it.</summary>
    /// <param name="now">The present time, microseconds.</param>
    public void RunTimers(long now)
    {
        if (_state is null)
            return;
        Interface.handleTimer(now, ref _state, _sink);
    }

    private long Now() => _clock is { } clock ? clock() : throw NoClock();

    private static InvalidOperationException NoClock() =>
        new("The Ethernet adapter has no clock: start a NetworkStack on it or pass one.");

    private ref InterfaceState State
    {
        get
        {
            if (_clock is null)
                throw NoClock();
            return ref _state;
        }
    }

    private static long Micros(TimeSpan t) => t.Ticks / (TimeSpan.TicksPerMillisecond / 1000);

    private static MacAddress ToMac(PhysicalAddress? address)
    {
        if (address is null)
            return Core.Link.MacAddress.LocallyAdministered((ulong)Random.Shared.NextInt64());
        byte[] bytes = address.GetAddressBytes();
        if (bytes.Length != 6)
            throw new ArgumentException($"MacAddress has {bytes.Length} bytes; Ethernet needs 6.", "options");
        return Core.Link.MacAddress.Read(bytes);
    }

    private static PhysicalAddress ToPhysical(MacAddress mac)
    {
        var bytes = new byte[6];
        mac.Write(bytes);
        return new PhysicalAddress(bytes);
    }

    /// <summary>Where the interface's actions go: frames out, counters, the start and the log.</summary>
    private sealed class Sink(EthernetPacketDevice device) : ILinkSink
    {
        public void Transmit(MacAddress destination, ushort etherType, ReadOnlySpan<byte> payload) =>
            device.WriteFrame(destination, etherType, new Pieces(payload, default, default), VirtioNetHeader.None);

        public void Count(string counter) => device.Statistics.Increment(counter);

        public void Event(LinkEvent e)
        {
            switch (e.Kind)
            {
                case LinkEventKind.Ready:
                    device._started.TrySetResult();
                    break;
                case LinkEventKind.DuplicateAddress:
                    device._started.TrySetException(new DuplicateAddressException(e.Address6.ToIPAddress(), ToPhysical(e.Mac), device._name));
                    break;
                case LinkEventKind.ConflictDefended:
                    Diagnostics.LinkLog.ArpConflictDefended(device._log, device._name, ToPhysical(e.Mac), e.Address4.ToIPAddress());
                    break;
                case LinkEventKind.ConflictNotDefended:
                    Diagnostics.LinkLog.ArpConflictNotDefended(device._log, device._name, ToPhysical(e.Mac), e.Address4.ToIPAddress());
                    break;
                case LinkEventKind.AddressesChanged:
                    Volatile.Write(ref device._slaacAddresses, Interface.autoconfigured(device._state));
                    break;
                case LinkEventKind.LeaseChanged:
                    var client = device._state.Dhcp;
                    var lease = client.IsSome && client.Value.Lease.IsSome ? client.Value.Lease.Value : null;
                    Volatile.Write(ref device._lease, lease);
                    device._dhcpDns = lease is null ? [] : [.. lease.DnsServers.Select(a => a.ToIPAddress())];
                    device.PublishDnsServers();
                    break;
                case LinkEventKind.DnsServersChanged:
                    device._rdnss = [.. Interface.dnsServers6(device._state).Select(a => a.ToIPAddress())];
                    device.PublishDnsServers();
                    break;
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
                millisecondsTimeout = 0;
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
        int wait = millisecondsTimeout;
        for (int consumed = 0; consumed < MaxConsumedPerRead; consumed++)
        {
            var frameHeader = VirtioNetHeader.None;
            bool read = _offloadFrames is not null
                ? _offloadFrames.TryReadWithHeader(_in, wait, out int n, out frameHeader)
                : _frames.TryRead(_in, wait, out n);
            if (!read)
                break;
            // Only frames already waiting after the first: the engine looks at the link's
            // deadlines again before it waits.
            wait = 0;
            var verdict = Interface.receive(Now(), _in.AsSpan(0, n), ref State, _sink);
            if (!verdict.Deliver)
                continue;
            if (verdict.Length > buffer.Length)
            {
                Statistics.Increment("link.drop.too-long");
                continue;
            }

            // The frame's offsets count the Ethernet header (and any VLAN tag); ours do not.
            var shifted = VirtioNet.shift(-verdict.Offset, frameHeader);
            if (shifted.IsNone)
            {
                Statistics.Increment("link.drop.bad-vnet-header");
                continue;
            }

            _in.AsSpan(verdict.Offset, verdict.Length).CopyTo(buffer);
            length = verdict.Length;
            header = shifted.Value;
            return true;
        }

        length = 0;
        header = VirtioNetHeader.None;
        return false;
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
        long now = Now();
        var next = Interface.resolve(now, packet.Head, ref State, _sink);
        switch (next.Kind)
        {
            case NextHopKind.Send:
                WriteFrame(next.Mac, next.EtherType, packet, header);
                return;
            case NextHopKind.Pending:
                foreach (var queued in Queueable(packet, header))
                    Interface.queue(now, queued, ref State, _sink);
                return;
            case NextHopKind.Dropped:
                return;
            default:
                throw new ArgumentException("Not an IPv4 or IPv6 packet.", nameof(packet));
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

    /// <summary>
    /// Frames <paramref name="packet"/> and writes it with <paramref name="offload"/>, whose
    /// offsets move from the IP packet to the frame. The frame header and the packet's head are
    /// joined here; its other pieces go to the frame device as they are, a gather write.
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
