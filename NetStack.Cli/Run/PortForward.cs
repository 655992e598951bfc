using System.Buffers;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace NetStack.Cli.Run;

/// <summary>
/// One inbound port forward of <c>netstack run -p [tcp|udp]:[HOST_ADDR:]HOST_PORT:NS_PORT</c>:
/// a host socket on HOST_ADDR:HOST_PORT (all addresses of both families when HOST_ADDR is left
/// out, as pasta's <c>-t</c>/<c>-u</c> bind) whose traffic goes to NS_PORT of the namespace's
/// address (the IPv4 one when the namespace has one, else the IPv6 one).
/// </summary>
/// <param name="Udp">UDP rather than TCP.</param>
/// <param name="HostAddress">The host address to listen on; null: every address, IPv4 and IPv6.</param>
/// <param name="HostPort">The host port (1..65535).</param>
/// <param name="NamespacePort">The port in the namespace (1..65535).</param>
public sealed record PortForwardSpec(bool Udp, IPAddress? HostAddress, int HostPort, int NamespacePort)
{
    /// <summary>The protocol name as written.</summary>
    public string Protocol => Udp ? "udp" : "tcp";

    /// <summary>The spec as <c>-p</c> takes it.</summary>
    public override string ToString() =>
        HostAddress is null ? $"{Protocol}:{HostPort}:{NamespacePort}"
        : HostAddress.AddressFamily == AddressFamily.InterNetworkV6 ? $"{Protocol}:[{HostAddress}]:{HostPort}:{NamespacePort}"
        : $"{Protocol}:{HostAddress}:{HostPort}:{NamespacePort}";

    /// <summary>
    /// Parses <c>[tcp|udp:][HOST_ADDR:]HOST_PORT:NS_PORT</c>; an IPv6 HOST_ADDR goes in brackets
    /// (<c>tcp:[::1]:8080:80</c>). Throws <see cref="UsageException"/> naming what is wrong.
    /// </summary>
    public static PortForwardSpec Parse(string text)
    {
        var rest = text;
        var udp = false;
        if (rest.StartsWith("tcp:", StringComparison.Ordinal))
            rest = rest[4..];
        else if (rest.StartsWith("udp:", StringComparison.Ordinal))
        {
            udp = true;
            rest = rest[4..];
        }
        else if (rest.IndexOf(':') is > 0 and var colon && rest[..colon].All(char.IsAsciiLetter))
            throw Bad(text, $"'{rest[..colon]}' is not a protocol: tcp or udp");
        IPAddress? host = null;
        if (rest.StartsWith('['))
        {
            var close = rest.IndexOf(']');
            if (close < 0 || close + 1 >= rest.Length || rest[close + 1] != ':'
                || !IPAddress.TryParse(rest[1..close], out host) || host.AddressFamily != AddressFamily.InterNetworkV6)
                throw Bad(text, "an IPv6 host address goes in brackets: tcp:[::1]:8080:80");
            rest = rest[(close + 2)..];
        }
        var parts = rest.Split(':');
        if (parts.Length == 3 && host is null)
        {
            if (!IPAddress.TryParse(parts[0], out host) || host.AddressFamily != AddressFamily.InterNetwork || parts[0].Count(c => c == '.') != 3)
                throw Bad(text, $"'{parts[0]}' is not an IPv4 host address");
            parts = parts[1..];
        }
        if (parts.Length != 2)
            throw Bad(text, "write [tcp|udp:][HOST_ADDR:]HOST_PORT:NS_PORT");
        return new PortForwardSpec(udp, host, Port(text, parts[0]), Port(text, parts[1]));
    }

    private static int Port(string spec, string text) =>
        text.Length is > 0 and <= 5 && text.All(char.IsAsciiDigit) && int.Parse(text, CultureInfo.InvariantCulture) is >= 1 and <= 65535 and var port
            ? port
            : throw Bad(spec, $"'{text}' is not a port (1..65535)");

    private static UsageException Bad(string spec, string message) => Cli.Bad("-p", $"'{spec}': {message}");
}

/// <summary>Counters of the inbound forwards, printed with the stack's by <c>--stats</c>.</summary>
public sealed class PortForwardCounters
{
    /// <summary>TCP connections accepted on a host socket and spliced into the namespace.</summary>
    public long TcpSpliced;

