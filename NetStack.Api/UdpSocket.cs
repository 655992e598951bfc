using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Threading.Tasks.Sources;
using NetStack.Core.Stack;
using NetStack.Core.Wire;
using NetStack.Engine;

namespace NetStack;

/// <summary>
/// A UDP socket of a <see cref="NetworkStack"/>, bound by <see cref="NetworkStack.BindUdp"/>. Like
/// <see cref="Socket"/> with <see cref="SocketType.Dgram"/>: send to any endpoint, receive from
/// any, or <see cref="Connect"/> to one default remote (which also filters what is received and
/// reports ICMP port unreachable from it as <see cref="SocketError.ConnectionRefused"/>).
/// Thread-safe: every method may be called from any thread.
/// </summary>
public sealed partial class UdpSocket : IAsyncDisposable, IDisposable
{
    /// <summary>Bookkeeping charged per queued datagram on top of its bytes, so that a flood of empty datagrams is bounded too.</summary>
    internal const int DatagramOverhead = 64;

    private readonly NetworkStack _stack;
    // NetStackOptions.UnsafeInlineCompletions: receives completed by the loop run on it.
    private readonly bool _inlineCompletions;
    private readonly object _gate = new();
    private readonly Queue<QueuedDatagram> _queue = new();
    private readonly LinkedList<PendingReceive> _receivers = new();
    // A finished receive kept for the next one (see PendingReceive).
    private PendingReceive? _spareReceive;
    private int _capacity;
    private IpHeaderSettings _header = IpHeaderSettings.Default;
    private int _queuedBytes;
    private bool _disposed;
    private SocketError _pendingError = SocketError.Success;
    private IPEndPoint? _remote;
    private IpAddr _remoteAddress;
    private ushort _remotePort;

    // The last sender's endpoint, reused while the same peer keeps sending (saves an allocation).
    private IPEndPoint? _lastSource;
    private IpAddr _lastSourceAddress;
    private ushort _lastSourcePort;

    private readonly record struct QueuedDatagram(byte[] Buffer, int Length, IPEndPoint Source, IpAddr Destination);

    // A receive waiting for a datagram: the source of the ValueTask ReceiveFromAsync returns.
    // Every field is read and written under the socket's _gate, except the core's own state. One
    // finished instance per socket is kept for the next receive (_spareReceive), so that a
    // receive loop allocates nothing per datagram; an instance whose cancellation callback may
    // still run (Unregister came too late) is not reused, since that callback would cancel the
    // next receive.
    private sealed class PendingReceive : IValueTaskSource<SocketReceiveFromResult>, IInlineCompletion
    {
        private ManualResetValueTaskSourceCore<SocketReceiveFromResult> _core = new() { RunContinuationsAsynchronously = true };
        private readonly UdpSocket _owner;

        public PendingReceive(UdpSocket owner)
        {
            _owner = owner;
            Node = new LinkedListNode<PendingReceive>(this);
        }

        public readonly LinkedListNode<PendingReceive> Node;
        public Memory<byte> Buffer;
        public CancellationToken Token;
        public CancellationTokenRegistration Registration;
        // Set for ReceiveMessageFromAsync: where the datagram's destination address goes.
        public DestinationHolder? Destination;
        public bool Completed;
        public bool Reusable = true;

        public ValueTask<SocketReceiveFromResult> Task => new(this, _core.Version);

        // Under the owner's _gate; false when it had completed already.
        public bool TrySetResult(SocketReceiveFromResult result)
        {
            if (Completed)
                return false;
            Completed = true;
            Reusable &= Registration.Unregister() || !Token.CanBeCanceled;
            // On the loop with NetStackOptions.UnsafeInlineCompletions: the loop sets it when its
            // burst ends (Completed keeps a cancellation off it meanwhile).
            if (_owner._inlineCompletions && InlineCompletions.TryDefer(this))
                _inlineResult = result;
            else
                _core.SetResult(result);
            return true;
        }

        private SocketReceiveFromResult _inlineResult;
        private Exception? _inlineError;

        void IInlineCompletion.RunInline()
        {
            _core.RunContinuationsAsynchronously = false;
            var error = _inlineError;
            _inlineError = null;
            if (error is null)
                _core.SetResult(_inlineResult);
            else
                _core.SetException(error);
        }

        // Under the owner's _gate; false when it had completed already.
        public bool TrySetException(Exception exception)
        {
            if (Completed)
                return false;
            Completed = true;
            Reusable &= Registration.Unregister() || !Token.CanBeCanceled;
            if (_owner._inlineCompletions && InlineCompletions.TryDefer(this))
                _inlineError = exception;
            else
                _core.SetException(exception);
            return true;
        }

        // The cancellation callback (the registration's state is this instance).
        public static void Cancel(object? state)
        {
            var pending = (PendingReceive)state!;
            lock (pending._owner._gate)
            {
                if (pending.Completed)
                    return;
                if (pending.Node.List is not null)
                    pending._owner._receivers.Remove(pending.Node);
                pending.Completed = true;
                pending.Reusable = false;
                pending._core.SetException(new OperationCanceledException(pending.Token));
            }
        }

