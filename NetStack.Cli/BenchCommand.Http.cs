using System.Globalization;
using System.Net;
using System.Text.RegularExpressions;

namespace NetStack.Cli;

/// <summary>
/// The bench's <c>http</c> case: Debian's HTTP load generators (ApacheBench, wrk, h2load) against
/// <see cref="HttpServer"/>, once on the stack (what <c>netstack serve --http/--h2c</c> runs) and once
/// on the kernel's sockets in the peer namespace (the same app on Kestrel's socket transport), in
/// one run. Each tool's own figures are taken: requests per second and failed requests.
/// </summary>
public static partial class BenchCommand
{
    /// <summary>HTTP/1.x port of both sides' HTTP app.</summary>
    private const int HttpPort = EchoPort + 5;

    /// <summary>Cleartext HTTP/2 (prior knowledge) port of both sides' HTTP app.</summary>
    private const int H2cPort = EchoPort + 6;

    /// <summary>Body bytes of each HTTP response (GET /bytes/N).</summary>
    private const int HttpBodyBytes = 1000;

    /// <summary>Connections each HTTP load generator keeps open.</summary>
    private const int HttpConnections = 20;

    /// <summary>Requests in flight per HTTP/2 connection (h2load -m).</summary>
    private const int H2Streams = 10;

    /// <summary>The tools the http case runs, and the Debian package of each.</summary>
    private static readonly (string Tool, string Package)[] HttpTools = [("ab", "apache2-utils"), ("wrk", "wrk"), ("h2load", "nghttp2-client")];

    /// <summary>wrk's own counts through its Lua <c>done</c> hook: requests and each kind of error.</summary>
    private const string WrkSummaryScript = """
        done = function(summary, latency, requests)
          local e = summary.errors
          io.write(string.format("summary requests=%d errors=%d\n", summary.requests,
            e.connect + e.read + e.write + e.status + e.timeout))
        end
        """;

    /// <summary>One load generator's result: its requests per second and the requests it counted as failed (errors and non-2xx).</summary>
    /// <param name="RequestsPerSecond">The tool's own figure; null when the tool failed.</param>
    /// <param name="Failed">Failed requests, non-2xx responses and socket errors; null when the tool failed.</param>
    /// <param name="Error">Why the tool failed (exit code and last line), or null.</param>
    public sealed record HttpLoad(double? RequestsPerSecond, long? Failed, string? Error = null);

    /// <summary>The http case's tools missing from PATH, as "tool (package)"; empty when all are there.</summary>
    private static List<string> MissingHttpTools() =>
        HttpTools.Where(t => !OnPath(t.Tool)).Select(t => $"{t.Tool} ({t.Package})").ToList();

    private static bool OnPath(string tool) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Any(dir => File.Exists(Path.Combine(dir, tool)));

