using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using NetStack;

namespace NetStack.Cli.Run;

/// <summary>
/// What <see cref="HostForwarder"/> does with the namespace's flows: the address mappings (the
/// gateway to the host's loopback, the DNS address to the upstream resolver) and the egress policy.
/// </summary>
public sealed record HostForwarderOptions
{
    /// <summary>The stack's IPv4 address (the namespace's gateway): flows to it go to 127.0.0.1, port for port.</summary>
    public IPAddress? Gateway { get; init; }

    /// <summary>The stack's IPv6 address: flows to it go to ::1.</summary>
    public IPAddress? Gateway6 { get; init; }

    /// <summary>The DNS addresses advertised in the namespace: port 53 there goes to <see cref="DnsUpstream"/>.</summary>
    public IReadOnlyList<IPAddress> Dns { get; init; } = [];

    /// <summary>The resolver DNS queries go to (UDP and TCP).</summary>
    public IPEndPoint? DnsUpstream { get; init; }

    /// <summary>May a flow to this host-side address and port be opened? (The egress policy; default: all.)</summary>
    public Func<IPAddress, int, bool> Allows { get; init; } = (_, _) => true;

    /// <summary>May an echo request to this host-side address be sent?</summary>
    public Func<IPAddress, bool> AllowsEcho { get; init; } = _ => true;

    /// <summary>
    /// The addresses flows may come from (the namespace's own): a packet with any other source is
    /// spoofed (BCP 38) and is neither dialled nor answered. Empty: any source.
    /// </summary>
    public IReadOnlyList<IPAddress> Sources { get; init; } = [];

    /// <summary>How long a TCP connect to the host side may take before the client gets a host unreachable.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>How long an echo request waits for the host side's reply.</summary>
    public TimeSpan EchoTimeout { get; init; } = TimeSpan.FromSeconds(5);
}

/// <summary>
/// The outbound half of <c>netstack run</c>: every TCP connection, UDP flow and echo request from
/// the namespace, to any address, re-opened as an ordinary socket of this process in the host's
/// network namespace (so the host's routing decides where it goes), after the egress policy.
/// A TCP request is answered only once the host-side connect succeeded: a refused connect is a
/// RST, an unreachable host an ICMP error, a denied destination an ICMP "administratively
/// prohibited". Bytes are spliced with 256 KiB buffers: one read from the stack (a whole
/// super-segment and more) is one write to the host socket and back.
/// </summary>
public sealed class HostForwarder : IAsyncDisposable
{
    private const int SpliceBuffer = 256 * 1024;
    private readonly HostForwarderOptions _options;
    private readonly CancellationTokenSource _stop = new();
    private readonly TcpForwarder _tcp;
    private readonly UdpForwarder _udp;
    private readonly EchoForwarder _echo;
    private readonly Task[] _loops;
    private readonly ConcurrentDictionary<string, long> _counters = new();
    private int _echoSequence;

    private HostForwarder(NetworkStack stack, HostForwarderOptions options)
    {
        _options = options;
        _tcp = stack.ForwardTcp();
        _udp = stack.ForwardUdp();
        _echo = stack.ForwardEcho();
        _loops =
        [
            Task.Run(() => AcceptLoop(_tcp.AcceptAsync, ForwardTcpAsync)),
            Task.Run(() => AcceptLoop(_udp.AcceptAsync, ForwardUdpAsync)),
            Task.Run(() => AcceptLoop(_echo.AcceptAsync, ForwardEchoAsync)),
        ];
    }

    /// <summary>Starts forwarding on <paramref name="stack"/> (started with <see cref="NetStackOptions.AnyDestination"/>).</summary>
    public static HostForwarder Start(NetworkStack stack, HostForwarderOptions options) => new(stack, options);

    /// <summary>What happened so far: "forward.NAME" counters (dialled, denied, refused, ...).</summary>
    public IReadOnlyDictionary<string, long> Counters => _counters;

    private void Count(string name) => _counters.AddOrUpdate(name, 1, (_, n) => n + 1);

    // A flow from an address that is not the namespace's: counted, never dialled.
    private bool Spoofed(IPAddress source, string kind)
    {
        if (_options.Sources.Count == 0 || _options.Sources.Contains(source))
            return false;
        Count($"forward.{kind}.spoofed-source");
        return true;
    }

    /// <summary>
    /// Where a flow to <paramref name="destination"/> goes on the host: the gateway maps to the
    /// loopback address of its family, the DNS address's port 53 to the upstream resolver;
    /// anything else stays as it is.
    /// </summary>
    /// <returns>The host-side endpoint, or null for a DNS address on another port than 53 or
    /// with no upstream (it is no host, so nothing is dialled).</returns>
    public IPEndPoint? HostSide(IPEndPoint destination)
    {
        var address = destination.Address;
        if (_options.Dns.Contains(address))
            return destination.Port == 53 ? _options.DnsUpstream : null;
        if (address.Equals(_options.Gateway))
            return new IPEndPoint(IPAddress.Loopback, destination.Port);
        if (address.Equals(_options.Gateway6))
            return new IPEndPoint(IPAddress.IPv6Loopback, destination.Port);
        return destination;
    }

