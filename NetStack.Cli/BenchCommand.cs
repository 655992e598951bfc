using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace NetStack.Cli;

/// <summary>
/// <c>netstack bench</c>: the same kernel .NET <see cref="Socket"/> client code against services
/// on the stack (through its TUN interface) and against the same services in a second kernel
/// namespace over a veth pair, in one run inside a private network namespace; prints both
/// figures and their ratio for UDP round trips and rate, TCP 1-byte ping-pong, short TCP
/// connections per second, and TCP bulk throughput both ways with the managed bytes allocated per
/// packet during it.
/// </summary>
/// <remarks>
/// The kernel baseline: a veth pair whose far end lives in a child namespace (<c>unshare --net</c>)
/// where a second netstack process (<see cref="RunEchoPeer"/>) runs plain-Socket services. The
/// child namespace and its veth end vanish with that process; the near end is deleted as well.
/// Both sides' services are .NET code and the client is the same, so the ratio compares the
/// paths: TUN + NetStack against the kernel's own TCP/UDP/IP over veth. Both links get the MTU of
/// <c>--mtu</c>.
/// </remarks>
public static partial class BenchCommand
{
    /// <summary>The command name used in messages.</summary>
    public const string Name = "netstack bench";

    /// <summary>Hidden subcommand: the kernel services in the peer namespace.</summary>
    public const string EchoPeerCommand = "__bench-echo-peer";

    /// <summary>UDP port of both echo services.</summary>
    private const int EchoPort = 9000;

    /// <summary>TCP discard (RFC 863) port of both sides: the bulk kernel → X measurement sends here.</summary>
    private const int DiscardPort = EchoPort + 1;

    /// <summary>TCP source port of both sides: the client sends "N\n", the service sends N bytes and closes.</summary>
    private const int SourcePort = EchoPort + 2;

    /// <summary>TCP echo (RFC 862) port of both sides: ping-pong and short connections.</summary>
    private const int TcpEchoPort = EchoPort + 3;

    /// <summary>Datagram size (the UDP payload) for both measurements.</summary>
    private const int DatagramSize = 64;

    /// <summary>Datagrams in flight at most in the rate measurement: a burst window, so a queue that drops cannot stall the flood for good.</summary>
    private const int Window = 32;

    /// <summary>
    /// Short connections per measurement at most: each leaves a kernel client port in TIME-WAIT
    /// for 60 s, and the default ephemeral range (32768–60999) holds 28,232.
    /// </summary>
    private const int MaxConnections = 20_000;

    /// <summary>How long each direction's warm-up transfers run, at least, before the bulk measurement.</summary>
    private static readonly TimeSpan BulkWarmUp = TimeSpan.FromSeconds(1);

    /// <summary>How long the connection measurement's clients run, at least, before the clock starts.</summary>
    private static readonly TimeSpan ConnectionWarmUp = TimeSpan.FromSeconds(2);

    /// <summary>The longest any warm-up waits for the JIT to settle (<see cref="JitSettling"/>).</summary>
    private static readonly TimeSpan MaxWarmUp = TimeSpan.FromSeconds(15);

    /// <summary>
    /// Whether <see cref="ReuseTimeWaitPorts"/> succeeded: without it every short connection
    /// holds its client port for 60 s, and the warm-up must stop at half of
    /// <see cref="MaxConnections"/>.
    /// </summary>
    private static bool _timeWaitReuse;

    /// <summary>The veth pair's /30: the near end (this namespace) and the peer.</summary>
    private const string VethNear = "10.78.0.1", VethPeer = "10.78.0.2", VethPrefix = "/30";

    /// <summary>The case names <c>--cases</c> takes.</summary>
    private static readonly string[] CaseNames = ["udp", "rr", "conn", "bulk", "usend", "http"];

    /// <summary>The cases run without <c>--cases</c>: all but http, which needs Debian's load generators.</summary>
    private static readonly string[] DefaultCases = ["udp", "rr", "conn", "bulk", "usend"];

    /// <summary>Payload bytes per datagram in the usend case.</summary>
    private const int SegmentSize = 1200;

    /// <summary>Datagrams per send in the usend case (one UDP_SEGMENT send, one segmented SendToAsync).</summary>
    private const int SegmentsPerSend = 40;

    /// <summary>What the command does, for its help.</summary>
    private static string Description => $"""
        Measures, in a private network namespace (re-executing under 'unshare' like the demo), between a kernel .NET Socket and
        services on the stack (through the TUN interface), and the same between two kernel namespaces over a veth pair (same
        MTU), and prints both with the ratio stack/kernel. The cases (--cases): udp: UDP round-trip latency (p50, p99) of
        {DatagramSize}-byte datagrams, one outstanding, and echoed datagrams per second, {Window} in flight at most; rr: TCP
        ping-pong, 1-byte request, 1-byte answer, one connection, round trip p50/p99, also with the stack as the client (its
        TcpConnection against a kernel echo); conn: short TCP connections per second (connect, send 1 byte, receive it, close),
        and the processor time of the whole machine per connection; bulk: TCP bulk throughput, kernel → X (into a discard
        service) and X → kernel (from a source service), one connection each, and the .NET bytes this process allocated per
        packet through the interface during each transfer; usend: UDP bulk X → kernel, sends of {SegmentsPerSend} datagrams of
        {SegmentSize} bytes each (the stack's segmented UdpSocket.SendToAsync, USO when in force; a kernel socket with
        UDP_SEGMENT), datagrams per second a kernel socket received, and the share of those sent that it did not; http: HTTP
        load from Debian's generators against the HTTP app of 'serve --http/--h2c' (Kestrel on the stack; on the peer side the
        same app on Kestrel's kernel sockets): ab (HTTP/1.0, a new connection per request), ab -k (HTTP/1.0 keep-alive), wrk
        (HTTP/1.1 keep-alive), h2load (HTTP/2 with prior knowledge, {H2Streams} streams per connection); {HttpConnections}
        connections each, GET of {HttpBodyBytes} bytes, --seconds each; requests/s and failed requests as each tool counts them;
        needs ab (apache2-utils), wrk, h2load (nghttp2-client); not run by default. With --soak MINUTES it runs the stack with
        serve's HTTP app (Kestrel, port 8080), TCP echo (7) and UDP echo (7000) under sustained load from other processes at
        nice 10 (wrk for HTTP when installed, else kernel sockets; kernel sockets for the rest) and prints this process's RSS,
        GC heap and commitment and the RSS by kind of mapping every interval, then their slopes in MB/min; SIGINT ends it early
        with the same report (docs/soak.md).
        """.ReplaceLineEndings(" ");

    /// <summary>What to measure and how long.</summary>
    /// <param name="Duration">Per udp, rr and conn measurement.</param>
    /// <param name="TcpBytes">Per bulk transfer.</param>
    /// <param name="ConnClients">Client threads in the conn measurement.</param>
    /// <param name="Cases">The case names to run.</param>
    public sealed record Plan(TimeSpan Duration, long TcpBytes, int ConnClients, IReadOnlySet<string> Cases);

    /// <summary>One path's results; null for what was not measured.</summary>
    public sealed class Measurement
    {
        /// <summary>Median UDP round trip.</summary>
        public TimeSpan? P50 { get; set; }

        /// <summary>99th percentile UDP round trip.</summary>
        public TimeSpan? P99 { get; set; }

