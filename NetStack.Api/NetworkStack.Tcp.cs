using NetStack.Engine;
using System.Buffers.Binary;
using System.Net;
using System.Net.Http;
using System.Net.Sockets;
using System.Security.Cryptography;
using Microsoft.FSharp.Core;
using NetStack.Core.Stack;
using NetStack.Core.Tcp;
using NetStack.Core.Wire;
using NetStack.Diagnostics;
using NetStack.Device;

namespace NetStack;

// TCP in the engine: the connection table, listeners, timers and the glue between the pure
// connection engine (NetStack.Core.Tcp.Connection) and the sockets' byte buffers.
public sealed partial class NetworkStack
{
    // The socket options of connections no listener object owns (loop only; shared, never
    // changed in place: TcpConnection copies it on its first setter).
    private TcpSocketState? _defaultSocketState;

    // Loop-only: the core's endpoint table (connections by 4-tuple, listeners, ports, timers),
    // the output every call of it fills, and the TSO run being gathered.
    private TcpEndpointTable _tcpTable = null!;
    private readonly TcpEndpointOutput _tcpOutput = new();
    private bool _tcpOutputInUse;
    private readonly SegmentBatch _batch = new();

    private static IsnKey RandomKey() => new(
        BinaryPrimitives.ReadUInt64LittleEndian(RandomNumberGenerator.GetBytes(8)),
        BinaryPrimitives.ReadUInt64LittleEndian(RandomNumberGenerator.GetBytes(8)));

    private void InitTcp(int mtu)
    {
        static long Micros(TimeSpan t) => (long)t.TotalMicroseconds;
        _tcpTable = new TcpEndpointTable(new TcpEndpointSettings
        {
            LinkMtu = mtu,
            ReceiveBufferBytes = Options.TcpReceiveBufferBytes,
            ReceiveBufferMaxBytes = Options.TcpReceiveBufferMaxBytes,
            TimeWait = Micros(Options.TcpTimeWait),
            CongestionControl = Options.TcpCongestionControl == TcpCongestionControl.Reno ? CongestionControl.Reno : CongestionControl.Cubic,
            KeepAliveIdle = Options.TcpKeepAlive is { } idle ? Micros(idle) : null,
            KeepAliveInterval = Micros(Options.TcpKeepAliveInterval),
            KeepAliveCount = Options.TcpKeepAliveCount,
            InvalidAckInterval = Micros(Options.TcpInvalidAckInterval),
            UserTimeout = Options.TcpUserTimeout is { } userTimeout ? Micros(userTimeout) : null,
            MaxConnections = Options.TcpMaxConnections,
            SynCookies = Options.TcpSynCookies,
            // RFC 6528: the ISN secret, and RFC 4987 §3.6's SYN-cookie key, drawn once per
            // stack from a cryptographic source.
            IsnKey = RandomKey(),
            CookieKey = RandomKey(),
            ForwardDecisionTimeout = Micros(Options.ForwardTcpDecisionTimeout),
            // Several queues: this engine's residue class of ephemeral ports (see OwnerOf).
            EphemeralShards = _group?.Count ?? 1,
            EphemeralShard = _queue,
        });
    }

    // 65535·2^14: the largest window a scaled 16-bit field can offer (RFC 7323 §2.3).
    private const int MaxScaledWindow = 65535 << 14;

    private static void ValidateTcp(NetStackOptions options)
    {
        if (options.TcpSendBufferBytes < 1)
            throw new ArgumentException("TcpSendBufferBytes must be positive.", nameof(options));
        if (options.TcpSendBufferMaxBytes < 1)
            throw new ArgumentException("TcpSendBufferMaxBytes must be positive.", nameof(options));
        if (options.TcpReceiveBufferBytes < 1)
            throw new ArgumentException("TcpReceiveBufferBytes must be positive.", nameof(options));
        if (options.TcpReceiveBufferBytes > MaxScaledWindow)
            throw new ArgumentException($"TcpReceiveBufferBytes exceeds {MaxScaledWindow}, the largest scaled window (RFC 7323 §2.3).", nameof(options));
        if (options.TcpReceiveBufferMaxBytes < 1 || options.TcpReceiveBufferMaxBytes > MaxScaledWindow)
            throw new ArgumentException($"TcpReceiveBufferMaxBytes must lie between 1 and {MaxScaledWindow}.", nameof(options));
        if (options.TcpTimeWait < TimeSpan.Zero)
            throw new ArgumentException("TcpTimeWait cannot be negative.", nameof(options));
        if (options.TcpLinger < TimeSpan.Zero)
            throw new ArgumentException("TcpLinger cannot be negative.", nameof(options));
        if (!Enum.IsDefined(options.TcpCongestionControl))
            throw new ArgumentException("TcpCongestionControl is not a known algorithm.", nameof(options));
        if (options.TcpMaxHalfOpen < 1)
            throw new ArgumentException("TcpMaxHalfOpen must be positive.", nameof(options));
        if (options.TcpMaxConnections < 1)
            throw new ArgumentException("TcpMaxConnections must be positive.", nameof(options));
        if (options.TcpKeepAlive is { } keepAlive && keepAlive <= TimeSpan.Zero)
            throw new ArgumentException("TcpKeepAlive must be positive (null for none).", nameof(options));
        if (options.TcpKeepAliveInterval <= TimeSpan.Zero || options.TcpKeepAliveCount < 1)
            throw new ArgumentException("TcpKeepAliveInterval and TcpKeepAliveCount must be positive.", nameof(options));
        if (options.TcpInvalidAckInterval < TimeSpan.Zero)
            throw new ArgumentException("TcpInvalidAckInterval cannot be negative.", nameof(options));
        if (options.TcpUserTimeout is { } userTimeout && userTimeout <= TimeSpan.Zero)
            throw new ArgumentException("TcpUserTimeout must be positive (null for none).", nameof(options));
    }

