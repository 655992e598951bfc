using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;
using NetStack.Core.Stack;
using NetStack.Core.Tcp;
using NetStack.Engine;

namespace NetStack;

/// <summary>
/// A TCP connection of a <see cref="NetworkStack"/>, made by <see cref="NetworkStack.ConnectTcpAsync(System.Net.IPEndPoint, CancellationToken)"/>
/// or <see cref="TcpConnectionListener.AcceptAsync"/>, used as a byte <see cref="Stream"/> like
/// <see cref="NetworkStream"/>: <see cref="ReadAsync(Memory{byte}, CancellationToken)"/> returns 0
/// at the peer's FIN, <see cref="WriteAsync(ReadOnlyMemory{byte}, CancellationToken)"/> completes
/// once the bytes are in the send buffer and waits while it is full, <see cref="ShutdownWrite"/>
/// half-closes, <see cref="Abort"/> resets, <see cref="DisposeAsync"/> closes gracefully.
/// </summary>
/// <remarks>
/// The engine loop owns the protocol state (the core's <see cref="Connection"/> value); this object
/// owns the bytes: a send ring holding stream positions [acked, written) and a receive ring holding
/// [consumed, consumed + capacity), in which the loop stores arriving data at its stream position
/// (out of order too) and marks it readable up to the delivered position. One lock guards the
/// counters shared by the user's threads and the loop; bytes are copied outside the regions the
/// other side may touch. Errors follow <see cref="NetworkStream"/>: Stream methods throw
/// <see cref="IOException"/> wrapping a <see cref="SocketException"/>. One read and one write may
/// be in flight at a time (as with any Stream); other calls are thread-safe.
/// <para>
/// The hot path allocates nothing per call: a read or write that has to wait parks on a reusable
/// completion source of this connection (one for reads, one for writes) instead of a new
/// <see cref="TaskCompletionSource"/>, the async state machines come from a pool, and the loop
/// is told about new data or a freed window through one command object per connection, posted
/// only when none is pending already.
/// </para>
/// </remarks>
public sealed partial class TcpConnection : Stream
{
    private readonly NetworkStack _stack;
    private readonly object _gate = new();

    // Rings are rented from the shared pool when needed (a half-open connection, or one that only
    // receives, holds no send ring) and go back to it when the connection has left them empty and
    // untouched for a while (ReleaseIdleRings, from the loop's sweep once a second: the send ring
    // when everything written is acknowledged, the receive ring when everything stored in it has
    // been read); at the latest when both the user and the loop are done. An idle keep-alive
    // connection thus holds no ring, while a busy one keeps its own instead of trading it with the
    // pool on every exchange (which, with 200 busy connections, overflowed the shared pool's
    // per-core stacks: every exchange allocated a new 256 KiB array and the large object heap
    // drove gen2 collections; docs/soak.md).
    //
    // A stream position p lives at (p - base) % capacity (the rented array may be longer), and
    // the base moves to the next byte whenever a ring holds none (_sendBase, _recvBase): the
    // bytes of each exchange start again at the ring's first byte. The pool's arrays come
    // uninitialized, so their pages become resident only when written; a ring written at
    // p % capacity had all its pages resident after one lap however few bytes were ever in it
    // at once (200 keep-alive connections with 10 KB responses: 50 MB of send rings resident,
    // and receive rings becoming resident page by page as requests moved through them, the
    // slow climb of docs/soak.md). Starting over at the first byte, a connection keeps resident
    // what it has had in flight at most.
    private int _sendCapacity; // grows (auto-tuning) on the loop thread, under _gate
    private int _sendCapacityMax; // SendBufferSize may change it, under _gate
    private int _receiveCapacity; // grows (auto-tuning) on the loop thread, under _gate
    private bool _userDone;
    private bool _loopDone;

    // Send ring: stream positions [_sendAcked, _sendWritten), at (position - _sendBase) % capacity.
    private byte[]? _send;
    private long _sendWritten;
    private long _sendAcked;
    // Moves, under _gate, only when the ring holds no byte (the user's write, or the loop's growth).
    private long _sendBase;
    private bool _sendPosted;

