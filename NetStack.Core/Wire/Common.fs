namespace NetStack.Core.Wire

open System
open System.Buffers.Binary
open System.Net
open System.Net.Sockets
open System.Runtime.InteropServices

/// Why a sequence of bytes from the network could not be parsed.
/// Parsers return this instead of throwing: bytes from the network are never trusted.
[<Struct>]
type ParseError =
    /// Fewer bytes than the format needs at this point.
    | Truncated of needed: int * available: int
    /// The version field is not the one this parser reads (4 for IPv4, 6 for IPv6).
    | BadVersion of version: int
    /// A header-length field (IPv4 IHL, TCP data offset) is below the minimum or past the packet.
    | BadHeaderLength of headerLength: int
    /// A total/payload length field says more bytes than the buffer holds.
    | LengthBeyondBuffer of declared: int * actual: int
    /// A length field says fewer bytes than its own header.
    | LengthBelowHeader of declaredLength: int * minimum: int
    /// The checksum does not verify.
    | BadChecksum
    /// An option's length byte is zero, one, or runs past the options area; the offset is within the options.
    | BadOptionLength of optionOffset: int
    /// An option with a fixed size (e.g. TCP MSS = 4) has another length.
    | BadOptionSize of kind: int * size: int
    /// The IPv6 extension-header chain is longer than the parser's bound.
    | ExtensionChainTooLong of headers: int
    /// An extension header appears where RFC 8200 forbids it (hop-by-hop not first).
    | MisplacedExtensionHeader of nextHeader: int
    /// A field has a value the RFC forbids (the name says which).
    | BadField of field: string

/// An IPv4 address as a 32-bit number in host order (a.b.c.d = a&lt;&lt;24 ||| b&lt;&lt;16 ||| c&lt;&lt;8 ||| d).
[<Struct; CustomEquality; CustomComparison>]
type Ipv4Address =
    /// The address as a number, first octet in the high byte.
    val Value: uint32
    new(value: uint32) = { Value = value }

    /// Builds an address from its four octets.
    static member OfOctets(a: byte, b: byte, c: byte, d: byte) =
        Ipv4Address((uint32 a <<< 24) ||| (uint32 b <<< 16) ||| (uint32 c <<< 8) ||| uint32 d)

    /// Reads an address from four bytes in network order.
    static member Read(src: ReadOnlySpan<byte>) =
        Ipv4Address(BinaryPrimitives.ReadUInt32BigEndian src)

    /// Writes the address as four bytes in network order.
    member this.Write(dst: Span<byte>) =
        BinaryPrimitives.WriteUInt32BigEndian(dst, this.Value)

    /// The same address as a System.Net.IPAddress.
    member this.ToIPAddress() =
        let bytes = Array.zeroCreate<byte> 4
        this.Write(Span bytes)
        IPAddress bytes

    /// Converts an IPv4 System.Net.IPAddress; throws ArgumentException for other families.
    static member OfIPAddress(address: IPAddress) =
        if isNull address then
            nullArg (nameof address)

        if address.AddressFamily <> AddressFamily.InterNetwork then
            invalidArg (nameof address) $"'{address}' is not an IPv4 address."

        // Into a local, not GetAddressBytes's new array: no allocation per conversion.
        let mutable raw = 0u
        let bytes = MemoryMarshal.AsBytes(MemoryMarshal.CreateSpan(&raw, 1))
        let mutable written = 0
        address.TryWriteBytes(bytes, &written) |> ignore
        Ipv4Address.Read(Span<byte>.op_Implicit bytes)

    /// Parses dotted-quad text; throws FormatException when it is not an IPv4 address.
    static member Parse(text: string) =
        match IPAddress.TryParse(text: string) with
        | true, a when a.AddressFamily = AddressFamily.InterNetwork -> Ipv4Address.OfIPAddress a
        | _ -> raise (FormatException $"'{text}' is not an IPv4 address.")

    /// 0.0.0.0
    static member Any = Ipv4Address 0u

    override this.ToString() =
        let v = this.Value
        $"{v >>> 24}.{(v >>> 16) &&& 0xFFu}.{(v >>> 8) &&& 0xFFu}.{v &&& 0xFFu}"

    override this.Equals(o) =
        match o with
        | :? Ipv4Address as a -> a.Value = this.Value
        | _ -> false

    override this.GetHashCode() = int this.Value

    interface IEquatable<Ipv4Address> with
        member this.Equals(a) = a.Value = this.Value

    interface IComparable<Ipv4Address> with
        member this.CompareTo(a) = compare this.Value a.Value

    interface IComparable with
        member this.CompareTo(o) =
            match o with
            | :? Ipv4Address as a -> compare this.Value a.Value
            | _ -> invalidArg "o" "not an Ipv4Address"

