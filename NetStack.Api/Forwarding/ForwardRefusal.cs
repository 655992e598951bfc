namespace NetStack;

/// <summary>
/// How a forwarder refuses a connection request, a UDP flow or an echo request: what the peer
/// in front of the stack gets to see.
/// </summary>
public enum ForwardRefusal
{
    /// <summary>TCP: a RST, as from a closed port (RFC 9293 §3.10.7.1): the peer's connect fails with "connection refused". For UDP and echo: as <see cref="PortUnreachable"/> and <see cref="HostUnreachable"/>.</summary>
    Reset,

    /// <summary>No answer at all, as a firewall that drops: the peer's retransmissions time out.</summary>
    Ignore,

    /// <summary>ICMP host unreachable (ICMPv6 address unreachable), from the stack's own address as a router's: "no route to host".</summary>
    HostUnreachable,

    /// <summary>ICMP network unreachable (ICMPv6 no route to destination), from the stack's own address: "network is unreachable".</summary>
    NetworkUnreachable,

    /// <summary>ICMP port unreachable, from the address the peer wanted, as the destination host's: "connection refused".</summary>
    PortUnreachable,

    /// <summary>ICMP communication administratively prohibited (ICMPv4 code 13, ICMPv6 code 1), from the stack's own address: a policy refused it.</summary>
    AdministrativelyProhibited,
}
