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
/// A small hand-rolled reader for <c>--name value</c> / <c>--name=value</c> options.
/// Each command walks its arguments with <see cref="Next"/>, takes values with
/// <see cref="Value"/> and turns them into typed values with the <c>Parse*</c> helpers, which all
/// throw <see cref="UsageException"/> with a one-line message naming the option.
/// </summary>
public sealed class ArgReader
{
    private readonly string _command;
    private readonly string[] _args;
    private int _index;
    private string? _inlineValue;

    /// <summary>Reads <paramref name="args"/> (the arguments after the command name).</summary>
    public ArgReader(string command, IEnumerable<string> args)
    {
        _command = command;
        _args = args.ToArray();
    }

    /// <summary>The command name used in messages, e.g. <c>netstack serve</c>.</summary>
    public string Command => _command;

    /// <summary>
    /// Moves to the next argument and returns it (for <c>--name=value</c>, just <c>--name</c>;
    /// the value is kept for <see cref="Value"/>), or null at the end.
    /// </summary>
    public string? Next()
    {
        if (_inlineValue is not null)
            throw Fail($"option {_args[_index - 1].Split('=')[0]} takes no value");
        if (_index >= _args.Length)
            return null;
        var arg = _args[_index++];
        var eq = arg.IndexOf('=');
        if (arg.StartsWith("--", StringComparison.Ordinal) && eq > 2)
        {
            _inlineValue = arg[(eq + 1)..];
            return arg[..eq];
        }
        return arg;
    }

    /// <summary>The value of option <paramref name="option"/>: the inline <c>=value</c> or the next argument.</summary>
    public string Value(string option)
    {
        if (_inlineValue is { } inline)
        {
            _inlineValue = null;
            return inline;
        }
        if (_index >= _args.Length)
            throw Fail($"option {option} needs a value");
        return _args[_index++];
    }

    /// <summary>A <see cref="UsageException"/> whose message starts with the command name.</summary>
    public UsageException Fail(string message) => new($"{_command}: {message} (see '{_command} --help')");

    /// <summary>The exception for an argument the command does not know.</summary>
    public UsageException Unknown(string arg) =>
        arg.StartsWith('-') ? Fail($"unknown option '{arg}'") : Fail($"unexpected argument '{arg}'");

    /// <summary>Parses an address of the given family; <c>none</c> gives null when <paramref name="allowNone"/>.</summary>
    public IPAddress? ParseAddress(string option, string text, AddressFamily family, bool allowNone)
    {
        if (allowNone && text == "none")
            return null;
        var kind = family == AddressFamily.InterNetwork ? "IPv4" : "IPv6";
        if (!IPAddress.TryParse(text, out var address) || address.AddressFamily != family
            // IPAddress.TryParse accepts "1" or "1.2" as IPv4 shorthand; a stack address wants all four parts.
            || (family == AddressFamily.InterNetwork && text.Count(c => c == '.') != 3))
            throw Fail($"{option}: '{text}' is not an {kind} address");
        return address;
    }

    /// <summary>Parses an IPv4 or IPv6 address (a ping target).</summary>
    public IPAddress ParseAnyAddress(string option, string text)
    {
        if (IPAddress.TryParse(text, out var address)
            && (address.AddressFamily == AddressFamily.InterNetworkV6 || text.Count(c => c == '.') == 3))
            return address;
        throw Fail($"{option}: '{text}' is not an IPv4 or IPv6 address");
    }

    /// <summary>Parses a decimal integer in [<paramref name="min"/>, <paramref name="max"/>].</summary>
    public int ParseInt(string option, string text, int min, int max, string what)
    {
        if (!int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var n) || n < min || n > max)
            throw Fail($"{option}: '{text}' is not {what} ({min}-{max})");
        return n;
    }

    /// <summary>Parses a number of seconds in (0, <paramref name="max"/>] into a <see cref="TimeSpan"/>.</summary>
    public TimeSpan ParseSeconds(string option, string text, double min, double max)
    {
        if (!double.TryParse(text, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var s)
            || !(s >= min) || s > max)
            throw Fail($"{option}: '{text}' is not a number of seconds ({min}-{max})");
        return TimeSpan.FromSeconds(s);
    }
}

/// <summary>
/// The interface options every command that brings a stack up accepts (the names are fixed by
/// issue 3): <c>--tun</c>, <c>--ip</c>, <c>--host-ip</c>, <c>--ip6</c>, <c>--host-ip6</c>, <c>--mtu</c>;
/// <c>--pcap</c> (issue 7); <c>--tap</c> and <c>--mac</c> (issue 8); <c>--vlan</c> (issue 5).
/// </summary>
public static class InterfaceOptions
{
    /// <summary>Linux interface names are at most IFNAMSIZ - 1 = 15 bytes.</summary>
    private const int MaxInterfaceName = 15;

