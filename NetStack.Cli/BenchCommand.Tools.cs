using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Text.Json;

namespace NetStack.Cli;

/// <summary>
/// The bench's independent references: iperf3 over the kernel column's veth (does the kernel
/// column measure the kernel, not the bench's client?), and lwIP's TCP on a TUN (the "lwIP"
/// column of bulk kernel → X, bench/lwip-sink).
/// </summary>
public static partial class BenchCommand
{
    /// <summary>iperf3's port in the peer namespace.</summary>
    private const int IperfPort = 5201;

    /// <summary>lwIP's /30 on its TUN: the kernel side and lwIP's address.</summary>
    private const string LwipNear = "10.79.0.1", LwipAddress = "10.79.0.2";

    /// <summary>The lwIP column: kernel → lwIP bulk, or why it was not measured.</summary>
    /// <param name="Gbps">Throughput, Gbit/s; null when skipped.</param>
    /// <param name="PerGB">Processor time per GB, µs.</param>
    /// <param name="Skipped">Why it did not run, or null.</param>
    /// <param name="Runs">Gbit/s of each run (the median is <paramref name="Gbps"/>).</param>
    public sealed record Lwip(double? Gbps, CpuTime? PerGB, string? Skipped, IReadOnlyList<double>? Runs = null);

    /// <summary>
    /// iperf3 over the same veth as the kernel column, one run in the direction
    /// <paramref name="reverse"/> gives (-R: X → kernel), with as many parallel streams as the
    /// bench's bulk flows and the same total bytes and 1 MiB writes: iperf3 -s in the peer's
    /// namespace (nsenter into the peer process's), iperf3 -c here. Its receiver's Gbit/s, and the
    /// processor time of both iperf3 processes, the peer and the softirq threads per GB.
    /// </summary>
    private static (double Gbps, CpuTime? PerGB) RunIperf(int peerPid, IPAddress peer, Plan plan, CpuMeter cpu, bool reverse)
    {
        var server = new ProcessStartInfo("nsenter") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { $"--net=/proc/{peerPid}/ns/net", "iperf3", "-s", "-1", "-p", $"{IperfPort}" })
            server.ArgumentList.Add(a);
        using var s = Process.Start(server)!;
        try
        {
            // Listening once the peer's namespace has a TCP socket in LISTEN (0A) on the port
            // (/proc/PID/net/tcp and tcp6, iperf3 listens on [::], show PID's namespace; iperf3's own "listening" line sits in
            // its stdout buffer when that is a pipe).
            var port = $":{IperfPort:X4} ";
            var clock = Stopwatch.StartNew();
            while (!File.ReadLines($"/proc/{peerPid}/net/tcp").Concat(File.ReadLines($"/proc/{peerPid}/net/tcp6")).Any(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries) is [_, var local, _, "0A", ..] && (local + " ").EndsWith(port, StringComparison.Ordinal)))
            {
                if (s.HasExited || clock.Elapsed > TimeSpan.FromSeconds(10))
                    throw new InvalidOperationException("iperf3 -s did not start listening in the peer namespace");
                Thread.Sleep(20);
            }
            _ = s.StandardOutput.ReadToEndAsync();
            _ = s.StandardError.ReadToEndAsync();
            cpu.Start();
            var args = new List<string> { "-c", $"{peer}", "-p", $"{IperfPort}", "-n", $"{plan.TcpBytes}", "-l", $"{BulkBlock}", "-P", $"{plan.BulkFlows}", "-J" };
            if (reverse)
                args.Add("-R");
            var client = Shell.RunAsync("iperf3", args, TimeSpan.FromSeconds(300)).GetAwaiter().GetResult();
            if (!s.WaitForExit(TimeSpan.FromSeconds(10)))
                s.Kill();
            s.WaitForExit();
            var time = cpu.Stop();
            if (client.ExitCode != 0)
                throw new InvalidOperationException($"iperf3 -c exited with {client.ExitCode}: {client.Output}{client.Error}");
            using var json = JsonDocument.Parse(client.Output);
            var bits = json.RootElement.GetProperty("end").GetProperty("sum_received").GetProperty("bits_per_second").GetDouble();
            return (bits / 1e9, PerUnit(time, plan.TcpBytes / 1e9));
        }
        finally
        {
            if (!s.HasExited)
                s.Kill();
            s.WaitForExit();
        }
    }

    /// <summary>Why iperf3 cannot run (not installed), or null.</summary>
    private static string? IperfMissing() =>
        OnPath("iperf3") && OnPath("nsenter") ? null : "iperf3 (Debian package iperf3) or nsenter (util-linux) is not installed";

    /// <summary>
    /// The lwIP column: builds bench/lwip-sink (embedded in this program) with gcc against
    /// Debian's liblwip-dev into a cache directory when needed, starts it on a TUN interface of
    /// this namespace with the bench's MTU, and measures bulk kernel → lwIP with the bench's
    /// client (a warm-up transfer of up to 64 MiB, then <see cref="Plan.BulkRuns"/> transfers of
    /// <see cref="Plan.TcpBytes"/> over <see cref="Plan.BulkFlows"/> flows, the median taken). lwIP has no offloads: the sink reads and writes one
    /// packet per system call, and lwIP's build advertises an MSS of 1460 and a 64 KiB window.
    /// </summary>
    private static Lwip MeasureLwip(int mtu, Plan plan)
    {
        string sink;
        try
        {
            var built = BuildLwipSink();
            if (built.Skipped is not null)
                return new Lwip(null, null, built.Skipped);
            sink = built.Path!;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidOperationException)
        {
            return new Lwip(null, null, $"cannot build the lwIP sink: {e.Message}");
        }
        var tun = $"nslwip{Environment.ProcessId % 100000}";
        var psi = new ProcessStartInfo(sink) { RedirectStandardOutput = true, RedirectStandardInput = true, UseShellExecute = false };
        foreach (var a in new[] { tun, LwipAddress, $"{DiscardPort}", $"{mtu}" })
            psi.ArgumentList.Add(a);
        Process? process = null;
        try
        {
            process = Process.Start(psi)!;
            ExpectLine(process, "ready");
            Shell.Check("ip", "link", "set", tun, "mtu", $"{mtu}");
            Shell.Check("ip", "addr", "add", LwipNear, "peer", LwipAddress, "dev", tun);
            Shell.Check("ip", "link", "set", tun, "up");
            var target = IPAddress.Parse(LwipAddress);
            var m = new Measurement();
            var pid = process.Id;
            BulkTransfer(target, DiscardPort, Math.Min(plan.TcpBytes, 64L << 20), plan.BulkFlows, () => InterfacePackets(tun), null, m);
            var cpu = CpuMeter.For(() => pid);
            var runs = Enumerable.Range(0, plan.BulkRuns)
                .Select(_ => BulkTransfer(target, DiscardPort, plan.TcpBytes, plan.BulkFlows, () => InterfacePackets(tun), cpu, m)).ToList();
            return new Lwip(Median(runs.Select(r => r.Gbps)), MedianCpu(runs.Select(r => r.PerGB)), null, [.. runs.Select(r => r.Gbps)]);
        }
        catch (Exception e) when (e is InvalidOperationException or IOException or System.Net.Sockets.SocketException or System.ComponentModel.Win32Exception)
        {
            return new Lwip(null, null, $"the lwIP measurement failed: {e.Message}");
        }
        finally
        {
            if (process is not null)
            {
                // Closing its stdin ends the sink; its TUN interface goes with it.
                process.StandardInput.Close();
                if (!process.WaitForExit(TimeSpan.FromSeconds(5)))
                    process.Kill();
                process.WaitForExit();
                process.Dispose();
            }
        }
    }

    /// <summary>
    /// The lwIP sink's binary, compiled once per version of its source into a cache directory
    /// under the temporary directory; or why it cannot be (no gcc, no liblwip-dev headers).
    /// </summary>
    private static (string? Path, string? Skipped) BuildLwipSink()
    {
        const string Headers = "/usr/include/lwip/lwip/tcp.h";
        if (!File.Exists(Headers))
            return (null, $"liblwip-dev is not installed ({Headers} is missing): apt-get install -y liblwip-dev");
        if (!OnPath("gcc"))
            return (null, "gcc is not installed: it builds the lwIP sink");
        using var resource = typeof(BenchCommand).Assembly.GetManifestResourceStream("lwip-sink.c")
            ?? throw new InvalidOperationException("the lwIP sink's source is not embedded in this build");
        using var memory = new MemoryStream();
        resource.CopyTo(memory);
        var source = memory.ToArray();
        var hash = Convert.ToHexStringLower(SHA256.HashData(source))[..16];
        var directory = Path.Combine(Path.GetTempPath(), $"netstack-lwip-sink-{hash}");
        var binary = Path.Combine(directory, "lwip-sink");
        if (File.Exists(binary))
            return (binary, null);
        Directory.CreateDirectory(directory);
        var c = Path.Combine(directory, "lwip-sink.c");
        File.WriteAllBytes(c, source);
        var partial = binary + $".{Environment.ProcessId}";
        var result = Shell.RunAsync("gcc", ["-O2", "-Wall", "-Wextra", "-Werror", "-I/usr/include/lwip", "-o", partial, c, "-llwip", "-lpthread"],
            TimeSpan.FromSeconds(120)).GetAwaiter().GetResult();
        if (result.ExitCode != 0)
            throw new InvalidOperationException($"gcc failed: {result.Error.Trim()}");
        File.Move(partial, binary, overwrite: true);
        return (binary, null);
    }
}
