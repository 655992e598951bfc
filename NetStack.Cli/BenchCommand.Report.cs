using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace NetStack.Cli;

/// <summary>The bench's results (<see cref="Measurement"/>) and the table it prints.</summary>
public static partial class BenchCommand
{
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

        /// <summary>Processor time per UDP round trip (one outstanding), µs.</summary>
        public CpuTime? UdpRoundTripCpu { get; set; }

        /// <summary>Processor time per echoed datagram in the flood, µs.</summary>
        public CpuTime? UdpDatagramCpu { get; set; }

        /// <summary>Processor time per TCP ping-pong round trip, µs.</summary>
        public CpuTime? TcpRoundTripCpu { get; set; }

        /// <summary>Processor time per TCP ping-pong round trip with X as the client, µs.</summary>
        public CpuTime? ClientRoundTripCpu { get; set; }

        /// <summary>Short connections completed per second, the client closing first.</summary>
        public double? ConnectionsPerSecond { get; set; }

        /// <summary>Processor time per short connection, the client closing first, µs.</summary>
        public CpuTime? ConnectionCpu { get; set; }

        /// <summary>Short connections that failed, the client closing first (warm-up included).</summary>
        public long? ConnectionsFailed { get; set; }

        /// <summary>Short connections completed per second, the server closing first (HTTP/1.0 style).</summary>
        public double? ServerCloseConnectionsPerSecond { get; set; }

        /// <summary>Processor time per short connection, the server closing first, µs.</summary>
        public CpuTime? ServerCloseConnectionCpu { get; set; }

        /// <summary>Short connections that failed, the server closing first (warm-up included).</summary>
        public long? ServerCloseConnectionsFailed { get; set; }

        /// <summary>TCP bulk kernel → X (into the discard service), with the reference's figures in the kernel column.</summary>
        public BulkFigures? In { get; set; }

        /// <summary>TCP bulk X → kernel (from the source service), with the reference's figures in the kernel column.</summary>
        public BulkFigures? Out { get; set; }

        /// <summary>Why iperf3 did not run, or null.</summary>
        public string? IperfSkipped { get; set; }

        /// <summary>The processor time of all measured intervals together.</summary>
        public CpuTime Measured { get; set; }

        /// <summary>usend: datagrams per second the kernel socket received.</summary>
        public double? SendReceivedPerSecond { get; set; }

        /// <summary>usend: the share of the datagrams sent that the kernel socket did not receive.</summary>
        public double? SendLost { get; set; }

        /// <summary>usend: processor time per datagram received, µs.</summary>
        public CpuTime? SendCpuPerDatagram { get; set; }

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

    /// <summary>One direction of the bulk case: every run's Gbit/s, and the reference's (iperf3) when it ran alongside.</summary>
    /// <param name="Runs">Gbit/s of each measured transfer.</param>
    /// <param name="BytesPerPacket">The largest of the runs' bytes allocated per packet.</param>
    /// <param name="PerGB">The median processor time per GB, µs.</param>
    /// <param name="ReferenceRuns">iperf3's Gbit/s of each run, alternating with ours; null when it did not run.</param>
    /// <param name="ReferencePerGB">iperf3's median processor time per GB, µs.</param>
    public sealed record BulkFigures(IReadOnlyList<double> Runs, double BytesPerPacket, CpuTime? PerGB, IReadOnlyList<double>? ReferenceRuns, CpuTime? ReferencePerGB)
    {
        /// <summary>The median Gbit/s.</summary>
        public double Gbps => Median(Runs);

        /// <summary>The median of iperf3's Gbit/s.</summary>
        public double? ReferenceGbps => ReferenceRuns is { Count: > 0 } r ? Median(r) : null;
    }

    /// <summary>One row of the table: label, the stack's, the kernel's and the lwIP column's text, and the ratios.</summary>
    private sealed record Row(string Name, string Stack, string Kernel, string Ratio, string Lwip = "", string LwipRatio = "");