    // ------------------------------------------------------------------------------------------
    // Listening
    // ------------------------------------------------------------------------------------------

    /// <summary>
    /// Listens on <paramref name="port"/> on every address of the stack (IPv4 and IPv6 when it has
    /// both). Port 0 picks a free port in 49152–65535.
    /// </summary>
    /// <param name="port">0..65535.</param>
    /// <param name="backlog">Established connections waiting for <see cref="TcpConnectionListener.AcceptAsync"/> at most (positive).</param>
    /// <exception cref="SocketException">AddressAlreadyInUse when the port is taken.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The port is outside 0..65535, or the backlog is not positive.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public TcpConnectionListener ListenTcp(int port, int backlog = 128)
    {
        if (port is < IPEndPoint.MinPort or > IPEndPoint.MaxPort)
            throw new ArgumentOutOfRangeException(nameof(port), port, $"Port {port} is outside 0..65535 (0 picks a free port).");
        return ListenTcp(new IPEndPoint(HasIpv6 ? IPAddress.IPv6Any : IPAddress.Any, port), backlog);
    }

    /// <summary>
    /// Listens on <paramref name="localEndPoint"/>: <see cref="IPAddress.Any"/> or the stack's IPv4
    /// address (IPv4 only), the stack's IPv6 address (IPv6 only), or <see cref="IPAddress.IPv6Any"/>
    /// (both families). Port 0 picks a free port in 49152–65535.
    /// </summary>
    /// <param name="localEndPoint">Address and port.</param>
    /// <param name="backlog">Established connections waiting for <see cref="TcpConnectionListener.AcceptAsync"/> at most (positive).</param>
    /// <exception cref="SocketException">AddressAlreadyInUse when the port is taken; AddressNotAvailable for an address that is not the stack's.</exception>
    /// <exception cref="ArgumentException">The family has no address on this stack, or the backlog is not positive.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public TcpConnectionListener ListenTcp(IPEndPoint localEndPoint, int backlog = 128) =>
        ListenTcp(localEndPoint, null, backlog);

    /// <summary>
    /// Listens on <paramref name="localEndPoint"/> (as <see cref="ListenTcp(IPEndPoint, int)"/>) with
    /// socket options the accepted connections inherit (<see cref="TcpSocketOptions"/>; its
    /// LocalEndPoint is ignored). With <see cref="TcpSocketOptions.ReuseAddress"/> (the default,
    /// as .NET's Socket.Bind on Linux) the port may be one that connections with it too (TIME-WAIT
    /// ones included) still use; without it that is AddressAlreadyInUse, as a kernel socket's bind.
    /// </summary>
    /// <param name="localEndPoint">Address and port.</param>
    /// <param name="options">The options, or null for the stack's defaults.</param>
    /// <param name="backlog">Established connections waiting for <see cref="TcpConnectionListener.AcceptAsync"/> at most (positive).</param>
    /// <exception cref="SocketException">AddressAlreadyInUse when the port is taken; AddressNotAvailable for an address that is not the stack's.</exception>
    /// <exception cref="ArgumentException">The family has no address on this stack, the backlog is not positive, or an option is out of range.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public TcpConnectionListener ListenTcp(IPEndPoint localEndPoint, TcpSocketOptions? options, int backlog = 128)
    {
        ArgumentNullException.ThrowIfNull(localEndPoint);
        var socket = TcpSocketState.From(Options, options);
        // .NET's Socket.Bind sets SO_REUSEADDR on Linux: a listener has it unless told otherwise.
        bool reuse = options?.ReuseAddress ?? true;
        ArgumentOutOfRangeException.ThrowIfLessThan(backlog, 1);
        var (v4, v6) = Families(localEndPoint);
        bool any = localEndPoint.Address.Equals(IPAddress.Any) || localEndPoint.Address.Equals(IPAddress.IPv6Any);
        var address = IpAddr.OfIPAddress(localEndPoint.Address);
        // Several queues: the port is marked as listened before the first SYN can arrive (so
        // each queue's engine keeps the SYNs it reads), and every engine listens.
        _group?.Listen(localEndPoint.Port);
        TcpListenEndpoint? Listen(NetworkStack engine, int port)
        {
            var endpoint = any
                ? engine._tcpTable.ListenAll(v4, v6, port, backlog, Options.TcpMaxHalfOpen, Random.Shared.Next(), reuse)
                : engine._tcpTable.ListenOn(address, port, backlog, Options.TcpMaxHalfOpen, Random.Shared.Next(), reuse);
            if (endpoint is not null && options is not null)
                endpoint.Socket = FSharpValueOption<TcpSocketSettings>.NewValueSome(socket.Core);
            return endpoint;
        }
        TcpConnectionListener listener;
        try
        {
            listener = OnLoop(() =>
            {
                var endpoint = Listen(this, localEndPoint.Port) ?? throw new SocketException((int)SocketError.AddressAlreadyInUse);
                // Port 0: marked here, before this loop reads the next packet.
                if (localEndPoint.Port == 0)
                    _group?.Listen(endpoint.Port);
                var l = new TcpConnectionListener(this, new IPEndPoint(localEndPoint.Address, endpoint.Port), endpoint, socket);
                endpoint.Owner = l;
                return l;
            });
        }
        catch
        {
            _group?.Unlisten(localEndPoint.Port);
            throw;
        }
        foreach (var engine in OtherEngines())
        {
            int port = listener.LocalEndPoint.Port;
            var endpoint = engine.OnLoop(() =>
            {
                var e = Listen(engine, port);
                if (e is not null)
                    e.Owner = listener;
                return e;
            });
            if (endpoint is null)
            {
                listener.Dispose();
                throw new SocketException((int)SocketError.AddressAlreadyInUse);
            }
            listener.AddEngine(engine, endpoint);
        }
        _log.TcpListening(listener.LocalEndPoint, backlog);
        return listener;
    }

