using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using NetStack.Core.Ip;
using NetStack.Core.Stack;
using NetStack.Core.Wire;
using NetStack.Device;
using NetStack.Diagnostics;
using NetStack.Engine;

namespace NetStack;

/// <summary>
/// A running userspace stack on one device. <see cref="Start(NetStackOptions)"/> it, bind sockets
/// and ping, dispose it.
/// </summary>
/// <remarks>
/// One loop thread owns all protocol state (the pure <see cref="IpLayer"/> state, pending pings,
/// the IPv4 identification counter). It waits in the device's read until a packet arrives, the
/// next timer is due, or another thread queues a command and calls <see cref="IPacketDevice.Wake"/>
/// (for a TUN device an eventfd polled together with the TUN descriptor). Socket calls from any
/// thread post commands and await their completion. Packets are read into one reused buffer and
/// parsed in place; only reassembly and socket queues copy. Nothing a peer sends can throw out of
/// the loop: every packet is processed under a catch, and every drop is counted by reason in
/// <see cref="Statistics"/>.
/// </remarks>
public sealed partial class NetworkStack : IAsyncDisposable, IDisposable
{
    /// <summary>The first port handed out for port 0 (RFC 6335 §6: the dynamic range 49152–65535).</summary>
    public const int EphemeralPortFirst = EphemeralPorts.First;

    /// <summary>The last ephemeral port.</summary>
    public const int EphemeralPortLast = EphemeralPorts.Last;

    // The loop never sleeps longer than this without looking at its timers and commands.
    private const int MaxWaitMilliseconds = 1000;

    private readonly IPacketDevice _device;

    // The same device when it carries offload metadata and offloads are in force; else null.
    private readonly IOffloadPacketDevice? _offload;

    // The kernel-side configuration; it removes what it added when disposed, so it lives as long
    // as the stack (null when attached to an existing interface or on a caller's device).
    private readonly KernelLink? _link;
    private readonly Thread _thread;
    private readonly long _epoch = Stopwatch.GetTimestamp();
    private readonly NetStackStatistics _statistics;
    // The per-packet counters, kept to spare a name lookup (~25 ns) per packet.
    private readonly NetStackStatistics.Counter _deviceRead, _deviceWritten, _tcpReceived, _tcpSent;

    /// <summary>
    /// TCP send and receive rings taken from the shared pool and given back ("tcp.ring.rented",
    /// "tcp.ring.returned"): the difference is the rings connections hold now.
    /// </summary>
    internal NetStackStatistics.Counter TcpRingsRented { get; }

    /// <inheritdoc cref="TcpRingsRented"/>
    internal NetStackStatistics.Counter TcpRingsReturned { get; }

    // Bytes through the device, for the metrics (the packet counts live in _statistics).
    private long _bytesRead;
    private long _bytesWritten;
    // Null on the engines of queues 1.. of a multi-queue stack (queue 0's counts for all).
    private readonly StackMeter? _meter;
    private readonly ILogger _log;
    private readonly DropLogLimiter _dropLog = new();

    // Commands from other threads; drained by the loop. Guarded by _commandGate with _disposed.
    private readonly object _commandGate = new();
    // (Sized so that a burst of socket calls does not grow them on the hot path.)
    private Queue<Command> _commands = new(256);
    private Queue<Command> _spareCommands = new(256);
    private bool _disposed;
    private volatile bool _stopping;

    // True while the loop waits (or is about to wait) in the device read with no command queued:
    // only then does a Post need the device's wake (an eventfd write and a context switch). Set
    // by the loop and cleared by the first Post, both under _commandGate; the loop also clears
    // it once the read returns (a stale true then costs one spurious wake, never a lost one).
    private bool _loopIdle;

    // Loop-only state.
    private IpLayerState _ip;
    private readonly byte[] _receiveBuffer;
    private readonly byte[] _packetBuffer = new byte[65536 + 64];
    private readonly byte[] _fragmentBuffer;
    private readonly Ipv4Identification _ipIds = new(Random.Shared.Next(65536));
    private readonly ushort _pingIdentifier = (ushort)Random.Shared.Next(1, 65536);
    private ushort _nextPingSequence;
    private readonly Dictionary<ushort, PendingPing> _pings = [];

