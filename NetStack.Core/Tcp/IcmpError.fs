namespace NetStack.Core.Tcp

open System.Net.Sockets
open NetStack.Core.Wire

/// An ICMP error about one of our TCP segments, as the IP layer read it: the raw type and code,
/// the path MTU it reports (for "fragmentation needed" / "packet too big"), and the sequence
/// number of the quoted segment (RFC 792 and RFC 4443 §2.4(c) quote at least the first 8
/// bytes of the TCP header, so it is always there).
[<Struct>]
type TcpIcmpError =
    {
        /// ICMPv6 (true) or ICMPv4.
        Ipv6: bool
        /// The ICMP type.
        Type: byte
        /// The ICMP code.
        Code: byte
        /// For a "too big": the path MTU to believe (the IP layer's `PathMtu.effective`: the
        /// next-hop MTU reported, or the RFC 1191 §5 plateau when an old router reported 0).
        PathMtu: int
        /// SEG.SEQ of the quoted segment.
        QuotedSeq: SeqNum
    }

/// What an ICMP error means to TCP (RFC 1122 §4.2.3.9, RFC 5927, RFC 8201), decided from type
/// and code alone (`TcpIcmp.classify`); the connection's state and the quoted sequence number
/// decide what is done with it (`Connection.handleIcmpInto`).
[<RequireQualifiedAccess; Struct>]
type TcpIcmpMeaning =
    /// Nothing TCP acts on (a type or code it does not know, a redirect, a source quench:
    /// RFC 6633 deprecates acting on those).
    | Ignore
    /// "Fragmentation needed" (v4 type 3 code 4, RFC 1191) or "packet too big" (v6 type 2,
    /// RFC 8201): the path MTU is lower.
    | PacketTooBig
    /// A hard error (RFC 1122 §4.2.3.9): the connection is aborted in any state, failing with
    /// `error`.
    | Hard of hardError: SocketError
    /// A soft error (RFC 1122 §4.2.3.9): fails a connection attempt (SYN-SENT, as Linux does);
    /// on an open connection it is remembered and reported only if the connection times out.
    | Soft of softError: SocketError

/// What became of an ICMP error handed to a connection that did not end it; the caller counts it.
type TcpIcmpNote =
    /// The quoted sequence number lies outside [SND.UNA, SND.MAX) (RFC 5927 §4.1): not about
    /// data in flight, so stale or forged.
    | OutOfWindow = 0
    /// A "too big" whose MTU is not below the connection's current path MTU (RFC 1191 §6.3:
    /// increases come only from probing or expiry, never from a report).
    | MtuNotLower = 1
    /// A soft error, remembered: it is reported if the connection later times out.
    | SoftErrorRemembered = 2
    /// Nothing TCP acts on in this state or for this type and code.
    | Ignored = 3

