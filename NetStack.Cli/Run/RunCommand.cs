using System.Buffers.Binary;
using System.CommandLine;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using NetStack.Core.Forward;
using NetStack.Core.Stack;
using NetStack.Device;

namespace NetStack.Cli.Run;

/// <summary>An interface address with its prefix length, e.g. 10.0.2.100/24.</summary>
/// <param name="Address">The address.</param>
/// <param name="Length">The prefix length.</param>
public sealed record AddressPrefix(IPAddress Address, int Length)
{
    /// <summary>ADDRESS/LENGTH.</summary>
    public override string ToString() => $"{Address}/{Length}";
}

/// <summary>What <c>netstack run</c> was asked for.</summary>
/// <param name="Interface">The namespace's interface name.</param>
/// <param name="Address">The namespace's IPv4 address and prefix length (null: no IPv4).</param>
/// <param name="Gateway">The stack's IPv4 address, the namespace's default gateway.</param>
/// <param name="Address6">The namespace's IPv6 address and prefix length (null: no IPv6).</param>
/// <param name="Gateway6">The stack's IPv6 address, the IPv6 default gateway.</param>
/// <param name="Dns">The DNS server addresses written into the namespace's resolv.conf.</param>
/// <param name="Mtu">The interface MTU.</param>
/// <param name="Offloads">TUN offloads (virtio-net header, checksum, TSO, USO).</param>
/// <param name="ResolvConf">Bind-mount a resolv.conf naming <paramref name="Dns"/> over /etc/resolv.conf.</param>
/// <param name="Publish">The inbound port forwards.</param>
/// <param name="Egress">The egress policy for outbound forwarding.</param>
/// <param name="Statistics">Print the counters on standard error at exit.</param>
/// <param name="Command">The command and its arguments.</param>
/// <param name="DnsUpstream">The resolver queries to <paramref name="Dns"/> go to (null: refused).</param>
public sealed record RunOptions(
    string Interface,
    AddressPrefix? Address, IPAddress? Gateway,
    AddressPrefix? Address6, IPAddress? Gateway6,
    IReadOnlyList<IPAddress> Dns, int Mtu, bool Offloads, bool ResolvConf,
    IReadOnlyList<PortForwardSpec> Publish, EgressPolicy Egress, bool Statistics,
    IReadOnlyList<string> Command, IPEndPoint? DnsUpstream = null)
{
    /// <summary>The options of the stack that serves the namespace (its addresses are the gateways).</summary>
    public NetStackOptions StackOptions() => new()
    {
        TunName = Interface,
        Address = Gateway,
        HostAddress = Address?.Address,
        PrefixLength = Address?.Length ?? 24,
        Address6 = Gateway6,
        HostAddress6 = Address6?.Address,
        PrefixLength6 = Address6?.Length ?? 64,
        Mtu = Mtu,
        Offloads = Offloads,
        // Every destination is the stack's to take: the forwarders re-open each flow on the host.
        AnyDestination = true,
    };
}

/// <summary>
/// <c>netstack run [options] -- COMMAND [ARGS...]</c>: runs COMMAND in new network and mount
/// namespaces (and a user namespace when not root) whose only interface besides lo is a TUN
/// device served by a NetStack in this process, which stays in the host's namespaces.
/// </summary>
public static class RunCommand
{
    /// <summary>The command name used in messages.</summary>
    public const string Name = "netstack run";

    /// <summary>The exit status when netstack run itself fails (as env, nice and timeout use 125).</summary>
    public const int FailureExit = 125;

    // Linux signal numbers (PosixSignal's values are .NET's own).
    private const int SigHup = 1;
    private const int SigTerm = 15;

    /// <summary>How long the namespace's setup may take before the parent gives up.</summary>
    private const int SetupTimeoutMilliseconds = 30_000;

    /// <summary>What the command does, in one line.</summary>
    public const string Summary = "run a command in a new network namespace whose network is this stack (like pasta or slirp4netns)";

