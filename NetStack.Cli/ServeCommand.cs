using System.CommandLine;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace NetStack.Cli;

/// <summary>
/// <c>netstack serve</c>: brings the stack up, runs its services (UDP echo, TCP echo, discard, HTTP through Kestrel) and serves
/// until SIGINT/SIGTERM (SIGUSR1 prints the counters on the way); then disposes the stack, which removes the interface, prints the
/// statistics and exits 0.
/// </summary>
public static class ServeCommand
{
    /// <summary>The command name used in messages.</summary>
    public const string Name = "netstack serve";

    /// <summary>SIGUSR1 on Linux (x86-64 and arm64).</summary>
    private const PosixSignal SigUsr1 = (PosixSignal)10;

    /// <summary>How long HTTP requests still running at SIGINT/SIGTERM may take to finish.</summary>
    private static readonly TimeSpan HttpShutdownGrace = TimeSpan.FromSeconds(3);

    /// <summary>What the command does, in one line (the command list of <c>netstack --help</c>).</summary>
    public const string Summary = "bring the stack up and serve (UDP and TCP echo, discard, HTTP) until SIGINT/SIGTERM";

    /// <summary>What the command does, for its own help.</summary>
    public static readonly string Details = """
        Brings the stack up on a TUN interface and serves until SIGINT or SIGTERM. When everything is up it prints one line
        beginning with 'ready' (interface name and addresses). SIGUSR1 prints the stack's counters and this process's memory
        (process.rss, gc.heap, gc.committed and more, in bytes; between 'statistics' and 'end statistics' lines) and serving
        goes on. On SIGINT or SIGTERM it stops the HTTP server (idle keep-alive connections are closed at once, requests still
        running get 3 s), removes the interface, prints the counters and exits 0. Needs CAP_NET_ADMIN: run as root, or inside
        'unshare --user --map-root-user --net'.
        """.ReplaceLineEndings(" ");

    /// <summary>What the command line asked for.</summary>
    /// <param name="Options">The stack's options.</param>
    /// <param name="UdpEchoPorts">Ports to run a UDP echo service on.</param>
    /// <param name="TcpServices">TCP ports and the service on each ("echo", "discard", "http", "h2c"), in command-line order.</param>
    public sealed record Settings(NetStackOptions Options, IReadOnlyList<int> UdpEchoPorts, IReadOnlyList<(int Port, string Service)> TcpServices);

    /// <summary>The <c>serve</c> command.</summary>
    public static Command Create()
    {
        var udpEcho = Port("--udp-echo", "echo every UDP datagram on PORT (IPv4 and IPv6) back to its sender; repeatable");
        var tcp = new (string Service, Option<int[]> Option)[]
        {
            ("echo", Port("--echo", "TCP echo (RFC 862): every byte goes back; repeatable")),
            ("discard", Port("--discard", "TCP discard (RFC 863): read to the end, then close; repeatable")),
            ("http", Port("--http", "HTTP/1.1 and HTTP/1.0 (keep-alive, pipelining) served by ASP.NET Core's Kestrel through the stack: "
                + "GET / a status page with the stack's counters, GET /bytes/N N bytes of data (a-z repeated, N up to 2^40); HEAD too; "
                + "other paths 404, other methods 405; repeatable")),
            ("h2c", Port("--h2c", "the same app over cleartext HTTP/2 with prior knowledge (what 'curl --http2-prior-knowledge' and "
                + "'h2load' speak); Kestrel serves HTTP/2 without TLS only on a port that speaks nothing else, hence a port of its own; repeatable")),
        };
        var interfaceOptions = new InterfaceOptions();
        var command = new Command("serve", Summary) { udpEcho };
        foreach (var (_, option) in tcp)
            command.Add(option);
        interfaceOptions.AddTo(command);
        command.SetAction(r =>
        {
            var ports = new List<int>();
            foreach (var port in r.ValueOr(udpEcho, []))
            {
                if (ports.Contains(port))
                    throw new UsageException($"--udp-echo: port {port} given twice");
                ports.Add(port);
            }
            // In command-line order: the order of the option tokens, each followed by its value.
            var services = new List<(int Port, string Service)>();
            var given = tcp.ToDictionary(t => t.Option.Name, t => t.Service);
            var next = tcp.ToDictionary(t => t.Service, _ => 0);
            foreach (var token in r.Tokens)
            {
                if (token.Type != System.CommandLine.Parsing.TokenType.Option || !given.TryGetValue(token.Value, out var service))
                    continue;
                var port = r.GetValue(tcp.First(t => t.Service == service).Option)![next[service]++];
                if (services.Any(t => t.Port == port))
                    throw new UsageException($"--{service}: TCP port {port} given twice");
                services.Add((port, service));
            }
            var settings = new Settings(interfaceOptions.Read(r), ports, services);
            return RunAsync(settings).GetAwaiter().GetResult();
        });
        return command;
    }

    private static Option<int[]> Port(string name, string description) =>
        Cli.Repeatable(name, "PORT", description, text => Cli.ParseInt(name, text, 1, 65535, "a port"));