    /// <summary>TCP connections refused (reset) because the namespace refused or the connection limit was reached.</summary>
    public long TcpRefused;

    /// <summary>TCP splices that ended in a reset (an error on either side).</summary>
    public long TcpReset;

    /// <summary>UDP flows (host source addresses) opened.</summary>
    public long UdpFlows;

    /// <summary>UDP flows closed after their idle timeout.</summary>
    public long UdpExpired;

    /// <summary>UDP datagrams dropped: the flow limit was reached, or a send failed.</summary>
    public long UdpDropped;

    /// <summary>The counters as name/value pairs ("publish.*").</summary>
    public IEnumerable<KeyValuePair<string, long>> Snapshot() =>
    [
        new("publish.tcp.spliced", Interlocked.Read(ref TcpSpliced)),
        new("publish.tcp.refused", Interlocked.Read(ref TcpRefused)),
        new("publish.tcp.reset", Interlocked.Read(ref TcpReset)),
        new("publish.udp.flows", Interlocked.Read(ref UdpFlows)),
        new("publish.udp.expired", Interlocked.Read(ref UdpExpired)),
        new("publish.udp.dropped", Interlocked.Read(ref UdpDropped)),
    ];
}

/// <summary>
/// The inbound forwards of one <c>netstack run</c>: host sockets opened before the command starts
/// (so a port in use is an error before anything runs), served until disposed.
/// </summary>
public sealed class PortForwards : IAsyncDisposable
{
    /// <summary>The splice buffer per direction of a TCP connection.</summary>
    public const int SpliceBufferBytes = 256 * 1024;

    /// <summary>At most this many TCP connections per forward at once; more are reset.</summary>
    public const int MaxTcpConnections = 1024;

    /// <summary>At most this many UDP flows (host source addresses) per forward; datagrams of more are dropped.</summary>
    public const int MaxUdpFlows = 1024;

    /// <summary>A UDP flow with no datagram either way for this long is closed.</summary>
    public static readonly TimeSpan UdpIdleTimeout = TimeSpan.FromSeconds(60);

    /// <summary>How long a connection into the namespace may take.</summary>
    public static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(20);

    private readonly List<Socket> _sockets = [];
    private readonly List<(PortForwardSpec Spec, Socket Socket)> _bound = [];
    private readonly List<Task> _loops = [];

    // The TCP splices running, so that disposing waits for them (they end at once when _stop fires).
    private readonly HashSet<Task> _splices = [];
    private readonly Lock _splicesGate = new();
    private readonly CancellationTokenSource _stop = new();
    private int _disposed;

    /// <summary>The counters.</summary>
    public PortForwardCounters Counters { get; } = new();

    /// <summary>Opens the host sockets; throws <see cref="SocketException"/> (port in use, address not here).</summary>
    public static PortForwards Bind(IReadOnlyList<PortForwardSpec> specs)
    {
        var forwards = new PortForwards();
        try
        {
            foreach (var spec in specs)
            {
                var address = spec.HostAddress ?? IPAddress.IPv6Any;
                var socket = new Socket(address.AddressFamily, spec.Udp ? SocketType.Dgram : SocketType.Stream, spec.Udp ? ProtocolType.Udp : ProtocolType.Tcp);
                forwards._sockets.Add(socket);
                if (spec.HostAddress is null)
                    socket.DualMode = true;
                if (!spec.Udp)
                    socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
                socket.Bind(new IPEndPoint(address, spec.HostPort));
                if (!spec.Udp)
                    socket.Listen(512);
                forwards._bound.Add((spec, socket));
            }
        }
        catch
        {
            foreach (var s in forwards._sockets)
                s.Dispose();
            throw;
        }
        return forwards;
    }

    /// <summary>Starts serving into <paramref name="stack"/>: to <paramref name="target4"/> or <paramref name="target6"/> (either may be null).</summary>
    public void Start(NetworkStack stack, IPAddress? target4, IPAddress? target6)
    {
        foreach (var (spec, socket) in _bound)
        {
            _loops.Add(spec.Udp
                ? Task.Run(() => new UdpForward(stack, socket, spec.NamespacePort, target4, target6, Counters, _stop.Token).RunAsync())
                : Task.Run(() => AcceptLoopAsync(stack, socket, spec.NamespacePort, target4, target6)));
        }
    }

