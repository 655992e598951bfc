using System.Globalization;
using System.Net;
using System.Text;

namespace NetStack.Cli;

/// <summary>The bench's chart (<c>--svg FILE</c>): the ratios of the table as bars, written as SVG text.</summary>
public static partial class BenchCommand
{
    /// <summary>One bar: its label, stack ÷ kernel turned so that higher is better, and whether it compares with lwIP instead.</summary>
    private sealed record Bar(string Label, double? Value, bool Lwip = false);

    /// <summary>
    /// The bars of the chart, one per case: for rates the ratio stack ÷ kernel, for latencies and
    /// processor time the inverse (kernel ÷ stack), so that a longer bar is always better and 1.0
    /// is the kernel; the lwIP bar is stack ÷ lwIP for bulk kernel → X.
    /// </summary>
    private static List<Bar> ChartBars(Plan plan, Measurement? s, Measurement? k, Lwip? lwip)
    {
        static double? Higher(double? stack, double? kernel) => stack is { } a && kernel is { } b && b > 0 ? a / b : null;
        static double? Lower(double? stack, double? kernel) => stack is { } a && kernel is { } b && a > 0 ? b / a : null;
        var bars = new List<Bar>();
        if (plan.Cases.Contains("udp"))
        {
            bars.Add(new("UDP round trip p50 (latency, inverted)", Lower(s?.P50?.TotalMicroseconds, k?.P50?.TotalMicroseconds)));
            bars.Add(new("UDP CPU per round trip (inverted)", Lower(s?.UdpRoundTripCpu?.Processes, k?.UdpRoundTripCpu?.Processes)));
            bars.Add(new($"UDP datagrams/s, {Window} in flight", Higher(s?.DatagramsPerSecond, k?.DatagramsPerSecond)));
            bars.Add(new("UDP CPU per datagram (inverted)", Lower(s?.UdpDatagramCpu?.Processes, k?.UdpDatagramCpu?.Processes)));
        }
        if (plan.Cases.Contains("rr"))
        {
            bars.Add(new("TCP ping-pong p50 (latency, inverted)", Lower(s?.TcpP50?.TotalMicroseconds, k?.TcpP50?.TotalMicroseconds)));
            bars.Add(new("TCP CPU per round trip (inverted)", Lower(s?.TcpRoundTripCpu?.Processes, k?.TcpRoundTripCpu?.Processes)));
            bars.Add(new("TCP ping-pong p50, X client (inverted)", Lower(s?.ClientP50?.TotalMicroseconds, k?.TcpP50?.TotalMicroseconds)));
        }
        if (plan.Cases.Contains("conn"))
        {
            bars.Add(new("TCP connections/s, client closes", Higher(s?.ConnectionsPerSecond, k?.ConnectionsPerSecond)));
            bars.Add(new("  CPU per connection (inverted)", Lower(s?.ConnectionCpu?.Processes, k?.ConnectionCpu?.Processes)));
            bars.Add(new("TCP connections/s, server closes", Higher(s?.ServerCloseConnectionsPerSecond, k?.ServerCloseConnectionsPerSecond)));
            bars.Add(new("  CPU per connection (inverted)", Lower(s?.ServerCloseConnectionCpu?.Processes, k?.ServerCloseConnectionCpu?.Processes)));
        }
        if (plan.Cases.Contains("bulk"))
        {
            var flows = plan.BulkFlows > 1 ? $", {plan.BulkFlows} flows" : "";
            bars.Add(new($"TCP bulk kernel → X{flows}", Higher(s?.In?.Gbps, k?.In?.Gbps)));
            bars.Add(new("  CPU per GB (inverted)", Lower(s?.In?.PerGB?.Processes, k?.In?.PerGB?.Processes)));
            if (lwip?.Gbps is not null)
            {
                bars.Add(new($"TCP bulk kernel → X{flows}, stack ÷ lwIP", Higher(s?.In?.Gbps, lwip.Gbps), Lwip: true));
                bars.Add(new("  CPU per GB, lwIP ÷ stack", Lower(s?.In?.PerGB?.Processes, lwip.PerGB?.Processes), Lwip: true));
            }
            bars.Add(new($"TCP bulk X → kernel{flows}", Higher(s?.Out?.Gbps, k?.Out?.Gbps)));
            bars.Add(new("  CPU per GB (inverted)", Lower(s?.Out?.PerGB?.Processes, k?.Out?.PerGB?.Processes)));
        }
        if (plan.Cases.Contains("usend"))
        {
            bars.Add(new($"UDP X → kernel, {SegmentsPerSend}/send", Higher(s?.SendReceivedPerSecond, k?.SendReceivedPerSecond)));
            bars.Add(new("  CPU per datagram (inverted)", Lower(s?.SendCpuPerDatagram?.Processes, k?.SendCpuPerDatagram?.Processes)));
        }
        if (plan.Cases.Contains("http"))
        {
            bars.Add(new("HTTP ab, new connection per request", Higher(s?.HttpAb?.RequestsPerSecond, k?.HttpAb?.RequestsPerSecond)));
            bars.Add(new("HTTP wrk, keep-alive", Higher(s?.HttpWrk?.RequestsPerSecond, k?.HttpWrk?.RequestsPerSecond)));
            bars.Add(new("HTTP h2load, h2c", Higher(s?.HttpH2load?.RequestsPerSecond, k?.HttpH2load?.RequestsPerSecond)));
        }
        return bars;
    }

