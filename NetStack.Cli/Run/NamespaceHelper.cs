using System.Buffers.Binary;
using System.Globalization;
using System.Net;
using NetStack.Device;

namespace NetStack.Cli.Run;

/// <summary>
/// The part of <c>netstack run</c> that runs inside the new namespaces (started by the parent as
/// <c>unshare --net --mount [--user --map-root-user] -- netstack __run-namespace ...</c>): it makes
/// the TUN device there (only a process with CAP_NET_ADMIN in the user namespace owning the
/// network namespace may), configures the namespace's side, hands the descriptor to the parent,
/// waits for the parent's stack to run, and replaces itself with the command (execvp), whose exit
/// status is then the child's. Any failure is one line on standard error and exit status
/// <see cref="RunCommand.FailureExit"/>; a command that cannot be run exits 127 (not found) or
/// 126 (not executable), as shells do.
/// </summary>
internal static class NamespaceHelper
{
    /// <summary>The hidden verb (Program.Main sends it here before System.CommandLine).</summary>
    public const string Verb = "__run-namespace";

    /// <summary>What the parent tells the helper, as KEY=VALUE arguments before "--".</summary>
    /// <param name="Socket">The inherited socket to the parent.</param>
    /// <param name="Interface">The TUN interface's name.</param>
    /// <param name="Mtu">Its MTU.</param>
    /// <param name="VirtioNetHeader">Open it with IFF_VNET_HDR (the parent asks for offloads).</param>
    /// <param name="Address">The namespace's IPv4 address and prefix length, or null.</param>
    /// <param name="Gateway">The IPv4 default gateway (the stack), or null.</param>
    /// <param name="Address6">The namespace's IPv6 address and prefix length, or null.</param>
    /// <param name="Gateway6">The IPv6 default gateway, or null.</param>
    /// <param name="ResolvConf">The resolv.conf to bind-mount over /etc/resolv.conf, or null.</param>
    /// <param name="Command">The command and its arguments.</param>
    public sealed record Request(
        int Socket, string Interface, int Mtu, bool VirtioNetHeader,
        AddressPrefix? Address, IPAddress? Gateway,
        AddressPrefix? Address6, IPAddress? Gateway6,
        string? ResolvConf, IReadOnlyList<string> Command)
    {
        /// <summary>The helper's arguments (after the verb) that carry this request.</summary>
        public IEnumerable<string> ToArguments()
        {
            yield return $"socket={Socket}";
            yield return $"interface={Interface}";
            yield return $"mtu={Mtu}";
            yield return $"vnet={(VirtioNetHeader ? 1 : 0)}";
            if (Address is { } a)
                yield return $"address={a.Address}/{a.Length}";
            if (Gateway is not null)
                yield return $"gateway={Gateway}";
            if (Address6 is { } b)
                yield return $"address6={b.Address}/{b.Length}";
            if (Gateway6 is not null)
                yield return $"gateway6={Gateway6}";
            if (ResolvConf is not null)
                yield return $"resolv={Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes(ResolvConf))}";
            yield return "--";
            foreach (var c in Command)
                yield return c;
        }

        /// <summary>Reads the arguments <see cref="ToArguments"/> wrote.</summary>
        public static Request Parse(string[] args)
        {
            var end = Array.IndexOf(args, "--");
            if (end < 0 || end == args.Length - 1)
                throw new FormatException("no command after '--'");
            var values = args[..end].Select(a => a.Split('=', 2)).ToDictionary(kv => kv[0], kv => kv[1]);
            static AddressPrefix? Prefix(string? text) =>
                text is null ? null : new AddressPrefix(IPAddress.Parse(text[..text.IndexOf('/')]), int.Parse(text[(text.IndexOf('/') + 1)..], CultureInfo.InvariantCulture));
            return new Request(
                int.Parse(values["socket"], CultureInfo.InvariantCulture), values["interface"],
                int.Parse(values["mtu"], CultureInfo.InvariantCulture), values["vnet"] == "1",
                Prefix(values.GetValueOrDefault("address")), values.TryGetValue("gateway", out var g) ? IPAddress.Parse(g) : null,
                Prefix(values.GetValueOrDefault("address6")), values.TryGetValue("gateway6", out var g6) ? IPAddress.Parse(g6) : null,
                values.TryGetValue("resolv", out var r) ? System.Text.Encoding.UTF8.GetString(Convert.FromBase64String(r)) : null,
                args[(end + 1)..]);
        }
    }

