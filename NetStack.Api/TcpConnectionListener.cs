using System.Net;
using System.Net.Sockets;
using NetStack.Core.Stack;
using NetStack.Engine;

namespace NetStack;

/// <summary>
/// A listening TCP port of a <see cref="NetworkStack"/>, made by <see cref="NetworkStack.ListenTcp(int, int)"/>.
/// Arriving SYNs become half-open connections (at most <see cref="NetStackOptions.TcpMaxHalfOpen"/>;
/// beyond that they are answered with SYN cookies, see <see cref="NetStackOptions.TcpSynCookies"/>);
/// completed handshakes wait in the accept queue (at most the backlog) for
/// <see cref="AcceptAsync"/>. A SYN that finds the accept queue full is dropped, as Linux does, so
/// the peer retries later; one beyond <see cref="NetStackOptions.TcpMaxConnections"/> is answered
/// with a RST. Thread-safe.
/// </summary>
public sealed class TcpConnectionListener : IAsyncDisposable, IDisposable
{
    private readonly NetworkStack _stack;
    private readonly object _gate = new();
    // Each ready connection with the endpoint (of its queue's engine) whose accept-queue count it holds.
    private readonly Queue<(TcpConnection Connection, TcpListenEndpoint Endpoint)> _ready = new();
    private readonly LinkedList<TaskCompletionSource<TcpConnection>> _acceptors = new();
    private bool _disposed;
    // NetStackOptions.UnsafeInlineCompletions: acceptors complete through InlineCompletions.
    private readonly bool _inlineCompletions;

    internal TcpConnectionListener(NetworkStack stack, IPEndPoint localEndPoint, TcpListenEndpoint endpoint, TcpSocketState socket)
    {
        _stack = stack;
        _inlineCompletions = stack.Options.UnsafeInlineCompletions;
        LocalEndPoint = localEndPoint;
        Endpoint = endpoint;
        _socket = socket;
    }

    // The listener's socket options (under _gate); each accepted connection starts with a copy,
    // and the core's part is in Endpoint.Socket for the SYN,ACKs and the connections it makes.
    private readonly TcpSocketState _socket;

    // The options of the connections accepted since the last change: one copy they share (each
    // copies it again only when a setter of its own changes something).
    private TcpSocketState? _forAccepted;

    // The options for a connection accepted now (loop thread): shared, never changed in place.
    internal TcpSocketState SocketForAccepted()
    {
        lock (_gate)
            return _forAccepted ??= _socket.Clone();
    }

    private T GetOption<T>(Func<TcpSocketState, T> get)
    {
        lock (_gate)
            return get(_socket);
    }