    /// <summary>Help text for the interface options, with the defaults from <see cref="NetStackOptions"/>.</summary>
    public static string Help
    {
        get
        {
            var d = new NetStackOptions();
            return $"""
                interface options:
                  --tun NAME          TUN interface name, or a template with %d (default {d.TunName})
                  --ip ADDR           the stack's IPv4 address, or 'none' (default {d.Address})
                  --host-ip ADDR      the kernel side's IPv4 address (default {d.HostAddress})
                  --ip6 ADDR          the stack's IPv6 address, or 'none' (default {d.Address6})
                  --host-ip6 ADDR     the kernel side's IPv6 address (default {d.HostAddress6})
                  --mtu N             link MTU, 1280-65535 (default {d.Mtu})
                  --pcap FILE         record every packet the stack reads and writes in FILE (pcap, raw IP)
                  --no-offload        no TUN offloads (checksum offload, TSO): one packet per system call
                  --io-uring          batch TUN reads and writes through io_uring (falls back when unavailable)
                  --writer-thread     write to the TUN device from a thread of its own while the loop is busy
                                      (needs --no-offload; the default whenever the device has no offloads)
                  --no-writer-thread  always write from the loop thread
                  --tap               a TAP device instead of TUN: the stack is a host with its own MAC on
                                      the link (ARP, NDP); the kernel side gets the host addresses with
                                      prefixes /{d.PrefixLength} and /{d.PrefixLength6}
                  --mac ADDR          the stack's MAC with --tap (default: random, locally administered)
                  --vlan N            with --tap: 802.1Q VLAN N (1-4094) on every frame, others dropped;
                                      the host addresses are then not put on the TAP (make a VLAN
                                      interface or bridge for the kernel side)

                fault injection (both directions, on the stack's side of the TUN device):
                  --loss P%           drop P percent of packets (0-100, e.g. 5% or 0.5)
                  --dup P%            deliver P percent of packets twice
                  --reorder P%        hold P percent back until the next packet has passed
                  --corrupt P%        flip 1-3 bits in P percent (the checksums catch them)
                  --delay N[ms|s|us]  delay every packet (plain numbers are milliseconds)
                  --rate N[k|M]       limit the link to N bytes per second
                  --seed N            seed of the fault decisions (default: random)
                """;
        }
    }

    /// <summary>
    /// When <paramref name="option"/> is an interface option, reads its value into
    /// <paramref name="options"/> and returns true; otherwise returns false.
    /// </summary>
    public static bool TryRead(ArgReader reader, string option, ref NetStackOptions options)
    {
        switch (option)
        {
            case "--tun":
                options = options with { TunName = ParseName(reader, option, reader.Value(option)) };
                return true;
            case "--ip":
                options = options with { Address = reader.ParseAddress(option, reader.Value(option), AddressFamily.InterNetwork, allowNone: true) };
                return true;
            case "--host-ip":
                options = options with { HostAddress = reader.ParseAddress(option, reader.Value(option), AddressFamily.InterNetwork, allowNone: false) };
                return true;
            case "--ip6":
                options = options with { Address6 = reader.ParseAddress(option, reader.Value(option), AddressFamily.InterNetworkV6, allowNone: true) };
                return true;
            case "--host-ip6":
                options = options with { HostAddress6 = reader.ParseAddress(option, reader.Value(option), AddressFamily.InterNetworkV6, allowNone: false) };
                return true;
            case "--mtu":
                options = options with { Mtu = reader.ParseInt(option, reader.Value(option), 1280, 65535, "an MTU") };
                return true;
            case "--no-offload":
                options = options with { Offloads = false };
                return true;
            case "--io-uring":
                options = options with { TunIoUring = true };
                return true;
            case "--writer-thread":
                options = options with { TunWriterThread = true };
                return true;
            case "--no-writer-thread":
                options = options with { TunWriterThread = false };
                return true;
            case "--pcap":
                var path = reader.Value(option);
                if (path.Length == 0)
                    throw reader.Fail($"{option}: the file name is empty");
                options = options with { CapturePath = path };
                return true;
            case "--tap":
                options = options with { Mode = NetStackMode.Tap };
                return true;
            case "--vlan":
                options = options with { VlanId = reader.ParseInt(option, reader.Value(option), 1, 4094, "a VLAN id") };
                return true;
            case "--mac":
                var mac = reader.Value(option);
                if (!System.Net.NetworkInformation.PhysicalAddress.TryParse(mac, out var physical) || physical.GetAddressBytes().Length != 6
                    || (physical.GetAddressBytes()[0] & 1) != 0)
                    throw reader.Fail($"{option}: '{mac}' is not a unicast MAC address (aa:bb:cc:dd:ee:ff)");
                options = options with { MacAddress = physical };
                return true;
            case "--loss":
                options = WithFaults(options, f => f with { LossPercent = ParsePercent(reader, option, reader.Value(option)) });
                return true;
            case "--dup":
                options = WithFaults(options, f => f with { DuplicatePercent = ParsePercent(reader, option, reader.Value(option)) });
                return true;
            case "--reorder":
                options = WithFaults(options, f => f with { ReorderPercent = ParsePercent(reader, option, reader.Value(option)) });
                return true;
            case "--corrupt":
                options = WithFaults(options, f => f with { CorruptPercent = ParsePercent(reader, option, reader.Value(option)) });
                return true;
            case "--delay":
                options = WithFaults(options, f => f with { Delay = ParseDelay(reader, option, reader.Value(option)) });
                return true;
            case "--rate":
                options = WithFaults(options, f => f with { RateLimitBytesPerSecond = ParseRate(reader, option, reader.Value(option)) });
                return true;
            case "--seed":
                options = WithFaults(options, f => f with { Seed = reader.ParseInt(option, reader.Value(option), 0, int.MaxValue, "a seed") });
                return true;
            default:
                return false;
        }
    }