    // Takes what a forwarder offers until it or this forwarder stops; each item is handled on
    // its own (a slow upstream holds up nothing else).
    private async Task AcceptLoop<T>(Func<CancellationToken, ValueTask<T>> accept, Func<T, Task> handle)
    {
        while (!_stop.IsCancellationRequested)
        {
            T item;
            try
            {
                item = await accept(_stop.Token);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            _ = handle(item);
        }
    }

    // ------------------------------------------------------------------------------------------
    // TCP
    // ------------------------------------------------------------------------------------------

    private async Task ForwardTcpAsync(TcpForwardRequest request)
    {
        if (Spoofed(request.RemoteEndPoint.Address, "tcp"))
        {
            Refuse(request, ForwardRefusal.Ignore);
            return;
        }
        var target = HostSide(request.LocalEndPoint);
        if (target is null)
        {
            Count("forward.tcp.no-upstream");
            Refuse(request, ForwardRefusal.Reset);
            return;
        }
        if (!_options.Allows(target.Address, target.Port))
        {
            Count("forward.tcp.denied");
            Refuse(request, ForwardRefusal.AdministrativelyProhibited);
            return;
        }
        var socket = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            timeout.CancelAfter(_options.ConnectTimeout);
            Count("forward.tcp.dialled");
            await socket.ConnectAsync(target, timeout.Token);
        }
        catch (Exception e)
        {
            socket.Dispose();
            var refusal = e is SocketException s
                ? s.SocketErrorCode switch
                {
                    SocketError.ConnectionRefused => ForwardRefusal.Reset,
                    SocketError.NetworkUnreachable => ForwardRefusal.NetworkUnreachable,
                    SocketError.AccessDenied => ForwardRefusal.AdministrativelyProhibited,
                    _ => ForwardRefusal.HostUnreachable,
                }
                : ForwardRefusal.HostUnreachable;
            Count(refusal == ForwardRefusal.Reset ? "forward.tcp.refused" : "forward.tcp.unreachable");
            Refuse(request, refusal);
            return;
        }
        TcpConnection connection;
        try
        {
            connection = await request.AcceptAsync(_stop.Token);
        }
        catch (Exception)
        {
            Count("forward.tcp.handshake-failed");
            socket.Dispose();
            return;
        }
        Count("forward.tcp.connected");
        connection.NoDelay = true;
        await using (connection)
        using (var host = new NetworkStream(socket, ownsSocket: true))
        {
            var up = SpliceAsync(connection, host, () => socket.Shutdown(SocketShutdown.Send));
            var down = SpliceAsync(host, connection, connection.ShutdownWrite);
            var reset = false;
            // One side failed (a RST, a timeout): the other learns with a RST too, not a clean
            // FIN, and at once: the direction still copying would otherwise wait for its peer.
            void Reset()
            {
                if (reset)
                    return;
                reset = true;
                Count("forward.tcp.reset");
                connection.Abort();
                socket.LingerState = new LingerOption(true, 0);
                socket.Close();
            }
            if ((await Task.WhenAny(up, down)).IsFaulted)
                Reset();
            try
            {
                await Task.WhenAll(up, down);
            }
            catch (Exception)
            {
                Reset();
            }
        }
    }

    private static void Refuse(TcpForwardRequest request, ForwardRefusal how)
    {
        try
        {
            request.Refuse(how);
        }
        catch (ObjectDisposedException)
        {
        }
    }

