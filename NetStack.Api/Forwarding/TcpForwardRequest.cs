using System.Net;
using System.Net.Sockets;
using NetStack.Core.Stack;

namespace NetStack;

/// <summary>
/// A TCP connection request the <see cref="TcpForwarder"/> took: a SYN from
/// <see cref="RemoteEndPoint"/> to <see cref="LocalEndPoint"/> (any address), not yet answered.
/// Decide once: <see cref="AcceptAsync"/> or <see cref="Refuse"/>.
/// </summary>
public sealed class TcpForwardRequest
{
    private readonly NetworkStack _stack;
    private int _decided;
    private volatile bool _expired;

    internal TcpForwardRequest(NetworkStack stack, TcpPendingConnection pending, byte[] quote)
    {
        _stack = stack;
        Pending = pending;
        Quote = quote;
        var key = pending.Key;
        LocalEndPoint = new IPEndPoint(key.Local.ToIPAddress(), key.LocalPort);
        RemoteEndPoint = new IPEndPoint(key.Remote.ToIPAddress(), key.RemotePort);
    }

    internal TcpPendingConnection Pending { get; }

    // The start of the SYN's IP packet, for the ICMP error a refusal sends.
    internal byte[] Quote { get; }

    /// <summary>Where the peer wanted to connect to: the original destination.</summary>
    public IPEndPoint LocalEndPoint { get; }

    /// <summary>The peer.</summary>
    public IPEndPoint RemoteEndPoint { get; }

    /// <summary>True once the request has waited past <see cref="NetStackOptions.ForwardTcpDecisionTimeout"/> unanswered.</summary>
    public bool IsExpired => _expired;

    internal void Expired() => _expired = true;

    /// <summary>
    /// Accepts: the stack answers the SYN with its SYN,ACK from <see cref="LocalEndPoint"/>, and
    /// the call completes with the connection when the handshake does.
    /// </summary>
    /// <param name="cancellationToken">Cancels the handshake (the half-open connection is reset).</param>
    /// <returns>The established connection; its <see cref="TcpConnection.LocalEndPoint"/> is the original destination.</returns>
    /// <exception cref="InvalidOperationException">The request was already accepted or refused.</exception>
    /// <exception cref="SocketException">TimedOut when the request had expired or the handshake timed out; ConnectionReset when the peer reset it; TooManyOpenSockets at the connection cap.</exception>
    /// <exception cref="OperationCanceledException">The token was canceled.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public async ValueTask<TcpConnection> AcceptAsync(CancellationToken cancellationToken = default)
    {
        Decide();
        cancellationToken.ThrowIfCancellationRequested();
        var connection = await _stack.AcceptForwardedAsync(this).ConfigureAwait(false);
        try
        {
            await connection.Connected.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            connection.Abort();
            throw;
        }
        return connection;
    }

    /// <summary>Refuses: the peer gets what <paramref name="how"/> says (by default a RST).</summary>
    /// <param name="how">The answer.</param>
    /// <exception cref="InvalidOperationException">The request was already accepted or refused.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="how"/> is not a defined value.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public void Refuse(ForwardRefusal how = ForwardRefusal.Reset)
    {
        if (!Enum.IsDefined(how))
            throw new ArgumentOutOfRangeException(nameof(how), how, "Not a ForwardRefusal.");
        Decide();
        _stack.RefuseForwarded(this, how);
    }

    private void Decide()
    {
        if (Interlocked.Exchange(ref _decided, 1) != 0)
            throw new InvalidOperationException("The request has already been accepted or refused.");
    }

    /// <summary>The request's endpoints.</summary>
    public override string ToString() => $"tcp {RemoteEndPoint} -> {LocalEndPoint}";
}