    /// <summary>Checks the combination once all options are read: the two ends of a family differ, and some family is on.</summary>
    public static void Validate(ArgReader reader, NetStackOptions options)
    {
        if (options.Address is null && options.Address6 is null)
            throw reader.Fail("--ip none and --ip6 none leave the stack without an address");
        if (options.Address is not null && options.Address.Equals(options.HostAddress))
            throw reader.Fail($"--ip and --host-ip are both {options.Address}");
        if (options.Address6 is not null && options.Address6.Equals(options.HostAddress6))
            throw reader.Fail($"--ip6 and --host-ip6 are both {options.Address6}");
        if (options.VlanId is not null && options.Mode != NetStackMode.Tap)
            throw reader.Fail("--vlan needs --tap (a TUN device carries no Ethernet frames)");
    }

    private static NetStackOptions WithFaults(NetStackOptions options, Func<Engine.FaultSettings, Engine.FaultSettings> change) =>
        options with { Faults = change(options.Faults ?? new Engine.FaultSettings()) };

    /// <summary>A percentage 0-100 with an optional '%': "5%", "0.5", "100%".</summary>
    private static double ParsePercent(ArgReader reader, string option, string text)
    {
        var number = text.EndsWith('%') ? text[..^1] : text;
        if (!double.TryParse(number, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var p) || !(p >= 0) || p > 100)
            throw reader.Fail($"{option}: '{text}' is not a percentage (0-100%)");
        return p;
    }

    /// <summary>A delay up to 10 s: "2ms", "500us", "1.5s", or a plain number of milliseconds.</summary>
    private static TimeSpan ParseDelay(ArgReader reader, string option, string text)
    {
        var (number, scale) = text.EndsWith("ms", StringComparison.Ordinal) ? (text[..^2], 1.0)
            : text.EndsWith("us", StringComparison.Ordinal) ? (text[..^2], 0.001)
            : text.EndsWith('s') ? (text[..^1], 1000.0)
            : (text, 1.0);
        if (!double.TryParse(number, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var n) || !(n >= 0) || n * scale > 10_000)
            throw reader.Fail($"{option}: '{text}' is not a delay (0-10s, e.g. 2ms)");
        return TimeSpan.FromMilliseconds(n * scale);
    }

    /// <summary>A rate in bytes per second, at least 1000: "125000", "500k", "10M" (k = 1000, M = 1000000).</summary>
    private static long ParseRate(ArgReader reader, string option, string text)
    {
        var (number, scale) = text.EndsWith('k') ? (text[..^1], 1e3) : text.EndsWith('M') ? (text[..^1], 1e6) : (text, 1.0);
        if (!double.TryParse(number, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var n) || !(n * scale >= 1000) || n * scale > 1e12)
            throw reader.Fail($"{option}: '{text}' is not a rate in bytes per second (1000-1e12, k and M suffixes)");
        return (long)(n * scale);
    }

    private static string ParseName(ArgReader reader, string option, string name)
    {
        if (name.Length == 0 || System.Text.Encoding.UTF8.GetByteCount(name) > MaxInterfaceName
            || name.Any(c => c == '/' || c == ':' || char.IsWhiteSpace(c)) || name is "." or "..")
            throw reader.Fail($"{option}: '{name}' is not an interface name (1-{MaxInterfaceName} bytes, no '/', ':' or spaces)");
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
