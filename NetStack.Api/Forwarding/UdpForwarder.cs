using System.Threading.Channels;

namespace NetStack;

/// <summary>
/// Takes the UDP datagrams to any address and port that no bound socket takes, in a stack
/// started with <see cref="NetStackOptions.AnyDestination"/>, as flows: one
/// <see cref="UdpFlow"/> per peer endpoint and destination endpoint, offered when its first
/// datagram arrives. Made by <see cref="NetworkStack.ForwardUdp"/>; one per stack.
/// </summary>
/// <remarks>
/// At most <see cref="NetStackOptions.ForwardMaxUdpFlows"/> flows are open at once (datagrams of
/// further flows are dropped and counted as <c>udp.forward.drop.flows-full</c>); a flow ends after
/// <see cref="NetStackOptions.ForwardUdpIdleTimeout"/> without a datagram either way.
/// </remarks>
public sealed class UdpForwarder : IAsyncDisposable, IDisposable
{
    private readonly NetworkStack _stack;
    private readonly Channel<UdpFlow> _flows =
        Channel.CreateUnbounded<UdpFlow>(new UnboundedChannelOptions { SingleWriter = true });
    private int _disposed;

    internal UdpForwarder(NetworkStack stack) => _stack = stack;

    /// <summary>Waits for the next new flow (its first datagram is waiting in it).</summary>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <exception cref="ObjectDisposedException">The forwarder or its stack is disposed.</exception>
    /// <exception cref="OperationCanceledException">The token was canceled.</exception>
    public ValueTask<UdpFlow> AcceptAsync(CancellationToken cancellationToken = default) =>
        ForwarderQueue.TakeAsync(_flows.Reader, nameof(UdpForwarder), cancellationToken);

    internal void Offer(UdpFlow flow) => _flows.Writer.TryWrite(flow);

    internal void StackDisposed()
    {
        _flows.Writer.TryComplete();
        while (_flows.Reader.TryRead(out var flow))
            flow.End(System.Net.Sockets.SocketError.OperationAborted);
    }

    /// <summary>
    /// Stops forwarding: every flow ends (its receives fail with OperationAborted), and datagrams
    /// no socket takes get a port unreachable again.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        _flows.Writer.TryComplete();
        _stack.StopForwardingUdp(this);
        while (_flows.Reader.TryRead(out var flow))
            flow.End(System.Net.Sockets.SocketError.OperationAborted);
    }

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }
}