    private void SetOption(Action<TcpSocketState> set)
    {
        Core.Tcp.TcpSocketSettings settings;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            set(_socket);
            settings = _socket.Core;
            _forAccepted = null;
        }
        _stack.TcpConfigureListener(this, settings);
    }

    /// <summary>The TTL / hop limit of the SYN,ACKs and of the connections accepted from now on (<see cref="TcpConnection.Ttl"/>), 1..255.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is outside 1..255.</exception>
    /// <exception cref="ObjectDisposedException">The listener is disposed.</exception>
    public short Ttl
    {
        get => GetOption(s => (short)s.Core.IpHeader.Ttl);
        set => SetOption(s => s.SetTtl(value, nameof(value)));
    }

    /// <summary>The type of service (DSCP) of the SYN,ACKs and the connections accepted from now on (<see cref="TcpConnection.TypeOfService"/>), 0..255.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is outside 0..255.</exception>
    /// <exception cref="ObjectDisposedException">The listener is disposed.</exception>
    public int TypeOfService
    {
        get => GetOption(s => (int)s.Core.IpHeader.TypeOfService);
        set => SetOption(s => s.SetTypeOfService(value, nameof(value)));
    }

    /// <summary>IPv4 Don't Fragment of the SYN,ACKs and the connections accepted from now on (<see cref="TcpConnection.DontFragment"/>).</summary>
    /// <exception cref="ObjectDisposedException">The listener is disposed.</exception>
    public bool DontFragment
    {
        get => GetOption(s => s.Core.IpHeader.DontFragment);
        set => SetOption(s => s.SetDontFragment(value));
    }

    /// <summary>TCP_NODELAY of the connections accepted from now on (<see cref="TcpConnection.NoDelay"/>).</summary>
    /// <exception cref="ObjectDisposedException">The listener is disposed.</exception>
    public bool NoDelay
    {
        get => GetOption(s => s.Core.NoDelay);
        set => SetOption(s => s.SetNoDelay(value));
    }

    /// <summary>
    /// SO_RCVBUF of the connections accepted from now on (<see cref="TcpConnection.ReceiveBufferSize"/>):
    /// locked (no auto-tuning), and the window scale of their SYN,ACK is chosen from it. 0 (the
    /// getter's value when unset): the stack's, auto-tuned.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is outside 1..65535·2^14.</exception>
    /// <exception cref="ObjectDisposedException">The listener is disposed.</exception>
    public int ReceiveBufferSize
    {
        get => GetOption(s => s.Core.ReceiveBufferSize);
        set => SetOption(s => s.SetReceiveBufferSize(value, nameof(value)));
    }

    /// <summary>SO_SNDBUF of the connections accepted from now on (<see cref="TcpConnection.SendBufferSize"/>); 0 (unset): the stack's, auto-tuned.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is outside 1..65535·2^14.</exception>
    /// <exception cref="ObjectDisposedException">The listener is disposed.</exception>
    public int SendBufferSize
    {
        get => GetOption(s => s.SendBufferSize);
        set => SetOption(s => s.SetSendBufferSize(value, nameof(value)));
    }

    /// <summary>SO_LINGER of the connections accepted from now on (<see cref="TcpConnection.LingerState"/>); the getter returns a copy.</summary>
    /// <exception cref="ArgumentNullException">The value is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The linger time is negative.</exception>
    /// <exception cref="ObjectDisposedException">The listener is disposed.</exception>
    public LingerOption LingerState
    {
        get => GetOption(s => s.Linger is { } l ? new LingerOption(l.Enabled, l.LingerTime) : new LingerOption(false, 0));
        set => SetOption(s => s.SetLinger(value, nameof(value)));
    }

    /// <summary>SO_KEEPALIVE of the connections accepted from now on (<see cref="TcpConnection.KeepAlive"/>).</summary>
    /// <exception cref="ObjectDisposedException">The listener is disposed.</exception>
    public bool KeepAlive
    {
        get => GetOption(s => s.KeepAlive);
        set => SetOption(s => s.SetKeepAlive(value));
    }

    /// <summary>TCP_KEEPIDLE of the connections accepted from now on (<see cref="TcpConnection.KeepAliveTime"/>).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is outside 1..32767 seconds.</exception>
    /// <exception cref="ObjectDisposedException">The listener is disposed.</exception>
    public TimeSpan KeepAliveTime
    {
        get => GetOption(s => s.KeepAliveTime);
        set => SetOption(s => s.SetKeepAliveTime(value, nameof(value)));
    }

    /// <summary>TCP_KEEPINTVL of the connections accepted from now on (<see cref="TcpConnection.KeepAliveInterval"/>).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is outside 1..32767 seconds.</exception>
    /// <exception cref="ObjectDisposedException">The listener is disposed.</exception>
    public TimeSpan KeepAliveInterval
    {
        get => GetOption(s => TimeSpan.FromMicroseconds(s.Core.KeepAliveInterval));
        set => SetOption(s => s.SetKeepAliveInterval(value, nameof(value)));
    }

    /// <summary>TCP_KEEPCNT of the connections accepted from now on (<see cref="TcpConnection.KeepAliveRetryCount"/>).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is outside 1..127.</exception>
    /// <exception cref="ObjectDisposedException">The listener is disposed.</exception>
    public int KeepAliveRetryCount
    {
        get => GetOption(s => s.Core.KeepAliveCount);
        set => SetOption(s => s.SetKeepAliveRetryCount(value, nameof(value)));
    }

    // The listener in the core's endpoint table, whose accept-queue count (Queued) follows
    // _ready: the table drops SYNs while it is at the backlog (RFC 9293 §3.10.7.2).
    internal TcpListenEndpoint Endpoint { get; }

    // A multi-queue stack: the listening endpoints of the other queues' engines, which feed this
    // one listener (each keeps its own backlog and half-open count). Set while listening starts.
    private readonly List<(NetworkStack Engine, TcpListenEndpoint Endpoint)> _engines = [];

    internal IReadOnlyList<(NetworkStack Engine, TcpListenEndpoint Endpoint)> Engines
    {
        get
        {
            lock (_gate)
                return [.. _engines];
        }
    }

    internal void AddEngine(NetworkStack engine, TcpListenEndpoint endpoint)
    {
        lock (_gate)
            _engines.Add((engine, endpoint));
    }

    /// <summary>The local address and port (the port chosen when 0 was asked for).</summary>
    public IPEndPoint LocalEndPoint { get; }


    /// <summary>
    /// Waits for the next established connection (the oldest in the accept queue, or the next to
    /// complete its handshake).
    /// </summary>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>The connection.</returns>
    /// <exception cref="SocketException">OperationAborted when the listener is disposed during the wait.</exception>
    /// <exception cref="ObjectDisposedException">The listener is disposed.</exception>
    /// <exception cref="OperationCanceledException">The token was canceled.</exception>
    public ValueTask<TcpConnection> AcceptAsync(CancellationToken cancellationToken = default)
    {
        if (cancellationToken.IsCancellationRequested)
            return ValueTask.FromCanceled<TcpConnection>(cancellationToken);
        TaskCompletionSource<TcpConnection> acceptor;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_ready.TryDequeue(out var ready))
            {
                Interlocked.Decrement(ref ready.Endpoint.Queued);
                return ValueTask.FromResult(ready.Connection);
            }
            acceptor = new TaskCompletionSource<TcpConnection>(InlineCompletions.SourceOptions(_inlineCompletions));
            var node = _acceptors.AddLast(acceptor);
            if (cancellationToken.CanBeCanceled)
            {
                var registration = cancellationToken.Register(() =>
                {
                    lock (_gate)
                    {
                        if (node.List is not null)
                            _acceptors.Remove(node);
                    }
                    if (_inlineCompletions)
                        InlineCompletions.Complete(static s =>
                        {
                            var (source, token) = ((TaskCompletionSource<TcpConnection>, CancellationToken))s!;
                            source.TrySetCanceled(token);
                        }, (acceptor, cancellationToken));
                    else
                        acceptor.TrySetCanceled(cancellationToken);
                });
                acceptor.Task.ContinueWith(static (_, r) => ((CancellationTokenRegistration)r!).Unregister(), registration,
                    CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            }
        }
        return new ValueTask<TcpConnection>(acceptor.Task);
    }

    // A connection for an acceptor, handed over by the loop at the end of its burst: when the
    // acceptor was canceled meanwhile (its token fired on another thread), the connection is
    // offered again (the next acceptor, or the accept queue), and aborted when the listener is gone.
    private sealed class Handover(TcpConnectionListener listener, TaskCompletionSource<TcpConnection> acceptor, TcpConnection connection, TcpListenEndpoint endpoint)
    {
        public void Run()
        {
            if (acceptor.TrySetResult(connection))
                return;
            listener._stack.Statistics.Increment("tcp.accept.handed-back");
            if (listener.Offer(connection, endpoint))
                return;
            try
            {
                connection.Abort();
            }
            catch (ObjectDisposedException)
            {
            }
        }
    }

    /// <summary>
    /// A connection that completed its handshake on <paramref name="endpoint"/> (the listening
    /// endpoint of the engine that owns it): to a waiting accept, or into the accept queue.
    /// Called on that engine's loop.
    /// </summary>
    internal bool Offer(TcpConnection connection, TcpListenEndpoint endpoint)
    {
        lock (_gate)
        {
            if (_disposed)
                return false;
            while (_acceptors.First is { } first)
            {
                _acceptors.RemoveFirst();
                if (_inlineCompletions)
                {
                    // Handed over when the loop's burst ends, outside this lock; an acceptor
                    // canceled meanwhile gives the connection back (Handover).
                    if (first.Value.Task.IsCompleted)
                        continue;
                    InlineCompletions.Complete(static h => ((Handover)h!).Run(), new Handover(this, first.Value, connection, endpoint));
                    return true;
                }
                if (first.Value.TrySetResult(connection))
                    return true;
            }
            _ready.Enqueue((connection, endpoint));
            Interlocked.Increment(ref endpoint.Queued);
            return true;
        }
    }

    /// <summary>
    /// Stops listening: the port is freed, connections not yet accepted are reset, pending
    /// <see cref="AcceptAsync"/> calls fail with <see cref="SocketError.OperationAborted"/>. Idempotent.
    /// </summary>
    public void Dispose()
    {
        List<TcpConnection> queued;
        List<TaskCompletionSource<TcpConnection>> acceptors;
        lock (_gate)
        {
            if (_disposed)
                return;
            _disposed = true;
            queued = [.. _ready.Select(r => r.Connection)];
            _ready.Clear();
            Interlocked.Exchange(ref Endpoint.Queued, 0);
            foreach (var (_, endpoint) in _engines)
                Interlocked.Exchange(ref endpoint.Queued, 0);
            acceptors = [.. _acceptors];
            _acceptors.Clear();
        }
        _stack.Unlisten(this);
        foreach (var acceptor in acceptors)
        {
            var aborted = new SocketException((int)SocketError.OperationAborted);
            if (_inlineCompletions)
                InlineCompletions.Complete(static s =>
                {
                    var (source, e) = ((TaskCompletionSource<TcpConnection>, Exception))s!;
                    source.TrySetException(e);
                }, (acceptor, (Exception)aborted));
            else
                acceptor.TrySetException(aborted);
        }
        foreach (var connection in queued)
        {
            try
            {
                connection.Abort();
            }
            catch (ObjectDisposedException)
            {
            }
        }
    }

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>The local endpoint.</summary>
    public override string ToString() => $"tcp listener {LocalEndPoint}";
}
