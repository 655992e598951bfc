using System.Collections.Concurrent;
using System.Text;

namespace NetStack;

/// <summary>
/// Named counters of a <see cref="NetworkStack"/>: packets by protocol, drops by reason, ICMP
/// answers, socket queue drops. Written by the engine, readable from any thread.
/// </summary>
public sealed class NetStackStatistics
{
    private sealed class Counter
    {
        public long Value;
    }

    // The counters by name, and the same counters by the identity of the name string the engine
    // passes: its names are literals (one interned string each), so the hot path finds a counter
    // by reference without hashing the name's characters. Bounded, in case a caller ever builds
    // names at run time.
    private const int MaxReferenceEntries = 1024;
    private readonly ConcurrentDictionary<string, Counter> _counters = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, Counter> _byReference = new(ReferenceEqualityComparer.Instance);

    internal NetStackStatistics() { }

    /// <summary>The counter's current value; 0 for a name never counted.</summary>
    /// <param name="name">A counter name such as "ipv4.received" or "drop.ipv4.bad-checksum".</param>
    public long this[string name] => _counters.TryGetValue(name, out var c) ? Volatile.Read(ref c.Value) : 0;

    internal void Increment(string name, long by = 1)
    {
        if (!_byReference.TryGetValue(name, out var counter))
            counter = Resolve(name);
        Interlocked.Add(ref counter.Value, by);
    }

    // Overwrites a gauge-like counter (the loop's allocation total); only one thread writes it.
    internal void Set(string name, long value)
    {
        if (!_byReference.TryGetValue(name, out var counter))
            counter = Resolve(name);
        Volatile.Write(ref counter.Value, value);
    }

    private Counter Resolve(string name)
    {
        // GetOrAdd with a static factory allocates only the first time a name is counted.
        var counter = _counters.GetOrAdd(name, static _ => new Counter());
        if (_byReference.Count < MaxReferenceEntries)
            _byReference.TryAdd(name, counter);
        return counter;
    }

    /// <summary>Every counter by name, at one moment (each counter read atomically).</summary>
    public IReadOnlyDictionary<string, long> Snapshot()
    {
        var result = new SortedDictionary<string, long>(StringComparer.Ordinal);
        foreach (var (name, counter) in _counters)
            result[name] = Volatile.Read(ref counter.Value);
        return result;
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
