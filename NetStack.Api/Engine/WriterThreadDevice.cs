namespace NetStack.Engine;

/// <summary>
/// Hands the writes of an <see cref="IPacketDevice"/> to a thread of its own
/// (<see cref="NetStackOptions.TunWriterThread"/>). Without TUN offloads each packet costs a
/// write(2), and the kernel runs its own TCP for the packet inside that call (for an ACK of
/// ours: the kernel sender's ACK processing and its next segments), on the thread that writes.
/// Here that thread is not the engine loop, which goes back to reading. A packet is handed over
/// while the reader is in a burst (its last <see cref="TryRead"/> found a packet) or while
/// earlier packets still wait for the writer thread or are being written by it; otherwise
/// (with <c>inlineWhenIdle</c>, the default) it is written on the caller's thread at once,
/// which spares an idle exchange the writer's wake-up. Handed-over packets are copied into
/// fixed slots (no allocation per packet) and written in order; when every slot is taken the
/// caller waits, like a blocking write. A write that fails on the writer thread is counted as
/// <c>device.write-error</c> and the packet is lost, as when it fails on the loop. Reads and
/// <see cref="Wake"/> go straight to the inner device. Any number of threads may write.
/// </summary>
public sealed class WriterThreadDevice : IPacketDevice
{
    private readonly IPacketDevice _inner;
    private readonly Thread _thread;
    private readonly object _gate = new();
    private readonly byte[][] _slots;
    private readonly int[] _lengths;
    private readonly Stack<int> _free = new();
    private readonly Queue<int> _ready = new();
    private bool _writerSleeping;
    private bool _writerBusy;
    private bool _producerWaiting;
    private bool _stopping;
    // Whether the last read found a packet: the reader is in a burst (more work behind this write).
    private volatile bool _readerBusy;
    // A packet was queued in a burst without waking the sleeping writer (WakeBatch).
    private volatile bool _wakeOwed;
    private const int WakeBatch = 8;
    private readonly bool _inlineWhenIdle;
    private long _inlineWrites;
    private long _handedOver;

    /// <summary>Starts the writer thread over <paramref name="inner"/>, which it owns.</summary>
    /// <param name="inner">The device to write to.</param>
    /// <param name="queueBytes">About how many bytes may wait for the writer: slots of one MTU each, 16 to 4096 of them.</param>
    /// <param name="inlineWhenIdle">Write on the caller's thread when the reader is idle and nothing is queued (true), or always hand over (false).</param>
    /// <exception cref="ArgumentNullException"><paramref name="inner"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="queueBytes"/> is not positive.</exception>
    public WriterThreadDevice(IPacketDevice inner, int queueBytes = 4 << 20, bool inlineWhenIdle = true)
    {
        _inlineWhenIdle = inlineWhenIdle;
        ArgumentNullException.ThrowIfNull(inner);
        ArgumentOutOfRangeException.ThrowIfLessThan(queueBytes, 1);
        _inner = inner;
        int count = Math.Clamp(queueBytes / Math.Max(1, inner.Mtu), 16, 4096);
        _slots = new byte[count][];
        _lengths = new int[count];
        for (var i = count - 1; i >= 0; i--)
        {
            _slots[i] = new byte[inner.Mtu];
            _free.Push(i);
        }
        _thread = new Thread(Run) { IsBackground = true, Name = "netstack writer" };
        _thread.Start();
    }

    private long _writeErrors;

    private NetStackStatistics? _statistics;
    private NetStackStatistics.Counter? _inlineCounter, _handedOverCounter;

    /// <summary>Where write errors and the two ways of writing are counted too (the stack sets its own).</summary>
    internal NetStackStatistics? Statistics
    {
        get => _statistics;
        set
        {
            _statistics = value;
            _inlineCounter = value?.Handle("device.writer.inline");
            _handedOverCounter = value?.Handle("device.writer.handed-over");
        }
    }

    /// <summary>The device written to.</summary>
    public IPacketDevice Inner => _inner;

    /// <summary>Packets whose write failed on the writer thread (they were lost).</summary>
    public long WriteErrors => Interlocked.Read(ref _writeErrors);

    /// <summary>Packets that may wait for the writer at once.</summary>
    public int QueueSlots => _slots.Length;

    /// <inheritdoc/>
    public int Mtu => _inner.Mtu;

    /// <inheritdoc/>
    public bool TryRead(Span<byte> buffer, int millisecondsTimeout, out int length)
    {
        // A wake held back for the burst is given before the reader may wait: the packets it
        // waits for may be the answers to those queued.
        if (millisecondsTimeout != 0 && _wakeOwed)
            WakeWriter();
        bool read = _inner.TryRead(buffer, millisecondsTimeout, out length);
        _readerBusy = read;
        if (!read && _wakeOwed)
            WakeWriter();
        return read;
    }

