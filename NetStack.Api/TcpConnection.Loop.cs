using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;
using NetStack.Core.Stack;
using NetStack.Core.Tcp;
using NetStack.Engine;

namespace NetStack;

// The loop's side of a connection: stores, deliveries, acknowledgments, state changes and
// failures the core's actions call for, under the connection's lock.
public sealed partial class TcpConnection
{
    // ---- Calls from the loop ----------------------------------------------------------------------

    /// <summary>Bytes the user has written so far; clears the "send notification pending" flag.</summary>
    internal long TakeWritten()
    {
        lock (_gate)
        {
            _sendPosted = false;
            return _sendWritten;
        }
    }

    /// <summary>Bytes the user has read so far; clears the "window notification pending" flag.</summary>
    internal long TakeConsumed()
    {
        lock (_gate)
        {
            _windowPosted = false;
            _windowPostedLazily = false;
            _consumedReported = _recvConsumed;
            return _recvConsumed;
        }
    }

    // Whether this read must wake the loop: the core's rule (ReceiveWindow.readWantsWindowUpdate),
    // given the buffer the loop believes unread (delivered and not reported read). Under _gate.
    private bool WindowUpdateUrgentLocked() =>
        ReceiveWindow.readWantsWindowUpdate(_receiveCapacity, _recvDelivered - _consumedReported);

    /// <summary>
    /// Where send-stream bytes [position, position + length) lie in the send ring, for a gather
    /// write: one piece, or two when the run wraps (loop only; the bytes stay put until acknowledged).
    /// </summary>
    internal void SendSlices(long position, int length, out ReadOnlySpan<byte> first, out ReadOnlySpan<byte> second)
    {
        var ring = _send!;
        int start = (int)((position - _sendBase) % _sendCapacity);
        int n = Math.Min(length, _sendCapacity - start);
        first = ring.AsSpan(start, n);
        second = ring.AsSpan(0, length - n);
    }

    /// <summary>Stores arriving bytes at receive-stream position <paramref name="position"/>.</summary>
    internal void Store(ReadOnlySpan<byte> data, long position)
    {
        if (_directArmed)
        {
            int direct = StoreDirect(data, position);
            if (direct == data.Length)
                return;
            data = data[direct..];
            position += direct;
        }
        var ring = _receive;
        // A ring that holds nothing (all that was stored in it has been read; the reader's count
        // is read without the lock first, and a stale one only defers this) takes these bytes,
        // in order or not, from its first byte on: the base moves to the next byte to read.
        if (ring is null || _recvStoredEnd <= Volatile.Read(ref _recvConsumed))
        {
            lock (_gate)
            {
                ring = _receive ??= RentRing(_receiveCapacity);
                if (_recvStoredEnd <= _recvConsumed && _recvDelivered == _recvConsumed)
                    _recvBase = _recvConsumed;
            }
        }
        CopyIn(ring, _receiveCapacity, position - _recvBase, data);
        _recvStoredEnd = Math.Max(_recvStoredEnd, position + data.Length);
        _ringsUsed = true; // loop only, like the sweep that clears it
    }

    /// <summary>
    /// A read took bytes (from the ring, or placed in its buffer by the loop): the loop learns of
    /// it through the window command, posted once until the loop takes it. The command wakes an
    /// idle loop only when the window the loop last heard of is small (see
    /// <see cref="WindowUpdateUrgentLocked"/>); otherwise it waits for the loop's next pass (a
    /// packet, a timer or a write's command), so an echo's read and write cost one wake-up and the
    /// reply carries the window instead of a pure window update going out before it. Called by
    /// the reader, never by the loop: a command the loop posted itself would run before the
    /// reader could answer.
    /// </summary>
    private void NoteReadLocked(ref bool notify, ref bool wake)
    {
        bool urgent = WindowUpdateUrgentLocked();
        if (!_windowPosted)
        {
            notify = true;
            wake = urgent;
            _windowPosted = true;
            _windowPostedLazily = !urgent;
        }
        else if (_windowPostedLazily && urgent)
        {
            // The command already queued did not wake the loop; now it must.
            _windowPostedLazily = false;
            wake = true;
        }
    }

