namespace NetStack.Engine;

/// <summary>
/// The faults a <see cref="FaultInjectingDevice"/> applies to one direction of traffic (or to both,
/// through <see cref="NetStackOptions.Faults"/>). Every decision comes from a random generator
/// seeded with <see cref="Seed"/>, so a run can be repeated. The default value injects nothing.
/// </summary>
public sealed record FaultSettings
{
    /// <summary>Percent (0..100) of packets dropped.</summary>
    public double LossPercent { get; init; }

    /// <summary>Percent (0..100) of packets delivered twice.</summary>
    public double DuplicatePercent { get; init; }

    /// <summary>
    /// Percent (0..100) of packets held back and released right after the next packet in the same
    /// direction, or after <see cref="ReorderHold"/> when no next packet comes.
    /// </summary>
    public double ReorderPercent { get; init; }

    /// <summary>The longest a reordered packet waits for a successor before it is released anyway.</summary>
    public TimeSpan ReorderHold { get; init; } = TimeSpan.FromMilliseconds(10);

    /// <summary>Percent (0..100) of packets with 1 to 3 random bits flipped; the checksums must catch it.</summary>
    public double CorruptPercent { get; init; }

    /// <summary>A fixed delay added to every packet.</summary>
    public TimeSpan Delay { get; init; }

    /// <summary>A random extra delay, uniform in [0, <see cref="DelayJitter"/>], added to every packet (it may reorder them).</summary>
    public TimeSpan DelayJitter { get; init; }

    /// <summary>
    /// The link's rate in bytes per second (0: unlimited). A token bucket holding
    /// <see cref="RateLimitBurstBytes"/> lets bursts through; beyond it packets queue, and beyond
    /// <see cref="RateLimitQueuePackets"/> queued packets they are dropped, like a router's tail drop.
    /// </summary>
    public long RateLimitBytesPerSecond { get; init; }

    /// <summary>The token bucket's size in bytes (0: 10 ms worth of the rate, at least 3000 bytes).</summary>
    public int RateLimitBurstBytes { get; init; }

    /// <summary>Packets the rate limiter queues at most before it drops.</summary>
    public int RateLimitQueuePackets { get; init; } = 100;

    /// <summary>The seed of the random decisions (null: a random seed, reported by <see cref="FaultInjectingDevice.Seed"/>).</summary>
    public int? Seed { get; init; }

    /// <summary>True when these settings change nothing: the device is then transparent.</summary>
    public bool IsNone =>
        LossPercent == 0 && DuplicatePercent == 0 && ReorderPercent == 0 && CorruptPercent == 0
        && Delay == TimeSpan.Zero && DelayJitter == TimeSpan.Zero && RateLimitBytesPerSecond == 0;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first setting out of range.</summary>
    public void Validate()
    {
        CheckPercent(LossPercent, nameof(LossPercent));
        CheckPercent(DuplicatePercent, nameof(DuplicatePercent));
        CheckPercent(ReorderPercent, nameof(ReorderPercent));
        CheckPercent(CorruptPercent, nameof(CorruptPercent));
        if (ReorderHold < TimeSpan.Zero || Delay < TimeSpan.Zero || DelayJitter < TimeSpan.Zero)
            throw new ArgumentException("ReorderHold, Delay and DelayJitter cannot be negative.");
        if (ReorderHold > TimeSpan.FromSeconds(10) || Delay > TimeSpan.FromSeconds(10) || DelayJitter > TimeSpan.FromSeconds(10))
            throw new ArgumentException("ReorderHold, Delay and DelayJitter are at most 10 seconds.");
        if (RateLimitBytesPerSecond < 0 || RateLimitBurstBytes < 0)
            throw new ArgumentException("RateLimitBytesPerSecond and RateLimitBurstBytes cannot be negative.");
        if (RateLimitQueuePackets < 0)
            throw new ArgumentException("RateLimitQueuePackets cannot be negative.");
    }

    private static void CheckPercent(double value, string name)
    {
        if (!(value >= 0 && value <= 100))
            throw new ArgumentException($"{name} {value} is outside 0..100.", name);
    }
}