    private void WakeWriter()
    {
        lock (_gate)
        {
            _wakeOwed = false;
            if (_writerSleeping && _ready.Count > 0)
                Monitor.PulseAll(_gate);
        }
    }

    /// <summary>Packets written on the caller's thread because the reader was idle and nothing was queued.</summary>
    public long InlineWrites => Interlocked.Read(ref _inlineWrites);

    /// <summary>Packets handed to the writer thread.</summary>
    public long HandedOver => Interlocked.Read(ref _handedOver);

    /// <summary>Queues a copy of <paramref name="packet"/> for the writer thread; waits while the queue is full.</summary>
    /// <param name="packet">One packet, at most <see cref="Mtu"/> bytes.</param>
    /// <exception cref="ArgumentException">The packet is empty or longer than the MTU.</exception>
    /// <exception cref="ObjectDisposedException">The device is disposed.</exception>
    public void Write(ReadOnlySpan<byte> packet) => WriteGather(packet, default, default);

    /// <summary>Queues one copy of the three pieces, joined, for the writer thread; waits while the queue is full.</summary>
    /// <param name="head">The packet's first bytes.</param>
    /// <param name="payload">The bytes after them.</param>
    /// <param name="payloadTail">The bytes after those.</param>
    /// <exception cref="ArgumentException">The packet is empty or longer than the MTU.</exception>
    /// <exception cref="ObjectDisposedException">The device is disposed.</exception>
    public void WriteGather(ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload, ReadOnlySpan<byte> payloadTail)
    {
        int length = head.Length + payload.Length + payloadTail.Length;
        if (length == 0)
            throw new ArgumentException("The packet is empty.", nameof(head));
        if (length > Mtu)
            throw new ArgumentException($"A packet of {length} bytes exceeds the MTU of {Mtu}.", nameof(head));
        int slot;
        if (_inlineWhenIdle && !_readerBusy)
        {
            // The reader found nothing on its last read: no burst is waiting behind this write, so
            // a hand-off would only add the writer's wake-up to the packet's latency (a request's
            // answer, say). Written here when nothing queued is still to go before it (order).
            bool inline;
            lock (_gate)
            {
                ObjectDisposedException.ThrowIf(_stopping, this);
                inline = _ready.Count == 0 && !_writerBusy;
            }
            if (inline)
            {
                _inner.WriteGather(head, payload, payloadTail);
                Interlocked.Increment(ref _inlineWrites);
                _inlineCounter?.Increment();
                return;
            }
        }
        lock (_gate)
        {
            while (true)
            {
                ObjectDisposedException.ThrowIf(_stopping, this);
                if (_free.TryPop(out slot))
                    break;
                _producerWaiting = true;
                Monitor.Wait(_gate);
                _producerWaiting = false;
            }
        }
        var destination = _slots[slot].AsSpan();
        head.CopyTo(destination);
        payload.CopyTo(destination[head.Length..]);
        payloadTail.CopyTo(destination[(head.Length + payload.Length)..]);
        _lengths[slot] = length;
        Interlocked.Increment(ref _handedOver);
        _handedOverCounter?.Increment();
        lock (_gate)
        {
            _ready.Enqueue(slot);
            // In a burst the sleeping writer is woken once per WakeBatch packets, or when the
            // burst ends (TryRead), not for each packet: a wake-up costs both threads a few µs.
            if (_writerSleeping)
            {
                if (!_readerBusy || _ready.Count >= WakeBatch)
                {
                    _wakeOwed = false;
                    Monitor.PulseAll(_gate);
                }
                else
                    _wakeOwed = true;
            }
        }
    }

    /// <inheritdoc/>
    public void Wake() => _inner.Wake();

    private void Run()
    {
        var batch = new List<int>();
        while (true)
        {
            lock (_gate)
            {
                while (_ready.Count == 0)
                {
                    if (_stopping)
                        return;
                    _writerSleeping = true;
                    Monitor.Wait(_gate);
                    _writerSleeping = false;
                }
                while (_ready.TryDequeue(out int slot))
                    batch.Add(slot);
                _writerBusy = true;
            }
            foreach (int slot in batch)
            {
                try
                {
                    _inner.Write(_slots[slot].AsSpan(0, _lengths[slot]));
                }
                catch (ObjectDisposedException)
                {
                    // Disposed under us: what is left is lost, as on the loop.
                }
                catch (Exception)
                {
                    Interlocked.Increment(ref _writeErrors);
                    Statistics?.Increment("device.write-error");
                }
            }
            lock (_gate)
            {
                foreach (int slot in batch)
                    _free.Push(slot);
                _writerBusy = false;
                if (_producerWaiting)
                    Monitor.PulseAll(_gate);
            }
            batch.Clear();
        }
    }

    /// <summary>Writes what is queued (for at most a second), stops the thread and disposes the inner device.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_stopping)
                return;
            _stopping = true;
            Monitor.PulseAll(_gate);
        }
        _thread.Join(TimeSpan.FromSeconds(1));
        _inner.Dispose();
    }
}
