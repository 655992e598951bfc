using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace NetStack.Cli;

/// <summary>
/// A bad command line: the message is the one line printed on stderr, and the process exits
/// with <see cref="ExitCode"/>.
/// </summary>
public sealed class UsageException(string message) : Exception(message)
{
    /// <summary>The exit code for bad arguments, as most Unix tools use it.</summary>
    public const int ExitCode = 2;
}

/// <summary>
/// Helpers for the System.CommandLine definitions of the commands: options whose values are
/// checked by a parse function (its <see cref="UsageException"/> becomes the parse error, naming
/// the option), and the usual value kinds (addresses, bounded integers, seconds).
/// </summary>
public static class Cli
{
    /// <summary>
    /// An option taking one value, turned into a <typeparamref name="T"/> by <paramref name="parse"/>
    /// (which throws <see cref="UsageException"/> for a bad value). Without a default: a command
    /// reads it only when given (<see cref="IsGiven"/>), so the library's own defaults stay in
    /// one place.
    /// </summary>
    public static Option<T> Value<T>(string name, string helpName, string description, Func<string, T> parse) =>
        new(name)
        {
            HelpName = helpName,
            Description = description,
            Arity = ArgumentArity.ExactlyOne,
            CustomParser = r => Convert(r, parse),
        };

    /// <summary>As <see cref="Value{T}"/>, repeatable: every occurrence adds one value.</summary>
    public static Option<T[]> Repeatable<T>(string name, string helpName, string description, Func<string, T> parse) =>
        new(name)
        {
            HelpName = helpName,
            Description = description,
            Arity = ArgumentArity.OneOrMore,
            AllowMultipleArgumentsPerToken = false,
            CustomParser = r =>
            {
                var values = new T[r.Tokens.Count];
                for (var i = 0; i < values.Length; i++)
                {
                    try
                    {
                        values[i] = parse(r.Tokens[i].Value);
                    }
                    catch (UsageException e)
                    {
                        r.AddError(e.Message);
                        return [];
                    }
                }
                return values;
            },
        };

    /// <summary>An option without a value.</summary>
    public static Option<bool> Flag(string name, string description) =>
        new(name) { Description = description, Arity = ArgumentArity.Zero };

    /// <summary>A positional argument given at most once, turned into a value by <paramref name="parse"/>.</summary>
    public static Argument<T?> Positional<T>(string name, string description, Func<string, T> parse) =>
        new(name)
        {
            Description = description,
            Arity = ArgumentArity.ZeroOrOne,
            CustomParser = r => r.Tokens.Count == 0 ? default : Convert(r, parse),
        };

    private static T Convert<T>(ArgumentResult r, Func<string, T> parse)
    {
        if (r.Tokens.Count == 0)
            return default!;
        try
        {
            return parse(r.Tokens[0].Value);
        }
        catch (UsageException e)
        {
            r.AddError(e.Message);
            return default!;
        }
    }

    /// <summary>True when the command line gave <paramref name="option"/>.</summary>
    public static bool IsGiven(this ParseResult result, Option option) => result.GetResult(option) is { Implicit: false };

    /// <summary>The value of <paramref name="option"/> when given, else <paramref name="otherwise"/>.</summary>
    public static T ValueOr<T>(this ParseResult result, Option<T> option, T otherwise) =>
        result.IsGiven(option) ? result.GetValue(option)! : otherwise;

    /// <summary>A bad value: "OPTION: MESSAGE".</summary>
    public static UsageException Bad(string option, string message) => new($"{option}: {message}");

    /// <summary>Parses an address of the given family; <c>none</c> gives null when <paramref name="allowNone"/>.</summary>
    public static IPAddress? ParseAddress(string option, string text, AddressFamily family, bool allowNone)
    {
        if (allowNone && text == "none")
            return null;
        var kind = family == AddressFamily.InterNetwork ? "IPv4" : "IPv6";
        if (!IPAddress.TryParse(text, out var address) || address.AddressFamily != family
            // IPAddress.TryParse accepts "1" or "1.2" as IPv4 shorthand; a stack address wants all four parts.
            || (family == AddressFamily.InterNetwork && text.Count(c => c == '.') != 3))
            throw Bad(option, $"'{text}' is not an {kind} address");
        return address;
    }

