using System.Buffers;

namespace NetStack.Engine;

/// <summary>
/// A decorator over any <see cref="IPacketDevice"/> that drops, duplicates, reorders, corrupts,
/// delays and rate-limits packets, separately per direction ("in": read from the inner device,
/// "out": written by the stack), with seeded random decisions. Every fault is counted in
/// <see cref="Statistics"/> (<c>faults.in.drop</c>, <c>faults.out.corrupt</c>, ...); a stack
/// started on this device shares these counters.
/// </summary>
/// <remarks>
/// Nothing blocks: held packets (delayed, reordered, rate-queued) wait in a release queue per
/// direction, ordered by due time. Outbound packets due are written on every <see cref="Write"/>
/// and every <see cref="TryRead"/>; <see cref="TryRead"/> shortens its wait on the inner device to
/// the next due time of either direction, so the engine loop's read is also the release clock.
/// A packet held by a <see cref="Write"/> from another thread than the reader wakes the reader so
/// its wait is recomputed. Corruption flips 1 to 3 bits at distinct positions within a 16-bit word
/// (byte parity and bit differ), which the Internet checksum (RFC 1071) always detects: the
/// complement sum changes by a signed sum of distinct powers of two, never 0 modulo 0xFFFF. Flips
/// in the same bit of two words could cancel and pass every checksum, which would test luck rather
/// than the stack.
/// </remarks>
public sealed class FaultInjectingDevice : IPacketDevice
{
    private readonly IPacketDevice _inner;
    private readonly object _gate = new();
    private readonly Direction _in;
    private readonly Direction _out;
    private readonly TimeProvider _time;
    private readonly long _epoch;
    private volatile int _readerThread = -1;

    /// <summary>The same settings in both directions (their seeds are derived from one seed).</summary>
    /// <param name="inner">The device underneath; this decorator owns and disposes it.</param>
    /// <param name="settings">The faults.</param>
    public FaultInjectingDevice(IPacketDevice inner, FaultSettings settings)
        : this(inner, settings, settings)
    {
    }

    /// <summary>Separate settings for packets read (<paramref name="inbound"/>) and written (<paramref name="outbound"/>).</summary>
    /// <param name="inner">The device underneath; this decorator owns and disposes it.</param>
    /// <param name="inbound">Faults on packets read from <paramref name="inner"/> (towards the stack).</param>
    /// <param name="outbound">Faults on packets the stack writes.</param>
    /// <exception cref="ArgumentException">A setting is out of range.</exception>
    public FaultInjectingDevice(IPacketDevice inner, FaultSettings inbound, FaultSettings outbound)
        : this(inner, inbound, outbound, TimeProvider.System)
    {
    }

    /// <summary>
    /// Separate settings per direction, with the delays and the rate limit measured on
    /// <paramref name="time"/> instead of the system clock: a test can step a manual clock and see
    /// exactly which packets are due.
    /// </summary>
    /// <param name="inner">The device underneath; this decorator owns and disposes it.</param>
    /// <param name="inbound">Faults on packets read from <paramref name="inner"/> (towards the stack).</param>
    /// <param name="outbound">Faults on packets the stack writes.</param>
    /// <param name="time">The clock of the delays and the rate limit. Waits in <see cref="TryRead"/>
    /// still pass in real time: with a manual clock, step it and call again.</param>
    /// <exception cref="ArgumentException">A setting is out of range.</exception>
    public FaultInjectingDevice(IPacketDevice inner, FaultSettings inbound, FaultSettings outbound, TimeProvider time)
    {
        ArgumentNullException.ThrowIfNull(inner);
        ArgumentNullException.ThrowIfNull(inbound);
        ArgumentNullException.ThrowIfNull(outbound);
        ArgumentNullException.ThrowIfNull(time);
        _time = time;
        _epoch = time.GetTimestamp();
        inbound.Validate();
        outbound.Validate();
        _inner = inner;
        Seed = inbound.Seed ?? outbound.Seed ?? Random.Shared.Next();
        // Two generators, so one direction's decisions do not depend on how the other's interleave.
        _in = new Direction(inbound, inbound.Seed ?? Seed, "faults.in.");
        _out = new Direction(outbound, unchecked((outbound.Seed ?? Seed) * 31 + 17), "faults.out.");
    }

    /// <summary>The seed in use (the settings' seed, or the random one picked when they had none).</summary>
    public int Seed { get; }

    /// <summary>The fault counters; <see cref="NetworkStack"/> reports its own counters here too when started on this device.</summary>
    public NetStackStatistics Statistics { get; } = new();

    /// <summary>The device underneath.</summary>
    public IPacketDevice Inner => _inner;

    /// <inheritdoc/>
    public int Mtu => _inner.Mtu;