    private static async Task<int> RunAsync(Settings settings)
    {
        // Listen for the signals before the interface exists, so no signal can leave it behind.
        using var shutdown = new ShutdownSignal();
        var httpPorts = settings.TcpServices.Where(t => t.Service == "http").Select(t => t.Port).ToList();
        var h2cPorts = settings.TcpServices.Where(t => t.Service == "h2c").Select(t => t.Port).ToList();
        // Building the HTTP app takes about as long as bringing the stack up: do both at once.
        NetworkStack? up = null;
        var building = httpPorts.Count + h2cPorts.Count > 0
            ? Task.Run(() => HttpServer.ForStack(() => up!, settings.Options.Address6 is not null, httpPorts, h2cPorts))
            : null;
        var stack = StackStarter.TryStart(Name, settings.Options);
        if (stack is null)
        {
            if (building is not null)
                await (await building).DisposeAsync();
            return 1;
        }
        up = stack;

        IReadOnlyDictionary<string, long> statistics;
        var exitCode = 0;
        var services = new List<Task>();
        var sockets = new List<UdpSocket>();
        var listeners = new List<TcpConnectionListener>();
        HttpServer? http = null;
        try
        {
            foreach (var (port, service) in settings.TcpServices)
            {
                if (service is not ("echo" or "discard"))
                    continue;
                // Both families, like a dual-mode .NET socket.
                var listener = stack.ListenTcp(port);
                listeners.Add(listener);
                Func<TcpConnection, CancellationToken, Task> serve = service == "echo" ? TcpServices.EchoAsync : TcpServices.DiscardAsync;
                services.Add(TcpServices.AcceptLoopAsync(listener, $"{service} on {port}", serve, shutdown.Token));
            }
            if (building is not null)
            {
                http = await building;
                await http.StartAsync(shutdown.Token);
            }
            foreach (var port in settings.UdpEchoPorts)
            {
                // IPv6Any binds both families (dual mode), like a dual-mode .NET Socket.
                var socket = stack.BindUdp(new IPEndPoint(IPAddress.IPv6Any, port));
                sockets.Add(socket);
                services.Add(UdpEcho.RunAsync(socket, shutdown.Token));
            }

            var echo = settings.UdpEchoPorts.Count > 0 ? $" udp-echo {string.Join(',', settings.UdpEchoPorts)}" : "";
            var tcpServices = string.Concat(settings.TcpServices.Select(t => $" {t.Service} {t.Port}"));
            // SIGUSR1 prints the counters and serving goes on. The PosixSignal enum has no SIGUSR1;
            // .NET takes the raw Linux number cast to it. Cancel stops the default action (exit).
            using var dump = PosixSignalRegistration.Create(SigUsr1, context =>
            {
                context.Cancel = true;
                Console.WriteLine($"statistics\n{StackStarter.FormatStatistics(stack.Statistics.Snapshot())}\n{ProcessMemory.Now().Format()}\nend statistics");
            });
            Console.WriteLine($"ready {InterfaceOptions.Describe(stack)}{echo}{tcpServices}");

            try
            {
                await Task.Delay(Timeout.Infinite, shutdown.Token);
            }
            catch (OperationCanceledException)
            {
            }
            Console.Error.WriteLine($"{Name}: shutting down");
        }
        catch (OperationCanceledException) when (shutdown.Token.IsCancellationRequested)
        {
            // SIGINT/SIGTERM while the HTTP server was starting.
            Console.Error.WriteLine($"{Name}: shutting down");
        }
        catch (Exception e) when (e is SocketException or IOException)
        {
            // A port the stack could not bind (Kestrel reports it as an IOException).
            Console.Error.WriteLine($"{Name}: {e.Message}");
            exitCode = 1;
        }
        finally
        {
            // Built but not started when a TCP service failed to bind: dispose it all the same.
            if (http is null && building is not null)
                http = await building;
            if (http is not null)
            {
                // Kestrel closes idle keep-alive connections at once; a request still running gets
                // the grace, then its connection is reset.
                await http.StopAsync(HttpShutdownGrace);
                await http.DisposeAsync();
            }
            foreach (var s in sockets)
                await s.DisposeAsync();
            foreach (var l in listeners)
                await l.DisposeAsync();
            await Task.WhenAll(services);
            statistics = stack.Statistics.Snapshot();
            await stack.DisposeAsync();
        }
        if (exitCode == 0)
            Console.WriteLine(StackStarter.FormatStatistics(statistics));
        return exitCode;
    }
}

/// <summary>The UDP echo service (RFC 862 style): every datagram goes back to its sender.</summary>
public static class UdpEcho
{
    /// <summary>Largest UDP payload over IPv6 (65535 - 8); over IPv4 it is 65507.</summary>
    private const int MaxDatagram = 65527;

    /// <summary>Echoes datagrams until <paramref name="cancellationToken"/> fires or the socket is closed.</summary>
    public static async Task RunAsync(UdpSocket socket, CancellationToken cancellationToken)
    {
        var buffer = new byte[MaxDatagram];
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                var received = await socket.ReceiveFromAsync(buffer, cancellationToken);
                await socket.SendToAsync(buffer.AsMemory(0, received.ReceivedBytes), (IPEndPoint)received.RemoteEndPoint, cancellationToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.OperationAborted)
            {
                return;
            }
            catch (SocketException)
            {
                // One datagram's trouble (too big, the sender's port closed) is not the service's.
            }
            catch (Exception e)
            {
                Console.Error.WriteLine($"udp echo on {socket.LocalEndPoint}: stopped: {e.Message}");
                return;
            }
        }
    }
}
