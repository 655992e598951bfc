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
using TcpEngine = NetStack.Core.Tcp.ConnectionModule;

namespace NetStack;

// TCP in the engine: the connection table, listeners, timers and the glue between the pure
// connection engine (NetStack.Core.Tcp.Connection) and the sockets' byte buffers.
public sealed partial class NetworkStack
{
    // RFC 9293 §3.7.1: the MSS assumed when a SYN carries none (IPv4 576 − 40, IPv6 1280 − 60).
    private const int DefaultPeerMss4 = 536;
    private const int DefaultPeerMss6 = 1220;

    private readonly record struct TcpKey(IpAddr Local, ushort LocalPort, IpAddr Remote, ushort RemotePort);

    // Loop-only: connections by 4-tuple, and their timers. A connection sits in the queue under the
    // earliest deadline it was given (TcpConnection.TimerAt); a later deadline leaves that entry,
    // which fires early and harmlessly (handleTimer runs only what is due) and re-queues. Entries
    // whose priority no longer matches TimerAt are stale and skipped.
    private readonly Dictionary<TcpKey, TcpConnection> _tcp = [];
    private readonly PriorityQueue<TcpConnection, long> _tcpTimers = new();

    // Under _portGate: listeners per family, and how many connections use each local port (so an
    // ephemeral port is never handed out while any 4-tuple still uses it).
    private readonly Dictionary<ushort, TcpListener> _tcpListen4 = [];
    private readonly Dictionary<ushort, TcpListener> _tcpListen6 = [];
    private readonly Dictionary<ushort, int> _tcpPortUse = [];

    // RFC 6528: the ISN secret, drawn once per stack from a cryptographic source.
    private readonly IsnKey _isnKey = new(
        BinaryPrimitives.ReadUInt64LittleEndian(RandomNumberGenerator.GetBytes(8)),
        BinaryPrimitives.ReadUInt64LittleEndian(RandomNumberGenerator.GetBytes(8)));

    // RFC 4987 §3.6: the SYN-cookie MAC key, separate from the ISN key.
    private readonly IsnKey _cookieKey = new(
        BinaryPrimitives.ReadUInt64LittleEndian(RandomNumberGenerator.GetBytes(8)),
        BinaryPrimitives.ReadUInt64LittleEndian(RandomNumberGenerator.GetBytes(8)));

    private TcpConfig _tcpConfig4 = TcpConfig.Default;
    private TcpConfig _tcpConfig6 = TcpConfig.Default;

