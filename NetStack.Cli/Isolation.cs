using System.Diagnostics;

namespace NetStack.Cli;

/// <summary>
/// Runs a command inside a private network namespace, so the demo and the benchmark never touch
/// the host's interfaces and no packet of theirs can leave the machine.
/// </summary>
/// <remarks>
/// A thread-level <c>unshare(CLONE_NEWNET)</c> is not enough in .NET (thread-pool threads stay in
/// the old namespace), so the whole process re-executes itself under <c>unshare --net</c> (root) or
/// <c>unshare --user --map-root-user --net</c> (unprivileged), with <see cref="MarkerVariable"/> set
/// in the child. Inside another private namespace (the test run's) this simply nests one more.
/// </remarks>
public static class Isolation
{
    /// <summary>Set to 1 in the re-executed child that runs inside its own namespace.</summary>
    public const string MarkerVariable = "NETSTACK_NETNS";

    /// <summary>True when this process is the re-executed child.</summary>
    public static bool IsIsolated => Environment.GetEnvironmentVariable(MarkerVariable) == "1";

    /// <summary>True when the effective user is root (in the current user namespace).</summary>
    public static bool IsRoot
    {
        get
        {
            // "Uid:\treal\teffective\tsaved\tfs" in /proc/self/status; no P/Invoke needed.
            var line = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("Uid:", StringComparison.Ordinal));
            var fields = line?.Split(['\t', ' '], StringSplitOptions.RemoveEmptyEntries);
            return fields is { Length: > 2 } && fields[2] == "0";
        }
    }

    /// <summary>
    /// Re-executes this command with <paramref name="args"/> in a new network namespace and
    /// returns the child's exit code, or prints why it could not and returns 1.
    /// <paramref name="environment"/>: variables to set in the child as well.
    /// </summary>
    public static int ReexecIsolated(string[] args, IReadOnlyDictionary<string, string>? environment = null)
    {
        var psi = new ProcessStartInfo("unshare") { UseShellExecute = false };
        foreach (var a in IsRoot ? ["--net"] : new[] { "--user", "--map-root-user", "--net" })
            psi.ArgumentList.Add(a);
        psi.ArgumentList.Add("--");
        foreach (var a in SelfCommand())
            psi.ArgumentList.Add(a);
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        psi.Environment[MarkerVariable] = "1";
        if (environment is not null)
            foreach (var (name, value) in environment)
                psi.Environment[name] = value;
        try
        {
            using var child = Process.Start(psi)!;
            // The child gets a terminal's SIGINT too (same process group): just wait for it to
            // finish cleanly. A SIGTERM meant for us is passed on, so the child can clean up.
            using var sigint = System.Runtime.InteropServices.PosixSignalRegistration.Create(
                System.Runtime.InteropServices.PosixSignal.SIGINT, ctx => ctx.Cancel = true);
            using var sigterm = System.Runtime.InteropServices.PosixSignalRegistration.Create(
                System.Runtime.InteropServices.PosixSignal.SIGTERM, ctx =>
                {
                    ctx.Cancel = true;
                    _ = Shell.RunAsync("kill", ["-TERM", $"{child.Id}"], TimeSpan.FromSeconds(5));
                });
            child.WaitForExit();
            if (child.ExitCode != 0 && !IsRoot && !UserNamespacesLikelyAllowed())
                Console.Error.WriteLine("netstack: unprivileged user namespaces look disabled here (kernel.unprivileged_userns_clone / user.max_user_namespaces); run as root");
            return child.ExitCode;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            Console.Error.WriteLine($"netstack: cannot run 'unshare' to make a private network namespace ({e.Message}); install util-linux");
            return 1;
        }
    }

    /// <summary>The program and leading arguments that start this same command again.</summary>
    public static IReadOnlyList<string> SelfCommand()
    {
        var self = Environment.ProcessPath ?? "dotnet";
        // Under `dotnet netstack.dll` the process is the host: pass the assembly along.
        return Path.GetFileNameWithoutExtension(self) == "dotnet"
            ? [self, typeof(Isolation).Assembly.Location]
            : [self];
    }

    private static bool UserNamespacesLikelyAllowed()
    {
        try
        {
            return File.ReadAllText("/proc/sys/user/max_user_namespaces").Trim() != "0";
        }
        catch (IOException)
        {
            return true;
        }
    }

    /// <summary>Brings the loopback interface up (a new namespace starts with it down).</summary>
    public static void LoopbackUp() => Shell.Check("ip", "link", "set", "lo", "up");
}

/// <summary>Runs external tools (<c>ip</c>, <c>ping</c>) and captures their output.</summary>
public static class Shell
{
    /// <summary>The outcome of a finished process.</summary>
    /// <param name="ExitCode">Its exit code.</param>
    /// <param name="Output">Standard output.</param>
    /// <param name="Error">Standard error.</param>
    public sealed record Result(int ExitCode, string Output, string Error);

    /// <summary>Runs <paramref name="file"/> with arguments, waits at most <paramref name="timeout"/>.</summary>
    public static async Task<Result> RunAsync(string file, IEnumerable<string> args, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await p.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            p.Kill();
            await p.WaitForExitAsync();
            throw new TimeoutException($"'{file} {string.Join(' ', psi.ArgumentList)}' did not finish within {timeout.TotalSeconds:0} s");
        }
        return new Result(p.ExitCode, await stdout, await stderr);
    }

    /// <summary>
    /// Waits (up to 5 s) until the kernel side's IPv6 addresses on <paramref name="interfaceName"/>
    /// have finished duplicate address detection (RFC 4862 §5.4): until then the kernel neither
    /// sends from a tentative address nor accepts packets for it.
    /// </summary>
    public static async Task WaitForIpv6AddressAsync(string interfaceName, CancellationToken cancellationToken)
    {
        for (var i = 0; i < 50; i++)
        {
            var r = await RunAsync("ip", ["-6", "addr", "show", "dev", interfaceName, "tentative"], TimeSpan.FromSeconds(5));
            if (r.ExitCode == 0 && string.IsNullOrWhiteSpace(r.Output))
                return;
            await Task.Delay(100, cancellationToken);
        }
    }

    /// <summary>Runs a short command and throws with its stderr when it fails.</summary>
    public static void Check(string file, params string[] args)
    {
        var r = RunAsync(file, args, TimeSpan.FromSeconds(10)).GetAwaiter().GetResult();
        if (r.ExitCode != 0)
            throw new InvalidOperationException($"'{file} {string.Join(' ', args)}' failed (exit {r.ExitCode}): {r.Error.Trim()}");
    }
}
