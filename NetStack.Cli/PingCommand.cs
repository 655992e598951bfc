using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;

namespace NetStack.Cli;

/// <summary><c>netstack ping</c>: brings a stack up and pings a host from it, printing like iputils ping.</summary>
public static class PingCommand
{
    /// <summary>The command name used in messages.</summary>
    public const string Name = "netstack ping";

    /// <summary>ICMP echo header: type, code, checksum, identifier, sequence (RFC 792, RFC 4443 §4.1).</summary>
    private const int IcmpEchoHeader = 8;

    /// <summary>Largest echo data over IPv4: 65535 - 20 (IP header) - 8 (ICMP header).</summary>
    private const int MaxSize = 65507;

    /// <summary>What the command does, in one line (the command list of <c>netstack --help</c>).</summary>
    public const string Summary = "bring a stack up and ping a host from it";

    /// <summary>What the command does, for its own help.</summary>
    public static readonly string Details = """
        Brings the stack up on a TUN interface and sends ICMP echo requests from it to HOST (an IPv4 or IPv6 address, usually
        the kernel side, --host-ip or --host-ip6; or a name, resolved through the --dns servers, its first address in RFC 6724
        order that the stack has a source for). Exits 0 when any reply came back, 1 otherwise. SIGINT stops early and prints
        the summary. Needs CAP_NET_ADMIN: run as root, or inside 'unshare --user --map-root-user --net'.
        """.ReplaceLineEndings(" ");

    /// <summary>What the command line asked for.</summary>
    /// <param name="Options">The stack's options.</param>
    /// <param name="Host">Whom to ping: an address or a host name.</param>
    /// <param name="Count">Requests to send; 0 means until interrupted.</param>
    /// <param name="Interval">Time between requests.</param>
    /// <param name="Timeout">Time to wait for each reply.</param>
    /// <param name="Size">Echo data bytes.</param>
    public sealed record Settings(NetStackOptions Options, string Host, int Count, TimeSpan Interval, TimeSpan Timeout, int Size);

    /// <summary>The <c>ping</c> command.</summary>
    public static Command Create()
    {
        var host = Cli.Positional("HOST", "the address (IPv4 or IPv6) or host name to ping", text => Cli.ParseHost("HOST", text));
        var dns = Cli.DnsServers();
        var count = Cli.Int("-c", "COUNT", "echo requests to send, 0 = until interrupted (default 4)", 0, int.MaxValue, "a count");
        var interval = Cli.Seconds("-i", "INTERVAL", "seconds between requests (default 1)", 0.001, 3600);
        var timeout = Cli.Seconds("-W", "TIMEOUT", "seconds to wait for each reply (default 1)", 0.001, 3600);
        var size = Cli.Int("-s", "SIZE", $"echo data bytes, 0-{MaxSize} (default 56)", 0, MaxSize, "an echo data size");
        var interfaceOptions = new InterfaceOptions();
        var command = new Command("ping", Summary) { host, count, interval, timeout, size, dns };
        interfaceOptions.AddTo(command);
        command.SetAction(r =>
        {
            var target = r.GetValue(host) ?? throw new UsageException("missing HOST");
            var options = interfaceOptions.Read(r);
            if (r.IsGiven(dns))
                options = options with { DnsServers = r.GetValue(dns) };
            var v6 = IPAddress.TryParse(target, out var literal) && literal.AddressFamily == AddressFamily.InterNetworkV6;
            if (literal is not null && (v6 ? options.Address6 is null : options.Address is null))
                throw new UsageException($"HOST {target} is {(v6 ? "IPv6" : "IPv4")} but the stack has no {(v6 ? "--ip6" : "--ip")} address");
            var settings = new Settings(options, target, r.ValueOr(count, 4), r.ValueOr(interval, TimeSpan.FromSeconds(1)),
                r.ValueOr(timeout, TimeSpan.FromSeconds(1)), r.ValueOr(size, 56));
            return RunAsync(settings).GetAwaiter().GetResult();
        });
        return command;
    }

