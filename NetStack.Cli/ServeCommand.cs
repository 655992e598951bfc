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

    /// <summary>The help text.</summary>
    public static string Usage => $"""
        usage: netstack serve [interface options] [--udp-echo PORT]... [--echo PORT]...
                              [--discard PORT]... [--http PORT]... [--h2c PORT]...

        Brings the stack up on a TUN interface and serves until SIGINT or SIGTERM. When everything
        is up it prints one line beginning with 'ready' (interface name and addresses). SIGUSR1
        prints the stack's counters and this process's memory (process.rss, gc.heap, gc.committed
        and more, in bytes; between 'statistics' and 'end statistics' lines) and serving goes on.
        On SIGINT or SIGTERM it stops the HTTP server (idle keep-alive connections are closed at
        once, requests still running get 3 s), removes the interface, prints the counters and
        exits 0.

        services:
          --udp-echo PORT     echo every UDP datagram on PORT (IPv4 and IPv6) back to its sender;
                              repeat the option for more ports
          --echo PORT         TCP echo (RFC 862): every byte goes back; repeatable
          --discard PORT      TCP discard (RFC 863): read to the end, then close; repeatable
          --http PORT         HTTP/1.1 and HTTP/1.0 (keep-alive, pipelining) served by ASP.NET
                              Core's Kestrel through the stack: GET / a status page with the
                              stack's counters, GET /bytes/N N bytes of data (a-z repeated, N
                              up to 2^40); HEAD too; other paths 404, other methods 405;
                              repeatable
          --h2c PORT          the same app over cleartext HTTP/2 with prior knowledge (what
                              'curl --http2-prior-knowledge' and 'h2load' speak); repeatable.
                              Kestrel serves HTTP/2 without TLS only on a port that speaks
                              nothing else, hence a port of its own

        {InterfaceOptions.Help}

        Needs CAP_NET_ADMIN: run as root, or inside 'unshare --user --map-root-user --net'.
        """;

    /// <summary>What the command line asked for.</summary>
    /// <param name="Options">The stack's options.</param>
    /// <param name="UdpEchoPorts">Ports to run a UDP echo service on.</param>
    /// <param name="TcpServices">TCP ports and the service on each ("echo", "discard", "http", "h2c"), in command-line order.</param>
    public sealed record Settings(NetStackOptions Options, IReadOnlyList<int> UdpEchoPorts, IReadOnlyList<(int Port, string Service)> TcpServices);

    /// <summary>Parses the arguments after <c>serve</c>; throws <see cref="UsageException"/>.</summary>
    public static Settings Parse(string[] args)
    {
        var reader = new ArgReader(Name, args);
        var options = new NetStackOptions();
        var ports = new List<int>();
        var tcp = new List<(int Port, string Service)>();
        while (reader.Next() is { } arg)
        {
            if (arg is "--echo" or "--discard" or "--http" or "--h2c")
            {
                var port = reader.ParseInt(arg, reader.Value(arg), 1, 65535, "a port");
                if (tcp.Any(t => t.Port == port))
                    throw reader.Fail($"{arg}: TCP port {port} given twice");
                tcp.Add((port, arg[2..]));
                continue;
            }
            if (InterfaceOptions.TryRead(reader, arg, ref options))
                continue;
            if (arg == "--udp-echo")
            {
                var port = reader.ParseInt(arg, reader.Value(arg), 1, 65535, "a port");
                if (ports.Contains(port))
                    throw reader.Fail($"--udp-echo: port {port} given twice");
                ports.Add(port);
                continue;
            }
            throw reader.Unknown(arg);
        }
        InterfaceOptions.Validate(reader, options);
        return new Settings(options, ports, tcp);
    }

    /// <summary>Runs the command; returns the exit code.</summary>
    public static int Run(string[] args)
    {
        if (Program.WantsHelp(args))
        {
            Console.WriteLine(Usage);
            return 0;
        }
        var settings = Parse(args);
        return RunAsync(settings).GetAwaiter().GetResult();
    }

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
        var listeners = new List<TcpListener>();
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