    // Copies until the source's FIN, then passes it on (each direction closes on its own).
    private static async Task SpliceAsync(Stream from, Stream to, Action finish)
    {
        var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(SpliceBuffer);
        try
        {
            int n;
            while ((n = await from.ReadAsync(buffer.AsMemory(0, SpliceBuffer))) > 0)
                await to.WriteAsync(buffer.AsMemory(0, n));
            finish();
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    // ------------------------------------------------------------------------------------------
    // UDP
    // ------------------------------------------------------------------------------------------

    private async Task ForwardUdpAsync(UdpFlow flow)
    {
        if (Spoofed(flow.RemoteEndPoint.Address, "udp"))
        {
            flow.Refuse(ForwardRefusal.Ignore);
            return;
        }
        var target = HostSide(flow.LocalEndPoint);
        if (target is null)
        {
            Count("forward.udp.no-upstream");
            flow.Refuse(ForwardRefusal.PortUnreachable);
            return;
        }
        if (!_options.Allows(target.Address, target.Port))
        {
            Count("forward.udp.denied");
            flow.Refuse(ForwardRefusal.AdministrativelyProhibited);
            return;
        }
        using var socket = new Socket(target.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        try
        {
            Count("forward.udp.dialled");
            socket.Connect(target);
        }
        catch (SocketException)
        {
            Count("forward.udp.unreachable");
            flow.Refuse(ForwardRefusal.HostUnreachable);
            return;
        }
        using var done = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
        var buffer = new byte[65536];
        var back = new byte[65536];
        async Task Out()
        {
            while (true)
            {
                int n = await flow.ReceiveAsync(buffer, done.Token);
                await socket.SendAsync(buffer.AsMemory(0, n), SocketFlags.None, done.Token);
            }
        }
        async Task In()
        {
            while (true)
            {
                int n = await socket.ReceiveAsync(back, SocketFlags.None, done.Token);
                await flow.SendAsync(back.AsMemory(0, n), done.Token);
            }
        }
        var outward = Out();
        var inward = In();
        var first = await Task.WhenAny(outward, inward, flow.Completion);
        if (first.Exception?.InnerException is SocketException { SocketErrorCode: SocketError.ConnectionRefused })
        {
            // The host side answered with a port unreachable: so does the flow.
            Count("forward.udp.refused");
            flow.Refuse(ForwardRefusal.PortUnreachable);
        }
        done.Cancel();
        await Task.WhenAll(outward.ContinueWith(_ => { }), inward.ContinueWith(_ => { }));
        flow.Dispose();
    }

    // ------------------------------------------------------------------------------------------
    // Echo (ping through unprivileged ICMP sockets)
    // ------------------------------------------------------------------------------------------

    private async Task ForwardEchoAsync(EchoRequest request)
    {
        if (Spoofed(request.Source, "echo"))
        {
            request.Refuse(ForwardRefusal.Ignore);
            return;
        }
        var target = HostSide(new IPEndPoint(request.Destination, 0))?.Address;
        if (target is null)
        {
            // A DNS address is no host: it answers pings itself, as slirp's does.
            request.Reply();
            return;
        }
        if (!_options.AllowsEcho(target))
        {
            Count("forward.echo.denied");
            request.Refuse(ForwardRefusal.AdministrativelyProhibited);
            return;
        }
        bool v6 = target.AddressFamily == AddressFamily.InterNetworkV6;
        Socket socket;
        try
        {
            // SOCK_DGRAM + IPPROTO_ICMP(V6): the kernel's unprivileged ping socket, allowed for the
            // groups in net.ipv4.ping_group_range; it picks the identifier itself.
            socket = new Socket(target.AddressFamily, SocketType.Dgram, v6 ? ProtocolType.IcmpV6 : ProtocolType.Icmp);
        }
        catch (SocketException)
        {
            Count("forward.echo.no-ping-socket");
            request.Refuse(ForwardRefusal.Ignore);
            return;
        }
        using (socket)
        {
            var message = new byte[8 + request.Data.Length];
            message[0] = v6 ? (byte)128 : (byte)8;
            BinaryPrimitives.WriteUInt16BigEndian(message.AsSpan(6), (ushort)Interlocked.Increment(ref _echoSequence));
            request.Data.Span.CopyTo(message.AsSpan(8));
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            timeout.CancelAfter(_options.EchoTimeout);
            try
            {
                socket.Connect(target, 0);
                Count("forward.echo.sent");
                await socket.SendAsync(message, SocketFlags.None, timeout.Token);
                var reply = new byte[message.Length + 64];
                while (true)
                {
                    int n = await socket.ReceiveAsync(reply, SocketFlags.None, timeout.Token);
                    // An echo reply (type 0 / 129) with our sequence number and data.
                    if (n >= 8 && reply[0] == (v6 ? 129 : 0) && reply.AsSpan(6, 2).SequenceEqual(message.AsSpan(6, 2)))
                        break;
                }
                Count("forward.echo.replied");
                request.Reply();
            }
            catch (OperationCanceledException)
            {
                Count("forward.echo.timed-out");
                request.Refuse(ForwardRefusal.Ignore);
            }
            catch (SocketException e)
            {
                Count("forward.echo.unreachable");
                request.Refuse(e.SocketErrorCode == SocketError.NetworkUnreachable ? ForwardRefusal.NetworkUnreachable : ForwardRefusal.HostUnreachable);
            }
        }
    }

    /// <summary>Stops taking new flows; those in progress end with the stack.</summary>
    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _tcp.Dispose();
        _udp.Dispose();
        _echo.Dispose();
        await Task.WhenAll(_loops.Select(l => l.ContinueWith(_ => { })));
        _stop.Dispose();
    }
}