    /// <summary>The message the helper sends with the descriptor: "TUN1", the interface index.</summary>
    public const int HelloLength = 8;

    /// <summary>Runs the helper; returns only on failure (the exit status).</summary>
    public static int Run(string[] args)
    {
        Request request;
        try
        {
            request = Request.Parse(args);
        }
        catch (Exception e) when (e is FormatException or KeyNotFoundException or IndexOutOfRangeException or ArgumentException)
        {
            return Fail($"bad helper arguments ({e.Message}); this verb is for netstack run only");
        }
        // The socket must not reach the command.
        RunInterop.SetCloseOnExec(request.Socket, true);
        TunDevice device;
        try
        {
            using (var loopback = KernelLink.Open("lo"))
                loopback.SetUp();
            device = TunDevice.Create(request.Interface, request.VirtioNetHeader);
            // Not disposed: exec closes this process's descriptors (all close-on-exec) and the
            // parent's copy keeps the interface.
            var link = new KernelLink(device);
            link.SetMtu(request.Mtu);
            link.SetUp();
            if (request.Address is { } a)
                link.AddAddress(a.Address, a.Length);
            if (request.Address6 is { } b)
                link.AddAddress(b.Address, b.Length);
            if (request.Gateway is not null)
                link.AddRoute(IPAddress.Any, 0, request.Gateway);
            if (request.Gateway6 is not null)
                link.AddRoute(IPAddress.IPv6Any, 0, request.Gateway6);
            if (request.ResolvConf is not null)
                MountResolvConf(request.ResolvConf);
            Span<byte> hello = stackalloc byte[HelloLength];
            "TUN1"u8.CopyTo(hello);
            BinaryPrimitives.WriteInt32LittleEndian(hello[4..], device.InterfaceIndex);
            RunInterop.SendWithDescriptor(request.Socket, hello, device.FileDescriptor);
        }
        catch (Exception e)
        {
            // Whatever went wrong, the parent learns it from the end of file and our status.
            return Fail($"cannot set up the namespace: {e.Message}");
        }

        // The parent answers one byte when its stack runs; end of file means it gave up.
        Span<byte> go = stackalloc byte[1];
        int got;
        try
        {
            got = RunInterop.ReceiveWithDescriptor(request.Socket, go, -1, out var stray);
            if (stray >= 0)
                RunInterop.Close(stray);
        }
        catch (IOException e)
        {
            return Fail($"lost the parent: {e.Message}");
        }
        if (got != 1)
            return RunCommand.FailureExit;
        RunInterop.Close(request.Socket);

        int errno = RunInterop.Exec(request.Command);
        GC.KeepAlive(device);
        Console.Error.WriteLine($"{RunCommand.Name}: cannot run '{request.Command[0]}': {RunInterop.Describe(errno)}");
        // As shells: 127 when the command was not found, 126 when it could not be executed.
        return errno == 2 ? 127 : 126;
    }

    // A private copy of resolv.conf over the namespace's /etc/resolv.conf: the mount namespace is
    // the child's own (unshare --mount, private propagation), so the host's file is untouched. The
    // temporary file is unlinked at once; the mount keeps its inode until the namespace goes.
    private static void MountResolvConf(string content)
    {
        var path = Path.Combine(Path.GetTempPath(), $"netstack-resolv-{Environment.ProcessId}.conf");
        File.WriteAllText(path, content);
        try
        {
            int errno = RunInterop.BindMount(path, "/etc/resolv.conf");
            if (errno != 0)
                throw new IOException($"bind-mounting a resolv.conf over /etc/resolv.conf: {RunInterop.Describe(errno)} (--no-resolv-conf leaves it alone)");
        }
        finally
        {
            File.Delete(path);
        }
    }

    private static int Fail(string message)
    {
        Console.Error.WriteLine($"{RunCommand.Name}: {message}");
        return RunCommand.FailureExit;
    }
}