    private static string Us(TimeSpan? t) => t is { } v ? $"{v.TotalMicroseconds:0.0} µs" : "n/a";
    private static string Rate(double? r) => r is { } v ? $"{v:0}" : "n/a";
    private static string Count(long? c) => c is { } v ? v.ToString(CultureInfo.InvariantCulture) : "n/a";
    private static string Ratio(double? a, double? b) => a is { } x && b is { } y && y > 0 ? $"{x / y:0.00}" : "n/a";
    private static string Gbps(double? g) => g is { } v ? $"{v:0.00} Gbit/s" : "n/a";
    private static string Bytes(double? b) => b is { } v ? $"{v:0.0} B" : "n/a";
    private static string Percent(double? p) => p is { } v ? $"{v * 100:0.0}%" : "n/a";
    private static string CpuUs(CpuTime? t) => t is { } v ? $"{v.Processes:0.0} µs" : "n/a";
    private static string CpuPerGB(CpuTime? t) => t is { } v ? $"{v.Processes / 1e6:0.000} s/GB" : "n/a";
    private static string CpuRatio(CpuTime? a, CpuTime? b) => Ratio(a?.Processes, b?.Processes);

    private static void PrintTable(Plan plan, Measurement? stack, Measurement? kernel, Lwip? lwip, string stackLabel)
    {
        var rows = new List<Row>();
        void Cpu(string name, CpuTime? s, CpuTime? k) => rows.Add(new($"  {name}", CpuUs(s), CpuUs(k), CpuRatio(s, k)));
        if (plan.Cases.Contains("udp"))
        {
            rows.Add(new("UDP round trip p50", Us(stack?.P50), Us(kernel?.P50), Ratio(stack?.P50?.TotalMicroseconds, kernel?.P50?.TotalMicroseconds)));
            rows.Add(new("UDP round trip p99", Us(stack?.P99), Us(kernel?.P99), Ratio(stack?.P99?.TotalMicroseconds, kernel?.P99?.TotalMicroseconds)));
            rows.Add(new("UDP round trips measured", Count(stack?.Samples), Count(kernel?.Samples), ""));
            Cpu("CPU per round trip", stack?.UdpRoundTripCpu, kernel?.UdpRoundTripCpu);
            rows.Add(new($"datagrams/s ({Window} in flight)", Rate(stack?.DatagramsPerSecond), Rate(kernel?.DatagramsPerSecond), Ratio(stack?.DatagramsPerSecond, kernel?.DatagramsPerSecond)));
            rows.Add(new("datagrams lost", Count(stack?.Lost), Count(kernel?.Lost), ""));
            Cpu("CPU per datagram", stack?.UdpDatagramCpu, kernel?.UdpDatagramCpu);
        }
        if (plan.Cases.Contains("rr"))
        {
            rows.Add(new("TCP ping-pong p50", Us(stack?.TcpP50), Us(kernel?.TcpP50), Ratio(stack?.TcpP50?.TotalMicroseconds, kernel?.TcpP50?.TotalMicroseconds)));
            rows.Add(new("TCP ping-pong p99", Us(stack?.TcpP99), Us(kernel?.TcpP99), Ratio(stack?.TcpP99?.TotalMicroseconds, kernel?.TcpP99?.TotalMicroseconds)));
            rows.Add(new("TCP ping-pongs measured", Count(stack?.TcpSamples), Count(kernel?.TcpSamples), ""));
            Cpu("CPU per round trip", stack?.TcpRoundTripCpu, kernel?.TcpRoundTripCpu);
            // X as the client: the stack's TcpConnection against a kernel echo; the kernel column
            // is the kernel client's figure above (kernel ⇄ kernel either way).
            rows.Add(new("TCP ping-pong p50, X client", Us(stack?.ClientP50), Us(kernel?.TcpP50), Ratio(stack?.ClientP50?.TotalMicroseconds, kernel?.TcpP50?.TotalMicroseconds)));
            rows.Add(new("TCP ping-pong p99, X client", Us(stack?.ClientP99), Us(kernel?.TcpP99), Ratio(stack?.ClientP99?.TotalMicroseconds, kernel?.TcpP99?.TotalMicroseconds)));
            Cpu("CPU per round trip", stack?.ClientRoundTripCpu, kernel?.TcpRoundTripCpu);
        }
        if (plan.Cases.Contains("conn"))
        {
            rows.Add(new("TCP connections/s, client closes", Rate(stack?.ConnectionsPerSecond), Rate(kernel?.ConnectionsPerSecond), Ratio(stack?.ConnectionsPerSecond, kernel?.ConnectionsPerSecond)));
            Cpu("CPU per connection", stack?.ConnectionCpu, kernel?.ConnectionCpu);
            rows.Add(new("  failed connections", Count(stack?.ConnectionsFailed), Count(kernel?.ConnectionsFailed), ""));
            rows.Add(new("TCP connections/s, server closes", Rate(stack?.ServerCloseConnectionsPerSecond), Rate(kernel?.ServerCloseConnectionsPerSecond),
                Ratio(stack?.ServerCloseConnectionsPerSecond, kernel?.ServerCloseConnectionsPerSecond)));
            Cpu("CPU per connection", stack?.ServerCloseConnectionCpu, kernel?.ServerCloseConnectionCpu);
            rows.Add(new("  failed connections", Count(stack?.ServerCloseConnectionsFailed), Count(kernel?.ServerCloseConnectionsFailed), ""));
        }
        if (plan.Cases.Contains("bulk"))
        {
            var flows = plan.BulkFlows > 1 ? $", {plan.BulkFlows} flows" : "";
            rows.Add(new($"TCP bulk kernel → X{flows}", Gbps(stack?.In?.Gbps), Gbps(kernel?.In?.Gbps), Ratio(stack?.In?.Gbps, kernel?.In?.Gbps),
                Gbps(lwip?.Gbps), Ratio(stack?.In?.Gbps, lwip?.Gbps)));
            rows.Add(new("  CPU per GB", CpuPerGB(stack?.In?.PerGB), CpuPerGB(kernel?.In?.PerGB), CpuRatio(stack?.In?.PerGB, kernel?.In?.PerGB),
                CpuPerGB(lwip?.PerGB), CpuRatio(stack?.In?.PerGB, lwip?.PerGB)));
            // The independent tool over the same veth: the kernel column must agree with it.
            rows.Add(new("  iperf3, same veth", "", Gbps(kernel?.In?.ReferenceGbps), Ratio(kernel?.In?.Gbps, kernel?.In?.ReferenceGbps) + " k/i"));
            rows.Add(new("  iperf3 CPU per GB", "", CpuPerGB(kernel?.In?.ReferencePerGB), CpuRatio(kernel?.In?.PerGB, kernel?.In?.ReferencePerGB) + " k/i"));
            rows.Add(new($"TCP bulk X → kernel{flows}", Gbps(stack?.Out?.Gbps), Gbps(kernel?.Out?.Gbps), Ratio(stack?.Out?.Gbps, kernel?.Out?.Gbps)));
            rows.Add(new("  CPU per GB", CpuPerGB(stack?.Out?.PerGB), CpuPerGB(kernel?.Out?.PerGB), CpuRatio(stack?.Out?.PerGB, kernel?.Out?.PerGB)));
            rows.Add(new("  iperf3 -R, same veth", "", Gbps(kernel?.Out?.ReferenceGbps), Ratio(kernel?.Out?.Gbps, kernel?.Out?.ReferenceGbps) + " k/i"));
            rows.Add(new("  iperf3 -R CPU per GB", "", CpuPerGB(kernel?.Out?.ReferencePerGB), CpuRatio(kernel?.Out?.PerGB, kernel?.Out?.ReferencePerGB) + " k/i"));
            // The kernel column is the client's own allocation over the veth transfer: the floor
            // the stack's figure sits on. A ratio against a figure near 0 says nothing.
            rows.Add(new("allocated/packet kernel → X", Bytes(stack?.In?.BytesPerPacket), Bytes(kernel?.In?.BytesPerPacket), "-"));
            rows.Add(new("allocated/packet X → kernel", Bytes(stack?.Out?.BytesPerPacket), Bytes(kernel?.Out?.BytesPerPacket), "-"));
        }
        if (plan.Cases.Contains("usend"))
        {
            rows.Add(new($"UDP X → kernel ({SegmentsPerSend}/send)", Rate(stack?.SendReceivedPerSecond), Rate(kernel?.SendReceivedPerSecond), Ratio(stack?.SendReceivedPerSecond, kernel?.SendReceivedPerSecond)));
            rows.Add(new("  of which lost", Percent(stack?.SendLost), Percent(kernel?.SendLost), ""));
            Cpu("CPU per datagram received", stack?.SendCpuPerDatagram, kernel?.SendCpuPerDatagram);
        }
        if (plan.Cases.Contains("http"))
        {
            static string Requests(HttpLoad? h) => h is null ? "n/a" : h.Error is not null ? "error" : Rate(h.RequestsPerSecond);
            static string Failed(HttpLoad? h) => h is null ? "n/a" : h.Error is not null ? "error" : Count(h.Failed);
            void Http(string name, HttpLoad? s, HttpLoad? k)
            {
                rows.Add(new(name, Requests(s), Requests(k), Ratio(s?.RequestsPerSecond, k?.RequestsPerSecond)));
                rows.Add(new("  failed", Failed(s), Failed(k), ""));
            }
            Http("HTTP ab, req/s (new conn.)", stack?.HttpAb, kernel?.HttpAb);
            Http("HTTP ab -k, req/s", stack?.HttpAbKeepAlive, kernel?.HttpAbKeepAlive);
            Http("HTTP wrk, req/s", stack?.HttpWrk, kernel?.HttpWrk);
            Http("HTTP h2load (h2c), req/s", stack?.HttpH2load, kernel?.HttpH2load);
        }
        var withLwip = plan.Cases.Contains("bulk");
        Console.WriteLine($"{"",-34}{stackLabel,14}{"kernel (veth)",16}{"stack/kernel",14}" + (withLwip ? $"{"lwIP (TUN)",14}{"stack/lwIP",12}" : ""));
        foreach (var r in rows)
            Console.WriteLine($"{r.Name,-34}{r.Stack,14}{r.Kernel,16}{r.Ratio,14}" + (withLwip ? $"{r.Lwip,14}{r.LwipRatio,12}" : ""));
        Console.WriteLine("Ratios: for rates higher is better, for latencies and processor time lower is better; \"k/i\" is the kernel column over iperf3's figure.");
        Console.WriteLine("Processor time: this process, the processes it waited for (iperf3), the column's serving process (kernel peer, lwIP sink) and the");
        Console.WriteLine("kernel's softirq threads, over the measured intervals only; the kernel's packet work runs in those processes' time.");
        foreach (var (name, m) in new[] { ("stack", stack), ("kernel", kernel) })
        {
            if (m is not null && m.Measured.Machine > 0)
                Console.WriteLine($"  {name} column: {m.Measured.Processes / 1e6:0.00} s of the processes, {m.Measured.Machine / 1e6:0.00} s of the whole machine " +
                    $"({(m.Measured.Machine - m.Measured.Processes) / m.Measured.Machine * 100:0}% other load)");
        }
        if (plan.Cases.Contains("bulk"))
        {
            static string Scatter(IReadOnlyList<double>? runs) => runs is { Count: > 0 } r ? $"{r.Min():0.0}–{r.Max():0.0}" : "n/a";
            Console.WriteLine($"Bulk: the median of {plan.BulkRuns} transfers per direction (iperf3 alternating with the kernel column's); Gbit/s min–max: " +
                $"stack {Scatter(stack?.In?.Runs)} in, {Scatter(stack?.Out?.Runs)} out; kernel {Scatter(kernel?.In?.Runs)} in, {Scatter(kernel?.Out?.Runs)} out; " +
                $"iperf3 {Scatter(kernel?.In?.ReferenceRuns)} in, {Scatter(kernel?.Out?.ReferenceRuns)} out; lwIP {Scatter(lwip?.Runs)}.");
            if (kernel?.IperfSkipped is { } skippedIperf)
                Console.WriteLine($"iperf3 skipped: {skippedIperf}");
            if (lwip?.Skipped is { } skippedLwip)
                Console.WriteLine($"lwIP column skipped: {skippedLwip}");
            else if (plan.Offloads)
                Console.WriteLine("lwIP has no offloads (one packet per system call, MSS 1460): compare with --no-offload for the like-for-like ratio.");
        }
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
