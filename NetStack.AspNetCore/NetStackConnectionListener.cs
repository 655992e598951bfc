using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;

namespace NetStack.AspNetCore;

/// <summary>
/// One endpoint Kestrel listens on through NetStack: a <see cref="TcpConnectionListener"/> whose accepted
/// connections become <see cref="ConnectionContext"/>s. Made by <see cref="NetStackTransportFactory"/>.
/// </summary>
internal sealed class NetStackConnectionListener : IConnectionListener
{
    private readonly TcpConnectionListener _listener;
    private long _nextId;

    internal NetStackConnectionListener(TcpConnectionListener listener)
    {
        _listener = listener;
    }

    /// <summary>The bound endpoint (with the port the stack chose for port 0).</summary>
    public EndPoint EndPoint => _listener.LocalEndPoint;

    /// <summary>The next connection, or null once the listener is unbound (Kestrel's signal to stop accepting).</summary>
    public async ValueTask<ConnectionContext?> AcceptAsync(CancellationToken cancellationToken = default)
    {
        TcpConnection connection;
        try
        {
            connection = await _listener.AcceptAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.OperationAborted)
        {
            return null;
        }
        catch (ObjectDisposedException)
        {
            return null;
        }
        var id = $"netstack-{_listener.LocalEndPoint.Port}-{Interlocked.Increment(ref _nextId)}";
        var context = new NetStackConnection(connection, id);
        context.Start();
        return context;
    }

    /// <summary>Stops listening: the port is freed and pending accepts return null. Connections already accepted go on.</summary>
    public ValueTask UnbindAsync(CancellationToken cancellationToken = default) => _listener.DisposeAsync();

    /// <summary>Same as <see cref="UnbindAsync"/>.</summary>
    public ValueTask DisposeAsync() => _listener.DisposeAsync();
}