        public SocketReceiveFromResult GetResult(short token)
        {
            try
            {
                return _core.GetResult(token);
            }
            finally
            {
                if (Reusable)
                {
                    _core.Reset();
                    _core.RunContinuationsAsynchronously = true;
                    _inlineResult = default;
                    Buffer = default;
                    Token = default;
                    Registration = default;
                    Destination = null;
                    Completed = false;
                    Volatile.Write(ref _owner._spareReceive, this);
                }
            }
        }

        public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
            _core.OnCompleted(continuation, state, token, flags);
    }

    private sealed class DestinationHolder
    {
        public IpAddr Address;
    }

    internal UdpSocket(NetworkStack stack, IPEndPoint localEndPoint, bool ipv4, bool ipv6, int capacity)
    {
        _stack = stack;
        _inlineCompletions = stack.Options.UnsafeInlineCompletions;
        LocalEndPoint = localEndPoint;
        BindsIpv4 = ipv4;
        BindsIpv6 = ipv6;
        _capacity = capacity;
    }

    /// <summary>The local address and port (the port chosen when 0 was asked for).</summary>
    public IPEndPoint LocalEndPoint { get; }

    /// <summary>The default remote set by <see cref="Connect"/>, or null.</summary>
    public IPEndPoint? RemoteEndPoint => Volatile.Read(ref _remote);

    // The socket's port in the core's UDP table (set by BindUdp).
    internal UdpEndpoint Endpoint { get; init; } = null!;

    internal bool BindsIpv4 { get; }

    internal bool BindsIpv6 { get; }

    internal ushort Port => (ushort)LocalEndPoint.Port;