    // Runs `run` on the loop and returns its result (or throws its exception): at once on the
    // loop thread, else posted and waited for, as a socket call waits for the kernel.
    private T OnLoop<T>(Func<T> run)
    {
        if (Thread.CurrentThread == _thread)
            return run();
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        Post(() =>
        {
            try
            {
                done.SetResult(run());
            }
            catch (Exception e)
            {
                done.SetException(e);
            }
        }, e => done.TrySetException(e));
        return done.Task.GetAwaiter().GetResult();
    }

    // The families a local endpoint's address covers (BindUdp and ListenTcp): IPv6Any is both,
    // Any is IPv4, a stack address its own family; anything else is AddressNotAvailable.
    private (bool V4, bool V6) Families(IPEndPoint localEndPoint)
    {
        var address = localEndPoint.Address;
        bool v4, v6;
        if (address.Equals(IPAddress.IPv6Any))
            (v4, v6) = (_address4 is not null, HasIpv6);
        else if (address.Equals(IPAddress.Any))
            (v4, v6) = (true, false);
        else if (address.AddressFamily == AddressFamily.InterNetwork)
        {
            if (!address.Equals(Options.Address) && !IPAddress.IsLoopback(address)
                && !(_address4 is { } leased && address.Equals(leased.ToIPAddress())))
                throw new SocketException((int)SocketError.AddressNotAvailable);
            (v4, v6) = (true, false);
        }
        else
        {
            if (!IsOwnIpv6(address) && !IPAddress.IsLoopback(address))
                throw new SocketException((int)SocketError.AddressNotAvailable);
            (v4, v6) = (false, true);
        }
        // With DHCP, IPv4 Any binds before a lease exists (as the kernel's does without an address).
        if ((v4 && _address4 is null && !(Options.Dhcp && address.Equals(IPAddress.Any))) || (!v4 && !v6))
            throw new ArgumentException($"The stack has no IPv4 address for {localEndPoint}.", nameof(localEndPoint));
        if (v6 && !HasIpv6)
            throw new ArgumentException($"The stack has no IPv6 address for {localEndPoint}.", nameof(localEndPoint));
        return (v4, v6);
    }

    // A socket option of the listener changed: its SYN,ACKs and new connections take it.
    internal void TcpConfigureListener(TcpConnectionListener listener, TcpSocketSettings settings)
    {
        OnLoop(() => listener.Endpoint.Socket = FSharpValueOption<TcpSocketSettings>.NewValueSome(settings));
        foreach (var (engine, endpoint) in listener.Engines)
            engine.OnLoop(() => endpoint.Socket = FSharpValueOption<TcpSocketSettings>.NewValueSome(settings));
    }

    internal void Unlisten(TcpConnectionListener listener)
    {
        Unlisten(listener.Endpoint);
        foreach (var (engine, endpoint) in listener.Engines)
            engine.Unlisten(endpoint);
        _group?.Unlisten(listener.LocalEndPoint.Port);
    }

    private void Unlisten(TcpListenEndpoint endpoint)
    {
        try
        {
            OnLoop(() =>
            {
                _tcpTable.Unlisten(endpoint);
                return true;
            });
        }
        catch (ObjectDisposedException)
        {
            // The stack is gone, and its table with it.
        }
    }

    // ------------------------------------------------------------------------------------------
    // Connecting
    // ------------------------------------------------------------------------------------------

    /// <summary>
    /// Opens a TCP connection to <paramref name="remote"/> from a random ephemeral port of the
    /// stack's address of the same family, and completes when the handshake does.
    /// </summary>
    /// <param name="remote">The peer (port 1..65535; IPv4-mapped IPv6 addresses count as IPv4).</param>
    /// <param name="cancellationToken">Cancels the attempt (the half-open connection is reset).</param>
    /// <returns>The established connection.</returns>
    /// <exception cref="SocketException">ConnectionRefused when the peer answers with a RST; TimedOut when the SYN retransmissions run out; AddressNotAvailable when no ephemeral port is free (as a kernel socket's connect); NetworkUnreachable for an IPv4 destination while <see cref="NetStackOptions.Dhcp"/> has no lease bound.</exception>
    /// <exception cref="ArgumentException">The endpoint is unusable or the stack has no address of its family.</exception>
    /// <exception cref="OperationCanceledException">The token was canceled.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public ValueTask<TcpConnection> ConnectTcpAsync(IPEndPoint remote, CancellationToken cancellationToken = default) =>
        ConnectTcpAsync(remote, (TcpSocketOptions?)null, cancellationToken);

    /// <summary>
    /// Opens a TCP connection to <paramref name="address"/>:<paramref name="port"/> (as
    /// <see cref="ConnectTcpAsync(IPEndPoint, CancellationToken)"/>; <see cref="Socket.ConnectAsync(IPAddress, int, CancellationToken)"/>'s shape).
    /// </summary>
    /// <param name="address">The peer's address.</param>
    /// <param name="port">The peer's port, 1..65535.</param>
    /// <param name="cancellationToken">Cancels the attempt.</param>
    /// <returns>The established connection.</returns>
    /// <exception cref="ArgumentNullException">The address is null.</exception>
    /// <exception cref="ArgumentException">The port is outside 1..65535, or as <see cref="ConnectTcpAsync(IPEndPoint, CancellationToken)"/>.</exception>
    /// <exception cref="SocketException">As <see cref="ConnectTcpAsync(IPEndPoint, CancellationToken)"/>.</exception>
    public ValueTask<TcpConnection> ConnectTcpAsync(IPAddress address, int port, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(address);
        if (port is <= 0 or > 65535)
            throw new ArgumentOutOfRangeException(nameof(port), port, "A destination port lies in 1..65535.");
        return ConnectTcpAsync(new IPEndPoint(address, port), (TcpSocketOptions?)null, cancellationToken);
    }