    // Microseconds since the device was made.
    private long Now() => (long)(_time.GetElapsedTime(_epoch).Ticks / (TimeSpan.TicksPerMillisecond / 1000));

    /// <inheritdoc/>
    public bool TryRead(Span<byte> buffer, int millisecondsTimeout, out int length)
    {
        _readerThread = Environment.CurrentManagedThreadId;
        long start = Now();
        long deadline = millisecondsTimeout < 0 ? long.MaxValue : start + millisecondsTimeout * 1000L;
        bool attempted = false;
        while (true)
        {
            long now = Now();
            long next;
            lock (_gate)
            {
                FlushOutbound(now);
                if (_in.TakeDue(now, buffer, out length))
                    return true;
                next = Math.Min(deadline, Math.Min(_in.NextDue, _out.NextDue));
            }
            if (attempted && now >= deadline)
                return false;
            int wait = next == long.MaxValue ? -1 : (int)Math.Clamp((next - now + 999) / 1000, 0, int.MaxValue);
            attempted = true;
            if (_inner.TryRead(buffer, wait, out int read))
            {
                if (_in.Settings.IsNone)
                {
                    length = read;
                    return true;
                }
                lock (_gate)
                    _in.Process(buffer[..read], Now(), Statistics);
                continue;
            }
            // Woken (by the stack or by a held write) before anything came due: the caller decides.
            if (Now() < next)
            {
                length = 0;
                return false;
            }
        }
    }

    /// <inheritdoc/>
    public void Write(ReadOnlySpan<byte> packet)
    {
        if (_out.Settings.IsNone)
        {
            _inner.Write(packet);
            return;
        }
        if (packet.IsEmpty)
            throw new ArgumentException("The packet is empty.", nameof(packet));
        // Checked now: a held packet failing later would surface in an unrelated call.
        if (packet.Length > Mtu)
            throw new ArgumentException($"A packet of {packet.Length} bytes exceeds the MTU of {Mtu}.", nameof(packet));
        bool held;
        lock (_gate)
        {
            long now = Now();
            _out.Process(packet, now, Statistics);
            FlushOutbound(now);
            held = _out.NextDue != long.MaxValue;
        }
        // The reader's wait must now end at the held packet's due time.
        if (held && Environment.CurrentManagedThreadId != _readerThread)
            _inner.Wake();
    }

    private void FlushOutbound(long now)
    {
        while (_out.TryTakeDue(now, out var held))
        {
            try
            {
                _inner.Write(held.Buffer.AsSpan(0, held.Length));
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(held.Buffer);
            }
        }
    }

    /// <inheritdoc/>
    public void Wake() => _inner.Wake();

