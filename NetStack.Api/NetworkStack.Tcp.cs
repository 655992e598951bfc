using System.Buffers.Binary;
using System.Net;
using System.Net.Http;
using System.Net.Sockets;
using System.Security.Cryptography;
using Microsoft.FSharp.Core;
using NetStack.Core.Stack;
using NetStack.Core.Tcp;
using NetStack.Core.Wire;
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
            Options.TcpCongestionControl == TcpCongestionControl.Reno ? CongestionControl.Reno : CongestionControl.Cubic);
        _tcpConfig4 = Make(false);
        if (_address6 is not null)
            _tcpConfig6 = Make(true);
    }

    private static void ValidateTcp(NetStackOptions options)
    {
        if (options.TcpSendBufferBytes < 1)
            throw new ArgumentException("TcpSendBufferBytes must be positive.", nameof(options));
        if (options.TcpReceiveBufferBytes < 1)
            throw new ArgumentException("TcpReceiveBufferBytes must be positive.", nameof(options));
        if (options.TcpTimeWait < TimeSpan.Zero)
            throw new ArgumentException("TcpTimeWait cannot be negative.", nameof(options));
        if (options.TcpLinger < TimeSpan.Zero)
            throw new ArgumentException("TcpLinger cannot be negative.", nameof(options));
        if (!Enum.IsDefined(options.TcpCongestionControl))
            throw new ArgumentException("TcpCongestionControl is not a known algorithm.", nameof(options));
        if (options.TcpMaxHalfOpen < 1)
            throw new ArgumentException("TcpMaxHalfOpen must be positive.", nameof(options));
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
    /// <exception cref="SocketException">ConnectionRefused when the peer answers with a RST; TimedOut when the SYN retransmissions run out; AddressAlreadyInUse when no ephemeral port is free.</exception>
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
        var source = target.IsIpv6 ? _address6 : _address4;
        if (source is null)
            throw new ArgumentException($"The stack has no {(target.IsIpv6 ? "IPv6" : "IPv4")} address to connect to {address} from.", nameof(remote));
        cancellationToken.ThrowIfCancellationRequested();
        var connection = new TcpConnection(this, Options.TcpSendBufferBytes, Options.TcpReceiveBufferBytes, null, new IPEndPoint(address, remote.Port))
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
        ushort port;
        lock (_portGate)
        {
            port = PickTcpPort(!c.LocalAddress.IsIpv6, c.LocalAddress.IsIpv6);
            _tcpPortUse[port] = 1;
        }
        c.LocalPort = port;
        c.EphemeralPort = true;
        c.LocalEndPoint = new IPEndPoint(c.LocalAddress.ToIPAddress(), port);
        var key = new TcpKey(c.LocalAddress, port, c.RemoteAddress, c.RemotePort);
        var config = c.LocalAddress.IsIpv6 ? _tcpConfig6 : _tcpConfig4;
        var (core, output) = TcpEngine.openActive(config, Iss(key, now), now);
        c.Core = core;
        _tcp[key] = c;
        _statistics.Increment("tcp.active-open");
        Execute(c, output, default, now);
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

    internal void TcpWriteHappened(TcpConnection c) => Post(() => LoopSend(c, Now()), null);

    internal void TcpReadHappened(TcpConnection c)
    {
        try
        {
            Post(() => LoopWindow(c, Now()), null);
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
        if (c.Removed || c.Core is null)
            return;
        if (orphan)
            c.Core = TcpLayer.orphan(now, c.Core);
        var (core, output) = TcpEngine.close(now, c.Core);
        c.Core = core;
        Execute(c, output, default, now);
    }, null);

    internal void TcpAbort(TcpConnection c)
    {
        try
        {
            Post(() =>
            {
                if (c.Removed || c.Core is null)
                    return;
                long now = Now();
                var (core, output) = TcpEngine.abort(now, c.Core);
                c.Core = core;
                Execute(c, output, default, now);
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
        if (c.Removed || c.Core is null || !TcpEngine.canSend(c.Core))
            return;
        long more = written - c.Core.Written;
        if (more <= 0)
            return;
        var (core, output) = TcpEngine.send(now, more, c.Core);
        c.Core = core;
        Execute(c, output, default, now);
    }

    private void LoopWindow(TcpConnection c, long now)
    {
        long consumed = c.TakeConsumed();
        if (c.Removed || c.Core is null)
            return;
        long more = consumed - c.Core.Consumed;
        if (more <= 0)
            return;
        var (core, output) = TcpEngine.receiveWindowUpdate(now, more, c.Core);
        c.Core = core;
        Execute(c, output, default, now);
    }

    // ------------------------------------------------------------------------------------------
    // Arriving segments
    // ------------------------------------------------------------------------------------------

    private void OnTcp(ReadOnlySpan<byte> packet, Received r, long now)
    {
        _statistics.Increment("tcp.received");
        var key = new TcpKey(r.Destination, r.DestinationPort, r.Source, r.SourcePort);
        var payload = IpLayer.slice(packet, r.Payload);
        if (_tcp.TryGetValue(key, out var c))
        {
            var (core, output) = TcpEngine.handleSegment(now, r.Tcp, c.Core);
            c.Core = core;
            Execute(c, output, payload, now);
            return;
        }
        var seg = r.Tcp;
        TcpListener? listener;
        lock (_portGate)
            (r.Destination.IsIpv6 ? _tcpListen6 : _tcpListen4).TryGetValue(r.DestinationPort, out listener);
        if (listener is not null && seg.Has(TcpFlags.Syn) && !seg.Has(TcpFlags.Ack) && !seg.Has(TcpFlags.Rst))
        {
            // RFC 9293 §3.10.7.2, with the queues bounded: beyond them the SYN is dropped, as
            // Linux does, and the peer's retransmission tries again later.
            if (!listener.HasRoom)
            {
                _statistics.Increment("tcp.drop.listen-queue-full");
                return;
            }
            var config = r.Destination.IsIpv6 ? _tcpConfig6 : _tcpConfig4;
            var (core, output) = TcpEngine.accept(config, Iss(key, now), now, seg);
            var connection = new TcpConnection(this, Options.TcpSendBufferBytes, Options.TcpReceiveBufferBytes,
                new IPEndPoint(r.Destination.ToIPAddress(), r.DestinationPort), new IPEndPoint(r.Source.ToIPAddress(), r.SourcePort))
            {
                Core = core,
                LocalAddress = r.Destination,
                LocalPort = r.DestinationPort,
                RemoteAddress = r.Source,
                RemotePort = r.SourcePort,
            };
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
            Execute(connection, output, payload, now);
            return;
        }
        // RFC 9293 §3.10.7.1: no connection (and no listener taking it): RST unless it is one.
        _statistics.Increment("tcp.drop.no-connection");
        var reset = TcpEngine.resetFor(seg);
        if (reset.IsSome)
        {
            Transmit(r.Destination, r.DestinationPort, r.Source, r.SourcePort, reset.Value, null, now);
            _statistics.Increment("tcp.rst.sent");
        }
    }

    // Carries out the core's actions for connection c, in order, then queues its next timer.
    private void Execute(TcpConnection c, TcpOutput output, ReadOnlySpan<byte> payload, long now)
    {
        for (var actions = output.Actions; !actions.IsEmpty; actions = actions.Tail)
        {
            switch (actions.Head)
            {
                case TcpAction.Transmit t:
                    Transmit(c.LocalAddress, c.LocalPort, c.RemoteAddress, c.RemotePort, t.segment, c, now);
                    break;
                case TcpAction.StoreReceived s:
                    c.Store(payload.Slice(s.payloadOffset, s.length), s.position);
                    break;
                case TcpAction.Deliver d:
                    c.Deliver(d.upTo);
                    break;
                case TcpAction.Event e:
                    OnTcpEvent(c, e.@event);
                    break;
                case TcpAction.Transition t:
                    c.OnState(t.transition.To);
                    break;
            }
        }
        if (c.Orphaned && !c.Removed && c.Core.Consumed < c.Core.Delivered)
        {
            // Nobody reads an orphaned connection: keep its window open so the peer can finish.
            var (core, more) = TcpEngine.receiveWindowUpdate(now, c.Core.Delivered - c.Core.Consumed, c.Core);
            c.Core = core;
            Execute(c, more, default, now);
            return;
        }
        var deadline = output.NextDeadline;
        if (deadline.IsSome && !c.Removed && deadline.Value < c.TimerAt)
        {
            c.TimerAt = deadline.Value;
            _tcpTimers.Enqueue(c, deadline.Value);
        }
    }

    private void OnTcpEvent(TcpConnection c, TcpEvent e)
    {
        switch (e.Tag)
        {
            case TcpEvent.Tags.Connected:
                _statistics.Increment("tcp.connected");
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
                c.Fail(SocketError.ConnectionRefused);
                break;
            case TcpEvent.Tags.Reset:
                _statistics.Increment("tcp.reset-received");
                c.Fail(SocketError.ConnectionReset);
                break;
            case TcpEvent.Tags.TimedOut:
                _statistics.Increment("tcp.timed-out");
                c.Fail(SocketError.TimedOut);
                break;
            case TcpEvent.Tags.PeerClosed:
                c.PeerClosed();
                break;
            case TcpEvent.Tags.Closed:
                RemoveTcp(c);
                break;
            case TcpEvent.Tags.SendBufferFreed:
                c.Acknowledged(((TcpEvent.SendBufferFreed)e).bytes);
                break;
            case TcpEvent.Tags.FastRetransmit:
                _statistics.Increment("tcp.retransmit.fast");
                break;
        }
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
        c.OnClosed();
    }

    // Builds one segment (payload copied straight from the send ring into the packet) and sends it.
    private void Transmit(IpAddr local, ushort localPort, IpAddr remote, ushort remotePort, OutgoingSegment segment, TcpConnection? c, long now)
    {
        int offset = IpLayer.tcpPayloadOffset(local, segment.Options);
        var data = _packetBuffer.AsSpan(offset, segment.DataLength);
        if (segment.DataLength > 0)
            c!.CopySendData(segment.DataPosition, data);
        int length = IpLayer.writeTcp(local, remote, localPort, remotePort, NextIdentification(), segment, data, _packetBuffer);
        SendPacket(length, remote, now);
        _statistics.Increment("tcp.sent");
    }

    // ------------------------------------------------------------------------------------------
    // Timers and shutdown
    // ------------------------------------------------------------------------------------------

    private long NextTcpDeadline() => _tcpTimers.TryPeek(out _, out long at) ? at : long.MaxValue;

    private void RunTcpTimers(long now)
    {
        while (_tcpTimers.TryPeek(out var c, out long at) && at <= now)
        {
            _tcpTimers.Dequeue();
            if (at != c.TimerAt || c.Removed)
                continue;
            c.TimerAt = long.MaxValue;
            int retries = c.Core.Retries;
            var (core, output) = TcpEngine.handleTimer(now, c.Core);
            // Retries grows only when the retransmission timer fired with data outstanding
            // (RFC 6298 §5.4); the metrics report it.
            if (core.Retries > retries)
                _statistics.Increment("tcp.retransmission-timeout");
            c.Core = core;
            Execute(c, output, default, now);
        }
    }

    private void DisposeTcp()
    {
        List<TcpListener> listeners;
        lock (_portGate)
            listeners = [.. _tcpListen4.Values.Union(_tcpListen6.Values)];
        foreach (var listener in listeners)
            listener.Dispose();
        foreach (var c in _tcp.Values)
        {
            c.Removed = true;
            c.StackDisposed();
        }
        _tcp.Clear();
        _tcpTimers.Clear();
    }
}
