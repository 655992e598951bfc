using System.Globalization;

namespace NetStack.Cli;

/// <summary>
/// This process's resident memory split by the kind of mapping it lives in, from
/// <c>/proc/self/smaps</c>: so a growing RSS can be pinned on the GC's regions, the C library's
/// allocator, thread stacks or the runtime's code and loader heaps.
/// </summary>
/// <remarks>
/// The kinds are recognized by shape, as they look with .NET 10 on glibc (docs/soak.md shows a listing):
/// <list type="bullet">
/// <item><b>gc</b>: the GC's reservation (with regions, one range of tens of GB, mostly
/// inaccessible) and the regions and bookkeeping committed inside it: the largest inaccessible
/// anonymous mapping and every anonymous mapping contiguous with it.</item>
/// <item><b>malloc</b>: glibc's main arena (<c>[heap]</c>) and its thread arenas, anonymous
/// mappings that start on a 64 MiB boundary (HEAP_MAX_SIZE); the runtime's own native data
/// (thread objects, the JIT's working memory, type loader data not in loader heaps) lives here.</item>
/// <item><b>stacks</b>: a readable mapping right after a small inaccessible one (the guard page).</item>
/// <item><b>code</b>: <c>/memfd:doublemapper</c>, where the runtime keeps JIT-compiled code, stubs
/// and loader heaps (mapped twice, writable and executable, W^X).</item>
/// <item><b>files</b>: mapped files (the runtime, the assemblies); <b>other</b>: the rest.</item>
/// </list>
/// </remarks>
/// <param name="Gc">Resident bytes in the GC's range.</param>
/// <param name="Malloc">Resident bytes in glibc's arenas.</param>
/// <param name="Stacks">Resident bytes of thread stacks.</param>
/// <param name="Code">Resident bytes of the runtime's code and loader heaps.</param>
/// <param name="Files">Resident bytes of mapped files.</param>
/// <param name="Other">Resident bytes anywhere else.</param>
public sealed record ResidentByKind(long Gc, long Malloc, long Stacks, long Code, long Files, long Other)
{
    /// <summary>glibc's HEAP_MAX_SIZE on 64-bit: each thread arena is one such aligned reservation.</summary>
    private const long ArenaSize = 64L << 20;

    /// <summary>The largest guard region taken for a stack guard (glibc uses one page; the runtime up to 64 KiB).</summary>
    private const long MaxGuard = 64 << 10;

    private sealed record Mapping(ulong Start, ulong End, string Permissions, string Name)
    {
        public long Resident;

        public bool Anonymous => Name.Length == 0;

        public ulong Size => End - Start;
    }

    /// <summary>Reads <c>/proc/self/smaps</c> once (a few milliseconds).</summary>
    public static ResidentByKind Now() => Of(File.ReadLines("/proc/self/smaps"));

    /// <summary>Sums the resident bytes of an smaps listing by kind.</summary>
    public static ResidentByKind Of(IEnumerable<string> smaps)
    {
        var maps = new List<Mapping>();
        foreach (var line in smaps)
        {
            if (line.Length > 0 && Uri.IsHexDigit(line[0]) && line.IndexOf('-') is var dash and > 0 && line.IndexOf(' ') > dash)
            {
                // "start-end perms offset dev inode   name"
                var fields = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
                var range = fields[0].Split('-');
                maps.Add(new Mapping(ulong.Parse(range[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture),
                    ulong.Parse(range[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture),
                    fields[1], fields.Length > 5 ? fields[5].Trim() : ""));
            }
            else if (line.StartsWith("Rss:", StringComparison.Ordinal) && maps.Count > 0)
                maps[^1].Resident = long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
        }

        var gc = new bool[maps.Count];
        int reserve = -1;
        for (int i = 0; i < maps.Count; i++)
        {
            if (maps[i].Anonymous && maps[i].Permissions == "---p" && (reserve < 0 || maps[i].Size > maps[reserve].Size))
                reserve = i;
        }
        if (reserve >= 0)
        {
            int lo = reserve, hi = reserve;
            while (lo > 0 && maps[lo - 1].Anonymous && maps[lo - 1].End == maps[lo].Start)
                lo--;
            while (hi + 1 < maps.Count && maps[hi + 1].Anonymous && maps[hi + 1].Start == maps[hi].End)
                hi++;
            for (int i = lo; i <= hi; i++)
                gc[i] = true;
        }

        long inGc = 0, malloc = 0, stacks = 0, code = 0, files = 0, other = 0;
        for (int i = 0; i < maps.Count; i++)
        {
            var m = maps[i];
            if (gc[i])
                inGc += m.Resident;
            else if (m.Name == "[heap]" || (m.Anonymous && m.Start % ArenaSize == 0 && m.Permissions == "rw-p"))
                malloc += m.Resident;
            else if (m.Name.StartsWith("/memfd:doublemapper", StringComparison.Ordinal))
                code += m.Resident;
            else if (m.Name.Length > 0 && m.Name[0] != '[')
                files += m.Resident;
            else if (m.Anonymous && m.Permissions == "rw-p" && i > 0 && maps[i - 1].Permissions == "---p"
                     && maps[i - 1].End == m.Start && maps[i - 1].Size <= MaxGuard)
                stacks += m.Resident;
            else
                other += m.Resident;
        }
        return new ResidentByKind(inGc, malloc, stacks, code, files, other);
    }
}
