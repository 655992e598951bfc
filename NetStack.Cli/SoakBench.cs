using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace NetStack.Cli;

/// <summary>
/// <c>netstack bench --soak MINUTES</c>: the stack's memory under sustained mixed load. This
/// process runs the stack and its services as <c>serve</c> does (its Kestrel HTTP app, TCP echo, UDP echo);
/// load generators in other processes (<c>wrk</c> when installed, and a kernel-socket client,
/// <see cref="RunLoad"/>), both at lower priority, keep them busy for the whole run; every few
/// seconds a line reports this process's resident set and the GC's heap and commitment, so a
/// climb shows, and whose it is (the managed heap's, the GC's free space, or native memory).
/// </summary>
/// <remarks>
/// Everything runs inside the private network namespace <c>bench</c> makes; the load generators'
/// memory is in their own processes and does not count. The end of the run prints the slope of
/// each figure (least squares over the samples after the warm-up, in MB per minute) and, when
/// asked, writes every sample as CSV and the curves as an SVG.
/// </remarks>
public static class SoakBench
{
    /// <summary>Hidden subcommand: the kernel-socket load generator.</summary>
    public const string LoadCommand = "__soak-load";

    /// <summary>The load kinds <c>--soak-load</c> takes.</summary>
    public static readonly string[] LoadNames = ["http", "echo", "udp"];

    /// <summary>TCP echo (RFC 862) port, as in the issue's <c>serve --echo 7</c>.</summary>
    private const int EchoPort = 7;

    /// <summary>UDP echo port.</summary>
    private const int UdpEchoPort = 7000;

    /// <summary>HTTP port.</summary>
    private const int HttpPort = 8080;

    /// <summary>Size of each HTTP response body (GET /bytes/N), as in the issue's scenario.</summary>
    private const int HttpBodyBytes = 10 * 1024;

    /// <summary>Bytes per echo exchange on the persistent TCP echo connections.</summary>
    private const int EchoMessageBytes = 1024;

    /// <summary>How long sampling waits for the loads' persistent connections.</summary>
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(30);

    /// <summary>Short TCP echo connections (connect, exchange, close) per second.</summary>
    private const int ShortConnectionsPerSecond = 50;

    /// <summary>The UDP datagram sizes the flood cycles through (payload bytes).</summary>
    private static readonly int[] DatagramSizes = [64, 512, 1400];

    /// <summary>What to run and how long.</summary>
    /// <param name="Duration">The whole run.</param>
    /// <param name="Interval">Time between samples.</param>
    /// <param name="Loads">Load kinds (a subset of <see cref="LoadNames"/>).</param>
    /// <param name="HttpConnections">Keep-alive HTTP connections.</param>
    /// <param name="EchoConnections">Persistent TCP echo connections.</param>
    /// <param name="UdpRate">UDP datagrams per second sent to the echo.</param>
    /// <param name="CsvPath">Where to write every sample as CSV, or null.</param>
    /// <param name="SvgPath">Where to write the curves as SVG, or null.</param>
    /// <param name="ThreadPoolEvents">Count the thread pool's thread adjustments by reason (an in-process listener to the runtime's events; it costs native buffers of its own).</param>
    public sealed record Plan(TimeSpan Duration, TimeSpan Interval, IReadOnlySet<string> Loads, int HttpConnections, int EchoConnections,
        int UdpRate, string? CsvPath, string? SvgPath, bool ThreadPoolEvents = false);

    /// <summary>One sample.</summary>
    /// <param name="Time">Since the load started.</param>
    /// <param name="Memory">The process's and the GC's figures.</param>
    /// <param name="Kinds">The resident set by kind of mapping.</param>
    /// <param name="Connections">TCP connections the stack holds (any state but LISTEN), from its meter.</param>
    /// <param name="ThreadPoolThreads">The thread pool's threads (<see cref="ThreadPool.ThreadCount"/>).</param>
    /// <param name="CompiledMethods">Methods the JIT has compiled so far (tiering recompiles count again).</param>
    /// <param name="PacketsPerSecond">Packets through the device per second since the last sample.</param>
    /// <param name="AllocatedPerSecond">Managed bytes allocated per second since the last sample.</param>
    public sealed record Sample(TimeSpan Time, ProcessMemory Memory, ResidentByKind Kinds, long Connections, int ThreadPoolThreads, long CompiledMethods,
        double PacketsPerSecond, double AllocatedPerSecond);