    // Port tables, shared by binding threads and the loop.
    // Loop-only: the core's UDP port table (sockets by port and address or family).
    private readonly UdpEndpointTable _udpTable = new();

    // Changes at runtime with a DHCP lease (loop-owned; read by other threads as a snapshot).
    private IpAddr? _address4;
    private readonly IpAddr? _address6;

    // Tap mode: the Ethernet adapter, whose link-local and autoconfigured IPv6 addresses the loop
    // copies into the IP layer whenever the adapter publishes a new list (null: Tun mode, or
    // neither a link-local address nor autoconfiguration).
    private readonly EthernetPacketDevice? _autoconfiguring;
    private IReadOnlyList<Core.Link.SlaacAddress>? _autoconfigured;

    // Run null: a datagram to send (UdpSocket's queued sends), which costs no delegate.
    private readonly record struct Command(Action? Run, Action<Exception>? Abort, OutgoingDatagram Datagram = default);

    private sealed class PendingPing
    {
        public required TaskCompletionSource<PingReply> Completion;
        public required IPAddress Destination;
        public required IpAddr DestinationAddress;
        public required long SentAt;
        public required long Deadline;
        public CancellationTokenRegistration Registration;
    }

    private NetworkStack(NetStackOptions options, IPacketDevice device, string interfaceName, KernelLink? link = null,
        QueueGroup? group = null, int queue = 0)
    {
        _link = link;
        _group = group;
        _queue = queue;
        if (group is not null)
            _handoffs = new ConcurrentQueue<Handoff>();
        if (options.Slaac || options.LinkLocalAddress)
            _autoconfiguring = LinkWithin(device);
        if (options.Dhcp)
            _dhcpLink = LinkWithin(device);
        _log = (options.LoggerFactory ?? NullLoggerFactory.Instance).CreateLogger<NetworkStack>();
        // On a fault-injecting device the stack's counters and the fault counters are one set.
        _statistics = LinkWithin(device)?.Statistics ?? FaultsWithin(device)?.Statistics ?? new NetStackStatistics();
        _deviceRead = _statistics.Handle("device.read");
        _deviceWritten = _statistics.Handle("device.written");
        _tcpReceived = _statistics.Handle("tcp.received");
        _tcpSent = _statistics.Handle("tcp.sent");
        TcpRingsRented = _statistics.Handle("tcp.ring.rented");
        TcpRingsReturned = _statistics.Handle("tcp.ring.returned");
        InitQueues(out _queueRead, out _handoffSent, out _handoffReceived);
        if ((device is CapturingPacketDevice c ? c.Inner : device) is WriterThreadDevice writer)
            writer.Statistics = _statistics;
        Options = options;
        InterfaceName = interfaceName;
        _device = device;
        _inlineUdpSends = device is TunPacketDevice;
        Rings = new RingPool(options.TcpSendBufferBytes, options.TcpReceiveBufferBytes, PooledRings);
        InitLink(device);
        if (options.Offloads && device is IOffloadPacketDevice offload && offload.Offloads != TunOffloads.None)
            _offload = offload;
        if (device is TunPacketDevice { Device.UsesIoUring: true } tun)
            _inPlace = tun.Device;
        int mtu = Math.Min(options.Mtu, device.Mtu);
        LinkMtu = mtu;
        // Room for the longest super-segment: an IPv6 payload of 65535 bytes after its header.
        _receiveBuffer = new byte[65536 + 128];
        _fragmentBuffer = new byte[Math.Max(mtu, 1280) + 64];
        if (options.Address is not null)
            _address4 = IpAddr.NewV4(Ipv4Address.OfIPAddress(options.Address));
        if (options.Address6 is not null)
            _address6 = IpAddr.NewV6(Ipv6Address.OfIPAddress(options.Address6));
        var config = new IpLayerSettings
        {
            Address4 = options.Address is null ? null : Ipv4Address.OfIPAddress(options.Address),
            Address6 = options.Address6 is null ? null : Ipv6Address.OfIPAddress(options.Address6),
            Mtu = mtu,
            IcmpErrorsPerSecond = options.IcmpErrorsPerSecond,
            ReassemblyMaxBytes = options.ReassemblyMaxBytes,
            ReassemblyMaxDatagrams = options.ReassemblyMaxDatagrams,
            AnyDestination = options.AnyDestination,
            // The subnet broadcast is a TAP link's; a TUN link is point to point.
            PrefixLength4 = options.Mode == NetStackMode.Tap ? options.PrefixLength : null,
        }.ToConfig();
        _ip = IpLayer.create(config, Now());
        InitTcp(mtu);
        if (queue == 0)
        {
            _meter = new StackMeter(interfaceName, _statistics, () => Volatile.Read(ref _bytesRead) + OtherEngines().Sum(e => Volatile.Read(ref e._bytesRead)),
                () => Volatile.Read(ref _bytesWritten) + OtherEngines().Sum(e => Volatile.Read(ref e._bytesWritten)),
                () => _tcpTable.Count + OtherEngines().Sum(e => e._tcpTable.Count));
        }
        _thread = new Thread(Loop) { IsBackground = true, Name = queue == 0 ? $"netstack {interfaceName}" : $"netstack {interfaceName} q{queue}" };
        _thread.Start();
        _log.Started(interfaceName, options.Address, options.Address6, mtu);
    }