    /// <summary>
    /// Receive without the ring: when a read waits with a buffer of its own, nothing is readable
    /// before <paramref name="position"/> and the data arrived in order, the loop copies it
    /// straight into the reader's buffer (one copy per byte instead of two: arrival into the ring
    /// and the ring into the reader) and counts it as read; the reader, when it returns, posts the
    /// same window command an ordinary read posts. Later in-order segments of the same burst go
    /// on filling the buffer; the read completes when the buffer is full or at the end of the
    /// burst. Returns how many bytes of <paramref name="data"/> went there (0: none; the rest
    /// goes into the ring, behind them). Loop only.
    /// </summary>
    private int StoreDirect(ReadOnlySpan<byte> data, long position)
    {
        int n;
        bool defer = false;
        lock (_gate)
        {
            if (!_readWaiter.IsArmed || _directBuffer.IsEmpty
                || position != _recvConsumed || _recvDelivered != _recvConsumed)
                return 0;
            n = Math.Min(data.Length, _directBuffer.Length - _directFilled);
            data[..n].CopyTo(_directBuffer.Span[_directFilled..]);
            _directFilled += n;
            // Read already: Deliver (which follows for in-order data) finds the stream there.
            _recvConsumed += n;
            _recvDelivered = _recvConsumed;
            _readWaiter.HoldsResult = true;
            if (_directFilled == _directBuffer.Length)
            {
                _directArmed = false;
                _readWaiter.Complete();
            }
            else
                defer = DeferWakeLocked(_readWaiter);
        }
        _stack.Statistics.Increment("tcp.receive.direct-bytes", n);
        if (defer)
            _stack.DeferWake(this);
        // The reader posts the window command when it returns (NoteReadLocked).
        return n;
    }

    /// <summary>
    /// Auto-tuning grew the receive buffer to <paramref name="size"/> bytes (loop only, before the
    /// larger window is offered): a larger pooled ring takes every byte that may be unread or
    /// stored out of order, [consumed, consumed + old capacity), from its first byte on (the base
    /// moves to the consumed position).
    /// </summary>
    internal void GrowReceiveBuffer(int size)
    {
        lock (_gate)
        {
            if (size <= _receiveCapacity)
                return;
            var old = _receive;
            if (old is not null)
            {
                var ring = RentRing(size);
                int oldCapacity = _receiveCapacity;
                int start = (int)((_recvConsumed - _recvBase) % oldCapacity);
                var moved = old.AsSpan(0, oldCapacity);
                CopyIn(ring, size, 0, moved[start..]);
                CopyIn(ring, size, oldCapacity - start, moved[..start]);
                _recvBase = _recvConsumed;
                _receive = ring;
                // A pipe reader's buffer lies in the old ring until its AdvanceTo (TcpConnection.Pipe.cs).
                if (_pipeState is { _readerHolds: true } pipe && pipe._readerBuffer.Length > 0 && pipe._retiredReceive is null)
                    pipe._retiredReceive = old;
                else
                    ReturnRing(old);
            }
            _receiveCapacity = size;
        }
    }

    /// <summary>Receive-stream bytes below <paramref name="upTo"/> are readable.</summary>
    /// <remarks>A waiting read is woken at the end of the loop's burst (<see cref="FlushWakes"/>).</remarks>
    internal void Deliver(long upTo)
    {
        bool defer, discarded, wake = false;
        lock (_gate)
        {
            // Never back: bytes read straight into a waiting reader's buffer are delivered already.
            _recvDelivered = Math.Max(_recvDelivered, upTo);
            if (Orphaned)
                _recvConsumed = upTo;
            // A completed pipe reader reads no more: the bytes are thrown away as they come.
            discarded = DiscardForCompletedReaderLocked(ref wake);
            defer = DeferWakeLocked(_readWaiter);
        }
        if (defer)
            _stack.DeferWake(this);
        if (discarded)
            _stack.TcpReadHappened(this, wake);
    }

    /// <summary>
    /// The peer acknowledged <paramref name="bytes"/> more: they leave the send buffer (loop
    /// only). A writer that waited for room gets a larger buffer when the windows would carry
    /// more than this one holds (<see cref="TcpEndpoint.SendBufferWanted"/>), up to <see cref="NetStackOptions.TcpSendBufferMaxBytes"/>.
    /// </summary>
    /// <remarks>A waiting write is woken at the end of the loop's burst (<see cref="FlushWakes"/>).</remarks>
    internal void Acknowledged(long bytes)
    {
        bool defer;
        lock (_gate)
        {
            _sendAcked += bytes;
            // A closed connection's rings go back as soon as they are empty (its FIN needs no
            // ring), not at the next sweep: a short connection's are then ready for the next
            // one within the round trip (RingPool).
            if (_userDone)
                ReleaseEmptyRingsLocked();
            if (_writeWaiter.IsArmed && _sendCapacity < _sendCapacityMax)
                GrowSendBufferLocked(Endpoint!.SendBufferWanted(_sendCapacity, _sendCapacityMax));
            defer = DeferWakeLocked(_writeWaiter);
        }
        if (defer)
            _stack.DeferWake(this);
    }