    /// <summary>Runs the soak inside the private namespace; returns the exit code.</summary>
    public static int Run(NetStackOptions options, Plan plan)
    {
        Isolation.LoopbackUp();
        TryReuseTimeWait();
        using var threadPool = plan.ThreadPoolEvents ? new ThreadPoolWatch() : null;
        // The stack's connection count, read through its meter (NetStackMetrics.TcpConnections) when sampled.
        long connections = 0;
        using var meter = new System.Diagnostics.Metrics.MeterListener();
        meter.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == Diagnostics.NetStackMetrics.MeterName && instrument.Name == Diagnostics.NetStackMetrics.TcpConnections)
                listener.EnableMeasurementEvents(instrument);
        };
        meter.SetMeasurementEventCallback<int>((_, value, _, _) => connections = value);
        meter.Start();
        var target = options.Address!;
        using var stack = NetworkStack.Start(options);
        using var stop = new CancellationTokenSource();
        // SIGINT or SIGTERM ends the sampling early; the loads are stopped and reported as at the end.
        using var shutdown = new ShutdownSignal();
        var services = new List<Task>();
        var listeners = new List<IDisposable>();
        // serve's HTTP app, as 'serve --http 8080' runs it: Kestrel on the NetStack transport.
        var http = plan.Loads.Contains("http") ? HttpServer.StartAsync(stack, [HttpPort], [], CancellationToken.None).GetAwaiter().GetResult() : null;
        if (plan.Loads.Contains("echo"))
        {
            var listener = stack.ListenTcp(EchoPort, 1024);
            listeners.Add(listener);
            services.Add(Task.Run(() => TcpServices.AcceptLoopAsync(listener, "echo", TcpServices.EchoAsync, stop.Token)));
        }
        if (plan.Loads.Contains("udp"))
        {
            var socket = stack.BindUdp(new IPEndPoint(IPAddress.IPv6Any, UdpEchoPort));
            listeners.Add(socket);
            services.Add(Task.Run(() => UdpEcho.RunAsync(socket, stop.Token)));
        }

        // wrk for HTTP when installed (what the issue's scenario used); else the kernel client does it too.
        bool useWrk = plan.Loads.Contains("http") && OnPath("wrk");
        var clientLoads = plan.Loads.Where(l => l != "http" || !useWrk).ToList();
        // The loads may run this long at most (sampling waits up to StartTimeout for them to
        // connect); they are told to stop when the last sample is taken.
        var seconds = (int)Math.Ceiling((plan.Duration + StartTimeout).TotalSeconds) + 10;
        Console.WriteLine($"soak: {plan.Duration.TotalMinutes:0.##} min of {string.Join(", ", Describe(plan, useWrk))} against the stack at {target}, MTU {options.Mtu}; " +
            $"a sample every {plan.Interval.TotalSeconds:0} s");
        var arenas = MallocArenas.Capped ? $"{MallocArenas.Limit} (capped)" : Environment.GetEnvironmentVariable("MALLOC_ARENA_MAX") ?? "glibc's default";
        Console.WriteLine($"soak: {ProcessMemory.Configuration()}, malloc arenas {arenas}; stack: offloads {stack.Offloads}, io_uring {(stack.UsesIoUring ? "on" : "off")}");

        Process? wrk = null, client = null;
        Task<string>? wrkOutput = null, clientOutput = null;
        var samples = new List<Sample>();
        var statistics = stack.Statistics;
        try
        {
            if (useWrk)
            {
                wrk = StartNice("wrk", ["-t2", $"-c{plan.HttpConnections}", $"-d{seconds}s", "--timeout", "10s", $"http://{Host(target)}:{HttpPort}/bytes/{HttpBodyBytes}"]);
                wrkOutput = wrk.StandardOutput.ReadToEndAsync();
            }
            if (clientLoads.Count > 0)
            {
                client = StartNice(Isolation.SelfCommand()[0], [.. Isolation.SelfCommand().Skip(1), LoadCommand, target.ToString(), $"{seconds}",
                    string.Join(',', clientLoads), $"{plan.HttpConnections}", $"{plan.EchoConnections}", $"{plan.UdpRate}"]);
                clientOutput = client.StandardOutput.ReadToEndAsync();
            }

            // The clock starts once the persistent connections are up (a loaded machine can take
            // seconds to start the load generators), so that every sample is under the full load.
            int persistent = (plan.Loads.Contains("http") ? plan.HttpConnections : 0) + (plan.Loads.Contains("echo") ? plan.EchoConnections : 0);
            var starting = Stopwatch.StartNew();
            while (starting.Elapsed < StartTimeout)
            {
                meter.RecordObservableInstruments();
                if (connections >= persistent)
                    break;
                Thread.Sleep(100);
            }
            Console.WriteLine($"soak: {connections} TCP connections open after {starting.Elapsed.TotalSeconds:0.0} s; sampling starts");
            Console.WriteLine("MB: rss = resident set; heap, commit, loh = the GC's heap, its committed memory, its large object heap;");
            Console.WriteLine("    in-gc, malloc, code, stacks = resident in the GC's range, glibc's arenas, JIT code and loader heaps, thread stacks");
            Console.WriteLine($"{"time",7} {"rss",7} {"heap",7} {"commit",7} {"loh",7} {"in-gc",7} {"malloc",7} {"code",6} {"stacks",6} {"alloc/s",8} {"gc0/1/2",14} {"thr",4} {"pool",4} {"jit",6} {"conns",5} {"pkt/s",7}");
            var clock = Stopwatch.StartNew();
            long packets = statistics["device.read"] + statistics["device.written"];
            long allocated = GC.GetTotalAllocatedBytes(false);
            var last = TimeSpan.Zero;
            for (var next = plan.Interval; next <= plan.Duration; next += plan.Interval)
            {
                var wait = next - clock.Elapsed;
                if (wait > TimeSpan.Zero && shutdown.Token.WaitHandle.WaitOne(wait))
                    break;
                var now = clock.Elapsed;
                var memory = ProcessMemory.Now();
                long p = statistics["device.read"] + statistics["device.written"];
                var span = (now - last).TotalSeconds;
                meter.RecordObservableInstruments();
                var sample = new Sample(now, memory, ResidentByKind.Now(), connections, ThreadPool.ThreadCount, System.Runtime.JitInfo.GetCompiledMethodCount(),
                    (p - packets) / span, (memory.AllocatedBytes - allocated) / span);
                (packets, allocated, last) = (p, memory.AllocatedBytes, now);
                samples.Add(sample);
                Console.WriteLine(FormatLine(sample));
            }
        }
        finally
        {
            // wrk stops and prints its figures on SIGINT; the load generator stops when its input closes.
            if (wrk is { HasExited: false })
                Shell.RunAsync("kill", ["-INT", $"{wrk.Id}"], TimeSpan.FromSeconds(10)).GetAwaiter().GetResult();
            client?.StandardInput.Close();
            foreach (var p in (Process?[])[wrk, client])
            {
                if (p is not null && !p.WaitForExit(60_000))
                    p.Kill(entireProcessTree: true);
            }
            stop.Cancel();
            if (http is not null)
            {
                // As serve stops it: idle keep-alive connections close at once, a running request gets a grace.
                http.StopAsync(TimeSpan.FromSeconds(3)).GetAwaiter().GetResult();
                http.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
            foreach (var l in listeners)
                l.Dispose();
            Task.WaitAll([.. services], TimeSpan.FromSeconds(10));
        }

        var failed = false;
        if (wrkOutput is not null)
        {
            var text = wrkOutput.GetAwaiter().GetResult();
            var (summary, wrkFailed) = SummarizeWrk(text);
            Console.WriteLine($"wrk: {summary}");
            failed |= wrkFailed || wrk!.ExitCode != 0;
        }
        if (clientOutput is not null)
        {
            foreach (var line in clientOutput.GetAwaiter().GetResult().Split('\n', StringSplitOptions.RemoveEmptyEntries))
                Console.WriteLine($"client: {line}");
            failed |= client!.ExitCode != 0;
        }
        // The counters under which the engine swallows an exception (a packet's, the loop's, a command's, an inline continuation's).
        long exceptions = statistics["drop.exception"], loopErrors = statistics["engine.loop-error"], commandErrors = statistics["engine.command-error"],
            inlineErrors = statistics["engine.inline-completion-error"];
        Console.WriteLine($"stack: drop.exception {exceptions}, engine.loop-error {loopErrors}, engine.command-error {commandErrors}, engine.inline-completion-error {inlineErrors}, tcp.passive-open {statistics["tcp.passive-open"]}, " +
            $"udp.received {statistics["udp.received"]}, tcp.send-buffer.grown {statistics["tcp.send-buffer.grown"]}, tcp.receive-buffer.grown {statistics["tcp.receive-buffer.grown"]}, " +
            $"tcp.ring.rented {statistics["tcp.ring.rented"]}, tcp.ring.returned {statistics["tcp.ring.returned"]}");
        failed |= exceptions != 0 || loopErrors != 0 || commandErrors != 0 || inlineErrors != 0;
        if (threadPool is not null)
        {
            Console.WriteLine($"thread pool: {ThreadPool.ThreadCount} threads at the end, {threadPool.Peak} at most; adjustments by reason: " +
                string.Join(", ", threadPool.Adjustments.OrderBy(a => a.Key, StringComparer.Ordinal).Select(a => $"{a.Key} {a.Value}")));
        }

        PrintSlopes(samples, plan.Duration);
        if (plan.CsvPath is not null)
            File.WriteAllText(plan.CsvPath, Csv(samples));
        if (plan.SvgPath is not null)
            File.WriteAllText(plan.SvgPath, Svg(samples, [$"netstack bench --soak {plan.Duration.TotalMinutes:0.##}:", .. Describe(plan, useWrk)]));
        return failed ? 1 : 0;
    }

    private static IEnumerable<string> Describe(Plan plan, bool useWrk)
    {
        if (plan.Loads.Contains("http"))
            yield return $"HTTP keep-alive ({plan.HttpConnections} connections, {HttpBodyBytes / 1024} KiB responses, {(useWrk ? "wrk" : "kernel sockets")})";
        if (plan.Loads.Contains("echo"))
            yield return $"TCP echo ({plan.EchoConnections} connections of {EchoMessageBytes}-byte exchanges, {ShortConnectionsPerSecond} short connections/s)";
        if (plan.Loads.Contains("udp"))
            yield return $"UDP echo ({plan.UdpRate} datagrams/s of {string.Join('/', DatagramSizes)} bytes)";
    }

    private static string Host(IPAddress address) => address.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{address}]" : address.ToString();

    private static string Mb(long bytes) => (bytes / 1048576.0).ToString("0.0", CultureInfo.InvariantCulture);

    private static string FormatLine(Sample s)
    {
        var (m, k) = (s.Memory, s.Kinds);
        return string.Create(CultureInfo.InvariantCulture,
            $"{s.Time.TotalSeconds,6:0}s {Mb(m.ResidentBytes),7} {Mb(m.HeapBytes),7} {Mb(m.CommittedBytes),7} {Mb(m.LargeObjectHeapBytes),7} {Mb(k.Gc),7} {Mb(k.Malloc),7} {Mb(k.Code),6} {Mb(k.Stacks),6} {s.AllocatedPerSecond / 1048576.0,8:0.0} {$"{m.Collections.Gen0}/{m.Collections.Gen1}/{m.Collections.Gen2}",14} {m.Threads,4} {s.ThreadPoolThreads,4} {s.CompiledMethods,6} {s.Connections,5} {s.PacketsPerSecond,7:0}");
    }

    /// <summary>
    /// The slope of RSS, heap and GC commitment in MB per minute, by least squares over the
    /// samples from a fifth of the run on (the first minutes are warm-up: the JIT, the thread
    /// pool and the GC's budgets still settle), and the first and last of those samples.
    /// </summary>
    private static void PrintSlopes(List<Sample> samples, TimeSpan duration)
    {
        var steady = samples.Where(s => s.Time >= duration / 5).ToList();
        if (steady.Count < 3)
        {
            Console.WriteLine("soak: too few samples after the warm-up for a slope");
            return;
        }
        Console.WriteLine($"soak: from {steady[0].Time.TotalSeconds:0} s to {steady[^1].Time.TotalSeconds:0} s ({steady.Count} samples):");
        foreach (var (name, value) in new (string, Func<Sample, long>)[]
        {
            ("rss", s => s.Memory.ResidentBytes), ("gc heap", s => s.Memory.HeapBytes), ("gc committed", s => s.Memory.CommittedBytes),
            ("gc loh", s => s.Memory.LargeObjectHeapBytes), ("resident gc", s => s.Kinds.Gc), ("malloc", s => s.Kinds.Malloc),
            ("code", s => s.Kinds.Code), ("stacks", s => s.Kinds.Stacks),
        })
        {
            // Rounded first, and + 0.0 turns a negative zero positive: a slope that rounds to zero prints as 0.00 (it printed "-+0.00").
            var slope = Math.Round(Slope(steady.Select(s => (s.Time.TotalMinutes, value(s) / 1048576.0)).ToList()), 2) + 0.0;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  {name,-13} {Mb(value(steady[0])),7} → {Mb(value(steady[^1])),7} MB, slope {slope,6:+0.00;-0.00;0.00} MB/min"));
        }
    }

    /// <summary>Least-squares slope of y over x.</summary>
    public static double Slope(IReadOnlyList<(double X, double Y)> points)
    {
        double mx = points.Average(p => p.X), my = points.Average(p => p.Y);
        double sxy = points.Sum(p => (p.X - mx) * (p.Y - my)), sxx = points.Sum(p => (p.X - mx) * (p.X - mx));
        return sxx == 0 ? 0 : sxy / sxx;
    }

    private static string Csv(List<Sample> samples)
    {
        var text = new StringBuilder("seconds,rss_bytes,rss_anon_bytes,rss_file_bytes,gc_heap_bytes,gc_fragmented_bytes,gc_committed_bytes,gc_loh_bytes,gc_poh_bytes," +
            "resident_gc_bytes,resident_malloc_bytes,resident_code_bytes,resident_stacks_bytes,resident_files_bytes,resident_other_bytes," +
            "allocated_bytes_per_second,gc0,gc1,gc2,threads,threadpool_threads,jit_compiled_methods,tcp_connections,packets_per_second\n");
        foreach (var s in samples)
        {
            var (m, k) = (s.Memory, s.Kinds);
            text.Append(string.Create(CultureInfo.InvariantCulture,
                $"{s.Time.TotalSeconds:0.0},{m.ResidentBytes},{m.AnonymousBytes},{m.FileBytes},{m.HeapBytes},{m.FragmentedBytes},{m.CommittedBytes},{m.LargeObjectHeapBytes},{m.PinnedObjectHeapBytes},"));
            text.Append(string.Create(CultureInfo.InvariantCulture,
                $"{k.Gc},{k.Malloc},{k.Code},{k.Stacks},{k.Files},{k.Other},"));
            text.Append(string.Create(CultureInfo.InvariantCulture,
                $"{s.AllocatedPerSecond:0},{m.Collections.Gen0},{m.Collections.Gen1},{m.Collections.Gen2},{m.Threads},{s.ThreadPoolThreads},{s.CompiledMethods},{s.Connections},{s.PacketsPerSecond:0}\n"));
        }
        return text.ToString();
    }

    /// <summary>A small line chart: RSS, GC committed, resident in the GC's range, GC heap, malloc arenas and code (MB) over minutes.</summary>
    private static string Svg(List<Sample> samples, IReadOnlyList<string> title)
    {
        // The title takes a line per load above the plot.
        const int width = 760, plotHeight = 300, left = 60, right = 190, bottom = 40, titleLine = 15;
        int top = 20 + title.Count * titleLine, height = top + plotHeight + bottom;
        var series = new (string Name, string Color, Func<Sample, long> Value)[]
        {
            ("RSS", "#d62728", s => s.Memory.ResidentBytes),
            ("GC committed", "#1f77b4", s => s.Memory.CommittedBytes),
            ("resident in GC range", "#ff7f0e", s => s.Kinds.Gc),
            ("GC heap", "#2ca02c", s => s.Memory.HeapBytes),
            ("malloc arenas", "#9467bd", s => s.Kinds.Malloc),
            ("JIT code, loader heaps", "#8c564b", s => s.Kinds.Code),
        };
        double maxX = Math.Max(1e-9, samples.Count == 0 ? 1 : samples[^1].Time.TotalMinutes);
        double maxY = samples.Count == 0 ? 1 : samples.Max(s => series.Max(c => c.Value(s))) / 1048576.0;
        double step = NiceStep(maxY / 5);
        maxY = Math.Ceiling(maxY / step) * step;
        double xStep = NiceStep(maxX / 6);
        var plotWidth = width - left - right;
        string X(double minutes) => (left + minutes / maxX * plotWidth).ToString("0.0", CultureInfo.InvariantCulture);
        string Y(double mb) => (top + plotHeight - mb / maxY * plotHeight).ToString("0.0", CultureInfo.InvariantCulture);
        var svg = new StringBuilder();
        svg.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n");
        svg.Append(CultureInfo.InvariantCulture, $"<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>\n");
        for (var i = 0; i < title.Count; i++)
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{left}\" y=\"{20 + i * titleLine}\" font-size=\"12\">{System.Security.SecurityElement.Escape(title[i])}</text>\n");
        for (double y = 0; y <= maxY + step / 2; y += step)
        {
            svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{left}\" x2=\"{left + plotWidth}\" y1=\"{Y(y)}\" y2=\"{Y(y)}\" stroke=\"#ddd\"/>");
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{left - 6}\" y=\"{Y(y)}\" text-anchor=\"end\" dominant-baseline=\"middle\">{y:0}</text>\n");
        }
        for (double x = 0; x <= maxX + xStep / 2; x += xStep)
        {
            svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{X(x)}\" x2=\"{X(x)}\" y1=\"{top}\" y2=\"{top + plotHeight}\" stroke=\"#eee\"/>");
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{X(x)}\" y=\"{top + plotHeight + 15}\" text-anchor=\"middle\">{x:0.#}</text>\n");
        }
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{left + plotWidth / 2}\" y=\"{height - 6}\" text-anchor=\"middle\">minutes</text>");
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"14\" y=\"{top + plotHeight / 2}\" transform=\"rotate(-90 14 {top + plotHeight / 2})\" text-anchor=\"middle\">MB</text>\n");
        for (var i = 0; i < series.Length; i++)
        {
            var (name, color, value) = series[i];
            var points = string.Join(' ', samples.Select(s => $"{X(s.Time.TotalMinutes)},{Y(value(s) / 1048576.0)}"));
            svg.Append(CultureInfo.InvariantCulture, $"<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{points}\"/>\n");
            var ly = top + 10 + i * 18;
            svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{left + plotWidth + 12}\" x2=\"{left + plotWidth + 32}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/>");
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{left + plotWidth + 38}\" y=\"{ly}\" dominant-baseline=\"middle\">{name}</text>\n");
        }
        svg.Append("</svg>\n");
        return svg.ToString();
    }

    // 1, 2 or 5 times a power of ten, at least `rough`.
    private static double NiceStep(double rough)
    {
        if (rough <= 0)
            return 1;
        double power = Math.Pow(10, Math.Floor(Math.Log10(rough)));
        foreach (var m in (double[])[1, 2, 5, 10])
        {
            if (m * power >= rough)
                return m * power;
        }
        return 10 * power;
    }

    private static (string Summary, bool Failed) SummarizeWrk(string output)
    {
        string Find(string prefix) => output.Split('\n').Select(l => l.Trim()).FirstOrDefault(l => l.StartsWith(prefix, StringComparison.Ordinal)) ?? "";
        var requests = Find("Requests/sec:");
        var total = output.Split('\n').Select(l => l.Trim()).FirstOrDefault(l => l.Contains(" requests in ", StringComparison.Ordinal)) ?? "";
        var errors = Find("Socket errors:");
        var non2xx = Find("Non-2xx");
        var summary = string.Join("; ", new[] { total, requests, errors, non2xx }.Where(s => s.Length > 0));
        return (summary.Length > 0 ? summary : output.Trim(), errors.Length > 0 || non2xx.Length > 0 || requests.Length == 0);
    }

    private static bool OnPath(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Any(dir => File.Exists(Path.Combine(dir, program)));

    /// <summary>Starts <paramref name="program"/> under <c>nice -n 10</c>, so the stack keeps the processor it needs.</summary>
    private static Process StartNice(string program, IEnumerable<string> args)
    {
        var psi = new ProcessStartInfo("nice") { RedirectStandardOutput = true, RedirectStandardInput = true, UseShellExecute = false };
        foreach (var a in new[] { "-n", "10", program }.Concat(args))
            psi.ArgumentList.Add(a);
        return Process.Start(psi)!;
    }

    /// <summary>
    /// net.ipv4.tcp_tw_reuse = 1 in this private namespace, so the short echo connections' client
    /// ports (the client closes first and holds the TIME-WAIT) come round again without a search.
    /// </summary>
    private static void TryReuseTimeWait()
    {
        try
        {
            File.WriteAllText("/proc/sys/net/ipv4/tcp_tw_reuse", "1");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }

    // ------------------------------------------------------------------------------------------
    // The load generator (another process, kernel sockets)
    // ------------------------------------------------------------------------------------------

    /// <summary>
    /// The hidden load generator: <c>ADDRESS SECONDS LOADS HTTP-CONNECTIONS ECHO-CONNECTIONS UDP-RATE</c>.
    /// Runs each load until its standard input closes or SIGINT/SIGTERM comes (or for SECONDS at most), then prints one
    /// summary line per load; exits 1 when a load saw a failure (a wrong echo, a broken HTTP
    /// response, a refused connection).
    /// </summary>
    public static int RunLoad(string[] args)
    {
        if (args.Length != 6)
            throw new UsageException($"netstack {LoadCommand}: internal command of 'netstack bench --soak'");
        var address = IPAddress.Parse(args[0]);
        var until = Stopwatch.GetTimestamp() + (long)(double.Parse(args[1], CultureInfo.InvariantCulture) * Stopwatch.Frequency);
        var loads = args[2].Split(',');
        int httpConnections = int.Parse(args[3], CultureInfo.InvariantCulture);
        int echoConnections = int.Parse(args[4], CultureInfo.InvariantCulture);
        int udpRate = int.Parse(args[5], CultureInfo.InvariantCulture);
        var stopped = false;
        var stdin = new Thread(() =>
        {
            Console.In.ReadToEnd();
            Volatile.Write(ref stopped, true);
        })
        { IsBackground = true };
        stdin.Start();
        // A terminal's Ctrl-C reaches the whole process group: stop and report like at the end.
        using var signal = new ShutdownSignal();
        bool Running() => !Volatile.Read(ref stopped) && !signal.Token.IsCancellationRequested && Stopwatch.GetTimestamp() < until;

        var workers = new List<(string Name, Thread Thread, Func<string> Report, Func<bool> Failed)>();
        void Add(string name, Action body, Func<string> report, Func<bool> failed)
        {
            var thread = new Thread(() => body()) { IsBackground = true, Name = name };
            workers.Add((name, thread, report, failed));
        }

        if (loads.Contains("http"))
        {
            var http = new Counters();
            for (var i = 0; i < httpConnections; i++)
                Add("http", () => http.Run(() => HttpClientLoop(new IPEndPoint(address, HttpPort), http, Running)), http.Report("requests"), http.Failed);
        }
        if (loads.Contains("echo"))
        {
            var echo = new Counters();
            for (var i = 0; i < echoConnections; i++)
                Add("echo", () => echo.Run(() => EchoLoop(new IPEndPoint(address, EchoPort), echo, Running)), echo.Report("round trips on persistent connections"), echo.Failed);
            var shortOnes = new Counters();
            Add("echo-short", () => shortOnes.Run(() => ShortConnections(new IPEndPoint(address, EchoPort), shortOnes, Running)), shortOnes.Report("short connections"), shortOnes.Failed);
        }
        if (loads.Contains("udp"))
        {
            var udp = new Counters();
            Add("udp", () => udp.Run(() => UdpFlood(new IPEndPoint(address, UdpEchoPort), udpRate, udp, Running)), udp.Report("datagrams echoed"), udp.Failed);
        }
        foreach (var w in workers)
            w.Thread.Start();
        foreach (var w in workers)
            w.Thread.Join();
        var failed = false;
        foreach (var (name, report, isFailed) in workers.DistinctBy(w => w.Name).Select(w => (w.Name, w.Report, w.Failed)))
        {
            Console.WriteLine($"{name}: {report()}");
            failed |= isFailed();
        }
        return failed ? 1 : 0;
    }

    /// <summary>What one load did: completed operations, failures and the first failure's message.</summary>
    private sealed class Counters
    {
        private long _done;
        private long _failures;
        private long _extra;
        private string? _firstFailure;

        public void Done() => Interlocked.Increment(ref _done);

        public void Extra(long n) => Interlocked.Add(ref _extra, n);

        public void Run(Action body)
        {
            try
            {
                body();
            }
            catch (Exception e)
            {
                Fail(e.Message);
            }
        }

        public void Fail(string message)
        {
            Interlocked.Increment(ref _failures);
            Interlocked.CompareExchange(ref _firstFailure, message, null);
        }

        public bool Failed() => Interlocked.Read(ref _failures) > 0;

        public Func<string> Report(string what) => () =>
            $"{Interlocked.Read(ref _done)} {what}" + (Interlocked.Read(ref _extra) > 0 ? $" ({Interlocked.Read(ref _extra)} sent)" : "") +
            $", {Interlocked.Read(ref _failures)} failed" + (_firstFailure is { } f ? $" (first: {f})" : "");
    }

    /// <summary>One keep-alive HTTP/1.1 connection: GET /bytes/N, read the whole response by its Content-Length, again.</summary>
    private static void HttpClientLoop(IPEndPoint target, Counters counters, Func<bool> running)
    {
        using var s = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        s.ReceiveTimeout = s.SendTimeout = 10_000;
        s.Connect(target);
        var request = Encoding.ASCII.GetBytes($"GET /bytes/{HttpBodyBytes} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        var buffer = new byte[64 * 1024];
        while (running())
        {
            s.Send(request);
            int have = 0, headEnd;
            while ((headEnd = buffer.AsSpan(0, have).IndexOf("\r\n\r\n"u8)) < 0)
                have += Receive(s, buffer.AsSpan(have));
            var head = Encoding.ASCII.GetString(buffer, 0, headEnd);
            if (!head.StartsWith("HTTP/1.1 200 ", StringComparison.Ordinal) || !head.Contains($"Content-Length: {HttpBodyBytes}\r\n", StringComparison.OrdinalIgnoreCase))
                throw new InvalidOperationException($"unexpected response head: {head.Split('\r')[0]}");
            int body = have - (headEnd + 4);
            while (body < HttpBodyBytes)
                body += Receive(s, buffer);
            if (body != HttpBodyBytes)
                throw new InvalidOperationException($"{body} body bytes for {HttpBodyBytes}");
            counters.Done();
        }
    }

    /// <summary>One persistent echo connection: send a message, read it back byte-exact, again.</summary>
    private static void EchoLoop(IPEndPoint target, Counters counters, Func<bool> running)
    {
        using var s = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        s.ReceiveTimeout = s.SendTimeout = 10_000;
        s.Connect(target);
        var message = new byte[EchoMessageBytes];
        var back = new byte[EchoMessageBytes];
        for (long round = 0; running(); round++)
        {
            BitConverter.TryWriteBytes(message, round);
            message[^1] = (byte)round;
            s.Send(message);
            for (int got = 0; got < back.Length;)
                got += Receive(s, back.AsSpan(got));
            if (!back.AsSpan().SequenceEqual(message))
                throw new InvalidOperationException($"echo round {round} came back different");
            counters.Done();
        }
        s.Shutdown(SocketShutdown.Send);
        if (s.Receive(back) != 0)
            throw new InvalidOperationException("the echo sent more than it was sent");
    }

    /// <summary>Short echo connections at <see cref="ShortConnectionsPerSecond"/>: connect, exchange 100 bytes, close (the client first).</summary>
    private static void ShortConnections(IPEndPoint target, Counters counters, Func<bool> running)
    {
        var message = new byte[100];
        var back = new byte[100];
        var clock = Stopwatch.StartNew();
        for (long n = 0; running(); n++)
        {
            var due = TimeSpan.FromSeconds(n / (double)ShortConnectionsPerSecond) - clock.Elapsed;
            if (due > TimeSpan.Zero)
                Thread.Sleep(due);
            using var s = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            s.ReceiveTimeout = s.SendTimeout = 10_000;
            s.Connect(target);
            message[0] = (byte)n;
            s.Send(message);
            for (int got = 0; got < back.Length;)
                got += Receive(s, back.AsSpan(got));
            if (!back.AsSpan().SequenceEqual(message))
                throw new InvalidOperationException("a short echo came back different");
            counters.Done();
        }
    }

    /// <summary>
    /// UDP to the echo at <paramref name="rate"/> datagrams a second, cycling through
    /// <see cref="DatagramSizes"/>; another thread counts what comes back. UDP may drop, so only
    /// a wrong echo (a reply of a size never sent) is a failure.
    /// </summary>
    private static void UdpFlood(IPEndPoint target, int rate, Counters counters, Func<bool> running)
    {
        using var s = new Socket(target.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        s.ReceiveBufferSize = 1 << 20;
        s.Connect(target);
        var receiver = new Thread(() =>
        {
            var buffer = new byte[2048];
            try
            {
                while (true)
                {
                    int n = s.Receive(buffer);
                    if (DatagramSizes.Contains(n))
                        counters.Done();
                    else
                        counters.Fail($"an echoed datagram of {n} bytes");
                }
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
            }
        })
        { IsBackground = true };
        receiver.Start();
        var payload = new byte[DatagramSizes.Max()];
        var clock = Stopwatch.StartNew();
        long sent = 0;
        while (running())
        {
            // Pace in 10 ms steps: what is due by now goes out, then a nap.
            long due = (long)(clock.Elapsed.TotalSeconds * rate);
            for (; sent < due; sent++)
                s.Send(payload.AsSpan(0, DatagramSizes[sent % DatagramSizes.Length]));
            Thread.Sleep(10);
        }
        counters.Extra(sent);
        Thread.Sleep(500); // the last echoes
        s.Dispose();
        receiver.Join();
    }

    private static int Receive(Socket s, Span<byte> into)
    {
        int n = s.Receive(into);
        return n > 0 ? n : throw new InvalidOperationException("the stack closed the connection");
    }
}