    /// <summary>
    /// The http case against the HTTP app at <paramref name="target"/>: a warm-up, then for
    /// <paramref name="duration"/> each: ab -k (HTTP/1.0 keep-alive), wrk (HTTP/1.1 keep-alive),
    /// h2load (HTTP/2 with prior knowledge), ab (HTTP/1.0, a new connection per request).
    /// </summary>
    private static void MeasureHttp(IPAddress target, TimeSpan duration, Measurement m)
    {
        var missing = MissingHttpTools();
        if (missing.Count > 0)
        {
            m.HttpSkipped = $"not installed: {string.Join(", ", missing)}";
            return;
        }
        var seconds = $"{Math.Max(1, (int)duration.TotalSeconds)}";
        var http = $"http://{target}:{HttpPort}/bytes/{HttpBodyBytes}";
        var h2c = $"http://{target}:{H2cPort}/bytes/{HttpBodyBytes}";
        var script = Path.GetTempFileName();
        try
        {
            File.WriteAllText(script, WrkSummaryScript);
            string[] wrk = ["-t", "2", "-c", $"{HttpConnections}", "-d", $"{seconds}s", "-s", script, http];
            string[] h2load = ["-D", seconds, "-c", $"{HttpConnections}", "-m", $"{H2Streams}", h2c];
            // Warm-up: both servers' HTTP/1.1 and HTTP/2 paths run until the JIT has optimized
            // them (as the other cases do).
            var settling = new JitSettling(ConnectionWarmUp, MaxWarmUp);
            do
            {
                Tool("wrk", ["-t", "2", "-c", $"{HttpConnections}", "-d", "1s", http], duration);
                Tool("h2load", ["-D", "1", "-c", $"{HttpConnections}", "-m", $"{H2Streams}", h2c], duration);
            }
            while (!settling.Settled());
            // ab -t alone stops at 50,000 requests: -n lifts that, so the time limit ends the run.
            // A new connection per request last: its thousands of connects use up the client's
            // ephemeral ports fastest, and on the stack's side each leaves a TIME-WAIT.
            m.HttpAbKeepAlive = Load(() => Ab(Tool("ab", ["-k", "-s", "10", "-t", seconds, "-n", "10000000", "-c", $"{HttpConnections}", http], duration)));
            m.HttpWrk = Load(() => Wrk(Tool("wrk", wrk, duration)));
            m.HttpH2load = Load(() => H2load(Tool("h2load", h2load, duration)));
            m.HttpAb = Load(() => Ab(Tool("ab", ["-s", "10", "-t", seconds, "-n", "10000000", "-c", $"{HttpConnections}", http], duration)));
        }
        finally
        {
            File.Delete(script);
        }
    }

    /// <summary>One tool's result, or its failure (the other tools still run).</summary>
    private static HttpLoad Load(Func<HttpLoad> run)
    {
        try
        {
            return run();
        }
        catch (Exception e) when (e is InvalidOperationException or TimeoutException)
        {
            return new HttpLoad(null, null, e.Message);
        }
    }

    /// <summary>Runs a load generator for about <paramref name="duration"/>; its output, or an exception with its errors.</summary>
    private static string Tool(string tool, string[] args, TimeSpan duration)
    {
        var r = Shell.RunAsync(tool, args, duration + TimeSpan.FromSeconds(60)).GetAwaiter().GetResult();
        if (r.ExitCode != 0)
            throw new InvalidOperationException($"'{tool} {string.Join(' ', args)}' exited with {r.ExitCode}: {(r.Error + r.Output).Trim().Split('\n')[^1]}");
        return r.Output;
    }

    private static double Number(string output, string pattern)
    {
        var match = Regex.Match(output, pattern, RegexOptions.Multiline);
        if (!match.Success)
            throw new InvalidOperationException($"no '{pattern}' in the tool's output: {output}");
        return double.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture);
    }

    // "Requests per second:    638.55 [#/sec] (mean)", "Failed requests:        0", "Non-2xx responses:      3" (only when any).
    private static HttpLoad Ab(string output) => new(
        Number(output, @"^Requests per second:\s+([\d.]+)"),
        (long)Number(output, @"^Failed requests:\s+(\d+)")
        + (Regex.IsMatch(output, "^Non-2xx responses:", RegexOptions.Multiline) ? (long)Number(output, @"^Non-2xx responses:\s+(\d+)") : 0));

    // "Requests/sec:   8365.32" and the Lua summary line.
    private static HttpLoad Wrk(string output) => new(
        Number(output, @"^Requests/sec:\s+([\d.]+)"),
        (long)Number(output, @"^summary requests=\d+ errors=(\d+)"));

    // "finished in 2.00s, 13358.00 req/s, ..."; "requests: N total, N started, N done, N succeeded, F failed, E errored, T timeout";
    // "status codes: N 2xx, a 3xx, b 4xx, c 5xx".
    private static HttpLoad H2load(string output) => new(
        Number(output, @"^finished in [\d.]+m?s, ([\d.]+) req/s"),
        (long)Number(output, @"^requests: .* (\d+) failed")
        + (long)Number(output, @"^requests: .* (\d+) timeout")
        + (long)Number(output, @"^status codes: \d+ 2xx, (\d+) 3xx")
        + (long)Number(output, @"^status codes: .* (\d+) 4xx")
        + (long)Number(output, @"^status codes: .* (\d+) 5xx"));
}
