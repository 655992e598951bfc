using System.Collections.Concurrent;
using System.Diagnostics.Tracing;

namespace NetStack.Cli;

/// <summary>
/// Counts the thread pool's changes of its worker thread count by reason (the runtime's
/// ThreadPoolWorkerThreadAdjustmentAdjustment event: warm-up, hill climbing's moves, starvation,
/// cooperative blocking, ...), in this process, while it lives: the soak benchmark reports them,
/// because every thread the pool adds costs a stack and a share of the C library's arenas.
/// </summary>
internal sealed class ThreadPoolWatch : EventListener
{
    // ThreadingKeyword of the runtime's event source (Microsoft-Windows-DotNETRuntime).
    private const EventKeywords ThreadingKeyword = (EventKeywords)0x10000;

    // The event's Reason field (ThreadAdjustmentReasonMap in the runtime's manifest).
    private static readonly string[] Reasons =
        ["warm-up", "initializing", "random move", "climbing move", "change point", "stabilizing", "starvation", "thread timed out", "cooperative blocking"];

    private readonly ConcurrentDictionary<string, int> _adjustments = new(StringComparer.Ordinal);

    /// <summary>Adjustments so far, by reason, with the thread count each last set.</summary>
    public IReadOnlyDictionary<string, int> Adjustments => _adjustments;

    /// <summary>The largest worker count any adjustment asked for.</summary>
    public int Peak { get; private set; }

    /// <inheritdoc/>
    protected override void OnEventSourceCreated(EventSource eventSource)
    {
        if (eventSource.Name == "Microsoft-Windows-DotNETRuntime")
            EnableEvents(eventSource, EventLevel.Informational, ThreadingKeyword);
    }

    /// <inheritdoc/>
    protected override void OnEventWritten(EventWrittenEventArgs e)
    {
        if (e.EventName != "ThreadPoolWorkerThreadAdjustmentAdjustment" || e.PayloadNames is null)
            return;
        int reason = -1, count = 0;
        for (int i = 0; i < e.PayloadNames.Count; i++)
        {
            if (e.PayloadNames[i] == "Reason")
                reason = Convert.ToInt32(e.Payload![i], System.Globalization.CultureInfo.InvariantCulture);
            else if (e.PayloadNames[i] == "NewWorkerThreadCount")
                count = Convert.ToInt32(e.Payload![i], System.Globalization.CultureInfo.InvariantCulture);
        }
        var name = reason >= 0 && reason < Reasons.Length ? Reasons[reason] : $"reason {reason}";
        _adjustments.AddOrUpdate(name, 1, static (_, n) => n + 1);
        if (count > Peak)
            Peak = count;
    }
}
