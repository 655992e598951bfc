using System.Globalization;

namespace NetStack.Cli;

/// <summary>The bench's processor-time accounting (<see cref="CpuMeter"/>).</summary>
public static partial class BenchCommand
{
    /// <summary>Processor time over one measured interval, in µs: the bench's processes, and the whole machine.</summary>
    /// <param name="Processes">
    /// This process (the client, and in the stack column the stack), the processes it waited for
    /// in the interval (an independent tool's client and server), the serving process of the
    /// column when it is another one (the kernel peer, the lwIP sink), and the kernel's softirq
    /// threads (ksoftirqd/N, where the kernel defers packet processing under load).
    /// </param>
    /// <param name="Machine">All processors' busy time from /proc/stat (user, nice, system, irq, softirq, steal): everything that ran, other load included.</param>
    public readonly record struct CpuTime(double Processes, double Machine)
    {
        /// <summary>The sum of two intervals.</summary>
        public static CpuTime operator +(CpuTime a, CpuTime b) => new(a.Processes + b.Processes, a.Machine + b.Machine);
    }

    /// <summary>
    /// Measures <see cref="CpuTime"/> between <see cref="Start"/> and <see cref="Stop"/>. The
    /// kernel charges a task the softirq work (the receive side of TCP over veth or TUN) that
    /// runs in its context, so the processes' figure holds the kernel's packet work as well as the
    /// programs'; what the kernel defers to ksoftirqd is added. Both come from clock ticks
    /// (USER_HZ = 100: 10 ms), so an interval needs a second or more of processor time for a
    /// figure within 1%.
    /// </summary>
    private sealed class CpuMeter(Func<int?> server)
    {
        private long _processes, _machine;
        private int? _server;
        private long _serverStart;

        /// <summary>A meter for this process and, when it runs, the column's serving process (<paramref name="server"/>: its pid).</summary>
        public static CpuMeter For(Func<int?> server) => new(server);

        /// <summary>Starts an interval.</summary>
        public CpuMeter Start()
        {
            _server = server();
            _serverStart = _server is { } pid ? ProcessTicks(pid) ?? 0 : 0;
            _processes = SelfTicks() + SoftIrqTicks();
            _machine = MachineTicks();
            return this;
        }

        /// <summary>Ends the interval; µs of processor time.</summary>
        public CpuTime Stop()
        {
            long processes = SelfTicks() + SoftIrqTicks() - _processes;
            if (_server is { } pid)
                processes += (ProcessTicks(pid) ?? _serverStart) - _serverStart;
            return new CpuTime(processes * TickMicroseconds, (MachineTicks() - _machine) * TickMicroseconds);
        }

        /// <summary>USER_HZ is 100 on every Linux architecture .NET runs on.</summary>
        private const double TickMicroseconds = 10_000;

        /// <summary>This process's user + system ticks, and those of the children it has waited for (cutime, cstime).</summary>
        private static long SelfTicks()
        {
            var f = StatFields(File.ReadAllText("/proc/self/stat"));
            return f[0] + f[1] + f[2] + f[3];
        }

        /// <summary>Process <paramref name="pid"/>'s user + system ticks (all its threads); null when it is gone.</summary>
        private static long? ProcessTicks(int pid)
        {
            try
            {
                var f = StatFields(File.ReadAllText($"/proc/{pid}/stat"));
                return f[0] + f[1];
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                return null;
            }
        }

        /// <summary>utime, stime, cutime, cstime of a /proc/PID/stat line (fields 14–17; the name in parentheses may hold spaces).</summary>
        private static long[] StatFields(string stat)
        {
            var rest = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            // rest[0] is field 3 (state), so field N is rest[N - 3].
            return [.. rest[11..15].Select(s => long.Parse(s, CultureInfo.InvariantCulture))];
        }

        private static int[]? _softIrqThreads;

        /// <summary>The ksoftirqd/N kernel threads' ticks.</summary>
        private static long SoftIrqTicks()
        {
            _softIrqThreads ??= [.. Directory.EnumerateDirectories("/proc")
                .Select(d => int.TryParse(Path.GetFileName(d), out var pid) ? pid : 0)
                .Where(pid => pid > 0 && ReadComm(pid)?.StartsWith("ksoftirqd/", StringComparison.Ordinal) == true)];
            return _softIrqThreads.Sum(pid => ProcessTicks(pid) ?? 0);
        }

        private static string? ReadComm(int pid)
        {
            try
            {
                return File.ReadAllText($"/proc/{pid}/comm").Trim();
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                return null;
            }
        }

        /// <summary>All processors' non-idle ticks (user, nice, system, irq, softirq, steal).</summary>
        private static long MachineTicks()
        {
            var fields = File.ReadLines("/proc/stat").First().Split(' ', StringSplitOptions.RemoveEmptyEntries);
            long ticks = 0;
            foreach (int i in (int[])[1, 2, 3, 6, 7, 8])
                ticks += long.Parse(fields[i], CultureInfo.InvariantCulture);
            return ticks;
        }
    }
}