    /// <summary>
    /// Opens a TCP connection to <paramref name="host"/>:<paramref name="port"/>: an IP literal
    /// directly, a host name through the stack's resolver with Happy Eyeballs (as
    /// <see cref="ConnectTcpAsync(DnsEndPoint, CancellationToken)"/>; <see cref="Socket.ConnectAsync(string, int, CancellationToken)"/>'s shape).
    /// </summary>
    /// <param name="host">A host name or an IP literal.</param>
    /// <param name="port">The peer's port, 1..65535.</param>
    /// <param name="cancellationToken">Cancels the attempt.</param>
    /// <returns>The established connection.</returns>
    /// <exception cref="ArgumentNullException">The host is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The port is outside 1..65535.</exception>
    /// <exception cref="SocketException">As <see cref="ConnectTcpAsync(DnsEndPoint, CancellationToken)"/>.</exception>
    public ValueTask<TcpConnection> ConnectTcpAsync(string host, int port, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(host);
        if (port is <= 0 or > 65535)
            throw new ArgumentOutOfRangeException(nameof(port), port, "A destination port lies in 1..65535.");
        return ConnectTcpAsync(new DnsEndPoint(host, port), cancellationToken);
    }

    /// <summary>
    /// Opens a TCP connection to <paramref name="remote"/> from <paramref name="localEndPoint"/>
    /// (bind before connect): the stack's address of the remote's family, or Any/IPv6Any for the
    /// stack's choice; a fixed port, or 0 for an ephemeral one. Null: as
    /// <see cref="ConnectTcpAsync(IPEndPoint, CancellationToken)"/>.
    /// </summary>
    /// <param name="remote">The peer.</param>
    /// <param name="localEndPoint">Our end, or null.</param>
    /// <param name="cancellationToken">Cancels the attempt.</param>
    /// <returns>The established connection.</returns>
    /// <exception cref="SocketException">As <see cref="ConnectTcpAsync(IPEndPoint, TcpSocketOptions, CancellationToken)"/>.</exception>
    /// <exception cref="ArgumentException">As <see cref="ConnectTcpAsync(IPEndPoint, TcpSocketOptions, CancellationToken)"/>.</exception>
    public ValueTask<TcpConnection> ConnectTcpAsync(IPEndPoint remote, IPEndPoint? localEndPoint, CancellationToken cancellationToken = default) =>
        ConnectTcpAsync(remote, localEndPoint is null ? null : new TcpSocketOptions { LocalEndPoint = localEndPoint }, cancellationToken);