    /// <summary>
    /// Sets the default remote for <see cref="SendAsync(ReadOnlyMemory{byte}, CancellationToken)"/>; from then on only datagrams from it are
    /// received, and an ICMP port unreachable from it fails the next receive or send with
    /// <see cref="SocketError.ConnectionRefused"/>.
    /// </summary>
    /// <param name="remote">The remote endpoint (port 1..65535, a family this socket is bound to).</param>
    /// <exception cref="ArgumentException">The endpoint is unusable.</exception>
    /// <exception cref="ObjectDisposedException">The socket is disposed.</exception>
    public void Connect(IPEndPoint remote)
    {
        var address = CheckRemote(remote);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _remoteAddress = address;
            _remotePort = (ushort)remote.Port;
            _pendingError = SocketError.Success;
            Volatile.Write(ref _remote, remote);
        }
    }

    /// <summary>
    /// Sends one datagram to <paramref name="remote"/>, fragmented as the path MTU requires. Completes
    /// when the datagram is queued for the device, as sendto on a kernel socket does (synchronously,
    /// unless <see cref="DontFragment"/> is set, the destination is multicast, or this socket's
    /// queued sends hold 208 KiB, Linux's default send buffer: then when the loop has written it).
    /// </summary>
    /// <param name="datagram">The payload: up to 65507 bytes over IPv4, 65527 over IPv6.</param>
    /// <param name="remote">The destination.</param>
    /// <param name="cancellationToken">Cancels the send if it has not happened yet.</param>
    /// <returns>The number of payload bytes sent.</returns>
    /// <exception cref="SocketException">MessageSize for a payload above the maximum.</exception>
    /// <exception cref="ArgumentException">The endpoint is unusable.</exception>
    /// <exception cref="ObjectDisposedException">The socket is disposed.</exception>
    public ValueTask<int> SendToAsync(ReadOnlyMemory<byte> datagram, IPEndPoint remote, CancellationToken cancellationToken = default)
    {
        var address = CheckRemote(remote);
        lock (_gate)
            ObjectDisposedException.ThrowIf(_disposed, this);
        return Send(datagram, address, (ushort)remote.Port, 0, cancellationToken);
    }

    /// <summary>
    /// Sends <paramref name="data"/> to <paramref name="remote"/> as consecutive datagrams of
    /// <paramref name="segmentSize"/> bytes each, the last one shorter if the length is not a
    /// multiple, as one send with Linux's UDP_SEGMENT socket option does. With UDP segmentation
    /// offload in force (<see cref="NetworkStack.Offloads"/> has <see cref="Device.TunOffloads.Uso4"/>:
    /// Linux 6.2 and later) they cross to the kernel as one super-datagram that the kernel
    /// cuts, and the payload is not copied; otherwise they are sent one after another. Data no
    /// longer than <paramref name="segmentSize"/> is one ordinary datagram. Completes when the
    /// packets are written to the device.
    /// </summary>
    /// <param name="data">The payloads back to back: up to 65507 bytes over IPv4, 65527 over IPv6, and at most <see cref="MaxSegments"/> datagrams.</param>
    /// <param name="remote">The destination.</param>
    /// <param name="segmentSize">The payload bytes per datagram: at least 1, and each datagram within the link MTU (1472 bytes over IPv4 at MTU 1500, 1452 over IPv6).</param>
    /// <param name="cancellationToken">Cancels the send if it has not happened yet.</param>
    /// <returns>The number of payload bytes sent (all of <paramref name="data"/>).</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="segmentSize"/> is below 1 or a datagram of that size exceeds the link MTU.</exception>
    /// <exception cref="ArgumentException">The data makes more than <see cref="MaxSegments"/> datagrams; the endpoint is unusable.</exception>
    /// <exception cref="SocketException">MessageSize for data above the maximum.</exception>
    /// <exception cref="ObjectDisposedException">The socket is disposed.</exception>
    public ValueTask<int> SendToAsync(ReadOnlyMemory<byte> data, IPEndPoint remote, int segmentSize, CancellationToken cancellationToken = default)
    {
        var address = CheckRemote(remote);
        CheckSegments(data, segmentSize, address.IsIpv6);
        lock (_gate)
            ObjectDisposedException.ThrowIf(_disposed, this);
        return Send(data, address, (ushort)remote.Port, segmentSize, cancellationToken);
    }

    /// <summary>Sends one datagram to the remote set by <see cref="Connect"/>.</summary>
    /// <param name="datagram">The payload (see <see cref="SendToAsync(ReadOnlyMemory{byte}, IPEndPoint, CancellationToken)"/>).</param>
    /// <param name="cancellationToken">Cancels the send if it has not happened yet.</param>
    /// <returns>The number of payload bytes sent.</returns>
    /// <exception cref="InvalidOperationException">The socket is not connected.</exception>
    /// <exception cref="SocketException">ConnectionRefused after an ICMP port unreachable from the remote; MessageSize.</exception>
    /// <exception cref="ObjectDisposedException">The socket is disposed.</exception>
    public ValueTask<int> SendAsync(ReadOnlyMemory<byte> datagram, CancellationToken cancellationToken = default) =>
        SendConnected(datagram, null, cancellationToken);

    /// <summary>
    /// Sends <paramref name="data"/> to the remote set by <see cref="Connect"/> as consecutive
    /// datagrams of <paramref name="segmentSize"/> bytes (see
    /// <see cref="SendToAsync(ReadOnlyMemory{byte}, IPEndPoint, int, CancellationToken)"/>).
    /// </summary>
    /// <param name="data">The payloads back to back.</param>
    /// <param name="segmentSize">The payload bytes per datagram.</param>
    /// <param name="cancellationToken">Cancels the send if it has not happened yet.</param>
    /// <returns>The number of payload bytes sent.</returns>
    /// <exception cref="InvalidOperationException">The socket is not connected.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="segmentSize"/> is below 1 or a datagram of that size exceeds the link MTU.</exception>
    /// <exception cref="ArgumentException">The data makes more than <see cref="MaxSegments"/> datagrams.</exception>
    /// <exception cref="SocketException">ConnectionRefused after an ICMP port unreachable from the remote; MessageSize.</exception>
    /// <exception cref="ObjectDisposedException">The socket is disposed.</exception>
    public ValueTask<int> SendAsync(ReadOnlyMemory<byte> data, int segmentSize, CancellationToken cancellationToken = default) =>
        SendConnected(data, segmentSize, cancellationToken);

    // segmentSize null: one datagram; otherwise a segmented send, its size checked.
    private ValueTask<int> SendConnected(ReadOnlyMemory<byte> datagram, int? segmentSize, CancellationToken cancellationToken)
    {
        IpAddr address;
        ushort port;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_remote is null)
                throw new InvalidOperationException("The socket is not connected; call Connect or use SendToAsync.");
            if (TakePendingErrorLocked() is { } error)
                return ValueTask.FromException<int>(error);
            address = _remoteAddress;
            port = _remotePort;
        }
        if (segmentSize is { } size)
            CheckSegments(datagram, size, address.IsIpv6);
        return Send(datagram, address, port, segmentSize ?? 0, cancellationToken);
    }

    private ValueTask<int> Send(ReadOnlyMemory<byte> datagram, IpAddr address, ushort port, int segmentSize, CancellationToken cancellationToken)
    {
        int limit = address.IsIpv6 ? IpLayer.MaxUdpPayloadV6 : IpLayer.MaxUdpPayloadV4;
        if (datagram.Length > limit)
            return ValueTask.FromException<int>(new SocketException((int)SocketError.MessageSize));
        if (cancellationToken.IsCancellationRequested)
            return ValueTask.FromCanceled<int>(cancellationToken);
        return _stack.SendUdpAsync(this, datagram, address, port, segmentSize, cancellationToken);
    }

    /// <summary>
    /// The payload bytes of this socket's datagrams that may wait in the loop's queue with their
    /// sends already completed (Linux's default send buffer, net.core.wmem_default); beyond it a
    /// send completes when the loop has written its datagram.
    /// </summary>
    internal const int SendQueueBytes = 212992;

    // Payload bytes of this socket's datagrams queued for the loop, their sends completed.
    private int _sendQueued;

    // Reserves room for a queued send; false when the queue is full (the send waits instead).
    internal bool TryChargeSend(int length)
    {
        // One more than the length, so that an empty datagram counts too.
        if (Interlocked.Add(ref _sendQueued, length + 1) <= SendQueueBytes)
            return true;
        Interlocked.Add(ref _sendQueued, -length - 1);
        return false;
    }

    internal void ReleaseSend(int length) => Interlocked.Add(ref _sendQueued, -length - 1);

    // Counts a send that waits for the loop whatever the queue holds.
    internal void ChargeSend(int length) => Interlocked.Add(ref _sendQueued, length + 1);

    // True when none of this socket's datagrams waits in the loop's queue.
    internal bool NothingQueued => Volatile.Read(ref _sendQueued) == 0;

    // ------------------------------------------------------------------------------------------
    // Socket options (docs/api.md "Socket options")
    // ------------------------------------------------------------------------------------------

    // The IP header settings of the datagrams it sends (the loop reads them per send).
    internal IpHeaderSettings Header
    {
        get
        {
            lock (_gate)
                return _header;
        }
    }

    /// <summary>
    /// The IPv4 TTL / IPv6 hop limit of the unicast and broadcast datagrams this socket sends
    /// (<see cref="Socket.Ttl"/>, IP_TTL / IPV6_UNICAST_HOPS): 1..255, default 64. Multicast
    /// datagrams use <see cref="MulticastTimeToLive"/> / <see cref="MulticastHopLimit"/> instead.
    /// No per-datagram TTL exists: System.Net.Sockets has no public way to pass one with SendTo.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is outside 1..255.</exception>
    /// <exception cref="ObjectDisposedException">The socket is disposed.</exception>
    public short Ttl
    {
        get => Header.Ttl;
        set
        {
            if (value is < 1 or > 255)
                throw new ArgumentOutOfRangeException(nameof(value), value, "The TTL / hop limit must lie in 1..255.");
            lock (_gate)
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                _header = _header.WithTtl(value);
            }
        }
    }

    /// <summary>
    /// IP_TOS / IPV6_TCLASS of the datagrams this socket sends (0..255; <c>SocketOptionName.TypeOfService</c>):
    /// the DSCP in the upper six bits. The two ECN bits are the stack's (Not-ECT) whatever is set
    /// here (Linux lets a UDP socket set them; NetStack keeps ECN to itself). Default 0.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is outside 0..255.</exception>
    /// <exception cref="ObjectDisposedException">The socket is disposed.</exception>
    public int TypeOfService
    {
        get => Header.TypeOfService;
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(value, 255);
            lock (_gate)
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                _header = new IpHeaderSettings(_header.Ttl, (byte)value, _header.DontFragment);
            }
        }
    }

    /// <summary>
    /// IPv4 Don't Fragment on the datagrams this socket sends (<see cref="Socket.DontFragment"/>):
    /// false by default (RFC 8085 §3.2: datagrams may be fragmented), as Linux's UDP sockets.
    /// Set, a datagram larger than the path MTU the stack knows is not sent: the send fails with
    /// <see cref="SocketError.MessageSize"/> (Linux: EMSGSIZE). No effect on IPv6.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The socket is disposed.</exception>
    public bool DontFragment
    {
        get => Header.DontFragment;
        set
        {
            lock (_gate)
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                _header = new IpHeaderSettings(_header.Ttl, _header.TypeOfService, value);
            }
        }
    }

    /// <summary>
    /// The receive queue's size in bytes (<see cref="Socket.ReceiveBufferSize"/>, SO_RCVBUF): the
    /// payload bytes of the datagrams waiting for a receive, each charged 64 bytes more so that empty
    /// datagrams are bounded too; a datagram that does not fit is dropped (counted as
    /// <c>udp.drop.queue-full</c>), as Linux drops on a full socket buffer. Default
    /// <see cref="NetStackOptions.UdpReceiveQueueBytes"/>. Shrinking it keeps what is queued.
    /// Linux's getsockopt gives twice the value set; this gives the value set.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is below 1.</exception>
    /// <exception cref="ObjectDisposedException">The socket is disposed.</exception>
    public int ReceiveBufferSize
    {
        get
        {
            lock (_gate)
                return _capacity;
        }
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1);
            lock (_gate)
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                _capacity = value;
            }
        }
    }

    /// <summary>
    /// The size of the next datagram waiting to be received, 0 when none (<see cref="Socket.Available"/>:
    /// Linux's FIONREAD on a UDP socket gives the first queued datagram's size, not the total).
    /// </summary>
    /// <exception cref="ObjectDisposedException">The socket is disposed.</exception>
    public int Available
    {
        get
        {
            lock (_gate)
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                return _queue.TryPeek(out var next) ? next.Length : 0;
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // Multicast and broadcast
    // ------------------------------------------------------------------------------------------

    // The groups this socket joined (under _gate).
    private readonly HashSet<IpAddr> _groups = [];
    private int _multicastTtl = 1;
    private int _multicastHopLimit = 1;

    /// <summary>The most groups one socket may join, as Linux's IP_MAX_MEMBERSHIPS (20).</summary>
    public const int MaxMemberships = 20;

    /// <summary>
    /// Allows sending to the IPv4 limited broadcast 255.255.255.255 and, in TAP mode, the
    /// subnet broadcast of <see cref="NetStackOptions.PrefixLength"/> (as
    /// <see cref="Socket.EnableBroadcast"/>, Linux's SO_BROADCAST). Off by default: such a send
    /// fails with <see cref="SocketException"/> <see cref="SocketError.AccessDenied"/>, as Linux
    /// refuses it with EACCES. Receiving broadcasts needs nothing: a socket bound to the port on
    /// any address gets them.
    /// </summary>
    public bool EnableBroadcast { get; set; }

    /// <summary>
    /// The TTL of IPv4 multicast datagrams this socket sends (0..255; default 1, the link only,
    /// as Linux's IP_MULTICAST_TTL and RFC 1112 §6.1). Unicast datagrams keep the stack's TTL.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is outside 0..255.</exception>
    public int MulticastTimeToLive
    {
        get => Volatile.Read(ref _multicastTtl);
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(value, 255);
            Volatile.Write(ref _multicastTtl, value);
        }
    }

    /// <summary>
    /// The hop limit of IPv6 multicast datagrams this socket sends (0..255; default 1, as
    /// Linux's IPV6_MULTICAST_HOPS).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is outside 0..255.</exception>
    public int MulticastHopLimit
    {
        get => Volatile.Read(ref _multicastHopLimit);
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(value, 255);
            Volatile.Write(ref _multicastHopLimit, value);
        }
    }

    /// <summary>
    /// Whether this socket's multicast datagrams also come back to the stack's own sockets
    /// joined to the group (IP_MULTICAST_LOOP; true by default, as on Linux), through the
    /// stack's loopback: a copy of each datagram is read back besides the one the device sends.
    /// </summary>
    public bool MulticastLoopback
    {
        get => Volatile.Read(ref _multicastLoopback);
        set => Volatile.Write(ref _multicastLoopback, value);
    }

    private bool _multicastLoopback = true;

    /// <summary>
    /// Joins <paramref name="multicastAddress"/> (as <see cref="UdpClient.JoinMulticastGroup(IPAddress)"/>):
    /// the stack reports its membership (IGMPv3 / MLDv2, or the older version a querier on the
    /// link asks for) and takes datagrams to the group, which go to the socket bound to their
    /// port on any address. As Linux with IP_MULTICAST_ALL (its default), that socket receives
    /// them whichever socket of the stack joined the group. Memberships are counted per group
    /// across sockets: the last socket to leave (or be disposed) ends it.
    /// </summary>
    /// <param name="multicastAddress">An IPv4 (224.0.0.0/4) or IPv6 (ff00::/8) multicast address of a family the socket is bound to.</param>
    /// <exception cref="ArgumentException">The socket is not bound to the address's family.</exception>
    /// <exception cref="SocketException">InvalidArgument for an address that is not multicast (Linux's EINVAL); AddressAlreadyInUse when this socket joined it already (EADDRINUSE); NoBufferSpaceAvailable beyond <see cref="MaxMemberships"/> groups (ENOBUFS).</exception>
    /// <exception cref="ObjectDisposedException">The socket or the stack is disposed.</exception>
    public void JoinMulticastGroup(IPAddress multicastAddress)
    {
        var group = NetworkStack.CheckGroup(multicastAddress, BindsIpv4, BindsIpv6);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_groups.Contains(group))
                throw new SocketException((int)SocketError.AddressAlreadyInUse);
            if (_groups.Count >= MaxMemberships)
                throw new SocketException((int)SocketError.NoBufferSpaceAvailable);
            _groups.Add(group);
        }
        try
        {
            _stack.JoinGroup(group);
        }
        catch
        {
            lock (_gate)
                _groups.Remove(group);
            throw;
        }
    }

    /// <summary>
    /// Joins <paramref name="multicastAddress"/> on the interface of <paramref name="localAddress"/>
    /// (as <see cref="UdpClient.JoinMulticastGroup(IPAddress, IPAddress)"/>): the stack has one
    /// interface, so this is <see cref="JoinMulticastGroup(IPAddress)"/> for a local address that
    /// is the stack's own or unspecified.
    /// </summary>
    /// <param name="multicastAddress">The group.</param>
    /// <param name="localAddress">The stack's address of the group's family, or <see cref="IPAddress.Any"/> / <see cref="IPAddress.IPv6Any"/>.</param>
    /// <exception cref="ArgumentException">The socket is not bound to the group's family.</exception>
    /// <exception cref="SocketException">AddressNotAvailable for a local address that is not the stack's (Linux's EADDRNOTAVAIL); as <see cref="JoinMulticastGroup(IPAddress)"/>.</exception>
    /// <exception cref="ObjectDisposedException">The socket or the stack is disposed.</exception>
    public void JoinMulticastGroup(IPAddress multicastAddress, IPAddress localAddress)
    {
        ArgumentNullException.ThrowIfNull(localAddress);
        if (!localAddress.Equals(IPAddress.Any) && !localAddress.Equals(IPAddress.IPv6Any)
            && !localAddress.Equals(_stack.Options.Address) && !localAddress.Equals(_stack.Options.Address6))
            throw new SocketException((int)SocketError.AddressNotAvailable);
        JoinMulticastGroup(multicastAddress);
    }

    /// <summary>
    /// Leaves <paramref name="multicastAddress"/> (as <see cref="UdpClient.DropMulticastGroup(IPAddress)"/>);
    /// the stack leaves the group (a leave or state-change report) when no other socket of it
    /// is joined.
    /// </summary>
    /// <param name="multicastAddress">A group this socket joined.</param>
    /// <exception cref="ArgumentException">The socket is not bound to the address's family.</exception>
    /// <exception cref="SocketException">InvalidArgument for an address that is not multicast; AddressNotAvailable when this socket has not joined it (Linux's EADDRNOTAVAIL).</exception>
    /// <exception cref="ObjectDisposedException">The socket is disposed.</exception>
    public void LeaveMulticastGroup(IPAddress multicastAddress)
    {
        var group = NetworkStack.CheckGroup(multicastAddress, BindsIpv4, BindsIpv6);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_groups.Remove(group))
                throw new SocketException((int)SocketError.AddressNotAvailable);
        }
        _stack.LeaveGroup(group);
    }

    /// <summary>The groups this socket has joined (a snapshot).</summary>
    public IReadOnlyList<IPAddress> MulticastGroups
    {
        get
        {
            lock (_gate)
                return [.. _groups.Select(g => g.ToIPAddress())];
        }
    }

    /// <summary>The most datagrams one segmented send may make (<see cref="SendToAsync(ReadOnlyMemory{byte}, IPEndPoint, int, CancellationToken)"/>).</summary>
    public const int MaxSegments = 64;

    // segmentSize for a segmented send: each datagram within the link MTU, at most MaxSegments.
    private void CheckSegments(ReadOnlyMemory<byte> data, int segmentSize, bool ipv6)
    {
        int largest = _stack.LinkMtu - (ipv6 ? 40 : 20) - 8;
        if (segmentSize < 1 || segmentSize > largest)
            throw new ArgumentOutOfRangeException(nameof(segmentSize), segmentSize,
                $"A segment size must be 1..{largest} bytes: each datagram must fit the link MTU of {_stack.LinkMtu} bytes.");
        if ((data.Length + segmentSize - 1) / segmentSize > MaxSegments)
            throw new ArgumentException(
                $"{data.Length} bytes in segments of {segmentSize} make more than {MaxSegments} datagrams.", nameof(data));
    }

    /// <summary>
    /// Receives one datagram into <paramref name="buffer"/>. A datagram longer than the buffer fills
    /// it and the rest is lost: the call returns the buffer's length, as a <see cref="Socket"/> on
    /// Linux does (no <see cref="SocketError.MessageSize"/>; docs/conformance.md).
    /// </summary>
    /// <param name="buffer">Where the payload goes.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>The byte count and the sender.</returns>
    /// <exception cref="SocketException">OperationAborted when the socket is disposed during the wait; ConnectionRefused.</exception>
    /// <exception cref="ObjectDisposedException">The socket is disposed.</exception>
    public ValueTask<SocketReceiveFromResult> ReceiveFromAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        ReceiveFromAsync(buffer, null, cancellationToken);

    /// <summary>
    /// The index <see cref="IPPacketInformation.Interface"/> reports: the stack's one interface
    /// (its own numbering, not the kernel's index of the TUN or TAP device).
    /// </summary>
    public const int StackInterfaceIndex = 1;

    private static readonly System.Reflection.ConstructorInfo? PacketInformationConstructor =
        typeof(IPPacketInformation).GetConstructor(
            System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance,
            [typeof(IPAddress), typeof(int)]);

    // IPPacketInformation has no public constructor (Socket fills it from IP_PKTINFO); its
    // internal one is the only way to make one with the same meaning.
    private static IPPacketInformation PacketInformation(IPAddress address) =>
        PacketInformationConstructor is { } constructor
            ? (IPPacketInformation)constructor.Invoke([address, StackInterfaceIndex])
            : throw new PlatformNotSupportedException("IPPacketInformation cannot be made on this runtime.");

    /// <summary>
    /// Receives one datagram, as <see cref="ReceiveFromAsync(Memory{byte}, CancellationToken)"/>, and
    /// says which of the stack's addresses it was sent to (<see cref="Socket.ReceiveMessageFromAsync(Memory{byte}, EndPoint, CancellationToken)"/>
    /// with IP_PKTINFO): <see cref="IPPacketInformation.Address"/> is the datagram's destination
    /// (one of the stack's addresses, a broadcast or a multicast group; IPv4 senders on a dual-mode
    /// socket as IPv4-mapped IPv6, as Socket), <see cref="IPPacketInformation.Interface"/> is
    /// <see cref="StackInterfaceIndex"/>. <see cref="SocketReceiveMessageFromResult.SocketFlags"/>
    /// is None (a datagram longer than the buffer throws MessageSize instead of reporting Truncated).
    /// </summary>
    /// <param name="buffer">Where the payload goes.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>The byte count, the sender and the packet information.</returns>
    /// <exception cref="SocketException">As <see cref="ReceiveFromAsync(Memory{byte}, CancellationToken)"/>.</exception>
    /// <exception cref="ObjectDisposedException">The socket is disposed.</exception>
    public async ValueTask<SocketReceiveMessageFromResult> ReceiveMessageFromAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        var destination = new DestinationHolder();
        var result = await ReceiveFromAsync(buffer, destination, cancellationToken).ConfigureAwait(false);
        var address = destination.Address.ToIPAddress();
        if (!destination.Address.IsIpv6 && BindsIpv6)
            address = address.MapToIPv6();
        return new SocketReceiveMessageFromResult
        {
            ReceivedBytes = result.ReceivedBytes,
            RemoteEndPoint = result.RemoteEndPoint,
            SocketFlags = SocketFlags.None,
            PacketInformation = PacketInformation(address),
        };
    }

    private ValueTask<SocketReceiveFromResult> ReceiveFromAsync(Memory<byte> buffer, DestinationHolder? destination, CancellationToken cancellationToken)
    {
        if (cancellationToken.IsCancellationRequested)
            return ValueTask.FromCanceled<SocketReceiveFromResult>(cancellationToken);
        PendingReceive pending;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (TakePendingErrorLocked() is { } error)
                return ValueTask.FromException<SocketReceiveFromResult>(error);
            if (TryDequeueLocked(buffer.Span, out int copied, out var source, out var to))
            {
                if (destination is not null)
                    destination.Address = to;
                return ValueTask.FromResult(new SocketReceiveFromResult { ReceivedBytes = copied, RemoteEndPoint = source });
            }
            pending = Interlocked.Exchange(ref _spareReceive, null) ?? new PendingReceive(this);
            pending.Buffer = buffer;
            pending.Destination = destination;
            pending.Token = cancellationToken;
            _receivers.AddLast(pending.Node);
            // Registered under the lock: a token cancelled meanwhile runs the callback here, which
            // takes the lock again (Monitor is reentrant) and finds the receive still listed.
            if (cancellationToken.CanBeCanceled)
                pending.Registration = cancellationToken.UnsafeRegister(PendingReceive.Cancel, pending);
        }
        return pending.Task;
    }

    // Under _gate: the error an ICMP report left for the next call (reported once), or null.
    private SocketException? TakePendingErrorLocked()
    {
        if (_pendingError == SocketError.Success)
            return null;
        var error = _pendingError;
        _pendingError = SocketError.Success;
        return new SocketException((int)error);
    }

    // Under _gate: the oldest queued datagram into `buffer` (truncated to it), its pooled copy
    // returned; false when none waits.
    private bool TryDequeueLocked(Span<byte> buffer, out int copied, out IPEndPoint source, out IpAddr destination)
    {
        if (!_queue.TryDequeue(out var queued))
        {
            (copied, source, destination) = (0, null!, default);
            return false;
        }
        _queuedBytes -= queued.Length + DatagramOverhead;
        copied = Math.Min(queued.Length, buffer.Length);
        queued.Buffer.AsSpan(0, copied).CopyTo(buffer);
        ArrayPool<byte>.Shared.Return(queued.Buffer);
        (source, destination) = (queued.Source, queued.Destination);
        return true;
    }

    /// <summary>Called by the engine loop with a datagram for this socket; false when it was dropped.</summary>
    internal DeliveryResult Deliver(ReadOnlySpan<byte> payload, IpAddr source, ushort sourcePort, IpAddr destination)
    {
        PendingReceive? receiver = null;
        IPEndPoint endPoint;
        lock (_gate)
        {
            if (_disposed)
                return DeliveryResult.Closed;
            if (_remote is not null && (!IpAddrs.Same(_remoteAddress, source) || _remotePort != sourcePort))
                return DeliveryResult.NotFromConnectedPeer;
            endPoint = SourceEndPoint(source, sourcePort);
            while (_receivers.First is { } first)
            {
                _receivers.RemoveFirst();
                if (!first.Value.Completed)
                {
                    receiver = first.Value;
                    break;
                }
            }
            if (receiver is null)
            {
                int charge = payload.Length + DatagramOverhead;
                if (_queuedBytes + charge > _capacity)
                    return DeliveryResult.QueueFull;
                var copy = ArrayPool<byte>.Shared.Rent(Math.Max(1, payload.Length));
                payload.CopyTo(copy);
                _queue.Enqueue(new QueuedDatagram(copy, payload.Length, endPoint, destination));
                _queuedBytes += charge;
                WakeBlockedLocked(all: false);
                return DeliveryResult.Queued;
            }
            if (receiver.Destination is { } holder)
                holder.Address = destination;
            // Copy while holding the lock, so a cancellation cannot hand the buffer back meanwhile.
            int copied = Math.Min(payload.Length, receiver.Buffer.Length);
            payload[..copied].CopyTo(receiver.Buffer.Span);
            // (TrySetResult unregisters, not disposes: Dispose would wait for a running callback,
            // which waits for this lock.)
            receiver.TrySetResult(new SocketReceiveFromResult { ReceivedBytes = copied, RemoteEndPoint = endPoint });
        }
        return DeliveryResult.Delivered;
    }

    private IPEndPoint SourceEndPoint(IpAddr source, ushort port)
    {
        if (_lastSource is not null && _lastSourcePort == port && IpAddrs.Same(_lastSourceAddress, source))
            return _lastSource;
        var address = source.ToIPAddress();
        // A dual-mode (IPv6Any) socket reports IPv4 senders as IPv4-mapped addresses, as Socket does.
        if (!source.IsIpv6 && BindsIpv6)
            address = address.MapToIPv6();
        _lastSource = new IPEndPoint(address, port);
        _lastSourceAddress = source;
        _lastSourcePort = port;
        return _lastSource;
    }

    /// <summary>Called by the engine loop with an ICMP error about a datagram this socket sent.</summary>
    internal bool ReportError(IcmpErrorKind kind, IpAddr destination, ushort destinationPort)
    {
        lock (_gate)
        {
            // Linux reports ICMP errors only to connected UDP sockets (without IP_RECVERR), and only
            // those from the connected remote: others may be forged or stale.
            if (_disposed || _remote is null || !IpAddrs.Same(_remoteAddress, destination) || _remotePort != destinationPort)
                return false;
            if (kind != IcmpErrorKind.PortUnreachable)
                return false;
            var error = SocketError.ConnectionRefused;
            while (_receivers.First is { } first)
            {
                _receivers.RemoveFirst();
                if (first.Value.TrySetException(new SocketException((int)error)))
                    return true;
            }
            _pendingError = error;
            WakeBlockedLocked(all: false);
            return true;
        }
    }

    private IpAddr CheckRemote(IPEndPoint remote)
    {
        ArgumentNullException.ThrowIfNull(remote);
        if (remote.Port is <= 0 or > 65535)
            throw new ArgumentException($"Port {remote.Port} is not a destination port (1..65535).", nameof(remote));
        var address = remote.Address;
        if (address.IsIPv4MappedToIPv6)
            address = address.MapToIPv4();
        if (address.AddressFamily == AddressFamily.InterNetwork && !BindsIpv4)
            throw new ArgumentException($"This socket is bound to {LocalEndPoint} and cannot reach the IPv4 address {address}.", nameof(remote));
        if (address.AddressFamily == AddressFamily.InterNetworkV6 && !BindsIpv6)
            throw new ArgumentException($"This socket is bound to {LocalEndPoint} and cannot reach the IPv6 address {address}.", nameof(remote));
        if (address.Equals(IPAddress.Any) || address.Equals(IPAddress.IPv6Any))
            throw new ArgumentException("The destination address is unspecified.", nameof(remote));
        return IpAddr.OfIPAddress(address);
    }

    /// <summary>Closes the socket: pending receives fail with <see cref="SocketError.OperationAborted"/>, the port is freed.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed)
                return;
            _disposed = true;
            // The waiting receives fail (their continuations run on the thread pool, not here).
            while (_receivers.First is { } first)
            {
                _receivers.RemoveFirst();
                first.Value.TrySetException(new SocketException((int)SocketError.OperationAborted));
            }
            while (_queue.TryDequeue(out var queued))
                ArrayPool<byte>.Shared.Return(queued.Buffer);
            _queuedBytes = 0;
            // The blocked receives fail too.
            WakeBlockedLocked(all: true);
        }
        // A closed socket leaves its groups (as Linux's ip_mc_drop_socket).
        IpAddr[] groups;
        lock (_gate)
        {
            groups = [.. _groups];
            _groups.Clear();
        }
        foreach (var group in groups)
            _stack.LeaveGroup(group);
        _stack.Unbind(this);
    }

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>The local endpoint, and the remote when connected.</summary>
    public override string ToString() => _remote is null ? $"udp {LocalEndPoint}" : $"udp {LocalEndPoint} -> {_remote}";
}

/// <summary>What became of a datagram handed to a socket.</summary>
internal enum DeliveryResult
{
    Delivered,
    Queued,
    QueueFull,
    NotFromConnectedPeer,
    Closed,
}

/// Comparisons of <see cref="IpAddr"/> for the hot paths: <c>a.Equals(b)</c> from C# takes the
/// object overload and boxes both (the F# struct's typed Equals is an explicit interface
/// implementation); the default comparer calls IEquatable without boxing.
internal static class IpAddrs
{
    public static bool Same(IpAddr a, IpAddr b) => EqualityComparer<IpAddr>.Default.Equals(a, b);
}