    /// <summary>What the command does, for its own help.</summary>
    public static readonly string Details = """
        Runs COMMAND in new network and mount namespaces (and a user namespace mapping you to root when you are not root) whose
        only interface besides lo is a TUN device served by NetStack in this process, which stays in the host's namespaces.
        Inside: 10.0.2.100/24 and fd00::100/64, default routes via the stack at 10.0.2.2 and fd00::2, and a resolv.conf naming
        10.0.2.3 and fd00::3 (slirp4netns's addresses). Every TCP connection, UDP flow and ping from inside, to any address, is
        re-opened as a socket of this process on the host (the gateway addresses stand for the host's 127.0.0.1 and ::1, the DNS
        addresses for --dns-upstream), after the --allow/--deny policy. -p forwards host ports into the namespace. Exit status: COMMAND's (128+N when a signal N
        killed it), 125 when netstack run itself failed, 127 when COMMAND was not found, 126 when it could not be executed, 2 for
        bad arguments. SIGTERM and SIGHUP are passed on to COMMAND; SIGINT and SIGQUIT are not (from a terminal COMMAND gets them itself).
        """.ReplaceLineEndings(" ");

    /// <summary>The <c>run</c> command.</summary>
    public static Command Create()
    {
        var iface = Cli.Value("--interface", "NAME", "the namespace's interface name (default tun0)", text => ParseInterface(text));
        var address = Cli.Value("--address", "ADDR/LEN", "the namespace's IPv4 address, or none (default 10.0.2.100/24)", text => new OrNone<AddressPrefix>(ParsePrefix("--address", text, AddressFamily.InterNetwork)));
        var address6 = Cli.Value("--address6", "ADDR/LEN", "the namespace's IPv6 address, or none (default fd00::100/64)", text => new OrNone<AddressPrefix>(ParsePrefix("--address6", text, AddressFamily.InterNetworkV6)));
        var gateway = Cli.Value("--gateway", "ADDR", "the stack's IPv4 address, the default gateway (default 10.0.2.2)", text => Cli.ParseAddress("--gateway", text, AddressFamily.InterNetwork, false)!);
        var gateway6 = Cli.Value("--gateway6", "ADDR", "the stack's IPv6 address, the default gateway (default fd00::2)", text => Cli.ParseAddress("--gateway6", text, AddressFamily.InterNetworkV6, false)!);
        var dns = Cli.Value("--dns", "ADDR", "the IPv4 DNS address written into resolv.conf, or none (default 10.0.2.3)", text => new OrNone<IPAddress>(Cli.ParseAddress("--dns", text, AddressFamily.InterNetwork, true)));
        var dns6 = Cli.Value("--dns6", "ADDR", "the IPv6 DNS address written into resolv.conf, or none (default fd00::3)", text => new OrNone<IPAddress>(Cli.ParseAddress("--dns6", text, AddressFamily.InterNetworkV6, true)));
        var dnsUpstream = Cli.Value("--dns-upstream", "ADDR[:PORT]", "the resolver DNS queries to the DNS addresses go to (default: the first nameserver of the host's /etc/resolv.conf)",
            text => IPEndPoint.TryParse(text, out var e) ? new IPEndPoint(e.Address, e.Port == 0 ? 53 : e.Port) : throw Cli.Bad("--dns-upstream", $"'{text}' is not ADDRESS[:PORT]"));
        var mtu = Cli.Int("--mtu", "BYTES", "the interface MTU (default 65520, as slirp4netns and pasta)", 1280, 65535, "an MTU");
        var noOffloads = Cli.Flag("--no-offloads", "open the TUN device without a virtio-net header: no checksum offload, no TSO/USO super-segments");
        var noResolv = Cli.Flag("--no-resolv-conf", "leave /etc/resolv.conf as the host has it");
        var publish = Cli.Repeatable("-p", "[tcp|udp:][HOST_ADDR:]HOST_PORT:NS_PORT",
            "forward a host port into the namespace (default tcp; HOST_ADDR default: every address, IPv4 and IPv6; an IPv6 one in brackets); repeatable",
            PortForwardSpec.Parse);
        publish.Aliases.Add("--publish");
        var allow = Cli.Repeatable("--allow", "PREFIX[:PORTS]", "egress rule: allow destinations in PREFIX (*, 10.0.0.0/8, [fd00::/8]) on PORTS (53 or 1000-2000); first match wins; repeatable",
            text => Rule(EgressAction.Allow, text));
        var deny = Cli.Repeatable("--deny", "PREFIX[:PORTS]", "egress rule: deny destinations in PREFIX on PORTS; repeatable", text => Rule(EgressAction.Deny, text));
        var egressDefault = Cli.Value("--default", "allow|deny", "the egress action when no rule matches (default allow)", text =>
            EgressPolicyModule.parseAction(text) is { IsOk: true } r ? r.ResultValue : throw Cli.Bad("--default", $"'{text}' is not allow or deny"));
        var stats = Cli.Flag("--stats", "when COMMAND has exited, print the counters (the stack's, publish.* of -p, process.fd.* of this process's open descriptors) "
            + "on standard error between 'statistics' and 'end statistics' lines, non-zero ones only");
        var command = new Argument<string[]>("COMMAND") { Description = "the command to run and its arguments (after --)", Arity = ArgumentArity.OneOrMore };
        var run = new Command("run", Summary)
        {
            iface, address, address6, gateway, gateway6, dns, dns6, dnsUpstream, mtu, noOffloads, noResolv, publish, allow, deny, egressDefault, stats, command,
        };
        run.SetAction(r =>
        {
            var v4 = r.ValueOr(address, new(new AddressPrefix(IPAddress.Parse("10.0.2.100"), 24))).Value;
            var v6 = r.ValueOr(address6, new(new AddressPrefix(IPAddress.Parse("fd00::100"), 64))).Value;
            if (v4 is null && v6 is null)
                throw new UsageException("--address and --address6 are both none: the namespace needs at least one");
            var gw = v4 is null ? null : r.ValueOr(gateway, IPAddress.Parse("10.0.2.2"));
            var gw6 = v6 is null ? null : r.ValueOr(gateway6, IPAddress.Parse("fd00::2"));
            CheckOnLink("--gateway", v4, gw);
            CheckOnLink("--gateway6", v6, gw6);
            var servers = new List<IPAddress>();
            if (v4 is not null && r.ValueOr(dns, new(IPAddress.Parse("10.0.2.3"))).Value is { } d4)
                servers.Add(d4);
            if (v6 is not null && r.ValueOr(dns6, new(IPAddress.Parse("fd00::3"))).Value is { } d6)
                servers.Add(d6);
            // The rules in command-line order: the order of the option tokens.
            var rules = new List<EgressRule>();
            var next = new Dictionary<string, int> { ["--allow"] = 0, ["--deny"] = 0 };
            foreach (var token in r.Tokens)
            {
                if (token.Type != System.CommandLine.Parsing.TokenType.Option || !next.ContainsKey(token.Value))
                    continue;
                rules.Add(r.GetValue(token.Value == "--allow" ? allow : deny)![next[token.Value]++]);
            }
            var policy = new EgressPolicy(Microsoft.FSharp.Collections.ListModule.OfSeq(rules), r.ValueOr(egressDefault, EgressAction.Allow));
            var specs = r.ValueOr(publish, []);
            foreach (var group in specs.GroupBy(s => (s.Udp, s.HostPort)).Where(g => g.Count() > 1))
                throw new UsageException($"-p: {group.First().Protocol} host port {group.Key.HostPort} given twice");
            var options = new RunOptions(r.ValueOr(iface, "tun0"), v4, gw, v6, gw6, servers, r.ValueOr(mtu, 65520),
                !r.GetValue(noOffloads), !r.GetValue(noResolv), specs, policy, r.GetValue(stats), r.GetValue(command)!,
                r.GetValue(dnsUpstream) ?? HostResolver());
            CheckMtu(options);
            return Execute(options);
        });
        return run;
    }