    // Receive ring: [_recvConsumed, _recvDelivered) are readable; the loop stores beyond. At
    // (position - _recvBase) % capacity.
    private byte[]? _receive;
    // Moves, on the loop thread under _gate, only when the ring holds no byte (Store, growth).
    private long _recvBase;
    // The end of the bytes the loop stored in the receive ring (in order or not; loop only):
    // the ring holds nothing unread once _recvConsumed has reached it.
    private long _recvStoredEnd;
    // A ring was rented, written or read since the loop's last sweep (see ReleaseIdleRings).
    private bool _ringsUsed;
    private long _recvDelivered;
    private long _recvConsumed;
    private bool _windowPosted;
    // The window command was posted without waking the loop (see ReadAsync).
    private bool _windowPostedLazily;
    // _recvConsumed as the loop last took it (TakeConsumed): what the core believes was read.
    private long _consumedReported;
    private bool _peerClosed;

    // Direct receive: the buffer of the read that waits (empty when none, or a zero-byte read) and
    // how much of it the loop has filled with in-order data (see StoreDirect). Under _gate.
    private Memory<byte> _directBuffer;
    private int _directFilled;

    // A hint for the loop, read without the lock: a read may be waiting with a buffer.
    private volatile bool _directArmed;

    private SocketError _error;
    // The network's error (_error) was thrown once: see ReportError.
    private bool _errorReported;
    private bool _shutdown;
    private bool _aborted;
    private bool _disposed;
    private bool _closed;
    private bool _finAcknowledged;
    private readonly Waiter _readWaiter;
    private readonly Waiter _writeWaiter;
    // On the loop's wake list (loop-only under _gate).
    private bool _wakePending;
    // Completed by the loop through CompleteSource (InlineCompletions with UnsafeInlineCompletions).
    private readonly TaskCompletionSource _connected;
    private readonly TaskCompletionSource _finished;
    private readonly bool _inlineCompletions;

    // ---- Loop-only state ------------------------------------------------------------------------

    /// <summary>
    /// The connection's entry in the core's endpoint table (loop only; null until the loop made
    /// it). Its control block is <see cref="Core"/>.
    /// </summary>
    internal TcpEndpoint? Endpoint;

    /// <summary>
    /// The core's control block (loop only), by reference so reads copy nothing. A large struct:
    /// only the loop thread may read it, since a read racing the table's write could see a torn
    /// mix of two states.
    /// </summary>
    internal ref Connection Core => ref Endpoint!.Core;

    /// <summary>The loop has made this connection's endpoint (and so <see cref="Core"/>).</summary>
    internal bool HasCore => Endpoint is not null;

    /// <summary>The 4-tuple: our address and port, the peer's (loop only after creation).</summary>
    internal IpAddr LocalAddress { get; set; }
    internal ushort LocalPort { get; set; }
    internal IpAddr RemoteAddress { get; set; }
    internal ushort RemotePort { get; set; }

    /// <summary>The local port bound before connecting (0: an ephemeral one) and SO_REUSEADDR (loop only, for the connect).</summary>
    internal int RequestedLocalPort { get; set; }
    internal bool ReuseAddress { get; set; }

    /// <summary>Out of the connection table (CLOSED): nothing more happens to it in the loop.</summary>
    internal bool Removed;

    /// <summary>The user disposed it: arriving data is read and thrown away by the loop.</summary>
    internal bool Orphaned;


    /// <summary>The loop command that sends newly written bytes; made once, posted once per batch of writes.</summary>
    internal Action? SendCommand;

    /// <summary>The loop command that opens the window after reads; made once, posted once per batch of reads.</summary>
    internal Action? WindowCommand;

