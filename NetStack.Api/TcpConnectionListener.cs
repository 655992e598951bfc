using System.Net;
using System.Net.Sockets;
using NetStack.Core.Stack;

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
    private readonly Queue<TcpConnection> _ready = new();
    private readonly LinkedList<TaskCompletionSource<TcpConnection>> _acceptors = new();
    private bool _disposed;

    internal TcpConnectionListener(NetworkStack stack, IPEndPoint localEndPoint, TcpListenEndpoint endpoint)
    {
        _stack = stack;
        LocalEndPoint = localEndPoint;
        Endpoint = endpoint;
    }

    // The listener in the core's endpoint table, whose accept-queue count (Queued) follows
    // _ready: the table drops SYNs while it is at the backlog (RFC 9293 §3.10.7.2).
    internal TcpListenEndpoint Endpoint { get; }

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
                Interlocked.Decrement(ref Endpoint.Queued);
                return ValueTask.FromResult(ready);
            }
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
            Interlocked.Increment(ref Endpoint.Queued);
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
            Interlocked.Exchange(ref Endpoint.Queued, 0);
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
