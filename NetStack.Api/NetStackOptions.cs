using System.Net;
using System.Net.NetworkInformation;

namespace NetStack;

/// <summary>Options for bringing a stack up on a TUN (or, with <see cref="Mode"/>, TAP) device.</summary>
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

    /// <summary>
    /// Bytes all IP datagrams in reassembly may hold together (payload, kept headers and a fixed
    /// charge per fragment); beyond it the oldest datagram in progress is evicted.
    /// </summary>
    public long ReassemblyMaxBytes { get; init; } = 4L * 1024 * 1024;

    /// <summary>IP datagrams in reassembly at once; beyond it the oldest is evicted.</summary>
    public int ReassemblyMaxDatagrams { get; init; } = 256;

    /// <summary>ICMP errors the stack sends per second at most (a token bucket, RFC 4443 §2.4(f)).</summary>
    public int IcmpErrorsPerSecond { get; init; } = 100;

    /// <summary>
    /// Bytes a TCP connection buffers for sending (written but not yet acknowledged) at first;
    /// <c>WriteAsync</c> waits when the buffer is full. It grows up to
    /// <see cref="TcpSendBufferMaxBytes"/> by auto-tuning.
    /// </summary>
    public int TcpSendBufferBytes { get; init; } = 256 * 1024;

    /// <summary>
    /// The size a TCP connection's send buffer may grow to by auto-tuning (as Linux grows a
    /// socket's send buffer up to tcp_wmem's maximum): when a write waits for room while the
    /// congestion and peer windows would let more than half the buffer into flight, the buffer
    /// grows to twice that flight, rounded up to a power of two, up to this. Writers that keep
    /// the buffer from filling, and connections limited by the network, keep the initial size.
    /// A value not above <see cref="TcpSendBufferBytes"/> turns tuning off (as setting SO_SNDBUF
    /// does on Linux). The default is 4 MiB (Linux's tcp_wmem maximum). Must be positive
    /// (<see cref="ArgumentException"/> from <c>Start</c> otherwise).
    /// </summary>
    public int TcpSendBufferMaxBytes { get; init; } = 4 * 1024 * 1024;

    /// <summary>
    /// Bytes a TCP connection buffers on receipt (delivered but unread, plus data that arrived out of
    /// order). With window scaling (RFC 7323, negotiated with every peer that offers it) all of it is
    /// offered; without, at most 65535.
    /// </summary>
    public int TcpReceiveBufferBytes { get; init; } = 256 * 1024;

    /// <summary>
    /// The size a TCP connection's receive buffer may grow to by auto-tuning (dynamic
    /// right-sizing, like Linux's): each connection starts with <see cref="TcpReceiveBufferBytes"/>,
    /// and once per round trip, when its reader consumed more than half the buffer, the buffer
    /// grows to about twice that consumption, up to this. Idle and slow readers keep the initial
    /// size. Setting it equal to <see cref="TcpReceiveBufferBytes"/> turns tuning off (as setting
    /// SO_RCVBUF does on Linux). The default, 4 MiB, covers 10 Gbit/s at a 3 ms round trip or
    /// 1 Gbit/s at 30 ms, near Linux's 6 MiB tcp_rmem maximum, and is a power of two, so the
    /// pooled array holding a fully grown buffer wastes nothing. A value below
    /// <see cref="TcpReceiveBufferBytes"/> also means no tuning. Must lie in 1..65535·2^14
    /// (<see cref="ArgumentException"/> from <c>Start</c> otherwise); the window shift announced
    /// in SYNs is chosen from the larger of the two (RFC 7323 §2.3, the shift cannot change
    /// later), so a larger maximum coarsens the window's granularity.
    /// </summary>
    public int TcpReceiveBufferMaxBytes { get; init; } = 4 * 1024 * 1024;

    /// <summary>
    /// How long a connection stays in TIME-WAIT: 2·MSL (RFC 9293 §3.4.2). It ends earlier when a
    /// new SYN for its 4-tuple may reopen it (RFC 6191: a newer timestamp, or without timestamps
    /// a sequence number beyond the old connection's), which then goes to the listener, or on a
    /// RST exactly at RCV.NXT (not RFC 1337, as Linux's default), so a client reusing its port
    /// never waits this out.
    /// </summary>
    public TimeSpan TcpTimeWait { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>The bound on a graceful close in <c>TcpConnection.DisposeAsync</c>: how long it waits for the peer to acknowledge our data and FIN.</summary>
    public TimeSpan TcpLinger { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>The TCP congestion control: CUBIC (RFC 9438, the default, as in Linux) or Reno (RFC 5681).</summary>
    public TcpCongestionControl TcpCongestionControl { get; init; } = TcpCongestionControl.Cubic;

    /// <summary>
    /// Connections a listener holds in SYN-RECEIVED at most. Further SYNs are answered with SYN
    /// cookies when <see cref="TcpSynCookies"/> is on, dropped (and counted) otherwise.
    /// </summary>
    public int TcpMaxHalfOpen { get; init; } = 256;

    /// <summary>
    /// Answer SYNs beyond <see cref="TcpMaxHalfOpen"/> with SYN cookies (RFC 4987 §3.6): no state is
    /// kept until the peer's ACK returns the cookie, so a SYN flood cannot lock legitimate clients
    /// out. A connection set up by cookie keeps only its MSS (from a table of eight values).
    /// </summary>
    public bool TcpSynCookies { get; init; } = true;

    /// <summary>
    /// TCP connections (in any state, TIME-WAIT and half-open included) the stack holds at most.
    /// Beyond it a SYN to a listener is answered with a RST and <c>ConnectTcpAsync</c> fails with
    /// <see cref="System.Net.Sockets.SocketError.TooManyOpenSockets"/>; both are counted.
    /// </summary>
    public int TcpMaxConnections { get; init; } = 65536;

    /// <summary>
    /// The user timeout (RFC 9293 §3.10.8, RFC 5482): a connection whose data or FIN has waited
    /// this long without any of it being acknowledged is reset and fails with
    /// <see cref="System.Net.Sockets.SocketError.TimedOut"/>, even while the peer keeps answering
    /// zero-window probes (which the retransmission limit never counts). Checked whenever the
    /// connection's retransmission or persist timer fires. Null (the default): no user timeout.
    /// </summary>
    public TimeSpan? TcpUserTimeout { get; init; }

    /// <summary>
    /// TCP keep-alive (RFC 9293 §3.8.4, RFC 1122 §4.2.3.6): after this long without any segment
    /// from the peer, an established connection with nothing in flight sends a probe (an ACK the
    /// peer must answer). Null (the default): no keep-alive.
    /// </summary>
    public TimeSpan? TcpKeepAlive { get; init; }

    /// <summary>Time between unanswered keep-alive probes (default 75 s, as Linux).</summary>
    public TimeSpan TcpKeepAliveInterval { get; init; } = TimeSpan.FromSeconds(75);

    /// <summary>
    /// Unanswered keep-alive probes after which the connection fails with
    /// <see cref="System.Net.Sockets.SocketError.TimedOut"/> (default 9, as Linux).
    /// </summary>
    public int TcpKeepAliveCount { get; init; } = 9;

    /// <summary>
    /// The shortest interval between two ACKs a connection sends for invalid segments (default
    /// 500 ms, as Linux's tcp_invalid_ratelimit): challenge ACKs (RFC 5961 §7: an in-window RST
    /// not at the expected number, a SYN on a live connection, an ACK number outside the
    /// acceptable range) and answers to out-of-window segments without data. Data outside the
    /// window is always answered. An ACK held back is counted as <c>tcp.ack.rate-limited</c>.
    /// This keeps a blind attacker from making the stack send at its rate and stops two
    /// confused ends from trading ACKs forever. <see cref="TimeSpan.Zero"/>: no limit.
    /// Negative: <see cref="ArgumentException"/> from <c>Start</c>.
    /// </summary>
    public TimeSpan TcpInvalidAckInterval { get; init; } = TimeSpan.FromMilliseconds(500);

    /// <summary>
    /// A file to record every packet the stack reads from and writes to its device, as a pcap
    /// capture (raw IP, microsecond timestamps) that Wireshark and tshark open; null for no capture.
    /// The file is created (or truncated) by <c>Start</c> and flushed and closed when the stack is
    /// disposed. To capture to any other stream, wrap a device in a
    /// <see cref="Diagnostics.CapturingPacketDevice"/> and start the stack on it.
    /// </summary>
    public string? CapturePath { get; init; }

    /// <summary>
    /// Use the TUN device's offloads where the kernel supports them (on by default): the device
    /// is opened with a virtio-net header (IFF_VNET_HDR) and TUNSETOFFLOAD asks for checksum
    /// offload and TCP segmentation offload (TSO4/TSO6). The kernel then hands the stack TCP
    /// super-segments of up to 64 KiB with partial checksums, and takes runs of the stack's
    /// segments as one super-segment, which cuts the system calls per byte by up to ~40×.
    /// In <see cref="NetStackMode.Tap"/> mode the same holds for the TAP device, whose headers
    /// count offsets from the Ethernet frame (<see cref="Engine.EthernetPacketDevice"/> moves them).
    /// False gives ordinary packets both ways, one system call each. Offloads are not used with
    /// <see cref="Faults"/> (the injected corruption must stay visible to checksums) and have no
    /// effect on a device passed to <c>Start(options, device)</c> that does not implement
    /// <see cref="Engine.IOffloadPacketDevice"/>.
    /// </summary>
    public bool Offloads { get; init; } = true;

    /// <summary>
    /// Batch the TUN device's reads and writes through io_uring (<see cref="Device.TunDevice.TryEnableIoUring"/>):
    /// one io_uring_enter collects every packet that arrived and sends every packet the loop wrote
    /// since the last one, instead of one read(2) or write(2) per packet. Packets leave in the
    /// order written and never wait in the queue while the loop sleeps. Where the kernel cannot
    /// (older than Linux 6.7, io_uring disabled) the stack logs why and uses plain reads and
    /// writes. Off by default; no effect on a device passed to <c>Start(options, device)</c>.
    /// </summary>
    public bool TunIoUring { get; init; }

    /// <summary>
    /// The TUN interface's queues, each with an engine loop of its own (its own thread, device
    /// descriptor and TCP connection table), 1..16; default 1, a single engine as always.
    /// Above 1 the interface is opened with IFF_MULTI_QUEUE: the kernel spreads the flows it
    /// sends among the queues (by its flow hash, and by the queue a flow's packets were last
    /// written on), the engine that receives a connection's SYN owns it, connects are spread over
    /// the engines round-robin (each draws ephemeral ports with <c>port % Queues</c> equal to its
    /// queue number, so any engine can tell a segment's owner from its port), and a segment
    /// that arrives on another queue is handed to its owner (counted "engine.queue.handoff").
    /// Everything that is not TCP (UDP, ICMP, fragments) is handed to queue 0's engine, which
    /// keeps every non-TCP socket. <see cref="NetworkStack.Statistics"/> sums all engines, with
    /// "device.read.queueN" per queue. Needs <see cref="NetStackMode.Tun"/> and a TUN device the
    /// stack opens (not <c>Start(options, device)</c>), and rules out <see cref="AnyDestination"/>,
    /// <see cref="Faults"/>, <see cref="CapturePath"/> and <see cref="TunWriterThread"/> = true
    /// (<see cref="ArgumentException"/> from <c>Start</c>); with <see cref="AttachExisting"/> the
    /// interface must have been made with <c>multi_queue</c>. docs/multiqueue.md: design,
    /// measurements and why one queue stays the default.
    /// </summary>
    public int Queues { get; init; } = 1;

    /// <summary>
    /// Writes to the TUN device from a thread of their own instead of the engine loop. Without
    /// offloads every packet is one write(2), and the kernel runs its TCP for the packet inside
    /// that call (for each ACK of ours, the kernel sender's ACK processing and its next
    /// segments): with this the loop goes back to reading while another thread carries that
    /// work. A packet is handed over only while the loop is in a burst (its last read found a
    /// packet) or earlier packets still wait for the writer; otherwise (a request's answer, say)
    /// the loop writes it itself, so an idle exchange pays no thread hop. Handed-over packets are
    /// copied into preallocated slots (one copy each, no allocation) and leave in order; a full
    /// queue makes the loop wait.
    /// <para>
    /// null (the default): on when the TUN device runs without offloads (<see cref="Offloads"/>
    /// = false, or the kernel refused them), in <see cref="NetStackMode.Tun"/>, without
    /// <see cref="TunIoUring"/> and without <see cref="Faults"/> (the fault layer stays on the
    /// loop thread). true: on, which needs <see cref="Offloads"/> = false,
    /// <see cref="NetStackMode.Tun"/> and no <see cref="TunIoUring"/>
    /// (<see cref="ArgumentException"/> from <c>Start</c> otherwise). false: off. On the 2-core
    /// test machine it raised bulk TCP without offloads from about 1.4 to about 2 Gbit/s (0.09
    /// to 0.14 of the kernel's veth figure kernel → stack, 0.075 to 0.09 stack → kernel; see
    /// the README's Benchmarks). No effect on a device passed to
    /// <c>Start(options, device)</c>.
    /// </para>
    /// </summary>
    public bool? TunWriterThread { get; init; }

    /// <summary>
    /// Run the code awaiting a TCP read or write (the Stream's or the pipe's), an accept, a
    /// connect, <c>DisposeAsync</c>'s wait for the peer's ACK, or a UDP receive, on the engine's
    /// loop thread when the loop completes it, instead of on a thread-pool worker (as
    /// Kestrel's <c>UnsafePreferInlineScheduling</c> and the runtime's
    /// <c>DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS</c> do for kernel sockets). The loop
    /// runs the completions of a burst when the burst ends, outside every lock; the awaiting code
    /// then runs until its next await that does not complete at once, and the loop goes on after
    /// it. This saves a thread-pool wake-up and hand-over per completion (the processor time the
    /// pool's workers spend waking and spin-waiting, docs/benchmarks.md) and lets a reply leave
    /// within the burst that brought the request.
    /// <para>
    /// Unsafe because that code runs on the loop every connection of the engine shares: it must
    /// not block or compute for long. A blocking call of this library made on an engine thread
    /// (<see cref="TcpConnection"/>'s <c>Read</c> and <c>Write</c>, <see cref="UdpSocket"/>'s
    /// <c>ReceiveFrom</c> and <c>SendTo</c>) throws <see cref="InvalidOperationException"/>
    /// instead of waiting for the loop it stops; other blocking (a lock held elsewhere, file I/O,
    /// <c>Task.Wait</c>) stalls the engine. Code that may block can leave the loop with
    /// <c>await Task.Yield()</c>. DNS and ping, and waits that other threads end (a
    /// cancellation, a dispose), still continue on the thread pool. An exception a continuation throws
    /// itself (an async method's never does: its task holds it) is logged and counted
    /// ("engine.inline-completion-error"). Off by default.
    /// </para>
    /// </summary>
    public bool UnsafeInlineCompletions { get; init; }

    /// <summary>
    /// Faults to inject in both directions on the TUN device (null: none): loss, duplication,
    /// reordering, corruption, delay, a rate limit. For testing how the stack and its peers cope.
    /// </summary>
    public Engine.FaultSettings? Faults { get; init; }

    /// <summary>
    /// Where the stack logs (category <c>NetStack.NetworkStack</c>): start and stop, device errors,
    /// bound listeners and sockets (Information), TCP connections established, closed, reset, timed
    /// out and refused, and dropped packets by reason, at most 20 a second (Debug). Null: no logging.
    /// </summary>
    public Microsoft.Extensions.Logging.ILoggerFactory? LoggerFactory { get; init; }

    /// <summary>TUN (IP packets; the kernel is the point-to-point peer) or TAP (Ethernet frames; ARP and NDP).</summary>
    public NetStackMode Mode { get; init; } = NetStackMode.Tun;

    /// <summary>Tap mode: the stack's MAC address (null: a random locally administered unicast address).</summary>
    public PhysicalAddress? MacAddress { get; init; }

    /// <summary>Tap mode: the on-link prefix length of <see cref="Address"/> (also given to <see cref="HostAddress"/> on the kernel side).</summary>
    public int PrefixLength { get; init; } = 24;

    /// <summary>Tap mode: the on-link prefix length of <see cref="Address6"/> (also given to <see cref="HostAddress6"/>).</summary>
    public int PrefixLength6 { get; init; } = 64;

    /// <summary>Tap mode: the IPv4 router for destinations off the prefix (null: those are unreachable).</summary>
    public IPAddress? Gateway { get; init; }

    /// <summary>Tap mode: the IPv6 router for destinations off the prefix (null: the router of the last router advertisement, if any).</summary>
    public IPAddress? Gateway6 { get; init; }

    /// <summary>
    /// Tap mode: the IEEE 802.1Q VLAN the stack lives on, 1 to 4094 (null: untagged, the
    /// default). Every frame the stack sends carries the tag; frames without it or with another
    /// VLAN id are dropped and counted (<c>link.drop.untagged</c>, <c>link.drop.vlan</c>). The
    /// kernel side must then speak that VLAN too (a VLAN interface on the TAP, or a bridge the TAP
    /// is a port of), so <see cref="HostAddress"/> and <see cref="HostAddress6"/> are not put on the
    /// TAP. Offloads stay on: the virtio-net header's offsets count the 4-byte tag.
    /// </summary>
    /// <exception cref="ArgumentException">From <c>NetworkStack.Start</c>: outside 1..4094, or set without <see cref="NetStackMode.Tap"/>.</exception>
    public int? VlanId { get; init; }

    /// <summary>Tap mode: neighbor cache timers and bounds, duplicate address detection and gratuitous ARP.</summary>
    public Engine.NeighborSettings Neighbor { get; init; } = new();

    /// <summary>
    /// Tap mode: stateless address autoconfiguration (RFC 4862 §5.5), off by default. The stack
    /// sends router solicitations at start and forms one more IPv6 address from each /64 prefix a
    /// router advertises with the A flag (RFC 7217 stable-privacy interface identifiers from
    /// <see cref="SlaacSecretKey"/>), runs duplicate address detection on it and then accepts
    /// packets to it, keeping it while the prefix's valid lifetime lasts (see
    /// <see cref="NetworkStack.Ipv6Addresses"/>). <see cref="Address6"/>, when set, stays the
    /// stack's main address; without it the autoconfigured and link-local addresses are the
    /// stack's IPv6 addresses.
    /// </summary>
    public bool Slaac { get; init; }

    /// <summary>
    /// Tap mode: an IPv6 link-local address (RFC 4862 §5.3), on by default as on a Linux host.
    /// The stack forms fe80::/64 with an RFC 7217 interface identifier (from
    /// <see cref="SlaacSecretKey"/> and the MAC), runs duplicate address detection on it, then
    /// accepts packets to it and sends its neighbor and router solicitations from it. With it (or
    /// <see cref="Slaac"/>) <see cref="Address6"/> may be null: the stack still speaks IPv6 on
    /// the link. Ignored in Tun mode (a point-to-point TUN link has no link-layer addresses to
    /// resolve).
    /// </summary>
    public bool LinkLocalAddress { get; init; } = true;

    /// <summary>
    /// Tap mode with <see cref="Slaac"/> or <see cref="LinkLocalAddress"/>: the RFC 7217 secret key (16 bytes or more). The same key,
    /// MAC and prefix always give the same address, so give a stored key (and
    /// <see cref="MacAddress"/>) to keep addresses across restarts. Null: a random key per start.
    /// </summary>
    public byte[]? SlaacSecretKey { get; init; }

    /// <summary>
    /// Tap mode: take the IPv4 address from a DHCP server (RFC 2131), off by default;
    /// <see cref="Address"/> must then be null. Until a lease is bound the stack has no IPv4
    /// address (IPv4 connects and sends fail with <see cref="System.Net.Sockets.SocketError.NetworkUnreachable"/>);
    /// once bound, the address, prefix, router (option 3) or classless static routes (option 121,
    /// RFC 3442) are used, the address is checked with ARP first (RFC 5227) and DECLINEd when
    /// another host has it, the lease is renewed at T1, rebound at T2 and dropped at expiry (TCP
    /// connections on it are aborted). See <see cref="NetworkStack.DhcpLease"/>,
    /// <see cref="NetworkStack.DhcpLeaseChanged"/> and docs/dhcp.md.
    /// </summary>
    public bool Dhcp { get; init; }

    /// <summary>
    /// With <see cref="Dhcp"/>: an address held before (a stored lease) to ask for again first
    /// (INIT-REBOOT, RFC 2131 §3.2); null: a fresh DISCOVER.
    /// </summary>
    public IPAddress? DhcpPreviousAddress { get; init; }

    /// <summary>With <see cref="Dhcp"/>: the host name sent to the server (option 12), or null.</summary>
    public string? DhcpHostName { get; init; }

    /// <summary>
    /// With <see cref="Dhcp"/>: how long <see cref="NetworkStack.Start(NetStackOptions)"/> waits
    /// for the first lease (a <see cref="TimeoutException"/> after it, the stack disposed);
    /// <see cref="TimeSpan.Zero"/>: it does not wait, and the lease comes later
    /// (<see cref="NetworkStack.DhcpLeaseChanged"/>). Default 30 s.
    /// </summary>
    public TimeSpan DhcpStartTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Any-destination mode, off by default: the stack accepts unicast packets to every address,
    /// not only its own, as a forwarder needs (a tun2socks-style proxy, <c>netstack run</c>).
    /// Packets to other addresses reach <see cref="NetworkStack.ForwardTcp"/>,
    /// <see cref="NetworkStack.ForwardUdp"/> and <see cref="NetworkStack.ForwardEcho"/> when they
    /// exist; without them TCP gets a RST, UDP a port unreachable and an echo request its reply,
    /// each from the address it was sent to, as if a host were there.
    /// </summary>
    public bool AnyDestination { get; init; }

    /// <summary>TCP connection requests waiting for the forwarder's decision at most; beyond, SYNs are dropped (the peer retries).</summary>
    public int ForwardMaxPendingTcp { get; init; } = 1024;

    /// <summary>How long a TCP connection request waits for the forwarder's decision before it expires unanswered.</summary>
    public TimeSpan ForwardTcpDecisionTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>UDP flows of the forwarder open at once at most; beyond, datagrams of new flows are dropped.</summary>
    public int ForwardMaxUdpFlows { get; init; } = 4096;

    /// <summary>A UDP flow of the forwarder ends after this long without a datagram either way.</summary>
    public TimeSpan ForwardUdpIdleTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>Echo requests waiting for the echo forwarder at most; beyond, requests are dropped.</summary>
    public int ForwardMaxEchoRequests { get; init; } = 256;

    /// <summary>
    /// The DNS servers <see cref="NetworkStack.ResolveAsync"/> asks (port 53, in this order),
    /// before any the link taught in TAP mode (<see cref="NetworkStack.DnsServers"/>). Null or
    /// empty: none configured. Each must be an IPv4 or IPv6 unicast address, not unspecified.
    /// </summary>
    public IReadOnlyList<IPAddress>? DnsServers { get; init; }
}

/// <summary>TCP congestion control algorithms (<see cref="NetStackOptions.TcpCongestionControl"/>).</summary>
public enum TcpCongestionControl
{
    /// <summary>CUBIC (RFC 9438): window growth by a cubic function of the time since the last loss.</summary>
    Cubic,

    /// <summary>Reno (RFC 5681): about one segment more per round trip, halved on loss.</summary>
    Reno,
}