    internal TcpConnection(NetworkStack stack, TcpSocketState socket, IPEndPoint? localEndPoint, IPEndPoint remoteEndPoint)
    {
        _stack = stack;
        var options = stack.Options;
        _socket = socket;
        // A locked size (SO_SNDBUF / SO_RCVBUF set) is the buffer, without auto-tuning.
        _sendCapacity = socket.SendBufferSize > 0 ? socket.SendBufferSize : options.TcpSendBufferBytes;
        _sendCapacityMax = socket.SendBufferSize > 0 ? socket.SendBufferSize : Math.Max(options.TcpSendBufferBytes, options.TcpSendBufferMaxBytes);
        _receiveCapacity = socket.Core.ReceiveBufferSize > 0 ? socket.Core.ReceiveBufferSize : options.TcpReceiveBufferBytes;
        _inlineCompletions = options.UnsafeInlineCompletions;
        _readWaiter = new Waiter(_gate, _inlineCompletions);
        _writeWaiter = new Waiter(_gate, _inlineCompletions);
        _connected = new TaskCompletionSource(InlineCompletions.SourceOptions(_inlineCompletions));
        _finished = new TaskCompletionSource(InlineCompletions.SourceOptions(_inlineCompletions));
        LocalEndPoint = localEndPoint!;
        RemoteEndPoint = remoteEndPoint;
    }

    /// <summary>Our address and port.</summary>
    public IPEndPoint LocalEndPoint { get; internal set; }

    /// <summary>The peer's address and port.</summary>
    public IPEndPoint RemoteEndPoint { get; }

    /// <summary>Completes when the handshake does; fails with the reason the connection attempt failed.</summary>
    internal Task Connected => _connected.Task;

    // ---- Stream surface ---------------------------------------------------------------------------

    /// <summary>True: a connection can be read.</summary>
    public override bool CanRead => true;

    /// <summary>True: a connection can be written.</summary>
    public override bool CanWrite => true;

    /// <summary>False: a byte stream has no position.</summary>
    public override bool CanSeek => false;

    /// <summary>Not supported.</summary>
    public override long Length => throw new NotSupportedException("A TCP connection has no length.");

    /// <summary>Not supported.</summary>
    public override long Position
    {
        get => throw new NotSupportedException("A TCP connection has no position.");
        set => throw new NotSupportedException("A TCP connection has no position.");
    }

    /// <summary>Not supported.</summary>
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException("A TCP connection cannot seek.");

    /// <summary>Not supported.</summary>
    public override void SetLength(long value) => throw new NotSupportedException("A TCP connection has no length.");

    /// <summary>Does nothing: written bytes are already on their way (there is no Nagle delay to flush).</summary>
    public override void Flush() { }

    /// <summary>Does nothing, like <see cref="Flush"/>.</summary>
    public override Task FlushAsync(CancellationToken cancellationToken) =>
        cancellationToken.IsCancellationRequested ? Task.FromCanceled(cancellationToken) : Task.CompletedTask;

    /// <summary>Reads what is available (at least one byte), waiting for data; 0 at the peer's FIN.</summary>
    /// <remarks>Honours <see cref="ReadTimeout"/>.</remarks>
    /// <exception cref="IOException">As <see cref="ReadAsync(Memory{byte}, CancellationToken)"/>; TimedOut after <see cref="ReadTimeout"/>.</exception>
    /// <exception cref="InvalidOperationException">Called on an engine thread (<see cref="NetStackOptions.UnsafeInlineCompletions"/>).</exception>
    public override int Read(byte[] buffer, int offset, int count)
    {
        ValidateBufferArguments(buffer, offset, count);
        return ReadSync(buffer.AsMemory(offset, count));
    }

