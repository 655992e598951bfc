using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Text.RegularExpressions;

namespace NetStack.Cli;

/// <summary>
/// <c>netstack demo</c>: with no configuration at all, runs itself in a private network namespace,
/// brings the stack up, lets the kernel ping it, exchanges UDP both ways, lets the stack ping the
/// kernel, and prints one line per step. The demo is a list of <see cref="DemoStep"/>s, so later
/// issues add TCP and HTTP by adding steps.
/// </summary>
public static partial class DemoCommand
{
    /// <summary>The command name used in messages.</summary>
    public const string Name = "netstack demo";

    /// <summary>The port of the stack's UDP echo service during the demo (RFC 862 echo).</summary>
    private const int EchoPort = 7;

    /// <summary>The port of the stack's HTTP server during the demo.</summary>
    private const int HttpPort = 80;

    /// <summary>The port of the kernel-side HTTP server (python3) the stack fetches from.</summary>
    private const int KernelHttpPort = 8000;

    /// <summary>Bytes the TCP echo step sends each way.</summary>
    private const int TcpEchoBytes = 1 << 20;

    /// <summary>A datagram bigger than the 1500-byte MTU: fragmented on the way in and the way out.</summary>
    private const int FragmentedSize = 6000;

    /// <summary>How long one step may take before it counts as failed.</summary>
    private static readonly TimeSpan StepTimeout = TimeSpan.FromSeconds(15);

    /// <summary>What the command does, in one line (the command list of <c>netstack --help</c>).</summary>
    public const string Summary = "show the stack working, with zero configuration, in a private network namespace";

    /// <summary>What the command does, for its own help.</summary>
    public static readonly string Details = $"""
        Shows the stack working, with zero configuration: runs itself in a private network namespace (re-executing under
        'unshare --net', or 'unshare --user --map-root-user --net' when not root), brings the stack up on a TUN interface, lets
        the kernel ping it over IPv4 and IPv6, exchanges UDP datagrams both ways (including a {FragmentedSize}-byte one that is
        fragmented), lets the stack ping the kernel, echoes a megabyte over TCP, lets curl fetch pages from the stack's HTTP
        server and the stack fetch a file from a kernel-side HTTP server (python3 -m http.server), and prints a report. Exits 0
        when every step worked, 1 otherwise (the report says which step failed and why).
        """.ReplaceLineEndings(" ");

    /// <summary>What a step works with.</summary>
    /// <param name="Stack">The running stack.</param>
    /// <param name="Echo">A stack UDP socket bound on [::]:7 (both families) that echoes datagrams.</param>
    /// <param name="Cancellation">Fires when the step's time is up.</param>
    public sealed record DemoContext(NetworkStack Stack, UdpSocket Echo, CancellationToken Cancellation);

    /// <summary>One step of the demo: a title and an action that returns the detail line or throws.</summary>
    /// <param name="Title">What the step shows, e.g. "kernel pings the stack over IPv4".</param>
    /// <param name="Run">Does it; returns the detail (RTTs, byte counts); throws when it fails.</param>
    public sealed record DemoStep(string Title, Func<DemoContext, Task<string>> Run);

    /// <summary>The <c>demo</c> command; <paramref name="args"/> is the whole command line, run again inside the namespace.</summary>
    public static Command Create(string[] args)
    {
        var interfaceOptions = new InterfaceOptions();
        var command = new Command("demo", Summary);
        interfaceOptions.AddTo(command);
        command.SetAction(r =>
        {
            var options = interfaceOptions.Read(r);
            if (!Isolation.IsIsolated)
                return Isolation.ReexecIsolated(args);
            return RunIsolatedAsync(options).GetAwaiter().GetResult();
        });
        return command;
    }

