namespace NetStack.Core.Stack

open NetStack.Core.Wire
open NetStack.Core.Ip

/// The configuration of the IP layer.
type IpLayerConfig =
    {
        /// Our IPv4 address, if we have one.
        Address4: Ipv4Address voption
        /// Our IPv6 address, if we have one.
        Address6: Ipv6Address voption
        /// The link MTU (68..65535; at least 1280 when Address6 is set).
        Mtu: int
        /// ICMP errors we may send per second (RFC 4443 §2.4(f), RFC 1812 §4.3.2.8).
        IcmpErrorsPerSecond: int
        /// The largest burst of ICMP errors.
        IcmpErrorBurst: int
        /// Reassembly limits.
        Reassembly: ReassemblyConfig
        /// Any-destination mode (off by default): unicast packets to any address are accepted, as
        /// a forwarder needs (gVisor's promiscuous mode, slirp), and marked `Received.Foreign`.
        /// Answers to them (echo replies, RSTs, port unreachables) leave from the address they
        /// were sent to.
        AnyDestination: bool
        /// The netmask of Address4's prefix when known (0: unknown): packets to the prefix's
        /// broadcast address are then taken as broadcasts (RFC 1122 §3.3.6), as the limited
        /// broadcast always is.
        Mask4: uint32
    }

/// The IP layer's state: an immutable value, replaced by every call that changes it.
type IpLayerState =
    {
        /// The configuration it was made with.
        Config: IpLayerConfig
        /// Datagrams being reassembled.
        Reassembly: ReassemblyState
        /// Path MTUs learned from ICMP.
        PathMtu: PathMtuCache
        /// Rate limit of the ICMP errors we send.
        ErrorBucket: TokenBucket
        /// Datagrams in progress the reassembly caps evicted so far (a drop the caller counts).
        ReassemblyEvicted: int64
        /// IPv6 addresses that are ours besides Config.Address6 (autoconfigured ones, RFC 4862):
        /// packets to them are accepted too. Never mutated; replaced by IpLayer.withAddresses6.
        Extra6: Ipv6Address[]
        /// The IPv4 groups joined (all-systems 224.0.0.1 is always taken). Replaced by
        /// IpLayer.withGroups.
        Groups4: Ipv4Address[]
        /// The IPv6 groups joined (all-nodes ff02::1 is always taken).
        Groups6: Ipv6Address[]
    }