    // The namespace address every forward goes to: the IPv4 one when the namespace has one
    // (whatever the host side's family: a server listening on 0.0.0.0 or on a dual-stack [::]
    // takes it), else the IPv6 one.
    private static IPAddress Target(IPAddress? target4, IPAddress? target6) => (target4 ?? target6)!;

    private async Task AcceptLoopAsync(NetworkStack stack, Socket listener, int port, IPAddress? target4, IPAddress? target6)
    {
        var active = 0;
        while (!_stop.IsCancellationRequested)
        {
            Socket host;
            try
            {
                host = await listener.AcceptAsync(_stop.Token);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                if (_stop.IsCancellationRequested)
                    return;
                continue;
            }
            if (Interlocked.Increment(ref active) > MaxTcpConnections)
            {
                Interlocked.Decrement(ref active);
                Interlocked.Increment(ref Counters.TcpRefused);
                Reset(host);
                continue;
            }
            var target = new IPEndPoint(Target(target4, target6), port);
            var splice = Task.Run(async () =>
            {
                try
                {
                    await SpliceAsync(stack, host, target);
                }
                finally
                {
                    Interlocked.Decrement(ref active);
                }
            });
            lock (_splicesGate)
                _splices.Add(splice);
            _ = splice.ContinueWith(t =>
            {
                lock (_splicesGate)
                    _splices.Remove(t);
            }, TaskScheduler.Default);
        }
    }

    // Closes a host socket with a RST (SO_LINGER 0) rather than a FIN.
    private static void Reset(Socket socket)
    {
        try
        {
            socket.LingerState = new LingerOption(true, 0);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
        socket.Dispose();
    }

    private async Task SpliceAsync(NetworkStack stack, Socket host, IPEndPoint target)
    {
        TcpConnection ns;
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            timeout.CancelAfter(ConnectTimeout);
            ns = await stack.ConnectTcpAsync(target, timeout.Token);
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException or ArgumentException)
        {
            Interlocked.Increment(ref Counters.TcpRefused);
            Reset(host);
            return;
        }
        Interlocked.Increment(ref Counters.TcpSpliced);
        try
        {
            // Each side's segments go on as they come: Nagle is the sender's business.
            host.NoDelay = true;
            ns.NoDelay = true;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            Interlocked.Increment(ref Counters.TcpReset);
            ns.Abort();
            Reset(host);
            await ns.DisposeAsync();
            return;
        }
        var failed = 0;
        void Fail()
        {
            if (Interlocked.Exchange(ref failed, 1) != 0)
                return;
            Interlocked.Increment(ref Counters.TcpReset);
            ns.Abort();
            Reset(host);
        }
        using var stopping = _stop.Token.Register(Fail);
        var up = PumpAsync(async buffer => await host.ReceiveAsync(buffer), buffer => ns.WriteAsync(buffer), ns.ShutdownWrite, Fail);
        var down = PumpAsync(buffer => ns.ReadAsync(buffer), async buffer => await host.SendAsync(buffer), () => host.Shutdown(SocketShutdown.Send), Fail);
        await Task.WhenAll(up, down);
        if (Volatile.Read(ref failed) == 0)
        {
            await ns.DisposeAsync();
            host.Dispose();
        }
        else
        {
            await ns.DisposeAsync();
        }
    }

