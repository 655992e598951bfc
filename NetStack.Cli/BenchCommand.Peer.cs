using System.Collections.Concurrent;
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace NetStack.Cli;

/// <summary>
/// The bench's services and its kernel baseline: the stack-side TCP services (source, small echo),
/// the veth pair to a child namespace and the peer process there (<see cref="RunEchoPeer"/>) with
/// its plain-Socket UDP and TCP services.
/// </summary>
public static partial class BenchCommand
{
    /// <summary>Hidden subcommand: the kernel services in the peer namespace.</summary>
    public const string EchoPeerCommand = "__bench-echo-peer";

    /// <summary>The veth pair's /30: the near end (this namespace) and the peer.</summary>
    private const string VethNear = "10.78.0.1", VethPeer = "10.78.0.2", VethPrefix = "/30";

    /// <summary>
    /// The stack's bulk services' buffers, kept for the process's life and shared by connections
    /// one after another: a transfer allocates no buffer, so the allocation figure is the stack's
    /// (ArrayPool's thread-local caching missed whenever a continuation moved threads).
    /// </summary>
    private static readonly ConcurrentBag<byte[]> ServiceBlocks = [];

    private static byte[] RentServiceBlock() => ServiceBlocks.TryTake(out var block) ? block : new byte[BulkBlock];

    /// <summary>The stack's source service: reads "N\n", sends N bytes in writes of <see cref="BulkBlock"/>, closes.</summary>
    private static async Task StackSourceAsync(TcpConnection connection, CancellationToken cancellationToken)
    {
        var count = await ReadCountAsync(connection, cancellationToken);
        var block = RentServiceBlock();
        try
        {
            for (var left = count; left > 0;)
            {
                var n = (int)Math.Min(left, BulkBlock);
                await connection.WriteAsync(block.AsMemory(0, n), cancellationToken);
                left -= n;
            }
            connection.ShutdownWrite();
            // Wait for the client's close so the last bytes are acknowledged before we let go.
            while (await connection.ReadAsync(block, cancellationToken) > 0)
            {
            }
        }
        finally
        {
            ServiceBlocks.Add(block);
        }
    }

    /// <summary>The stack's discard service: reads of <see cref="BulkBlock"/> to the end, like the kernel peer's.</summary>
    private static async Task StackDiscardAsync(TcpConnection connection, CancellationToken cancellationToken)
    {
        var buffer = RentServiceBlock();
        try
        {
            while (await connection.ReadAsync(buffer.AsMemory(0, BulkBlock), cancellationToken) > 0)
            {
            }
        }
        finally
        {
            ServiceBlocks.Add(buffer);
        }
    }

    /// <summary>The stack's answer-once service: reads a request, writes it back, closes (the server closes first).</summary>
    private static async Task StackAnswerOnceAsync(TcpConnection connection, CancellationToken cancellationToken)
    {
        var buffer = new byte[4096];
        int n = await connection.ReadAsync(buffer, cancellationToken);
        if (n > 0)
            await connection.WriteAsync(buffer.AsMemory(0, n), cancellationToken);
    }