    /// <summary>The steps, in order, for the address families the stack has.</summary>
    public static IReadOnlyList<DemoStep> Steps(NetStackOptions o)
    {
        var steps = new List<DemoStep>();
        var families = new List<(string Name, IPAddress Stack, IPAddress Host)>();
        if (o.Address is not null && o.HostAddress is not null)
            families.Add(("IPv4", o.Address, o.HostAddress));
        if (o.Address6 is not null && o.HostAddress6 is not null)
            families.Add(("IPv6", o.Address6, o.HostAddress6));

        foreach (var f in families)
            steps.Add(new($"kernel pings the stack over {f.Name}", c => KernelPingsStackAsync(c, f.Stack)));
        foreach (var f in families)
            steps.Add(new($"UDP over {f.Name}, kernel socket ↔ stack socket", c => UdpRoundTripAsync(c, f.Stack, f.Host, 64)));
        foreach (var f in families)
            steps.Add(new($"UDP over {f.Name}, {FragmentedSize}-byte datagram, fragmented both ways", c => UdpRoundTripAsync(c, f.Stack, f.Host, FragmentedSize)));
        foreach (var f in families)
            steps.Add(new($"stack pings the kernel over {f.Name}", c => StackPingsKernelAsync(c, f.Host)));
        foreach (var f in families)
            steps.Add(new($"TCP over {f.Name}, kernel client ↔ stack echo server", c => TcpEchoAsync(c, f.Stack, f.Host)));
        foreach (var f in families)
            steps.Add(new($"HTTP over {f.Name}, curl on the kernel → stack HTTP server", c => CurlStackAsync(c, f.Stack)));
        var port = KernelHttpPort;
        foreach (var f in families)
            steps.Add(new($"HTTP over {f.Name}, stack HttpClient → kernel HTTP server (python3 -m http.server)", c => StackFetchesFromKernelAsync(c, f.Host, port)));
        return steps;
    }

    private static async Task<int> RunIsolatedAsync(NetStackOptions options)
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
        Console.WriteLine("netstack demo: the NetStack userspace TCP/IP stack, in a private network namespace");

        var stack = StackStarter.TryStart(Name, options, out var error);
        if (stack is null)
        {
            Console.WriteLine($"✗ stack up: {error}");
            return 1;
        }
        await using var _ = StackStarter.Owning(Name, stack);
        Console.WriteLine($"✓ stack up on {stack.InterfaceName}: {Addresses(options)}, MTU {options.Mtu}");

        UdpSocket echo;
        try
        {
            echo = stack.BindUdp(new IPEndPoint(IPAddress.IPv6Any, EchoPort));
        }
        catch (Exception e)
        {
            Console.WriteLine($"✗ UDP echo service on the stack, port {EchoPort}: {e.Message}");
            return 1;
        }
        await using var __ = echo;
        using var stop = new CancellationTokenSource();
        var echoService = UdpEcho.RunAsync(echo, stop.Token);
        TcpConnectionListener tcpEcho;
        HttpServer http;
        try
        {
            tcpEcho = stack.ListenTcp(EchoPort);
            http = await HttpServer.StartAsync(stack, [HttpPort], [], stop.Token);
        }
        catch (Exception e)
        {
            Console.WriteLine($"✗ TCP services on the stack, ports {EchoPort} and {HttpPort}: {e.Message}");
            return 1;
        }
        var tcpService = TcpServices.AcceptLoopAsync(tcpEcho, "tcp echo", TcpServices.EchoAsync, stop.Token);

        var steps = Steps(options);
        var failed = 0;
        foreach (var step in steps)
        {
            using var timeout = new CancellationTokenSource(StepTimeout);
            try
            {
                var detail = await step.Run(new DemoContext(stack, echo, timeout.Token)).WaitAsync(StepTimeout + TimeSpan.FromSeconds(1));
                Console.WriteLine($"✓ {step.Title}: {detail}");
            }
            catch (Exception e)
            {
                failed++;
                var why = e is OperationCanceledException or TimeoutException ? $"no answer within {StepTimeout.TotalSeconds:0} s" : e.Message;
                Console.WriteLine($"✗ {step.Title}: {why}");
            }
        }

