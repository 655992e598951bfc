using System.Runtime.InteropServices;

namespace NetStack.Cli;

/// <summary>
/// Caps the number of glibc malloc arenas this process uses, before the runtime's worker threads
/// exist. glibc gives threads arenas of their own, up to 8 per processor, and an arena keeps the
/// pages of what was freed in it. In a long-running <c>netstack</c> the runtime's native memory
/// is mostly the JIT's working memory (up to several MB while it compiles a large method, freed
/// right after; heaptrack: a peak of 11 MB live, 9 MB of it the JIT's); as the thread pool adds
/// threads and tiered compilation promotes methods on them, one arena after another is touched
/// to that high-water mark, and the resident set climbed by 5–10 MB over the first 20 minutes of
/// the soak benchmark (docs/soak.md). With two arenas they share one high-water mark. The
/// runtime allocates natively a few hundred times a second at most under load, so the lock
/// contention the extra arenas avoid does not arise here.
/// </summary>
/// <remarks>
/// Same as the environment variable <c>MALLOC_ARENA_MAX=2</c>, which only works when set
/// before the process starts; <c>mallopt(M_ARENA_MAX)</c> works for every arena created after
/// it. Without glibc (musl has no per-thread arenas and no such option) this does nothing.
/// </remarks>
internal static partial class MallocArenas
{
    /// <summary>M_ARENA_MAX in glibc's malloc.h.</summary>
    private const int ArenaMaxOption = -8;

    /// <summary>Arenas allowed: the main one and one more, shared by all other threads.</summary>
    public const int Limit = 2;

    /// <summary>True when <see cref="Cap"/> set the cap.</summary>
    public static bool Capped { get; private set; }

    /// <summary>Sets the cap unless MALLOC_ARENA_MAX already says otherwise; true when glibc took it.</summary>
    public static bool Cap()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("MALLOC_ARENA_MAX") is not null)
            return false;
        try
        {
            return Capped = MallOpt(ArenaMaxOption, Limit) == 1;
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            return false;
        }
    }

    // int mallopt(int param, int value): 1 on success, 0 on error.
    [LibraryImport("libc", EntryPoint = "mallopt")]
    private static partial int MallOpt(int option, int value);
}