    // A larger pooled ring takes the unacknowledged bytes [acked, written) from its first byte
    // on (the base moves to the acknowledged position). Loop thread, under _gate: the loop is the only reader of the ring outside the
    // gate (segments, gather writes), and it holds no slice of it between actions.
    private void GrowSendBufferLocked(int size)
    {
        // A pipe writer holds space of this ring (or advanced bytes the loop does not know of yet):
        // the ring stays; a later wait grows it.
        if (size <= _sendCapacity || WriterHoldsSendRingLocked())
            return;
        if (_send is { } old)
        {
            var ring = RentRing(size);
            long live = _sendWritten - _sendAcked;
            int start = (int)((_sendAcked - _sendBase) % _sendCapacity);
            int first = (int)Math.Min(live, _sendCapacity - start);
            CopyIn(ring, size, 0, old.AsSpan(start, first));
            CopyIn(ring, size, first, old.AsSpan(0, (int)live - first));
            _sendBase = _sendAcked;
            _send = ring;
            ReturnRing(old);
        }
        _sendCapacity = size;
        _stack.Statistics.Increment("tcp.send-buffer.grown");
    }

    // True when the connection must join the loop's wake list (once per burst).
    private bool DeferWakeLocked(Waiter waiter)
    {
        if (!waiter.IsArmed || _wakePending)
            return false;
        _wakePending = true;
        return true;
    }

    /// <summary>The loop's burst ended: wake the read and write that were waiting for it.</summary>
    internal void FlushWakes()
    {
        lock (_gate)
        {
            _wakePending = false;
            _readWaiter.Complete();
            _writeWaiter.Complete();
        }
    }

    /// <summary>The peer's FIN arrived in order.</summary>
    internal void PeerClosed()
    {
        lock (_gate)
        {
            _peerClosed = true;
            _readWaiter.Complete();
            NoteEndedLocked();
        }
    }

    /// <summary>The handshake completed.</summary>
    internal void OnConnected() => Succeed(_connected);

    // Completes a source of this connection (_connected, _finished): at once (its continuations
    // run on the thread pool), or with UnsafeInlineCompletions through InlineCompletions (on the
    // loop at the end of its burst). Never under _gate.
    private void Succeed(TaskCompletionSource source)
    {
        if (!_inlineCompletions)
            source.TrySetResult();
        else if (!source.Task.IsCompleted)
            InlineCompletions.Complete(static s => ((TaskCompletionSource)s!).TrySetResult(), source);
    }

    private void FailConnect(Exception error)
    {
        if (!_inlineCompletions)
            _connected.TrySetException(error);
        else if (!_connected.Task.IsCompleted)
            InlineCompletions.Complete(static s =>
            {
                var (source, e) = ((TaskCompletionSource, Exception))s!;
                source.TrySetException(e);
            }, (_connected, error));
    }

    /// <summary>
    /// The peer reset the connection: ConnectionReset, or Shutdown (EPIPE) once the peer's FIN
    /// had arrived (CLOSE-WAIT), as the kernel's tcp_reset reports.
    /// </summary>
    internal void Reset()
    {
        bool peerClosed;
        lock (_gate)
            peerClosed = _peerClosed;
        Fail(peerClosed ? SocketError.Shutdown : SocketError.ConnectionReset);
    }

    /// <summary>The connection failed (refused, reset, timed out).</summary>
    internal void Fail(SocketError error)
    {
        lock (_gate)
        {
            if (_error == SocketError.Success)
                _error = error;
            WakeAll();
            NoteEndedLocked();
        }
        FailConnect(new SocketException((int)error));
        Succeed(_finished);
    }

    /// <summary>The connection entered <paramref name="state"/>.</summary>
    internal void OnState(TcpState state)
    {
        // Our FIN is acknowledged in FIN-WAIT-2 and TIME-WAIT (and when LAST-ACK ends in CLOSED).
        if (state.IsFinWait2 || state.IsTimeWait)
        {
            lock (_gate)
                _finAcknowledged = true;
            Succeed(_finished);
        }
    }

    /// <summary>The connection reached CLOSED and left the table.</summary>
    internal void OnClosed()
    {
        lock (_gate)
        {
            _closed = true;
            WakeAll();
            _loopDone = true;
            ReleaseIfDone();
            NoteEndedLocked();
        }
        FailConnect(new SocketException((int)SocketError.ConnectionAborted));
        Succeed(_finished);
    }

    /// <summary>The stack is going away: everything pending fails.</summary>
    internal void StackDisposed()
    {
        lock (_gate)
        {
            if (_error == SocketError.Success && !_closed)
                _error = SocketError.OperationAborted;
            _closed = true;
            WakeAll();
            _loopDone = true;
            ReleaseIfDone();
            NoteEndedLocked();
        }
        FailConnect(new ObjectDisposedException(nameof(NetworkStack)));
        Succeed(_finished);
    }

    /// <summary>True once our FIN was acknowledged (for tests and diagnostics).</summary>
    internal bool FinAcknowledged
    {
        get
        {
            lock (_gate)
                return _finAcknowledged;
        }
    }
}