    /// <summary>The stack's TCP echo for small exchanges: a 4 KiB buffer, like the kernel peer's.</summary>
    private static async Task StackSmallEchoAsync(TcpConnection connection, CancellationToken cancellationToken)
    {
        var buffer = new byte[4096];
        int n;
        while ((n = await connection.ReadAsync(buffer, cancellationToken)) > 0)
            await connection.WriteAsync(buffer.AsMemory(0, n), cancellationToken);
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

    private static Measurement MeasureKernelOverVeth(int mtu, Plan plan)
    {
        // Unique names, so two runs in one namespace (the test run's, say) cannot collide.
        var id = Environment.ProcessId % 100000;
        string near = $"nsbench{id}a", far = $"nsbench{id}b";
        Process? peer = null;
        try
        {
            Shell.Check("ip", "link", "add", near, "mtu", $"{mtu}", "type", "veth", "peer", "name", far, "mtu", $"{mtu}");
            var psi = new ProcessStartInfo("unshare") { RedirectStandardOutput = true, RedirectStandardInput = true, UseShellExecute = false };
            foreach (var a in new[] { "--net", "--" }.Concat(Isolation.SelfCommand()).Concat([EchoPeerCommand, far, VethPeer + VethPrefix, $"{EchoPort}"])
                .Concat(plan.Cases.Contains("http") ? ["http"] : []))
                psi.ArgumentList.Add(a);
            peer = Process.Start(psi)!;
            // The peer says "waiting" once it runs inside its new namespace; only then can the
            // far end move there (moving it earlier would leave it here).
            ExpectLine(peer, "waiting");
            Shell.Check("ip", "link", "set", far, "netns", $"{peer.Id}");
            Shell.Check("ip", "addr", "add", VethNear + VethPrefix, "dev", near);
            Shell.Check("ip", "link", "set", near, "up");
            ExpectLine(peer, "ready");
            var cpu = CpuMeter.For(() => peer.Id);
            var iperfMissing = IperfMissing();
            var peerId = peer.Id;
            var m = MeasurePath(IPAddress.Parse(VethPeer), plan, () => InterfacePackets(near), cpu,
                iperfMissing is null ? reverse => RunIperf(peerId, IPAddress.Parse(VethPeer), plan, cpu, reverse) : null);
            m.IperfSkipped = iperfMissing;
            if (plan.Cases.Contains("usend"))
                MeasureUdpSend(IPAddress.Parse(VethNear), plan.Duration, cpu, m, (time, sink) =>
                {
                    // The peer's UDP source sends for `time` to the sink and answers with its count.
                    using var control = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
                    control.Bind(new IPEndPoint(IPAddress.Parse(VethNear), 0));
                    control.ReceiveTimeout = (int)(time + TimeSpan.FromSeconds(10)).TotalMilliseconds;
                    control.SendTo(Encoding.ASCII.GetBytes($"{(long)time.TotalMilliseconds} {sink.Port}"), new IPEndPoint(IPAddress.Parse(VethPeer), EchoPort + 4));
                    var answer = new byte[64];
                    int n = control.Receive(answer);
                    var parts = Encoding.ASCII.GetString(answer, 0, n).Split(' ');
                    return (long.Parse(parts[0], CultureInfo.InvariantCulture), TimeSpan.FromTicks(long.Parse(parts[1], CultureInfo.InvariantCulture)));
                });
            if (plan.Cases.Contains("http"))
                MeasureHttp(IPAddress.Parse(VethPeer), plan.Duration, m);
            return m;
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

    /// <summary>Packets received plus sent by interface <paramref name="name"/> (from /proc/self/net/dev).</summary>
    private static long InterfacePackets(string name)
    {
        // "  name: rx_bytes rx_packets errs drop fifo frame compressed multicast tx_bytes tx_packets ..."
        foreach (var line in File.ReadLines("/proc/self/net/dev"))
        {
            var colon = line.IndexOf(':');
            if (colon < 0 || line[..colon].Trim() != name)
                continue;
            var f = line[(colon + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return long.Parse(f[1], CultureInfo.InvariantCulture) + long.Parse(f[9], CultureInfo.InvariantCulture);
        }
        throw new InvalidOperationException($"interface {name} is not in /proc/self/net/dev");
    }

    private static void ExpectLine(Process peer, string expected)
    {
        var line = peer.StandardOutput.ReadLineAsync();
        if (!line.Wait(TimeSpan.FromSeconds(20)) || line.Result != expected)
            throw new InvalidOperationException($"the kernel echo peer did not get {expected} (said: {(line.IsCompleted ? line.Result ?? "nothing, it exited" : "nothing in 20 s")})");
    }

    /// <summary>
    /// Runs the kernel services in the peer namespace: waits for the veth end to arrive, gives it
    /// its address, then serves UDP echo, TCP discard, source and echo until killed or until stdin
    /// closes. Arguments: interface, address/prefix, UDP echo port (the TCP ports follow it), and
    /// "http" to serve the HTTP app on the kernel's sockets as well.
    /// </summary>
    public static int RunEchoPeer(string[] args)
    {
        if (args.Length is not (3 or 4) || (args.Length == 4 && args[3] != "http"))
            throw new UsageException($"netstack {EchoPeerCommand}: internal command of 'netstack bench' (interface address/prefix port [http])");
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
        StartKernelEcho(new IPEndPoint(IPAddress.Any, port + 3));
        StartKernelEcho(new IPEndPoint(IPAddress.Any, AnswerOncePort), answerOnce: true);
        StartKernelUdpSource(port + 4);
        if (args.Length == 4)
            HttpServer.ForKernel(IPAddress.Any, [HttpPort], [H2cPort]).StartAsync(CancellationToken.None).GetAwaiter().GetResult();
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

    /// <summary>
    /// The usend case's kernel sender in the peer namespace: a request "MS PORT" makes it send
    /// <see cref="SegmentsPerSend"/> datagrams of <see cref="SegmentSize"/> bytes per send (one
    /// buffer, UDP_SEGMENT) to PORT at the requester's address for MS milliseconds, then answer
    /// the requester with "DATAGRAMS TICKS" (sent, and the time it took).
    /// </summary>
    private static void StartKernelUdpSource(int port)
    {
        var control = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        control.Bind(new IPEndPoint(IPAddress.Any, port));
        new Thread(() =>
        {
            var request = new byte[64];
            var data = new byte[SegmentSize * SegmentsPerSend];
            using var sender = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            // UDP_SEGMENT (linux/udp.h: level SOL_UDP 17, option 103).
            sender.SetRawSocketOption(17, 103, BitConverter.GetBytes(SegmentSize));
            while (true)
            {
                EndPoint from = new IPEndPoint(IPAddress.Any, 0);
                int n = control.ReceiveFrom(request, ref from);
                var parts = Encoding.ASCII.GetString(request, 0, n).Split(' ');
                var time = TimeSpan.FromMilliseconds(long.Parse(parts[0], CultureInfo.InvariantCulture));
                var sink = new IPEndPoint(((IPEndPoint)from).Address, int.Parse(parts[1], CultureInfo.InvariantCulture));
                long sent = 0;
                var clock = Stopwatch.StartNew();
                while (clock.Elapsed < time)
                {
                    try
                    {
                        sender.SendTo(data, sink);
                        sent += SegmentsPerSend;
                    }
                    catch (SocketException e) when (e.SocketErrorCode is SocketError.NoBufferSpaceAvailable or SocketError.WouldBlock)
                    {
                    }
                }
                control.SendTo(Encoding.ASCII.GetBytes($"{sent} {clock.Elapsed.Ticks}"), from);
            }
        })
        { IsBackground = true }.Start();
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

    /// <summary>
    /// The kernel TCP echo in the peer namespace: async accept and one task per connection with a
    /// 4 KiB buffer, the same shape as the stack's (a thread per connection would cost the kernel
    /// side the short-connection race). With <paramref name="answerOnce"/> it answers the first
    /// read and closes (the server closes first), as the stack's answer-once service.
    /// </summary>
    private static Socket StartKernelEcho(IPEndPoint local, bool answerOnce = false)
    {
        var listener = new Socket(local.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(local);
        listener.Listen(1024);
        _ = Task.Run(async () =>
        {
            while (true)
            {
                Socket connection;
                try
                {
                    connection = await listener.AcceptAsync();
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException)
                {
                    return; // The listener was closed.
                }
                _ = Task.Run(async () =>
                {
                    using (connection)
                    {
                        try
                        {
                            connection.NoDelay = true;
                            var buffer = new byte[4096];
                            int n;
                            while ((n = await connection.ReceiveAsync(buffer)) > 0)
                            {
                                await connection.SendAsync(buffer.AsMemory(0, n));
                                if (answerOnce)
                                    break;
                            }
                        }
                        catch (SocketException)
                        {
                        }
                    }
                });
            }
        });
        return listener;
    }

    /// <summary>
    /// The kernel discard service: blocking reads of <see cref="BulkBlock"/> on its own thread, one
    /// system call per MiB, as a C or python3 sink would do.
    /// </summary>
    private static void KernelDiscard(Socket connection)
    {
        var buffer = new byte[BulkBlock];
        while (connection.Receive(buffer) > 0)
        {
        }
    }

    /// <summary>
    /// The kernel source service: reads the count line with blocking reads (an async read would
    /// turn the socket non-blocking for good, and every send that fills the buffer would then wait
    /// through .NET's epoll thread), then blocking sends of <see cref="BulkBlock"/>.
    /// </summary>
    private static void KernelSource(Socket connection)
    {
        var line = new StringBuilder();
        var one = new byte[1];
        while (connection.Receive(one) == 1 && one[0] != (byte)'\n')
        {
            if (line.Length > 20)
                throw new SocketException((int)SocketError.InvalidArgument);
            line.Append((char)one[0]);
        }
        if (!long.TryParse(line.ToString(), NumberStyles.None, CultureInfo.InvariantCulture, out var count))
            return;
        var block = new byte[BulkBlock];
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
}
