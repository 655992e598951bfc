using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace NetStack.Cli;

/// <summary>
/// <c>netstack bench --idle-connections N</c>: what an idle TCP connection costs the stack. A child
/// process (<see cref="RunClients"/>, kernel sockets) opens N connections to one listener of the
/// stack and holds them; this process accepts them all and reports the growth of its managed
/// heap (after a full collection) and of its resident set, per connection. The clients' own
/// memory is in the other process, so it does not count.
/// </summary>
public static class IdleBench
{
    /// <summary>Hidden subcommand: the kernel client that opens and holds the connections.</summary>
    public const string ClientsCommand = "__bench-idle-clients";

    /// <summary>The listener's port.</summary>
    private const int Port = 9003;

    /// <summary>Runs the measurement inside the private namespace; returns the exit code.</summary>
    /// <param name="options">The stack to bring up.</param>
    /// <param name="count">Connections to open.</param>
    public static int Run(NetStackOptions options, int count)
    {
        Isolation.LoopbackUp();
        var stack = NetworkStack.Start(options);
        using var _ = StackStarter.Owning("netstack bench", stack);
        using var listener = stack.ListenTcp(Port, 4096);
        var accepted = new ConcurrentQueue<TcpConnection>();
        var acceptLoop = Task.Run(async () =>
        {
            try
            {
                while (true)
                    accepted.Enqueue(await listener.AcceptAsync());
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
            }
        });
        long heapBefore = GC.GetTotalMemory(true);
        long rssBefore = ResidentBytes();
        var self = Isolation.SelfCommand();
        var psi = new ProcessStartInfo(self[0]) { RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in self.Skip(1).Concat([ClientsCommand, options.Address!.ToString(), $"{Port}", $"{count}"]))
            psi.ArgumentList.Add(a);
        var clock = Stopwatch.StartNew();
        using var clients = Process.Start(psi)!;
        try
        {
            var line = clients.StandardOutput.ReadLine();
            while (accepted.Count < count && clock.Elapsed < TimeSpan.FromSeconds(120))
                Thread.Sleep(50);
            long heap = GC.GetTotalMemory(true) - heapBefore;
            long rss = ResidentBytes() - rssBefore;
            Console.WriteLine($"{accepted.Count} of {count} idle TCP connections accepted in {clock.Elapsed.TotalSeconds:F1} s (clients: {line ?? "no answer"})");
            Console.WriteLine($"per connection: {heap / (double)count:F0} bytes of managed heap, {rss / (double)count:F0} bytes of RSS (this process; the kernel clients run in another)");
            return accepted.Count == count ? 0 : 1;
        }
        finally
        {
            clients.StandardInput.Close();
            if (!clients.WaitForExit(30_000))
                clients.Kill();
            listener.Dispose();
            acceptLoop.Wait(TimeSpan.FromSeconds(10));
            foreach (var c in accepted)
                c.Abort();
        }
    }

    /// <summary>The hidden client: opens the connections, says "connected N", holds them until stdin closes.</summary>
    /// <param name="args">Address, port, count.</param>
    public static int RunClients(string[] args)
    {
        if (args.Length != 3)
            throw new UsageException($"netstack {ClientsCommand}: internal command of 'netstack bench' (address port count)");
        var target = new IPEndPoint(IPAddress.Parse(args[0]), int.Parse(args[1], CultureInfo.InvariantCulture));
        int count = int.Parse(args[2], CultureInfo.InvariantCulture);
        var sockets = new List<Socket>(count);
        try
        {
            for (int i = 0; i < count; i++)
            {
                var socket = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
                sockets.Add(socket);
                socket.Connect(target);
            }
            Console.WriteLine($"connected {sockets.Count}");
        }
        catch (SocketException e)
        {
            Console.WriteLine($"connected {sockets.Count - 1}, then {e.SocketErrorCode}");
        }
        Console.Out.Flush();
        Console.In.ReadToEnd();
        foreach (var socket in sockets)
            socket.Dispose();
        return 0;
    }

    private static long ResidentBytes()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
        }
        return 0;
    }
}
