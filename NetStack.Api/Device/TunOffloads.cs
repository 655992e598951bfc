namespace NetStack.Device;

/// <summary>
/// The offloads a TUN device with a virtio-net header can agree with the kernel
/// (TUNSETOFFLOAD; the values are the TUN_F_* bits of linux/if_tun.h). They say what the kernel
/// may hand the reader: packets with partial checksums, TCP or UDP super-segments. What the
/// writer may hand the kernel needs no agreement: every header the kernel's
/// virtio_net_hdr_to_skb accepts works.
/// </summary>
[Flags]
public enum TunOffloads
{
    /// <summary>No offload: every packet read is a complete, ordinary packet.</summary>
    None = 0,

    /// <summary>TUN_F_CSUM: packets may arrive with a partial transport checksum (NEEDS_CSUM). The others need it.</summary>
    Checksum = 0x01,

    /// <summary>TUN_F_TSO4: TCP/IPv4 super-segments (gso TCPV4) may arrive.</summary>
    Tso4 = 0x02,

    /// <summary>TUN_F_TSO6: TCP/IPv6 super-segments (gso TCPV6) may arrive.</summary>
    Tso6 = 0x04,

    /// <summary>TUN_F_USO4: UDP/IPv4 super-datagrams (gso UDP_L4) may arrive (Linux 6.2 and later; only together with <see cref="Uso6"/>).</summary>
    Uso4 = 0x20,

    /// <summary>TUN_F_USO6: UDP/IPv6 super-datagrams (gso UDP_L4) may arrive (Linux 6.2 and later; only together with <see cref="Uso4"/>).</summary>
    Uso6 = 0x40,
}