        /// <summary>UDP round trips measured.</summary>
        public int? Samples { get; set; }

        /// <summary>Echoed datagrams per second in the flood.</summary>
        public double? DatagramsPerSecond { get; set; }

        /// <summary>Datagrams that never came back (either UDP measurement).</summary>
        public long? Lost { get; set; }

        /// <summary>Median TCP 1-byte ping-pong round trip.</summary>
        public TimeSpan? TcpP50 { get; set; }

        /// <summary>99th percentile TCP ping-pong round trip.</summary>
        public TimeSpan? TcpP99 { get; set; }

        /// <summary>TCP ping-pong round trips measured.</summary>
        public int? TcpSamples { get; set; }

        /// <summary>Median TCP ping-pong round trip with X as the client (the stack's own TcpConnection against a kernel echo).</summary>
        public TimeSpan? ClientP50 { get; set; }

        /// <summary>99th percentile of the same.</summary>
        public TimeSpan? ClientP99 { get; set; }

        /// <summary>Short connections completed per second.</summary>
        public double? ConnectionsPerSecond { get; set; }

        /// <summary>Processor time of the whole machine per short connection, µs.</summary>
        public double? CpuPerConnection { get; set; }

        /// <summary>TCP bulk throughput kernel → X, Gbit/s.</summary>
        public double? TcpInGbps { get; set; }

        /// <summary>TCP bulk throughput X → kernel, Gbit/s.</summary>
        public double? TcpOutGbps { get; set; }

        /// <summary>Bytes this process allocated per packet through the interface during kernel → X.</summary>
        public double? InBytesPerPacket { get; set; }

        /// <summary>Bytes this process allocated per packet through the interface during X → kernel.</summary>
        public double? OutBytesPerPacket { get; set; }

        /// <summary>usend: datagrams per second the kernel socket received.</summary>
        public double? SendReceivedPerSecond { get; set; }

        /// <summary>usend: the share of the datagrams sent that the kernel socket did not receive.</summary>
        public double? SendLost { get; set; }

        /// <summary>http: ab, a new connection per request (HTTP/1.0).</summary>
        public HttpLoad? HttpAb { get; set; }

        /// <summary>http: ab -k (HTTP/1.0 keep-alive).</summary>
        public HttpLoad? HttpAbKeepAlive { get; set; }

        /// <summary>http: wrk (HTTP/1.1 keep-alive).</summary>
        public HttpLoad? HttpWrk { get; set; }

        /// <summary>http: h2load (HTTP/2 with prior knowledge).</summary>
        public HttpLoad? HttpH2load { get; set; }

        /// <summary>http: why the case did not run (tools missing), or null.</summary>
        public string? HttpSkipped { get; set; }
    }

    /// <summary>The <c>bench</c> command; <paramref name="args"/> is the whole command line, run again inside the namespace.</summary>
    public static Command Create(string[] args)
    {
        var seconds = Cli.Int("--seconds", "N", "seconds per udp, rr and conn measurement, 1-60 (default 2)", 1, 60, "a number of seconds");
        var tcpMib = Cli.Int("--tcp-mib", "N",
            "MiB per TCP bulk transfer, 1-4096 (default 1024; one measured transfer per direction and path, after a second of warm-up transfers)",
            1, 4096, "a number of MiB");
        var connClients = Cli.Int("--conn-clients", "N", "client threads opening connections in parallel, 1-64 (default 4)", 1, 64, "a number of threads");
        var cases = Cli.Subset("--cases", $"comma-separated subset of {string.Join(",", CaseNames)} (default all but http)", CaseNames);
        var idleConnections = Cli.Int("--idle-connections", "N",
            "instead: open N idle kernel TCP connections to one listener and print the stack's managed heap and RSS per connection",
            1, 60000, "a number of connections");
        var soak = Cli.Value("--soak", "MINUTES", "instead: the memory soak, for MINUTES (0.1-1440; see above and docs/soak.md)", text =>
            double.TryParse(text, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var minutes) && minutes >= 0.1 && minutes <= 1440
                ? TimeSpan.FromMinutes(minutes)
                : throw Cli.Bad("--soak", $"'{text}' is not a number of minutes (0.1-1440)"));
        var soakInterval = Cli.Seconds("--soak-interval", "S", "soak: seconds between samples (default 10)", 1, 600);
        var soakLoad = Cli.Subset("--soak-load", "soak: comma-separated subset of http,echo,udp (default all)", SoakBench.LoadNames);
        var httpConnections = Cli.Int("--http-connections", "N", "soak: keep-alive HTTP connections, 10 KiB responses (default 200)",
            1, 10000, "a number of connections");
        var echoConnections = Cli.Int("--echo-connections", "N",
            "soak: persistent TCP echo connections, 1 KiB exchanges (default 16), plus 50 short echo connections a second",
            1, 1000, "a number of connections");
        var udpRate = Cli.Int("--udp-rate", "N", "soak: UDP datagrams a second to the echo (default 5000)", 1, 1_000_000, "a number of datagrams per second");
        var soakCsv = Cli.Value("--soak-csv", "FILE", "soak: write every sample as CSV", Path.GetFullPath);
        var soakSvg = Cli.Value("--soak-svg", "FILE",
            "soak: draw RSS, GC committed, resident in the GC's range, GC heap, malloc arenas and JIT code over time as SVG", Path.GetFullPath);
        var threadPoolEvents = Cli.Flag("--thread-pool-events",
            "soak: count the thread pool's changes of its thread count by reason (hill climbing, starvation, ...; listening costs native memory)");
        var interfaceOptions = new InterfaceOptions();
        var command = new Command("bench", Description)
        {
            seconds, tcpMib, connClients, cases, idleConnections, soak, soakInterval, soakLoad, httpConnections, echoConnections, udpRate,
            soakCsv, soakSvg, threadPoolEvents,
        };
        interfaceOptions.AddTo(command);
        command.SetAction(r =>
        {
            var options = interfaceOptions.Read(r);
            if (options.Address is null)
                throw new UsageException("the benchmark runs over IPv4: --ip none leaves nothing to measure");

            if (!Isolation.IsIsolated)
                return Isolation.ReexecIsolated(args);
            if (r.IsGiven(idleConnections))
                return IdleBench.Run(options, r.GetValue(idleConnections));
            if (r.IsGiven(soak))
            {
                var plan = new SoakBench.Plan(r.GetValue(soak), r.ValueOr(soakInterval, TimeSpan.FromSeconds(10)),
                    r.ValueOr(soakLoad, new HashSet<string>(SoakBench.LoadNames, StringComparer.Ordinal)),
                    r.ValueOr(httpConnections, 200), r.ValueOr(echoConnections, 16), r.ValueOr(udpRate, 5000),
                    r.IsGiven(soakCsv) ? r.GetValue(soakCsv) : null, r.IsGiven(soakSvg) ? r.GetValue(soakSvg) : null, r.IsGiven(threadPoolEvents));
                return SoakBench.Run(options, plan);
            }
            return RunIsolated(options, new Plan(TimeSpan.FromSeconds(r.ValueOr(seconds, 2)), r.ValueOr(tcpMib, 1024) * (1L << 20),
                r.ValueOr(connClients, 4), r.ValueOr(cases, new HashSet<string>(DefaultCases, StringComparer.Ordinal))));
        });
        return command;
    }