/// The rules that turn an ICMP error into a TCP decision.
[<RequireQualifiedAccess>]
module TcpIcmp =

    /// The lowest IPv4 path MTU TCP believes: 576 bytes, the datagram size every IPv4 host must
    /// accept (RFC 791 §3.1, RFC 1122 §3.3.3) and from which RFC 9293 §3.7.1's default MSS of
    /// 536 comes. RFC 1191 §3 would allow down to 68; a forged "fragmentation needed" must not
    /// shrink segments to a few bytes (RFC 5927 §7.3). Linux floors at 552 (min_pmtu); 576 is
    /// the figure the RFCs name.
    [<Literal>]
    let MinPathMtu4 = 576

    /// The lowest IPv6 path MTU: 1280, the minimum link MTU (RFC 8200 §5); RFC 8201 §4 says a
    /// report below it is not believed (taken as 1280).
    [<Literal>]
    let MinPathMtu6 = 1280

    /// The IP header TCP's segments carry (we send no IPv4 options and no IPv6 extension headers).
    let ipHeaderLength (ipv6: bool) = if ipv6 then 40 else 20

    /// The MSS a path MTU allows (RFC 9293 §3.7.1: MMS_S − fixed TCP header; RFC 6691: the TCP
    /// options then come out of it, as the engine does with `SendMss`): the MTU clamped to the
    /// family's floor, less the IP header and the 20-byte TCP header.
    let mssForPathMtu (ipv6: bool) (pathMtu: int) =
        let floor = if ipv6 then MinPathMtu6 else MinPathMtu4
        max floor pathMtu - ipHeaderLength ipv6 - 20

    /// The path MTU TCP believes for a report of `pathMtu`: at least the family's floor.
    let clampPathMtu (ipv6: bool) (pathMtu: int) =
        max (if ipv6 then MinPathMtu6 else MinPathMtu4) pathMtu

    /// ICMPv4 (RFC 792; RFC 1122 §4.2.3.9 for what TCP does; RFC 1812 §5.2.7.1 for codes 9-15).
    /// Hard: protocol and port unreachable (codes 2, 3), as RFC 1122 §4.2.3.9 lists them; every
    /// other destination unreachable, time exceeded and parameter problem is soft. The errors
    /// are those Linux's icmp_err_convert gives (tcp_v4_err), as .NET maps the errno.
    let private classify4 (icmpType: byte) (code: byte) =
        match icmpType with
        | Icmpv4.MessageType.DestinationUnreachable ->
            match code with
            | 0uy -> TcpIcmpMeaning.Soft SocketError.NetworkUnreachable // net unreachable: ENETUNREACH
            | 1uy -> TcpIcmpMeaning.Soft SocketError.HostUnreachable // host unreachable: EHOSTUNREACH
            | 2uy -> TcpIcmpMeaning.Hard SocketError.ProtocolOption // protocol unreachable: ENOPROTOOPT
            | 3uy -> TcpIcmpMeaning.Hard SocketError.ConnectionRefused // port unreachable: ECONNREFUSED
            | 4uy -> TcpIcmpMeaning.PacketTooBig // fragmentation needed and DF set (RFC 1191)
            | 5uy -> TcpIcmpMeaning.Soft SocketError.OperationNotSupported // source route failed: EOPNOTSUPP
            | 6uy -> TcpIcmpMeaning.Soft SocketError.NetworkUnreachable // destination network unknown
            | 7uy -> TcpIcmpMeaning.Soft SocketError.HostDown // destination host unknown: EHOSTDOWN
            | 8uy -> TcpIcmpMeaning.Soft SocketError.SocketError // source host isolated: ENONET, unmapped in .NET
            | 9uy // network administratively prohibited
            | 11uy -> TcpIcmpMeaning.Soft SocketError.NetworkUnreachable // network unreachable for TOS
            | 10uy // host administratively prohibited
            | 12uy // host unreachable for TOS
            | 13uy // communication administratively prohibited (RFC 1812)
            | 14uy // host precedence violation
            | 15uy -> TcpIcmpMeaning.Soft SocketError.HostUnreachable // precedence cutoff
            | _ -> TcpIcmpMeaning.Ignore // Linux ignores codes above 15 (NR_ICMP_UNREACH)
        | Icmpv4.MessageType.TimeExceeded -> TcpIcmpMeaning.Soft SocketError.HostUnreachable
        | Icmpv4.MessageType.ParameterProblem -> TcpIcmpMeaning.Soft SocketError.SocketError // EPROTO, unmapped in .NET
        | _ -> TcpIcmpMeaning.Ignore

    /// ICMPv6 (RFC 4443 §3). Hard, as Linux's icmpv6_err_convert marks them fatal: administratively
    /// prohibited (1), port unreachable (4), source address failed ingress/egress policy (5),
    /// reject route (6), unknown unreachable codes, and parameter problem. Soft: no route (0),
    /// beyond the scope of the source (2), address unreachable (3), time exceeded.
    let private classify6 (icmpType: byte) (code: byte) =
        match icmpType with
        | Icmpv6.MessageType.DestinationUnreachable ->
            match code with
            | 0uy -> TcpIcmpMeaning.Soft SocketError.NetworkUnreachable // no route: ENETUNREACH
            | 1uy -> TcpIcmpMeaning.Hard SocketError.AccessDenied // administratively prohibited: EACCES
            | 2uy // beyond scope of source address
            | 3uy -> TcpIcmpMeaning.Soft SocketError.HostUnreachable // address unreachable: EHOSTUNREACH
            | 4uy -> TcpIcmpMeaning.Hard SocketError.ConnectionRefused // port unreachable: ECONNREFUSED
            | 5uy // source address failed ingress/egress policy
            | 6uy -> TcpIcmpMeaning.Hard SocketError.AccessDenied // reject route to destination: EACCES
            | _ -> TcpIcmpMeaning.Hard SocketError.SocketError // EPROTO, unmapped in .NET
        | Icmpv6.MessageType.PacketTooBig -> TcpIcmpMeaning.PacketTooBig
        | Icmpv6.MessageType.TimeExceeded -> TcpIcmpMeaning.Soft SocketError.HostUnreachable
        | Icmpv6.MessageType.ParameterProblem -> TcpIcmpMeaning.Hard SocketError.SocketError // EPROTO
        | _ -> TcpIcmpMeaning.Ignore

    /// What an ICMP error of this family, type and code means to TCP.
    let classify (ipv6: bool) (icmpType: byte) (code: byte) : TcpIcmpMeaning =
        if ipv6 then
            classify6 icmpType code
        else
            classify4 icmpType code
