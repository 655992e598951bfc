namespace NetStack;

/// <summary>What kind of device the stack sits on.</summary>
public enum NetStackMode
{
    /// <summary>A TUN device: whole IP packets, the kernel is the far end of a point-to-point link.</summary>
    Tun = 0,

    /// <summary>
    /// A TAP device: Ethernet frames. The stack is a host on a link with its own MAC address and
    /// answers and asks ARP (IPv4) and NDP (IPv6) itself; anything bridged to the TAP is reachable.
    /// </summary>
    Tap = 1,
}
