namespace NetStack.Core.Wire

/// What a socket chooses in the IP headers of the packets it sends (IP_TTL / IPV6_UNICAST_HOPS,
/// IP_TOS / IPV6_TCLASS, IP_MTU_DISCOVER's Don't Fragment): the IP writers take it, so each
/// socket's packets carry its own values. The ECN bits (RFC 3168) stay the stack's: the writers
/// always send Not-ECT, whatever the low two bits of `TypeOfService` say (Linux masks them for TCP
/// sockets too, since ECN belongs to the congestion control).
[<Struct>]
type IpHeaderSettings =
    {
        /// IPv4 time to live / IPv6 hop limit: 1..255.
        Ttl: byte
        /// The IPv4 TOS byte / IPv6 traffic class as IP_TOS takes it: the DSCP (RFC 2474) in the
        /// upper six bits; the lower two (ECN) are ignored.
        TypeOfService: byte
        /// IPv4 Don't Fragment (RFC 791; ignored for IPv6, which never fragments on the path).
        DontFragment: bool
    }

    /// The DSCP (upper six bits of TypeOfService) as the header's 6-bit field.
    member this.Dscp = this.TypeOfService >>> 2

    /// TCP's defaults, as Linux's: TTL 64 (RFC 1700), DSCP 0, Don't Fragment set since TCP does
    /// path MTU discovery (RFC 1191 §3, ip_no_pmtu_disc = 0).
    static member Tcp =
        {
            Ttl = 64uy
            TypeOfService = 0uy
            DontFragment = true
        }

    /// The defaults of everything else (UDP, ICMP): TTL 64, DSCP 0, fragmentable (RFC 8085 §3.2).
    static member Default =
        {
            Ttl = 64uy
            TypeOfService = 0uy
            DontFragment = false
        }

    /// This with the TTL / hop limit `ttl`; throws ArgumentException outside 1..255 (as
    /// IP_TTL's EINVAL for 0).
    member this.WithTtl(ttl: int) =
        if ttl < 1 || ttl > 255 then
            invalidArg (nameof ttl) $"A TTL of {ttl} is outside 1..255."

        {
            Ttl = byte ttl
            TypeOfService = this.TypeOfService
            DontFragment = this.DontFragment
        }
