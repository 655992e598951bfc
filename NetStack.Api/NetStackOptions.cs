using System.Net;

namespace NetStack;

/// <summary>Options for bringing a stack up on a TUN device.</summary>
public sealed record NetStackOptions
{
    /// <summary>Interface name, or a template with <c>%d</c> that the kernel fills.</summary>
    public string TunName { get; init; } = "netstack%d";

    /// <summary>Attach to an existing persistent TUN interface and leave the kernel side as it is.</summary>
    public bool AttachExisting { get; init; }

    /// <summary>The stack's IPv4 address (null: no IPv4).</summary>
    public IPAddress? Address { get; init; } = IPAddress.Parse("10.77.0.2");

    /// <summary>The kernel side's IPv4 address, the point-to-point peer of <see cref="Address"/>.</summary>
    public IPAddress? HostAddress { get; init; } = IPAddress.Parse("10.77.0.1");

    /// <summary>The stack's IPv6 address (null: no IPv6).</summary>
    public IPAddress? Address6 { get; init; } = IPAddress.Parse("fd77::2");

    /// <summary>The kernel side's IPv6 address.</summary>
    public IPAddress? HostAddress6 { get; init; } = IPAddress.Parse("fd77::1");

    /// <summary>Link MTU, 1280 to 65535.</summary>
    public int Mtu { get; init; } = 1500;

    /// <summary>Bytes of datagrams a UDP socket queues before it drops.</summary>
    public int UdpReceiveQueueBytes { get; init; } = 256 * 1024;

    /// <summary>Rate limit of the ICMP errors the stack sends (RFC 1812 §4.3.2.8, RFC 4443 §2.4(f)).</summary>
    public int IcmpErrorsPerSecond { get; init; } = 100;
}