    /// <summary>Writes the chart of <see cref="ChartBars"/> to <see cref="Plan.Svg"/>: horizontal bars, a line at 1.0 (the kernel).</summary>
    private static void WriteChart(Plan plan, Measurement? stack, Measurement? kernel, Lwip? lwip, string stackLabel, int mtu)
    {
        var bars = ChartBars(plan, stack, kernel, lwip);
        const int labelWidth = 300, plotWidth = 460, barHeight = 18, gap = 6, top = 56, right = 60;
        var max = Math.Max(1.5, Math.Ceiling(bars.Max(b => b.Value ?? 0) * 2) / 2);
        int height = top + bars.Count * (barHeight + gap) + 40;
        int width = labelWidth + plotWidth + right;
        double X(double v) => labelWidth + v / max * plotWidth;
        static string F(double v) => v.ToString("0.#", CultureInfo.InvariantCulture);
        var svg = new StringBuilder();
        svg.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n");
        svg.Append(CultureInfo.InvariantCulture, $"<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">netstack bench: NetStack, {WebUtility.HtmlEncode(stackLabel)}, against the kernel over veth (1.0), MTU {mtu}: higher is better</text>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"10\" y=\"38\">Rates: stack ÷ kernel. Latencies and processor time (inverted): kernel ÷ stack. Orange: stack ÷ lwIP. {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC</text>\n");
        for (double t = 0; t <= max + 1e-9; t += 0.5)
        {
            svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{F(X(t))}\" y1=\"{top - 4}\" x2=\"{F(X(t))}\" y2=\"{height - 30}\" stroke=\"#ddd\"/>\n");
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(X(t))}\" y=\"{height - 16}\" text-anchor=\"middle\">{t:0.0}</text>\n");
        }
        for (var i = 0; i < bars.Count; i++)
        {
            var b = bars[i];
            int y = top + i * (barHeight + gap);
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{labelWidth - 8}\" y=\"{y + barHeight - 5}\" text-anchor=\"end\">{WebUtility.HtmlEncode(b.Label.Trim())}</text>\n");
            if (b.Value is { } v)
            {
                var color = b.Lwip ? "#e08a2c" : b.Label.StartsWith("  ", StringComparison.Ordinal) ? "#7fa7d9" : "#3a6fb5";
                svg.Append(CultureInfo.InvariantCulture, $"<rect x=\"{labelWidth}\" y=\"{y}\" width=\"{F(Math.Max(0.5, X(Math.Min(v, max)) - labelWidth))}\" height=\"{barHeight}\" fill=\"{color}\"/>\n");
                svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(X(Math.Min(v, max)) + 4)}\" y=\"{y + barHeight - 5}\">{v:0.00}</text>\n");
            }
            else
            {
                svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{labelWidth + 4}\" y=\"{y + barHeight - 5}\" fill=\"#888\">not measured</text>\n");
            }
        }
        svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{F(X(1))}\" y1=\"{top - 8}\" x2=\"{F(X(1))}\" y2=\"{height - 30}\" stroke=\"#c00\" stroke-width=\"2\"/>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(X(1) + 4)}\" y=\"{top - 10}\" fill=\"#c00\">kernel = 1.0</text>\n");
        svg.Append("</svg>\n");
        File.WriteAllText(plan.Svg!, svg.ToString());
        Console.WriteLine($"chart: {plan.Svg}");
    }
}