    /// <summary>
    /// Creates (or attaches to) the TUN interface, configures the kernel side (addresses with the
    /// stack as point-to-point peer, MTU, link up) and starts the loop.
    /// </summary>
    /// <param name="options">What to bring up.</param>
    /// <exception cref="ArgumentException">An option is invalid (the message says which), or an address
    /// conflicts with the kernel's: the kernel owns <see cref="NetStackOptions.Address"/> or
    /// <see cref="NetStackOptions.Address6"/> on one of its interfaces (it would keep every packet for
    /// it), already routes it to another interface as a point-to-point peer (another stack with that
    /// address), or has the host address this call would assign on another interface (another stack
    /// started with the same options).</exception>
    /// <exception cref="TunDeviceException">The device could not be created or configured (the message says what to do).</exception>
    /// <exception cref="IOException">The <see cref="NetStackOptions.CapturePath"/> file could not be created (also <see cref="UnauthorizedAccessException"/>).</exception>
    public static NetworkStack Start(NetStackOptions options)
    {
        Validate(options);
        CheckKernelAddresses(options);
        // Offloads only where nothing between the stack and the device hides them: injected
        // corruption must reach the checksum check, which a partial checksum would skip. In TAP
        // mode EthernetPacketDevice carries the headers through, moved by the Ethernet header.
        bool tap = options.Mode == NetStackMode.Tap;
        bool offloads = options.Offloads && options.Faults is null;
        // Several queues: one descriptor each, the first standing for the interface.
        TunDevice[] queues = options.Queues > 1
            ? TunDevice.OpenQueues(options.TunName, !options.AttachExisting, offloads, options.Queues)
            : [options.AttachExisting
                ? (tap ? TunDevice.AttachTap(options.TunName, offloads) : TunDevice.Attach(options.TunName, offloads))
                : (tap ? TunDevice.CreateTap(options.TunName, offloads) : TunDevice.Create(options.TunName, offloads))];
        var device = queues[0];
        KernelLink? link = null;
        NetworkStack stack;
        try
        {
            if (offloads)
            {
                foreach (var queue in queues)
                    queue.SetOffloads(StackOffloads);
            }
            if (!options.AttachExisting)
            {
                link = new KernelLink(device);
                link.SetMtu(options.Mtu);
                link.SetUp();
                // With a VLAN the kernel side is a VLAN interface or bridge the user makes: the
                // untagged TAP itself is not on the stack's link.
                if (tap && options.VlanId is null)
                {
                    // A shared link: the kernel side takes the prefix, the stack is a neighbor on it.
                    if (options.Address is not null && options.HostAddress is not null)
                        link.AddAddress(options.HostAddress, options.PrefixLength);
                    if (options.Address6 is not null && options.HostAddress6 is not null)
                        link.AddAddress(options.HostAddress6, options.PrefixLength6);
                }
                else if (!tap)
                {
                    if (options.Address is not null && options.HostAddress is not null)
                        link.AddAddress(options.HostAddress, options.Address);
                    if (options.Address6 is not null && options.HostAddress6 is not null)
                        link.AddAddress(options.HostAddress6, options.Address6);
                }
            }
            stack = queues.Length > 1 ? StartQueues(options, queues, link) : StartOnDevice(options, device, link);
        }
        catch
        {
            link?.Dispose();
            foreach (var queue in queues)
                queue.Dispose();
            throw;
        }
        return AwaitLease(AwaitLink(stack));
    }