    // An option value where 'none' means null (a System.CommandLine parser may not return null).
    private sealed record OrNone<T>(T? Value)
        where T : class;

    private static EgressRule Rule(EgressAction action, string text)
    {
        var parsed = EgressPolicyModule.parseTarget(action, text);
        return parsed.IsOk ? parsed.ResultValue : throw Cli.Bad(action.IsAllow ? "--allow" : "--deny", parsed.ErrorValue);
    }

    private static string ParseInterface(string text)
    {
        if (text.Length is 0 or > TunDevice.MaxNameLength || text.Any(c => c is '/' or ':' or '%' || char.IsWhiteSpace(c)) || text is "." or "..")
            throw Cli.Bad("--interface", $"'{text}' is not an interface name (1..{TunDevice.MaxNameLength} bytes, no '/', ':', '%' or whitespace)");
        return text;
    }

    private static AddressPrefix? ParsePrefix(string option, string text, AddressFamily family)
    {
        if (text == "none")
            return null;
        var slash = text.IndexOf('/');
        if (slash < 0)
            throw Cli.Bad(option, $"'{text}' has no prefix length: write ADDRESS/LENGTH, e.g. {(family == AddressFamily.InterNetwork ? "10.0.2.100/24" : "fd00::100/64")}");
        var address = Cli.ParseAddress(option, text[..slash], family, false)!;
        var length = Cli.ParseInt(option, text[(slash + 1)..], 1, family == AddressFamily.InterNetwork ? 30 : 127, "a prefix length");
        return new AddressPrefix(address, length);
    }

