using System.Globalization;
using System.Runtime;
using System.Text;

namespace NetStack.Cli;

/// <summary>
/// Where this process's memory is, at one moment: the kernel's view (resident set, split into
/// anonymous and file-backed pages, from <c>/proc/self/status</c>) and the garbage collector's
/// (<see cref="GC.GetGCMemoryInfo()"/>: the heap and the memory it has committed, as of the last
/// collection, so all zero before the first one). Reading it costs a file read and a few runtime calls and changes nothing, so
/// <c>serve</c> prints it on SIGUSR1 and the soak benchmark samples it every few seconds.
/// </summary>
/// <param name="ResidentBytes">VmRSS: pages of the process in memory.</param>
/// <param name="AnonymousBytes">RssAnon: the resident anonymous pages (GC heap, native allocations, stacks).</param>
/// <param name="FileBytes">RssFile: resident pages of mapped files (the runtime, the assemblies).</param>
/// <param name="Threads">Threads of the process.</param>
/// <param name="HeapBytes">The managed heap after the last collection, free space inside it included.</param>
/// <param name="FragmentedBytes">Free space inside the managed heap after the last collection.</param>
/// <param name="CommittedBytes">Memory the GC has committed (its regions and bookkeeping), as of the last collection.</param>
/// <param name="LargeObjectHeapBytes">The large object heap's size after the last collection (objects of 85,000 bytes and more).</param>
/// <param name="PinnedObjectHeapBytes">The pinned object heap's size after the last collection.</param>
/// <param name="AllocatedBytes">Bytes allocated on the managed heap since the process started.</param>
/// <param name="Collections">Collections of generations 0, 1 and 2 so far (a gen 2 counts in all three).</param>
public sealed record ProcessMemory(
    long ResidentBytes,
    long AnonymousBytes,
    long FileBytes,
    int Threads,
    long HeapBytes,
    long FragmentedBytes,
    long CommittedBytes,
    long LargeObjectHeapBytes,
    long PinnedObjectHeapBytes,
    long AllocatedBytes,
    (int Gen0, int Gen1, int Gen2) Collections)
{
    /// <summary>Reads the current figures (no collection is forced).</summary>
    public static ProcessMemory Now()
    {
        long rss = 0, anon = 0, file = 0;
        int threads = 0;
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            // "VmRSS:\t  123456 kB"
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                rss = Kilobytes(line);
            else if (line.StartsWith("RssAnon:", StringComparison.Ordinal))
                anon = Kilobytes(line);
            else if (line.StartsWith("RssFile:", StringComparison.Ordinal))
                file = Kilobytes(line);
            else if (line.StartsWith("Threads:", StringComparison.Ordinal))
                threads = (int)Number(line);
        }
        var gc = GC.GetGCMemoryInfo();
        var generations = gc.GenerationInfo;
        // GenerationInfo: 0, 1, 2, then the large object heap (3) and the pinned object heap (4).
        return new ProcessMemory(
            rss, anon, file, threads,
            gc.HeapSizeBytes, gc.FragmentedBytes, gc.TotalCommittedBytes,
            generations.Length > 3 ? generations[3].SizeAfterBytes : 0,
            generations.Length > 4 ? generations[4].SizeAfterBytes : 0,
            GC.GetTotalAllocatedBytes(false),
            (GC.CollectionCount(0), GC.CollectionCount(1), GC.CollectionCount(2)));
    }

    /// <summary>The GC's configuration in one line: its flavour, and the settings that change how much it commits.</summary>
    public static string Configuration()
    {
        var info = GC.GetConfigurationVariables();
        var text = new StringBuilder(GCSettings.IsServerGC ? "server" : "workstation");
        if (info.TryGetValue("ConcurrentGC", out var concurrent) && concurrent is true)
            text.Append(" concurrent");
        text.Append(" GC, ").Append(Environment.ProcessorCount).Append(" processors");
        // The names GC.GetConfigurationVariables uses (.NET 10); zero means "not set".
        foreach (var name in (string[])["HeapCount", "GCHeapHardLimit", "GCConserveMem", "GCGen0MaxBudget", "GCRegionSize", "GCDynamicAdaptationMode"])
        {
            if (info.TryGetValue(name, out var value) && value is not null && Convert.ToInt64(value, CultureInfo.InvariantCulture) != 0)
                text.Append(", ").Append(name).Append(' ').Append(Convert.ToString(value, CultureInfo.InvariantCulture));
        }
        return text.ToString();
    }

    /// <summary>"name value" lines, values in bytes (counts for threads and collections), for a statistics dump.</summary>
    public string Format() => string.Join('\n',
        $"process.rss {ResidentBytes}",
        $"process.rss-anon {AnonymousBytes}",
        $"process.rss-file {FileBytes}",
        $"process.threads {Threads}",
        $"gc.heap {HeapBytes}",
        $"gc.fragmented {FragmentedBytes}",
        $"gc.committed {CommittedBytes}",
        $"gc.loh {LargeObjectHeapBytes}",
        $"gc.poh {PinnedObjectHeapBytes}",
        $"gc.allocated {AllocatedBytes}",
        $"gc.collections {Collections.Gen0} {Collections.Gen1} {Collections.Gen2}");

    private static long Kilobytes(string line) => Number(line) * 1024;

    private static long Number(string line) =>
        long.Parse(line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
}