    // The device wrappers Start chooses (io_uring, faults, the writer thread, Ethernet, capture)
    // and the stack on top; the caller disposes the device and link when this throws.
    private static NetworkStack StartOnDevice(NetStackOptions options, TunDevice device, KernelLink? link,
        QueueGroup? group = null, int queue = 0)
    {
        bool tap = options.Mode == NetStackMode.Tap;
        string? noRing = null;
        if (options.TunIoUring)
            device.TryEnableIoUring(out noRing);
        IPacketDevice packets = new TunPacketDevice(device);
        if (options.Faults is not null)
            packets = new FaultInjectingDevice(packets, options.Faults);
        if (options.TunWriterThread ?? (!tap && !device.UsesIoUring && options.Faults is null && device.Offloads == TunOffloads.None))
            packets = new WriterThreadDevice(packets);
        // In Tap mode the faults hit frames (ARP and NDP too) and share the link's counters.
        if (tap)
            packets = new EthernetPacketDevice(packets, options, (packets as FaultInjectingDevice)?.Statistics, device.Name);
        // The capture is outermost: it records what the stack itself sees, after the faults.
        var stack = new NetworkStack(options, WithCapture(options, packets), device.Name, link, group, queue) { UsesIoUring = device.UsesIoUring };
        if (noRing is not null)
            stack._log.IoUringUnavailable(device.Name, noRing);
        return stack;
    }

    /// <summary>
    /// Starts the loop on a device the caller provides (an in-memory device in tests, a wrapper that
    /// injects faults, ...). The stack owns the device from here and disposes it.
    /// </summary>
    /// <param name="options">Addresses and limits; TunName, AttachExisting, the host addresses and Faults are not used (wrap the device in a <see cref="FaultInjectingDevice"/> instead).</param>
    /// <param name="device">The device.</param>
    /// <param name="interfaceName">What <see cref="InterfaceName"/> reports.</param>
    /// <exception cref="ArgumentException">An option is invalid.</exception>
    /// <exception cref="IOException">The <see cref="NetStackOptions.CapturePath"/> file could not be created (also <see cref="UnauthorizedAccessException"/>).</exception>
    public static NetworkStack Start(NetStackOptions options, IPacketDevice device, string interfaceName = "memory")
    {
        ArgumentNullException.ThrowIfNull(device);
        Validate(options);
        RefuseQueues(options);
        return AwaitLease(AwaitLink(new NetworkStack(options, WithCapture(options, device), interfaceName)));
    }

    // The capture goes outermost, over any fault-injecting device: it records what the stack
    // itself reads and writes (see CapturingPacketDevice).
    // A fault injector counts into the stack's own statistics; it may sit under a capture.
    private static FaultInjectingDevice? FaultsWithin(IPacketDevice device)
    {
        while (true)
        {
            switch (device)
            {
                case FaultInjectingDevice faults:
                    return faults;
                case CapturingPacketDevice capture:
                    device = capture.Inner;
                    break;
                case WriterThreadDevice writer:
                    device = writer.Inner;
                    break;
                default:
                    return null;
            }
        }
    }

    // The Ethernet adapter of Tap mode, under any capture; its counters are the stack's.
    private static EthernetPacketDevice? LinkWithin(IPacketDevice device)
    {
        while (true)
        {
            switch (device)
            {
                case EthernetPacketDevice ethernet:
                    return ethernet;
                case CapturingPacketDevice capture:
                    device = capture.Inner;
                    break;
                default:
                    return null;
            }
        }
    }

    private static IPacketDevice WithCapture(NetStackOptions options, IPacketDevice device)
    {
        if (options.CapturePath is null)
            return device;
        var file = new FileStream(options.CapturePath, FileMode.Create, FileAccess.Write, FileShare.Read, bufferSize: 64 * 1024);
        return new CapturingPacketDevice(device, new PcapWriter(file));
    }