    /// <summary>
    /// Opens a TCP connection to <paramref name="remote"/> with socket options set before the
    /// SYN leaves (<paramref name="options"/>: the local end to bind, ReuseAddress, TTL, type of
    /// service, Don't Fragment, buffer sizes, Nagle, linger, keep-alive; docs/api.md "Socket
    /// options"), and completes when the handshake does.
    /// </summary>
    /// <param name="remote">The peer (port 1..65535; IPv4-mapped IPv6 addresses count as IPv4).</param>
    /// <param name="options">The options, or null for the stack's defaults.</param>
    /// <param name="cancellationToken">Cancels the attempt (the half-open connection is reset).</param>
    /// <returns>The established connection.</returns>
    /// <exception cref="SocketException">ConnectionRefused when the peer answers with a RST; TimedOut when the SYN retransmissions run out; AddressAlreadyInUse when the fixed local port is taken (by a listener, or by a connection without <see cref="TcpSocketOptions.ReuseAddress"/>), AddressNotAvailable when the local address is not the stack's, the 4-tuple exists already, or no ephemeral port is free (as a kernel socket's bind and connect); NetworkUnreachable for an IPv4 destination while <see cref="NetStackOptions.Dhcp"/> has no lease bound.</exception>
    /// <exception cref="ArgumentException">The endpoint is unusable, the stack has no address of its family, the local end's family differs from the remote's, or an option is out of range (named by the parameter <c>options</c>).</exception>
    /// <exception cref="OperationCanceledException">The token was canceled.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public async ValueTask<TcpConnection> ConnectTcpAsync(IPEndPoint remote, TcpSocketOptions? options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(remote);
        if (remote.Port is <= 0 or > 65535)
            throw new ArgumentException($"Port {remote.Port} is not a destination port (1..65535).", nameof(remote));
        var address = remote.Address.IsIPv4MappedToIPv6 ? remote.Address.MapToIPv4() : remote.Address;
        if (address.Equals(IPAddress.Any) || address.Equals(IPAddress.IPv6Any))
            throw new ArgumentException("The destination address is unspecified.", nameof(remote));
        var socket = TcpSocketState.From(Options, options);
        var target = IpAddr.OfIPAddress(address);
        IpAddr? source;
        int localPort = 0;
        if (options?.LocalEndPoint is { } local)
        {
            if (local.Port is < 0 or > 65535)
                throw new ArgumentException($"Local port {local.Port} is outside 0..65535.", nameof(options));
            var bindAddress = local.Address.IsIPv4MappedToIPv6 ? local.Address.MapToIPv4() : local.Address;
            bool any = bindAddress.Equals(IPAddress.Any) || bindAddress.Equals(IPAddress.IPv6Any);
            if (!any && (bindAddress.AddressFamily == AddressFamily.InterNetworkV6) != target.IsIpv6)
                throw new ArgumentException($"The local end {local} is not of the remote's family ({address}).", nameof(options));
            if (!any)
                Families(new IPEndPoint(bindAddress, local.Port)); // AddressNotAvailable for an address not ours
            source = any ? SourceFor(target) : IpAddr.OfIPAddress(bindAddress);
            localPort = local.Port;
        }
        else
            source = SourceFor(target);
        if (source is null && !target.IsIpv6 && Options.Dhcp)
            throw new SocketException((int)SocketError.NetworkUnreachable);
        if (source is null)
            throw new ArgumentException($"The stack has no {(target.IsIpv6 ? "IPv6" : "IPv4")} address to connect to {address} from.", nameof(remote));
        cancellationToken.ThrowIfCancellationRequested();
        // Several queues: the engine that draws this connection's ephemeral port (or the one
        // whose residue class holds the fixed port) owns it.
        var engine = ConnectEngine(localPort);
        var connection = new TcpConnection(engine, socket, null, new IPEndPoint(address, remote.Port))
        {
            LocalAddress = source.Value,
            RemoteAddress = target,
            RemotePort = (ushort)remote.Port,
            RequestedLocalPort = localPort,
            // Without options the socket was never bound (an ephemeral port, as Socket.Connect
            // without Bind, which leaves SO_REUSEADDR off).
            ReuseAddress = options?.ReuseAddress ?? false,
        };
        engine.Post(() => engine.LoopConnect(connection), e => connection.Fail(SocketError.OperationAborted));
        try
        {
            await connection.Connected.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            connection.Abort();
            throw;
        }
        return connection;
    }

    private void LoopConnect(TcpConnection c)
    {
        long now = Now();
        var output = TcpOutput();
        var result = _tcpTable.Connect(output, now, _ip, c.LocalAddress, c.RequestedLocalPort, c.ReuseAddress, c.RemoteAddress, c.RemotePort,
            FSharpValueOption<TcpSocketSettings>.NewValueSome(c.SocketSettings), Random.Shared.Next(), out var endpoint);
        switch (result)
        {
            case TcpConnectResult.TooManyConnections:
                Count(output);
                c.Fail(SocketError.TooManyOpenSockets);
                return;
            case TcpConnectResult.NoEphemeralPort:
                // A kernel Socket's connect fails with EADDRNOTAVAIL then (bind to port 0 gives
                // EADDRINUSE, as ListenTcp(0) and BindUdp(0) do here): the caller's error.
                Count(output);
                c.Fail(SocketError.AddressNotAvailable);
                return;
            case TcpConnectResult.LocalPortInUse:
                // A kernel socket's bind: EADDRINUSE.
                Count(output);
                c.Fail(SocketError.AddressAlreadyInUse);
                return;
            case TcpConnectResult.TupleInUse:
                // A kernel socket's connect to a 4-tuple that exists: EADDRNOTAVAIL.
                Count(output);
                c.Fail(SocketError.AddressNotAvailable);
                return;
        }
        c.LocalPort = endpoint.Key.LocalPort;
        c.LocalEndPoint = new IPEndPoint(c.LocalAddress.ToIPAddress(), c.LocalPort);
        c.Endpoint = endpoint;
        endpoint.Owner = c;
        ExecuteOutput(output, default, now);
    }

    // ------------------------------------------------------------------------------------------
    // HttpClient
    // ------------------------------------------------------------------------------------------

    /// <summary>
    /// A <see cref="SocketsHttpHandler.ConnectCallback"/> that connects through this stack: an IP
    /// literal directly, a host name through the stack's resolver with Happy Eyeballs
    /// (<see cref="ConnectTcpAsync(DnsEndPoint, CancellationToken)"/>).
    /// </summary>
    /// <param name="context">The endpoint HttpClient wants.</param>
    /// <param name="cancellationToken">Cancels the connection attempt.</param>
    /// <returns>The connection as a stream.</returns>
    /// <exception cref="SocketException">The errors of <see cref="ConnectTcpAsync(DnsEndPoint, CancellationToken)"/> (HostNotFound, NoData, TryAgain, ConnectionRefused ...).</exception>
    private async ValueTask<Stream> ConnectForHttpAsync(SocketsHttpConnectionContext context, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(context);
        return await ConnectTcpAsync(context.DnsEndPoint, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>A <see cref="SocketsHttpHandler"/> whose connections go through this stack.</summary>
    public SocketsHttpHandler CreateHttpHandler() => new() { ConnectCallback = ConnectForHttpAsync };

    /// <summary>An <see cref="HttpClient"/> whose connections go through this stack (it owns its handler).</summary>
    public HttpClient CreateHttpClient() => new(CreateHttpHandler(), disposeHandler: true);

    // ------------------------------------------------------------------------------------------
    // User calls, posted to the loop
    // ------------------------------------------------------------------------------------------

    // The connection posts these at most once per batch of writes (reads) and the delegates are
    // made once per connection, so a stream of small calls allocates nothing.
    // (The lambdas live in their own methods: a lambda capturing a parameter makes its closure
    // object on every call of the method that declares it, used or not.)
    internal void TcpWriteHappened(TcpConnection c) => Post(c.SendCommand ?? MakeSendCommand(c), null);

    private Action MakeSendCommand(TcpConnection c) => c.SendCommand = () => LoopSend(c, Now());

    // Data the user wrote goes out before the window is updated, so that a reply written just
    // after the read (an echo, a request/response exchange) carries the ACK and the new window,
    // and the update finds nothing left worth a pure window update.
    private Action MakeWindowCommand(TcpConnection c) => c.WindowCommand = () =>
    {
        long now = Now();
        LoopSend(c, now);
        LoopWindow(c, now);
    };

    // wake false: the loop takes the command on its next pass without being woken for it.
    internal void TcpReadHappened(TcpConnection c, bool wake)
    {
        try
        {
            Post(c.WindowCommand ?? MakeWindowCommand(c), null, wake);
        }
        catch (ObjectDisposedException)
        {
            // The stack is gone: nobody needs the window update.
        }
    }

    internal void TcpClose(TcpConnection c, bool orphan) => Post(() =>
    {
        long now = Now();
        if (orphan)
            c.Orphaned = true;
        LoopSend(c, now);
        if (orphan)
            LoopWindow(c, now);
        if (c.Removed || c.Endpoint is null)
            return;
        var output = TcpOutput();
        _tcpTable.Close(output, now, c.Endpoint, orphan);
        ExecuteOutput(output, default, now);
    }, null);

    // A socket option of c changed (TcpConnection.Options.cs): the core takes the new settings
    // before the setter returns, as setsockopt, so whatever the user sends next carries them
    // (posted, a lazily queued window command could send bytes written meanwhile first).
    internal void TcpConfigure(TcpConnection c, TcpSocketSettings settings) => OnLoop(() =>
    {
        long now = Now();
        LoopSend(c, now);
        if (c.Removed || c.Endpoint is null)
            return true;
        var output = TcpOutput();
        _tcpTable.Configure(output, now, c.Endpoint, settings);
        ExecuteOutput(output, default, now);
        return true;
    });

    // SO_SNDBUF set on c: the ring grows on the loop (which reads it outside the lock).
    internal void TcpSetSendBuffer(TcpConnection c, int size) => OnLoop(() =>
    {
        c.LockSendBuffer(size);
        return true;
    });

    internal void TcpAbort(TcpConnection c)
    {
        try
        {
            Post(() =>
            {
                if (c.Removed || c.Endpoint is null)
                    return;
                long now = Now();
                var output = TcpOutput();
                _tcpTable.Abort(output, now, c.Endpoint);
                // Counted before the RST leaves, so whoever sees the RST sees the count too.
                _statistics.Increment("tcp.aborted");
                ExecuteOutput(output, default, now);
            }, null);
        }
        catch (ObjectDisposedException)
        {
        }
    }

    private void LoopSend(TcpConnection c, long now)
    {
        long written = c.TakeWritten();
        if (c.Removed || c.Endpoint is null)
            return;
        var output = TcpOutput();
        _tcpTable.Written(output, now, c.Endpoint, written);
        ExecuteOutput(output, default, now);
    }

    private void LoopWindow(TcpConnection c, long now)
    {
        long consumed = c.TakeConsumed();
        if (c.Removed || c.Endpoint is null)
            return;
        var output = TcpOutput();
        _tcpTable.Consumed(output, now, c.Endpoint, consumed);
        ExecuteOutput(output, default, now);
    }

    // ------------------------------------------------------------------------------------------
    // Arriving segments
    // ------------------------------------------------------------------------------------------

    // tcp.received counts a segment once it has been handled (its bytes stored or delivered,
    // its answers sent), so whoever sees the counter reach n knows the n-th segment's effects
    // are in place.
    private void OnTcp(ReadOnlySpan<byte> packet, Received r, long now)
    {
        try
        {
            var output = TcpOutput();
            _tcpTable.Segment(output, now, _ip, r.Source, r.Ports.Source, r.Destination, r.Ports.Destination, r.Tcp, r.Foreign);
            ExecuteOutput(output, IpLayer.slice(packet, r.Payload), now, IpLayer.slice(packet, r.Packet));
        }
        finally
        {
            _tcpReceived.Increment();
        }
    }

    // An ICMP error quoting one of our TCP segments (RFC 1122 §4.2.3.9): the table finds the
    // connection of the quoted 4-tuple, whose core checks the quoted sequence number and
    // decides (lower the MSS and resend, fail the connect, abort, remember a soft error, or
    // ignore); the actions and events say what happened.
    private void OnTcpIcmpError(Received r)
    {
        long now = Now();
        var quoted = r.Error.Quoted;
        var key = new EndpointKey(quoted.Source, quoted.Ports.Source, quoted.Destination, quoted.Ports.Destination);
        var error = new TcpIcmpError(quoted.Destination.IsIpv6, r.Error.Type, r.Error.Code, r.Error.PathMtu, new SeqNum(quoted.Sequence));
        var output = TcpOutput();
        _tcpTable.IcmpError(output, now, key, quoted.SequenceKnown, error);
        ExecuteOutput(output, default, now);
    }

    // The loop's one output: each table call clears and fills it, ExecuteOutput reads it in
    // place, so a segment costs no allocation. Loop-only. A call made while ExecuteOutput still
    // walks it (nothing does today: every handler it runs only posts or completes
    // asynchronously) gets a fresh one rather than overwrite the walk.
    private TcpEndpointOutput TcpOutput() => _tcpOutputInUse ? new TcpEndpointOutput() : _tcpOutput;

    private void Count(TcpEndpointOutput output)
    {
        foreach (var note in output.Notes)
            _statistics.Increment(note);
    }

    // Carries out what a table call produced, group by group in the core's order: segments
    // sent for no connection, connections a listener opened (a socket is attached to each),
    // and each connection's actions.
    // `packet`: the IP packet the output answers, if any (a forwarder's request keeps its start
    // for the ICMP error a refusal may send).
    private void ExecuteOutput(TcpEndpointOutput output, ReadOnlySpan<byte> payload, long now, ReadOnlySpan<byte> packet = default)
    {
        Count(output);
        bool shared = ReferenceEquals(output, _tcpOutput);
        if (shared)
            _tcpOutputInUse = true;
        try
        {
            var actions = output.Actions.AsSpan();
            foreach (var group in output.Groups)
            {
                var slice = actions.Slice(group.Start, group.Count);
                switch (group.Kind)
                {
                    case TcpGroupKind.Stateless:
                        foreach (ref readonly var action in slice)
                        {
                            if (action.IsTransmit)
                                Transmit(group.Key.Local, group.Key.LocalPort, group.Key.Remote, group.Key.RemotePort, action.segment, null, group.Header, now);
                        }
                        break;
                    case TcpGroupKind.Opened:
                        Execute(Attach(group.Endpoint), slice, payload, now);
                        break;
                    case TcpGroupKind.Pending:
                        OfferTcpRequest(group.Pending, packet);
                        break;
                    case TcpGroupKind.PendingExpired:
                        (group.Pending.Owner as TcpForwardRequest)?.Expired();
                        break;
                    default:
                        if (group.Endpoint.Owner is TcpConnection c)
                            Execute(c, slice, payload, now);
                        break;
                }
            }
        }
        finally
        {
            if (shared)
                _tcpOutputInUse = false;
        }
    }

    // The socket of a connection a listener opened.
    private TcpConnection Attach(TcpEndpoint endpoint)
    {
        var key = endpoint.Key;
        var socket = (endpoint.Listener?.Owner as TcpConnectionListener)?.SocketForAccepted() ?? (_defaultSocketState ??= TcpSocketState.Defaults(Options));
        var connection = new TcpConnection(this, socket,
            new IPEndPoint(key.Local.ToIPAddress(), key.LocalPort), new IPEndPoint(key.Remote.ToIPAddress(), key.RemotePort))
        {
            LocalAddress = key.Local,
            LocalPort = key.LocalPort,
            RemoteAddress = key.Remote,
            RemotePort = key.RemotePort,
            Endpoint = endpoint,
        };
        endpoint.Owner = connection;
        return connection;
    }

    // Carries out one connection's actions, in order. With TSO, consecutive data segments are
    // gathered into one super-segment (the core's SegmentBatch decides which); any other action
    // first sends what was gathered, so the order on the wire stays the core's.
    private void Execute(TcpConnection c, ReadOnlySpan<TcpAction> actions, ReadOnlySpan<byte> payload, long now)
    {
        _batch.Clear(); // a run left by a failed write is not sent later
        foreach (ref readonly var action in actions)
        {
            if (_batch.Count > 0 && !action.IsTransmit)
                FlushRun(now);
            switch (action.Tag)
            {
                case TcpAction.Tags.Transmit:
                    TransmitData(c, action.segment, now);
                    break;
                case TcpAction.Tags.StoreReceived:
                    c.Store(payload.Slice(action.payloadOffset, action.length), action.position);
                    break;
                case TcpAction.Tags.Deliver:
                    c.Deliver(action.upTo);
                    break;
                case TcpAction.Tags.ReceiveBufferGrown:
                    c.GrowReceiveBuffer(action.size);
                    _statistics.Increment("tcp.receive-buffer.grown");
                    break;
                case TcpAction.Tags.Event:
                    OnTcpEvent(c, action.@event, now);
                    break;
                case TcpAction.Tags.Transition:
                    c.OnState(action.transition.To);
                    // A RST at RCV.NXT ended TIME-WAIT (see StateModel: no RFC 1337).
                    if (action.transition.From.IsTimeWait && action.transition.Trigger.IsRcvRst)
                        _statistics.Increment("tcp.time-wait.reset");
                    break;
            }
        }
        if (_batch.Count > 0)
            FlushRun(now);
    }

    private void OnTcpEvent(TcpConnection c, TcpEvent e, long now)
    {
        switch (e.Tag)
        {
            case TcpEvent.Tags.Connected:
                _statistics.Increment("tcp.connected");
                _log.TcpEstablished(c.LocalEndPoint, c.RemoteEndPoint);
                RecordRtt(c);
                if (c.Endpoint?.Listener?.Owner is TcpConnectionListener listener)
                {
                    if (!listener.Offer(c, c.Endpoint.Listener))
                        TcpAbort(c);
                }
                else
                    c.OnConnected();
                break;
            case TcpEvent.Tags.Refused:
                _statistics.Increment("tcp.refused");
                _log.TcpRefused(c.LocalEndPoint, c.RemoteEndPoint);
                c.Fail(SocketError.ConnectionRefused);
                break;
            case TcpEvent.Tags.Reset:
                _statistics.Increment("tcp.reset-received");
                _log.TcpReset(c.LocalEndPoint, c.RemoteEndPoint);
                c.Reset();
                break;
            case TcpEvent.Tags.TimedOut:
            case TcpEvent.Tags.UserTimedOut:
                // Retransmissions, probes or FIN-WAIT-2 ran out; or the user timeout (RFC 9293
                // §3.10.8, RFC 5482: the core reset the connection, see TcpConfig.UserTimeout).
                _statistics.Increment(e.IsUserTimedOut ? "tcp.user-timeout" : "tcp.timed-out");
                _log.TcpTimedOut(c.LocalEndPoint, c.RemoteEndPoint);
                // TimedOut, or the soft ICMP error seen meanwhile (RFC 1122 §4.2.3.9).
                c.Fail(c.Endpoint!.TimeoutError);
                break;
            case TcpEvent.Tags.IcmpError:
                // A hard ICMP error, or any unreachable in SYN-SENT: the core closed the connection.
                _statistics.Increment("tcp.icmp.error");
                c.Fail(e.error);
                break;
            case TcpEvent.Tags.PathMtuLowered:
                // The connection sends smaller segments now; UDP, ICMP and new connections to the
                // destination learn the path MTU too.
                _statistics.Increment("tcp.icmp.mtu-lowered");
                _ip = IpLayer.learnPathMtu(now, c.RemoteAddress, e.pathMtu, _ip);
                break;
            case TcpEvent.Tags.IcmpNoted:
                _statistics.Increment(e.note switch
                {
                    TcpIcmpNote.OutOfWindow => "tcp.icmp.out-of-window",
                    TcpIcmpNote.MtuNotLower => "tcp.icmp.mtu-not-lower",
                    TcpIcmpNote.SoftErrorRemembered => "tcp.icmp.soft-error",
                    _ => "tcp.icmp.ignored",
                });
                break;
            case TcpEvent.Tags.PeerClosed:
                c.PeerClosed();
                break;
            case TcpEvent.Tags.Closed:
                RemoveTcp(c);
                break;
            case TcpEvent.Tags.SendBufferFreed:
                c.Acknowledged(e.bytes);
                break;
            case TcpEvent.Tags.FastRetransmit:
                _statistics.Increment("tcp.retransmit.fast");
                break;
            case TcpEvent.Tags.LossProbe:
                _statistics.Increment("tcp.loss-probe");
                break;
            case TcpEvent.Tags.AckRateLimited:
                _statistics.Increment("tcp.ack.rate-limited");
                break;
            case TcpEvent.Tags.Reopened:
                // RFC 6191: the table handed the SYN to the listener as a new connection.
                _statistics.Increment("tcp.time-wait.reopened");
                break;
        }
    }

    // The connection's RFC 6298 SRTT into the meter's histogram, once the engine has a sample.
    private void RecordRtt(TcpConnection c)
    {
        if (c.Endpoint is { } e && e.Core.Rtt.HasSample)
            (_meter ?? _group?.Engine(0)?._meter)?.RecordTcpRtt(c.Core.Rtt.Srtt);
    }

    private void RemoveTcp(TcpConnection c)
    {
        if (c.Removed)
            return;
        // The table has already taken the connection out (TcpEvent.Closed).
        c.Removed = true;
        _statistics.Increment("tcp.closed");
        _log.TcpClosed(c.LocalEndPoint, c.RemoteEndPoint);
        RecordRtt(c);
        c.OnClosed();
    }

    // ------------------------------------------------------------------------------------------
    // Timers and shutdown
    // ------------------------------------------------------------------------------------------

    private long NextTcpDeadline() => _tcpTable.NextDeadline;

    // How often the loop gives back the rings of connections that left them empty and unused
    // since the last time: an idle connection's rings go back to the pool after one to two of
    // these. (The loop wakes at least once a second, so this needs no timer of its own.)
    private const long RingSweepMicroseconds = 1_000_000;

    // How many rings of each default size RingPool keeps for the next connections (16 MiB at
    // 256 KiB; what a second did not need is let go at the next sweep).
    private const int PooledRings = 64;

    /// <summary>The TCP connections' rings of the default sizes, kept for the next connections.</summary>
    internal RingPool Rings { get; }
    private long _nextRingSweep;

    private void SweepIdleRings(long now)
    {
        if (now < _nextRingSweep)
            return;
        _nextRingSweep = now + RingSweepMicroseconds;
        Rings.Trim();
        if (Volatile.Read(ref TcpRingsRented.Value) == Volatile.Read(ref TcpRingsReturned.Value))
            return;
        foreach (var e in _tcpTable.Connections)
            (e.Owner as TcpConnection)?.ReleaseIdleRings();
    }

    private void RunTcpTimers(long now)
    {
        if (_tcpTable.NextDeadline > now)
            return;
        var output = TcpOutput();
        _tcpTable.RunTimers(output, now);
        ExecuteOutput(output, default, now);
    }

    // Called by Dispose once the loop has stopped (so this thread owns the loop state), before the
    // device goes away: every connection the peer may still hold state for gets a RST, as the
    // user's ABORT would send (RFC 9293 §3.10.5: SYN-RECEIVED, ESTABLISHED, FIN-WAIT-1/2,
    // CLOSE-WAIT; nothing in SYN-SENT, CLOSING, LAST-ACK, TIME-WAIT). Without it the peer would
    // keep a dead connection until its own timers gave up.
    private void DisposeTcp()
    {
        foreach (var listener in _tcpTable.Listeners)
        {
            (listener.Owner as TcpConnectionListener)?.Dispose();
            (listener.Owner as TcpForwarder)?.StackDisposed();
        }
        long now = Now();
        var connections = _tcpTable.Connections.Select(e => e.Owner as TcpConnection).ToList();
        var output = TcpOutput();
        _tcpTable.AbortAll(output, now);
        var actions = output.Actions.AsSpan();
        foreach (var group in output.Groups)
        {
            try
            {
                foreach (ref readonly var action in actions.Slice(group.Start, group.Count))
                {
                    Transmit(group.Key.Local, group.Key.LocalPort, group.Key.Remote, group.Key.RemotePort, action.segment, null, group.Header, now);
                    _statistics.Increment("tcp.rst.sent-on-dispose");
                }
            }
            catch (Exception)
            {
                // The device may already be failing; the peer's timers will have to do.
                _statistics.Increment("tcp.dispose.reset-failed");
            }
        }
        foreach (var c in connections)
        {
            if (c is null)
                continue;
            c.Removed = true;
            c.StackDisposed();
        }
    }
}
