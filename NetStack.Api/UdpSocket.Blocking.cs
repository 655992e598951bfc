using System.Buffers;
using System.Net;
using System.Net.Sockets;
using NetStack.Engine;

namespace NetStack;

/// <summary>
/// The blocking calls, as <see cref="Socket.ReceiveFrom(Span{byte}, ref EndPoint)"/> and
/// <see cref="Socket.SendTo(ReadOnlySpan{byte}, EndPoint)"/>: for a thread that serves one socket
/// and would only wait anyway. A blocked receive sleeps on the socket's lock and the engine loop
/// wakes it when it queues a datagram (one wake-up, no thread-pool work item), as a kernel
/// socket's recvfrom sleeps until the softirq queues one.
/// </summary>
public sealed partial class UdpSocket
{
    // Threads blocked in ReceiveFrom (under _gate); the loop pulses the lock only when there are.
    private int _blockedReceivers;
    private int _receiveTimeout;

    /// <summary>
    /// How long <see cref="ReceiveFrom"/> waits for a datagram, in milliseconds
    /// (<see cref="Socket.ReceiveTimeout"/>, SO_RCVTIMEO); 0 or -1, the default, waits for ever
    /// (it then reads 0). The asynchronous receives ignore it, as a Socket's do.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is below -1.</exception>
    public int ReceiveTimeout
    {
        get => Volatile.Read(ref _receiveTimeout);
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, -1);
            Volatile.Write(ref _receiveTimeout, value == -1 ? 0 : value);
        }
    }

    /// <summary>
    /// Receives one datagram into <paramref name="buffer"/>, blocking the calling thread until one
    /// arrives (or <see cref="ReceiveTimeout"/> passes). A datagram longer than the buffer fills it
    /// and the rest is lost, as with <see cref="ReceiveFromAsync(Memory{byte}, CancellationToken)"/>.
    /// </summary>
    /// <param name="buffer">Where the payload goes.</param>
    /// <param name="remoteEP">Set to the sender's endpoint.</param>
    /// <returns>The number of bytes received.</returns>
    /// <exception cref="SocketException">TimedOut when <see cref="ReceiveTimeout"/> passed with nothing
    /// received; Interrupted when the socket is disposed during the wait (as a Socket's blocking call;
    /// its asynchronous ones give OperationAborted); ConnectionRefused.</exception>
    /// <exception cref="ObjectDisposedException">The socket is disposed.</exception>
    /// <exception cref="InvalidOperationException">Called on an engine thread (<see cref="NetStackOptions.UnsafeInlineCompletions"/>).</exception>
    public int ReceiveFrom(Span<byte> buffer, ref EndPoint remoteEP)
    {
        ArgumentNullException.ThrowIfNull(remoteEP);
        InlineCompletions.ThrowIfEngineThread("UdpSocket.ReceiveFrom");
        int timeout = ReceiveTimeout;
        long deadline = timeout > 0 ? Environment.TickCount64 + timeout : long.MaxValue;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            while (true)
            {
                // A Socket's blocking call cut short by its close fails with Interrupted (EINTR);
                // its asynchronous calls with OperationAborted.
                if (_disposed)
                    throw new SocketException((int)SocketError.Interrupted);
                if (TakePendingErrorLocked() is { } error)
                    throw error;
                if (TryDequeueLocked(buffer, out int copied, out var source, out _))
                {
                    remoteEP = source;
                    return copied;
                }
                int wait = Timeout.Infinite;
                if (timeout > 0)
                {
                    long left = deadline - Environment.TickCount64;
                    if (left <= 0)
                        throw new SocketException((int)SocketError.TimedOut);
                    wait = (int)left;
                }
                _blockedReceivers++;
                try
                {
                    Monitor.Wait(_gate, wait);
                }
                finally
                {
                    _blockedReceivers--;
                }
            }
        }
    }

    /// <summary>
    /// Sends one datagram to <paramref name="remoteEP"/>, returning when it is queued for the
    /// device (see <see cref="SendToAsync(ReadOnlyMemory{byte}, IPEndPoint, CancellationToken)"/>;
    /// when that has to wait for the loop, this blocks the calling thread meanwhile).
    /// </summary>
    /// <param name="buffer">The payload: up to 65507 bytes over IPv4, 65527 over IPv6.</param>
    /// <param name="remoteEP">The destination, an <see cref="IPEndPoint"/>.</param>
    /// <returns>The number of payload bytes sent.</returns>
    /// <exception cref="SocketException">MessageSize for a payload above the maximum.</exception>
    /// <exception cref="ArgumentException">The endpoint is not an IPEndPoint, or is unusable.</exception>
    /// <exception cref="ObjectDisposedException">The socket is disposed.</exception>
    /// <exception cref="InvalidOperationException">Called on an engine thread (<see cref="NetStackOptions.UnsafeInlineCompletions"/>).</exception>
    public int SendTo(ReadOnlySpan<byte> buffer, EndPoint remoteEP)
    {
        ArgumentNullException.ThrowIfNull(remoteEP);
        if (remoteEP is not IPEndPoint remote)
            throw new ArgumentException($"A UDP destination is an IPEndPoint, not a {remoteEP.GetType().Name}.", nameof(remoteEP));
        InlineCompletions.ThrowIfEngineThread("UdpSocket.SendTo");
        // The asynchronous send copies what it queues; the copy here only has to live until it
        // completes, which it does at once unless the send waits for the loop.
        var copy = ArrayPool<byte>.Shared.Rent(Math.Max(1, buffer.Length));
        try
        {
            buffer.CopyTo(copy);
            var sent = SendToAsync(copy.AsMemory(0, buffer.Length), remote);
            return sent.IsCompletedSuccessfully ? sent.Result : sent.AsTask().GetAwaiter().GetResult();
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(copy);
        }
    }

    // Under _gate: a datagram was queued, or the socket's state changed (an error, disposal).
    private void WakeBlockedLocked(bool all)
    {
        if (_blockedReceivers == 0)
            return;
        if (all)
            Monitor.PulseAll(_gate);
        else
            Monitor.Pulse(_gate);
    }
}
