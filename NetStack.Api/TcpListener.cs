using System.Net;
using System.Net.Sockets;

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
public sealed class TcpListener : IAsyncDisposable, IDisposable
{
    private readonly NetworkStack _stack;
    private readonly object _gate = new();
    private readonly Queue<TcpConnection> _ready = new();
    private readonly LinkedList<TaskCompletionSource<TcpConnection>> _acceptors = new();
    private readonly int _backlog;
    private readonly int _maxHalfOpen;
    private bool _disposed;

    /// <summary>Connections of this listener in SYN-RECEIVED (loop only).</summary>
    internal int HalfOpen;

    internal TcpListener(NetworkStack stack, IPEndPoint localEndPoint, bool ipv4, bool ipv6, int backlog, int maxHalfOpen)
    {
        _stack = stack;
        LocalEndPoint = localEndPoint;
        BindsIpv4 = ipv4;
        BindsIpv6 = ipv6;
        _backlog = backlog;
        _maxHalfOpen = maxHalfOpen;
    }

    /// <summary>The local address and port (the port chosen when 0 was asked for).</summary>
    public IPEndPoint LocalEndPoint { get; }

    internal bool BindsIpv4 { get; }

    internal bool BindsIpv6 { get; }

    internal ushort Port => (ushort)LocalEndPoint.Port;

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
                return ValueTask.FromResult(ready);
            acceptor = new TaskCompletionSource<TcpConnection>(TaskCreationOptions.RunContinuationsAsynchronously);
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
                    acceptor.TrySetCanceled(cancellationToken);
                });
                acceptor.Task.ContinueWith(static (_, r) => ((CancellationTokenRegistration)r!).Unregister(), registration,
                    CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            }
        }
        return new ValueTask<TcpConnection>(acceptor.Task);
    }

    /// <summary>When the loop last answered a SYN for this listener with a SYN cookie (loop only).</summary>
    internal long? CookieSentAt;

    /// <summary>True when the half-open queue has room for one more (loop only).</summary>
    internal bool HalfOpenHasRoom => HalfOpen < _maxHalfOpen;

    /// <summary>True when the listener is open and its accept queue has room for one more.</summary>
    internal bool AcceptQueueHasRoom
    {
        get
        {
            lock (_gate)
                return !_disposed && _ready.Count < _backlog;
        }
    }

    /// <summary>An established connection for the accept queue; false when the listener is gone.</summary>
    internal bool Offer(TcpConnection connection)
    {
        lock (_gate)
        {
            if (_disposed)
                return false;
            while (_acceptors.First is { } first)
            {
                _acceptors.RemoveFirst();
                if (first.Value.TrySetResult(connection))
                    return true;
            }
            _ready.Enqueue(connection);
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
            queued = [.. _ready];
            _ready.Clear();
            acceptors = [.. _acceptors];
            _acceptors.Clear();
        }
        _stack.Unlisten(this);
        foreach (var acceptor in acceptors)
            acceptor.TrySetException(new SocketException((int)SocketError.OperationAborted));
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
