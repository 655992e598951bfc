using System.Diagnostics;
using System.Runtime;

namespace NetStack.Cli;

/// <summary>
/// Tells a benchmark's warm-up when the runtime has stopped compiling: the process's count of
/// JIT-compiled methods (<see cref="JitInfo.GetCompiledMethodCount"/>) has not changed for
/// <see cref="QuietFor"/>, and at least the minimum time has passed; or the maximum time has
/// passed. A method the runtime finds hot is compiled three times (unoptimized, instrumented,
/// optimized) on a background thread, and on this 2-core machine class that thread took up to
/// half a core for 4–8 s after a new path started: a fixed warm-up measured the stack's
/// connection paths while the JIT still competed with them for the processor.
/// </summary>
internal sealed class JitSettling(TimeSpan minimum, TimeSpan maximum)
{
    /// <summary>How long the compiled-method count must stay unchanged.</summary>
    public static readonly TimeSpan QuietFor = TimeSpan.FromMilliseconds(500);

    private readonly object _gate = new();
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private long _count = JitInfo.GetCompiledMethodCount();
    private TimeSpan _changedAt;
    private bool _settled;

    /// <summary>Time since the warm-up started.</summary>
    public TimeSpan Elapsed => _clock.Elapsed;

    /// <summary>True from the first call that finds the JIT quiet (or the maximum passed); any thread may call it.</summary>
    public bool Settled()
    {
        lock (_gate)
        {
            if (_settled)
                return true;
            var now = _clock.Elapsed;
            long count = JitInfo.GetCompiledMethodCount();
            if (count != _count)
            {
                _count = count;
                _changedAt = now;
            }
            _settled = now >= maximum || (now >= minimum && now - _changedAt >= QuietFor);
            return _settled;
        }
    }
}
