using System.Net;
using System.Net.Sockets;

namespace NetStack;

/// <summary>
/// Socket options for a TCP socket before it exists: what a <see cref="Socket"/> user sets between
/// <c>new Socket(...)</c> and <c>Connect</c>/<c>Listen</c>. Pass it to
/// <see cref="NetworkStack.ConnectTcpAsync(IPEndPoint, TcpSocketOptions, CancellationToken)"/> or
/// <see cref="NetworkStack.ListenTcp(IPEndPoint, TcpSocketOptions, int)"/>; a listener's options
/// are inherited by the connections it accepts, as on Linux. Every option left null keeps the
/// stack's default (<see cref="NetStackOptions"/>); the same options can be changed later on the
/// <see cref="TcpConnection"/> or <see cref="TcpConnectionListener"/> properties of the same name.
/// The object is read when the call is made; changing it later affects nothing.
/// </summary>
public sealed class TcpSocketOptions
{
    /// <summary>
    /// The local end to bind before connecting (ignored by <c>ListenTcp</c>, which takes its own):
    /// the stack's address of the remote's family or <see cref="IPAddress.Any"/>/<see cref="IPAddress.IPv6Any"/>
    /// (the stack's choice), and a port, or 0 for an ephemeral one. Null: the stack's address and an
    /// ephemeral port.
    /// </summary>
    public IPEndPoint? LocalEndPoint { get; set; }

    /// <summary>
    /// SO_REUSEADDR: a fixed local port may be bound while connections (TIME-WAIT ones included)
    /// still use it; a listening port is never shared. Default false.
    /// </summary>
    public bool ReuseAddress { get; set; }

    /// <summary>IPv4 TTL / IPv6 hop limit of every segment (1..255; <see cref="Socket.Ttl"/>). Null: 64.</summary>
    public short? Ttl { get; set; }

    /// <summary>
    /// IP_TOS / IPV6_TCLASS (0..255): the DSCP in the upper six bits; the ECN bits stay the stack's.
    /// Null: 0.
    /// </summary>
    public int? TypeOfService { get; set; }

    /// <summary>IPv4 Don't Fragment (<see cref="Socket.DontFragment"/>). Null: true, as TCP does path MTU discovery.</summary>
    public bool? DontFragment { get; set; }

    /// <summary>
    /// SO_RCVBUF in bytes: the receive buffer, locked (no auto-tuning for this socket, as on Linux);
    /// set before connecting it also decides the window scale of the SYN. Null: the stack's
    /// (<see cref="NetStackOptions.TcpReceiveBufferBytes"/>, auto-tuned).
    /// </summary>
    public int? ReceiveBufferSize { get; set; }

    /// <summary>
    /// SO_SNDBUF in bytes: the send buffer, locked (no auto-tuning). Null: the stack's
    /// (<see cref="NetStackOptions.TcpSendBufferBytes"/>, auto-tuned).
    /// </summary>
    public int? SendBufferSize { get; set; }

    /// <summary>TCP_NODELAY (<see cref="Socket.NoDelay"/>). Null: false (Nagle on).</summary>
    public bool? NoDelay { get; set; }

    /// <summary>SO_LINGER (<see cref="Socket.LingerState"/>). Null: not enabled (see <see cref="TcpConnection.LingerState"/>).</summary>
    public LingerOption? LingerState { get; set; }

    /// <summary>SO_KEEPALIVE. Null: on when <see cref="NetStackOptions.TcpKeepAlive"/> is set.</summary>
    public bool? KeepAlive { get; set; }

    /// <summary>TCP_KEEPIDLE (whole seconds or more, as the kernel's). Null: <see cref="NetStackOptions.TcpKeepAlive"/>, else 2 hours.</summary>
    public TimeSpan? KeepAliveTime { get; set; }

    /// <summary>TCP_KEEPINTVL. Null: <see cref="NetStackOptions.TcpKeepAliveInterval"/>.</summary>
    public TimeSpan? KeepAliveInterval { get; set; }

    /// <summary>TCP_KEEPCNT. Null: <see cref="NetStackOptions.TcpKeepAliveCount"/>.</summary>
    public int? KeepAliveRetryCount { get; set; }
}
