using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.CompilerServices;

namespace NetStack;

// The connection as an IDuplexPipe (System.IO.Pipelines) over its own rings, without a copy of
// its own: the reader hands out the receive ring's readable bytes, the writer hands out the send
// ring's free space. State shared with the loop stays under _gate, as for the Stream surface.
public sealed partial class TcpConnection : IDuplexPipe
{
    // Set (under _gate) by the first use of Input or Output; the Stream's reads and writes then throw.
    private bool _pipeMode;
    private ConnectionPipeReader? _pipeReader;
    private ConnectionPipeWriter? _pipeWriter;

    // The pipe surface's state, made by the first use of Input or Output: a connection used as a
    // Stream (the idle-connection figure) does not carry it.
    private PipeState? _pipeState;

    private PipeState P => _pipeState ??= new PipeState();

    private sealed class PipeState
    {
        // ---- Reader state (under _gate) ---------------------------------------------------------------
        // A ReadResult's buffer is out: [_readerStart, _readerStart + its length) of the receive
        // stream, in the ring; it stays valid (and in place) until AdvanceTo.
        internal bool _readerHolds;
        internal long _readerStart;
        internal ReadOnlySequence<byte> _readerBuffer;
        // A one-slice buffer: its array and where it starts in it (see OffsetInReadLocked).
        internal byte[]? _readerArray;
        internal int _readerArrayStart;
        // The stream position the reader has examined up to: ReadAsync waits for bytes beyond it.
        internal long _examined;
        internal bool _readCancelPending;
        internal bool _inputCompleted;
        // A receive ring replaced by auto-tuning's growth while the reader held a buffer in it: it
        // goes back to the pool at the reader's AdvanceTo.
        internal byte[]? _retiredReceive;
        internal RingSegment? _segmentFirst;
        internal RingSegment? _segmentSecond;

        // ---- Writer state (under _gate) ---------------------------------------------------------------
        // The end of the bytes advanced into the send ring (not yet flushed when beyond _sendWritten).
        internal long _pipeWritten;
        // Bytes of the last GetMemory the writer may still advance (0: none; less after each Advance,
        // none after a flush) and where they lie.
        internal int _writerHeld;
        internal bool _writerHeldInRing;
        // Bytes advanced while the ring had no room for the memory asked: [start, length) of this
        // pooled array, moved into the ring by the next flush.
        internal byte[]? _overflow;
        internal int _overflowStart;
        internal int _overflowLength;
        internal bool _flushCancelPending;
        internal bool _outputCompleted;
    }

    /// <summary>
    /// The receiving half as a <see cref="PipeReader"/> over the connection's own receive buffer
    /// (no copy): <see cref="PipeReader.ReadAsync(CancellationToken)"/> returns the unread bytes
    /// (at most two slices of the ring), <see cref="PipeReader.AdvanceTo(SequencePosition, SequencePosition)"/>
    /// frees what was consumed and opens the receive window. <see cref="ReadResult.IsCompleted"/>
    /// is set once the peer's FIN arrived (the buffer then holds the rest of the stream).
    /// </summary>
    /// <remarks>
    /// The first use of <see cref="Input"/> or <see cref="Output"/> switches the connection to pipe
    /// mode: from then on the Stream's reads and writes throw <see cref="InvalidOperationException"/>
    /// (bytes read or written through the Stream before stay read or written). A reset, a timeout or
    /// an abort ends a read with an <see cref="IOException"/> wrapping the <see cref="SocketException"/>
    /// (as the Stream's reads); bytes that arrived before are returned first. Completing the reader
    /// discards unread and later bytes (the window stays open, as after the Stream is disposed).
    /// Disposing the connection completes both halves.
    /// </remarks>
    /// <exception cref="InvalidOperationException">A Stream read or write is in progress.</exception>
    /// <exception cref="ObjectDisposedException">The connection is disposed.</exception>
    public PipeReader Input
    {
        get
        {
            lock (_gate)
            {
                EnterPipeModeLocked();
                return _pipeReader ??= new ConnectionPipeReader(this);
            }
        }
    }

