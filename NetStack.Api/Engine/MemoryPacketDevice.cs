namespace NetStack.Engine;

/// <summary>
/// An in-memory <see cref="IPacketDevice"/>: tests <see cref="Inject"/> packets as if they came from
/// the network and take what the engine wrote with <see cref="TryTakeWritten"/>. Deterministic:
/// nothing is lost, reordered or delayed.
/// </summary>
public sealed class MemoryPacketDevice : IPacketDevice
{
    private readonly object _gate = new();
    private readonly Queue<byte[]> _inbound = new();
    private readonly Queue<byte[]> _outbound = new();
    private bool _woken;
    private bool _disposed;

    /// <summary>A device with the given MTU.</summary>
    /// <param name="mtu">The link MTU (68..65535).</param>
    public MemoryPacketDevice(int mtu = 1500)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(mtu, 68);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(mtu, 65535);
        Mtu = mtu;
    }

    /// <inheritdoc/>
    public int Mtu { get; }

    /// <summary>Queues a packet for the engine to read (a copy is taken).</summary>
    /// <param name="packet">The packet's bytes.</param>
    public void Inject(ReadOnlySpan<byte> packet)
    {
        var copy = packet.ToArray();
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _inbound.Enqueue(copy);
            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>
    /// Queues several packets at once (copies are taken): the engine finds them all queued
    /// together, as packets that arrived while it was busy, and reads them in one burst.
    /// </summary>
    /// <param name="packets">The packets' bytes, in order.</param>
    public void InjectAll(IEnumerable<byte[]> packets)
    {
        ArgumentNullException.ThrowIfNull(packets);
        var copies = packets.Select(p => p.ToArray()).ToList();
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            foreach (var copy in copies)
                _inbound.Enqueue(copy);
            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>Takes the oldest packet the engine wrote, if any.</summary>
    /// <param name="packet">The packet, or null.</param>
    public bool TryTakeWritten(out byte[] packet)
    {
        lock (_gate)
        {
            return _outbound.TryDequeue(out packet!);
        }
    }

    /// <summary>Waits up to <paramref name="timeout"/> for a packet the engine wrote and takes it; null when none came.</summary>
    /// <param name="timeout">How long to wait.</param>
    public byte[]? WaitWritten(TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        lock (_gate)
        {
            while (_outbound.Count == 0)
            {
                var left = deadline - DateTime.UtcNow;
                if (left <= TimeSpan.Zero)
                    return null;
                Monitor.Wait(_gate, left);
            }
            return _outbound.Dequeue();
        }
    }

    /// <inheritdoc/>
    public bool TryRead(Span<byte> buffer, int millisecondsTimeout, out int length)
    {
        length = 0;
        var deadline = millisecondsTimeout < 0 ? DateTime.MaxValue : DateTime.UtcNow.AddMilliseconds(millisecondsTimeout);
        byte[] packet;
        lock (_gate)
        {
            while (true)
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                if (_inbound.Count > 0)
                {
                    packet = _inbound.Dequeue();
                    break;
                }
                if (_woken)
                {
                    _woken = false;
                    return false;
                }
                var left = deadline == DateTime.MaxValue ? Timeout.InfiniteTimeSpan : deadline - DateTime.UtcNow;
                if (left != Timeout.InfiniteTimeSpan && left <= TimeSpan.Zero)
                    return false;
                Monitor.Wait(_gate, left);
            }
        }
        // Like a TUN read into a short buffer: the packet is cut to the buffer.
        length = Math.Min(packet.Length, buffer.Length);
        packet.AsSpan(0, length).CopyTo(buffer);
        return true;
    }

    /// <inheritdoc/>
    public void Write(ReadOnlySpan<byte> packet)
    {
        if (packet.IsEmpty)
            throw new ArgumentException("The packet is empty.", nameof(packet));
        if (packet.Length > Mtu)
            throw new ArgumentException($"A packet of {packet.Length} bytes exceeds the MTU of {Mtu}.", nameof(packet));
        var copy = packet.ToArray();
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _outbound.Enqueue(copy);
            Monitor.PulseAll(_gate);
        }
    }

    /// <inheritdoc/>
    public void Wake()
    {
        lock (_gate)
        {
            _woken = true;
            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>Ends every wait with <see cref="ObjectDisposedException"/>.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            _disposed = true;
            Monitor.PulseAll(_gate);
        }
    }
}
