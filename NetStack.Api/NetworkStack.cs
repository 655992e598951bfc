using System.Diagnostics;
using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.FSharp.Core;
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
    public const int EphemeralPortFirst = 49152;

    /// <summary>The last ephemeral port.</summary>
    public const int EphemeralPortLast = 65535;

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
    private readonly StackMeter _meter;
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
    private readonly object _portGate = new();
    private readonly Dictionary<ushort, UdpSocket> _udp4 = [];
    private readonly Dictionary<ushort, UdpSocket> _udp6 = [];

    private readonly IpAddr? _address4;
    private readonly IpAddr? _address6;

    // Tap mode: the Ethernet adapter, whose autoconfigured IPv6 addresses the loop copies into the
    // IP layer whenever the adapter publishes a new list (null: Tun mode or no autoconfiguration).
    private readonly EthernetPacketDevice? _autoconfiguring;
    private IReadOnlyList<Core.Link.SlaacAddress>? _autoconfigured;

    private readonly record struct Command(Action Run, Action<Exception>? Abort);

    private sealed class PendingPing
    {
        public required TaskCompletionSource<PingReply> Completion;
        public required IPAddress Destination;
        public required IpAddr DestinationAddress;
        public required long SentAt;
        public required long Deadline;
        public CancellationTokenRegistration Registration;
    }

    private NetworkStack(NetStackOptions options, IPacketDevice device, string interfaceName, KernelLink? link = null)
    {
        _link = link;
        if (options.Slaac)
            _autoconfiguring = LinkWithin(device);
        _log = (options.LoggerFactory ?? NullLoggerFactory.Instance).CreateLogger<NetworkStack>();
        // On a fault-injecting device the stack's counters and the fault counters are one set.
        _statistics = LinkWithin(device)?.Statistics ?? FaultsWithin(device)?.Statistics ?? new NetStackStatistics();
        _deviceRead = _statistics.Handle("device.read");
        _deviceWritten = _statistics.Handle("device.written");
        _tcpReceived = _statistics.Handle("tcp.received");
        _tcpSent = _statistics.Handle("tcp.sent");
        TcpRingsRented = _statistics.Handle("tcp.ring.rented");
        TcpRingsReturned = _statistics.Handle("tcp.ring.returned");
        if ((device is CapturingPacketDevice c ? c.Inner : device) is WriterThreadDevice writer)
            writer.Statistics = _statistics;
        Options = options;
        InterfaceName = interfaceName;
        _device = device;
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
        var config = IpLayer.config(
            options.Address is null ? FSharpValueOption<Ipv4Address>.ValueNone : FSharpValueOption<Ipv4Address>.NewValueSome(Ipv4Address.OfIPAddress(options.Address)),
            options.Address6 is null ? FSharpValueOption<Ipv6Address>.ValueNone : FSharpValueOption<Ipv6Address>.NewValueSome(Ipv6Address.OfIPAddress(options.Address6)),
            mtu);
        var reassembly = config.Reassembly;
        reassembly = new ReassemblyConfig(reassembly.Ipv4Timeout, reassembly.Ipv6Timeout, options.ReassemblyMaxBytes,
            options.ReassemblyMaxDatagrams, reassembly.MaxFragmentsPerDatagram);
        config = new IpLayerConfig(config.Address4, config.Address6, config.Mtu, options.IcmpErrorsPerSecond,
            Math.Max(1, Math.Min(options.IcmpErrorsPerSecond, 10)), reassembly);
        _ip = IpLayer.create(config, Now());
        InitTcp(mtu);
        _meter = new StackMeter(interfaceName, _statistics, () => Volatile.Read(ref _bytesRead),
            () => Volatile.Read(ref _bytesWritten), () => _tcpTable.Count);
        _thread = new Thread(Loop) { IsBackground = true, Name = $"netstack {interfaceName}" };
        _thread.Start();
        _log.Started(interfaceName, options.Address, options.Address6, mtu);
    }

    /// <summary>
    /// Creates (or attaches to) the TUN interface, configures the kernel side (addresses with the
    /// stack as point-to-point peer, MTU, link up) and starts the loop.
    /// </summary>
    /// <param name="options">What to bring up.</param>
    /// <exception cref="ArgumentException">An option is invalid (the message says which).</exception>
    /// <exception cref="TunDeviceException">The device could not be created or configured (the message says what to do).</exception>
    /// <exception cref="IOException">The <see cref="NetStackOptions.CapturePath"/> file could not be created (also <see cref="UnauthorizedAccessException"/>).</exception>
    public static NetworkStack Start(NetStackOptions options)
    {
        Validate(options);
        // Offloads only where nothing between the stack and the device hides them: injected
        // corruption must reach the checksum check, which a partial checksum would skip. In TAP
        // mode EthernetPacketDevice carries the headers through, moved by the Ethernet header.
        bool tap = options.Mode == NetStackMode.Tap;
        bool offloads = options.Offloads && options.Faults is null;
        var device = options.AttachExisting
            ? (tap ? TunDevice.AttachTap(options.TunName, offloads) : TunDevice.Attach(options.TunName, offloads))
            : (tap ? TunDevice.CreateTap(options.TunName, offloads) : TunDevice.Create(options.TunName, offloads));
        KernelLink? link = null;
        try
        {
            if (offloads)
                device.SetOffloads(StackOffloads);
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
            var stack = new NetworkStack(options, WithCapture(options, packets), device.Name, link) { UsesIoUring = device.UsesIoUring };
            if (noRing is not null)
                stack._log.IoUringUnavailable(device.Name, noRing);
            return stack;
        }
        catch
        {
            link?.Dispose();
            device.Dispose();
            throw;
        }
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
        return new NetworkStack(options, WithCapture(options, device), interfaceName);
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

    private static void Validate(NetStackOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.Address is null && options.Address6 is null)
            throw new ArgumentException("Give the stack an IPv4 address, an IPv6 address or both.", nameof(options));
        if (options.Address is not null && options.Address.AddressFamily != AddressFamily.InterNetwork)
            throw new ArgumentException($"Address {options.Address} is not an IPv4 address.", nameof(options));
        if (options.HostAddress is not null && options.HostAddress.AddressFamily != AddressFamily.InterNetwork)
            throw new ArgumentException($"HostAddress {options.HostAddress} is not an IPv4 address.", nameof(options));
        if (options.Address6 is not null && options.Address6.AddressFamily != AddressFamily.InterNetworkV6)
            throw new ArgumentException($"Address6 {options.Address6} is not an IPv6 address.", nameof(options));
        if (options.HostAddress6 is not null && options.HostAddress6.AddressFamily != AddressFamily.InterNetworkV6)
            throw new ArgumentException($"HostAddress6 {options.HostAddress6} is not an IPv6 address.", nameof(options));
        if (options.Address is not null && options.Address.Equals(options.HostAddress))
            throw new ArgumentException($"The stack and the kernel side cannot both be {options.Address}.", nameof(options));
        if (options.Address6 is not null && options.Address6.Equals(options.HostAddress6))
            throw new ArgumentException($"The stack and the kernel side cannot both be {options.Address6}.", nameof(options));
        int minimum = options.Address6 is null ? 576 : 1280;
        if (options.Mtu < minimum || options.Mtu > 65535)
            throw new ArgumentException($"MTU {options.Mtu} is outside {minimum}..65535{(minimum == 1280 ? " (IPv6 needs at least 1280)" : "")}.", nameof(options));
        if (options.UdpReceiveQueueBytes < 1)
            throw new ArgumentException("UdpReceiveQueueBytes must be positive.", nameof(options));
        if (options.ReassemblyMaxBytes < 1 || options.ReassemblyMaxDatagrams < 1)
            throw new ArgumentException("ReassemblyMaxBytes and ReassemblyMaxDatagrams must be positive.", nameof(options));
        if (options.IcmpErrorsPerSecond < 0)
            throw new ArgumentException("IcmpErrorsPerSecond cannot be negative.", nameof(options));
        if (options.Slaac && (options.Mode != NetStackMode.Tap || options.Address6 is null))
            throw new ArgumentException("Slaac needs Mode = Tap and an Address6 (the stack's main IPv6 address).", nameof(options));
        if (options.SlaacSecretKey is { Length: 0 })
            throw new ArgumentException("SlaacSecretKey is empty (null means a random key).", nameof(options));
        if (options.CapturePath is not null && options.CapturePath.Length == 0)
            throw new ArgumentException("CapturePath is empty (null means no capture).", nameof(options));
        options.Faults?.Validate();
        if (options.TunWriterThread == true && (options.Offloads || options.Mode != NetStackMode.Tun || options.TunIoUring))
            throw new ArgumentException("TunWriterThread needs Offloads = false, Mode = Tun and no TunIoUring.", nameof(options));
        if (string.IsNullOrEmpty(options.TunName))
            throw new ArgumentException("TunName is empty.", nameof(options));
        if (options.VlanId is { } vlan && (vlan is < 1 or > 4094 || options.Mode != NetStackMode.Tap))
            throw new ArgumentException($"VlanId {vlan}: a VLAN id is 1..4094 and needs Mode = NetStackMode.Tap.", nameof(options));
        ValidateTcp(options);
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

    /// <summary>The named counters.</summary>
    public NetStackStatistics Statistics => _statistics;

    // Microseconds since the stack started: the monotonic `now` the core takes.
    private long Now() => (long)(Stopwatch.GetElapsedTime(_epoch).Ticks / (TimeSpan.TicksPerMillisecond / 1000));

    // ------------------------------------------------------------------------------------------
    // Commands
    // ------------------------------------------------------------------------------------------

    // wake false: queue the command without waking an idle loop (it runs at the loop's next
    // pass: a packet, a timer, another command); for work nobody waits for.
    private void Post(Action run, Action<Exception>? abort, bool wake = true)
    {
        lock (_commandGate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _commands.Enqueue(new Command(run, abort));
            wake &= _loopIdle;
            if (wake)
                _loopIdle = false;
        }
        // A busy loop drains the queue before it next waits (EnterIdle sees the command).
        if (wake)
            _device.Wake();
    }

    /// <summary>Wakes the loop if it waits idle, so that it runs the commands already queued.</summary>
    internal void WakeLoop()
    {
        bool wake;
        lock (_commandGate)
        {
            if (_disposed)
                return;
            wake = _loopIdle;
            _loopIdle = false;
        }
        if (wake)
            _device.Wake();
    }

    // The loop is about to wait in the device read: true when it may (no command is queued, and
    // from now on a Post wakes it), false when it must only poll.
    private bool EnterIdle()
    {
        lock (_commandGate)
        {
            if (_commands.Count > 0)
                return false;
            _loopIdle = true;
            return true;
        }
    }

    private void DrainCommands()
    {
        Queue<Command> batch;
        lock (_commandGate)
        {
            if (_commands.Count == 0)
                return;
            batch = _commands;
            _commands = _spareCommands;
            _spareCommands = batch;
        }
        while (batch.TryDequeue(out var command))
        {
            try
            {
                command.Run();
            }
            catch (Exception e)
            {
                _statistics.Increment("engine.command-error");
                command.Abort?.Invoke(e);
            }
        }
    }

    /// <summary>
    /// Hands the engine a packet as if the device had read it (a copy is taken): the test hook for
    /// injecting garbage or crafted packets into a running stack.
    /// </summary>
    /// <param name="packet">The packet's bytes (anything at all).</param>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public void InjectPacket(ReadOnlySpan<byte> packet)
    {
        var copy = packet.ToArray();
        Post(() => ProcessPacket(copy, default), null);
    }

    // ------------------------------------------------------------------------------------------
    // The loop
    // ------------------------------------------------------------------------------------------

    private void Loop()
    {
        int deviceErrors = 0;
        // "engine.loop.allocated-bytes": what this thread has allocated since it started (the
        // core's immutable TCP records, for the most part); reading the thread's own allocation
        // counter costs a few nanoseconds.
        long allocatedAtStart = GC.GetAllocatedBytesForCurrentThread();
        while (!_stopping)
        {
            _statistics.Set("engine.loop.allocated-bytes", GC.GetAllocatedBytesForCurrentThread() - allocatedAtStart);
            try
            {
                RunTimers();
                DrainCommands();
                if (_stopping)
                    break;
                int wait = WaitMilliseconds();
                // A burst: packets the device already holds are read without waiting, and the
                // readers and writers they concern are woken once at its end (or every
                // MaxBurstPackets), not once per packet: one thread-pool dispatch per burst.
                VirtioNetHeader header = default;
                bool read = TryReadPacket(0, out var packet, out header);
                if (!read)
                {
                    FlushWakes();
                    if (wait > 0 && EnterIdle())
                        read = TryReadPacket(wait, out packet, out header);
                }
                else if (++_burstPackets >= MaxBurstPackets)
                    FlushWakes();
                Volatile.Write(ref _loopIdle, false);
                if (_autoconfiguring is not null)
                    SyncAutoconfigured();
                if (read)
                {
                    deviceErrors = 0;
                    _deviceRead.Increment();
                    Interlocked.Add(ref _bytesRead, packet.Length);
                    ProcessPacket(packet, header);
                }
            }
            catch (ObjectDisposedException) when (_stopping)
            {
                break;
            }
            catch (Exception e)
            {
                // A device failure (the interface deleted under us): count it and do not spin.
                _statistics.Increment("engine.loop-error");
                // Logged the first time and then at 2, 4, 8, ... in a row.
                if (System.Numerics.BitOperations.IsPow2(deviceErrors + 1))
                    _log.DeviceError(InterfaceName, deviceErrors + 1, e);
                if (++deviceErrors > 3)
                    Thread.Sleep(Math.Min(1000, 10 * deviceErrors));
            }
        }
    }

    private bool TryReadPacket(int wait, out ReadOnlySpan<byte> packet, out VirtioNetHeader header)
    {
        header = default;
        int length;
        bool read;
        if (_inPlace is not null)
        {
            // io_uring: the packet stays where the kernel put it, until the next read.
            read = _inPlace.TryReadInPlace(wait, out packet, out header);
            if (_offload is null)
                header = default;
            return read;
        }
        read = _offload is not null
            ? _offload.TryReadWithHeader(_receiveBuffer, wait, out length, out header)
            : _device.TryRead(_receiveBuffer, wait, out length);
        packet = _receiveBuffer.AsSpan(0, length);
        return read;
    }

    // The TUN device itself when the loop reads it directly in io_uring mode (nothing wraps it).
    private readonly TunDevice? _inPlace;

    // Most packets a burst may hold back its wakes for (about 23 KB of data at MTU 1500).
    private const int MaxBurstPackets = 16;
    private int _burstPackets;
    // Connections whose waiting reader or writer has something to do (loop-only).
    private readonly List<TcpConnection> _pendingWakes = [];

    /// <summary>Asks the loop to wake <paramref name="connection"/>'s waiting calls at the end of the burst.</summary>
    internal void DeferWake(TcpConnection connection) => _pendingWakes.Add(connection);

    private void FlushWakes()
    {
        _burstPackets = 0;
        if (_pendingWakes.Count == 0)
            return;
        foreach (var connection in _pendingWakes)
            connection.FlushWakes();
        _pendingWakes.Clear();
    }

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

    // The source of new communication with `target` (RFC 6724 rules 3 and 8 between the
    // configured IPv6 address and the preferred autoconfigured ones; see Slaac.selectSource).
    private IpAddr? SourceFor(IpAddr target)
    {
        if (!target.IsIpv6)
            return _address4;
        if (_autoconfiguring is null || _address6 is null)
            return _address6;
        var addresses = _autoconfiguring.AutoconfiguredAddresses;
        if (addresses.Count == 0)
            return _address6;
        return IpAddr.NewV6(Core.Link.Slaac.selectSource(_address6.Value.ipv6, Options.PrefixLength6, target.ipv6, addresses));
    }

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

    private int WaitMilliseconds()
    {
        long now = Now();
        long next = long.MaxValue;
        var deadline = IpLayer.nextDeadline(_ip);
        if (deadline.IsSome)
            next = deadline.Value;
        foreach (var ping in _pings.Values)
            next = Math.Min(next, ping.Deadline);
        next = Math.Min(next, NextTcpDeadline());
        if (next == long.MaxValue)
            return MaxWaitMilliseconds;
        long wait = (next - now + 999) / 1000;
        return (int)Math.Clamp(wait, 0, MaxWaitMilliseconds);
    }

    private void RunTimers()
    {
        long now = Now();
        RunTcpTimers(now);
        SweepIdleRings(now);
        var deadline = IpLayer.nextDeadline(_ip);
        if (deadline.IsSome && deadline.Value <= now)
        {
            var (state, abandoned) = IpLayer.expire(now, _ip);
            _ip = state;
            foreach (var a in abandoned)
            {
                _statistics.Increment("ip.reassembly.timeout");
                if (a.FirstFragment.IsSome)
                {
                    int length = IpLayer.writeFirstFragment(a.Key, a.FirstFragment.Value, _fragmentBuffer);
                    SendError(OutgoingError.ReassemblyTimeExceeded, _fragmentBuffer.AsSpan(0, length), "icmp.error.sent.reassembly-time-exceeded");
                }
            }
        }
        if (_pings.Count > 0)
        {
            List<ushort>? expired = null;
            foreach (var (sequence, ping) in _pings)
            {
                if (ping.Deadline <= now)
                    (expired ??= []).Add(sequence);
            }
            if (expired is not null)
            {
                foreach (var sequence in expired)
                {
                    var ping = _pings[sequence];
                    _pings.Remove(sequence);
                    ping.Registration.Unregister();
                    _statistics.Increment("ping.timed-out");
                    ping.Completion.TrySetResult(new PingReply(IPStatus.TimedOut, ping.Destination, TimeSpan.Zero, 0));
                }
            }
        }
    }

    private void ProcessPacket(ReadOnlySpan<byte> packet, in VirtioNetHeader header)
    {
        try
        {
            Dispatch(packet, header);
        }
        catch (TunDeviceException)
        {
            // Writing the answer failed (the link is down, the interface is going away).
            _statistics.Increment("device.write-error");
        }
        catch (Exception)
        {
            // A bug, not the peer's fault; but the peer must not be able to stop the loop with it.
            _statistics.Increment("drop.exception");
        }
    }

    private void Dispatch(ReadOnlySpan<byte> packet, in VirtioNetHeader header)
    {
        long now = Now();
        if (!packet.IsEmpty && (packet[0] >> 4) is 4 or 6)
            _statistics.Increment((packet[0] >> 4) == 6 ? "ipv6.received" : "ipv4.received");
        if (header.IsSegmented)
            _statistics.Increment("offload.gso.received");
        // A partial (NEEDS_CSUM) or kernel-verified (DATA_VALID) transport checksum is not
        // checked again; a super-segment goes to TCP whole, however long.
        long evicted = _ip.ReassemblyEvicted;
        var (state, r) = IpLayer.receiveChecked(now, packet, header.TransportChecksumTrusted, _ip);
        _ip = state;
        if (state.ReassemblyEvicted != evicted)
            _statistics.Increment("ip.reassembly.evicted", state.ReassemblyEvicted - evicted);
        switch (r.Kind)
        {
            case ReceivedKind.Dropped:
                {
                    var reason = DropReasonModule.name(r.Drop);
                    _statistics.Increment(reason);
                    _dropLog.Dropped(_log, reason, now);
                    break;
                }
            case ReceivedKind.FragmentHeld:
                _statistics.Increment("ip.fragment.held");
                break;
            case ReceivedKind.EchoRequest:
                {
                    var data = IpLayer.slice(packet, r.Payload);
                    int length = IpLayer.writeEchoReply(r.Destination, r.Source, r.Echo.Identifier, r.Echo.Sequence, NextIdentification(), data, _packetBuffer);
                    SendPacket(length, r.Source, now);
                    _statistics.Increment("icmp.echo.replied");
                    break;
                }
            case ReceivedKind.EchoReply:
                OnEchoReply(r, now);
                break;
            case ReceivedKind.UdpDatagram:
                OnUdp(packet, r, header.Segmentation == VirtioGsoType.UdpL4 ? header.GsoSize : 0);
                break;
            case ReceivedKind.IcmpError:
                OnIcmpError(r);
                break;
            case ReceivedKind.TcpSegment:
                OnTcp(packet, r, now);
                break;
        }
    }

    private ushort NextIdentification() => _ipIds.Next();

    /// <summary>Writes the whole packet in _packetBuffer to the device, cut for the path MTU.</summary>
    private void SendPacket(int length, IpAddr destination, long now)
    {
        var packet = _packetBuffer.AsSpan(0, length);
        int mtu = IpLayer.pathMtu(now, destination, _ip);
        if (length <= mtu)
        {
            _device.Write(packet);
            _deviceWritten.Increment();
            Interlocked.Add(ref _bytesWritten, length);
            return;
        }
        var plan = IpLayer.planFragments(packet, mtu, (uint)Random.Shared.Next());
        for (int i = 0; i < plan.Count; i++)
        {
            int n = IpLayer.writeFragment(plan, packet, i, _fragmentBuffer);
            _device.Write(_fragmentBuffer.AsSpan(0, n));
            _deviceWritten.Increment();
            Interlocked.Add(ref _bytesWritten, n);
        }
        _statistics.Increment("ip.fragments.sent", plan.Count);
    }

    private void SendError(OutgoingError error, ReadOnlySpan<byte> original, string sentCounter)
    {
        var (state, verdict, length) = IpLayer.tryWriteError(Now(), error, original, _packetBuffer, _ip);
        _ip = state;
        if (verdict == ErrorVerdict.Sent)
        {
            _device.Write(_packetBuffer.AsSpan(0, length));
            _deviceWritten.Increment();
            Interlocked.Add(ref _bytesWritten, length);
            _statistics.Increment(sentCounter);
        }
        else
        {
            _statistics.Increment(verdict switch
            {
                ErrorVerdict.RateLimited => "icmp.error.suppressed.rate-limited",
                ErrorVerdict.AboutIcmpError => "icmp.error.suppressed.about-icmp-error",
                ErrorVerdict.NotFirstFragment => "icmp.error.suppressed.not-first-fragment",
                ErrorVerdict.NotUnicastDestination => "icmp.error.suppressed.not-unicast-destination",
                ErrorVerdict.NotUnicastSource => "icmp.error.suppressed.not-unicast-source",
                ErrorVerdict.NoAddress => "icmp.error.suppressed.no-address",
                _ => "icmp.error.suppressed.malformed",
            });
        }
    }

    // segmentSize > 0: a USO super-datagram (gso UDP_L4) from a kernel socket using UDP_SEGMENT;
    // every segmentSize payload bytes are one datagram (the last may be shorter).
    private void OnUdp(ReadOnlySpan<byte> packet, Received r, int segmentSize = 0)
    {
        var payload = IpLayer.slice(packet, r.Payload);
        if (segmentSize > 0 && payload.Length > segmentSize)
        {
            _statistics.Increment("offload.uso.received");
            for (int at = 0; at < payload.Length; at += segmentSize)
                OnUdpDatagram(packet, r, payload.Slice(at, Math.Min(segmentSize, payload.Length - at)));
            return;
        }
        OnUdpDatagram(packet, r, payload);
    }

    private void OnUdpDatagram(ReadOnlySpan<byte> packet, Received r, ReadOnlySpan<byte> payload)
    {
        _statistics.Increment("udp.received");
        UdpSocket? socket;
        lock (_portGate)
            (r.Destination.IsIpv6 ? _udp6 : _udp4).TryGetValue(r.Ports.Destination, out socket);
        if (socket is null)
        {
            _statistics.Increment("udp.drop.no-socket");
            // RFC 1122 §4.1.3.1: port unreachable, within the ICMP error rules and rate limit.
            if (!r.ToBroadcast)
                SendError(OutgoingError.PortUnreachable, IpLayer.slice(packet, r.Packet), "icmp.error.sent.port-unreachable");
            return;
        }
        switch (socket.Deliver(payload, r.Source, r.Ports.Source))
        {
            case DeliveryResult.Delivered:
            case DeliveryResult.Queued:
                _statistics.Increment("udp.delivered");
                break;
            case DeliveryResult.QueueFull:
                _statistics.Increment("udp.drop.queue-full");
                break;
            case DeliveryResult.NotFromConnectedPeer:
                _statistics.Increment("udp.drop.not-connected-peer");
                break;
            default:
                _statistics.Increment("udp.drop.closed");
                break;
        }
    }

    private void OnIcmpError(Received r)
    {
        _statistics.Increment("icmp.error.received");
        var error = r.Error;
        var quoted = error.Quoted;
        if (error.Kind == IcmpErrorKind.PacketTooBig)
            _statistics.Increment("icmp.error.packet-too-big");
        if (!quoted.PortsKnown && !quoted.EchoKnown)
            return;
        if (quoted.Protocol == IpProtocol.Icmp || quoted.Protocol == IpProtocol.Icmpv6)
        {
            if (quoted.EchoKnown && quoted.Echo.Identifier == _pingIdentifier && _pings.Remove(quoted.Echo.Sequence, out var ping))
            {
                ping.Registration.Unregister();
                var status = error.Kind switch
                {
                    IcmpErrorKind.PacketTooBig => IPStatus.PacketTooBig,
                    IcmpErrorKind.TimeExceeded => IPStatus.TtlExpired,
                    IcmpErrorKind.ParameterProblem => IPStatus.ParameterProblem,
                    _ => IPStatus.DestinationUnreachable,
                };
                ping.Completion.TrySetResult(new PingReply(status, r.Source.ToIPAddress(), TimeSpan.FromTicks((Now() - ping.SentAt) * 10), 0));
            }
            return;
        }
        if (quoted.Protocol == IpProtocol.Tcp)
        {
            // To the connection of the quoted 4-tuple; the core decides (Connection.handleIcmpInto).
            OnTcpIcmpError(r);
            return;
        }
        if (quoted.Protocol != IpProtocol.Udp)
            return;
        UdpSocket? socket;
        lock (_portGate)
            (quoted.Source.IsIpv6 ? _udp6 : _udp4).TryGetValue(quoted.Ports.Source, out socket);
        if (socket is null)
            _statistics.Increment("icmp.error.no-socket");
        else if (socket.ReportError(error.Kind, quoted.Destination, quoted.Ports.Destination))
            _statistics.Increment("udp.icmp-error.reported");
    }

    private void OnEchoReply(Received r, long now)
    {
        _statistics.Increment("icmp.echo-reply.received");
        if (r.Echo.Identifier != _pingIdentifier || !_pings.TryGetValue(r.Echo.Sequence, out var ping) || !ping.DestinationAddress.Equals(r.Source))
        {
            _statistics.Increment("icmp.echo-reply.unmatched");
            return;
        }
        _pings.Remove(r.Echo.Sequence);
        ping.Registration.Unregister();
        var rtt = TimeSpan.FromTicks((now - ping.SentAt) * 10);
        _meter.RecordPingRtt(rtt);
        ping.Completion.TrySetResult(new PingReply(IPStatus.Success, ping.Destination, rtt, r.Payload.Length));
    }

    // ------------------------------------------------------------------------------------------
    // Ping
    // ------------------------------------------------------------------------------------------

    /// <summary>
    /// Sends an ICMP echo request (IPv4 or IPv6, by the destination's family) and waits for the
    /// reply: Success with the round-trip time, TimedOut, or the status an ICMP error says
    /// (DestinationUnreachable, PacketTooBig, TtlExpired, ParameterProblem).
    /// </summary>
    /// <param name="destination">Whom to ping.</param>
    /// <param name="timeout">How long to wait for the reply (positive).</param>
    /// <param name="dataSize">Bytes of echo data (0..65500; fragmented as needed).</param>
    /// <param name="cancellationToken">Cancels the wait (the task is then canceled).</param>
    /// <exception cref="ArgumentException">No address of the destination's family, or bad sizes.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed (also for a ping pending at disposal).</exception>
    public Task<PingReply> PingAsync(IPAddress destination, TimeSpan timeout, int dataSize = 56, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(destination);
        if (destination.IsIPv4MappedToIPv6)
            destination = destination.MapToIPv4();
        if (timeout <= TimeSpan.Zero)
            throw new ArgumentOutOfRangeException(nameof(timeout), "The timeout must be positive.");
        ArgumentOutOfRangeException.ThrowIfNegative(dataSize);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(dataSize, 65500);
        var target = IpAddr.OfIPAddress(destination);
        var source = SourceFor(target);
        if (source is null)
            throw new ArgumentException($"The stack has no {(target.IsIpv6 ? "IPv6" : "IPv4")} address to ping {destination} from.", nameof(destination));
        if (cancellationToken.IsCancellationRequested)
            return Task.FromCanceled<PingReply>(cancellationToken);
        var completion = new TaskCompletionSource<PingReply>(TaskCreationOptions.RunContinuationsAsynchronously);
        long timeoutMicros = (long)Math.Min(timeout.TotalMicroseconds, long.MaxValue / 4);
        Post(() =>
        {
            long now = Now();
            ushort sequence = _nextPingSequence++;
            var ping = new PendingPing
            {
                Completion = completion,
                Destination = destination,
                DestinationAddress = target,
                SentAt = now,
                Deadline = now + timeoutMicros,
            };
            // A sequence number still pending (65536 pings later) gives way to the new one.
            if (_pings.Remove(sequence, out var old))
                old.Completion.TrySetResult(new PingReply(IPStatus.TimedOut, old.Destination, TimeSpan.Zero, 0));
            _pings[sequence] = ping;
            if (cancellationToken.CanBeCanceled)
            {
                ping.Registration = cancellationToken.Register(() =>
                {
                    try
                    {
                        Post(() =>
                        {
                            if (_pings.TryGetValue(sequence, out var p) && ReferenceEquals(p, ping))
                                _pings.Remove(sequence);
                        }, null);
                    }
                    catch (ObjectDisposedException)
                    {
                    }
                    completion.TrySetCanceled(cancellationToken);
                });
            }
            var data = new byte[dataSize];
            for (int i = 0; i < data.Length; i++)
                data[i] = (byte)i;
            int length = IpLayer.writeEchoRequest(source.Value, target, _pingIdentifier, sequence, NextIdentification(), data, _packetBuffer);
            SendPacket(length, target, now);
            _statistics.Increment("ping.sent");
        }, e => completion.TrySetException(e));
        return completion.Task;
    }

    // ------------------------------------------------------------------------------------------
    // UDP
    // ------------------------------------------------------------------------------------------

    /// <summary>
    /// Binds a UDP socket. Port 0 picks a free port in 49152–65535 at random. The address is
    /// <see cref="IPAddress.Any"/> or the stack's IPv4 address (IPv4 only), the stack's IPv6 address
    /// (IPv6 only), or <see cref="IPAddress.IPv6Any"/> (both families, dual mode).
    /// </summary>
    /// <param name="localEndPoint">Address and port.</param>
    /// <exception cref="SocketException">AddressAlreadyInUse when the port is taken (or no ephemeral port is free); AddressNotAvailable for an address that is not the stack's.</exception>
    /// <exception cref="ArgumentException">The address family has no address on this stack.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public UdpSocket BindUdp(IPEndPoint localEndPoint)
    {
        ArgumentNullException.ThrowIfNull(localEndPoint);
        var (v4, v6) = Families(localEndPoint);
        lock (_portGate)
        {
            lock (_commandGate)
                ObjectDisposedException.ThrowIf(_disposed, this);
            int port = localEndPoint.Port;
            if (port == 0)
                port = PickEphemeralPort(v4, v6);
            else if ((v4 && _udp4.ContainsKey((ushort)port)) || (v6 && _udp6.ContainsKey((ushort)port)))
                throw new SocketException((int)SocketError.AddressAlreadyInUse);
            var socket = new UdpSocket(this, new IPEndPoint(localEndPoint.Address, port), v4, v6, Options.UdpReceiveQueueBytes);
            if (v4)
                _udp4[(ushort)port] = socket;
            if (v6)
                _udp6[(ushort)port] = socket;
            _log.UdpBound(socket.LocalEndPoint);
            return socket;
        }
    }

    private int PickEphemeralPort(bool v4, bool v6)
    {
        // RFC 6056 §3.3.1: start at a random point of the range and probe upwards.
        const int count = EphemeralPortLast - EphemeralPortFirst + 1;
        int start = Random.Shared.Next(count);
        for (int i = 0; i < count; i++)
        {
            ushort port = (ushort)(EphemeralPortFirst + (start + i) % count);
            if (!(v4 && _udp4.ContainsKey(port)) && !(v6 && _udp6.ContainsKey(port)))
                return port;
        }
        throw new SocketException((int)SocketError.AddressAlreadyInUse);
    }

    internal void Unbind(UdpSocket socket)
    {
        lock (_portGate)
        {
            if (socket.BindsIpv4 && _udp4.TryGetValue(socket.Port, out var s4) && ReferenceEquals(s4, socket))
                _udp4.Remove(socket.Port);
            if (socket.BindsIpv6 && _udp6.TryGetValue(socket.Port, out var s6) && ReferenceEquals(s6, socket))
                _udp6.Remove(socket.Port);
        }
    }

    /// <summary>The link's MTU (the smaller of the options' and the device's).</summary>
    internal int LinkMtu { get; }

    // Sends `datagram` as one datagram, or with segmentSize > 0 as consecutive datagrams of
    // segmentSize bytes (the caller has checked the count and that each fits the link MTU).
    internal ValueTask<int> SendUdpAsync(UdpSocket socket, ReadOnlyMemory<byte> datagram, IpAddr destination, ushort port, int segmentSize, CancellationToken cancellationToken)
    {
        var source = SourceFor(destination);
        if (source is null)
            return ValueTask.FromException<int>(new SocketException((int)SocketError.NetworkUnreachable));
        var completion = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        try
        {
            Post(() =>
            {
                if (cancellationToken.IsCancellationRequested)
                {
                    completion.TrySetCanceled(cancellationToken);
                    return;
                }
                long now = Now();
                if (segmentSize > 0 && datagram.Length > segmentSize)
                    SendUdpSegments(source.Value, destination, socket.Port, port, datagram.Span, segmentSize, now);
                else
                {
                    int length = IpLayer.writeUdp(source.Value, destination, socket.Port, port, NextIdentification(), datagram.Span, _packetBuffer);
                    SendPacket(length, destination, now);
                    _statistics.Increment("udp.sent");
                }
                completion.TrySetResult(datagram.Length);
            }, e => completion.TrySetException(e));
        }
        catch (ObjectDisposedException e)
        {
            return ValueTask.FromException<int>(e);
        }
        return new ValueTask<int>(completion.Task);
    }

    // Several datagrams from one buffer. With USO in force (a TUN or TAP device whose kernel
    // took TUN_F_USO4/6, Linux 6.2+, which also reads gso UDP_L4 from us) and each datagram
    // within the path MTU: one super-datagram, the headers from the packet buffer and the payload
    // straight from the caller's memory (a gather write, no copy and no checksum pass here),
    // which the kernel cuts into the datagrams. Otherwise one datagram after another through
    // the ordinary path (fragmented if the path MTU has shrunk below a datagram).
    private void SendUdpSegments(IpAddr source, IpAddr destination, ushort sourcePort, ushort port, ReadOnlySpan<byte> data, int segmentSize, long now)
    {
        int count = (data.Length + segmentSize - 1) / segmentSize;
        int ipHeader = destination.IsIpv6 ? 40 : 20;
        if (_offload is not null
            && (_offload.Offloads & TunOffloads.Uso4) != 0
            && ipHeader + 8 + segmentSize <= IpLayer.pathMtu(now, destination, _ip))
        {
            // The kernel numbers the IPv4 identification of the datagrams it cuts on from ours.
            int length = IpLayer.writeUdpSegments(source, destination, sourcePort, port, _ipIds.Take(count), data.Length, _packetBuffer);
            var header = VirtioNet.udpSegments(ipHeader, segmentSize);
            _offload.WriteGather(_packetBuffer.AsSpan(0, length - data.Length), data, default, header);
            _deviceWritten.Increment();
            Interlocked.Add(ref _bytesWritten, length);
            _statistics.Increment("udp.sent", count);
            _statistics.Increment("offload.uso.sent");
            _statistics.Increment("offload.uso.segments", count);
            return;
        }
        for (int at = 0; at < data.Length; at += segmentSize)
        {
            var piece = data.Slice(at, Math.Min(segmentSize, data.Length - at));
            int length = IpLayer.writeUdp(source, destination, sourcePort, port, NextIdentification(), piece, _packetBuffer);
            SendPacket(length, destination, now);
        }
        _statistics.Increment("udp.sent", count);
    }

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
        List<UdpSocket> sockets;
        lock (_portGate)
            sockets = [.. _udp4.Values.Union(_udp6.Values)];
        foreach (var socket in sockets)
            socket.Dispose();
        DisposeTcp();
        _link?.Dispose();
        _device.Dispose();
        _meter.Dispose();
        _log.Stopped(InterfaceName);
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