    private static void CheckOnLink(string option, AddressPrefix? prefix, IPAddress? gateway)
    {
        if (prefix is not { } p || gateway is null)
            return;
        if (gateway.Equals(p.Address))
            throw Cli.Bad(option, $"{gateway} is the namespace's own address");
        var a = p.Address.GetAddressBytes();
        var g = gateway.GetAddressBytes();
        for (var bit = 0; bit < p.Length; bit++)
        {
            var mask = 0x80 >> (bit % 8);
            if ((a[bit / 8] & mask) != (g[bit / 8] & mask))
                throw Cli.Bad(option, $"{gateway} is not in the namespace's prefix {p.Address}/{p.Length}");
        }
    }

    private static void CheckMtu(RunOptions options)
    {
        if (options.Address6 is not null && options.Mtu < 1280)
            throw Cli.Bad("--mtu", $"{options.Mtu} is below 1280, the least IPv6 allows (or --address6 none)");
    }

    /// <summary>
    /// The first nameserver of the host's /etc/resolv.conf (read before the namespace's own is
    /// mounted), port 53; null when there is none.
    /// </summary>
    public static IPEndPoint? HostResolver()
    {
        try
        {
            foreach (var line in File.ReadLines("/etc/resolv.conf"))
            {
                var fields = line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries);
                if (fields is ["nameserver", var text, ..] && IPAddress.TryParse(text.Split('%')[0], out var address))
                    return new IPEndPoint(address, 53);
            }
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
        return null;
    }

    /// <summary>
    /// Outbound forwarding: called with the running stack before COMMAND starts. Every flow from
    /// the namespace is re-opened on the host by a <see cref="HostForwarder"/> and decided with
    /// <see cref="RunOptions.Egress"/> on its host-side destination. Disposed after COMMAND has
    /// exited, before the stack.
    /// </summary>
    public static HostForwarder ConfigureForwarding(NetworkStack stack, RunOptions options)
    {
        var policy = options.Egress;
        return HostForwarder.Start(stack, new HostForwarderOptions
        {
            Gateway = options.Gateway,
            Gateway6 = options.Gateway6,
            Dns = options.Dns,
            DnsUpstream = options.DnsUpstream,
            Sources = new[] { options.Address?.Address, options.Address6?.Address }.OfType<IPAddress>().ToArray(),
            Allows = (address, port) => EgressPolicyModule.decide(policy, IpAddr.OfIPAddress(address), port),
            AllowsEcho = address => EgressPolicyModule.decidePortless(policy, IpAddr.OfIPAddress(address)),
        });
    }