    /// <summary>Drops every held packet and disposes the inner device.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            _in.Clear();
            _out.Clear();
        }
        _inner.Dispose();
    }

    private readonly record struct Held(byte[] Buffer, int Length);

    /// <summary>One direction's settings, random generator, release queue and token bucket.</summary>
    private sealed class Direction(FaultSettings settings, int seed, string prefix)
    {
        public readonly FaultSettings Settings = settings;
        private readonly Random _random = new(seed);
        private readonly string _drop = prefix + "drop";
        private readonly string _duplicate = prefix + "duplicate";
        private readonly string _reorder = prefix + "reorder";
        private readonly string _corrupt = prefix + "corrupt";
        private readonly string _delay = prefix + "delay";
        private readonly string _rateQueued = prefix + "rate-queued";
        private readonly string _rateDrop = prefix + "rate-drop";

        // Held packets by (due time, arrival order): equal due times keep their order.
        private readonly PriorityQueue<Held, (long Due, long Order)> _held = new();
        private long _order;

        // Reordered packets waiting for the next packet to overtake them, with their latest due time.
        private readonly List<(Held Packet, long Due)> _reordered = [];

        // Token bucket (RFC 2697's single-rate idea, with debt): tokens may go negative, and a
        // packet finding debt waits until the debt is paid at the rate. Release times of packets
        // still queued bound the queue.
        private double _tokens = double.NaN;
        private long _lastRefill;
        private readonly Queue<long> _rateReleases = new();

        public long NextDue
        {
            get
            {
                long next = _held.TryPeek(out _, out var key) ? key.Due : long.MaxValue;
                foreach (var (_, due) in _reordered)
                    next = Math.Min(next, due);
                return next;
            }
        }

        private bool Chance(double percent) => percent > 0 && _random.NextDouble() * 100 < percent;

        public void Process(ReadOnlySpan<byte> packet, long now, NetStackStatistics statistics)
        {
            // Decide everything up front, in a fixed order, so a seed gives the same decisions.
            bool drop = Chance(Settings.LossPercent);
            bool corrupt = Chance(Settings.CorruptPercent);
            bool duplicate = Chance(Settings.DuplicatePercent);
            bool reorder = Chance(Settings.ReorderPercent);
            long jitter = Settings.DelayJitter > TimeSpan.Zero
                ? (long)(_random.NextDouble() * Settings.DelayJitter.TotalMicroseconds)
                : 0;
            if (drop)
            {
                statistics.Increment(_drop);
                return;
            }
            long due = now;
            if (Settings.RateLimitBytesPerSecond > 0)
            {
                if (!RateAdmit(packet.Length, now, out long release))
                {
                    statistics.Increment(_rateDrop);
                    return;
                }
                if (release > now)
                    statistics.Increment(_rateQueued);
                due = release;
            }
            long delay = (long)Settings.Delay.TotalMicroseconds + jitter;
            if (delay > 0)
            {
                statistics.Increment(_delay);
                due += delay;
            }
            var first = Copy(packet);
            if (corrupt && packet.Length > 0)
            {
                Corrupt(first);
                statistics.Increment(_corrupt);
            }
            if (reorder)
            {
                statistics.Increment(_reorder);
                _reordered.Add((first, due + (long)Settings.ReorderHold.TotalMicroseconds));
            }
            else
            {
                Schedule(first, due);
                // The packets held for reordering go right after this one.
                foreach (var (held, _) in _reordered)
                    Schedule(held, due);
                _reordered.Clear();
            }
            if (duplicate)
            {
                statistics.Increment(_duplicate);
                Schedule(Copy(first.Buffer.AsSpan(0, first.Length)), due);
            }
        }

        private bool RateAdmit(int length, long now, out long release)
        {
            double rate = Settings.RateLimitBytesPerSecond / 1e6; // bytes per microsecond
            double burst = Settings.RateLimitBurstBytes > 0
                ? Settings.RateLimitBurstBytes
                : Math.Max(3000, Settings.RateLimitBytesPerSecond / 100.0);
            if (double.IsNaN(_tokens))
            {
                _tokens = burst;
                _lastRefill = now;
            }
            _tokens = Math.Min(burst, _tokens + (now - _lastRefill) * rate);
            _lastRefill = now;
            while (_rateReleases.TryPeek(out long r) && r <= now)
                _rateReleases.Dequeue();
            release = now;
            if (_tokens >= length)
            {
                _tokens -= length;
                return true;
            }
            if (_rateReleases.Count >= Settings.RateLimitQueuePackets)
                return false;
            _tokens -= length;
            release = now + (long)Math.Ceiling(-_tokens / rate);
            _rateReleases.Enqueue(release);
            return true;
        }

        private void Corrupt(Held packet)
        {
            // 1 to 3 flips at distinct (byte parity, bit) positions: always caught by the checksum.
            int flips = _random.Next(1, 4);
            Span<int> used = stackalloc int[3];
            int done = 0;
            int attempts = 0;
            while (done < flips && attempts++ < 64)
            {
                int index = _random.Next(packet.Length);
                int bit = _random.Next(8);
                int position = (index & 1) * 8 + bit;
                if (used[..done].Contains(position))
                    continue;
                used[done++] = position;
                packet.Buffer[index] ^= (byte)(1 << bit);
            }
        }

        private static Held Copy(ReadOnlySpan<byte> packet)
        {
            var buffer = ArrayPool<byte>.Shared.Rent(packet.Length);
            packet.CopyTo(buffer);
            return new Held(buffer, packet.Length);
        }

        private void Schedule(Held packet, long due) => _held.Enqueue(packet, (due, _order++));

        public bool TryTakeDue(long now, out Held packet)
        {
            // Reordered packets whose successor never came are released at their hold limit.
            for (int i = 0; i < _reordered.Count; i++)
            {
                if (_reordered[i].Due <= now)
                {
                    Schedule(_reordered[i].Packet, _reordered[i].Due);
                    _reordered.RemoveAt(i--);
                }
            }
            if (_held.TryPeek(out packet, out var key) && key.Due <= now)
            {
                _held.Dequeue();
                return true;
            }
            packet = default;
            return false;
        }

        public bool TakeDue(long now, Span<byte> buffer, out int length)
        {
            length = 0;
            if (!TryTakeDue(now, out var held))
                return false;
            // Like a TUN read into a short buffer: the packet is cut to the buffer.
            length = Math.Min(held.Length, buffer.Length);
            held.Buffer.AsSpan(0, length).CopyTo(buffer);
            ArrayPool<byte>.Shared.Return(held.Buffer);
            return true;
        }

        public void Clear()
        {
            while (_held.TryDequeue(out var held, out _))
                ArrayPool<byte>.Shared.Return(held.Buffer);
            foreach (var (held, _) in _reordered)
                ArrayPool<byte>.Shared.Return(held.Buffer);
            _reordered.Clear();
        }
    }
}