    // Refuses addresses the kernel of this namespace already uses (see KernelAddresses): a stack
    // started on them would come up and then silently never receive.
    private static void CheckKernelAddresses(NetStackOptions options)
    {
        bool tap = options.Mode == NetStackMode.Tap;
        // The host addresses Start assigns (see there): not when attaching, nor behind a VLAN.
        bool assignsHost = !options.AttachExisting && (!tap || options.VlanId is null);
        Check(options.Address, nameof(NetStackOptions.Address), options.HostAddress, nameof(NetStackOptions.HostAddress));
        Check(options.Address6, nameof(NetStackOptions.Address6), options.HostAddress6, nameof(NetStackOptions.HostAddress6));

        void Check(IPAddress? address, string name, IPAddress? host, string hostName)
        {
            if (address is null)
                return;
            if (KernelAddresses.OwnerOf(address) is { } owner)
            {
                throw new ArgumentException(
                    $"{name} {address} is already an address of the kernel's interface '{owner}', so the kernel " +
                    $"would keep every packet for it and the stack would see none: give the stack an address " +
                    $"the kernel does not have (the kernel's end of the link is {hostName}).", nameof(options));
            }
            if (KernelAddresses.HostRouteOwner(address) is { } routed &&
                !(options.AttachExisting && routed == options.TunName))
            {
                throw new ArgumentException(
                    $"{name} {address} is already routed to interface '{routed}' as its point-to-point peer " +
                    $"(is another NetworkStack running with this {name}?): the kernel would keep sending its " +
                    $"packets there. Stop that stack or choose another {name}.", nameof(options));
            }
            if (assignsHost && host is not null && KernelAddresses.OwnerOf(host) is { } hostOwner)
            {
                throw new ArgumentException(
                    $"{hostName} {host} is already an address of the kernel's interface '{hostOwner}' (is " +
                    $"another NetworkStack running with the same options?): choose another {hostName} (and " +
                    $"{name}), or configure the interface yourself and set AttachExisting = true.", nameof(options));
            }
        }
    }

    // An address option must name one interface: not unspecified, broadcast, multicast, loopback
    // (127/8 and ::1 are every host's own) or IPv4-mapped. The message names the option.
    private static void CheckUnicastOption(IPAddress? address, string option)
    {
        if (address is null)
            return;
        string? kind = address.AddressFamily == AddressFamily.InterNetwork
            ? address.Equals(IPAddress.Any) ? "unspecified"
            : address.Equals(IPAddress.Broadcast) ? "the limited broadcast address"
            : IPAddress.IsLoopback(address) ? "a loopback address (127.0.0.0/8 is every host's own)"
            : (address.GetAddressBytes()[0] & 0xF0) == 0xE0 ? "a multicast address"
            : null
            : address.Equals(IPAddress.IPv6Any) ? "unspecified"
            : IPAddress.IsLoopback(address) ? "the loopback address (::1 is every host's own)"
            : address.IsIPv6Multicast ? "a multicast address"
            : address.IsIPv4MappedToIPv6 ? "an IPv4-mapped address (give IPv4 addresses in Address and HostAddress)"
            : null;
        if (kind is not null)
            throw new ArgumentException($"{option} {address} cannot be an interface's address: it is {kind}. Give a unicast address.", "options");
    }