    /// <summary>
    /// The repeatable <c>--dns ADDRESS</c> option of the commands that take host names: the DNS
    /// servers the stack's resolver asks, in order (NetStackOptions.DnsServers).
    /// </summary>
    public static Option<IPAddress[]> DnsServers() =>
        Repeatable("--dns", "ADDRESS", "a DNS server for host names, asked on port 53 through the stack; repeatable (default: none with TUN, those the link taught with --tap)",
            text => ParseAnyAddress("--dns", text));

    /// <summary>
    /// Parses a host: an IPv4 or IPv6 address, or a host name (checked as one; the stack resolves
    /// it after starting).
    /// </summary>
    public static string ParseHost(string option, string text)
    {
        if (text.Contains(':') || text.All(c => char.IsAsciiDigit(c) || c == '.'))
            return ParseAnyAddress(option, text).ToString();
        if (Uri.CheckHostName(text) == UriHostNameType.Dns)
            return text;
        throw Bad(option, $"'{text}' is not an IP address or a host name");
    }

    /// <summary>Parses an IPv4 or IPv6 address (a ping target).</summary>
    public static IPAddress ParseAnyAddress(string option, string text)
    {
        if (IPAddress.TryParse(text, out var address)
            && (address.AddressFamily == AddressFamily.InterNetworkV6 || text.Count(c => c == '.') == 3))
            return address;
        throw Bad(option, $"'{text}' is not an IPv4 or IPv6 address");
    }

    /// <summary>Parses a decimal integer in [<paramref name="min"/>, <paramref name="max"/>].</summary>
    public static int ParseInt(string option, string text, int min, int max, string what)
    {
        if (!int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var n) || n < min || n > max)
            throw Bad(option, $"'{text}' is not {what} ({min}-{max})");
        return n;
    }

    /// <summary>Parses a number of seconds in [<paramref name="min"/>, <paramref name="max"/>] into a <see cref="TimeSpan"/>.</summary>
    public static TimeSpan ParseSeconds(string option, string text, double min, double max)
    {
        if (!double.TryParse(text, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var s)
            || !(s >= min) || s > max)
            throw Bad(option, $"'{text}' is not a number of seconds ({min}-{max})");
        return TimeSpan.FromSeconds(s);
    }

    /// <summary>An integer option in [<paramref name="min"/>, <paramref name="max"/>].</summary>
    public static Option<int> Int(string name, string helpName, string description, int min, int max, string what) =>
        Value(name, helpName, description, text => ParseInt(name, text, min, max, what));

    /// <summary>A seconds option in [<paramref name="min"/>, <paramref name="max"/>].</summary>
    public static Option<TimeSpan> Seconds(string name, string helpName, string description, double min, double max) =>
        Value(name, helpName, description, text => ParseSeconds(name, text, min, max));

    /// <summary>A comma-separated subset of <paramref name="names"/>.</summary>
    public static Option<HashSet<string>> Subset(string name, string description, IReadOnlyCollection<string> names) =>
        Value(name, "LIST", description, list =>
        {
            var picked = list.Split(',', StringSplitOptions.TrimEntries);
            if (picked.Any(n => !names.Contains(n)))
                throw Bad(name, $"'{list}' is not a list of {string.Join(",", names)}");
            return new HashSet<string>(picked, StringComparer.Ordinal);
        });
}

/// <summary>
/// The interface options every command that brings a stack up accepts: <c>--tun</c>, <c>--ip</c>,
/// <c>--host-ip</c>, <c>--ip6</c>, <c>--host-ip6</c>, <c>--mtu</c>, <c>--pcap</c>, the device
/// paths (<c>--no-offload</c>, <c>--io-uring</c>, <c>--writer-thread</c>,
/// <c>--no-writer-thread</c>, <c>--queues</c>), TAP mode (<c>--tap</c>, <c>--mac</c>, <c>--vlan</c>) and fault
/// injection. One instance per command (<see cref="AddTo"/>); <see cref="Read"/> builds the
/// stack's options from what the command line gave, the rest keeping
/// <see cref="NetStackOptions"/>' defaults.
/// </summary>
public sealed class InterfaceOptions
{
    /// <summary>Linux interface names are at most IFNAMSIZ - 1 = 15 bytes.</summary>
    private const int MaxInterfaceName = 15;

    private static readonly NetStackOptions Defaults = new();

