using System.Threading.Channels;
using NetStack.Core.Stack;

namespace NetStack;

/// <summary>
/// Takes the TCP connections to any address and port that no listener takes, in a stack started
/// with <see cref="NetStackOptions.AnyDestination"/> (gVisor's forwarder shape): each SYN becomes
/// a <see cref="TcpForwardRequest"/>, answered only once the user decides, so a proxy can first
/// open its own outbound connection and then accept or refuse. Made by
/// <see cref="NetworkStack.ForwardTcp"/>; one per stack.
/// </summary>
/// <remarks>
/// Requests wait in SYN order. At most <see cref="NetStackOptions.ForwardMaxPendingTcp"/> wait for
/// a decision (further SYNs are dropped and counted as <c>tcp.forward.drop.pending-full</c>; the
/// peer retries), and a request not decided within
/// <see cref="NetStackOptions.ForwardTcpDecisionTimeout"/> expires unanswered. The SYN's
/// retransmissions while a request waits are absorbed.
/// </remarks>
public sealed class TcpForwarder : IAsyncDisposable, IDisposable
{
    private readonly NetworkStack _stack;
    private readonly Channel<TcpForwardRequest> _requests =
        Channel.CreateUnbounded<TcpForwardRequest>(new UnboundedChannelOptions { SingleWriter = true });
    private int _disposed;

    internal TcpForwarder(NetworkStack stack, TcpListenEndpoint endpoint)
    {
        _stack = stack;
        Endpoint = endpoint;
    }

    internal TcpListenEndpoint Endpoint { get; }

    /// <summary>
    /// Waits for the next connection request. Nothing has been answered yet: call
    /// <see cref="TcpForwardRequest.AcceptAsync"/> or <see cref="TcpForwardRequest.Refuse"/>.
    /// </summary>
    /// <param name="cancellationToken">Cancels the wait (the request, if one comes, stays queued).</param>
    /// <exception cref="ObjectDisposedException">The forwarder or its stack is disposed.</exception>
    /// <exception cref="OperationCanceledException">The token was canceled.</exception>
    public ValueTask<TcpForwardRequest> AcceptAsync(CancellationToken cancellationToken = default) =>
        ForwarderQueue.TakeAsync(_requests.Reader, nameof(TcpForwarder), cancellationToken);

    // Loop: a new request.
    internal void Offer(TcpForwardRequest request) => _requests.Writer.TryWrite(request);

    internal void StackDisposed() => _requests.Writer.TryComplete();

    /// <summary>
    /// Stops forwarding: from now on SYNs no listener takes get a RST. Requests not yet decided
    /// stay unanswered (their peers retry and then meet the RST); accepted connections go on.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        _requests.Writer.TryComplete();
        _stack.StopForwardingTcp(this);
    }

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }
}
