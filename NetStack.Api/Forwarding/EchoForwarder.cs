using System.Net;
using System.Threading.Channels;
using NetStack.Core.Stack;

namespace NetStack;

/// <summary>
/// Takes the ICMP echo requests (pings) to addresses other than the stack's own, in a stack
/// started with <see cref="NetStackOptions.AnyDestination"/>: the user answers each (after
/// pinging the real destination, say) or refuses it. Without an echo forwarder the stack answers
/// them itself. Made by <see cref="NetworkStack.ForwardEcho"/>; one per stack. At most
/// <see cref="NetStackOptions.ForwardMaxEchoRequests"/> wait; further ones are dropped and
/// counted (<c>icmp.forward.drop.queue-full</c>).
/// </summary>
public sealed class EchoForwarder : IAsyncDisposable, IDisposable
{
    private readonly NetworkStack _stack;
    private readonly Channel<EchoRequest> _requests;
    private int _disposed;

    internal EchoForwarder(NetworkStack stack, int capacity)
    {
        _stack = stack;
        _requests = Channel.CreateBounded<EchoRequest>(new BoundedChannelOptions(capacity)
        {
            SingleWriter = true,
            FullMode = BoundedChannelFullMode.Wait,
        });
    }

    /// <summary>Waits for the next echo request.</summary>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <exception cref="ObjectDisposedException">The forwarder or its stack is disposed.</exception>
    /// <exception cref="OperationCanceledException">The token was canceled.</exception>
    public ValueTask<EchoRequest> AcceptAsync(CancellationToken cancellationToken = default) =>
        ForwarderQueue.TakeAsync(_requests.Reader, nameof(EchoForwarder), cancellationToken);

    // Loop: false when the queue is full.
    internal bool Offer(EchoRequest request) => _requests.Writer.TryWrite(request);

    internal void StackDisposed() => _requests.Writer.TryComplete();

    /// <summary>Stops forwarding echo requests: the stack answers them itself again.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        _requests.Writer.TryComplete();
        _stack.StopForwardingEcho(this);
    }

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }
}

/// <summary>An ICMP echo request (RFC 792, RFC 4443 §4.1) to an address other than the stack's, for the <see cref="EchoForwarder"/>.</summary>
public sealed class EchoRequest
{
    private readonly NetworkStack _stack;
    private int _decided;

    internal EchoRequest(NetworkStack stack, IpAddr source, IpAddr destination, ushort identifier, ushort sequence, byte[] packet, int dataOffset, int dataLength)
    {
        _stack = stack;
        SourceAddress = source;
        DestinationAddress = destination;
        Identifier = identifier;
        Sequence = sequence;
        Packet = packet;
        Data = new ReadOnlyMemory<byte>(packet, dataOffset, dataLength);
        Source = source.ToIPAddress();
        Destination = destination.ToIPAddress();
    }

    internal IpAddr SourceAddress { get; }

    internal IpAddr DestinationAddress { get; }

    // The whole IP packet (the quote of a refusal's ICMP error).
    internal byte[] Packet { get; }

    /// <summary>Who pings.</summary>
    public IPAddress Source { get; }

    /// <summary>The address pinged.</summary>
    public IPAddress Destination { get; }

    /// <summary>The echo identifier.</summary>
    public ushort Identifier { get; }

    /// <summary>The echo sequence number.</summary>
    public ushort Sequence { get; }

    /// <summary>The echo data (a reply carries it back).</summary>
    public ReadOnlyMemory<byte> Data { get; }

    /// <summary>Answers with an echo reply from <see cref="Destination"/>, with the same identifier, sequence number and data.</summary>
    /// <exception cref="InvalidOperationException">Already answered or refused.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public void Reply()
    {
        Decide();
        _stack.ReplyEcho(this);
    }

    /// <summary>Refuses: the pinger gets what <paramref name="how"/> says (by default ICMP host unreachable; <see cref="ForwardRefusal.Ignore"/>: nothing, a timeout).</summary>
    /// <param name="how">The answer (<see cref="ForwardRefusal.Reset"/> means host unreachable).</param>
    /// <exception cref="InvalidOperationException">Already answered or refused.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="how"/> is not a defined value.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public void Refuse(ForwardRefusal how = ForwardRefusal.HostUnreachable)
    {
        if (!Enum.IsDefined(how))
            throw new ArgumentOutOfRangeException(nameof(how), how, "Not a ForwardRefusal.");
        Decide();
        _stack.RefuseEcho(this, how);
    }

    private void Decide()
    {
        if (Interlocked.Exchange(ref _decided, 1) != 0)
            throw new InvalidOperationException("The echo request has already been answered or refused.");
    }

    /// <summary>The request.</summary>
    public override string ToString() => $"echo {Source} -> {Destination} id {Identifier} seq {Sequence}";
}
