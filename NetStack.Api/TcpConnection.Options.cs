using System.Net.Sockets;
using NetStack.Engine;

namespace NetStack;

// Per-connection socket options (docs/api.md "Socket options"): the names and types of Socket's.
// The core decides with them (TcpSocketSettings: each change goes to the loop, which hands it to
// the connection's control block); the send buffer and linger are this side's.
public sealed partial class TcpConnection
{
    // Under _gate. At first shared, never changed in place: the listener's snapshot for the
    // connections it accepts (or the stack's defaults), or the TcpSocketOptions' (connected);
    // the first setter makes a copy of its own (OwnSocketLocked), so that an idle accepted
    // connection carries no copy.
    private TcpSocketState _socket;
    private bool _socketOwned;

    private TcpSocketState OwnSocketLocked()
    {
        if (!_socketOwned)
        {
            _socket = _socket.Clone();
            _socketOwned = true;
        }
        return _socket;
    }

    // The core's part, for the loop (a copy: a struct).
    internal Core.Tcp.TcpSocketSettings SocketSettings
    {
        get
        {
            lock (_gate)
                return _socket.Core;
        }
    }

    private T GetOption<T>(Func<TcpSocketState, T> get)
    {
        lock (_gate)
            return get(_socket);
    }

    // Changes an option under the lock, then tells the loop (the core's part of the options).
    private void SetOption(Action<TcpSocketState> set)
    {
        Core.Tcp.TcpSocketSettings settings;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            set(OwnSocketLocked());
            settings = _socket.Core;
        }
        _stack.TcpConfigure(this, settings);
    }

    /// <summary>
    /// The IPv4 time to live / IPv6 hop limit of the connection's segments (<see cref="Socket.Ttl"/>);
    /// 64 unless set here, by <see cref="TcpSocketOptions.Ttl"/> or by the listener that accepted it.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is outside 1..255.</exception>
    /// <exception cref="ObjectDisposedException">The connection is disposed.</exception>
    public short Ttl
    {
        get => GetOption(s => (short)s.Core.IpHeader.Ttl);
        set => SetOption(s => s.SetTtl(value, nameof(value)));
    }

    /// <summary>
    /// IP_TOS / IPV6_TCLASS of the connection's segments (0..255; <c>SocketOptionName.TypeOfService</c>):
    /// the DSCP in the upper six bits. The two ECN bits are the stack's (it sends Not-ECT) whatever is
    /// set here, as Linux keeps them for TCP's congestion control. Default 0.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is outside 0..255.</exception>
    /// <exception cref="ObjectDisposedException">The connection is disposed.</exception>
    public int TypeOfService
    {
        get => GetOption(s => (int)s.Core.IpHeader.TypeOfService);
        set => SetOption(s => s.SetTypeOfService(value, nameof(value)));
    }

    /// <summary>
    /// The IPv4 Don't Fragment bit of the connection's segments (<see cref="Socket.DontFragment"/>):
    /// true by default (TCP does path MTU discovery, RFC 1191). False lets routers fragment; the
    /// segments are still sized for the path MTU the stack knows. No effect on IPv6.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The connection is disposed.</exception>
    public bool DontFragment
    {
        get => GetOption(s => s.Core.IpHeader.DontFragment);
        set => SetOption(s => s.SetDontFragment(value));
    }

    /// <summary>
    /// Turns the Nagle algorithm off (true) or on (false, the default), like
    /// <see cref="Socket.NoDelay"/>. With Nagle on, a segment smaller than the MSS waits while
    /// earlier data is unacknowledged, so many small writes become few packets; a
    /// write-write-read exchange against a peer that delays its ACKs then stalls about one
    /// delayed-ACK time (40 ms on Linux) per exchange. Setting it true sends any held data at once.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The connection is disposed.</exception>
    public bool NoDelay
    {
        get => GetOption(s => s.Core.NoDelay);
        set
        {
            if (NoDelay != value)
                SetOption(s => s.SetNoDelay(value));
        }
    }

    /// <summary>
    /// The receive buffer's size in bytes (<see cref="Socket.ReceiveBufferSize"/>, SO_RCVBUF).
    /// Unset, it is <see cref="NetStackOptions.TcpReceiveBufferBytes"/> at first, grown by auto-tuning
    /// up to <see cref="NetStackOptions.TcpReceiveBufferMaxBytes"/> while the reader keeps up with a
    /// fast sender. Setting it locks it, as on Linux: auto-tuning stops for this connection. A larger
    /// value grows the buffer and opens the window at once, but only up to what the window scale
    /// agreed in the handshake can offer (65535·2^shift; the shift is chosen at SYN time from the
    /// size then, so set it through <see cref="TcpSocketOptions.ReceiveBufferSize"/> before
    /// connecting for a large window; without scaling at most 65535); a smaller one keeps the
    /// current buffer (an offered window is never taken back, RFC 9293 §3.8.6). The getter gives
    /// the buffer's current size (Linux's getsockopt gives twice what was set: its bookkeeping
    /// overhead; NetStack has none).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is outside 1..65535·2^14.</exception>
    /// <exception cref="ObjectDisposedException">The connection is disposed.</exception>
    public int ReceiveBufferSize
    {
        get
        {
            lock (_gate)
                return _receiveCapacity;
        }
        set => SetOption(s => s.SetReceiveBufferSize(value, nameof(value)));
    }

    /// <summary>
    /// The send buffer's size in bytes (<see cref="Socket.SendBufferSize"/>, SO_SNDBUF): how much
    /// written data may wait for the peer's acknowledgment before a write waits. Unset, it is
    /// <see cref="NetStackOptions.TcpSendBufferBytes"/> at first, grown by auto-tuning up to
    /// <see cref="NetStackOptions.TcpSendBufferMaxBytes"/> while a writer waits and the windows
    /// would carry more. Setting it locks it (no more auto-tuning, as on Linux); a larger value
    /// grows the buffer at once, a smaller one only stops the growth (bytes already buffered stay).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is outside 1..65535·2^14.</exception>
    /// <exception cref="ObjectDisposedException">The connection is disposed.</exception>
    public int SendBufferSize
    {
        get
        {
            lock (_gate)
                return _sendCapacity;
        }
        set
        {
            lock (_gate)
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                OwnSocketLocked().SetSendBufferSize(value, nameof(value));
            }
            _stack.TcpSetSendBuffer(this, value);
        }
    }

    // Loop only: SO_SNDBUF set to `size`: the limit for growth, and the buffer grown to it now.
    internal void LockSendBuffer(int size)
    {
        lock (_gate)
        {
            GrowSendBufferLocked(size);
            _sendCapacityMax = _sendCapacity; // locked: no more auto-tuning

        }
    }

    /// <summary>
    /// SO_LINGER (<see cref="Socket.LingerState"/>): what <see cref="DisposeAsync"/> and
    /// <see cref="Stream.Dispose()"/> do. Not enabled (the default, <c>LingerOption(false, 0)</c>):
    /// a graceful close, DisposeAsync waiting up to <see cref="NetStackOptions.TcpLinger"/> for the
    /// peer to acknowledge everything. Enabled with 0 seconds: dispose resets the connection (a
    /// RST, no FIN; unsent data is dropped), as the kernel's close does. Enabled with N seconds: a
    /// graceful close, DisposeAsync waiting up to N seconds for the acknowledgment of the FIN
    /// (the kernel's close blocks as long; the synchronous Dispose here never blocks). The getter
    /// returns a copy.
    /// </summary>
    /// <exception cref="ArgumentNullException">The value is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The linger time is negative.</exception>
    /// <exception cref="ObjectDisposedException">The connection is disposed.</exception>
    public LingerOption LingerState
    {
        get => GetOption(s => s.Linger is { } l ? new LingerOption(l.Enabled, l.LingerTime) : new LingerOption(false, 0));
        set
        {
            lock (_gate)
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                OwnSocketLocked().SetLinger(value, nameof(value));
            }
        }
    }

    /// <summary>
    /// SO_KEEPALIVE: after <see cref="KeepAliveTime"/> without a segment from the peer the
    /// connection sends a probe, then one every <see cref="KeepAliveInterval"/>; after
    /// <see cref="KeepAliveRetryCount"/> unanswered ones it fails with TimedOut (RFC 9293 §3.8.4,
    /// RFC 1122 §4.2.3.6). Default: on when <see cref="NetStackOptions.TcpKeepAlive"/> is set.
    /// Turning it on (or changing the time while on) starts the idle time again from now.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The connection is disposed.</exception>
    public bool KeepAlive
    {
        get => GetOption(s => s.KeepAlive);
        set => SetOption(s => s.SetKeepAlive(value));
    }

    /// <summary>
    /// TCP_KEEPIDLE (<c>SocketOptionName.TcpKeepAliveTime</c>): the idle time before the first probe,
    /// 1..32767 s. Default <see cref="NetStackOptions.TcpKeepAlive"/>, else 2 hours (Linux's).
    /// Kept while <see cref="KeepAlive"/> is off and used when it is turned on.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is outside 1..32767 seconds.</exception>
    /// <exception cref="ObjectDisposedException">The connection is disposed.</exception>
    public TimeSpan KeepAliveTime
    {
        get => GetOption(s => s.KeepAliveTime);
        set => SetOption(s => s.SetKeepAliveTime(value, nameof(value)));
    }

    /// <summary>
    /// TCP_KEEPINTVL (<c>SocketOptionName.TcpKeepAliveInterval</c>): the time between unanswered
    /// probes, 1..32767 s. Default <see cref="NetStackOptions.TcpKeepAliveInterval"/>.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is outside 1..32767 seconds.</exception>
    /// <exception cref="ObjectDisposedException">The connection is disposed.</exception>
    public TimeSpan KeepAliveInterval
    {
        get => GetOption(s => TimeSpan.FromMicroseconds(s.Core.KeepAliveInterval));
        set => SetOption(s => s.SetKeepAliveInterval(value, nameof(value)));
    }

    /// <summary>
    /// TCP_KEEPCNT (<c>SocketOptionName.TcpKeepAliveRetryCount</c>): unanswered probes before the
    /// connection fails, 1..127. Default <see cref="NetStackOptions.TcpKeepAliveCount"/>.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is outside 1..127.</exception>
    /// <exception cref="ObjectDisposedException">The connection is disposed.</exception>
    public int KeepAliveRetryCount
    {
        get => GetOption(s => s.Core.KeepAliveCount);
        set => SetOption(s => s.SetKeepAliveRetryCount(value, nameof(value)));
    }

    // ---- Everyday calls: Available, timeouts -----------------------------------------------------

    /// <summary>
    /// The bytes that can be read now without waiting (<see cref="Socket.Available"/>, FIONREAD):
    /// received in order and not yet read.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The connection is disposed.</exception>
    public int Available
    {
        get
        {
            lock (_gate)
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                return (int)Math.Min(int.MaxValue, _recvDelivered - _recvConsumed);
            }
        }
    }

    private int _readTimeout = Timeout.Infinite;
    private int _writeTimeout = Timeout.Infinite;

    /// <summary>True: the synchronous <see cref="Read(byte[], int, int)"/> and <see cref="Write(byte[], int, int)"/> honour <see cref="ReadTimeout"/> and <see cref="WriteTimeout"/>.</summary>
    public override bool CanTimeout => true;

    /// <summary>
    /// How long a synchronous read waits for data, in milliseconds (<see cref="NetworkStream.ReadTimeout"/>):
    /// <see cref="Timeout.Infinite"/> (the default) or positive. A read that times out throws
    /// <see cref="IOException"/> wrapping a <see cref="SocketException"/> with
    /// <see cref="SocketError.TimedOut"/>; the connection stays usable and no byte is lost (bytes
    /// that arrived meanwhile are read by the next call). Async reads ignore it, as NetworkStream's do.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is 0 or below and not <see cref="Timeout.Infinite"/>.</exception>
    public override int ReadTimeout
    {
        get => Volatile.Read(ref _readTimeout);
        set
        {
            if (value <= 0 && value != Timeout.Infinite)
                throw new ArgumentOutOfRangeException(nameof(value), value, "A timeout is positive or Timeout.Infinite.");
            Volatile.Write(ref _readTimeout, value);
        }
    }

    /// <summary>
    /// How long a synchronous write waits for room in the send buffer, in milliseconds
    /// (<see cref="NetworkStream.WriteTimeout"/>): <see cref="Timeout.Infinite"/> (the default) or
    /// positive. A write that times out throws <see cref="IOException"/> wrapping a
    /// <see cref="SocketException"/> with <see cref="SocketError.TimedOut"/>; the bytes already
    /// placed in the send buffer by then are sent. Async writes ignore it.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is 0 or below and not <see cref="Timeout.Infinite"/>.</exception>
    public override int WriteTimeout
    {
        get => Volatile.Read(ref _writeTimeout);
        set
        {
            if (value <= 0 && value != Timeout.Infinite)
                throw new ArgumentOutOfRangeException(nameof(value), value, "A timeout is positive or Timeout.Infinite.");
            Volatile.Write(ref _writeTimeout, value);
        }
    }

    private static IOException TimedOut(string what) =>
        new($"The {what} timed out.", new SocketException((int)SocketError.TimedOut));

    private int ReadSync(Memory<byte> buffer)
    {
        InlineCompletions.ThrowIfEngineThread("TcpConnection.Read");
        int timeout = ReadTimeout;
        if (timeout == Timeout.Infinite)
            return ReadAsync(buffer).AsTask().GetAwaiter().GetResult();
        using var cancel = new CancellationTokenSource(timeout);
        try
        {
            return ReadAsync(buffer, cancel.Token).AsTask().GetAwaiter().GetResult();
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
            throw TimedOut("read");
        }
    }

    private void WriteSync(ReadOnlyMemory<byte> buffer)
    {
        InlineCompletions.ThrowIfEngineThread("TcpConnection.Write");
        int timeout = WriteTimeout;
        if (timeout == Timeout.Infinite)
        {
            WriteAsync(buffer).AsTask().GetAwaiter().GetResult();
            return;
        }
        using var cancel = new CancellationTokenSource(timeout);
        try
        {
            WriteAsync(buffer, cancel.Token).AsTask().GetAwaiter().GetResult();
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
            throw TimedOut("write");
        }
    }
}