    private readonly Option<string> _tun = Cli.Value("--tun", "NAME", $"TUN interface name, or a template with %d (default {Defaults.TunName})", text => ParseName("--tun", text));
    private readonly Option<Address> _ip = Cli.Value("--ip", "ADDR", $"the stack's IPv4 address, or 'none' (default {Defaults.Address})",
        text => new Address(Cli.ParseAddress("--ip", text, AddressFamily.InterNetwork, allowNone: true)));
    private readonly Option<Address> _hostIp = Cli.Value("--host-ip", "ADDR", $"the kernel side's IPv4 address (default {Defaults.HostAddress})",
        text => new Address(Cli.ParseAddress("--host-ip", text, AddressFamily.InterNetwork, allowNone: false)));
    private readonly Option<Address> _ip6 = Cli.Value("--ip6", "ADDR", $"the stack's IPv6 address, or 'none' (default {Defaults.Address6})",
        text => new Address(Cli.ParseAddress("--ip6", text, AddressFamily.InterNetworkV6, allowNone: true)));
    private readonly Option<Address> _hostIp6 = Cli.Value("--host-ip6", "ADDR", $"the kernel side's IPv6 address (default {Defaults.HostAddress6})",
        text => new Address(Cli.ParseAddress("--host-ip6", text, AddressFamily.InterNetworkV6, allowNone: false)));
    private readonly Option<int> _mtu = Cli.Int("--mtu", "N", $"link MTU, 1280-65535 (default {Defaults.Mtu})", 1280, 65535, "an MTU");
    private readonly Option<string> _pcap = Cli.Value("--pcap", "FILE", "record every packet the stack reads and writes in FILE (pcap, raw IP)",
        text => text.Length == 0 ? throw Cli.Bad("--pcap", "the file name is empty") : text);
    private readonly Option<bool> _noOffload = Cli.Flag("--no-offload", "no TUN offloads (checksum offload, TSO): one packet per system call");
    private readonly Option<bool> _ioUring = Cli.Flag("--io-uring", "batch TUN reads and writes through io_uring (falls back when unavailable)");
    private readonly Option<bool> _writerThread = Cli.Flag("--writer-thread",
        "write to the TUN device from a thread of its own while the loop is busy (needs --no-offload; the default whenever the device has no offloads)");
    private readonly Option<bool> _noWriterThread = Cli.Flag("--no-writer-thread", "always write from the loop thread");
    private readonly Option<bool> _inline = Cli.Flag("--unsafe-inline-completions",
        "run the code awaiting a read, write, accept or receive on the engine's loop thread, not the thread pool (NetStackOptions.UnsafeInlineCompletions)");
    private readonly Option<int> _queues = Cli.Int("--queues", "N",
        "TUN queues, one engine loop (thread) each, 1-16 (default 1; TUN only: IFF_MULTI_QUEUE, see docs/multiqueue.md)", 1, NetworkStack.MaxQueues, "a queue count");
    private readonly Option<bool> _tap = Cli.Flag("--tap",
        $"a TAP device instead of TUN: the stack is a host with its own MAC on the link (ARP, NDP); the kernel side gets the host addresses with prefixes /{Defaults.PrefixLength} and /{Defaults.PrefixLength6}");
    private readonly Option<System.Net.NetworkInformation.PhysicalAddress> _mac = Cli.Value("--mac", "ADDR",
        "the stack's MAC with --tap (default: random, locally administered)", ParseMac);
    private readonly Option<int> _vlan = Cli.Int("--vlan", "N",
        "with --tap: 802.1Q VLAN N (1-4094) on every frame, others dropped; the host addresses are then not put on the TAP (make a VLAN interface or bridge for the kernel side)",
        1, 4094, "a VLAN id");
    private readonly Option<double> _loss = Percent("--loss", "fault injection: drop P percent of packets (0-100, e.g. 5% or 0.5)");
    private readonly Option<double> _dup = Percent("--dup", "fault injection: deliver P percent of packets twice");
    private readonly Option<double> _reorder = Percent("--reorder", "fault injection: hold P percent back until the next packet has passed");
    private readonly Option<double> _corrupt = Percent("--corrupt", "fault injection: flip 1-3 bits in P percent (the checksums catch them)");
    private readonly Option<TimeSpan> _delay = Cli.Value("--delay", "N[ms|s|us]", "fault injection: delay every packet (plain numbers are milliseconds)",
        text => ParseDelay("--delay", text));
    private readonly Option<long> _rate = Cli.Value("--rate", "N[k|M]", "fault injection: limit the link to N bytes per second",
        text => ParseRate("--rate", text));
    private readonly Option<int> _seed = Cli.Int("--seed", "N", "fault injection: seed of the fault decisions (default: random)", 0, int.MaxValue, "a seed");