    private static async Task<int> RunAsync(Settings s)
    {
        using var shutdown = new ShutdownSignal();
        var stack = StackStarter.TryStart(Name, s.Options);
        if (stack is null)
            return 1;
        await using var _ = StackStarter.Owning(Name, stack);

        IPAddress target;
        try
        {
            target = await ResolveAsync(stack, s.Host, shutdown.Token);
        }
        catch (SocketException e)
        {
            Console.Error.WriteLine($"{Name}: {s.Host}: {e.Message}");
            return 1;
        }
        catch (OperationCanceledException)
        {
            return 1;
        }
        if (target.AddressFamily == AddressFamily.InterNetworkV6)
        {
            try
            {
                await Shell.WaitForIpv6AddressAsync(stack.InterfaceName, shutdown.Token);
            }
            catch (OperationCanceledException)
            {
                return 1;
            }
        }
        var source = target.AddressFamily == AddressFamily.InterNetworkV6 ? s.Options.Address6 : s.Options.Address;
        Console.WriteLine($"PING {(target.ToString() == s.Host ? s.Host : $"{s.Host} ({target})")} from {source} {stack.InterfaceName}: {s.Size} data bytes");
        var rtts = new List<double>();
        var sent = 0;
        var clock = Stopwatch.StartNew();
        for (var seq = 1; (s.Count == 0 || seq <= s.Count) && !shutdown.Token.IsCancellationRequested; seq++)
        {
            var started = clock.Elapsed;
            sent++;
            try
            {
                var reply = await stack.PingAsync(target, s.Timeout, s.Size, shutdown.Token);
                if (reply.Status == IPStatus.Success)
                {
                    var ms = reply.RoundtripTime.TotalMilliseconds;
                    rtts.Add(ms);
                    Console.WriteLine($"{reply.BufferSize + IcmpEchoHeader} bytes from {reply.Address}: icmp_seq={seq} time={Ms(ms)} ms");
                }
                else
                {
                    Console.WriteLine($"From {reply.Address} icmp_seq={seq} {reply.Status}");
                }
            }
            catch (OperationCanceledException) when (shutdown.Token.IsCancellationRequested)
            {
                sent--;
                break;
            }
            catch (Exception e)
            {
                Console.WriteLine($"icmp_seq={seq}: {e.Message}");
            }
            if (s.Count != 0 && seq == s.Count)
                break;
            var wait = started + s.Interval - clock.Elapsed;
            if (wait > TimeSpan.Zero)
            {
                try
                {
                    await Task.Delay(wait, shutdown.Token);
                }
                catch (OperationCanceledException)
                {
                }
            }
        }

        var loss = sent == 0 ? 0 : 100 * (sent - rtts.Count) / sent;
        Console.WriteLine($"--- {target} ping statistics ---");
        Console.WriteLine($"{sent} packets transmitted, {rtts.Count} received, {loss}% packet loss, time {clock.ElapsedMilliseconds}ms");
        if (rtts.Count > 0)
        {
            var avg = rtts.Average();
            var mdev = Math.Sqrt(rtts.Average(r => (r - avg) * (r - avg)));
            Console.WriteLine($"rtt min/avg/max/mdev = {Ms(rtts.Min())}/{Ms(avg)}/{Ms(rtts.Max())}/{Ms(mdev)} ms");
        }
        return rtts.Count > 0 ? 0 : 1;
    }

    // The host itself when it is an address; else the first resolved address (RFC 6724 order)
    // of a family the stack has an address of.
    private static async Task<IPAddress> ResolveAsync(NetworkStack stack, string host, CancellationToken token)
    {
        var family = (stack.Options.Address, stack.Options.Address6) switch
        {
            (null, _) => AddressFamily.InterNetworkV6,
            (_, null) => AddressFamily.InterNetwork,
            _ => AddressFamily.Unspecified,
        };
        var addresses = await stack.ResolveAsync(host, IPAddress.TryParse(host, out _) ? AddressFamily.Unspecified : family, token);
        return addresses.Length > 0 ? addresses[0] : throw new SocketException((int)SocketError.NoData);
    }

    private static string Ms(double ms) => ms.ToString("0.000", CultureInfo.InvariantCulture);
}