    /// <summary>
    /// The sending half as a <see cref="PipeWriter"/> over the connection's own send buffer (no
    /// copy): <see cref="PipeWriter.GetMemory(int)"/> hands out free space in the send ring,
    /// <see cref="PipeWriter.Advance(int)"/> and <see cref="PipeWriter.FlushAsync(CancellationToken)"/>
    /// commit it to be sent. <see cref="PipeWriter.FlushAsync(CancellationToken)"/> waits while less
    /// than a third of the send buffer is free (back-pressure, like the kernel's blocking send);
    /// <see cref="PipeWriter.Complete(Exception?)"/> half-closes (a FIN follows the data),
    /// completing with an exception resets the connection instead (RST).
    /// </summary>
    /// <remarks>
    /// When the ring has no room for the memory asked (it is full, or the free space wraps), the
    /// writer hands out a pooled overflow buffer whose bytes the next flush moves into the ring.
    /// <see cref="PipeWriter.WriteAsync(ReadOnlyMemory{byte}, CancellationToken)"/> copies straight
    /// into the ring (canceled by <see cref="PipeWriter.CancelPendingFlush"/>, it still writes: the
    /// rest waits in the overflow buffer for the next flush, as with <see cref="Pipe"/>). Flushing after a reset, a timeout or an abort throws an <see cref="IOException"/>
    /// wrapping the <see cref="SocketException"/>. See <see cref="Input"/> for pipe mode.
    /// </remarks>
    /// <exception cref="InvalidOperationException">A Stream read or write is in progress.</exception>
    /// <exception cref="ObjectDisposedException">The connection is disposed.</exception>
    public PipeWriter Output
    {
        get
        {
            lock (_gate)
            {
                EnterPipeModeLocked();
                return _pipeWriter ??= new ConnectionPipeWriter(this);
            }
        }
    }