    /// <summary>Adds every interface and fault option to <paramref name="command"/>.</summary>
    public void AddTo(Command command)
    {
        foreach (var option in (Option[])[_tun, _ip, _hostIp, _ip6, _hostIp6, _mtu, _pcap, _noOffload, _ioUring, _writerThread, _noWriterThread,
            _inline, _queues, _tap, _mac, _vlan, _loss, _dup, _reorder, _corrupt, _delay, _rate, _seed])
            command.Add(option);
    }

    /// <summary>
    /// The stack's options from a parse without errors, checked as a whole (<see cref="Validate"/>;
    /// throws <see cref="UsageException"/>).
    /// </summary>
    public NetStackOptions Read(ParseResult r)
    {
        var o = new NetStackOptions();
        if (r.IsGiven(_tun))
            o = o with { TunName = r.GetValue(_tun)! };
        if (r.IsGiven(_ip))
            o = o with { Address = r.GetValue(_ip)!.Value };
        if (r.IsGiven(_hostIp))
            o = o with { HostAddress = r.GetValue(_hostIp)!.Value };
        if (r.IsGiven(_ip6))
            o = o with { Address6 = r.GetValue(_ip6)!.Value };
        if (r.IsGiven(_hostIp6))
            o = o with { HostAddress6 = r.GetValue(_hostIp6)!.Value };
        if (r.IsGiven(_mtu))
            o = o with { Mtu = r.GetValue(_mtu) };
        if (r.IsGiven(_pcap))
            o = o with { CapturePath = r.GetValue(_pcap) };
        if (r.IsGiven(_noOffload))
            o = o with { Offloads = false };
        if (r.IsGiven(_ioUring))
            o = o with { TunIoUring = true };
        // The later of --writer-thread and --no-writer-thread wins, as the hand parser had it.
        var writer = r.GetResult(_writerThread);
        var noWriter = r.GetResult(_noWriterThread);
        if (writer is not null || noWriter is not null)
            o = o with { TunWriterThread = noWriter is null || (writer is not null && LastIndex(r, "--writer-thread") > LastIndex(r, "--no-writer-thread")) };
        if (r.IsGiven(_inline))
            o = o with { UnsafeInlineCompletions = true };
        if (r.IsGiven(_queues))
            o = o with { Queues = r.GetValue(_queues) };
        if (r.IsGiven(_tap))
            o = o with { Mode = NetStackMode.Tap };
        if (r.IsGiven(_vlan))
            o = o with { VlanId = r.GetValue(_vlan) };
        if (r.IsGiven(_mac))
            o = o with { MacAddress = r.GetValue(_mac) };
        if (r.IsGiven(_loss))
            o = WithFaults(o, f => f with { LossPercent = r.GetValue(_loss) });
        if (r.IsGiven(_dup))
            o = WithFaults(o, f => f with { DuplicatePercent = r.GetValue(_dup) });
        if (r.IsGiven(_reorder))
            o = WithFaults(o, f => f with { ReorderPercent = r.GetValue(_reorder) });
        if (r.IsGiven(_corrupt))
            o = WithFaults(o, f => f with { CorruptPercent = r.GetValue(_corrupt) });
        if (r.IsGiven(_delay))
            o = WithFaults(o, f => f with { Delay = r.GetValue(_delay) });
        if (r.IsGiven(_rate))
            o = WithFaults(o, f => f with { RateLimitBytesPerSecond = r.GetValue(_rate) });
        if (r.IsGiven(_seed))
            o = WithFaults(o, f => f with { Seed = r.GetValue(_seed) });
        Validate(o);
        return o;
    }

    private static int LastIndex(ParseResult r, string option)
    {
        for (var i = r.Tokens.Count - 1; i >= 0; i--)
        {
            if (r.Tokens[i].Type == TokenType.Option && r.Tokens[i].Value == option)
                return i;
        }
        return -1;
    }

    /// <summary>An address option's value: <c>none</c> is a null address (a parser may not return null itself).</summary>
    private sealed record Address(IPAddress? Value);

