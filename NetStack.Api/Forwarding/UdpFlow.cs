using System.Buffers;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using NetStack.Core.Stack;

namespace NetStack;

/// <summary>
/// One UDP flow through the <see cref="UdpForwarder"/>: the datagrams between the peer
/// <see cref="RemoteEndPoint"/> and the destination it sent to, <see cref="LocalEndPoint"/> (any
/// address), both ways, like a kernel UDP socket bound to the destination and connected to the
/// peer. Replies sent with <see cref="SendAsync"/> leave from <see cref="LocalEndPoint"/>.
/// </summary>
public sealed class UdpFlow : IAsyncDisposable, IDisposable
{
    private readonly NetworkStack _stack;
    private readonly object _gate = new();
    private readonly Queue<(byte[] Buffer, int Length)> _queue = new();
    private readonly int _capacity;
    private int _queuedBytes;
    private TaskCompletionSource<int>? _waiter;
    private Memory<byte> _waiterBuffer;
    private CancellationTokenRegistration _waiterRegistration;
    private SocketError _ended = SocketError.Success;
    private SocketError _pendingError = SocketError.Success;
    private bool _disposed;
    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // Datagrams SendAsync copied, for the loop; one drain command posted at a time.
    private readonly ConcurrentQueue<(byte[] Buffer, int Length)> _sends = new();
    private int _sendQueuedBytes;
    private int _sendScheduled;

    internal UdpFlow(NetworkStack stack, UdpFlowEntry entry, byte[] quote, int capacity)
    {
        _stack = stack;
        Entry = entry;
        Quote = quote;
        _capacity = capacity;
        var key = entry.Key;
        LocalEndPoint = new IPEndPoint(key.Local.ToIPAddress(), key.LocalPort);
        RemoteEndPoint = new IPEndPoint(key.Remote.ToIPAddress(), key.RemotePort);
    }

    internal UdpFlowEntry Entry { get; }

    // The start of the first datagram's IP packet, for the ICMP error Refuse sends.
    internal byte[] Quote { get; }

    internal Action? SendCommand;

    /// <summary>The destination the peer sent to (the original destination); replies leave from it.</summary>
    public IPEndPoint LocalEndPoint { get; }

    /// <summary>The peer.</summary>
    public IPEndPoint RemoteEndPoint { get; }

    /// <summary>Completes when the flow ends: idle for <see cref="NetStackOptions.ForwardUdpIdleTimeout"/>, disposed, or its forwarder or stack gone.</summary>
    public Task Completion => _completion.Task;

