using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace NetStack.Cli;

/// <summary>
/// <c>netstack bench</c>: end-to-end UDP round-trip latency and datagram rate between a kernel
/// .NET <see cref="Socket"/> and a UDP echo on the stack, beside the same measurement between
/// two kernel namespaces over a veth pair, all inside a private network namespace.
/// </summary>
/// <remarks>
/// The kernel baseline: a veth pair whose far end lives in a child namespace (<c>unshare --net</c>)
/// where a second netstack process (<see cref="RunEchoPeer"/>) runs a plain-Socket UDP echo. The
/// child namespace and its veth end vanish with that process; the near end is deleted as well.
/// Both echoes are .NET code and the client is the same, so the ratio compares the paths:
/// TUN + NetStack against the kernel's own UDP/IP over veth.
/// </remarks>
public static class BenchCommand
{
    /// <summary>The command name used in messages.</summary>
    public const string Name = "netstack bench";

    /// <summary>Hidden subcommand: the kernel UDP echo in the peer namespace.</summary>
    public const string EchoPeerCommand = "__bench-echo-peer";

    /// <summary>UDP port of both echo services.</summary>
    private const int EchoPort = 9000;

    /// <summary>TCP discard (RFC 863) port of both sides: the bulk kernel → X measurement sends here.</summary>
    private const int DiscardPort = EchoPort + 1;

    /// <summary>TCP source port of both sides: the client sends "N\n", the service sends N bytes and closes.</summary>
    private const int SourcePort = EchoPort + 2;

    /// <summary>Datagram size (the UDP payload) for both measurements.</summary>
    private const int DatagramSize = 64;

    /// <summary>Datagrams in flight at most in the rate measurement: a burst window, so a queue that drops cannot stall the flood for good.</summary>
    private const int Window = 32;

    /// <summary>The veth pair's /30: the near end (this namespace) and the peer.</summary>
    private const string VethNear = "10.78.0.1", VethPeer = "10.78.0.2", VethPrefix = "/30";

    /// <summary>The help text.</summary>
    public static string Usage => $"""
        usage: netstack bench [--seconds N] [--tcp-mib N] [interface options]

        Measures, in a private network namespace (re-executing under 'unshare' like the demo):
          - UDP round-trip latency (p50, p99) of {DatagramSize}-byte datagrams, one outstanding;
          - echoed datagrams per second, {Window} in flight at most;
          - TCP bulk throughput, kernel → X (into a discard service) and X → kernel (from a
            source service), one connection each;
        between a kernel .NET Socket and services on the stack (through the TUN interface),
        and the same between two kernel namespaces over a veth pair, and prints both with the
        ratio stack/kernel.

          --seconds N         seconds per UDP measurement, 1-60 (default 2; four measurements)
          --tcp-mib N         MiB per TCP bulk transfer, 1-4096 (default 256; four transfers)

        {InterfaceOptions.Help}
        """;

    /// <summary>One path's results.</summary>
    /// <param name="P50">Median round trip.</param>
    /// <param name="P99">99th percentile round trip.</param>
    /// <param name="Samples">Round trips measured.</param>
    /// <param name="DatagramsPerSecond">Echoed datagrams per second in the flood.</param>
    /// <param name="Lost">Datagrams that never came back (either measurement).</param>
    /// <param name="TcpInGbps">TCP bulk throughput kernel → X, Gbit/s.</param>
    /// <param name="TcpOutGbps">TCP bulk throughput X → kernel, Gbit/s.</param>
    public sealed record Measurement(TimeSpan P50, TimeSpan P99, int Samples, double DatagramsPerSecond, long Lost, double TcpInGbps, double TcpOutGbps);

    /// <summary>Runs the command; returns the exit code.</summary>
    public static int Run(string[] args)
    {
        if (Program.WantsHelp(args))
        {
            Console.WriteLine(Usage);
            return 0;
        }
        var reader = new ArgReader(Name, args);
        var options = new NetStackOptions();
        var seconds = 2;
        var tcpMib = 256;
        while (reader.Next() is { } arg)
        {
            if (InterfaceOptions.TryRead(reader, arg, ref options))
                continue;
            if (arg == "--seconds")
                seconds = reader.ParseInt(arg, reader.Value(arg), 1, 60, "a number of seconds");
            else if (arg == "--tcp-mib")
                tcpMib = reader.ParseInt(arg, reader.Value(arg), 1, 4096, "a number of MiB");
            else
                throw reader.Unknown(arg);
        }
        InterfaceOptions.Validate(reader, options);
        if (options.Address is null)
            throw reader.Fail("the benchmark runs over IPv4: --ip none leaves nothing to measure");

        if (!Isolation.IsIsolated)
            return Isolation.ReexecIsolated(["bench", .. args]);
        return RunIsolated(options, TimeSpan.FromSeconds(seconds), tcpMib * (1L << 20));
    }