        stop.Cancel();
        await echo.DisposeAsync();
        await echoService;
        await tcpEcho.DisposeAsync();
        await tcpService;
        await http.StopAsync(TimeSpan.FromSeconds(3));
        await http.DisposeAsync();

        if (failed == 0)
        {
            Console.WriteLine($"demo passed: all {steps.Count + 1} steps worked");
            return 0;
        }
        Console.WriteLine($"demo FAILED: {failed} of {steps.Count + 1} steps did not work");
        return 1;
    }

    private static string Addresses(NetStackOptions o)
    {
        var parts = new List<string>();
        if (o.Address is not null)
            parts.Add($"stack {o.Address} ↔ kernel {o.HostAddress}");
        if (o.Address6 is not null)
            parts.Add($"stack {o.Address6} ↔ kernel {o.HostAddress6}");
        return string.Join(", ", parts);
    }

    // iputils: "3 packets transmitted, 3 received, ..."; busybox: "3 packets transmitted, 3 packets received, ...".
    [GeneratedRegex(@"(\d+) packets transmitted, (\d+) (?:packets )?received")]
    private static partial Regex PingCounts();

    // iputils: "rtt min/avg/max/mdev = 0.035/0.041/0.050/0.006 ms"; busybox: "round-trip min/avg/max = ...".
    [GeneratedRegex(@"min/avg/max\S* = ([\d.]+)/([\d.]+)/([\d.]+)")]
    private static partial Regex PingRtts();

    /// <summary>The kernel's own <c>ping</c> tool against the stack: three echoes, the summary parsed.</summary>
    private static async Task<string> KernelPingsStackAsync(DemoContext c, IPAddress target)
    {
        const int Count = 3;
        if (target.AddressFamily == AddressFamily.InterNetworkV6)
            await Shell.WaitForIpv6AddressAsync(c.Stack.InterfaceName, c.Cancellation);
        var family = target.AddressFamily == AddressFamily.InterNetworkV6 ? "-6" : "-4";
        // -i 0.2 is the shortest interval ping allows without privileges; -W bounds each wait.
        var r = await Shell.RunAsync("ping", [family, "-n", "-c", $"{Count}", "-i", "0.2", "-W", "2", target.ToString()], StepTimeout);
        var counts = PingCounts().Match(r.Output);
        if (!counts.Success)
            throw new InvalidOperationException($"ping {family} failed (exit {r.ExitCode}): {(r.Error + r.Output).Trim().Split('\n')[^1]}");
        var received = int.Parse(counts.Groups[2].Value, CultureInfo.InvariantCulture);
        if (received == 0)
            throw new InvalidOperationException($"ping {family} {target}: 0 of {counts.Groups[1].Value} replies");
        var rtt = PingRtts().Match(r.Output);
        var avg = rtt.Success ? $", rtt avg {rtt.Groups[2].Value} ms" : "";
        return $"{received}/{counts.Groups[1].Value} replies from {target}{avg}";
    }

    /// <summary>
    /// A kernel .NET <see cref="Socket"/> sends a datagram to the stack's echo socket, which
    /// receives it and sends it back; the kernel socket checks every byte.
    /// </summary>
    private static async Task<string> UdpRoundTripAsync(DemoContext c, IPAddress stackAddress, IPAddress hostAddress, int size)
    {
        if (stackAddress.AddressFamily == AddressFamily.InterNetworkV6)
            await Shell.WaitForIpv6AddressAsync(c.Stack.InterfaceName, c.Cancellation);
        using var kernel = new Socket(stackAddress.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        kernel.Bind(new IPEndPoint(hostAddress, 0));
        var sent = new byte[size];
        Random.Shared.NextBytes(sent);
        var received = new byte[size + 1];
        var target = new IPEndPoint(stackAddress, EchoPort);

        var clock = Stopwatch.StartNew();
        await kernel.SendToAsync(sent, target, c.Cancellation);
        var r = await kernel.ReceiveFromAsync(received, new IPEndPoint(hostAddress.AddressFamily == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Any : IPAddress.Any, 0), c.Cancellation);
        var rtt = clock.Elapsed.TotalMilliseconds;

        var from = (IPEndPoint)r.RemoteEndPoint;
        if (!from.Address.Equals(stackAddress) || from.Port != EchoPort)
            throw new InvalidOperationException($"the reply came from {from}, not {target}");
        if (r.ReceivedBytes != size || !received.AsSpan(0, size).SequenceEqual(sent))
            throw new InvalidOperationException($"sent {size} bytes, got back {r.ReceivedBytes} different ones");
        return $"{size} B kernel → stack, {size} B stack → kernel, round trip {rtt.ToString("0.00", CultureInfo.InvariantCulture)} ms";
    }

    /// <summary>
    /// A kernel .NET TCP <see cref="Socket"/> connects to the stack's echo server, sends a
    /// megabyte while reading the echo, half-closes, and checks every byte came back before the
    /// stack's FIN.
    /// </summary>
    private static async Task<string> TcpEchoAsync(DemoContext c, IPAddress stackAddress, IPAddress hostAddress)
    {
        if (stackAddress.AddressFamily == AddressFamily.InterNetworkV6)
            await Shell.WaitForIpv6AddressAsync(c.Stack.InterfaceName, c.Cancellation);
        using var kernel = new Socket(stackAddress.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        kernel.Bind(new IPEndPoint(hostAddress, 0));
        var clock = Stopwatch.StartNew();
        await kernel.ConnectAsync(new IPEndPoint(stackAddress, EchoPort), c.Cancellation);
        var handshake = clock.Elapsed.TotalMilliseconds;
        var sent = new byte[TcpEchoBytes];
        Random.Shared.NextBytes(sent);
        var received = new byte[TcpEchoBytes + 1];
        var sending = Task.Run(async () =>
        {
            await kernel.SendAsync(sent, SocketFlags.None, c.Cancellation);
            kernel.Shutdown(SocketShutdown.Send);
        }, c.Cancellation);
        var total = 0;
        int n;
        while ((n = await kernel.ReceiveAsync(received.AsMemory(total), SocketFlags.None, c.Cancellation)) > 0)
        {
            total += n;
            if (total == received.Length)
                throw new InvalidOperationException($"more than the {TcpEchoBytes} bytes sent came back");
        }
        await sending;
        var seconds = clock.Elapsed.TotalSeconds;
        if (total != TcpEchoBytes || !received.AsSpan(0, total).SequenceEqual(sent))
            throw new InvalidOperationException($"sent {TcpEchoBytes} bytes, got back {total} different ones");
        var rate = 2.0 * TcpEchoBytes * 8 / seconds / 1e6;
        return $"connected in {handshake.ToString("0.00", CultureInfo.InvariantCulture)} ms, {TcpEchoBytes >> 20} MiB each way intact, FIN both ways, {rate.ToString("0", CultureInfo.InvariantCulture)} Mbit/s";
    }

    /// <summary>The kernel's curl fetches the stack's status page and a megabyte of data.</summary>
    private static async Task<string> CurlStackAsync(DemoContext c, IPAddress stackAddress)
    {
        if (stackAddress.AddressFamily == AddressFamily.InterNetworkV6)
            await Shell.WaitForIpv6AddressAsync(c.Stack.InterfaceName, c.Cancellation);
        var host = stackAddress.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{stackAddress}]" : stackAddress.ToString();
        var page = await Shell.RunAsync("curl", ["-sS", "--max-time", "10", $"http://{host}:{HttpPort}/"], StepTimeout);
        if (page.ExitCode != 0 || !page.Output.StartsWith("NetStack", StringComparison.Ordinal))
            throw new InvalidOperationException($"curl http://{host}:{HttpPort}/ failed (exit {page.ExitCode}): {(page.Error + page.Output).Trim()}");
        const int Size = 1 << 20;
        var data = await Shell.RunAsync("curl", ["-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}", $"http://{host}:{HttpPort}/bytes/{Size}"], StepTimeout);
        var parts = data.Output.Trim().Split(' ');
        if (data.ExitCode != 0 || parts.Length != 3 || parts[0] != "200" || parts[1] != $"{Size}")
            throw new InvalidOperationException($"curl /bytes/{Size}: exit {data.ExitCode}, {data.Output.Trim()} {data.Error.Trim()}");
        return $"GET / answered the status page, GET /bytes/{Size} gave 200 and {Size} bytes in {parts[2]} s";
    }

    /// <summary>
    /// The kernel runs <c>python3 -m http.server</c> on its side of the link; the stack fetches a
    /// file from it with an <see cref="HttpClient"/> whose connections go through NetStack.
    /// </summary>
    private static async Task<string> StackFetchesFromKernelAsync(DemoContext c, IPAddress hostAddress, int port)
    {
        if (hostAddress.AddressFamily == AddressFamily.InterNetworkV6)
            await Shell.WaitForIpv6AddressAsync(c.Stack.InterfaceName, c.Cancellation);
        var directory = Directory.CreateTempSubdirectory("netstack-demo-");
        var body = $"hello from the kernel's side of the link, {DateTime.UtcNow:O}\n";
        await File.WriteAllTextAsync(Path.Combine(directory.FullName, "hello.txt"), body, c.Cancellation);
        using var server = Process.Start(new ProcessStartInfo("python3", ["-m", "http.server", "--bind", hostAddress.ToString(), "--directory", directory.FullName, $"{port}"])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        }) ?? throw new InvalidOperationException("could not start python3");
        try
        {
            // Wait until the server accepts connections (kernel to kernel).
            var ready = Stopwatch.StartNew();
            while (true)
            {
                using var probe = new Socket(hostAddress.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
                try
                {
                    await probe.ConnectAsync(new IPEndPoint(hostAddress, port), c.Cancellation);
                    break;
                }
                catch (SocketException) when (ready.Elapsed < TimeSpan.FromSeconds(5) && !server.HasExited)
                {
                    await Task.Delay(50, c.Cancellation);
                }
            }
            using var client = c.Stack.CreateHttpClient();
            var host = hostAddress.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{hostAddress}]" : hostAddress.ToString();
            var clock = Stopwatch.StartNew();
            var text = await client.GetStringAsync($"http://{host}:{port}/hello.txt", c.Cancellation);
            if (text != body)
                throw new InvalidOperationException($"got '{text.Trim()}', expected '{body.Trim()}'");
            return $"GET http://{host}:{port}/hello.txt gave the file's {body.Length} bytes in {clock.Elapsed.TotalMilliseconds.ToString("0.0", CultureInfo.InvariantCulture)} ms";
        }
        finally
        {
            server.Kill(entireProcessTree: true);
            await server.WaitForExitAsync(CancellationToken.None);
            directory.Delete(recursive: true);
        }
    }

    /// <summary>The stack's own ping (<see cref="NetworkStack.PingAsync"/>) to the kernel side.</summary>
    private static async Task<string> StackPingsKernelAsync(DemoContext c, IPAddress host)
    {
        const int Count = 3;
        var rtts = new List<double>();
        IPStatus last = IPStatus.Unknown;
        for (var i = 0; i < Count; i++)
        {
            var reply = await c.Stack.PingAsync(host, TimeSpan.FromSeconds(2), 56, c.Cancellation);
            last = reply.Status;
            if (reply.Status == IPStatus.Success)
                rtts.Add(reply.RoundtripTime.TotalMilliseconds);
        }
        if (rtts.Count == 0)
            throw new InvalidOperationException($"0 of {Count} replies from {host} ({last})");
        return $"{rtts.Count}/{Count} replies from {host}, rtt avg {rtts.Average().ToString("0.000", CultureInfo.InvariantCulture)} ms";
    }
}