    private void InitTcp(int mtu)
    {
        var d = TcpConfig.Default;
        long msl = (long)(Options.TcpTimeWait.TotalMicroseconds / 2);
        TcpConfig Make(bool v6) => new(
            TcpConfig.MssForMtu(mtu, v6), v6 ? DefaultPeerMss6 : DefaultPeerMss4, Options.TcpReceiveBufferBytes,
            d.InitialRto, d.MinRto, d.MaxRto, d.ClockGranularity, d.MaxRetransmissions, d.MaxSynRetransmissions,
            d.DelayedAckTimeout, msl, d.FinWait2Timeout, d.MaxPersistInterval,
            d.WindowScaling, d.Timestamps, d.SelectiveAck,
            Options.TcpCongestionControl == TcpCongestionControl.Reno ? CongestionControl.Reno : CongestionControl.Cubic,
            false,
            Options.TcpKeepAlive is { } idle ? (long)idle.TotalMicroseconds : FSharpValueOption<long>.None,
            (long)Options.TcpKeepAliveInterval.TotalMicroseconds, Options.TcpKeepAliveCount,
            Options.TcpReceiveBufferMaxBytes, (long)Options.TcpInvalidAckInterval.TotalMicroseconds,
            Options.TcpUserTimeout is { } userTimeout ? (long)userTimeout.TotalMicroseconds : FSharpValueOption<long>.None);
        _tcpConfig4 = Make(false);
        if (_address6 is not null)
            _tcpConfig6 = Make(true);
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
    /// <param name="backlog">Established connections waiting for <see cref="TcpListener.AcceptAsync"/> at most (positive).</param>
    /// <exception cref="SocketException">AddressAlreadyInUse when the port is taken.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public TcpListener ListenTcp(int port, int backlog = 128) =>
        ListenTcp(new IPEndPoint(_address6 is not null ? IPAddress.IPv6Any : IPAddress.Any, port), backlog);

    /// <summary>
    /// Listens on <paramref name="localEndPoint"/>: <see cref="IPAddress.Any"/> or the stack's IPv4
    /// address (IPv4 only), the stack's IPv6 address (IPv6 only), or <see cref="IPAddress.IPv6Any"/>
    /// (both families). Port 0 picks a free port in 49152–65535.
    /// </summary>
    /// <param name="localEndPoint">Address and port.</param>
    /// <param name="backlog">Established connections waiting for <see cref="TcpListener.AcceptAsync"/> at most (positive).</param>
    /// <exception cref="SocketException">AddressAlreadyInUse when the port is taken; AddressNotAvailable for an address that is not the stack's.</exception>
    /// <exception cref="ArgumentException">The family has no address on this stack, or the backlog is not positive.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public TcpListener ListenTcp(IPEndPoint localEndPoint, int backlog = 128)
    {
        ArgumentNullException.ThrowIfNull(localEndPoint);
        ArgumentOutOfRangeException.ThrowIfLessThan(backlog, 1);
        var (v4, v6) = Families(localEndPoint);
        lock (_portGate)
        {
            lock (_commandGate)
                ObjectDisposedException.ThrowIf(_disposed, this);
            int port = localEndPoint.Port;
            if (port == 0)
                port = PickTcpPort(v4, v6);
            else if ((v4 && _tcpListen4.ContainsKey((ushort)port)) || (v6 && _tcpListen6.ContainsKey((ushort)port)))
                throw new SocketException((int)SocketError.AddressAlreadyInUse);
            var listener = new TcpListener(this, new IPEndPoint(localEndPoint.Address, port), v4, v6, backlog, Options.TcpMaxHalfOpen);
            if (v4)
                _tcpListen4[(ushort)port] = listener;
            if (v6)
                _tcpListen6[(ushort)port] = listener;
            _log.TcpListening(listener.LocalEndPoint, backlog);
            return listener;
        }
    }

    // The families a local endpoint's address covers (BindUdp and ListenTcp): IPv6Any is both,
    // Any is IPv4, a stack address its own family; anything else is AddressNotAvailable.
    private (bool V4, bool V6) Families(IPEndPoint localEndPoint)
    {
        var address = localEndPoint.Address;
        bool v4, v6;
        if (address.Equals(IPAddress.IPv6Any))
            (v4, v6) = (_address4 is not null, _address6 is not null);
        else if (address.Equals(IPAddress.Any))
            (v4, v6) = (true, false);
        else if (address.AddressFamily == AddressFamily.InterNetwork)
        {
            if (!address.Equals(Options.Address))
                throw new SocketException((int)SocketError.AddressNotAvailable);
            (v4, v6) = (true, false);
        }
        else
        {
            if (!address.Equals(Options.Address6))
                throw new SocketException((int)SocketError.AddressNotAvailable);
            (v4, v6) = (false, true);
        }
        if ((v4 && _address4 is null) || (!v4 && !v6))
            throw new ArgumentException($"The stack has no IPv4 address for {localEndPoint}.", nameof(localEndPoint));
        if (v6 && _address6 is null)
            throw new ArgumentException($"The stack has no IPv6 address for {localEndPoint}.", nameof(localEndPoint));
        return (v4, v6);
    }

    // RFC 6056 §3.3.1: a random start in the dynamic range, probing upwards, skipping ports that a
    // listener or any connection (in any state, TIME-WAIT included) uses. Under _portGate.
    private ushort PickTcpPort(bool v4, bool v6)
    {
        const int count = EphemeralPortLast - EphemeralPortFirst + 1;
        int start = Random.Shared.Next(count);
        for (int i = 0; i < count; i++)
        {
            ushort port = (ushort)(EphemeralPortFirst + (start + i) % count);
            if (!(v4 && _tcpListen4.ContainsKey(port)) && !(v6 && _tcpListen6.ContainsKey(port)) && !_tcpPortUse.ContainsKey(port))
                return port;
        }
        throw new SocketException((int)SocketError.AddressAlreadyInUse);
    }

    internal void Unlisten(TcpListener listener)
    {
        lock (_portGate)
        {
            if (listener.BindsIpv4 && _tcpListen4.TryGetValue(listener.Port, out var l4) && ReferenceEquals(l4, listener))
                _tcpListen4.Remove(listener.Port);
            if (listener.BindsIpv6 && _tcpListen6.TryGetValue(listener.Port, out var l6) && ReferenceEquals(l6, listener))
                _tcpListen6.Remove(listener.Port);
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
    /// <exception cref="SocketException">ConnectionRefused when the peer answers with a RST; TimedOut when the SYN retransmissions run out; AddressNotAvailable when no ephemeral port is free (as a kernel socket's connect).</exception>
    /// <exception cref="ArgumentException">The endpoint is unusable or the stack has no address of its family.</exception>
    /// <exception cref="OperationCanceledException">The token was canceled.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public async ValueTask<TcpConnection> ConnectTcpAsync(IPEndPoint remote, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(remote);
        if (remote.Port is <= 0 or > 65535)
            throw new ArgumentException($"Port {remote.Port} is not a destination port (1..65535).", nameof(remote));
        var address = remote.Address.IsIPv4MappedToIPv6 ? remote.Address.MapToIPv4() : remote.Address;
        if (address.Equals(IPAddress.Any) || address.Equals(IPAddress.IPv6Any))
            throw new ArgumentException("The destination address is unspecified.", nameof(remote));
        var target = IpAddr.OfIPAddress(address);
        var source = SourceFor(target);
        if (source is null)
            throw new ArgumentException($"The stack has no {(target.IsIpv6 ? "IPv6" : "IPv4")} address to connect to {address} from.", nameof(remote));
        cancellationToken.ThrowIfCancellationRequested();
        var connection = new TcpConnection(this, Options.TcpSendBufferBytes, Options.TcpSendBufferMaxBytes, Options.TcpReceiveBufferBytes, null, new IPEndPoint(address, remote.Port))
        {
            LocalAddress = source.Value,
            RemoteAddress = target,
            RemotePort = (ushort)remote.Port,
        };
        Post(() => LoopConnect(connection), e => connection.Fail(SocketError.OperationAborted));
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
        if (_tcp.Count >= Options.TcpMaxConnections)
        {
            _statistics.Increment("tcp.refused.max-connections");
            c.Fail(SocketError.TooManyOpenSockets);
            return;
        }
        ushort port;
        try
        {
            lock (_portGate)
            {
                port = PickTcpPort(!c.LocalAddress.IsIpv6, c.LocalAddress.IsIpv6);
                _tcpPortUse[port] = 1;
            }
        }
        catch (SocketException)
        {
            // Every ephemeral port is taken. A kernel Socket's connect fails with EADDRNOTAVAIL
            // then (AddressNotAvailable; bind to port 0 gives EADDRINUSE, as ListenTcp(0) and
            // BindUdp(0) do here): the caller's error, not a loop error.
            _statistics.Increment("tcp.refused.no-ephemeral-port");
            c.Fail(SocketError.AddressNotAvailable);
            return;
        }
        c.LocalPort = port;
        c.EphemeralPort = true;
        c.LocalEndPoint = new IPEndPoint(c.LocalAddress.ToIPAddress(), port);
        var key = new TcpKey(c.LocalAddress, port, c.RemoteAddress, c.RemotePort);
        var config = c.LocalAddress.IsIpv6 ? _tcpConfig6 : _tcpConfig4;
        var actions = TcpActionSink();
        c.Core = TcpEngine.openActiveInto(actions, config, Iss(key, now), now);
        c.Core = TcpEngine.limitToPathMtu(key.Remote.IsIpv6, IpLayer.pathMtu(now, key.Remote, _ip), c.Core);
        _tcp[key] = c;
        _statistics.Increment("tcp.active-open");
        Execute(c, actions, default, now);
    }

    private SeqNum Iss(TcpKey key, long now)
    {
        Span<byte> local = stackalloc byte[16];
        Span<byte> remote = stackalloc byte[16];
        int n = WriteAddress(key.Local, local);
        WriteAddress(key.Remote, remote);
        return Isn.generate(_isnKey, now, local[..n], key.LocalPort, remote[..n], key.RemotePort);
    }

    private static int WriteAddress(IpAddr address, Span<byte> destination)
    {
        if (address.IsIpv6)
        {
            address.ipv6.Write(destination);
            return 16;
        }
        address.ipv4.Write(destination);
        return 4;
    }

    // ------------------------------------------------------------------------------------------
    // HttpClient
    // ------------------------------------------------------------------------------------------

    /// <summary>
    /// A <see cref="SocketsHttpHandler.ConnectCallback"/> that connects through this stack. The host
    /// must be an IP literal (this stack resolves no names).
    /// </summary>
    /// <param name="context">The endpoint HttpClient wants.</param>
    /// <param name="cancellationToken">Cancels the connection attempt.</param>
    /// <returns>The connection as a stream.</returns>
    /// <exception cref="SocketException">HostNotFound for a host name; the errors of <see cref="ConnectTcpAsync"/>.</exception>
    public async ValueTask<Stream> ConnectAsync(SocketsHttpConnectionContext context, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(context);
        string host = context.DnsEndPoint.Host;
        if (host.StartsWith('[') && host.EndsWith(']'))
            host = host[1..^1];
        if (!IPAddress.TryParse(host, out var address))
            throw new SocketException((int)SocketError.HostNotFound);
        return await ConnectTcpAsync(new IPEndPoint(address, context.DnsEndPoint.Port), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>A <see cref="SocketsHttpHandler"/> whose connections go through this stack.</summary>
    public SocketsHttpHandler CreateHttpHandler() => new() { ConnectCallback = ConnectAsync };

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
        if (c.Removed || !c.HasCore)
            return;
        if (orphan)
            c.Core = TcpLayer.orphan(now, c.Core);
        var actions = TcpActionSink();
        c.Core = TcpEngine.closeInto(actions, now, c.Core);
        Execute(c, actions, default, now);
    }, null);

    internal void TcpSetNoDelay(TcpConnection c, bool noDelay) => Post(() =>
    {
        long now = Now();
        LoopSend(c, now);
        if (c.Removed || !c.HasCore)
            return;
        var actions = TcpActionSink();
        c.Core = TcpEngine.setNoDelayInto(actions, now, noDelay, c.Core);
        Execute(c, actions, default, now);
    }, null);

    internal void TcpAbort(TcpConnection c)
    {
        try
        {
            Post(() =>
            {
                if (c.Removed || !c.HasCore)
                    return;
                long now = Now();
                var actions = TcpActionSink();
                c.Core = TcpEngine.abortInto(actions, now, c.Core);
                Execute(c, actions, default, now);
                _statistics.Increment("tcp.aborted");
            }, null);
        }
        catch (ObjectDisposedException)
        {
        }
    }

    private void LoopSend(TcpConnection c, long now)
    {
        long written = c.TakeWritten();
        if (c.Removed || !c.HasCore || !TcpEngine.canSend(c.Core))
            return;
        long more = written - c.Core.Written;
        if (more <= 0)
            return;
        var actions = TcpActionSink();
        c.Core = TcpEngine.sendInto(actions, now, more, c.Core);
        Execute(c, actions, default, now);
    }

    private void LoopWindow(TcpConnection c, long now)
    {
        long consumed = c.TakeConsumed();
        if (c.Removed || !c.HasCore)
            return;
        long more = consumed - c.Core.Consumed;
        if (more <= 0)
            return;
        var actions = TcpActionSink();
        c.Core = TcpEngine.receiveWindowUpdateInto(actions, now, more, c.Core);
        Execute(c, actions, default, now);
    }

    // ------------------------------------------------------------------------------------------
    // Arriving segments
    // ------------------------------------------------------------------------------------------

    private void OnTcp(ReadOnlySpan<byte> packet, Received r, long now)
    {
        _tcpReceived.Increment();
        if (r.Tcp.Has(TcpFlags.Syn) && (r.Tcp.Has(TcpFlags.Fin) || r.Tcp.Has(TcpFlags.Rst)))
        {
            // SYN with FIN or RST has no meaning in any state (a scanner's or an attacker's
            // packet): dropped without an answer, as Linux does.
            _statistics.Increment("tcp.drop.illegal-flags");
            return;
        }
        var key = new TcpKey(r.Destination, r.DestinationPort, r.Source, r.SourcePort);
        var payload = IpLayer.slice(packet, r.Payload);
        // The connection in TIME-WAIT this SYN ended (TcpEvent.Reopened), already released by
        // RemoveTcp (table, port use, listener counts, statistics; its queued timer entry is
        // skipped as Removed): the SYN goes on below as a new connection request.
        TcpConnection? reopened = null;
        if (_tcp.TryGetValue(key, out var c))
        {
            var actions = TcpActionSink();
            c.Core = TcpEngine.handleSegmentInto(actions, now, r.Tcp, c.Core);
            _reopened = null;
            Execute(c, actions, payload, now);
            if (!ReferenceEquals(_reopened, c))
                return;
            _reopened = null;
            reopened = c;
        }
        var seg = r.Tcp;
        TcpListener? listener;
        lock (_portGate)
            (r.Destination.IsIpv6 ? _tcpListen6 : _tcpListen4).TryGetValue(r.DestinationPort, out listener);
        if (listener is not null && seg.Has(TcpFlags.Syn) && !seg.Has(TcpFlags.Ack) && !seg.Has(TcpFlags.Rst))
        {
            // RFC 9293 §3.10.7.2, with the queues bounded. The connection cap refuses with a RST;
            // a full accept queue drops the SYN, as Linux does, so the peer's retransmission
            // tries again later; a full half-open queue answers with a SYN cookie instead.
            if (_tcp.Count >= Options.TcpMaxConnections)
            {
                _statistics.Increment("tcp.drop.max-connections");
                SendReset(r, seg, now);
                return;
            }
            if (!listener.AcceptQueueHasRoom)
            {
                _statistics.Increment("tcp.drop.listen-queue-full");
                return;
            }
            // A SYN that reopened a TIME-WAIT 4-tuple takes state even when the half-open queue
            // is full, as Linux does (tcp_conn_request uses no cookie when tw_isn is set): a
            // cookie is an ISS of its own, which could not honour reopenIss (RFC 1122
            // §4.2.2.13). It costs nothing a flood can use: the connection replaces the one in
            // TIME-WAIT just released, so the table does not grow, and each such SYN needs a
            // 4-tuple in TIME-WAIT and a sequence number or timestamp beyond its last.
            if (reopened is null && !listener.HalfOpenHasRoom)
            {
                if (Options.TcpSynCookies)
                    SendSynCookie(listener, r, seg, now);
                else
                    _statistics.Increment("tcp.drop.half-open-full");
                return;
            }
            var config = r.Destination.IsIpv6 ? _tcpConfig6 : _tcpConfig4;
            var actions = TcpActionSink();
            var iss = reopened is null ? Iss(key, now) : TcpEngine.reopenIss(reopened.Core, Iss(key, now));
            var core = TcpEngine.acceptInto(actions, config, iss, now, seg);
            core = TcpEngine.limitToPathMtu(r.Source.IsIpv6, IpLayer.pathMtu(now, r.Source, _ip), core);
            var connection = new TcpConnection(this, Options.TcpSendBufferBytes, Options.TcpSendBufferMaxBytes, Options.TcpReceiveBufferBytes,
                new IPEndPoint(r.Destination.ToIPAddress(), r.DestinationPort), new IPEndPoint(r.Source.ToIPAddress(), r.SourcePort))
            {
                LocalAddress = r.Destination,
                LocalPort = r.DestinationPort,
                RemoteAddress = r.Source,
                RemotePort = r.SourcePort,
            };
            connection.Core = core;
            if (core.State.IsSynReceived)
            {
                connection.HalfOpenOf = listener;
                listener.HalfOpen++;
                _tcp[key] = connection;
                lock (_portGate)
                    _tcpPortUse[r.DestinationPort] = _tcpPortUse.GetValueOrDefault(r.DestinationPort) + 1;
                _statistics.Increment("tcp.passive-open");
            }
            else
                connection.Removed = true;
            Execute(connection, actions, payload, now);
            return;
        }
        if (listener is not null && seg.Has(TcpFlags.Ack) && !seg.Has(TcpFlags.Syn) && !seg.Has(TcpFlags.Rst)
            && listener.CookieSentAt is long sentAt && now - sentAt < 2 * SynCookie.PeriodMicros
            && TryCookieConnection(listener, key, r, payload, now))
            return;
        // RFC 9293 §3.10.7.1: no connection (and no listener taking it): RST unless it is one.
        _statistics.Increment("tcp.drop.no-connection");
        SendReset(r, seg, now);
    }

    // An ICMP error quoting one of our TCP segments (RFC 1122 §4.2.3.9): to the connection of the
    // quoted 4-tuple, whose core checks the quoted sequence number and decides (lower the MSS
    // and resend, fail the connect, abort, remember a soft error, or ignore); the actions and
    // events say what happened.
    private void OnTcpIcmpError(Received r)
    {
        var key = new TcpKey(r.QuotedSource, r.QuotedSourcePort, r.QuotedDestination, r.QuotedDestinationPort);
        if (!_tcp.TryGetValue(key, out var c) || c.Removed || !c.HasCore)
        {
            _statistics.Increment("icmp.error.no-socket");
            return;
        }
        if (!r.QuotedSequenceKnown)
        {
            // Not a first fragment, or a quote cut before the sequence number: nothing to check.
            _statistics.Increment("tcp.icmp.unverifiable");
            return;
        }
        long now = Now();
        var error = new TcpIcmpError(r.QuotedDestination.IsIpv6, r.ErrorType, r.ErrorCode, r.PathMtu, new SeqNum(r.QuotedSequence));
        var actions = TcpActionSink();
        c.Core = TcpEngine.handleIcmpInto(actions, now, error, c.Core);
        Execute(c, actions, default, now);
    }

    private void SendReset(Received r, Segment seg, long now)
    {
        var reset = TcpEngine.resetFor(seg);
        if (reset.IsSome)
        {
            Transmit(r.Destination, r.DestinationPort, r.Source, r.SourcePort, reset.Value, null, now);
            _statistics.Increment("tcp.rst.sent");
        }
    }

    // RFC 4987 §3.6: a SYN,ACK whose ISN is the cookie, and no state kept. It carries our MSS only
    // (see SynCookie for what a cookie connection gives up).
    private void SendSynCookie(TcpListener listener, Received r, Segment seg, long now)
    {
        Span<byte> local = stackalloc byte[16];
        Span<byte> remote = stackalloc byte[16];
        int n = WriteAddress(r.Destination, local);
        WriteAddress(r.Source, remote);
        var config = r.Destination.IsIpv6 ? _tcpConfig6 : _tcpConfig4;
        int peerMss = seg.Options.MaximumSegmentSize.IsSome ? seg.Options.MaximumSegmentSize.Value : config.DefaultPeerMss;
        var cookie = SynCookie.make(_cookieKey, now, local[..n], r.DestinationPort, remote[..n], r.SourcePort, seg.Seq, peerMss);
        Transmit(r.Destination, r.DestinationPort, r.Source, r.SourcePort, TcpLayer.cookieSynAck(config, cookie, seg), null, now);
        listener.CookieSentAt = now;
        _statistics.Increment("tcp.syncookie.sent");
    }

    // The ACK of a cookie SYN,ACK: when the cookie checks out, the connection is rebuilt from it
    // (a SYN with the peer's ISN and the cookie's MSS, then this ACK) and goes to the accept
    // queue. False when it is not a valid cookie (the caller answers it as a stray segment).
    private bool TryCookieConnection(TcpListener listener, TcpKey key, Received r, ReadOnlySpan<byte> payload, long now)
    {
        var seg = r.Tcp;
        Span<byte> local = stackalloc byte[16];
        Span<byte> remote = stackalloc byte[16];
        int n = WriteAddress(r.Destination, local);
        WriteAddress(r.Source, remote);
        var peerIsn = seg.Seq - 1;
        var iss = seg.Ack - 1;
        var mss = SynCookie.check(_cookieKey, now, local[..n], r.DestinationPort, remote[..n], r.SourcePort, peerIsn, iss);
        if (mss.IsNone)
        {
            _statistics.Increment("tcp.syncookie.invalid");
            return false;
        }
        if (_tcp.Count >= Options.TcpMaxConnections || !listener.AcceptQueueHasRoom)
        {
            // No room after all: as for a SYN at the cap, the peer learns at once.
            _statistics.Increment("tcp.syncookie.no-room");
            SendReset(r, seg, now);
            return true;
        }
        var config = r.Destination.IsIpv6 ? _tcpConfig6 : _tcpConfig4;
        var syn = TcpLayer.cookieSyn(seg, mss.Value);
        // The rebuilt SYN-RECEIVED connection's own SYN,ACK is not sent: the peer already has it.
        var actions = TcpActionSink();
        var core = TcpEngine.acceptInto(actions, config, iss, now, syn);
        if (!core.State.IsSynReceived)
            return false;
        core = TcpEngine.limitToPathMtu(r.Source.IsIpv6, IpLayer.pathMtu(now, r.Source, _ip), core);
        var connection = new TcpConnection(this, Options.TcpSendBufferBytes, Options.TcpSendBufferMaxBytes, Options.TcpReceiveBufferBytes,
            new IPEndPoint(r.Destination.ToIPAddress(), r.DestinationPort), new IPEndPoint(r.Source.ToIPAddress(), r.SourcePort))
        {
            LocalAddress = r.Destination,
            LocalPort = r.DestinationPort,
            RemoteAddress = r.Source,
            RemotePort = r.SourcePort,
            HalfOpenOf = listener,
        };
        connection.Core = core;
        listener.HalfOpen++;
        _tcp[key] = connection;
        lock (_portGate)
            _tcpPortUse[r.DestinationPort] = _tcpPortUse.GetValueOrDefault(r.DestinationPort) + 1;
        _statistics.Increment("tcp.syncookie.validated");
        _statistics.Increment("tcp.passive-open");
        actions = TcpActionSink();
        connection.Core = TcpEngine.handleSegmentInto(actions, now, seg, core);
        Execute(connection, actions, payload, now);
        return true;
    }

    // The loop's one action sink: each engine call appends to it after a Clear and Execute reads
    // the actions in place, so a segment costs no action list. Loop-only. A call made while
    // Execute still walks the sink (nothing does today: every handler it runs only posts or
    // completes asynchronously) would get a fresh sink rather than overwrite the walk.
    private readonly TcpActions _tcpActions = new();
    private bool _tcpActionsInUse;

    private TcpActions TcpActionSink()
    {
        if (_tcpActionsInUse)
            return new TcpActions();
        _tcpActions.Clear();
        return _tcpActions;
    }

    // Carries out the core's actions for connection c, in order, then queues its next timer.
    // With TSO, consecutive data segments are gathered into one super-segment (see TransmitData);
    // any other action first sends what was gathered, so the order on the wire stays the core's.
    private void Execute(TcpConnection c, TcpActions actions, ReadOnlySpan<byte> payload, long now)
    {
        _run.Count = 0; // a run left by a failed write is not sent later
        bool shared = ReferenceEquals(actions, _tcpActions);
        if (shared)
            _tcpActionsInUse = true;
        try
        {
            foreach (ref readonly var action in actions.AsSpan())
            {
                if (_run.Count > 0 && !action.IsTransmit)
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
        }
        finally
        {
            if (shared)
                _tcpActionsInUse = false;
        }
        if (_run.Count > 0)
            FlushRun(now);
        if (c.Orphaned && !c.Removed && c.Core.Consumed < c.Core.Delivered)
        {
            // Nobody reads an orphaned connection: keep its window open so the peer can finish.
            var more = TcpActionSink();
            c.Core = TcpEngine.receiveWindowUpdateInto(more, now, c.Core.Delivered - c.Core.Consumed, c.Core);
            Execute(c, more, default, now);
            return;
        }
        var deadline = TcpEngine.nextDeadline(c.Core);
        if (deadline.IsSome && !c.Removed && deadline.Value < c.TimerAt)
        {
            c.TimerAt = deadline.Value;
            _tcpTimers.Enqueue(c, deadline.Value);
        }
    }

    private void OnTcpEvent(TcpConnection c, TcpEvent e, long now)
    {
        switch (e.Tag)
        {
            case TcpEvent.Tags.Connected:
                _statistics.Increment("tcp.connected");
                _log.TcpEstablished(c.LocalEndPoint, c.RemoteEndPoint);
                RecordRtt(c);
                if (c.HalfOpenOf is { } listener)
                {
                    c.HalfOpenOf = null;
                    listener.HalfOpen--;
                    if (!listener.Offer(c))
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
                c.Fail(SocketError.ConnectionReset);
                break;
            case TcpEvent.Tags.TimedOut:
            case TcpEvent.Tags.UserTimedOut:
                // Retransmissions, probes or FIN-WAIT-2 ran out; or the user timeout (RFC 9293
                // §3.10.8, RFC 5482: the core reset the connection, see TcpConfig.UserTimeout).
                _statistics.Increment(e.IsUserTimedOut ? "tcp.user-timeout" : "tcp.timed-out");
                _log.TcpTimedOut(c.LocalEndPoint, c.RemoteEndPoint);
                // TimedOut, or the soft ICMP error seen meanwhile (RFC 1122 §4.2.3.9).
                c.Fail(TcpEngine.timeoutError(c.Core));
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
                c.Acknowledged(e.bytes, c.Core);
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
                // RFC 6191: OnTcp hands the SYN to the listener once this connection is removed.
                _statistics.Increment("tcp.time-wait.reopened");
                _reopened = c;
                break;
        }
    }

    // Loop-only: the connection whose TIME-WAIT the segment OnTcp is handling just ended with
    // TcpEvent.Reopened (null otherwise).
    private TcpConnection? _reopened;

    // The connection's RFC 6298 SRTT into the meter's histogram, once the engine has a sample.
    private void RecordRtt(TcpConnection c)
    {
        if (c.HasCore && c.Core.Rtt.HasSample)
            _meter.RecordTcpRtt(c.Core.Rtt.Srtt);
    }

    private void RemoveTcp(TcpConnection c)
    {
        if (c.Removed)
            return;
        c.Removed = true;
        _tcp.Remove(new TcpKey(c.LocalAddress, c.LocalPort, c.RemoteAddress, c.RemotePort));
        lock (_portGate)
        {
            int uses = _tcpPortUse.GetValueOrDefault(c.LocalPort) - 1;
            if (uses <= 0)
                _tcpPortUse.Remove(c.LocalPort);
            else
                _tcpPortUse[c.LocalPort] = uses;
        }
        if (c.HalfOpenOf is { } listener)
        {
            c.HalfOpenOf = null;
            listener.HalfOpen--;
        }
        _statistics.Increment("tcp.closed");
        _log.TcpClosed(c.LocalEndPoint, c.RemoteEndPoint);
        RecordRtt(c);
        c.OnClosed();
    }

    // Builds one segment and sends it: with data as a gather write (TransmitGathered), else
    // whole in the packet buffer. Never fragmented: the core sizes segments for the path MTU
    // (IPv4 TCP carries DF; a router on a narrower path answers with "fragmentation needed" /
    // "packet too big" and the connection's MSS follows, Connection.handleIcmpInto).
    private void Transmit(IpAddr local, ushort localPort, IpAddr remote, ushort remotePort, OutgoingSegment segment, TcpConnection? c, long now)
    {
        if (segment.DataLength > 0)
        {
            TransmitGathered(c!, segment, segment.Flags, segment.DataLength, 0);
            _deviceWritten.Increment();
            _tcpSent.Increment();
            return;
        }
        int length = IpLayer.writeTcp(local, remote, localPort, remotePort, NextIdentification(), segment, ReadOnlySpan<byte>.Empty, _packetBuffer);
        _device.Write(_packetBuffer.AsSpan(0, length));
        _deviceWritten.Increment();
        Interlocked.Add(ref _bytesWritten, length);
        _tcpSent.Increment();
    }

    // ------------------------------------------------------------------------------------------
    // TCP segmentation offload
    // ------------------------------------------------------------------------------------------

    // A run of data segments of one connection gathered for one super-segment (loop-only).
    private struct SegmentRun
    {
        public int Count;
        public TcpConnection? Connection;
        public OutgoingSegment First;
        public TcpFlags LastFlags;
        public int Bytes;
        public int LastLength;
        public int HeaderBytes;
    }

    private SegmentRun _run;

    // Flags that may differ along a run: the kernel gives PSH and FIN to the last segment only
    // (tcp_gso_segment), so the super-segment carries those of the last one.
    private const TcpFlags RunTailFlags = TcpFlags.Psh | TcpFlags.Fin;

    private bool TsoFor(IpAddr local) =>
        _offload is not null
        && (_offload.Offloads & (local.IsIpv6 ? TunOffloads.Tso6 : TunOffloads.Tso4)) != 0;

    // A data segment goes into the current run when it continues it exactly: same connection,
    // next sequence number and send position, same ACK, window, options and flags (PSH/FIN
    // aside), the run's segments so far all full-sized and no FIN yet, and the whole within one
    // IP packet (RFC 791 total length, RFC 8200 payload length: 65535). Anything else (SYN,
    // RST, URG, pure ACKs, retransmissions out of line) ends the run and goes as an ordinary
    // packet.
    private void TransmitData(TcpConnection c, OutgoingSegment segment, long now)
    {
        if (_run.Count > 0)
        {
            ref var run = ref _run;
            var first = run.First;
            bool continues = ReferenceEquals(run.Connection, c)
                && segment.DataLength > 0
                && segment.DataLength <= first.DataLength
                && run.LastLength == first.DataLength
                && (run.LastFlags & TcpFlags.Fin) == 0
                && segment.DataPosition == first.DataPosition + run.Bytes
                && segment.Seq.Value == unchecked(first.Seq.Value + (uint)run.Bytes)
                && segment.Ack.Value == first.Ack.Value
                && segment.Window == first.Window
                && (segment.Flags & ~RunTailFlags) == (first.Flags & ~RunTailFlags)
                && SameOptions(segment.Options, first.Options)
                && run.HeaderBytes + run.Bytes + segment.DataLength <= MaxRunPacket(c.LocalAddress);
            if (continues)
            {
                run.Count++;
                run.Bytes += segment.DataLength;
                run.LastLength = segment.DataLength;
                run.LastFlags = segment.Flags;
                return;
            }
            FlushRun(now);
        }
        bool startsRun = segment.DataLength > 0
            && (segment.Flags & (TcpFlags.Syn | TcpFlags.Rst | TcpFlags.Urg)) == 0
            && TsoFor(c.LocalAddress);
        if (startsRun)
        {
            // The kernel cuts the run into segments of the first one's length (gso_size): the
            // core's MSS, already lowered for the path MTU when ICMP said so.
            _run = new SegmentRun
            {
                Count = 1,
                Connection = c,
                First = segment,
                LastFlags = segment.Flags,
                Bytes = segment.DataLength,
                LastLength = segment.DataLength,
                HeaderBytes = IpLayer.tcpPayloadOffset(c.LocalAddress, segment.Options),
            };
            return;
        }
        Transmit(c.LocalAddress, c.LocalPort, c.RemoteAddress, c.RemotePort, segment, c, now);
    }

    // The options of two segments alike, field by field. TcpOptions.Equals (F# structural
    // equality) boxes its voption fields, a few hundred bytes per call, and a run makes one call
    // per segment.
    private static bool SameOptions(in TcpOptions a, in TcpOptions b) =>
        SameValue(a.MaximumSegmentSize, b.MaximumSegmentSize)
        && SameValue(a.WindowScale, b.WindowScale)
        && a.SackPermitted == b.SackPermitted
        && a.Timestamps.IsSome == b.Timestamps.IsSome
        && (a.Timestamps.IsNone
            || (a.Timestamps.Value.Value == b.Timestamps.Value.Value && a.Timestamps.Value.EchoReply == b.Timestamps.Value.EchoReply))
        && a.SackBlockCount == b.SackBlockCount
        && SameBlock(a.Sack0, b.Sack0)
        && SameBlock(a.Sack1, b.Sack1)
        && SameBlock(a.Sack2, b.Sack2)
        && SameBlock(a.Sack3, b.Sack3);

    private static bool SameValue<T>(FSharpValueOption<T> a, FSharpValueOption<T> b)
        where T : struct, IEquatable<T> =>
        a.IsSome == b.IsSome && (a.IsNone || a.Value.Equals(b.Value));

    private static bool SameBlock(SackBlock a, SackBlock b) => a.Left == b.Left && a.Right == b.Right;

    // The longest packet a run may make: IPv4 total length 65535; IPv6 payload 65535 after the header.
    private static int MaxRunPacket(IpAddr local) => local.IsIpv6 ? 65535 + 40 : 65535;

    // Sends the gathered run: one segment as an ordinary packet, several as one super-segment
    // (gso TCPV4/TCPV6, gso_size the first segment's length, NEEDS_CSUM with the pseudo-header
    // sum in the checksum field) that the kernel takes whole or cuts into exactly those segments.
    private void FlushRun(long now)
    {
        var run = _run;
        _run = default;
        var c = run.Connection!;
        if (run.Count == 1)
        {
            Transmit(c.LocalAddress, c.LocalPort, c.RemoteAddress, c.RemotePort, run.First, c, now);
            return;
        }
        TransmitGathered(c, run.First, run.LastFlags, run.Bytes, run.First.DataLength);
        // The kernel numbers the IPv4 identification of the segments it cuts on from ours.
        _nextIpv4Identification += (ushort)(run.Count - 1);
        _deviceWritten.Increment();
        _tcpSent.Add(run.Count);
        _statistics.Increment("offload.tso.sent");
        _statistics.Increment("offload.tso.segments", run.Count);
    }

    // Sends `bytes` of c's send stream from segment's position, headed by segment's header with
    // `flags`, as one gather write: the IP and TCP headers from the packet buffer, the payload
    // straight from the send ring (one or two pieces), so the payload is copied once, by the
    // kernel, instead of into our packet first. With offloads in force the TCP checksum is left
    // partial (NEEDS_CSUM) for the kernel, which verifies nothing for local delivery and sums
    // what it sends on; `segmentSize` > 0 makes it a super-segment to cut (TSO). Without, the
    // checksum is completed over the headers and the ring pieces, a read of the payload instead
    // of a copy and a read.
    private void TransmitGathered(TcpConnection c, OutgoingSegment segment, TcpFlags flags, int bytes, int segmentSize)
    {
        var local = c.LocalAddress;
        int length = IpLayer.writeTcpSegments(local, c.RemoteAddress, c.LocalPort, c.RemotePort,
            NextIdentification(), segment, flags, bytes, _packetBuffer);
        int headerBytes = length - bytes;
        c.SendSlices(segment.DataPosition, bytes, out var payload, out var tail);
        var head = _packetBuffer.AsSpan(0, headerBytes);
        if (_offload is not null)
        {
            int ipHeader = local.IsIpv6 ? 40 : 20;
            var header = VirtioNet.tcpSegments(local.IsIpv6, ipHeader, headerBytes - ipHeader, segmentSize);
            _offload.WriteGather(head, payload, tail, header);
        }
        else
        {
            ulong sum = Checksum.sumAfter(Checksum.sum(0UL, payload), payload.Length, tail);
            IpLayer.completeTcpChecksum(local, headerBytes, sum, _packetBuffer);
            _device.WriteGather(head, payload, tail);
        }
        Interlocked.Add(ref _bytesWritten, length);
    }

    // ------------------------------------------------------------------------------------------
    // Timers and shutdown
    // ------------------------------------------------------------------------------------------

    private long NextTcpDeadline() => _tcpTimers.TryPeek(out _, out long at) ? at : long.MaxValue;

    // How often the loop gives back the rings of connections that left them empty and unused
    // since the last time: an idle connection's rings go back to the pool after one to two of
    // these. (The loop wakes at least once a second, so this needs no timer of its own.)
    private const long RingSweepMicroseconds = 1_000_000;
    private long _nextRingSweep;

    private void SweepIdleRings(long now)
    {
        if (now < _nextRingSweep)
            return;
        _nextRingSweep = now + RingSweepMicroseconds;
        if (Volatile.Read(ref TcpRingsRented.Value) == Volatile.Read(ref TcpRingsReturned.Value))
            return;
        foreach (var c in _tcp.Values)
            c.ReleaseIdleRings();
    }

    private void RunTcpTimers(long now)
    {
        while (_tcpTimers.TryPeek(out var c, out long at) && at <= now)
        {
            _tcpTimers.Dequeue();
            if (at != c.TimerAt || c.Removed)
                continue;
            c.TimerAt = long.MaxValue;
            int retries = c.Core.Retries;
            var actions = TcpActionSink();
            c.Core = TcpEngine.handleTimerInto(actions, now, c.Core);
            // Retries grows only when the retransmission timer fired with data outstanding
            // (RFC 6298 §5.4); the metrics report it.
            if (c.Core.Retries > retries)
                _statistics.Increment("tcp.retransmission-timeout");
            Execute(c, actions, default, now);
        }
    }

    // Called by Dispose once the loop has stopped (so this thread owns the loop state), before the
    // device goes away: every connection the peer may still hold state for gets a RST, as the
    // user's ABORT would send (RFC 9293 §3.10.5: SYN-RECEIVED, ESTABLISHED, FIN-WAIT-1/2,
    // CLOSE-WAIT; nothing in SYN-SENT, CLOSING, LAST-ACK, TIME-WAIT). Without it the peer would
    // keep a dead connection until its own timers gave up.
    private void DisposeTcp()
    {
        List<TcpListener> listeners;
        lock (_portGate)
            listeners = [.. _tcpListen4.Values.Union(_tcpListen6.Values)];
        foreach (var listener in listeners)
            listener.Dispose();
        long now = Now();
        foreach (var c in _tcp.Values)
        {
            if (c.HasCore && !c.Removed)
            {
                try
                {
                    var actions = TcpActionSink();
                    TcpEngine.abortInto(actions, now, c.Core);
                    foreach (ref readonly var action in actions.AsSpan())
                    {
                        if (action.IsTransmit)
                        {
                            Transmit(c.LocalAddress, c.LocalPort, c.RemoteAddress, c.RemotePort, action.segment, c, now);
                            _statistics.Increment("tcp.rst.sent-on-dispose");
                        }
                    }
                }
                catch (Exception)
                {
                    // The device may already be failing; the peer's timers will have to do.
                    _statistics.Increment("tcp.dispose.reset-failed");
                }
            }
            c.Removed = true;
            c.StackDisposed();
        }
        _tcp.Clear();
        _tcpTimers.Clear();
    }
}
