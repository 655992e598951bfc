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

    /// <summary>The help text.</summary>
    public static string Usage => $"""
        usage: netstack get URL [-m SECONDS] [-i] [interface options]

        Brings the stack up on a TUN interface and fetches URL (http://ADDRESS[:PORT]/PATH; the
        host is an IP address reachable through the link, usually the kernel side, --host-ip or
        --host-ip6) with HttpClient, every connection going through NetStack's TCP. Writes the
        body to standard output. Exits 0 for a 2xx status, 1 otherwise.

        get options:
          -m SECONDS          give up after this long (default 30)
          -i                  print the status line and headers before the body

        {InterfaceOptions.Help}

        Needs CAP_NET_ADMIN: run as root, or inside 'unshare --user --map-root-user --net'.
        """;

    /// <summary>What the command line asked for.</summary>
    /// <param name="Options">The stack's options.</param>
    /// <param name="Url">What to fetch.</param>
    /// <param name="Timeout">The time limit for the whole request.</param>
    /// <param name="IncludeHeaders">Print the status line and headers too.</param>
    public sealed record Settings(NetStackOptions Options, Uri Url, TimeSpan Timeout, bool IncludeHeaders);

    /// <summary>Parses the arguments after <c>get</c>; throws <see cref="UsageException"/>.</summary>
    public static Settings Parse(string[] args)
    {
        var reader = new ArgReader(Name, args);
        var options = new NetStackOptions();
        Uri? url = null;
        var timeout = TimeSpan.FromSeconds(30);
        var include = false;
        while (reader.Next() is { } arg)
        {
            if (InterfaceOptions.TryRead(reader, arg, ref options))
                continue;
            switch (arg)
            {
                case "-m":
                    timeout = reader.ParseSeconds(arg, reader.Value(arg), 0.001, 86400);
                    break;
                case "-i":
                    include = true;
                    break;
                default:
                    if (arg.StartsWith('-') || url is not null)
                        throw reader.Unknown(arg);
                    if (!Uri.TryCreate(arg, UriKind.Absolute, out url) || url.Scheme != Uri.UriSchemeHttp)
                        throw reader.Fail($"'{arg}' is not an http:// URL");
                    if (url.HostNameType is not (UriHostNameType.IPv4 or UriHostNameType.IPv6))
                        throw reader.Fail($"'{url.Host}' is not an IP address (the stack has no DNS resolver)");
                    break;
            }
        }
        if (url is null)
            throw reader.Fail("missing URL");
        InterfaceOptions.Validate(reader, options);
        var v6 = url.HostNameType == UriHostNameType.IPv6;
        if (v6 ? options.Address6 is null : options.Address is null)
            throw reader.Fail($"{url.Host} is {(v6 ? "IPv6" : "IPv4")} but the stack has no {(v6 ? "--ip6" : "--ip")} address");
        return new Settings(options, url, timeout, include);
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
            if (s.Url.HostNameType == UriHostNameType.IPv6)
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