    /// <summary>The resolv.conf the namespace sees.</summary>
    public static string ResolvConf(RunOptions options) =>
        "# written by netstack run\n" + string.Concat(options.Dns.Select(d => $"nameserver {d}\n"));

    /// <summary>Runs COMMAND as <paramref name="options"/> say; returns the exit status.</summary>
    public static int Execute(RunOptions options)
    {
        // Bind the host ports first: a port in use is an error before anything runs.
        PortForwards forwards;
        try
        {
            forwards = PortForwards.Bind(options.Publish);
        }
        catch (SocketException e)
        {
            Console.Error.WriteLine($"{Name}: cannot open a host socket for -p: {e.Message}");
            return FailureExit;
        }
        try
        {
            return Supervise(options, forwards);
        }
        finally
        {
            forwards.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    // This process's open descriptors once everything is closed, for --stats: every one, and
    // those that would be leaks of this command: the TUN device, and sockets (the socket pair,
    // host sockets of -p) other than the runtime's own diagnostics socket (dotnet-diagnostic-*).
    private static IEnumerable<KeyValuePair<string, long>> OpenDescriptors()
    {
        var targets = new DirectoryInfo("/proc/self/fd").GetFileSystemInfos()
            .Select(f => f.LinkTarget ?? "").ToList();
        var runtime = new HashSet<string>();
        try
        {
            // "Num RefCount Protocol Flags Type St Inode Path" lines.
            foreach (var line in File.ReadLines("/proc/self/net/unix").Skip(1))
            {
                var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (fields.Length > 7 && fields[7].Contains("dotnet-diagnostic-", StringComparison.Ordinal))
                    runtime.Add($"socket:[{fields[6]}]");
            }
        }
        catch (IOException)
        {
        }
        yield return new("process.fd.open", targets.Count);
        yield return new("process.fd.tun", targets.Count(t => t == "/dev/net/tun"));
        yield return new("process.fd.socket", targets.Count(t => t.StartsWith("socket:", StringComparison.Ordinal) && !runtime.Contains(t)));
    }

    private static int Supervise(RunOptions options, PortForwards forwards)
    {
        RunInterop.MakePair(out var ours, out var theirs);
        Process child;
        try
        {
            var request = new NamespaceHelper.Request(theirs, options.Interface, options.Mtu, options.Offloads,
                options.Address, options.Gateway, options.Address6, options.Gateway6,
                options.ResolvConf ? ResolvConf(options) : null, options.Command);
            var psi = new ProcessStartInfo("unshare") { UseShellExecute = false };
            foreach (var a in Isolation.IsRoot ? ["--net", "--mount"] : new[] { "--user", "--map-root-user", "--net", "--mount" })
                psi.ArgumentList.Add(a);
            psi.ArgumentList.Add("--");
            foreach (var a in Isolation.SelfCommand())
                psi.ArgumentList.Add(a);
            psi.ArgumentList.Add(NamespaceHelper.Verb);
            foreach (var a in request.ToArguments())
                psi.ArgumentList.Add(a);
            try
            {
                child = Process.Start(psi)!;
            }
            catch (System.ComponentModel.Win32Exception e)
            {
                Console.Error.WriteLine($"{Name}: cannot run 'unshare' ({e.Message}); install util-linux");
                return FailureExit;
            }
        }
        finally
        {
            // Only the child keeps its end: its end of file then tells us it is gone.
            RunInterop.Close(theirs);
        }

        using (child)
        {
            var exited = 0;
            // SIGTERM and SIGHUP are for COMMAND too; SIGINT and SIGQUIT from a terminal reach it
            // directly (same process group), so we only wait for it to finish.
            void Forward(PosixSignalContext context)
            {
                context.Cancel = true;
                if (Volatile.Read(ref exited) == 0)
                    RunInterop.SendSignal(child.Id, context.Signal == PosixSignal.SIGHUP ? SigHup : SigTerm);
            }
            using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Forward);
            using var sighup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, Forward);
            using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => c.Cancel = true);
            using var sigquit = PosixSignalRegistration.Create(PosixSignal.SIGQUIT, c => c.Cancel = true);
            try
            {
                return Serve(options, forwards, child, ours);
            }
            finally
            {
                Volatile.Write(ref exited, 1);
            }
        }
    }

    private static int Serve(RunOptions options, PortForwards forwards, Process child, int socket)
    {
        TunDevice? device = null;
        try
        {
            Span<byte> hello = stackalloc byte[NamespaceHelper.HelloLength];
            int length, fd;
            try
            {
                length = RunInterop.ReceiveWithDescriptor(socket, hello, SetupTimeoutMilliseconds, out fd);
            }
            catch (TimeoutException)
            {
                Console.Error.WriteLine($"{Name}: the namespace was not set up within {SetupTimeoutMilliseconds / 1000} s");
                child.Kill();
                child.WaitForExit();
                return FailureExit;
            }
            if (length != NamespaceHelper.HelloLength || fd < 0 || !hello[..4].SequenceEqual("TUN1"u8))
            {
                // The helper failed and said why on standard error; its status is ours.
                if (fd >= 0)
                    RunInterop.Close(fd);
                child.WaitForExit();
                return child.ExitCode == 0 ? FailureExit : child.ExitCode;
            }
            device = TunDevice.FromDescriptor(fd, options.Mtu, BinaryPrimitives.ReadInt32LittleEndian(hello[4..]));
        }
        catch (Exception e) when (e is IOException or TunDeviceException)
        {
            Console.Error.WriteLine($"{Name}: cannot take over the namespace's TUN device: {e.Message}");
            device?.Dispose();
            child.Kill();
            child.WaitForExit();
            return FailureExit;
        }

        NetworkStack stack;
        try
        {
            stack = NetworkStack.Start(options.StackOptions(), device);
        }
        catch (Exception e) when (e is ArgumentException or TunDeviceException or IOException or ObjectDisposedException)
        {
            Console.Error.WriteLine($"{Name}: cannot bring the stack up: {e.Message}");
            child.Kill();
            child.WaitForExit();
            RunInterop.Close(socket);
            return FailureExit;
        }

        var scope = StackStarter.Owning(Name, stack);
        HostForwarder? forwarding = null;
        try
        {
            forwarding = ConfigureForwarding(stack, options);
            forwards.Start(stack, options.Address?.Address, options.Address6?.Address);
            // Go: the stack runs; the helper execs COMMAND.
            RunInterop.SendWithDescriptor(socket, [1], -1);
            RunInterop.Close(socket);
            socket = -1;
            child.WaitForExit();
            return child.ExitCode;
        }
        finally
        {
            if (socket >= 0)
            {
                RunInterop.Close(socket);
                child.WaitForExit();
            }
            forwarding?.DisposeAsync().AsTask().GetAwaiter().GetResult();
            forwards.DisposeAsync().AsTask().GetAwaiter().GetResult();
            var statistics = stack.Statistics;
            scope.Dispose();
            if (options.Statistics)
            {
                var all = new Dictionary<string, long>(statistics.Snapshot());
                foreach (var (name, value) in forwards.Counters.Snapshot())
                    all[name] = value;
                if (forwarding is not null)
                {
                    foreach (var (name, value) in forwarding.Counters)
                        all[name] = value;
                }
                foreach (var (name, value) in OpenDescriptors())
                    all[name] = value;
                // Everything this process allocated, all threads (the loop's share is
                // engine.loop.allocated-bytes): compare two transfer sizes to see the per-byte cost.
                all["process.allocated-bytes"] = GC.GetTotalAllocatedBytes(precise: true);
                Console.Error.WriteLine("statistics");
                Console.Error.WriteLine(StackStarter.FormatStatistics(all));
                Console.Error.WriteLine("end statistics");
            }
        }
    }
}