    /// <summary>Checks the combination: the two ends of a family differ, and some family is on.</summary>
    public static void Validate(NetStackOptions options)
    {
        if (options.Address is null && options.Address6 is null)
            throw new UsageException("--ip none and --ip6 none leave the stack without an address");
        if (options.Address is not null && options.Address.Equals(options.HostAddress))
            throw new UsageException($"--ip and --host-ip are both {options.Address}");
        if (options.Address6 is not null && options.Address6.Equals(options.HostAddress6))
            throw new UsageException($"--ip6 and --host-ip6 are both {options.Address6}");
        if (options.VlanId is not null && options.Mode != NetStackMode.Tap)
            throw new UsageException("--vlan needs --tap (a TUN device carries no Ethernet frames)");
        if (options.Queues > 1 && options.Mode == NetStackMode.Tap)
            throw new UsageException("--queues above 1 needs a TUN device (not --tap)");
        if (options.Queues > 1 && (options.Faults is not null || options.CapturePath is not null))
            throw new UsageException("--queues above 1 cannot be combined with fault injection or --pcap");
    }

    private static NetStackOptions WithFaults(NetStackOptions options, Func<Engine.FaultSettings, Engine.FaultSettings> change) =>
        options with { Faults = change(options.Faults ?? new Engine.FaultSettings()) };

    private static Option<double> Percent(string name, string description) =>
        Cli.Value(name, "P%", description, text => ParsePercent(name, text));

    /// <summary>A percentage 0-100 with an optional '%': "5%", "0.5", "100%".</summary>
    private static double ParsePercent(string option, string text)
    {
        var number = text.EndsWith('%') ? text[..^1] : text;
        if (!double.TryParse(number, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var p) || !(p >= 0) || p > 100)
            throw Cli.Bad(option, $"'{text}' is not a percentage (0-100%)");
        return p;
    }

    /// <summary>A delay up to 10 s: "2ms", "500us", "1.5s", or a plain number of milliseconds.</summary>
    private static TimeSpan ParseDelay(string option, string text)
    {
        var (number, scale) = text.EndsWith("ms", StringComparison.Ordinal) ? (text[..^2], 1.0)
            : text.EndsWith("us", StringComparison.Ordinal) ? (text[..^2], 0.001)
            : text.EndsWith('s') ? (text[..^1], 1000.0)
            : (text, 1.0);
        if (!double.TryParse(number, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var n) || !(n >= 0) || n * scale > 10_000)
            throw Cli.Bad(option, $"'{text}' is not a delay (0-10s, e.g. 2ms)");
        return TimeSpan.FromMilliseconds(n * scale);
    }

    /// <summary>A rate in bytes per second, at least 1000: "125000", "500k", "10M" (k = 1000, M = 1000000).</summary>
    private static long ParseRate(string option, string text)
    {
        var (number, scale) = text.EndsWith('k') ? (text[..^1], 1e3) : text.EndsWith('M') ? (text[..^1], 1e6) : (text, 1.0);
        if (!double.TryParse(number, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var n) || !(n * scale >= 1000) || n * scale > 1e12)
            throw Cli.Bad(option, $"'{text}' is not a rate in bytes per second (1000-1e12, k and M suffixes)");
        return (long)(n * scale);
    }

    private static System.Net.NetworkInformation.PhysicalAddress ParseMac(string text)
    {
        if (!System.Net.NetworkInformation.PhysicalAddress.TryParse(text, out var physical) || physical.GetAddressBytes().Length != 6
            || (physical.GetAddressBytes()[0] & 1) != 0)
            throw Cli.Bad("--mac", $"'{text}' is not a unicast MAC address (aa:bb:cc:dd:ee:ff)");
        return physical;
    }

    private static string ParseName(string option, string name)
    {
        if (name.Length == 0 || System.Text.Encoding.UTF8.GetByteCount(name) > MaxInterfaceName
            || name.Any(c => c == '/' || c == ':' || char.IsWhiteSpace(c)) || name is "." or "..")
            throw Cli.Bad(option, $"'{name}' is not an interface name (1-{MaxInterfaceName} bytes, no '/', ':' or spaces)");
        return name;
    }

    /// <summary>One line describing the stack's addresses, for <c>ready</c> lines and reports.</summary>
    public static string Describe(NetworkStack stack)
    {
        var o = stack.Options;
        var parts = new List<string> { stack.InterfaceName };
        if (o.Address is not null)
            parts.Add($"ipv4 {o.Address} host {o.HostAddress}");
        if (o.Address6 is not null)
            parts.Add($"ipv6 {o.Address6} host {o.HostAddress6}");
        parts.Add($"mtu {o.Mtu}");
        return string.Join(' ', parts);
    }
}
