using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Microsoft.FSharp.Collections;
using Microsoft.FSharp.Core;
using NetStack.Core.Stack;
using NetStack.Core.Wire;

namespace NetStack;

// DNS: the stub resolver (its decisions in Core's DnsResolver; here the sockets, the timer and
// the callers waiting), name-based connections with Happy Eyeballs v2 (RFC 8305).
public sealed partial class NetworkStack
{
    private DnsClient? _dns;
    private readonly object _dnsGate = new();

    private static void ValidateDns(NetStackOptions options)
    {
        if (options.DnsServers is null)
            return;
        foreach (var server in options.DnsServers)
        {
            if (server is null)
                throw new ArgumentException("DnsServers holds a null address.", nameof(options));
            if (server.AddressFamily is not (AddressFamily.InterNetwork or AddressFamily.InterNetworkV6)
                || server.Equals(IPAddress.Any) || server.Equals(IPAddress.IPv6Any)
                || server.Equals(IPAddress.Broadcast) || server.IsIPv6Multicast)
                throw new ArgumentException($"DNS server {server} is not a unicast IPv4 or IPv6 address.", nameof(options));
        }
    }

    /// <summary>
    /// The DNS servers in effect: <see cref="NetStackOptions.DnsServers"/> first, then those the
    /// link taught in TAP mode (DHCP option 6, RDNSS of router advertisements), without repeats.
    /// A snapshot.
    /// </summary>
    public IReadOnlyList<IPAddress> DnsServers
    {
        get
        {
            var list = new List<IPAddress>();
            foreach (var a in (IEnumerable<IPAddress>?)Options.DnsServers ?? [])
            {
                if (!list.Contains(a))
                    list.Add(a);
            }
            foreach (var a in _ethernet?.LearnedDnsServers ?? [])
            {
                if (!list.Contains(a))
                    list.Add(a);
            }
            return list;
        }
    }

