namespace NetStack.Engine;

/// <summary>
/// Timers and bounds of the neighbor caches (ARP for IPv4, NDP for IPv6) and of the start-up
/// announcements in <see cref="NetStackMode.Tap"/> mode. The defaults are RFC 4861 §10's constants
/// and bounds like Linux's; tests shorten the timers to watch entries expire.
/// </summary>
public sealed record NeighborSettings
{
    /// <summary>How long a confirmed neighbor stays REACHABLE (RFC 4861 REACHABLE_TIME).</summary>
    public TimeSpan ReachableTime { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Time between solicitations, and how long duplicate address detection waits (RETRANS_TIMER).</summary>
    public TimeSpan RetransTimer { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>How long a DELAY entry waits for confirmation before probing (DELAY_FIRST_PROBE_TIME).</summary>
    public TimeSpan DelayFirstProbeTime { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>How long an unused STALE entry is kept (Linux gc_staletime).</summary>
    public TimeSpan StaleLifetime { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>Entries per cache (each family has one) at most.</summary>
    public int MaxEntries { get; init; } = 256;

    /// <summary>
    /// Packets one unresolved neighbor holds while its address is resolved (the oldest gives way
    /// to a newer one). 64 by default: a burst to a new neighbor, such as a whole segmented UDP
    /// send (<see cref="UdpSocket.MaxSegments"/>), waits whole; <see cref="MaxQueuedBytes"/> bounds all queues together.
    /// </summary>
    public int MaxQueuedPerEntry { get; init; } = 64;

    /// <summary>Bytes all packets waiting for resolution hold at most, per cache.</summary>
    public int MaxQueuedBytes { get; init; } = 256 * 1024;

    /// <summary>Neighbor solicitations sent for duplicate address detection of the IPv6 address (RFC 4862 DupAddrDetectTransmits; 0: none).</summary>
    public int DadTransmits { get; init; } = 1;

    /// <summary>Gratuitous ARP announcements of the IPv4 address at start (RFC 5227 §2.3; 0: none).</summary>
    public int GratuitousArps { get; init; } = 1;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first setting out of range.</summary>
    /// <exception cref="ArgumentException">A time is not positive or a bound is below 1 (below 0 for the counts).</exception>
    public void Validate()
    {
        if (ReachableTime <= TimeSpan.Zero || RetransTimer <= TimeSpan.Zero || DelayFirstProbeTime <= TimeSpan.Zero || StaleLifetime <= TimeSpan.Zero)
            throw new ArgumentException("Neighbor timers must be positive.");
        if (MaxEntries < 1 || MaxQueuedPerEntry < 1 || MaxQueuedBytes < 1)
            throw new ArgumentException("Neighbor cache bounds must be at least 1.");
        if (DadTransmits < 0 || DadTransmits > 10 || GratuitousArps < 0 || GratuitousArps > 10)
            throw new ArgumentException("DadTransmits and GratuitousArps must be in 0..10.");
    }
}
