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
