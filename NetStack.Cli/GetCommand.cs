using System.CommandLine;
using System.Net;
using System.Net.Sockets;

namespace NetStack.Cli;

/// <summary>
/// <c>netstack get URL</c>: brings a stack up and fetches URL through it with
/// <see cref="HttpClient"/> (connections made by <c>NetworkStack.CreateHttpClient</c>),
/// writing the body to standard output.
/// </summary>
public static class GetCommand
{
    /// <summary>The command name used in messages.</summary>
    public const string Name = "netstack get";

    /// <summary>What the command does, in one line (the command list of <c>netstack --help</c>).</summary>
    public const string Summary = "bring a stack up and fetch an http:// URL through it with HttpClient";

    /// <summary>What the command does, for its own help.</summary>
    public static readonly string Details = """
        Brings the stack up on a TUN interface and fetches URL (http://HOST[:PORT]/PATH; the host is an IP address reachable
        through the link, usually the kernel side, --host-ip or --host-ip6, or a name the stack resolves through the --dns servers
        with Happy Eyeballs) with HttpClient, every connection going through
        NetStack's TCP. Writes the body to standard output. Exits 0 for a 2xx status, 1 otherwise. Needs CAP_NET_ADMIN: run as
        root, or inside 'unshare --user --map-root-user --net'.
        """.ReplaceLineEndings(" ");

    /// <summary>What the command line asked for.</summary>
    /// <param name="Options">The stack's options.</param>
    /// <param name="Url">What to fetch.</param>
    /// <param name="Timeout">The time limit for the whole request.</param>
    /// <param name="IncludeHeaders">Print the status line and headers too.</param>
    public sealed record Settings(NetStackOptions Options, Uri Url, TimeSpan Timeout, bool IncludeHeaders);

    /// <summary>The <c>get</c> command.</summary>
    public static Command Create()
    {
        var url = Cli.Positional("URL", "what to fetch: http://HOST[:PORT]/PATH", ParseUrl);
        var dns = Cli.DnsServers();
        var timeout = Cli.Seconds("-m", "SECONDS", "give up after this long (default 30)", 0.001, 86400);
        var include = Cli.Flag("-i", "print the status line and headers before the body");
        var interfaceOptions = new InterfaceOptions();
        var command = new Command("get", Summary) { url, timeout, include, dns };
        interfaceOptions.AddTo(command);
        command.SetAction(r =>
        {
            var target = r.GetValue(url) ?? throw new UsageException("missing URL");
            var options = interfaceOptions.Read(r);
            if (r.IsGiven(dns))
                options = options with { DnsServers = r.GetValue(dns) };
            var v6 = target.HostNameType == UriHostNameType.IPv6;
            if (target.HostNameType != UriHostNameType.Dns && (v6 ? options.Address6 is null : options.Address is null))
                throw new UsageException($"{target.Host} is {(v6 ? "IPv6" : "IPv4")} but the stack has no {(v6 ? "--ip6" : "--ip")} address");
            var settings = new Settings(options, target, r.ValueOr(timeout, TimeSpan.FromSeconds(30)), r.IsGiven(include));
            return RunAsync(settings).GetAwaiter().GetResult();
        });
        return command;
    }

    private static Uri ParseUrl(string text)
    {
        if (!Uri.TryCreate(text, UriKind.Absolute, out var url) || url.Scheme != Uri.UriSchemeHttp)
            throw new UsageException($"'{text}' is not an http:// URL");
        if (url.HostNameType is not (UriHostNameType.IPv4 or UriHostNameType.IPv6 or UriHostNameType.Dns))
            throw new UsageException($"'{url.Host}' is not an IP address or a host name");
        return url;
    }

    private static async Task<int> RunAsync(Settings s)
    {
        using var shutdown = new ShutdownSignal();
        var stack = StackStarter.TryStart(Name, s.Options);
        if (stack is null)
            return 1;
        await using var _ = StackStarter.Owning(Name, stack);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(shutdown.Token);
        timeout.CancelAfter(s.Timeout);
        try
        {
            if (s.Url.HostNameType != UriHostNameType.IPv4 && s.Options.Address6 is not null)
                await Shell.WaitForIpv6AddressAsync(stack.InterfaceName, timeout.Token);
            using var client = stack.CreateHttpClient();
            client.Timeout = Timeout.InfiniteTimeSpan; // the token above bounds the whole request
            using var response = await client.GetAsync(s.Url, HttpCompletionOption.ResponseHeadersRead, timeout.Token);
            if (s.IncludeHeaders)
            {
                Console.WriteLine($"HTTP/{response.Version} {(int)response.StatusCode} {response.ReasonPhrase}");
                foreach (var (name, values) in response.Headers.Concat(response.Content.Headers))
                    Console.WriteLine($"{name}: {string.Join(", ", values)}");
                Console.WriteLine();
            }
            await using var stdout = Console.OpenStandardOutput();
            await response.Content.CopyToAsync(stdout, timeout.Token);
            await stdout.FlushAsync(timeout.Token);
            if (!response.IsSuccessStatusCode)
            {
                Console.Error.WriteLine($"{Name}: {s.Url}: {(int)response.StatusCode} {response.ReasonPhrase}");
                return 1;
            }
            return 0;
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested)
        {
            Console.Error.WriteLine($"{Name}: {s.Url}: {(shutdown.Token.IsCancellationRequested ? "interrupted" : $"no answer within {s.Timeout.TotalSeconds:0.###} s")}");
            return 1;
        }
        catch (HttpRequestException e)
        {
            var inner = e.InnerException is SocketException se ? $" ({se.SocketErrorCode})" : "";
            Console.Error.WriteLine($"{Name}: {s.Url}: {e.Message}{inner}");
            return 1;
        }
    }
}