    // Copies one direction until end of file (then half-closes the other side: the FIN passes
    // through) or an error (then both sides are reset).
    private static async Task PumpAsync(Func<Memory<byte>, ValueTask<int>> read, Func<ReadOnlyMemory<byte>, ValueTask> write, Action finish, Action fail)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(SpliceBufferBytes);
        try
        {
            while (true)
            {
                var n = await read(buffer);
                if (n == 0)
                {
                    finish();
                    return;
                }
                await write(buffer.AsMemory(0, n));
            }
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or OperationCanceledException)
        {
            fail();
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Closes the host sockets, resets the TCP splices and closes the UDP flows; waits for the loops. Idempotent.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        await _stop.CancelAsync();
        foreach (var s in _sockets)
            s.Dispose();
        Task[] splices;
        lock (_splicesGate)
            splices = [.. _splices];
        try
        {
            await Task.WhenAll(_loops.Concat(splices));
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
        {
        }
    }

    /// <summary>One UDP forward: per host source a stack socket to the namespace port; replies go back to that source.</summary>
    private sealed class UdpForward(NetworkStack stack, Socket host, int port, IPAddress? target4, IPAddress? target6, PortForwardCounters counters, CancellationToken stop)
    {
        private readonly Dictionary<EndPoint, Flow> _flows = [];
        private readonly Lock _gate = new();

        private sealed class Flow(UdpSocket socket, IPEndPoint source, IPEndPoint target)
        {
            public UdpSocket Socket { get; } = socket;
            public IPEndPoint Source { get; } = source;
            public IPEndPoint Target { get; } = target;
            public long LastActive = Environment.TickCount64;
        }

        public async Task RunAsync()
        {
            var sweeper = SweepAsync();
            var buffer = new byte[65536];
            EndPoint any = new IPEndPoint(host.AddressFamily == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Any : IPAddress.Any, 0);
            while (!stop.IsCancellationRequested)
            {
                SocketReceiveFromResult received;
                try
                {
                    received = await host.ReceiveFromAsync(buffer, any, stop);
                }
                catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
                {
                    break;
                }
                catch (SocketException)
                {
                    // An ICMP error for an earlier reply (ECONNREFUSED on Linux): nothing to do.
                    continue;
                }
                var source = (IPEndPoint)received.RemoteEndPoint;
                var flow = FlowFor(source);
                if (flow is null)
                {
                    Interlocked.Increment(ref counters.UdpDropped);
                    continue;
                }
                Volatile.Write(ref flow.LastActive, Environment.TickCount64);
                try
                {
                    await flow.Socket.SendToAsync(buffer.AsMemory(0, received.ReceivedBytes), flow.Target, stop);
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException or ArgumentException)
                {
                    Interlocked.Increment(ref counters.UdpDropped);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
            }
            lock (_gate)
            {
                foreach (var flow in _flows.Values)
                    flow.Socket.Dispose();
                _flows.Clear();
            }
            await sweeper;
        }

        private Flow? FlowFor(IPEndPoint source)
        {
            lock (_gate)
            {
                if (_flows.TryGetValue(source, out var flow))
                    return flow;
                if (_flows.Count >= MaxUdpFlows)
                    return null;
                var target = new IPEndPoint(Target(target4, target6), port);
                UdpSocket socket;
                try
                {
                    socket = stack.BindUdp(new IPEndPoint(target.AddressFamily == AddressFamily.InterNetworkV6 ? stack.Options.Address6! : stack.Options.Address!, 0));
                }
                catch (Exception e) when (e is SocketException or ArgumentException or ObjectDisposedException)
                {
                    return null;
                }
                flow = new Flow(socket, source, target);
                _flows[source] = flow;
                Interlocked.Increment(ref counters.UdpFlows);
                _ = ReplyLoopAsync(flow);
                return flow;
            }
        }

        private async Task ReplyLoopAsync(Flow flow)
        {
            var buffer = new byte[65536];
            while (true)
            {
                SocketReceiveFromResult received;
                try
                {
                    received = await flow.Socket.ReceiveFromAsync(buffer, stop);
                }
                catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
                {
                    return;
                }
                // Only the namespace's port speaks for this flow.
                if (!received.RemoteEndPoint.Equals(flow.Target))
                    continue;
                Volatile.Write(ref flow.LastActive, Environment.TickCount64);
                try
                {
                    await host.SendToAsync(buffer.AsMemory(0, received.ReceivedBytes), flow.Source, stop);
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException)
                {
                    Interlocked.Increment(ref counters.UdpDropped);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        }

        private async Task SweepAsync()
        {
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    await Task.Delay(TimeSpan.FromSeconds(1), stop);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
                var now = Environment.TickCount64;
                lock (_gate)
                {
                    foreach (var (source, flow) in _flows.ToList())
                    {
                        if (now - Volatile.Read(ref flow.LastActive) < UdpIdleTimeout.TotalMilliseconds)
                            continue;
                        flow.Socket.Dispose();
                        _flows.Remove(source);
                        Interlocked.Increment(ref counters.UdpExpired);
                    }
                }
            }
        }
    }
}