    /// <summary>Reads what is available (at least one byte), waiting for data; 0 at the peer's FIN.</summary>
    /// <remarks>Honours <see cref="ReadTimeout"/>.</remarks>
    /// <exception cref="IOException">As <see cref="ReadAsync(Memory{byte}, CancellationToken)"/>; TimedOut after <see cref="ReadTimeout"/>.</exception>
    /// <exception cref="InvalidOperationException">Called on an engine thread (<see cref="NetStackOptions.UnsafeInlineCompletions"/>).</exception>
    public override int Read(Span<byte> buffer)
    {
        var rented = ArrayPool<byte>.Shared.Rent(buffer.Length);
        try
        {
            int n = ReadSync(rented.AsMemory(0, buffer.Length));
            rented.AsSpan(0, n).CopyTo(buffer);
            return n;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    /// <summary>Writes all of the bytes into the send buffer, waiting while it is full.</summary>
    /// <remarks>Honours <see cref="WriteTimeout"/>.</remarks>
    /// <exception cref="IOException">As <see cref="WriteAsync(ReadOnlyMemory{byte}, CancellationToken)"/>; TimedOut after <see cref="WriteTimeout"/>.</exception>
    /// <exception cref="InvalidOperationException">Called on an engine thread (<see cref="NetStackOptions.UnsafeInlineCompletions"/>).</exception>
    public override void Write(byte[] buffer, int offset, int count)
    {
        ValidateBufferArguments(buffer, offset, count);
        WriteSync(buffer.AsMemory(offset, count));
    }

    /// <summary>Writes all of the bytes into the send buffer, waiting while it is full.</summary>
    /// <remarks>Honours <see cref="WriteTimeout"/>.</remarks>
    /// <exception cref="IOException">As <see cref="WriteAsync(ReadOnlyMemory{byte}, CancellationToken)"/>; TimedOut after <see cref="WriteTimeout"/>.</exception>
    /// <exception cref="InvalidOperationException">Called on an engine thread (<see cref="NetStackOptions.UnsafeInlineCompletions"/>).</exception>
    public override void Write(ReadOnlySpan<byte> buffer)
    {
        var rented = ArrayPool<byte>.Shared.Rent(buffer.Length);
        try
        {
            buffer.CopyTo(rented);
            WriteSync(rented.AsMemory(0, buffer.Length));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    /// <summary>Reads what is available (at least one byte), waiting for data; 0 at the peer's FIN.</summary>
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
    {
        ValidateBufferArguments(buffer, offset, count);
        return ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
    }

    /// <summary>Writes all of the bytes into the send buffer, waiting while it is full.</summary>
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
    {
        ValidateBufferArguments(buffer, offset, count);
        return WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
    }

    /// <summary>
    /// Reads up to <c>buffer.Length</c> bytes, waiting until at least one is available. Returns 0
    /// once every byte before the peer's FIN has been read. An empty buffer waits until data or
    /// the end is there and returns 0, as <see cref="NetworkStream"/> does (HttpClient relies on
    /// such zero-byte reads to watch idle connections).
    /// </summary>
    /// <exception cref="IOException">The connection was reset (ConnectionReset; Shutdown when the peer's FIN had come first), timed out (TimedOut) or aborted (OperationAborted; also a read waiting when the connection is disposed); the inner exception is the <see cref="SocketException"/>. As the kernel's socket error, the network's error is thrown once: later reads return 0.</exception>
    /// <exception cref="ObjectDisposedException">The connection is disposed.</exception>
    /// <exception cref="OperationCanceledException">The token was canceled while waiting (and no byte had yet been placed in <paramref name="buffer"/>).</exception>
    /// <remarks>
    /// While the read waits, the stack may copy arriving in-order data straight into
    /// <paramref name="buffer"/>; such bytes are read: a cancellation, a reset or a dispose that
    /// comes after them ends the read with their count rather than an exception; a reset or a
    /// dispose is then reported by the next read.
    /// </remarks>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        bool waited = false;
        while (true)
        {
            ValueTask wait;
            int copied = 0;
            bool notify = false, wake = false;
            lock (_gate)
            {
                // The loop filled this read's buffer while it waited: those bytes are read
                // (consumed and counted for the window) whatever happened since.
                if (_directFilled > 0)
                {
                    copied = _directFilled;
                    DisarmDirect();
                    NoteReadLocked(ref notify, ref wake);
                    goto Done;
                }
                DisarmDirect();
                // A read the dispose woke ends as the kernel's does: OperationAborted.
                if (_disposed && waited)
                    throw Failure(SocketError.OperationAborted);
                ObjectDisposedException.ThrowIf(_disposed, this);
                ThrowIfPipeModeLocked();
                long available = _recvDelivered - _recvConsumed;
                if (available > 0 && !buffer.IsEmpty)
                {
                    copied = (int)Math.Min(available, buffer.Length);
                    CopyOut(_receive!, _receiveCapacity, _recvConsumed - _recvBase, buffer.Span[..copied]);
                    _ringsUsed = true;
                    _recvConsumed += copied;
                    NoteReadLocked(ref notify, ref wake);
                }
                else if (available > 0 || _peerClosed || _readShutdown)
                    return 0; // A zero-byte read: data (or the end) is there. Or the end of the stream (or SHUT_RD).
                else if (_error != SocketError.Success)
                {
                    if (ErrorReported)
                        return 0;
                    throw ReportError();
                }
                else if (_aborted || _closed)
                    throw Failure(SocketError.OperationAborted);
                else
                {
                    wait = _readWaiter.Arm(cancellationToken);
                    if (!buffer.IsEmpty)
                    {
                        _directBuffer = buffer;
                        _directArmed = true;
                    }
                    goto Wait;
                }
            }
        Done:
            if (notify)
                _stack.TcpReadHappened(this, wake);
            else if (wake)
                _stack.WakeLoop();
            return copied;
        Wait:
            waited = true;
            _readWaiter.RegisterCancellation();
            try
            {
                await wait.ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                // Canceled before the loop put anything in the buffer (else the wait ends with
                // the data): let go of the caller's memory.
                lock (_gate)
                    DisarmDirect();
                throw;
            }
        }
    }

    // The waiting read is over: the loop may no longer write into its buffer. Under _gate.
    private void DisarmDirect()
    {
        _directBuffer = default;
        _directFilled = 0;
        _directArmed = false;
    }

    /// <summary>
    /// Copies all of <paramref name="buffer"/> into the send buffer, waiting (backpressure) while it
    /// is full; the bytes go out as the peer's window and the congestion window allow.
    /// </summary>
    /// <exception cref="IOException">After <see cref="ShutdownWrite"/> (Shutdown), a reset (ConnectionReset; Shutdown when the peer's FIN had come first), a timeout (TimedOut) or an abort (OperationAborted; also a write waiting when the connection is disposed); the inner exception is the <see cref="SocketException"/>. As the kernel's socket error, the network's error is thrown once: later writes fail with Shutdown.</exception>
    /// <exception cref="ObjectDisposedException">The connection is disposed.</exception>
    /// <exception cref="OperationCanceledException">The token was canceled while waiting (bytes already buffered are sent).</exception>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        bool waited = false;
        while (true)
        {
            ValueTask? wait = null;
            bool notify = false;
            lock (_gate)
            {
                // A write the dispose woke ends as the kernel's does: OperationAborted.
                if (_disposed && waited)
                    throw Failure(SocketError.OperationAborted);
                ObjectDisposedException.ThrowIf(_disposed, this);
                ThrowIfPipeModeLocked();
                if (_error != SocketError.Success)
                    throw ErrorReported ? Failure(SocketError.Shutdown) : ReportError();
                if (_shutdown)
                    throw Failure(SocketError.Shutdown);
                if (_aborted || _closed)
                    throw Failure(SocketError.OperationAborted);
                if (buffer.IsEmpty)
                    return;
                int free = _sendCapacity - (int)(_sendWritten - _sendAcked);
                if (free > 0)
                {
                    int n = Math.Min(free, buffer.Length);
                    _send ??= RentRing(_sendCapacity);
                    _ringsUsed = true;
                    // Everything written is acknowledged: the loop reads none of the ring (it
                    // sends only from the unacknowledged bytes), so these start at its first byte.
                    if (_sendAcked == _sendWritten)
                        _sendBase = _sendWritten;
                    CopyIn(_send, _sendCapacity, _sendWritten - _sendBase, buffer.Span[..n]);
                    _sendWritten += n;
                    buffer = buffer[n..];
                    notify = !_sendPosted;
                    _sendPosted = true;
                }
                else
                    wait = _writeWaiter.Arm(cancellationToken);
            }
            if (notify)
                _stack.TcpWriteHappened(this);
            if (wait is { } pending)
            {
                waited = true;
                _writeWaiter.RegisterCancellation();
                await pending.ConfigureAwait(false);
            }
            else if (buffer.IsEmpty)
                return;
        }
    }

    /// <summary>
    /// Half-closes: a FIN follows the data already written; reading goes on until the peer's FIN.
    /// Later writes throw <see cref="IOException"/> with <see cref="SocketError.Shutdown"/>. Idempotent.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The connection is disposed.</exception>
    public void ShutdownWrite()
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_shutdown || _aborted || _closed)
                return;
            _shutdown = true;
        }
        _stack.TcpClose(this, orphan: false);
    }

    // Shutdown(Receive): reads return 0 instead of waiting (under _gate).
    private bool _readShutdown;

    /// <summary>
    /// Shuts down reading, writing or both, as <see cref="Socket.Shutdown"/> on Linux:
    /// <see cref="SocketShutdown.Send"/> is <see cref="ShutdownWrite"/> (a FIN after the data
    /// written; later writes fail with <see cref="SocketError.Shutdown"/>).
    /// <see cref="SocketShutdown.Receive"/> sends nothing (the peer sees no change and may go on
    /// sending): a read returns the bytes already received, and 0 instead of waiting when there
    /// are none; data arriving later is still received and returned by later reads, as Linux's
    /// SHUT_RD does (checked against the kernel in the tests). <see cref="SocketShutdown.Both"/>
    /// does both. Idempotent.
    /// </summary>
    /// <param name="how">What to shut down.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="how"/> is not a <see cref="SocketShutdown"/> value.</exception>
    /// <exception cref="ObjectDisposedException">The connection is disposed.</exception>
    public void Shutdown(SocketShutdown how)
    {
        if (how is not (SocketShutdown.Receive or SocketShutdown.Send or SocketShutdown.Both))
            throw new ArgumentOutOfRangeException(nameof(how), how, "Not a SocketShutdown value.");
        if (how is SocketShutdown.Receive or SocketShutdown.Both)
        {
            lock (_gate)
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                _readShutdown = true;
                // A waiting read returns 0 now.
                _readWaiter.Complete();
            }
        }
        if (how is SocketShutdown.Send or SocketShutdown.Both)
            ShutdownWrite();
    }

    /// <summary>
    /// Resets the connection: a RST goes to the peer, buffered data is dropped, pending and later
    /// reads and writes fail with <see cref="SocketError.OperationAborted"/>. Idempotent.
    /// </summary>
    public void Abort()
    {
        lock (_gate)
        {
            if (_aborted || _closed)
                return;
            _aborted = true;
            WakeAll();
            NoteEndedLocked();
        }
        _stack.TcpAbort(this);
    }

    /// <summary>
    /// Closes gracefully without waiting: a FIN follows the data already written and the stack
    /// finishes the exchange in the background (as <see cref="NetworkStream"/> does).
    /// </summary>
    /// <param name="disposing">True from Dispose.</param>
    protected override void Dispose(bool disposing)
    {
        if (disposing && !AbortForLinger())
            CloseForDispose();
        base.Dispose(disposing);
    }

    // SO_LINGER on with 0 s: dispose resets (a RST, no FIN), as the kernel's close. True when done.
    private bool AbortForLinger()
    {
        lock (_gate)
        {
            if (_disposed || _socket.Linger is not { Enabled: true, LingerTime: 0 })
                return false;
        }
        Abort();
        lock (_gate)
        {
            if (_disposed)
                return true;
            _disposed = true;
            _userDone = true;
            ReleaseIfDone();
        }
        return true;
    }

    /// <summary>
    /// Closes gracefully: a FIN follows the data already written, and this waits up to
    /// <see cref="NetStackOptions.TcpLinger"/> (or the <see cref="LingerState"/>'s time when
    /// enabled) for the peer to acknowledge all of it (the exchange goes on in the background
    /// after that). Then the connection is released; data that arrives later is discarded. With
    /// <see cref="LingerState"/> enabled and 0 seconds it resets the connection instead (a RST,
    /// no FIN), as the kernel's close does. Idempotent.
    /// </summary>
    public override async ValueTask DisposeAsync()
    {
        if (AbortForLinger())
        {
            GC.SuppressFinalize(this);
            return;
        }
        TimeSpan linger;
        lock (_gate)
            linger = _socket.Linger is { Enabled: true } l ? TimeSpan.FromSeconds(l.LingerTime) : _stack.Options.TcpLinger;
        if (CloseForDispose())
        {
            try
            {
                await _finished.Task.WaitAsync(linger).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
            }
        }
        GC.SuppressFinalize(this);
    }

    // True when a graceful close was started (there is something to wait for).
    private bool CloseForDispose()
    {
        bool graceful;
        lock (_gate)
        {
            if (_disposed)
                return false;
            _disposed = true;
            graceful = !_aborted && !_closed && _error == SocketError.Success;
            WakeAll();
            _userDone = true;
            ReleaseIfDone();
            ReleaseEmptyRingsLocked();
            NoteEndedLocked();
        }
        if (graceful)
        {
            try
            {
                _stack.TcpClose(this, orphan: true);
            }
            catch (ObjectDisposedException)
            {
                return false;
            }
        }
        return graceful;
    }

    /// <summary>The endpoints.</summary>
    public override string ToString() => $"tcp {LocalEndPoint} -> {RemoteEndPoint}";

    // ---- Helpers --------------------------------------------------------------------------------

    private void WakeAll()
    {
        _readWaiter.Complete();
        _writeWaiter.Complete();
    }

    /// <summary>
    /// The reusable completion a waiting read (or write) awaits: armed under the connection's
    /// lock when there is nothing to do yet, completed under it by the loop (data, acknowledged
    /// bytes, an error, the end) or by the caller's cancellation token. The awaiting call then
    /// looks at the connection again, so a completion that changed nothing is harmless.
    /// Continuations run on the thread pool, never under the lock; with
    /// <see cref="NetStackOptions.UnsafeInlineCompletions"/> a completion by the loop is recorded
    /// and run by the loop itself when its burst ends (<see cref="InlineCompletions"/>).
    /// </summary>
    private sealed class Waiter(object gate, bool inline) : IValueTaskSource, IInlineCompletion
    {
        private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = true };
        private bool _armed;
        private CancellationToken _token;

        /// <summary>
        /// The waiting call already has its result (a read whose buffer the loop filled): a
        /// cancellation then ends the wait normally, so the bytes are not lost. Under the lock.
        /// </summary>
        public bool HoldsResult;
        private CancellationTokenRegistration _registration;

        /// <summary>Starts a wait (under the lock); the caller awaits the result after leaving it.</summary>
        public ValueTask Arm(CancellationToken token)
        {
            _core.Reset();
            // Asynchronous unless the loop runs it (RunInline).
            _core.RunContinuationsAsynchronously = true;
            _armed = true;
            HoldsResult = false;
            _token = token;
            return new ValueTask(this, _core.Version);
        }

        /// <summary>
        /// Lets the token end the wait (outside the lock: a token canceled already runs the
        /// callback at once, and the callback takes the lock).
        /// </summary>
        public void RegisterCancellation()
        {
            if (_token.CanBeCanceled)
                _registration = _token.UnsafeRegister(static w => ((Waiter)w!).Cancel(), this);
        }

        /// <summary>A call is waiting (under the lock).</summary>
        public bool IsArmed => _armed;

        /// <summary>Ends the wait, if one is armed (under the lock).</summary>
        public void Complete()
        {
            if (!_armed)
                return;
            _armed = false;
            // Recorded: nothing else touches the core until the loop sets it (a cancellation
            // and a second Complete see the wait disarmed; the caller cannot arm again before
            // it has its result). Only for the loop of a stack with the option (not for another
            // stack's, whose code may dispose this connection).
            if (inline && InlineCompletions.TryDefer(this))
                return;
            _core.SetResult(true);
        }

        void IInlineCompletion.RunInline()
        {
            _core.RunContinuationsAsynchronously = false;
            _core.SetResult(true);
        }

        private void Cancel()
        {
            lock (gate)
            {
                if (!_armed)
                    return;
                _armed = false;
                if (HoldsResult)
                    _core.SetResult(true);
                else
                    _core.SetException(new OperationCanceledException(_token));
            }
        }

        public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
            _core.OnCompleted(continuation, state, token, flags);

        public void GetResult(short token)
        {
            try
            {
                _core.GetResult(token);
            }
            finally
            {
                // The wait is over: the token may not touch the next one.
                var registration = _registration;
                _registration = default;
                _token = default;
                registration.Dispose();
            }
        }
    }

    // The network's error (a reset, a timeout, an ICMP error) is reported once, as the kernel's
    // socket error (sk_err, cleared when a call returns it): the first read or write that meets
    // it throws it; after that reads see the end (0) and writes Shutdown (EPIPE), as after the
    // kernel's tcp_done. Our own OperationAborted (the stack went away) stays. Under _gate.
    private IOException ReportError()
    {
        if (_error != SocketError.OperationAborted)
            _errorReported = true;
        return Failure(_error);
    }

    // ReportError has thrown the network's error. Under _gate.
    private bool ErrorReported => _errorReported;

    private static IOException Failure(SocketError error)
    {
        var inner = new SocketException((int)error);
        return new IOException($"Unable to transfer data on the transport connection: {inner.Message}.", inner);
    }

    // Returns the rings to the pool once neither side can touch them again. Under _gate.
    private void ReleaseIfDone()
    {
        if (!_userDone || !_loopDone)
            return;
        if (_send is not null)
            ReturnRing(_send);
        if (_receive is not null)
            ReturnRing(_receive);
        _send = null;
        _receive = null;
        ReleasePipeBuffersLocked();
    }

    /// <summary>
    /// The loop's sweep (once a second): a ring that holds no byte and was not used since the
    /// last sweep goes back to the pool. Loop thread, between segments and commands, when the
    /// loop holds no slice of either ring.
    /// </summary>
    internal void ReleaseIdleRings()
    {
        lock (_gate)
        {
            if (!_ringsUsed)
                ReleaseEmptyRingsLocked();
            _ringsUsed = false;
        }
    }

    // The send ring holds [acked, written): nothing once all is acknowledged, and the user's next
    // write rents one again under _gate. The receive ring holds what was stored and not yet read:
    // nothing once the reads reached the end of what was stored and of what was delivered (the
    // loop's next Store rents one again). The reader copies out of the ring only under _gate and
    // only delivered bytes, which an empty ring has none of. Under _gate.
    private void ReleaseEmptyRingsLocked()
    {
        if (_send is not null && _sendAcked == _sendWritten && !WriterHoldsSendRingLocked())
        {
            ReturnRing(_send);
            _send = null;
        }
        if (_receive is not null && _pipeState is not { _readerHolds: true } && _recvConsumed == _recvDelivered && _recvStoredEnd <= _recvConsumed)
        {
            ReturnRing(_receive);
            _receive = null;
        }
    }

    private byte[] RentRing(int size)
    {
        _ringsUsed = true;
        _stack.TcpRingsRented.Increment();
        return _stack.Rings.Rent(size);
    }

    private void ReturnRing(byte[] ring)
    {
        _stack.TcpRingsReturned.Increment();
        _stack.Rings.Return(ring);
    }

    // Ring copies: the byte at offset o from the ring's base lives at o % capacity; a run may wrap once.
    private static void CopyIn(byte[] ring, int capacity, long offset, ReadOnlySpan<byte> data)
    {
        int start = (int)(offset % capacity);
        int first = Math.Min(data.Length, capacity - start);
        data[..first].CopyTo(ring.AsSpan(start));
        data[first..].CopyTo(ring);
    }

    private static void CopyOut(byte[] ring, int capacity, long offset, Span<byte> destination)
    {
        int start = (int)(offset % capacity);
        int first = Math.Min(destination.Length, capacity - start);
        ring.AsSpan(start, first).CopyTo(destination);
        ring.AsSpan(0, destination.Length - first).CopyTo(destination[first..]);
    }
}