    private static int RunIsolated(NetStackOptions options, TimeSpan duration, long tcpBytes)
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
        Console.WriteLine($"From a kernel .NET Socket: UDP echo of {DatagramSize}-byte datagrams, {duration.TotalSeconds:0} s per measurement; TCP bulk of {tcpBytes >> 20} MiB per direction");

        Measurement? kernel = null, stack = null;
        string? kernelError = null, stackError = null;
        try
        {
            kernel = MeasureKernelOverVeth(duration, tcpBytes);
        }
        catch (Exception e)
        {
            kernelError = e.Message;
        }
        try
        {
            stack = MeasureStack(options, duration, tcpBytes);
        }
        catch (Exception e)
        {
            stackError = e.Message;
        }

        PrintTable(stack, kernel, options.Mode == NetStackMode.Tap ? "stack (TAP)" : "stack (TUN)");
        if (stackError is not null)
            Console.Error.WriteLine($"{Name}: stack measurement failed: {stackError}");
        if (kernelError is not null)
            Console.Error.WriteLine($"{Name}: kernel measurement failed: {kernelError}");
        return stack is not null && kernel is not null ? 0 : 1;
    }

    private static Measurement MeasureStack(NetStackOptions options, TimeSpan duration, long tcpBytes)
    {
        var stack = NetworkStack.Start(options);
        using var _ = stack;
        using var echo = stack.BindUdp(new IPEndPoint(IPAddress.Any, EchoPort));
        using var discard = stack.ListenTcp(DiscardPort);
        using var source = stack.ListenTcp(SourcePort);
        using var stop = new CancellationTokenSource();
        var services = new[]
        {
            Task.Run(() => UdpEcho.RunAsync(echo, stop.Token)),
            Task.Run(() => TcpServices.AcceptLoopAsync(discard, "bench discard", TcpServices.DiscardAsync, stop.Token)),
            Task.Run(() => TcpServices.AcceptLoopAsync(source, "bench source", StackSourceAsync, stop.Token)),
        };
        try
        {
            var udp = Measure(new IPEndPoint(options.Address!, EchoPort), duration);
            var (inGbps, outGbps) = MeasureBulk(options.Address!, tcpBytes);
            return udp with { TcpInGbps = inGbps, TcpOutGbps = outGbps };
        }
        finally
        {
            stop.Cancel();
            echo.Dispose();
            discard.Dispose();
            source.Dispose();
            Task.WaitAll(services, TimeSpan.FromSeconds(5));
        }
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
    /// for N bytes, read to the end). Gbit/s of payload, connection setup included.
    /// </summary>
    private static (double InGbps, double OutGbps) MeasureBulk(IPAddress target, long bytes)
    {
        var block = new byte[256 * 1024];
        double inGbps, outGbps;
        using (var s = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp))
        {
            s.ReceiveTimeout = s.SendTimeout = 60_000;
            var clock = Stopwatch.StartNew();
            s.Connect(new IPEndPoint(target, DiscardPort));
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
            inGbps = bytes * 8 / clock.Elapsed.TotalSeconds / 1e9;
        }
        using (var s = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp))
        {
            s.ReceiveTimeout = s.SendTimeout = 60_000;
            var clock = Stopwatch.StartNew();
            s.Connect(new IPEndPoint(target, SourcePort));
            s.Send(Encoding.ASCII.GetBytes($"{bytes}\n"));
            long received = 0;
            int n;
            while ((n = s.Receive(block)) > 0)
                received += n;
            outGbps = bytes * 8 / clock.Elapsed.TotalSeconds / 1e9;
            if (received != bytes)
                throw new InvalidOperationException($"asked {target}:{SourcePort} for {bytes} bytes, got {received}");
        }
        return (inGbps, outGbps);
    }

    private static Measurement MeasureKernelOverVeth(TimeSpan duration, long tcpBytes)
    {
        // Unique names, so two runs in one namespace (the test run's, say) cannot collide.
        var id = Environment.ProcessId % 100000;
        string near = $"nsbench{id}a", far = $"nsbench{id}b";
        Process? peer = null;
        try
        {
            Shell.Check("ip", "link", "add", near, "type", "veth", "peer", "name", far);
            var psi = new ProcessStartInfo("unshare") { RedirectStandardOutput = true, RedirectStandardInput = true, UseShellExecute = false };
            foreach (var a in new[] { "--net", "--" }.Concat(Isolation.SelfCommand()).Concat([EchoPeerCommand, far, VethPeer + VethPrefix, $"{EchoPort}"]))
                psi.ArgumentList.Add(a);
            peer = Process.Start(psi)!;
            // The peer says "waiting" once it runs inside its new namespace; only then can the
            // far end move there (moving it earlier would leave it here).
            ExpectLine(peer, "waiting");
            Shell.Check("ip", "link", "set", far, "netns", $"{peer.Id}");
            Shell.Check("ip", "addr", "add", VethNear + VethPrefix, "dev", near);
            Shell.Check("ip", "link", "set", near, "up");
            ExpectLine(peer, "ready");
            var udp = Measure(new IPEndPoint(IPAddress.Parse(VethPeer), EchoPort), duration);
            var (inGbps, outGbps) = MeasureBulk(IPAddress.Parse(VethPeer), tcpBytes);
            return udp with { TcpInGbps = inGbps, TcpOutGbps = outGbps };
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

    private static void ExpectLine(Process peer, string expected)
    {
        var line = peer.StandardOutput.ReadLineAsync();
        if (!line.Wait(TimeSpan.FromSeconds(20)) || line.Result != expected)
            throw new InvalidOperationException($"the kernel echo peer did not get {expected} (said: {(line.IsCompleted ? line.Result ?? "nothing, it exited" : "nothing in 20 s")})");
    }

    /// <summary>
    /// Runs the kernel UDP echo in the peer namespace: waits for the veth end to arrive, gives it
    /// its address, then echoes datagrams until killed or until stdin closes.
    /// Arguments: interface, address/prefix, port.
    /// </summary>
    public static int RunEchoPeer(string[] args)
    {
        if (args.Length != 3)
            throw new UsageException($"netstack {EchoPeerCommand}: internal command of 'netstack bench' (interface address/prefix port)");
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

    /// <summary>Latency, then rate, against one UDP echo.</summary>
    private static Measurement Measure(IPEndPoint target, TimeSpan duration)
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
        TimeSpan Percentile(double p) => Stopwatch.GetElapsedTime(0, rtts[Math.Min(rtts.Count - 1, (int)(p * rtts.Count))]);

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
        return new Measurement(Percentile(0.50), Percentile(0.99), rtts.Count, rate, lost, 0, 0);
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

    private static void PrintTable(Measurement? stack, Measurement? kernel, string stackLabel)
    {
        static string Us(TimeSpan? t) => t is { } v ? $"{v.TotalMicroseconds:0.0} µs" : "n/a";
        static string Rate(double? r) => r is { } v ? $"{v:0}" : "n/a";
        static string Ratio(double? a, double? b) => a is { } x && b is { } y && y > 0 ? $"{x / y:0.00}" : "n/a";
        static string Gbps(double? g) => g is { } v ? $"{v:0.00} Gbit/s" : "n/a";

        var rows = new (string Name, string Stack, string Kernel, string Ratio)[]
        {
            ("round trip p50", Us(stack?.P50), Us(kernel?.P50), Ratio(stack?.P50.TotalMicroseconds, kernel?.P50.TotalMicroseconds)),
            ("round trip p99", Us(stack?.P99), Us(kernel?.P99), Ratio(stack?.P99.TotalMicroseconds, kernel?.P99.TotalMicroseconds)),
            ("round trips measured", $"{stack?.Samples.ToString(CultureInfo.InvariantCulture) ?? "n/a"}", $"{kernel?.Samples.ToString(CultureInfo.InvariantCulture) ?? "n/a"}", ""),
            ($"datagrams/s ({Window} in flight)", Rate(stack?.DatagramsPerSecond), Rate(kernel?.DatagramsPerSecond), Ratio(stack?.DatagramsPerSecond, kernel?.DatagramsPerSecond)),
            ("datagrams lost", $"{stack?.Lost.ToString(CultureInfo.InvariantCulture) ?? "n/a"}", $"{kernel?.Lost.ToString(CultureInfo.InvariantCulture) ?? "n/a"}", ""),
            ("TCP bulk kernel → X", Gbps(stack?.TcpInGbps), Gbps(kernel?.TcpInGbps), Ratio(stack?.TcpInGbps, kernel?.TcpInGbps)),
            ("TCP bulk X → kernel", Gbps(stack?.TcpOutGbps), Gbps(kernel?.TcpOutGbps), Ratio(stack?.TcpOutGbps, kernel?.TcpOutGbps)),
        };
        Console.WriteLine($"{"",-26}{stackLabel,14}{"kernel (veth)",16}{"stack/kernel",14}");
        foreach (var r in rows)
            Console.WriteLine($"{r.Name,-26}{r.Stack,14}{r.Kernel,16}{r.Ratio,14}");
    }
}