/// An IPv6 address as two 64-bit halves in host order (High holds the first eight bytes).
[<Struct; CustomEquality; CustomComparison>]
type Ipv6Address =
    /// The first eight bytes, first byte in the high byte.
    val High: uint64
    /// The last eight bytes.
    val Low: uint64
    new(high: uint64, low: uint64) = { High = high; Low = low }

    /// Reads an address from sixteen bytes in network order.
    static member Read(src: ReadOnlySpan<byte>) =
        Ipv6Address(BinaryPrimitives.ReadUInt64BigEndian src, BinaryPrimitives.ReadUInt64BigEndian(src.Slice 8))

    /// Writes the address as sixteen bytes in network order.
    member this.Write(dst: Span<byte>) =
        BinaryPrimitives.WriteUInt64BigEndian(dst, this.High)
        BinaryPrimitives.WriteUInt64BigEndian(dst.Slice 8, this.Low)

    /// The same address as a System.Net.IPAddress.
    member this.ToIPAddress() =
        let bytes = Array.zeroCreate<byte> 16
        this.Write(Span bytes)
        IPAddress bytes

    /// Converts an IPv6 System.Net.IPAddress; throws ArgumentException for other families.
    static member OfIPAddress(address: IPAddress) =
        if isNull address then
            nullArg (nameof address)

        if address.AddressFamily <> AddressFamily.InterNetworkV6 then
            invalidArg (nameof address) $"'{address}' is not an IPv6 address."

        // Into a local, not GetAddressBytes's new array: no allocation per conversion.
        let mutable raw = Int128.Zero
        let bytes = MemoryMarshal.AsBytes(MemoryMarshal.CreateSpan(&raw, 1))
        let mutable written = 0
        address.TryWriteBytes(bytes, &written) |> ignore
        Ipv6Address.Read(Span<byte>.op_Implicit bytes)

    /// Parses IPv6 text; throws FormatException when it is not an IPv6 address.
    static member Parse(text: string) =
        match IPAddress.TryParse(text: string) with
        | true, a when a.AddressFamily = AddressFamily.InterNetworkV6 -> Ipv6Address.OfIPAddress a
        | _ -> raise (FormatException $"'{text}' is not an IPv6 address.")

    /// ::
    static member Any = Ipv6Address(0UL, 0UL)

    /// True for ff00::/8.
    member this.IsMulticast = (this.High >>> 56) = 0xFFUL

    override this.ToString() = this.ToIPAddress().ToString()

    override this.Equals(o) =
        match o with
        | :? Ipv6Address as a -> a.High = this.High && a.Low = this.Low
        | _ -> false

    override this.GetHashCode() = HashCode.Combine(this.High, this.Low)

    interface IEquatable<Ipv6Address> with
        member this.Equals(a) = a.High = this.High && a.Low = this.Low

    interface IComparable<Ipv6Address> with
        member this.CompareTo(a) =
            let c = compare this.High a.High
            if c <> 0 then c else compare this.Low a.Low

    interface IComparable with
        member this.CompareTo(o) =
            match o with
            | :? Ipv6Address as a ->
                let c = compare this.High a.High
                if c <> 0 then c else compare this.Low a.Low
            | _ -> invalidArg "o" "not an Ipv6Address"

/// IP protocol numbers (IANA "Assigned Internet Protocol Numbers"), also IPv6 Next Header values.
module IpProtocol =
    /// IPv6 Hop-by-Hop Options header (RFC 8200 §4.3).
    [<Literal>]
    let HopByHop = 0uy

    /// ICMP for IPv4 (RFC 792).
    [<Literal>]
    let Icmp = 1uy

    /// TCP (RFC 9293).
    [<Literal>]
    let Tcp = 6uy

    /// UDP (RFC 768).
    [<Literal>]
    let Udp = 17uy

    /// IPv6 Routing header (RFC 8200 §4.4).
    [<Literal>]
    let Ipv6Routing = 43uy

    /// IPv6 Fragment header (RFC 8200 §4.5).
    [<Literal>]
    let Ipv6Fragment = 44uy

    /// ICMPv6 (RFC 4443).
    [<Literal>]
    let Icmpv6 = 58uy

    /// No next header (RFC 8200 §4.7).
    [<Literal>]
    let Ipv6NoNextHeader = 59uy

    /// IPv6 Destination Options header (RFC 8200 §4.6).
    [<Literal>]
    let Ipv6DestinationOptions = 60uy