    private static void Validate(NetStackOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ValidateDhcp(options);
        bool tap = options.Mode == NetStackMode.Tap;
        // Tap mode forms IPv6 addresses of its own (link-local, autoconfigured), and may lease an IPv4 one.
        bool formsIpv6 = tap && (options.LinkLocalAddress || options.Slaac);
        if (options.Address is null && options.Address6 is null && !formsIpv6 && !options.Dhcp)
            throw new ArgumentException(tap
                ? "Give the stack an Address, an Address6, Dhcp = true, or leave LinkLocalAddress on (Tap mode)."
                : "Give the stack an IPv4 address (Address), an IPv6 address (Address6) or both.", nameof(options));
        if (options.Address is not null && options.Address.AddressFamily != AddressFamily.InterNetwork)
            throw new ArgumentException($"Address {options.Address} is not an IPv4 address.", nameof(options));
        if (options.HostAddress is not null && options.HostAddress.AddressFamily != AddressFamily.InterNetwork)
            throw new ArgumentException($"HostAddress {options.HostAddress} is not an IPv4 address.", nameof(options));
        if (options.Address6 is not null && options.Address6.AddressFamily != AddressFamily.InterNetworkV6)
            throw new ArgumentException($"Address6 {options.Address6} is not an IPv6 address.", nameof(options));
        if (options.HostAddress6 is not null && options.HostAddress6.AddressFamily != AddressFamily.InterNetworkV6)
            throw new ArgumentException($"HostAddress6 {options.HostAddress6} is not an IPv6 address.", nameof(options));
        CheckUnicastOption(options.Address, nameof(NetStackOptions.Address));
        CheckUnicastOption(options.HostAddress, nameof(NetStackOptions.HostAddress));
        CheckUnicastOption(options.Address6, nameof(NetStackOptions.Address6));
        CheckUnicastOption(options.HostAddress6, nameof(NetStackOptions.HostAddress6));
        if (options.Address is not null && options.Address.Equals(options.HostAddress))
            throw new ArgumentException($"The stack and the kernel side cannot both be {options.Address}.", nameof(options));
        if (options.Address6 is not null && options.Address6.Equals(options.HostAddress6))
            throw new ArgumentException($"The stack and the kernel side cannot both be {options.Address6}.", nameof(options));
        int minimum = options.Address6 is null && !formsIpv6 ? 576 : 1280;
        if (options.Mtu < minimum || options.Mtu > 65535)
            throw new ArgumentException($"Mtu {options.Mtu} is outside {minimum}..65535{(minimum == 1280 ? formsIpv6 ? " (IPv6 needs at least 1280; set Address6 = null and LinkLocalAddress = false and Slaac = false for an IPv4-only stack)" : " (IPv6 needs at least 1280; Address6 = null makes an IPv4-only stack)" : "")}.", nameof(options));
        if (options.UdpReceiveQueueBytes < 1)
            throw new ArgumentException("UdpReceiveQueueBytes must be positive.", nameof(options));
        if (options.ReassemblyMaxBytes < 1 || options.ReassemblyMaxDatagrams < 1)
            throw new ArgumentException("ReassemblyMaxBytes and ReassemblyMaxDatagrams must be positive.", nameof(options));
        if (options.IcmpErrorsPerSecond < 0)
            throw new ArgumentException("IcmpErrorsPerSecond cannot be negative.", nameof(options));
        if (options.Slaac && !tap)
            throw new ArgumentException("Slaac needs Mode = Tap (router advertisements come over Ethernet).", nameof(options));
        if (options.ForwardMaxPendingTcp < 1 || options.ForwardMaxUdpFlows < 1 || options.ForwardMaxEchoRequests < 1)
            throw new ArgumentException("ForwardMaxPendingTcp, ForwardMaxUdpFlows and ForwardMaxEchoRequests must be positive.", nameof(options));
        if (options.ForwardTcpDecisionTimeout <= TimeSpan.Zero || options.ForwardUdpIdleTimeout <= TimeSpan.Zero)
            throw new ArgumentException("ForwardTcpDecisionTimeout and ForwardUdpIdleTimeout must be positive.", nameof(options));
        if (options.SlaacSecretKey is { Length: 0 })
            throw new ArgumentException("SlaacSecretKey is empty (null means a random key).", nameof(options));
        if (options.CapturePath is not null && options.CapturePath.Length == 0)
            throw new ArgumentException("CapturePath is empty (null means no capture).", nameof(options));
        options.Faults?.Validate();
        if (options.Queues is < 1 or > MaxQueues)
            throw new ArgumentOutOfRangeException(nameof(options), options.Queues, $"Queues {options.Queues} is outside 1..{MaxQueues} (the TUN interface's queues, one engine loop each; 1 is a single engine).");
        if (options.Queues > 1)
        {
            string? clash = tap ? "Mode = Tap (multi-queue is for TUN interfaces; give Mode = Tun or Queues = 1)"
                : options.AnyDestination ? "AnyDestination (the forwarders live on queue 0's engine)"
                : options.Faults is not null ? "Faults (a fault-injecting device wraps one queue)"
                : options.CapturePath is not null ? "CapturePath (a capture records one device)"
                : options.Dhcp ? "Dhcp"
                : null;
            if (clash is not null)
                throw new ArgumentException($"Queues {options.Queues} cannot be combined with {clash}.", nameof(options));
        }
        if (options.TunWriterThread == true && (options.Offloads || options.Mode != NetStackMode.Tun || options.TunIoUring))
            throw new ArgumentException("TunWriterThread needs Offloads = false, Mode = Tun and no TunIoUring.", nameof(options));
        if (string.IsNullOrEmpty(options.TunName))
            throw new ArgumentException("TunName is empty.", nameof(options));
        if (TunDevice.NameProblem(options.TunName, allowTemplate: !options.AttachExisting) is { } nameProblem)
        {
            throw new ArgumentException($"TunName: {nameProblem}{(options.AttachExisting && options.TunName.Contains('%')
                ? " With AttachExisting = true, TunName is the existing interface's exact name." : "")}", nameof(options));
        }
        if (options.VlanId is { } vlan && (vlan is < 1 or > 4094 || options.Mode != NetStackMode.Tap))
            throw new ArgumentException($"VlanId {vlan}: a VLAN id is 1..4094 and needs Mode = NetStackMode.Tap.", nameof(options));
        ValidateTcp(options);
        ValidateDns(options);
    }

    // What the stack asks the kernel for: checksum offload and TSO both ways.
    // USO too (Linux 6.2+; SetOffloads drops it where refused): a kernel socket using UDP_SEGMENT
    // then hands over one super-datagram that OnUdp cuts into its datagrams.
    private const TunOffloads StackOffloads = TunOffloads.Checksum | TunOffloads.Tso4 | TunOffloads.Tso6
        | TunOffloads.Uso4 | TunOffloads.Uso6;

    /// <summary>
    /// The device offloads in force (<see cref="TunOffloads.None"/> when <see cref="NetStackOptions.Offloads"/>
    /// is off, with faults, or when the kernel or device offers none).
    /// </summary>
    public TunOffloads Offloads => _offload?.Offloads ?? TunOffloads.None;

    /// <summary>
    /// True when the TUN device reads and writes in batches through io_uring
    /// (<see cref="NetStackOptions.TunIoUring"/> asked for it and the kernel allows it).
    /// </summary>
    public bool UsesIoUring { get; private init; }

    /// <summary>The options the stack was started with.</summary>
    public NetStackOptions Options { get; }

    /// <summary>The interface's actual name (a template's number filled in).</summary>
    public string InterfaceName { get; }

    /// <summary>
    /// The named counters. With several <see cref="NetStackOptions.Queues"/>: every engine's
    /// counters summed, plus "device.read.queueN" per queue and "engine.queue.handoff" (packets
    /// read on a queue whose engine does not own them, handed to the owner).
    /// </summary>
    public NetStackStatistics Statistics => _statistics;

    // Microseconds since the stack started: the monotonic `now` the core takes.
    internal long Now() => (long)(Stopwatch.GetElapsedTime(_epoch).Ticks / (TimeSpan.TicksPerMillisecond / 1000));

    // ------------------------------------------------------------------------------------------
    // Addresses
    // ------------------------------------------------------------------------------------------

    // The adapter's autoconfigured addresses changed: the IP layer accepts the assigned ones.
    private void SyncAutoconfigured()
    {
        var current = _autoconfiguring!.AutoconfiguredAddresses;
        if (ReferenceEquals(current, _autoconfigured))
            return;
        _autoconfigured = current;
        var assigned = new List<Ipv6Address>();
        foreach (var a in current)
        {
            if (a.State != Core.Link.SlaacAddressState.Tentative)
                assigned.Add(a.Address);
        }

        _ip = IpLayer.withAddresses6([.. assigned], _ip);
    }

    // The source of new communication with `target` (RFC 6724 rules 2, 3 and 8 between the
    // configured IPv6 address and the preferred link-local and autoconfigured ones; see
    // Slaac.selectSource). Null: no address of the family is ours (yet).
    private IpAddr? SourceFor(IpAddr target)
    {
        var looped = IpLayer.loopedSource(target, _ip);
        if (looped.IsSome)
            return looped.Value;
        if (!target.IsIpv6)
            return _address4;
        if (_autoconfiguring is null)
            return _address6;
        var addresses = _autoconfiguring.AutoconfiguredAddresses;
        if (addresses.Count == 0)
            return _address6;
        var configured = _address6 is { } a
            ? Microsoft.FSharp.Core.FSharpValueOption<Ipv6Address>.NewValueSome(a.ipv6)
            : Microsoft.FSharp.Core.FSharpValueOption<Ipv6Address>.ValueNone;
        var source = Core.Link.Slaac.selectSource(configured, Options.PrefixLength6, target.ipv6, addresses);
        return source.IsSome ? IpAddr.NewV6(source.Value) : null;
    }

    // Whether the stack speaks IPv6: a configured address, or (Tap mode) link-local and
    // autoconfigured ones it forms.
    private bool HasIpv6 => _address6 is not null || _autoconfiguring is not null;

    // Whether `address` is one of the stack's assigned IPv6 addresses (tentative ones are not):
    // the IP layer's (the loop publishes a new immutable state on every change).
    private bool IsOwnIpv6(IPAddress address) =>
        IpLayer.isLocal6(Ipv6Address.OfIPAddress(address), Volatile.Read(ref _ip));

    /// <summary>
    /// The stack's IPv6 addresses: <see cref="NetStackOptions.Address6"/> first, then those
    /// stateless address autoconfiguration formed (<see cref="NetStackOptions.Slaac"/>), tentative
    /// ones included, with their state and remaining lifetimes. A snapshot; empty without an IPv6
    /// address.
    /// </summary>
    public IReadOnlyList<Ipv6AddressInfo> Ipv6Addresses
    {
        get
        {
            var list = new List<Ipv6AddressInfo>();
            if (Options.Address6 is not null)
                list.Add(new Ipv6AddressInfo(Options.Address6, Options.PrefixLength6, false, "Preferred", null, null));
            if (_autoconfiguring is not null)
            {
                long now = _autoconfiguring.Clock;
                foreach (var a in _autoconfiguring.AutoconfiguredAddresses)
                {
                    list.Add(new Ipv6AddressInfo(a.Address.ToIPAddress(), 64, true, a.State.ToString(),
                        Remaining(a.PreferredUntil, now), Remaining(a.ValidUntil, now)));
                }
            }

            return list;
        }
    }

    private static TimeSpan? Remaining(long until, long now) =>
        until == long.MaxValue ? null : TimeSpan.FromMicroseconds(Math.Max(0, until - now));

    // ------------------------------------------------------------------------------------------
    // Shutdown
    // ------------------------------------------------------------------------------------------

    /// <summary>
    /// Stops the loop, fails pending calls (pings and queued sends with <see cref="ObjectDisposedException"/>,
    /// receives, reads, writes and accepts with <see cref="SocketError.OperationAborted"/>, a pending
    /// connect with <see cref="ObjectDisposedException"/>), sends a RST on every TCP connection whose
    /// peer may still hold state for it (as <see cref="TcpConnection.Abort"/> would), closes every
    /// socket and disposes the device, which removes an interface the stack created and closes its
    /// descriptors; the loop thread has ended when this returns. Idempotent.
    /// </summary>
    public void Dispose()
    {
        lock (_commandGate)
        {
            if (_disposed)
                return;
            _disposed = true;
        }
        // The other queues' engines first, while this loop still runs (their listeners are
        // this one's too) and the link still has its addresses (their RSTs reach the peers).
        foreach (var engine in OtherEngines())
            engine.Dispose();
        _stopping = true;
        try
        {
            _device.Wake();
        }
        catch (ObjectDisposedException)
        {
        }
        if (Thread.CurrentThread != _thread)
            _thread.Join();
        var disposed = new ObjectDisposedException(nameof(NetworkStack));
        foreach (var command in _commands)
            command.Abort?.Invoke(disposed);
        _commands.Clear();
        foreach (var ping in _pings.Values)
        {
            ping.Registration.Unregister();
            ping.Completion.TrySetException(disposed);
        }
        _pings.Clear();
        _dns?.Dispose();
        foreach (var endpoint in _udpTable.Endpoints)
            (endpoint.Owner as UdpSocket)?.Dispose();
        DisposeTcp();
        DisposeForwarders();
        DropLooped();
        _link?.Dispose();
        _device.Dispose();
        _meter?.Dispose();
        _log.Stopped(InterfaceName);
    }

    // Queues > 1 needs the TUN interface the stack opens itself (Start(options)).
    private static void RefuseQueues(NetStackOptions options)
    {
        if (options.Queues > 1)
            throw new ArgumentException($"Queues {options.Queues} needs a TUN interface the stack opens itself (NetworkStack.Start(options)); a device passed in is one queue.", nameof(options));
    }

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>The interface name and addresses.</summary>
    public override string ToString() => $"netstack on {InterfaceName} ({Options.Address}, {Options.Address6})";
}
