namespace NetStack.Core.Stack

open System.Net
open System.Net.Sockets
open NetStack.Core.Wire

/// An IPv4 or an IPv6 address: what the IP layer keys its per-destination state by and reports
/// as the source or destination of a packet.
[<Struct; CustomEquality; CustomComparison>]
type IpAddr =
    /// An IPv4 address.
    | V4 of ipv4: Ipv4Address
    /// An IPv6 address.
    | V6 of ipv6: Ipv6Address

    /// True for an IPv6 address.
    member this.IsIpv6 =
        match this with
        | V6 _ -> true
        | V4 _ -> false

    /// The same address as a System.Net.IPAddress (allocates).
    member this.ToIPAddress() : IPAddress =
        match this with
        | V4 a -> a.ToIPAddress()
        | V6 a -> a.ToIPAddress()

    /// Converts a System.Net.IPAddress (an IPv4-mapped IPv6 address stays IPv6).
    static member OfIPAddress(address: IPAddress) : IpAddr =
        if isNull address then
            nullArg (nameof address)

        if address.AddressFamily = AddressFamily.InterNetwork then
            V4(Ipv4Address.OfIPAddress address)
        else
            V6(Ipv6Address.OfIPAddress address)

    override this.ToString() =
        match this with
        | V4 a -> a.ToString()
        | V6 a -> a.ToString()

    override this.Equals(o) =
        match o with
        | :? IpAddr as other -> IpAddr.Compare(this, other) = 0
        | _ -> false

    override this.GetHashCode() =
        match this with
        | V4 a -> a.GetHashCode()
        | V6 a -> a.GetHashCode() * 31 + 1

    /// Orders IPv4 before IPv6, then by address.
    static member Compare(a: IpAddr, b: IpAddr) : int =
        match a, b with
        | V4 x, V4 y -> compare x.Value y.Value
        | V6 x, V6 y ->
            let c = compare x.High y.High
            if c <> 0 then c else compare x.Low y.Low
        | V4 _, V6 _ -> -1
        | V6 _, V4 _ -> 1

    interface System.IEquatable<IpAddr> with
        member this.Equals(other) = IpAddr.Compare(this, other) = 0

    interface System.IComparable<IpAddr> with
        member this.CompareTo(other) = IpAddr.Compare(this, other)

    interface System.IComparable with
        member this.CompareTo(o) =
            match o with
            | :? IpAddr as other -> IpAddr.Compare(this, other)
            | _ -> invalidArg "o" "not an IpAddr"

/// Address classes the IP layer must recognise to decide what to accept and what never to
/// answer with an ICMP error (RFC 1122 §3.2.1.3, RFC 4291 §2.4).
module AddressClass =

    /// 224.0.0.0/4 (RFC 1112).
    let isMulticast4 (a: Ipv4Address) = (a.Value >>> 28) = 0xEu

    /// 255.255.255.255, the limited broadcast (RFC 919).
    let isLimitedBroadcast4 (a: Ipv4Address) = a.Value = 0xFFFFFFFFu

    /// 0.0.0.0, "this host" (RFC 1122 §3.2.1.3 (a)): a source only while booting.
    let isUnspecified4 (a: Ipv4Address) = a.Value = 0u

    /// :: (RFC 4291 §2.5.2).
    let isUnspecified6 (a: Ipv6Address) = a.High = 0UL && a.Low = 0UL

    /// 127.0.0.0/8 (RFC 1122 §3.2.1.3 (g)): never seen on a real interface.
    let isLoopback4 (a: Ipv4Address) = (a.Value >>> 24) = 127u

    /// ::1 (RFC 4291 §2.5.3).
    let isLoopback6 (a: Ipv6Address) = a.High = 0UL && a.Low = 1UL
