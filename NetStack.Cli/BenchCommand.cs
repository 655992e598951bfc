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

    /// <summary>UDP port of both echo services.</summary>
    private const int EchoPort = 9000;

    /// <summary>TCP discard (RFC 863) port of both sides: the bulk kernel → X measurement sends here.</summary>
    private const int DiscardPort = EchoPort + 1;

    /// <summary>TCP source port of both sides: the client sends "N\n", the service sends N bytes and closes.</summary>
    private const int SourcePort = EchoPort + 2;

    /// <summary>TCP echo (RFC 862) port of both sides: ping-pong and short connections closed by the client.</summary>
    private const int TcpEchoPort = EchoPort + 3;

    /// <summary>
    /// TCP answer-once port of both sides: short connections closed by the server (HTTP/1.0
    /// style), which reads the request (1 byte), writes it back and closes.
    /// </summary>
    private const int AnswerOncePort = EchoPort + 7;

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

    /// <summary>The case names <c>--cases</c> takes.</summary>
    private static readonly string[] CaseNames = ["udp", "rr", "conn", "bulk", "usend", "http"];

    /// <summary>The cases run without <c>--cases</c>: all but http, which needs Debian's load generators.</summary>
    private static readonly string[] DefaultCases = ["udp", "rr", "conn", "bulk", "usend"];

    /// <summary>Payload bytes per datagram in the usend case.</summary>
    private const int SegmentSize = 1200;

    /// <summary>Datagrams per send in the usend case (one UDP_SEGMENT send, one segmented SendToAsync).</summary>
    private const int SegmentsPerSend = 40;

    /// <summary>What the command does, in one line (the command list of <c>netstack --help</c>).</summary>
    public const string Summary = "measure latency, rates and throughput, stack against kernel, in a private namespace";

    /// <summary>What the command does, for its own help.</summary>
    public static string Details => $"""
        Measures, in a private network namespace (re-executing under 'unshare' like the demo), between a kernel .NET Socket and
        services on the stack (through the TUN interface), and the same between two kernel namespaces over a veth pair (same
        MTU), and prints both with the ratio stack/kernel. The cases (--cases): udp: UDP round-trip latency (p50, p99) of
        {DatagramSize}-byte datagrams, one outstanding, and echoed datagrams per second, {Window} in flight at most; rr: TCP
        ping-pong, 1-byte request, 1-byte answer, one connection, round trip p50/p99, also with the stack as the client (its
        TcpConnection against a kernel echo); conn: short TCP connections per second (connect, send 1 byte, receive it, close),
        the client closing first, then the server closing first after its answer (HTTP/1.0 style), with the failed
        connections of each; bulk: TCP bulk throughput, kernel → X (into a discard service) and X → kernel (from a source
        service), --bulk-flows connections in parallel, the median of --bulk-runs transfers, with iperf3 alternating over the
        kernel column's veth (its figure must match the kernel column's) and an lwIP column (kernel → lwIP's TCP on a TUN,
        bench/lwip-sink, built with gcc when liblwip-dev is installed), and the .NET bytes this process allocated per packet
        through the interface during each transfer; usend: UDP bulk X → kernel, sends of {SegmentsPerSend} datagrams of
        {SegmentSize} bytes each (the stack's segmented UdpSocket.SendToAsync, USO when in force; a kernel socket with
        UDP_SEGMENT), datagrams per second a kernel socket received, and the share of those sent that it did not. Every case
        but http also prints the processor time per unit of work of both columns (per round trip, datagram, connection, GB):
        this process, the column's serving process, the processes waited for and the kernel's softirq threads; --svg FILE
        draws the ratios as a bar chart (higher is better). http: HTTP
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
    /// <param name="BulkFlows">Parallel connections sharing each bulk transfer.</param>
    /// <param name="Svg">Where to write the chart of the ratios, or null.</param>
    /// <param name="Offloads">Whether the stack runs with TUN offloads (the lwIP column compares only without).</param>
    /// <param name="BulkRuns">Measured transfers per bulk direction (the median is reported).</param>
    public sealed record Plan(TimeSpan Duration, long TcpBytes, int ConnClients, IReadOnlySet<string> Cases, int BulkFlows = 1, string? Svg = null, bool Offloads = true,
        int BulkRuns = 3);

    /// <summary>The <c>bench</c> command; <paramref name="args"/> is the whole command line, run again inside the namespace.</summary>
    public static Command Create(string[] args)
    {
        var seconds = Cli.Int("--seconds", "N", "seconds per udp, rr and conn measurement, 1-60 (default 2)", 1, 60, "a number of seconds");
        var tcpMib = Cli.Int("--tcp-mib", "N",
            "MiB per TCP bulk transfer, 1-4096 (default 1024; one measured transfer per direction and path, after a second of warm-up transfers)",
            1, 4096, "a number of MiB");
        var connClients = Cli.Int("--conn-clients", "N", "client threads opening connections in parallel, 1-64 (default 4)", 1, 64, "a number of threads");
        var bulkRuns = Cli.Int("--bulk-runs", "N", "measured transfers per bulk direction and column, the median reported, 1-15 (default 3)", 1, 15, "a number of runs");
        var bulkFlows = Cli.Int("--bulk-flows", "N", "parallel TCP connections sharing each bulk transfer, 1-64 (default 1)", 1, 64, "a number of flows");
        var svg = Cli.Value("--svg", "FILE", "also draw the ratios stack/kernel as an SVG bar chart in FILE (one bar per case, higher is better)", Path.GetFullPath);
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
        var command = new Command("bench", Summary)
        {
            seconds, tcpMib, connClients, bulkFlows, bulkRuns, svg, cases, idleConnections, soak, soakInterval, soakLoad, httpConnections, echoConnections, udpRate,
            soakCsv, soakSvg, threadPoolEvents,
        };
        interfaceOptions.AddTo(command);
        command.SetAction(r =>
        {
            var options = interfaceOptions.Read(r);
            if (options.Address is null)
                throw new UsageException("the benchmark runs over IPv4: --ip none leaves nothing to measure");

            if (!Isolation.IsIsolated)
                return Isolation.ReexecIsolated(args, SingleProcessorTiering());
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
                r.ValueOr(connClients, 4), r.ValueOr(cases, new HashSet<string>(DefaultCases, StringComparer.Ordinal)), r.ValueOr(bulkFlows, 1),
                r.IsGiven(svg) ? r.GetValue(svg) : null, options.Offloads, r.ValueOr(bulkRuns, 3)));
        });
        return command;
    }

    /// <summary>The runtime setting that lets the measuring processes' code reach full optimization on one processor.</summary>
    private const string DelayMultiplierVariable = "DOTNET_TC_DelaySingleProcMultiplier";

    /// <summary>
    /// On one processor (<c>taskset -c 0</c>, a one-CPU container) the runtime waits ten times
    /// longer (1 s instead of 100 ms, TC_DelaySingleProcMultiplier) after the last unoptimized
    /// compile before it starts promoting hot methods, and any new compile restarts the wait: under
    /// the bench's steady load the stack's loop ran unoptimized and instrumented code through the
    /// whole measurement (perf, <c>taskset -c 0 netstack bench --cases conn</c>: every sample of
    /// ProcessPacket QuickJitted for 8 s; with the multiplier 1, 91% OptimizedTier1 and 25% less
    /// processor time per connection). A measurement of steady-state work per unit of processor
    /// time wants the optimized code, in both columns (the peer process inherits the setting),
    /// so the bench's own processes get the multiplier 1 unless it is already set. Elsewhere the
    /// runtime's default stands; docs/benchmarks.md says what it means for an application.
    /// </summary>
    private static Dictionary<string, string>? SingleProcessorTiering()
    {
        if (Environment.ProcessorCount != 1 || Environment.GetEnvironmentVariable(DelayMultiplierVariable) is not null)
            return null;
        Console.Error.WriteLine($"{Name}: one processor: {DelayMultiplierVariable}=1 for the measuring processes, so that their code reaches full optimization (docs/benchmarks.md)");
        return new Dictionary<string, string> { [DelayMultiplierVariable] = "1" };
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
            $"{plan.Duration.TotalSeconds:0} s per udp/rr/conn measurement, {plan.ConnClients} conn client threads; TCP bulk of {plan.TcpBytes >> 20} MiB per direction" +
            (plan.BulkFlows > 1 ? $" over {plan.BulkFlows} flows" : "") + (options.Offloads ? "" : "; the stack without TUN offloads") +
            (Environment.ProcessorCount == 1
                ? $"; one processor, {DelayMultiplierVariable}={Environment.GetEnvironmentVariable(DelayMultiplierVariable) ?? "unset (10)"}"
                : ""));

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

        Lwip? lwip = null;
        if (plan.Cases.Contains("bulk"))
            lwip = MeasureLwip(options.Mtu, plan);

        var label = options.Mode == NetStackMode.Tap ? "stack (TAP)" : "stack (TUN)";
        PrintTable(plan, stack, kernel, lwip, label);
        if (plan.Svg is not null)
            WriteChart(plan, stack, kernel, lwip, label, options.Mtu);
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
        using var answerOnce = stack.ListenTcp(AnswerOncePort, backlog: 1024);
        using var stop = new CancellationTokenSource();
        var services = new[]
        {
            Task.Run(() => UdpEcho.RunAsync(echo, stop.Token)),
            Task.Run(() => TcpServices.AcceptLoopAsync(discard, "bench discard", StackDiscardAsync, stop.Token)),
            Task.Run(() => TcpServices.AcceptLoopAsync(source, "bench source", StackSourceAsync, stop.Token)),
            Task.Run(() => TcpServices.AcceptLoopAsync(tcpEcho, "bench echo", StackSmallEchoAsync, stop.Token)),
            Task.Run(() => TcpServices.AcceptLoopAsync(answerOnce, "bench answer-once", StackAnswerOnceAsync, stop.Token)),
        };
        try
        {
            var statistics = stack.Statistics;
            var cpu = CpuMeter.For(() => null);
            var m = MeasurePath(options.Address!, plan, () => statistics["device.read"] + statistics["device.written"], cpu);
            if (plan.Cases.Contains("rr") && options.HostAddress is not null)
            {
                // The stack as the client: its TcpConnection against a kernel echo on the TUN's
                // kernel side, in this namespace.
                using var kernelEcho = StartKernelEcho(new IPEndPoint(options.HostAddress, TcpEchoPort));
                Task.Run(() => MeasureStackClientRoundTripAsync(stack, new IPEndPoint(options.HostAddress, TcpEchoPort), plan.Duration, cpu, m)).GetAwaiter().GetResult();
            }
            if (plan.Cases.Contains("usend") && options.HostAddress is not null)
                MeasureUdpSend(options.HostAddress, plan.Duration, cpu, m, (time, sink) => StackUdpSend(stack, time, sink));
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
            answerOnce.Dispose();
            Task.WaitAll(services, TimeSpan.FromSeconds(5));
        }
    }

    /// <summary>Every case of <paramref name="plan"/> against the services at <paramref name="target"/>.</summary>
    private static Measurement MeasurePath(IPAddress target, Plan plan, Func<long> packets, CpuMeter cpu,
        Func<bool, (double Gbps, CpuTime? PerGB)>? bulkReference = null)
    {
        var m = new Measurement();
        if (plan.Cases.Contains("udp"))
            MeasureUdp(new IPEndPoint(target, EchoPort), plan.Duration, cpu, m);
        if (plan.Cases.Contains("rr"))
            MeasureTcpRoundTrip(new IPEndPoint(target, TcpEchoPort), plan.Duration, cpu, m);
        if (plan.Cases.Contains("conn"))
        {
            (m.ConnectionsPerSecond, m.ConnectionCpu, m.ConnectionsFailed) =
                MeasureConnections(new IPEndPoint(target, TcpEchoPort), serverCloses: false, plan.Duration, plan.ConnClients, cpu, m);
            (m.ServerCloseConnectionsPerSecond, m.ServerCloseConnectionCpu, m.ServerCloseConnectionsFailed) =
                MeasureConnections(new IPEndPoint(target, AnswerOncePort), serverCloses: true, plan.Duration, plan.ConnClients, cpu, m);
        }
        if (plan.Cases.Contains("bulk"))
            MeasureBulk(target, plan, packets, cpu, m, bulkReference);
        return m;
    }
}
