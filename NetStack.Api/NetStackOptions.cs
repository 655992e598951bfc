using System.Net;

namespace NetStack;

/// <summary>Options for bringing a stack up on a TUN device.</summary>
public sealed record NetStackOptions
{
    /// <summary>The interface name, or a template with one <c>%d</c> the kernel fills in.</summary>
    public string TunName { get; init; } = "netstack%d";

    /// <summary>Attach to an existing persistent TUN interface and leave the kernel side as it is.</summary>
    public bool AttachExisting { get; init; }

    /// <summary>The stack's IPv4 address (null: no IPv4).</summary>
    public IPAddress? Address { get; init; } = IPAddress.Parse("10.77.0.2");

    /// <summary>The kernel side's IPv4 address (the stack is its point-to-point peer).</summary>
    public IPAddress? HostAddress { get; init; } = IPAddress.Parse("10.77.0.1");

    /// <summary>The stack's IPv6 address (null: no IPv6).</summary>
    public IPAddress? Address6 { get; init; } = IPAddress.Parse("fd77::2");

    /// <summary>The kernel side's IPv6 address.</summary>
    public IPAddress? HostAddress6 { get; init; } = IPAddress.Parse("fd77::1");

    /// <summary>The link MTU: 1280..65535 (IPv6 needs at least 1280; 576 is accepted without IPv6).</summary>
    public int Mtu { get; init; } = 1500;

    /// <summary>Bytes of datagrams (plus 64 bytes of bookkeeping each) a UDP socket queues before it drops.</summary>
    public int UdpReceiveQueueBytes { get; init; } = 256 * 1024;

    /// <summary>ICMP errors the stack sends per second at most (a token bucket, RFC 4443 §2.4(f)).</summary>
    public int IcmpErrorsPerSecond { get; init; } = 100;

    /// <summary>Bytes a TCP connection buffers for sending (written but not yet acknowledged); <c>WriteAsync</c> waits when it is full.</summary>
    public int TcpSendBufferBytes { get; init; } = 256 * 1024;

    /// <summary>
    /// Bytes a TCP connection buffers on receipt (delivered but unread, plus data that arrived out of
    /// order). With window scaling (RFC 7323, negotiated with every peer that offers it) all of it is
    /// offered; without, at most 65535.
    /// </summary>
    public int TcpReceiveBufferBytes { get; init; } = 256 * 1024;

    /// <summary>How long a connection stays in TIME-WAIT: 2·MSL (RFC 9293 §3.4.2).</summary>
    public TimeSpan TcpTimeWait { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>The bound on a graceful close in <c>TcpConnection.DisposeAsync</c>: how long it waits for the peer to acknowledge our data and FIN.</summary>
    public TimeSpan TcpLinger { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>The TCP congestion control: CUBIC (RFC 9438, the default, as in Linux) or Reno (RFC 5681).</summary>
    public TcpCongestionControl TcpCongestionControl { get; init; } = TcpCongestionControl.Cubic;

    /// <summary>Connections a listener holds in SYN-RECEIVED at most; further SYNs are dropped (and counted).</summary>
    public int TcpMaxHalfOpen { get; init; } = 256;

    /// <summary>
    /// A file to record every packet the stack reads from and writes to its device, as a pcap
    /// capture (raw IP, microsecond timestamps) that Wireshark and tshark open; null for no capture.
    /// The file is created (or truncated) by <c>Start</c> and flushed and closed when the stack is
    /// disposed. To capture to any other stream, wrap a device in a
    /// <see cref="Diagnostics.CapturingPacketDevice"/> and start the stack on it.
    /// </summary>
    public string? CapturePath { get; init; }

    /// <summary>
    /// Faults to inject in both directions on the TUN device (null: none): loss, duplication,
    /// reordering, corruption, delay, a rate limit. For testing how the stack and its peers cope.
    /// </summary>
    public Engine.FaultSettings? Faults { get; init; }
}

/// <summary>TCP congestion control algorithms (<see cref="NetStackOptions.TcpCongestionControl"/>).</summary>
public enum TcpCongestionControl
{
    /// <summary>CUBIC (RFC 9438): window growth by a cubic function of the time since the last loss.</summary>
    Cubic,

    /// <summary>Reno (RFC 5681): about one segment more per round trip, halved on loss.</summary>
    Reno,
}