    private void EnterPipeModeLocked()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_pipeMode)
            return;
        if (_readWaiter.IsArmed || _writeWaiter.IsArmed)
            throw new InvalidOperationException("A Stream read or write is in progress on this connection; the pipe (Input/Output) can be used once it has ended.");
        _pipeMode = true;
        P._examined = _recvConsumed;
        P._pipeWritten = _sendWritten;
    }

    // Under _gate: the Stream's reads and writes refuse a connection in pipe mode.
    private void ThrowIfPipeModeLocked()
    {
        if (_pipeMode)
            throw new InvalidOperationException("This connection is used as a pipe (Input/Output): read and write through the pipe, not the Stream.");
    }

    // Under _gate: the writer holds send-ring space or advanced bytes the loop does not know of,
    // so the ring may not move (auto-tuning's growth waits).
    private bool WriterHoldsSendRingLocked() =>
        _pipeMode && ((P._writerHeld > 0 && P._writerHeldInRing) || P._pipeWritten != _sendWritten);

    // ---- Reader -----------------------------------------------------------------------------------

    private ReadResult ReadResultLocked(bool canceled)
    {
        long length = _recvDelivered - _recvConsumed;
        ReadOnlySequence<byte> buffer;
        if (length == 0)
            buffer = ReadOnlySequence<byte>.Empty;
        else
        {
            var ring = _receive!;
            int start = (int)((_recvConsumed - _recvBase) % _receiveCapacity);
            int first = (int)Math.Min(length, _receiveCapacity - start);
            if (first == length)
            {
                buffer = new ReadOnlySequence<byte>(ring, start, first);
                P._readerArray = ring;
                P._readerArrayStart = start;
            }
            else
            {
                var a = P._segmentFirst ??= new RingSegment();
                var b = P._segmentSecond ??= new RingSegment();
                a.Set(ring.AsMemory(start, first), 0, b);
                b.Set(ring.AsMemory(0, (int)length - first), first, null);
                buffer = new ReadOnlySequence<byte>(a, 0, b, (int)length - first);
            }
            _ringsUsed = true;
        }
        P._readerHolds = true;
        P._readerStart = _recvConsumed;
        P._readerBuffer = buffer;
        return new ReadResult(buffer, canceled, _peerClosed);
    }

    // Under _gate: a result is ready without waiting (or the read must fail). False: wait.
    private bool TryReadLocked(out ReadResult result)
    {
        if (P._inputCompleted)
            throw new InvalidOperationException("Reading is not allowed after the reader was completed.");
        if (P._readerHolds)
            throw new InvalidOperationException("The previous read's buffer was not yet advanced (AdvanceTo).");
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (P._readCancelPending)
        {
            P._readCancelPending = false;
            result = ReadResultLocked(canceled: true);
            return true;
        }
        if (_recvDelivered > P._examined || _peerClosed)
        {
            result = ReadResultLocked(canceled: false);
            return true;
        }
        if (_error != SocketError.Success)
            throw Failure(_error);
        if (_aborted || _closed)
            throw Failure(SocketError.OperationAborted);
        result = default;
        return false;
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<ReadResult> PipeReadAsync(CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        while (true)
        {
            ValueTask wait;
            lock (_gate)
            {
                if (TryReadLocked(out var result))
                    return result;
                wait = _readWaiter.Arm(cancellationToken);
            }
            _readWaiter.RegisterCancellation();
            await wait.ConfigureAwait(false);
        }
    }

    private bool PipeTryRead(out ReadResult result)
    {
        lock (_gate)
            return TryReadLocked(out result);
    }

    private void PipeAdvanceTo(SequencePosition consumed, SequencePosition examined)
    {
        bool notify = false, wake = false;
        lock (_gate)
        {
            if (P._inputCompleted)
                throw new InvalidOperationException("Reading is not allowed after the reader was completed.");
            if (!P._readerHolds)
                throw new InvalidOperationException("No read to advance: AdvanceTo follows a ReadAsync or a successful TryRead.");
            long length = P._readerBuffer.Length;
            long c = OffsetInReadLocked(consumed);
            long e = OffsetInReadLocked(examined);
            if (c < 0 || c > length)
                throw new ArgumentOutOfRangeException(nameof(consumed), "The position is not in the buffer the last read returned.");
            if (e < c || e > length)
                throw new ArgumentOutOfRangeException(nameof(examined), "The position is not in the buffer the last read returned, or lies before the consumed one.");
            P._readerHolds = false;
            P._readerBuffer = default;
            P._readerArray = null;
            P._examined = Math.Max(P._readerStart + e, P._examined);
            if (c > 0)
            {
                _recvConsumed += c;
                _ringsUsed = true;
                NoteReadLocked(ref notify, ref wake);
            }
            if (P._retiredReceive is { } old)
            {
                P._retiredReceive = null;
                ReturnRing(old);
            }
        }
        if (notify)
            _stack.TcpReadHappened(this, wake);
        else if (wake)
            _stack.WakeLoop();
    }

    // Where a position of the last read's buffer lies from its start (-1: not one of its positions).
    // The buffer is one array slice from P._readerArrayStart, or two ring segments.
    private long OffsetInReadLocked(SequencePosition position)
    {
        object? owner = position.GetObject();
        int index = position.GetInteger();
        if (owner is RingSegment segment && (segment == P._segmentFirst || segment == P._segmentSecond))
            return segment.RunningIndex + index;
        if (P._readerBuffer.IsEmpty)
            return index == 0 ? 0 : -1;
        if (owner is byte[] array && P._readerBuffer.IsSingleSegment && ReferenceEquals(array, P._readerArray))
            return index - P._readerArrayStart;
        return -1;
    }

    private void PipeCancelPendingRead()
    {
        lock (_gate)
        {
            P._readCancelPending = true;
            _readWaiter.Complete();
        }
    }

    private void PipeCompleteReader()
    {
        bool notify = false, wake = false;
        lock (_gate)
        {
            if (P._inputCompleted)
                return;
            P._inputCompleted = true;
            P._readerHolds = false;
            P._readerBuffer = default;
            P._readerArray = null;
            if (P._retiredReceive is { } old)
            {
                P._retiredReceive = null;
                ReturnRing(old);
            }
            // Unread bytes are thrown away, and so are later ones (Deliver): the window stays open.
            if (!_disposed && _recvDelivered > _recvConsumed)
            {
                _recvConsumed = _recvDelivered;
                NoteReadLocked(ref notify, ref wake);
            }
            _readWaiter.Complete();
        }
        if (notify)
            _stack.TcpReadHappened(this, wake);
    }

    // Deliver's part for a completed reader: the delivered bytes are read and thrown away. Loop
    // thread, under _gate; the window command goes out after the lock (see Deliver).
    private bool DiscardForCompletedReaderLocked(ref bool wake)
    {
        if (_pipeState is not { _inputCompleted: true } || _disposed || _recvDelivered <= _recvConsumed)
            return false;
        _recvConsumed = _recvDelivered;
        bool notify = false;
        NoteReadLocked(ref notify, ref wake);
        return notify;
    }

    /// <summary>A ring slice in a two-slice <see cref="ReadOnlySequence{T}"/> (reused per connection).</summary>
    private sealed class RingSegment : ReadOnlySequenceSegment<byte>
    {
        public void Set(ReadOnlyMemory<byte> memory, long runningIndex, RingSegment? next)
        {
            Memory = memory;
            RunningIndex = runningIndex;
            Next = next;
        }
    }

    // ---- Writer -----------------------------------------------------------------------------------

    private Memory<byte> PipeGetMemory(int sizeHint)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(sizeHint);
        int want = Math.Max(sizeHint, 1);
        lock (_gate)
        {
            if (P._outputCompleted)
                throw new InvalidOperationException("Writing is not allowed after the writer was completed.");
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (P._overflowLength == P._overflowStart)
            {
                PrepareSendRingLocked();
                int free = _sendCapacity - (int)(P._pipeWritten - _sendAcked);
                int start = (int)((P._pipeWritten - _sendBase) % _sendCapacity);
                int contiguous = Math.Min(free, _sendCapacity - start);
                if (contiguous >= want)
                {
                    _send ??= RentRing(_sendCapacity);
                    _ringsUsed = true;
                    P._writerHeld = contiguous;
                    P._writerHeldInRing = true;
                    return _send.AsMemory(start, contiguous);
                }
            }
            // No room in the ring for this much: a pooled overflow buffer the next flush empties.
            var overflow = EnsureOverflowLocked(want);
            P._writerHeld = overflow.Length - P._overflowLength;
            P._writerHeldInRing = false;
            return overflow.AsMemory(P._overflowLength);
        }
    }

    // Under _gate: an overflow buffer with room for `want` more bytes after its live ones.
    private byte[] EnsureOverflowLocked(int want)
    {
        if (P._overflow is null || P._overflow.Length - P._overflowLength < want)
        {
            int live = P._overflowLength - P._overflowStart;
            var bigger = ArrayPool<byte>.Shared.Rent(Math.Max(live + want, Math.Max(4096, 2 * live)));
            if (P._overflow is { } old)
            {
                old.AsSpan(P._overflowStart, live).CopyTo(bigger);
                ArrayPool<byte>.Shared.Return(old);
            }
            P._overflow = bigger;
            P._overflowStart = 0;
            P._overflowLength = live;
            _stack.Statistics.Increment("tcp.pipe.overflow-buffers");
        }
        return P._overflow;
    }

    // Under _gate: a send ring that holds no byte (everything written is acknowledged, nothing
    // advanced or handed out) starts again at its first byte, so the writer gets it contiguous.
    private void PrepareSendRingLocked()
    {
        if (_sendAcked == _sendWritten && P._pipeWritten == _sendWritten && !(P._writerHeld > 0 && P._writerHeldInRing))
            _sendBase = _sendWritten;
    }

    private void PipeAdvance(int bytes)
    {
        lock (_gate)
        {
            if (P._outputCompleted)
                throw new InvalidOperationException("Writing is not allowed after the writer was completed.");
            if (bytes < 0 || bytes > P._writerHeld)
                throw new ArgumentOutOfRangeException(nameof(bytes), bytes, "More bytes than the last GetMemory/GetSpan handed out, or negative.");
            if (P._writerHeldInRing)
                P._pipeWritten += bytes;
            else
                P._overflowLength += bytes;
            // The rest of that memory stays the writer's (as with Pipe): Kestrel advances a
            // response's headers and then its body through one GetSpan.
            P._writerHeld -= bytes;
        }
    }

    private long PipeUnflushedBytes
    {
        get
        {
            lock (_gate)
                return P._pipeWritten - _sendWritten + (P._overflowLength - P._overflowStart);
        }
    }

    /// <summary>
    /// Commits the advanced bytes (and then <paramref name="source"/>) to the send ring and tells
    /// the loop, waiting while the ring has no room for what is left, and at the end while less
    /// than a third of it is free. <paramref name="completing"/>: the writer's Complete drains the
    /// overflow (the completed writer is no reason to stop).
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<FlushResult> PipeFlushAsync(ReadOnlyMemory<byte> source, bool completing, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        while (true)
        {
            ValueTask? wait = null;
            bool notify = false;
            lock (_gate)
            {
                if (P._outputCompleted && !completing)
                    throw new InvalidOperationException("Writing is not allowed after the writer was completed.");
                if (P._flushCancelPending && !completing)
                {
                    // As with Pipe, a canceled write still writes: what the ring could not take
                    // yet waits in the overflow buffer for the next flush.
                    P._flushCancelPending = false;
                    P._writerHeld = 0;
                    if (!source.IsEmpty)
                    {
                        source.Span.CopyTo(EnsureOverflowLocked(source.Length).AsSpan(P._overflowLength));
                        P._overflowLength += source.Length;
                    }
                    return new FlushResult(isCanceled: true, isCompleted: false);
                }
                ObjectDisposedException.ThrowIf(_disposed && !completing, this);
                P._writerHeld = 0; // Memory handed out before a flush is no longer the writer's.
                if (_error != SocketError.Success)
                    throw Failure(_error);
                if (_shutdown && !completing)
                    throw Failure(SocketError.Shutdown);
                if (_aborted || _closed)
                    throw Failure(SocketError.OperationAborted);
                PrepareSendRingLocked();
                int free = _sendCapacity - (int)(P._pipeWritten - _sendAcked);
                if (free > 0 && P._overflowLength > P._overflowStart)
                {
                    int n = Math.Min(free, P._overflowLength - P._overflowStart);
                    _send ??= RentRing(_sendCapacity);
                    CopyIn(_send, _sendCapacity, P._pipeWritten - _sendBase, P._overflow.AsSpan(P._overflowStart, n));
                    P._pipeWritten += n;
                    P._overflowStart += n;
                    free -= n;
                    if (P._overflowStart == P._overflowLength)
                    {
                        ArrayPool<byte>.Shared.Return(P._overflow!);
                        P._overflow = null;
                        P._overflowStart = P._overflowLength = 0;
                    }
                }
                if (free > 0 && P._overflowLength == P._overflowStart && !source.IsEmpty)
                {
                    int n = Math.Min(free, source.Length);
                    _send ??= RentRing(_sendCapacity);
                    CopyIn(_send, _sendCapacity, P._pipeWritten - _sendBase, source.Span[..n]);
                    P._pipeWritten += n;
                    source = source[n..];
                    free -= n;
                }
                if (P._pipeWritten != _sendWritten)
                {
                    _ringsUsed = true;
                    _sendWritten = P._pipeWritten;
                    notify = !_sendPosted;
                    _sendPosted = true;
                }
                bool done = P._overflowLength == P._overflowStart && source.IsEmpty;
                if (done && (completing || 3L * free >= _sendCapacity))
                {
                    if (notify)
                        goto Notify;
                    return new FlushResult(isCanceled: false, isCompleted: false);
                }
                if (!done && free > 0)
                    goto Notify; // Room appeared meanwhile: go round again.
                wait = _writeWaiter.Arm(cancellationToken);
            }
        Notify:
            if (notify)
                _stack.TcpWriteHappened(this);
            if (wait is { } pending)
            {
                _writeWaiter.RegisterCancellation();
                await pending.ConfigureAwait(false);
            }
        }
    }

    private void PipeCancelPendingFlush()
    {
        lock (_gate)
        {
            P._flushCancelPending = true;
            _writeWaiter.Complete();
        }
    }

    // Complete: the advanced bytes go out, then our FIN; with an exception the connection is reset.
    // Returns the drain of an overflow the ring could not take yet (null: nothing to wait for).
    private Task? PipeCompleteWriter(Exception? exception)
    {
        bool drain;
        lock (_gate)
        {
            if (P._outputCompleted)
                return null;
            P._outputCompleted = true;
            P._writerHeld = 0;
            NoteEndedLocked();
            P._flushCancelPending = false;
            drain = exception is null && !_disposed && !_aborted && !_closed && _error == SocketError.Success
                && (P._pipeWritten != _sendWritten || P._overflowLength > P._overflowStart);
        }
        if (exception is not null)
        {
            Abort();
            return null;
        }
        if (!drain)
        {
            ShutdownAfterComplete();
            return null;
        }
        return DrainThenShutdownAsync();
    }

    private async Task DrainThenShutdownAsync()
    {
        try
        {
            await PipeFlushAsync(default, completing: true, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            return; // The connection failed meanwhile: there is nothing left to close.
        }
        ShutdownAfterComplete();
    }

    private void ShutdownAfterComplete()
    {
        try
        {
            ShutdownWrite();
        }
        catch (ObjectDisposedException)
        {
            // Disposed meanwhile: the dispose sent the FIN.
        }
    }

    // Under _gate at the end: the pipe's pooled leftovers go back with the rings.
    private void ReleasePipeBuffersLocked()
    {
        // A connection used as a Stream has no pipe state to release (and P would make one).
        if (_pipeState is null)
            return;
        if (P._retiredReceive is { } retired)
        {
            P._retiredReceive = null;
            ReturnRing(retired);
        }
        if (P._overflow is { } overflow)
        {
            P._overflow = null;
            P._overflowStart = P._overflowLength = 0;
            ArrayPool<byte>.Shared.Return(overflow);
        }
    }

    // ---- End notification (for transports such as Kestrel's) --------------------------------------

    private Action<object?>? _ended;
    private object? _endedState;

    /// <summary>
    /// Calls <paramref name="callback"/> once, on the thread pool, when the connection is over for
    /// a pipe user: it failed (reset, timeout, abort, the stack's end), it was disposed, or the
    /// peer's FIN arrived and the writer completed. At once if it is over already.
    /// </summary>
    internal void OnEnded(Action<object?> callback, object? state)
    {
        lock (_gate)
        {
            _ended = callback;
            _endedState = state;
            NoteEndedLocked();
        }
    }

    // Under _gate, after any change the condition reads.
    private void NoteEndedLocked()
    {
        if (_ended is not { } callback)
            return;
        if (!(_error != SocketError.Success || _aborted || _closed || _disposed || (_peerClosed && P._outputCompleted)))
            return;
        _ended = null;
        ThreadPool.UnsafeQueueUserWorkItem(callback, _endedState, preferLocal: false);
        _endedState = null;
    }

    // ---- The two halves ---------------------------------------------------------------------------

    private sealed class ConnectionPipeReader(TcpConnection connection) : PipeReader
    {
        public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default) =>
            connection.PipeReadAsync(cancellationToken);

        public override bool TryRead(out ReadResult result) => connection.PipeTryRead(out result);

        public override void AdvanceTo(SequencePosition consumed) => connection.PipeAdvanceTo(consumed, consumed);

        public override void AdvanceTo(SequencePosition consumed, SequencePosition examined) =>
            connection.PipeAdvanceTo(consumed, examined);

        public override void CancelPendingRead() => connection.PipeCancelPendingRead();

        public override void Complete(Exception? exception = null) => connection.PipeCompleteReader();
    }

    private sealed class ConnectionPipeWriter(TcpConnection connection) : PipeWriter
    {
        public override Memory<byte> GetMemory(int sizeHint = 0) => connection.PipeGetMemory(sizeHint);

        public override Span<byte> GetSpan(int sizeHint = 0) => connection.PipeGetMemory(sizeHint).Span;

        public override void Advance(int bytes) => connection.PipeAdvance(bytes);

        public override ValueTask<FlushResult> FlushAsync(CancellationToken cancellationToken = default) =>
            connection.PipeFlushAsync(default, completing: false, cancellationToken);

        public override ValueTask<FlushResult> WriteAsync(ReadOnlyMemory<byte> source, CancellationToken cancellationToken = default) =>
            connection.PipeFlushAsync(source, completing: false, cancellationToken);

        public override void CancelPendingFlush() => connection.PipeCancelPendingFlush();

        public override bool CanGetUnflushedBytes => true;

        public override long UnflushedBytes => connection.PipeUnflushedBytes;

        public override void Complete(Exception? exception = null) => connection.PipeCompleteWriter(exception);

        public override ValueTask CompleteAsync(Exception? exception = null) =>
            connection.PipeCompleteWriter(exception) is { } drain ? new ValueTask(drain) : default;
    }
}