    private static int RunIsolated(NetStackOptions options, Plan plan)
    {
        try
        {
            Isolation.LoopbackUp();
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"{Name}: {e.Message}");
            return 1;
        }
        ReuseTimeWaitPorts();
        Console.WriteLine($"From a kernel .NET Socket, MTU {options.Mtu}: cases {string.Join(",", CaseNames.Where(plan.Cases.Contains))}; " +
            $"{plan.Duration.TotalSeconds:0} s per udp/rr/conn measurement, {plan.ConnClients} conn client threads; TCP bulk of {plan.TcpBytes >> 20} MiB per direction");

        Measurement? kernel = null, stack = null;
        string? kernelError = null, stackError = null;
        try
        {
            kernel = MeasureKernelOverVeth(options.Mtu, plan);
        }
        catch (Exception e)
        {
            kernelError = e.Message;
        }
        try
        {
            stack = MeasureStack(options, plan);
        }
        catch (Exception e)
        {
            stackError = e.Message;
        }

        PrintTable(plan, stack, kernel, options.Mode == NetStackMode.Tap ? "stack (TAP)" : "stack (TUN)");
        if (stackError is not null)
            Console.Error.WriteLine($"{Name}: stack measurement failed: {stackError}");
        if (kernelError is not null)
            Console.Error.WriteLine($"{Name}: kernel measurement failed: {kernelError}");
        return stack is not null && kernel is not null ? 0 : 1;
    }

    /// <summary>
    /// Lets the client's connect() take an ephemeral port whose TIME-WAIT is more than a second
    /// old (net.ipv4.tcp_tw_reuse = 1, a setting of this private namespace only; RFC 7323
    /// timestamps keep the old connection's segments out). Each short connection leaves its
    /// client port in TIME-WAIT for 60 s; with thousands of them Linux's default (reuse on
    /// loopback only) makes connect() search the port range past them (__inet_hash_connect), which
    /// took most of the client's processor time, capped the connection rate of both paths, and
    /// handicapped whichever ran second. The servers are untouched: the client closes first.
    /// </summary>
    private static void ReuseTimeWaitPorts()
    {
        try
        {
            File.WriteAllText("/proc/sys/net/ipv4/tcp_tw_reuse", "1");
            _timeWaitReuse = true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"{Name}: cannot set net.ipv4.tcp_tw_reuse ({e.Message}): short connections search past TIME-WAIT ports");
        }
    }

    private static Measurement MeasureStack(NetStackOptions options, Plan plan)
    {
        var stack = NetworkStack.Start(options);
        using var _ = StackStarter.Owning(Name, stack);
        using var echo = stack.BindUdp(new IPEndPoint(IPAddress.Any, EchoPort));
        using var discard = stack.ListenTcp(DiscardPort);
        using var source = stack.ListenTcp(SourcePort);
        using var tcpEcho = stack.ListenTcp(TcpEchoPort, backlog: 1024);
        using var stop = new CancellationTokenSource();
        var services = new[]
        {
            Task.Run(() => UdpEcho.RunAsync(echo, stop.Token)),
            Task.Run(() => TcpServices.AcceptLoopAsync(discard, "bench discard", TcpServices.DiscardAsync, stop.Token)),
            Task.Run(() => TcpServices.AcceptLoopAsync(source, "bench source", StackSourceAsync, stop.Token)),
            Task.Run(() => TcpServices.AcceptLoopAsync(tcpEcho, "bench echo", StackSmallEchoAsync, stop.Token)),
        };
        try
        {
            var statistics = stack.Statistics;
            var m = MeasurePath(options.Address!, plan, () => statistics["device.read"] + statistics["device.written"]);
            if (plan.Cases.Contains("rr") && options.HostAddress is not null)
            {
                // The stack as the client: its TcpConnection against a kernel echo on the TUN's
                // kernel side, in this namespace.
                using var kernelEcho = StartKernelEcho(new IPEndPoint(options.HostAddress, TcpEchoPort));
                Task.Run(() => MeasureStackClientRoundTripAsync(stack, new IPEndPoint(options.HostAddress, TcpEchoPort), plan.Duration, m)).GetAwaiter().GetResult();
            }
            if (plan.Cases.Contains("usend") && options.HostAddress is not null)
                MeasureUdpSend(options.HostAddress, plan.Duration, m, (time, sink) => StackUdpSend(stack, time, sink));
            if (plan.Cases.Contains("http"))
            {
                // The HTTP app of 'serve --http/--h2c', on this stack.
                var http = HttpServer.StartAsync(stack, [HttpPort], [H2cPort], CancellationToken.None).GetAwaiter().GetResult();
                try
                {
                    MeasureHttp(options.Address!, plan.Duration, m);
                }
                finally
                {
                    http.StopAsync(TimeSpan.FromSeconds(3)).GetAwaiter().GetResult();
                    http.DisposeAsync().AsTask().GetAwaiter().GetResult();
                }
            }
            return m;
        }
        finally
        {
            stop.Cancel();
            echo.Dispose();
            discard.Dispose();
            source.Dispose();
            tcpEcho.Dispose();
            Task.WaitAll(services, TimeSpan.FromSeconds(5));
        }
    }

    /// <summary>Every case of <paramref name="plan"/> against the services at <paramref name="target"/>.</summary>
    private static Measurement MeasurePath(IPAddress target, Plan plan, Func<long> packets)
    {
        var m = new Measurement();
        if (plan.Cases.Contains("udp"))
            MeasureUdp(new IPEndPoint(target, EchoPort), plan.Duration, m);
        if (plan.Cases.Contains("rr"))
            MeasureTcpRoundTrip(new IPEndPoint(target, TcpEchoPort), plan.Duration, m);
        if (plan.Cases.Contains("conn"))
            m.ConnectionsPerSecond = MeasureConnections(new IPEndPoint(target, TcpEchoPort), plan.Duration, plan.ConnClients, m);
        if (plan.Cases.Contains("bulk"))
            MeasureBulk(target, plan.TcpBytes, packets, m);
        return m;
    }

    /// <summary>The stack's source service: reads "N\n", sends N bytes, closes.</summary>
    private static async Task StackSourceAsync(TcpConnection connection, CancellationToken cancellationToken)
    {
        var count = await ReadCountAsync(connection, cancellationToken);
        var block = new byte[64 * 1024];
        for (var left = count; left > 0;)
        {
            var n = (int)Math.Min(left, block.Length);
            await connection.WriteAsync(block.AsMemory(0, n), cancellationToken);
            left -= n;
        }
        connection.ShutdownWrite();
        // Wait for the client's close so the last bytes are acknowledged before we let go.
        while (await connection.ReadAsync(block, cancellationToken) > 0)
        {
        }
    }

    /// <summary>The stack's TCP echo for small exchanges: a 4 KiB buffer, like the kernel peer's.</summary>
    private static async Task StackSmallEchoAsync(TcpConnection connection, CancellationToken cancellationToken)
    {
        var buffer = new byte[4096];
        int n;
        while ((n = await connection.ReadAsync(buffer, cancellationToken)) > 0)
            await connection.WriteAsync(buffer.AsMemory(0, n), cancellationToken);
    }

    /// <summary>Reads the decimal byte count line ("N\n") a bulk client sends to a source service.</summary>
    private static async Task<long> ReadCountAsync(Stream stream, CancellationToken cancellationToken)
    {
        var text = new StringBuilder();
        var one = new byte[1];
        while (await stream.ReadAsync(one, cancellationToken) == 1 && one[0] != (byte)'\n')
        {
            if (text.Length > 20)
                throw new IOException("count line too long");
            text.Append((char)one[0]);
        }
        return long.Parse(text.ToString(), CultureInfo.InvariantCulture);
    }

    /// <summary>
    /// TCP bulk throughput against the discard and source services at <paramref name="target"/>:
    /// kernel → X (send N bytes, half-close, wait for the service's close) and X → kernel (ask
    /// for N bytes, read to the end). Gbit/s of payload, connection setup included. Also the bytes
    /// this whole process allocated (<see cref="GC.GetTotalAllocatedBytes(bool)"/>) per packet
    /// that <paramref name="packets"/> counted through the interface, over each transfer.
    /// </summary>
    private static void MeasureBulk(IPAddress target, long bytes, Func<long> packets, Measurement m)
    {
        var block = new byte[256 * 1024];
        // Warm-up: JIT and first-use paths of both services, so that the figures (and the
        // allocation counts) are the steady state's. The runtime compiles a hot method at full
        // optimization only after it has run unoptimized, then instrumented, for a while: with a
        // 1 MiB warm-up a 256 MiB transfer at MTU 65000 (a fraction of a second) ran the stack's
        // per-segment paths as unoptimized code for much of its length, and its figure swung
        // between 6 and 13 Gbit/s from run to run. So: transfers of up to 64 MiB each way, for a
        // second at least in each direction and then until the JIT has settled.
        WarmUp(DiscardPort);
        WarmUp(SourcePort);
        (m.TcpInGbps, m.InBytesPerPacket) = Transfer(target, DiscardPort, bytes, block);
        (m.TcpOutGbps, m.OutBytesPerPacket) = Transfer(target, SourcePort, bytes, block);

        void WarmUp(int port)
        {
            var settling = new JitSettling(BulkWarmUp, MaxWarmUp);
            for (var i = 0; i < 16 && (i == 0 || !settling.Settled()); i++)
                Transfer(target, port, Math.Min(bytes, 64L << 20), block);
        }

        (double, double) Transfer(IPAddress target, int port, long bytes, byte[] block)
        {
            using var s = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            s.ReceiveTimeout = s.SendTimeout = 60_000;
            long allocated = GC.GetTotalAllocatedBytes(true), packetsBefore = packets();
            var clock = Stopwatch.StartNew();
            s.Connect(new IPEndPoint(target, port));
            if (port == DiscardPort)
            {
                for (var left = bytes; left > 0;)
                {
                    var n = (int)Math.Min(left, block.Length);
                    s.Send(block, 0, n, SocketFlags.None);
                    left -= n;
                }
                s.Shutdown(SocketShutdown.Send);
                while (s.Receive(block) > 0)
                {
                }
            }
            else
            {
                s.Send(Encoding.ASCII.GetBytes($"{bytes}\n"));
                long received = 0;
                int n;
                while ((n = s.Receive(block)) > 0)
                    received += n;
                if (received != bytes)
                    throw new InvalidOperationException($"asked {target}:{SourcePort} for {bytes} bytes, got {received}");
            }
            var gbps = bytes * 8 / clock.Elapsed.TotalSeconds / 1e9;
            allocated = GC.GetTotalAllocatedBytes(true) - allocated;
            var count = Math.Max(1, packets() - packetsBefore);
            return (gbps, (double)allocated / count);
        }
    }

    /// <summary>
    /// TCP ping-pong on one connection to an echo: 1 byte out, wait for the 1 byte back, with
    /// Nagle off (the client's small writes go out at once).
    /// </summary>
    private static void MeasureTcpRoundTrip(IPEndPoint target, TimeSpan duration, Measurement m)
    {
        using var s = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        s.ReceiveTimeout = s.SendTimeout = 5_000;
        s.Connect(target);
        var one = new byte[1];
        void Exchange()
        {
            s.Send(one);
            if (s.Receive(one) != 1)
                throw new InvalidOperationException($"the TCP echo at {target} closed during the ping-pong");
        }
        // 200 exchanges at least, then until the JIT has settled (half a second at least).
        var settling = new JitSettling(TimeSpan.FromSeconds(0.5), MaxWarmUp);
        for (var i = 0; i < 200 || !settling.Settled(); i++)
            Exchange();
        var rtts = new List<long>();
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < duration)
        {
            var start = Stopwatch.GetTimestamp();
            Exchange();
            rtts.Add(Stopwatch.GetTimestamp() - start);
        }
        s.Shutdown(SocketShutdown.Send);
        rtts.Sort();
        m.TcpP50 = Percentile(rtts, 0.50);
        m.TcpP99 = Percentile(rtts, 0.99);
        m.TcpSamples = rtts.Count;
    }

    /// <summary>The ping-pong of <see cref="MeasureTcpRoundTrip"/> with a stack connection as the client.</summary>
    private static async Task MeasureStackClientRoundTripAsync(NetworkStack stack, IPEndPoint target, TimeSpan duration, Measurement m)
    {
        await using var c = await stack.ConnectTcpAsync(target);
        var one = new byte[1];
        async Task Exchange()
        {
            await c.WriteAsync(one);
            if (await c.ReadAsync(one) != 1)
                throw new InvalidOperationException($"the kernel TCP echo at {target} closed during the ping-pong");
        }
        var settling = new JitSettling(TimeSpan.FromSeconds(0.5), MaxWarmUp);
        for (var i = 0; i < 200 || !settling.Settled(); i++)
            await Exchange();
        var rtts = new List<long>();
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < duration)
        {
            var start = Stopwatch.GetTimestamp();
            await Exchange();
            rtts.Add(Stopwatch.GetTimestamp() - start);
        }
        rtts.Sort();
        m.ClientP50 = Percentile(rtts, 0.50);
        m.ClientP99 = Percentile(rtts, 0.99);
    }

    /// <summary>
    /// Short connections to an echo from <paramref name="clients"/> threads: connect, send 1 byte,
    /// receive it, close (the client closes first, so its side holds the TIME-WAIT). Connections
    /// completed per second, at most <see cref="MaxConnections"/> in all.
    /// </summary>
    /// <remarks>
    /// Each connection costs the client only its own system calls (socket, connect, send, recv,
    /// close): no socket options. Nagle cannot hold the single byte (nothing is unacknowledged
    /// when it goes), and instead of a receive timeout per socket a watchdog (this thread) closes
    /// the socket of a client that has made no progress for <see cref="ConnectionStall"/>, which
    /// ends its blocked call with an error: a silent server fails the measurement, it cannot
    /// hang it.
    /// </remarks>
    private static double MeasureConnections(IPEndPoint target, TimeSpan duration, int clients, Measurement m)
    {
        // Warm-up: the listener's accept path and the service's first connection, then the same
        // load as the measurement until the JIT has settled, so that the runtime has compiled the
        // connection paths (client, service and stack) at full optimization before the clock
        // starts. With 20 connections only, the stack's paths ran as unoptimized and
        // instrumented code through most of the measurement (perf: the loop thread in
        // QuickJitted/InstrumentedTier frames, the JIT's own thread at up to 60% of a core); a
        // fixed 2 s still left the JIT compiling the stack's paths for 4–6 s more.
        var warmUp = new ConnectionClient(target);
        warmUp.Start(() => warmUp.Completed < 20);
        if (!Watch([warmUp], TimeSpan.FromSeconds(30)))
            throw new InvalidOperationException($"short connection to {target} failed: {warmUp.Failure?.Message ?? "no progress"}", warmUp.Failure);
        var settling = new JitSettling(ConnectionWarmUp, MaxWarmUp);
        long warmUpStarted = 0;
        var warmUpThreads = Enumerable.Range(0, clients).Select(_ => new ConnectionClient(target)).ToList();
        warmUpThreads.ForEach(t => t.Start(() => !settling.Settled() && (_timeWaitReuse || Interlocked.Increment(ref warmUpStarted) <= MaxConnections / 2)));
        if (!Watch(warmUpThreads, MaxWarmUp + TimeSpan.FromSeconds(30)))
            throw new InvalidOperationException($"short connection to {target} failed in the warm-up: {warmUpThreads.FirstOrDefault(t => t.Failure is not null)?.Failure?.Message ?? "no progress"}");
        long started = 0;
        long busyBefore = BusyMicroseconds();
        var clock = Stopwatch.StartNew();
        var threads = Enumerable.Range(0, clients).Select(_ => new ConnectionClient(target)).ToList();
        threads.ForEach(t => t.Start(() => clock.Elapsed < duration && Interlocked.Increment(ref started) <= MaxConnections));
        bool ok = Watch(threads, duration + TimeSpan.FromSeconds(30));
        var elapsed = clock.Elapsed;
        var failed = threads.FirstOrDefault(t => t.Failure is not null);
        if (!ok || failed is not null)
            throw new InvalidOperationException($"short connection to {target} failed: {failed?.Failure?.Message ?? "no progress"}", failed?.Failure);
        long completed = threads.Sum(t => t.Completed);
        m.CpuPerConnection = completed > 0 ? (BusyMicroseconds() - busyBefore) / (double)completed : null;
        return completed / elapsed.TotalSeconds;
    }

    /// <summary>
    /// Processor time spent so far by all processors of the machine on anything but idling, in
    /// µs (from /proc/stat: user, nice, system, irq, softirq, steal; counted in clock ticks). The
    /// conn case divides it by the connections: both columns' whole cost per connection, client,
    /// kernel, the stack and the peer process together.
    /// </summary>
    private static long BusyMicroseconds()
    {
        var fields = File.ReadLines("/proc/stat").First().Split(' ', StringSplitOptions.RemoveEmptyEntries);
        long ticks = 0;
        foreach (int i in (int[])[1, 2, 3, 6, 7, 8])
            ticks += long.Parse(fields[i], CultureInfo.InvariantCulture);
        // USER_HZ is 100 on every Linux architecture .NET runs on.
        return ticks * 10_000;
    }

    /// <summary>How long a connection client may go without completing a connection before the watchdog closes its socket.</summary>
    private static readonly TimeSpan ConnectionStall = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Waits for every client to finish, closing the current socket of any that completes no
    /// connection for <see cref="ConnectionStall"/>; false when one stalled or all together took
    /// longer than <paramref name="limit"/>.
    /// </summary>
    private static bool Watch(List<ConnectionClient> clients, TimeSpan limit)
    {
        var clock = Stopwatch.StartNew();
        var seen = clients.Select(c => (Completed: -1L, Since: TimeSpan.Zero)).ToArray();
        bool ok = true;
        while (true)
        {
            bool running = false;
            for (var i = 0; i < clients.Count; i++)
            {
                var c = clients[i];
                if (c.Thread.Join(0))
                    continue;
                running = true;
                long completed = c.Completed;
                if (completed != seen[i].Completed)
                    seen[i] = (completed, clock.Elapsed);
                else if (clock.Elapsed - seen[i].Since > ConnectionStall || clock.Elapsed > limit)
                {
                    ok = false;
                    c.Stop();
                }
            }
            if (!running)
                return ok;
            Thread.Sleep(50);
        }
    }

    /// <summary>One client thread of the connection measurement, opening connections one after another while told to.</summary>
    private sealed class ConnectionClient(IPEndPoint target)
    {
        private readonly object _gate = new();
        private Socket? _current;
        private volatile bool _stopped;
        private long _completed;

        /// <summary>The thread (started by <see cref="Start"/>).</summary>
        public Thread Thread { get; private set; } = null!;

        /// <summary>Connections completed.</summary>
        public long Completed => Volatile.Read(ref _completed);

        /// <summary>Why the thread stopped early; null when it did not.</summary>
        public Exception? Failure { get; private set; }

        /// <summary>Starts the thread: one connection after another while <paramref name="more"/> says so.</summary>
        public void Start(Func<bool> more)
        {
            Thread = new Thread(() =>
            {
                try
                {
                    while (!_stopped && more())
                    {
                        OneConnection();
                        Interlocked.Increment(ref _completed);
                    }
                }
                catch (Exception e)
                {
                    Failure = _stopped ? new TimeoutException($"no connection completed in {ConnectionStall.TotalSeconds:0} s", e) : e;
                }
            })
            { IsBackground = true };
            Thread.Start();
        }

        /// <summary>The watchdog's verdict: the current socket is closed, which ends a blocked call.</summary>
        public void Stop()
        {
            _stopped = true;
            lock (_gate)
                _current?.Dispose();
        }

        private void OneConnection()
        {
            using var s = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            lock (_gate)
            {
                if (_stopped)
                    throw new OperationCanceledException();
                _current = s;
            }
            try
            {
                s.Connect(target);
                Span<byte> one = [42];
                s.Send(one);
                if (s.Receive(one) != 1)
                    throw new InvalidOperationException($"the TCP echo at {target} closed without answering");
            }
            finally
            {
                lock (_gate)
                    _current = null;
            }
        }
    }

    private static Measurement MeasureKernelOverVeth(int mtu, Plan plan)
    {
        // Unique names, so two runs in one namespace (the test run's, say) cannot collide.
        var id = Environment.ProcessId % 100000;
        string near = $"nsbench{id}a", far = $"nsbench{id}b";
        Process? peer = null;
        try
        {
            Shell.Check("ip", "link", "add", near, "mtu", $"{mtu}", "type", "veth", "peer", "name", far, "mtu", $"{mtu}");
            var psi = new ProcessStartInfo("unshare") { RedirectStandardOutput = true, RedirectStandardInput = true, UseShellExecute = false };
            foreach (var a in new[] { "--net", "--" }.Concat(Isolation.SelfCommand()).Concat([EchoPeerCommand, far, VethPeer + VethPrefix, $"{EchoPort}"])
                .Concat(plan.Cases.Contains("http") ? ["http"] : []))
                psi.ArgumentList.Add(a);
            peer = Process.Start(psi)!;
            // The peer says "waiting" once it runs inside its new namespace; only then can the
            // far end move there (moving it earlier would leave it here).
            ExpectLine(peer, "waiting");
            Shell.Check("ip", "link", "set", far, "netns", $"{peer.Id}");
            Shell.Check("ip", "addr", "add", VethNear + VethPrefix, "dev", near);
            Shell.Check("ip", "link", "set", near, "up");
            ExpectLine(peer, "ready");
            var m = MeasurePath(IPAddress.Parse(VethPeer), plan, () => InterfacePackets(near));
            if (plan.Cases.Contains("usend"))
                MeasureUdpSend(IPAddress.Parse(VethNear), plan.Duration, m, (time, sink) =>
                {
                    // The peer's UDP source sends for `time` to the sink and answers with its count.
                    using var control = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
                    control.Bind(new IPEndPoint(IPAddress.Parse(VethNear), 0));
                    control.ReceiveTimeout = (int)(time + TimeSpan.FromSeconds(10)).TotalMilliseconds;
                    control.SendTo(Encoding.ASCII.GetBytes($"{(long)time.TotalMilliseconds} {sink.Port}"), new IPEndPoint(IPAddress.Parse(VethPeer), EchoPort + 4));
                    var answer = new byte[64];
                    int n = control.Receive(answer);
                    var parts = Encoding.ASCII.GetString(answer, 0, n).Split(' ');
                    return (long.Parse(parts[0], CultureInfo.InvariantCulture), TimeSpan.FromTicks(long.Parse(parts[1], CultureInfo.InvariantCulture)));
                });
            if (plan.Cases.Contains("http"))
                MeasureHttp(IPAddress.Parse(VethPeer), plan.Duration, m);
            return m;
        }
        finally
        {
            if (peer is not null)
            {
                if (!peer.HasExited)
                    peer.Kill();
                peer.WaitForExit();
                peer.Dispose();
            }
            // Deleting one end deletes the pair; it is gone already when the peer namespace died.
            _ = Shell.RunAsync("ip", ["link", "del", near], TimeSpan.FromSeconds(10)).GetAwaiter().GetResult();
        }
    }

    /// <summary>Packets received plus sent by interface <paramref name="name"/> (from /proc/self/net/dev).</summary>
    private static long InterfacePackets(string name)
    {
        // "  name: rx_bytes rx_packets errs drop fifo frame compressed multicast tx_bytes tx_packets ..."
        foreach (var line in File.ReadLines("/proc/self/net/dev"))
        {
            var colon = line.IndexOf(':');
            if (colon < 0 || line[..colon].Trim() != name)
                continue;
            var f = line[(colon + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return long.Parse(f[1], CultureInfo.InvariantCulture) + long.Parse(f[9], CultureInfo.InvariantCulture);
        }
        throw new InvalidOperationException($"interface {name} is not in /proc/self/net/dev");
    }

    private static void ExpectLine(Process peer, string expected)
    {
        var line = peer.StandardOutput.ReadLineAsync();
        if (!line.Wait(TimeSpan.FromSeconds(20)) || line.Result != expected)
            throw new InvalidOperationException($"the kernel echo peer did not get {expected} (said: {(line.IsCompleted ? line.Result ?? "nothing, it exited" : "nothing in 20 s")})");
    }

    /// <summary>
    /// Runs the kernel services in the peer namespace: waits for the veth end to arrive, gives it
    /// its address, then serves UDP echo, TCP discard, source and echo until killed or until stdin
    /// closes. Arguments: interface, address/prefix, UDP echo port (the TCP ports follow it), and
    /// "http" to serve the HTTP app on the kernel's sockets as well.
    /// </summary>
    public static int RunEchoPeer(string[] args)
    {
        if (args.Length is not (3 or 4) || (args.Length == 4 && args[3] != "http"))
            throw new UsageException($"netstack {EchoPeerCommand}: internal command of 'netstack bench' (interface address/prefix port [http])");
        var (ifname, address, port) = (args[0], args[1], int.Parse(args[2], CultureInfo.InvariantCulture));
        Console.WriteLine("waiting");
        var clock = Stopwatch.StartNew();
        // /proc/self/net follows this process's namespace (/sys/class/net would show the
        // namespace that mounted sysfs).
        while (!File.ReadLines("/proc/self/net/dev").Any(l => l.TrimStart().StartsWith(ifname + ":", StringComparison.Ordinal)))
        {
            if (clock.Elapsed > TimeSpan.FromSeconds(20))
                return 1;
            Thread.Sleep(10);
        }
        Shell.Check("ip", "addr", "add", address, "dev", ifname);
        Shell.Check("ip", "link", "set", ifname, "up");
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        socket.Bind(new IPEndPoint(IPAddress.Any, port));
        StartKernelTcpService(port + 1, KernelDiscard);
        StartKernelTcpService(port + 2, KernelSource);
        StartKernelEcho(new IPEndPoint(IPAddress.Any, port + 3));
        StartKernelUdpSource(port + 4);
        if (args.Length == 4)
            HttpServer.ForKernel(IPAddress.Any, [HttpPort], [H2cPort]).StartAsync(CancellationToken.None).GetAwaiter().GetResult();
        // The parent closing our stdin (or dying) ends the peer, and with it the namespace.
        new Thread(() =>
        {
            Console.In.ReadToEnd();
            Environment.Exit(0);
        })
        { IsBackground = true }.Start();
        Console.WriteLine("ready");

        var buffer = new byte[65536];
        EndPoint from = new IPEndPoint(IPAddress.Any, 0);
        while (true)
        {
            var n = socket.ReceiveFrom(buffer, ref from);
            socket.SendTo(buffer.AsSpan(0, n), SocketFlags.None, from);
        }
    }

    /// <summary>
    /// The usend case's kernel sender in the peer namespace: a request "MS PORT" makes it send
    /// <see cref="SegmentsPerSend"/> datagrams of <see cref="SegmentSize"/> bytes per send (one
    /// buffer, UDP_SEGMENT) to PORT at the requester's address for MS milliseconds, then answer
    /// the requester with "DATAGRAMS TICKS" (sent, and the time it took).
    /// </summary>
    private static void StartKernelUdpSource(int port)
    {
        var control = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        control.Bind(new IPEndPoint(IPAddress.Any, port));
        new Thread(() =>
        {
            var request = new byte[64];
            var data = new byte[SegmentSize * SegmentsPerSend];
            using var sender = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            // UDP_SEGMENT (linux/udp.h: level SOL_UDP 17, option 103).
            sender.SetRawSocketOption(17, 103, BitConverter.GetBytes(SegmentSize));
            while (true)
            {
                EndPoint from = new IPEndPoint(IPAddress.Any, 0);
                int n = control.ReceiveFrom(request, ref from);
                var parts = Encoding.ASCII.GetString(request, 0, n).Split(' ');
                var time = TimeSpan.FromMilliseconds(long.Parse(parts[0], CultureInfo.InvariantCulture));
                var sink = new IPEndPoint(((IPEndPoint)from).Address, int.Parse(parts[1], CultureInfo.InvariantCulture));
                long sent = 0;
                var clock = Stopwatch.StartNew();
                while (clock.Elapsed < time)
                {
                    try
                    {
                        sender.SendTo(data, sink);
                        sent += SegmentsPerSend;
                    }
                    catch (SocketException e) when (e.SocketErrorCode is SocketError.NoBufferSpaceAvailable or SocketError.WouldBlock)
                    {
                    }
                }
                control.SendTo(Encoding.ASCII.GetBytes($"{sent} {clock.Elapsed.Ticks}"), from);
            }
        })
        { IsBackground = true }.Start();
    }

    /// <summary>
    /// The usend case: <paramref name="send"/> has a sender send to a kernel socket here (the sink,
    /// bound at <paramref name="sinkAddress"/>) for a given time and returns how many datagrams it
    /// sent and how long that took; first a second of warm-up, then the measurement.
    /// </summary>
    private static void MeasureUdpSend(IPAddress sinkAddress, TimeSpan duration, Measurement m, Func<TimeSpan, IPEndPoint, (long Sent, TimeSpan Took)> send)
    {
        using var sink = new Socket(sinkAddress.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        sink.ReceiveBufferSize = 4 << 20;
        sink.Bind(new IPEndPoint(sinkAddress, 0));
        var local = (IPEndPoint)sink.LocalEndPoint!;
        long received = 0;
        var reader = new Thread(() =>
        {
            var buffer = new byte[65536];
            try
            {
                while (true)
                {
                    sink.Receive(buffer);
                    Interlocked.Increment(ref received);
                }
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                // Closed: the measurement is over.
            }
        })
        { IsBackground = true };
        reader.Start();
        send(TimeSpan.FromSeconds(1), local);
        Thread.Sleep(200);
        long before = Interlocked.Read(ref received);
        var (sent, took) = send(duration, local);
        // What is still queued in the socket is read, then counted.
        Thread.Sleep(200);
        long got = Interlocked.Read(ref received) - before;
        m.SendReceivedPerSecond = got / took.TotalSeconds;
        m.SendLost = sent > 0 ? Math.Max(0, sent - got) / (double)sent : null;
    }

    /// <summary>The usend case's stack sender: segmented sends from a stack UDP socket, one at a time.</summary>
    private static (long Sent, TimeSpan Took) StackUdpSend(NetworkStack stack, TimeSpan time, IPEndPoint sink)
    {
        using var socket = stack.BindUdp(new IPEndPoint(IPAddress.Any, 0));
        var data = new byte[SegmentSize * SegmentsPerSend];
        long sent = 0;
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < time)
        {
            socket.SendToAsync(data, sink, SegmentSize).AsTask().GetAwaiter().GetResult();
            sent += SegmentsPerSend;
        }
        return (sent, clock.Elapsed);
    }

    /// <summary>A kernel TCP service in the peer namespace: one thread accepting, one per connection.</summary>
    private static void StartKernelTcpService(int port, Action<Socket> serve)
    {
        var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Any, port));
        listener.Listen(16);
        new Thread(() =>
        {
            while (true)
            {
                var connection = listener.Accept();
                new Thread(() =>
                {
                    using (connection)
                    {
                        try
                        {
                            serve(connection);
                        }
                        catch (SocketException)
                        {
                        }
                    }
                })
                { IsBackground = true }.Start();
            }
        })
        { IsBackground = true }.Start();
    }

    /// <summary>
    /// The kernel TCP echo in the peer namespace: async accept and one task per connection with a
    /// 4 KiB buffer, the same shape as the stack's (a thread per connection would cost the kernel
    /// side the short-connection race).
    /// </summary>
    private static Socket StartKernelEcho(IPEndPoint local)
    {
        var listener = new Socket(local.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(local);
        listener.Listen(1024);
        _ = Task.Run(async () =>
        {
            while (true)
            {
                Socket connection;
                try
                {
                    connection = await listener.AcceptAsync();
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException)
                {
                    return; // The listener was closed.
                }
                _ = Task.Run(async () =>
                {
                    using (connection)
                    {
                        try
                        {
                            connection.NoDelay = true;
                            var buffer = new byte[4096];
                            int n;
                            while ((n = await connection.ReceiveAsync(buffer)) > 0)
                                await connection.SendAsync(buffer.AsMemory(0, n));
                        }
                        catch (SocketException)
                        {
                        }
                    }
                });
            }
        });
        return listener;
    }

    private static void KernelDiscard(Socket connection)
    {
        var buffer = new byte[256 * 1024];
        while (connection.Receive(buffer) > 0)
        {
        }
    }

    private static void KernelSource(Socket connection)
    {
        using var stream = new NetworkStream(connection);
        var count = ReadCountAsync(stream, CancellationToken.None).GetAwaiter().GetResult();
        var block = new byte[256 * 1024];
        for (var left = count; left > 0;)
        {
            var n = (int)Math.Min(left, block.Length);
            connection.Send(block, 0, n, SocketFlags.None);
            left -= n;
        }
        connection.Shutdown(SocketShutdown.Send);
        while (connection.Receive(block) > 0)
        {
        }
    }

    private static TimeSpan Percentile(List<long> sorted, double p) =>
        Stopwatch.GetElapsedTime(0, sorted[Math.Min(sorted.Count - 1, (int)(p * sorted.Count))]);

    /// <summary>UDP latency, then rate, against one echo.</summary>
    private static void MeasureUdp(IPEndPoint target, TimeSpan duration, Measurement m)
    {
        using var socket = new Socket(target.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        socket.Connect(target);
        var payload = new byte[DatagramSize];
        var reply = new byte[2048];
        long lost = 0;

        // Warm-up: neighbour resolution, JIT, first-packet paths. The echo must answer by now.
        for (var i = 0; i < 200; i++)
        {
            if (!RoundTrip(socket, payload, reply, i, TimeSpan.FromSeconds(i == 0 ? 5 : 1)))
                throw new InvalidOperationException($"the echo at {target} does not answer");
        }

        // Latency: one datagram outstanding, each carrying its sequence number.
        var rtts = new List<long>();
        var clock = Stopwatch.StartNew();
        for (long seq = 1000; clock.Elapsed < duration; seq++)
        {
            var start = Stopwatch.GetTimestamp();
            if (RoundTrip(socket, payload, reply, seq, TimeSpan.FromMilliseconds(200)))
                rtts.Add(Stopwatch.GetTimestamp() - start);
            else
                lost++;
        }
        if (rtts.Count == 0)
            throw new InvalidOperationException($"no round trip to {target} completed");
        rtts.Sort();

        // Rate: keep up to Window datagrams in flight; a reply lets the next one go. A silence
        // of 200 ms writes the whole window off as lost, so one drop cannot stall the flood.
        socket.ReceiveTimeout = 200;
        long received = 0;
        var inFlight = 0;
        clock.Restart();
        while (clock.Elapsed < duration)
        {
            while (inFlight < Window)
            {
                socket.Send(payload);
                inFlight++;
            }
            try
            {
                socket.Receive(reply);
                received++;
                inFlight--;
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.TimedOut or SocketError.WouldBlock)
            {
                lost += inFlight;
                inFlight = 0;
            }
        }
        var rate = received / clock.Elapsed.TotalSeconds;
        // Drain the stragglers so they cannot count in anyone's next measurement.
        socket.ReceiveTimeout = 50;
        try
        {
            while (inFlight-- > 0)
                socket.Receive(reply);
        }
        catch (SocketException)
        {
        }
        m.P50 = Percentile(rtts, 0.50);
        m.P99 = Percentile(rtts, 0.99);
        m.Samples = rtts.Count;
        m.DatagramsPerSecond = rate;
        m.Lost = lost;
    }

    /// <summary>One echo with sequence number <paramref name="seq"/>; false when it did not come back in time.</summary>
    private static bool RoundTrip(Socket socket, byte[] payload, byte[] reply, long seq, TimeSpan timeout)
    {
        BitConverter.TryWriteBytes(payload, seq);
        socket.ReceiveTimeout = (int)timeout.TotalMilliseconds;
        socket.Send(payload);
        while (true)
        {
            int n;
            try
            {
                n = socket.Receive(reply);
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.TimedOut or SocketError.WouldBlock)
            {
                return false;
            }
            // An older, late reply: skip it and keep waiting for ours.
            if (n == payload.Length && BitConverter.ToInt64(reply, 0) == seq)
                return true;
        }
    }

    private static void PrintTable(Plan plan, Measurement? stack, Measurement? kernel, string stackLabel)
    {
        static string Us(TimeSpan? t) => t is { } v ? $"{v.TotalMicroseconds:0.0} µs" : "n/a";
        static string Micro(double? us) => us is { } v ? $"{v:0} µs" : "n/a";
        static string Rate(double? r) => r is { } v ? $"{v:0}" : "n/a";
        static string Count(long? c) => c is { } v ? v.ToString(CultureInfo.InvariantCulture) : "n/a";
        static string Ratio(double? a, double? b) => a is { } x && b is { } y && y > 0 ? $"{x / y:0.00}" : "n/a";
        static string Gbps(double? g) => g is { } v ? $"{v:0.00} Gbit/s" : "n/a";
        static string Bytes(double? b) => b is { } v ? $"{v:0.0} B" : "n/a";
        static string Percent(double? p) => p is { } v ? $"{v * 100:0.0}%" : "n/a";

        var rows = new List<(string Name, string Stack, string Kernel, string Ratio)>();
        if (plan.Cases.Contains("udp"))
        {
            rows.Add(("UDP round trip p50", Us(stack?.P50), Us(kernel?.P50), Ratio(stack?.P50?.TotalMicroseconds, kernel?.P50?.TotalMicroseconds)));
            rows.Add(("UDP round trip p99", Us(stack?.P99), Us(kernel?.P99), Ratio(stack?.P99?.TotalMicroseconds, kernel?.P99?.TotalMicroseconds)));
            rows.Add(("UDP round trips measured", Count(stack?.Samples), Count(kernel?.Samples), ""));
            rows.Add(($"datagrams/s ({Window} in flight)", Rate(stack?.DatagramsPerSecond), Rate(kernel?.DatagramsPerSecond), Ratio(stack?.DatagramsPerSecond, kernel?.DatagramsPerSecond)));
            rows.Add(("datagrams lost", Count(stack?.Lost), Count(kernel?.Lost), ""));
        }
        if (plan.Cases.Contains("rr"))
        {
            rows.Add(("TCP ping-pong p50", Us(stack?.TcpP50), Us(kernel?.TcpP50), Ratio(stack?.TcpP50?.TotalMicroseconds, kernel?.TcpP50?.TotalMicroseconds)));
            rows.Add(("TCP ping-pong p99", Us(stack?.TcpP99), Us(kernel?.TcpP99), Ratio(stack?.TcpP99?.TotalMicroseconds, kernel?.TcpP99?.TotalMicroseconds)));
            rows.Add(("TCP ping-pongs measured", Count(stack?.TcpSamples), Count(kernel?.TcpSamples), ""));
            // X as the client: the stack's TcpConnection against a kernel echo; the kernel column
            // is the kernel client's figure above (kernel ⇄ kernel either way).
            rows.Add(("TCP ping-pong p50, X client", Us(stack?.ClientP50), Us(kernel?.TcpP50), Ratio(stack?.ClientP50?.TotalMicroseconds, kernel?.TcpP50?.TotalMicroseconds)));
            rows.Add(("TCP ping-pong p99, X client", Us(stack?.ClientP99), Us(kernel?.TcpP99), Ratio(stack?.ClientP99?.TotalMicroseconds, kernel?.TcpP99?.TotalMicroseconds)));
        }
        if (plan.Cases.Contains("conn"))
        {
            rows.Add(("TCP connections/s", Rate(stack?.ConnectionsPerSecond), Rate(kernel?.ConnectionsPerSecond), Ratio(stack?.ConnectionsPerSecond, kernel?.ConnectionsPerSecond)));
            // All processors, everything that ran: the client, the kernel, the stack or the peer.
            rows.Add(("  CPU per connection", Micro(stack?.CpuPerConnection), Micro(kernel?.CpuPerConnection), Ratio(stack?.CpuPerConnection, kernel?.CpuPerConnection)));
        }
        if (plan.Cases.Contains("bulk"))
        {
            rows.Add(("TCP bulk kernel → X", Gbps(stack?.TcpInGbps), Gbps(kernel?.TcpInGbps), Ratio(stack?.TcpInGbps, kernel?.TcpInGbps)));
            rows.Add(("TCP bulk X → kernel", Gbps(stack?.TcpOutGbps), Gbps(kernel?.TcpOutGbps), Ratio(stack?.TcpOutGbps, kernel?.TcpOutGbps)));
            // The kernel column is the client's own allocation over the veth transfer: the floor
            // the stack's figure sits on. A ratio against a figure near 0 says nothing.
            rows.Add(("allocated/packet kernel → X", Bytes(stack?.InBytesPerPacket), Bytes(kernel?.InBytesPerPacket), "-"));
            rows.Add(("allocated/packet X → kernel", Bytes(stack?.OutBytesPerPacket), Bytes(kernel?.OutBytesPerPacket), "-"));
        }
        if (plan.Cases.Contains("usend"))
        {
            rows.Add(($"UDP X → kernel ({SegmentsPerSend}/send)", Rate(stack?.SendReceivedPerSecond), Rate(kernel?.SendReceivedPerSecond), Ratio(stack?.SendReceivedPerSecond, kernel?.SendReceivedPerSecond)));
            rows.Add(("  of which lost", Percent(stack?.SendLost), Percent(kernel?.SendLost), ""));
        }
        if (plan.Cases.Contains("http"))
        {
            static string Requests(HttpLoad? h) => h is null ? "n/a" : h.Error is not null ? "error" : Rate(h.RequestsPerSecond);
            static string Failed(HttpLoad? h) => h is null ? "n/a" : h.Error is not null ? "error" : Count(h.Failed);
            void Row(string name, HttpLoad? s, HttpLoad? k)
            {
                rows.Add((name, Requests(s), Requests(k), Ratio(s?.RequestsPerSecond, k?.RequestsPerSecond)));
                rows.Add(("  failed", Failed(s), Failed(k), ""));
            }
            Row("HTTP ab, req/s (new conn.)", stack?.HttpAb, kernel?.HttpAb);
            Row("HTTP ab -k, req/s", stack?.HttpAbKeepAlive, kernel?.HttpAbKeepAlive);
            Row("HTTP wrk, req/s", stack?.HttpWrk, kernel?.HttpWrk);
            Row("HTTP h2load (h2c), req/s", stack?.HttpH2load, kernel?.HttpH2load);
        }
        Console.WriteLine($"{"",-30}{stackLabel,14}{"kernel (veth)",16}{"stack/kernel",14}");
        foreach (var r in rows)
            Console.WriteLine($"{r.Name,-30}{r.Stack,14}{r.Kernel,16}{r.Ratio,14}");
        if (plan.Cases.Contains("http"))
        {
            foreach (var skipped in new[] { stack?.HttpSkipped, kernel?.HttpSkipped }.OfType<string>().Distinct())
                Console.WriteLine($"http case skipped: {skipped}");
            foreach (var (path, m) in new[] { ("stack", stack), ("kernel", kernel) })
            {
                foreach (var load in new[] { m?.HttpAb, m?.HttpAbKeepAlive, m?.HttpWrk, m?.HttpH2load })
                {
                    if (load?.Error is { } error)
                        Console.WriteLine($"http case, {path}: {error}");
                }
            }
        }
    }
}