    /// <summary>
    /// Resolves <paramref name="host"/> to addresses with the stack's own DNS stub resolver,
    /// over the stack's UDP (a fresh random port and ID per query, RFC 5452) and TCP when an
    /// answer is truncated (RFC 7766), asking <see cref="DnsServers"/> in order. Answers are
    /// cached for their TTL, negative ones for the SOA minimum (RFC 2308); concurrent callers
    /// of one name share its query. The addresses come in RFC 6724 destination order (see
    /// docs/dns.md). An IP literal returns itself, "localhost" the loopback addresses.
    /// </summary>
    /// <param name="host">A host name (internationalized names are converted to their ASCII form) or an IP literal.</param>
    /// <param name="family"><see cref="AddressFamily.Unspecified"/> (A and AAAA), <see cref="AddressFamily.InterNetwork"/> (A) or <see cref="AddressFamily.InterNetworkV6"/> (AAAA).</param>
    /// <param name="cancellationToken">Cancels the wait (the query itself goes on for others and the cache).</param>
    /// <returns>The addresses (empty for an IP literal or localhost of the other family, as <see cref="System.Net.Dns.GetHostAddressesAsync(string, AddressFamily, CancellationToken)"/>).</returns>
    /// <exception cref="SocketException">HostNotFound when the name does not exist (NXDOMAIN) or no DNS server is configured; NoData when it has no address of the family; TryAgain when no server answered in time or all failed (SERVFAIL, REFUSED).</exception>
    /// <exception cref="ArgumentException"><paramref name="host"/> is not a valid host name, or <paramref name="family"/> is another family.</exception>
    /// <exception cref="OperationCanceledException">The token was canceled.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public async ValueTask<IPAddress[]> ResolveAsync(string host, AddressFamily family = AddressFamily.Unspecified, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(host);
        if (family is not (AddressFamily.Unspecified or AddressFamily.InterNetwork or AddressFamily.InterNetworkV6))
            throw new ArgumentException($"Address family {family} is not Unspecified, InterNetwork or InterNetworkV6.", nameof(family));
        ObjectDisposedException.ThrowIf(_disposed, this);
        cancellationToken.ThrowIfCancellationRequested();
        string text = host.StartsWith('[') && host.EndsWith(']') ? host[1..^1] : host;
        if (IPAddress.TryParse(text, out var literal))
            return family == AddressFamily.Unspecified || literal.AddressFamily == family ? [literal] : [];
        string name = AsciiName(host);
        // RFC 6761 §6.3: localhost and names under it are the loopback, never asked.
        if (name.Equals("localhost", StringComparison.OrdinalIgnoreCase) || name.EndsWith(".localhost", StringComparison.OrdinalIgnoreCase))
        {
            return family switch
            {
                AddressFamily.InterNetwork => [IPAddress.Loopback],
                AddressFamily.InterNetworkV6 => [IPAddress.IPv6Loopback],
                _ => [IPAddress.IPv6Loopback, IPAddress.Loopback],
            };
        }
        var client = DnsClientFor(name);
        var tasks = family == AddressFamily.Unspecified
            ? new[] { client.QueryAsync(name, Core.Wire.Dns.TypeAaaa, cancellationToken), client.QueryAsync(name, Core.Wire.Dns.TypeA, cancellationToken) }
            : new[] { client.QueryAsync(name, family == AddressFamily.InterNetwork ? Core.Wire.Dns.TypeA : Core.Wire.Dns.TypeAaaa, cancellationToken) };
        var outcomes = await Task.WhenAll(tasks).ConfigureAwait(false);
        return Addresses(host, DnsOutcome.combine(ListModule.OfSeq(outcomes)));
    }

    // The ASCII form of a host name (IDNA, as Dns does), checked as a DNS name.
    private static string AsciiName(string host)
    {
        string name;
        try
        {
            name = new IdnMapping().GetAscii(host.EndsWith('.') ? host[..^1] : host);
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"'{host}' is not a valid host name: {e.Message}", nameof(host), e);
        }
        if (name.Length == 0 || !Core.Wire.Dns.isValidName(name))
            throw new ArgumentException($"'{host}' is not a valid host name.", nameof(host));
        return name;
    }

    // The resolver, made on first use; its server list follows DnsServers (see DnsClient).
    private DnsClient DnsClientFor(string name)
    {
        var servers = DnsServers;
        if (servers.Count == 0)
        {
            throw new SocketException((int)SocketError.HostNotFound,
                $"Cannot resolve '{name}': the stack has no DNS server (set NetStackOptions.DnsServers, or --dns ADDRESS on the command line).");
        }
        lock (_dnsGate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _dns ??= new DnsClient(this);
            _dns.UseServers(servers);
            return _dns;
        }
    }

    // An outcome as ResolveAsync returns it: the addresses in RFC 6724 order, or the
    // SocketException .NET's Dns class throws for the same failure.
    private IPAddress[] Addresses(string host, DnsResult result)
    {
        if (result is DnsResult.Addresses found)
            return [.. OrderDestinations(found.addresses).Select(a => a.ToIPAddress())];
        var failure = ((DnsResult.Failed)result).Item;
        var (error, why) = failure.Tag switch
        {
            DnsFailure.Tags.NameError => (SocketError.HostNotFound, "the name does not exist (NXDOMAIN)"),
            DnsFailure.Tags.NoData => (SocketError.NoData, "the name has no address of the family asked (NODATA)"),
            DnsFailure.Tags.ServerFailure => (SocketError.TryAgain, "every DNS server failed (SERVFAIL or REFUSED)"),
            _ => (SocketError.TryAgain, "no DNS server answered in time"),
        };
        throw new SocketException((int)error, $"Cannot resolve '{host}': {why}.");
    }

    private FSharpList<IpAddr> OrderDestinations(FSharpList<IpAddr> addresses)
    {
        var v4 = SourceFor(IpAddr.NewV4(Ipv4Address.Any));
        var v6 = SourceFor(IpAddr.NewV6(Ipv6Address.Any));
        return DestinationOrder.order(
            v4 is { } a ? FSharpValueOption<Ipv4Address>.NewValueSome(a.ipv4) : FSharpValueOption<Ipv4Address>.ValueNone,
            v6 is { } b ? FSharpValueOption<Ipv6Address>.NewValueSome(b.ipv6) : FSharpValueOption<Ipv6Address>.ValueNone,
            addresses);
    }

    /// <summary>
    /// Connects to <paramref name="remote"/> by name with Happy Eyeballs version 2 (RFC 8305): the
    /// AAAA and A questions go out together; an IPv4 answer waits up to 50 ms for the IPv6 one;
    /// the addresses in RFC 6724 order are interleaved by family and tried one after another,
    /// the next starting 250 ms after the previous or as soon as it fails, and the first
    /// connection made wins (the others are aborted). An IP literal connects directly.
    /// </summary>
    /// <param name="remote">The host and port (1..65535); <see cref="DnsEndPoint.AddressFamily"/> Unspecified, or one family to use only.</param>
    /// <param name="cancellationToken">Cancels resolution and every attempt.</param>
    /// <returns>The established connection.</returns>
    /// <exception cref="SocketException">The resolution's errors (see <see cref="ResolveAsync"/>); when every attempt failed, the last attempt's error (ConnectionRefused, TimedOut ...), as Socket.ConnectAsync(DnsEndPoint) reports.</exception>
    /// <exception cref="ArgumentException">The host or port is unusable.</exception>
    /// <exception cref="OperationCanceledException">The token was canceled.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public async ValueTask<TcpConnection> ConnectTcpAsync(DnsEndPoint remote, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(remote);
        if (remote.Port is <= 0 or > 65535)
            throw new ArgumentException($"Port {remote.Port} is not a destination port (1..65535).", nameof(remote));
        string host = remote.Host.StartsWith('[') && remote.Host.EndsWith(']') ? remote.Host[1..^1] : remote.Host;
        if (IPAddress.TryParse(host, out var literal))
            return await ConnectTcpAsync(new IPEndPoint(literal, remote.Port), cancellationToken).ConfigureAwait(false);
        using var race = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        bool want6 = remote.AddressFamily != AddressFamily.InterNetwork && _address6 is not null;
        bool want4 = remote.AddressFamily != AddressFamily.InterNetworkV6 && _address4 is not null;
        if (!want4 && !want6)
            throw new ArgumentException($"The stack has no address of family {remote.AddressFamily} to connect from.", nameof(remote));
        var resolve6 = want6 ? ResolveAsync(host, AddressFamily.InterNetworkV6, race.Token).AsTask() : null;
        var resolve4 = want4 ? ResolveAsync(host, AddressFamily.InterNetwork, race.Token).AsTask() : null;
        var attempts = new List<Task<TcpConnection>>();
        TcpConnection? winner = null;
        try
        {
            winner = await RaceAsync(remote.Port, resolve6, resolve4, attempts, race.Token).ConfigureAwait(false);
            return winner;
        }
        finally
        {
            race.Cancel();
            // Losers: an attempt that still connects after the winner is closed at once.
            foreach (var attempt in attempts)
            {
                _ = attempt.ContinueWith(static (t, winner) =>
                {
                    if (t.IsCompletedSuccessfully && !ReferenceEquals(t.Result, winner))
                        t.Result.Abort();
                }, winner, CancellationToken.None,
                    TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            }
            _ = resolve6?.ContinueWith(static t => _ = t.Exception, TaskScheduler.Default);
            _ = resolve4?.ContinueWith(static t => _ = t.Exception, TaskScheduler.Default);
        }
    }

    // RFC 8305 §3–§5, with the numbers from Core's HappyEyeballs.
    private async Task<TcpConnection> RaceAsync(int port, Task<IPAddress[]>? resolve6, Task<IPAddress[]>? resolve4,
        List<Task<TcpConnection>> attempts, CancellationToken token)
    {
        var resolutionDelay = TimeSpan.FromMicroseconds(HappyEyeballs.ResolutionDelayMicroseconds);
        var attemptDelay = TimeSpan.FromMicroseconds(HappyEyeballs.ConnectionAttemptDelayMicroseconds);
        var resolutions = new List<Task<IPAddress[]>>();
        if (resolve6 is not null)
            resolutions.Add(resolve6);
        if (resolve4 is not null)
            resolutions.Add(resolve4);
        // §3: start on the AAAA answer at once; on the A answer wait up to the resolution delay
        // for AAAA (or until it fails).
        var first = await Task.WhenAny(resolutions).ConfigureAwait(false);
        if (first == resolve4 && resolve6 is { IsCompleted: false })
            await Task.WhenAny(resolve6, Task.Delay(resolutionDelay, token)).ConfigureAwait(false);
        token.ThrowIfCancellationRequested();

        var tried = new HashSet<IPAddress>();
        var queue = new List<IPAddress>();
        var taken = new HashSet<Task<IPAddress[]>>();
        Exception? lastError = null;
        Exception? resolutionError = null;
        var running = new List<Task<TcpConnection>>();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var nextAttempt = TimeSpan.Zero;

        void TakeResolutions()
        {
            bool added = false;
            foreach (var r in resolutions)
            {
                if (!r.IsCompleted || !taken.Add(r))
                    continue;
                if (r.IsCompletedSuccessfully)
                {
                    foreach (var a in r.Result)
                    {
                        if (!tried.Contains(a) && !queue.Contains(a))
                        {
                            queue.Add(a);
                            added = true;
                        }
                    }
                }
                else if (r.Exception?.InnerException is { } e && e is not OperationCanceledException)
                {
                    // A "no such name" outranks a "no address of this family" (NoData) from the other.
                    if (resolutionError is not SocketException { SocketErrorCode: SocketError.HostNotFound })
                        resolutionError = e;
                }
            }
            if (added)
            {
                // §4: the remaining candidates in RFC 6724 order, interleaved by family.
                var ordered = HappyEyeballs.interleave(OrderDestinations(ListModule.OfSeq(queue.Select(IpAddr.OfIPAddress))));
                queue = [.. ordered.Select(a => a.ToIPAddress())];
            }
        }

        TakeResolutions();
        while (true)
        {
            token.ThrowIfCancellationRequested();
            foreach (var done in running.Where(t => t.IsCompleted).ToList())
            {
                running.Remove(done);
                if (done.IsCompletedSuccessfully)
                    return done.Result;
                lastError = done.Exception?.InnerException ?? lastError;
                nextAttempt = TimeSpan.Zero; // §5: a failure starts the next attempt at once.
            }
            TakeResolutions();
            if (queue.Count > 0 && (running.Count == 0 || clock.Elapsed >= nextAttempt))
            {
                var address = queue[0];
                queue.RemoveAt(0);
                tried.Add(address);
                var attempt = ConnectTcpAsync(new IPEndPoint(address, port), token).AsTask();
                attempts.Add(attempt);
                running.Add(attempt);
                nextAttempt = clock.Elapsed + attemptDelay;
                continue;
            }
            bool resolving = resolutions.Any(r => !taken.Contains(r));
            if (running.Count == 0 && queue.Count == 0 && !resolving)
            {
                var error = lastError ?? resolutionError ?? new SocketException((int)SocketError.HostNotFound);
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(error);
            }
            var waits = new List<Task>(running);
            waits.AddRange(resolutions.Where(r => !taken.Contains(r)));
            if (queue.Count > 0)
                waits.Add(Task.Delay(nextAttempt - clock.Elapsed is var d && d > TimeSpan.Zero ? d : TimeSpan.Zero, token));
            await Task.WhenAny(waits).ConfigureAwait(false);
        }
    }

    // ------------------------------------------------------------------------------------------
    // The resolver's runtime
    // ------------------------------------------------------------------------------------------

    /// <summary>
    /// Runs Core's DnsResolver: holds its state under one lock, executes its actions (binds a UDP
    /// socket per transmission and reads answers from it, makes the TCP exchanges, completes
    /// the callers), and wakes it at its next deadline. It moves bytes; the resolver decides.
    /// </summary>
    private sealed class DnsClient : IDisposable
    {
        private readonly NetworkStack _stack;
        private readonly object _gate = new();
        private DnsResolverState _state = DnsResolver.create(DnsResolver.defaultSettings([]));
        private IReadOnlyList<IPAddress> _servers = [];
        private readonly Dictionary<DnsKey, List<TaskCompletionSource<DnsResult>>> _waiters = [];
        private readonly Dictionary<ushort, UdpSocket> _sockets = [];
        private readonly Dictionary<DnsKey, CancellationTokenSource> _tcp = [];
        private readonly Timer _timer;
        private bool _disposed;

        public DnsClient(NetworkStack stack)
        {
            _stack = stack;
            _timer = new Timer(_ => OnTimer());
        }

        // The server list follows the stack's (options, then learned); it changes only between
        // questions, when nothing outstanding refers to a server by its index.
        public void UseServers(IReadOnlyList<IPAddress> servers)
        {
            lock (_gate)
            {
                if (servers.SequenceEqual(_servers) || !_state.Queries.IsEmpty)
                    return;
                _servers = servers;
                var endpoints = servers.Select(a => Tuple.Create(IpAddr.OfIPAddress(a), (ushort)Core.Wire.Dns.Port)).ToArray();
                _state = new DnsResolverState(DnsResolver.defaultSettings(endpoints), _state.Cache, _state.Queries, _state.Ports);
            }
        }

        private static ulong Seed()
        {
            Span<byte> bytes = stackalloc byte[8];
            RandomNumberGenerator.Fill(bytes);
            return BitConverter.ToUInt64(bytes);
        }

        public Task<DnsResult> QueryAsync(string name, ushort type, CancellationToken cancellationToken)
        {
            var completion = new TaskCompletionSource<DnsResult>(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (_gate)
            {
                ObjectDisposedException.ThrowIf(_disposed, typeof(NetworkStack));
                var key = new DnsKey(DnsResolver.keyName(name), type);
                if (!_waiters.TryGetValue(key, out var list))
                    _waiters[key] = list = [];
                list.Add(completion);
                var (state, actions) = DnsResolver.resolve(_stack.Now(), Seed(), name, type, _state);
                _state = state;
                Execute(actions);
            }
            return cancellationToken.CanBeCanceled ? completion.Task.WaitAsync(cancellationToken) : completion.Task;
        }

        // Under _gate. Nothing here blocks on anything that takes _gate: BindUdp waits for the
        // engine loop, which never calls the resolver; sends and TCP exchanges run on their own.
        private void Execute(FSharpList<DnsAction> actions)
        {
            foreach (var action in actions)
            {
                switch (action)
                {
                    case DnsAction.SendUdp send:
                        SendUdp(send);
                        break;
                    case DnsAction.CloseUdp close:
                        if (_sockets.Remove(close.localPort, out var socket))
                            socket.Dispose();
                        break;
                    case DnsAction.SendTcp tcp:
                        var cancel = new CancellationTokenSource();
                        _tcp[tcp.key] = cancel;
                        _ = TcpExchangeAsync(tcp.key, new IPEndPoint(tcp.server.ToIPAddress(), tcp.serverPort), tcp.framed, cancel.Token);
                        break;
                    case DnsAction.CloseTcp closeTcp:
                        if (_tcp.Remove(closeTcp.key, out var source))
                        {
                            source.Cancel();
                            source.Dispose();
                        }
                        break;
                    case DnsAction.Complete complete:
                        if (_waiters.Remove(complete.key, out var waiters))
                        {
                            foreach (var w in waiters)
                                w.TrySetResult(complete.result);
                        }
                        break;
                    case DnsAction.Count count:
                        _stack._statistics.Increment(count.counter);
                        break;
                }
            }
            long deadline = DnsResolver.nextDeadline(_state);
            if (deadline == long.MaxValue)
                _timer.Change(Timeout.Infinite, Timeout.Infinite);
            else
                _timer.Change(Math.Max(0, (deadline - _stack.Now() + 999) / 1000), Timeout.Infinite);
        }

        private void SendUdp(DnsAction.SendUdp send)
        {
            UdpSocket socket;
            try
            {
                var any = send.server.IsIpv6 ? IPAddress.IPv6Any : IPAddress.Any;
                socket = _stack.BindUdp(new IPEndPoint(any, send.localPort));
            }
            catch (Exception e) when (e is SocketException or ArgumentException or ObjectDisposedException)
            {
                // The port is taken by a socket of the user's, no address of the family, or the
                // stack is going away: the attempt fails at once.
                var (state, actions) = DnsResolver.udpFailed(_stack.Now(), Seed(), send.localPort, _state);
                _state = state;
                Execute(actions);
                return;
            }
            _sockets[send.localPort] = socket;
            _ = ReceiveLoopAsync(socket, send.localPort);
            _ = SendAsync(socket, send.query, new IPEndPoint(send.server.ToIPAddress(), send.serverPort));
        }

        private static async Task SendAsync(UdpSocket socket, byte[] query, IPEndPoint server)
        {
            try
            {
                await socket.SendToAsync(query, server).ConfigureAwait(false);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                // Unsent: the retransmission timer covers it.
            }
        }

        private async Task ReceiveLoopAsync(UdpSocket socket, ushort localPort)
        {
            var buffer = new byte[65536];
            while (true)
            {
                SocketReceiveFromResult received;
                try
                {
                    received = await socket.ReceiveFromAsync(buffer).ConfigureAwait(false);
                }
                catch (Exception e) when (e is ObjectDisposedException or SocketException { SocketErrorCode: SocketError.OperationAborted })
                {
                    return;
                }
                catch (SocketException)
                {
                    continue;
                }
                var from = (IPEndPoint)received.RemoteEndPoint;
                lock (_gate)
                {
                    if (_disposed)
                        return;
                    var (state, actions) = DnsResolver.datagram(_stack.Now(), Seed(), localPort, IpAddr.OfIPAddress(from.Address),
                        (ushort)from.Port, buffer.AsSpan(0, received.ReceivedBytes), _state);
                    _state = state;
                    Execute(actions);
                }
            }
        }

        // RFC 1035 §4.2.2 / RFC 7766 §8: one framed query, one framed answer.
        private async Task TcpExchangeAsync(DnsKey key, IPEndPoint server, byte[] framed, CancellationToken token)
        {
            byte[]? answer = null;
            try
            {
                await using var connection = await _stack.ConnectTcpAsync(server, token).ConfigureAwait(false);
                await connection.WriteAsync(framed, token).ConfigureAwait(false);
                var prefix = new byte[2];
                await connection.ReadExactlyAsync(prefix, token).ConfigureAwait(false);
                var body = new byte[Core.Wire.Dns.tcpFrameLength(prefix)];
                await connection.ReadExactlyAsync(body, token).ConfigureAwait(false);
                answer = body;
            }
            catch (OperationCanceledException) when (token.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e) when (e is SocketException or IOException or ObjectDisposedException or ArgumentException)
            {
            }
            lock (_gate)
            {
                if (_disposed || token.IsCancellationRequested)
                    return;
                var (state, actions) = answer is null
                    ? DnsResolver.tcpFailed(_stack.Now(), Seed(), key, _state)
                    : DnsResolver.tcpAnswer(_stack.Now(), Seed(), key, answer, _state);
                _state = state;
                Execute(actions);
            }
        }

        private void OnTimer()
        {
            lock (_gate)
            {
                if (_disposed)
                    return;
                var (state, actions) = DnsResolver.timer(_stack.Now(), Seed(), _state);
                _state = state;
                try
                {
                    Execute(actions);
                }
                catch (ObjectDisposedException)
                {
                    // The stack was disposed meanwhile; its Dispose fails the callers.
                }
            }
        }

        public void Dispose()
        {
            lock (_gate)
            {
                if (_disposed)
                    return;
                _disposed = true;
                _timer.Dispose();
                foreach (var socket in _sockets.Values)
                    socket.Dispose();
                _sockets.Clear();
                foreach (var source in _tcp.Values)
                    source.Cancel();
                _tcp.Clear();
                var disposed = new ObjectDisposedException(nameof(NetworkStack));
                foreach (var list in _waiters.Values)
                {
                    foreach (var w in list)
                        w.TrySetException(disposed);
                }
                _waiters.Clear();
            }
        }
    }
}
