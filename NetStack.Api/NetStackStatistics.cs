using System.Collections.Concurrent;
using System.Text;

namespace NetStack;

/// <summary>
/// Named counters of a <see cref="NetworkStack"/>: packets by protocol, drops by reason, ICMP
/// answers, socket queue drops. Written by the engine, readable from any thread.
/// </summary>
public sealed class NetStackStatistics
{
    /// <summary>One counter, for a hot path to keep instead of looking its name up each time.</summary>
    internal sealed class Counter
    {
        public long Value;

        public void Increment() => Interlocked.Increment(ref Value);

        public void Add(long by) => Interlocked.Add(ref Value, by);
    }

    private readonly ConcurrentDictionary<string, Counter> _counters = new(StringComparer.Ordinal);

    internal NetStackStatistics() { }

    /// <summary>The counter's current value; 0 for a name never counted.</summary>
    /// <param name="name">A counter name such as "ipv4.received" or "drop.ipv4.bad-checksum".</param>
    public long this[string name]
    {
        get
        {
            long value = Own(name);
            foreach (var part in Parts)
                value += part.Own(name);
            return value;
        }
    }

    private long Own(string name) => _counters.TryGetValue(name, out var c) ? Volatile.Read(ref c.Value) : 0;

    // A multi-queue stack: the counters of the other queues' engines, which every reading adds
    // to this one's (set once when the stack starts).
    internal NetStackStatistics[] Parts { get; set; } = [];

    // (A cache keyed by the name string's identity was tried: after tiering, a lookup by
    // ordinal hash costs the same ~26 ns as one by reference on this machine class.)
    internal void Increment(string name, long by = 1)
    {
        // GetOrAdd with a static factory allocates only the first time a name is counted.
        var counter = _counters.GetOrAdd(name, static _ => new Counter());
        Interlocked.Add(ref counter.Value, by);
    }

    // The counter named `name`, created at 0 (which reads as never counted: Snapshot skips it).
    internal Counter Handle(string name) => _counters.GetOrAdd(name, static _ => new Counter());

    // Overwrites a gauge-like counter (the loop's allocation total); only one thread writes it.
    internal void Set(string name, long value)
    {
        var counter = _counters.GetOrAdd(name, static _ => new Counter());
        Volatile.Write(ref counter.Value, value);
    }

    /// <summary>Every counter that is not zero, by name, at one moment (each counter read atomically).</summary>
    public IReadOnlyDictionary<string, long> Snapshot()
    {
        var result = new SortedDictionary<string, long>(StringComparer.Ordinal);
        Add(result);
        foreach (var part in Parts)
            part.Add(result);
        return result;
    }

    private void Add(SortedDictionary<string, long> result)
    {
        foreach (var (name, counter) in _counters)
        {
            long value = Volatile.Read(ref counter.Value);
            if (value != 0)
                result[name] = result.GetValueOrDefault(name) + value;
        }
    }

    /// <summary>One "name value" line per non-zero counter, sorted by name.</summary>
    public override string ToString()
    {
        var text = new StringBuilder();
        foreach (var (name, value) in Snapshot())
        {
            if (value != 0)
                text.Append(name).Append(' ').Append(value).Append('\n');
        }
        return text.ToString();
    }
}