    /// <summary>
    /// Receives the next datagram from the peer into <paramref name="buffer"/>. A datagram longer
    /// than the buffer fills it and the call throws <see cref="SocketException"/> with
    /// <see cref="SocketError.MessageSize"/> (the rest is lost), as <see cref="Socket"/> does.
    /// One receive at a time.
    /// </summary>
    /// <param name="buffer">Where the payload goes.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>The datagram's length.</returns>
    /// <exception cref="SocketException">TimedOut once the flow has ended idle; OperationAborted when its forwarder or stack went away; ConnectionRefused (once) after the peer answered a reply with an ICMP port unreachable; MessageSize.</exception>
    /// <exception cref="InvalidOperationException">Another receive is waiting.</exception>
    /// <exception cref="ObjectDisposedException">The flow is disposed.</exception>
    public ValueTask<int> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (cancellationToken.IsCancellationRequested)
            return ValueTask.FromCanceled<int>(cancellationToken);
        TaskCompletionSource<int> waiter;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_queue.TryDequeue(out var queued))
            {
                _queuedBytes -= queued.Length + UdpSocket.DatagramOverhead;
                return Copied(queued.Buffer, queued.Length, buffer);
            }
            if (_pendingError != SocketError.Success)
            {
                var error = _pendingError;
                _pendingError = SocketError.Success;
                return ValueTask.FromException<int>(new SocketException((int)error));
            }
            if (_ended != SocketError.Success)
                return ValueTask.FromException<int>(new SocketException((int)_ended));
            if (_waiter is not null)
                throw new InvalidOperationException("Another receive is already waiting on this flow.");
            waiter = _waiter = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiterBuffer = buffer;
            if (cancellationToken.CanBeCanceled)
            {
                _waiterRegistration = cancellationToken.Register(() =>
                {
                    lock (_gate)
                    {
                        if (ReferenceEquals(_waiter, waiter))
                            _waiter = null;
                    }
                    waiter.TrySetCanceled(cancellationToken);
                });
            }
        }
        return new ValueTask<int>(waiter.Task);
    }

    private static ValueTask<int> Copied(byte[] rented, int length, Memory<byte> buffer)
    {
        int copied = Math.Min(length, buffer.Length);
        rented.AsSpan(0, copied).CopyTo(buffer.Span);
        ArrayPool<byte>.Shared.Return(rented);
        return copied < length
            ? ValueTask.FromException<int>(new SocketException((int)SocketError.MessageSize))
            : ValueTask.FromResult(copied);
    }

    // Loop: a datagram from the peer. False when it was dropped (queue full, flow gone).
    internal bool Deliver(ReadOnlySpan<byte> payload)
    {
        TaskCompletionSource<int>? waiter;
        lock (_gate)
        {
            if (_disposed || _ended != SocketError.Success)
                return false;
            waiter = _waiter;
            if (waiter is null)
            {
                int charge = payload.Length + UdpSocket.DatagramOverhead;
                if (_queuedBytes + charge > _capacity)
                    return false;
                var copy = ArrayPool<byte>.Shared.Rent(Math.Max(1, payload.Length));
                payload.CopyTo(copy);
                _queue.Enqueue((copy, payload.Length));
                _queuedBytes += charge;
                return true;
            }
            _waiter = null;
            int copied = Math.Min(payload.Length, _waiterBuffer.Length);
            payload[..copied].CopyTo(_waiterBuffer.Span);
            _waiterBuffer = default;
            _waiterRegistration.Unregister();
            if (copied < payload.Length)
                waiter.TrySetException(new SocketException((int)SocketError.MessageSize));
            else
                waiter.TrySetResult(copied);
        }
        return true;
    }

    // Loop: an ICMP port unreachable about one of our replies (as a connected kernel UDP socket
    // reports it: ConnectionRefused on the next receive).
    internal void ReportRefused()
    {
        TaskCompletionSource<int>? waiter;
        lock (_gate)
        {
            waiter = _waiter;
            _waiter = null;
            if (waiter is null)
            {
                _pendingError = SocketError.ConnectionRefused;
                return;
            }
            _waiterRegistration.Unregister();
        }
        waiter.TrySetException(new SocketException((int)SocketError.ConnectionRefused));
    }

    // The flow ended (idle, forwarder or stack gone): waiting and later receives fail with `why`.
    internal void End(SocketError why)
    {
        TaskCompletionSource<int>? waiter;
        lock (_gate)
        {
            if (_ended == SocketError.Success)
                _ended = why;
            waiter = _waiter;
            _waiter = null;
            _waiterRegistration.Unregister();
        }
        waiter?.TrySetException(new SocketException((int)why));
        while (_sends.TryDequeue(out var s))
            ArrayPool<byte>.Shared.Return(s.Buffer);
        _completion.TrySetResult();
    }

    /// <summary>
    /// Sends one datagram to the peer, from <see cref="LocalEndPoint"/>, fragmented as the path
    /// MTU requires. The datagram is copied and the call completes at once; a datagram that finds
    /// the flow's send queue full (the receive queue's size) is dropped and counted
    /// (<c>udp.forward.drop.send-queue-full</c>), as UDP may.
    /// </summary>
    /// <param name="datagram">The payload: up to 65507 bytes over IPv4, 65527 over IPv6.</param>
    /// <param name="cancellationToken">Checked before the send.</param>
    /// <exception cref="SocketException">MessageSize above the maximum; TimedOut or OperationAborted once the flow has ended.</exception>
    /// <exception cref="ObjectDisposedException">The flow is disposed.</exception>
    /// <exception cref="OperationCanceledException">The token was canceled.</exception>
    public ValueTask SendAsync(ReadOnlyMemory<byte> datagram, CancellationToken cancellationToken = default)
    {
        if (cancellationToken.IsCancellationRequested)
            return ValueTask.FromCanceled(cancellationToken);
        int limit = Entry.Key.Remote.IsIpv6 ? IpLayer.MaxUdpPayloadV6 : IpLayer.MaxUdpPayloadV4;
        if (datagram.Length > limit)
            return ValueTask.FromException(new SocketException((int)SocketError.MessageSize));
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_ended != SocketError.Success)
                return ValueTask.FromException(new SocketException((int)_ended));
        }
        int charge = datagram.Length + UdpSocket.DatagramOverhead;
        if (Interlocked.Add(ref _sendQueuedBytes, charge) > _capacity)
        {
            Interlocked.Add(ref _sendQueuedBytes, -charge);
            _stack.CountForwardDrop("udp.forward.drop.send-queue-full");
            return ValueTask.CompletedTask;
        }
        var copy = ArrayPool<byte>.Shared.Rent(Math.Max(1, datagram.Length));
        datagram.Span.CopyTo(copy);
        _sends.Enqueue((copy, datagram.Length));
        if (Interlocked.Exchange(ref _sendScheduled, 1) == 0)
            _stack.ScheduleFlowSend(this);
        return ValueTask.CompletedTask;
    }

    // Loop: the next datagram to send, or false (then the next SendAsync posts again).
    internal bool TryTakeSend(out byte[] buffer, out int length)
    {
        if (_sends.TryDequeue(out var s))
        {
            Interlocked.Add(ref _sendQueuedBytes, -(s.Length + UdpSocket.DatagramOverhead));
            (buffer, length) = s;
            return true;
        }
        Volatile.Write(ref _sendScheduled, 0);
        // A send that came in after the dequeue failed but saw the flag still set: take it now.
        if (!_sends.IsEmpty && Interlocked.Exchange(ref _sendScheduled, 1) == 0)
            return TryTakeSend(out buffer, out length);
        (buffer, length) = (null!, 0);
        return false;
    }

    /// <summary>
    /// Refuses the flow (its destination could not be reached): the peer gets what
    /// <paramref name="how"/> says about the flow's first datagram (by default an ICMP port
    /// unreachable from <see cref="LocalEndPoint"/>, as a host with no socket on the port sends),
    /// and the flow ends.
    /// </summary>
    /// <param name="how">The answer (<see cref="ForwardRefusal.Reset"/> means a port unreachable).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="how"/> is not a defined value.</exception>
    public void Refuse(ForwardRefusal how = ForwardRefusal.PortUnreachable)
    {
        if (!Enum.IsDefined(how))
            throw new ArgumentOutOfRangeException(nameof(how), how, "Not a ForwardRefusal.");
        bool first;
        lock (_gate)
            first = !_disposed;
        if (first)
            _stack.RefuseFlow(this, how);
        Dispose();
    }

    /// <summary>Ends the flow: queued datagrams are dropped, a waiting receive fails with OperationAborted; the next datagram from the peer starts a new flow.</summary>
    public void Dispose()
    {
        TaskCompletionSource<int>? waiter;
        lock (_gate)
        {
            if (_disposed)
                return;
            _disposed = true;
            waiter = _waiter;
            _waiter = null;
            _waiterRegistration.Unregister();
            while (_queue.TryDequeue(out var queued))
                ArrayPool<byte>.Shared.Return(queued.Buffer);
            _queuedBytes = 0;
        }
        waiter?.TrySetException(new SocketException((int)SocketError.OperationAborted));
        _stack.CloseFlow(this);
        _completion.TrySetResult();
    }

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>The flow's endpoints.</summary>
    public override string ToString() => $"udp {RemoteEndPoint} -> {LocalEndPoint}";
}
