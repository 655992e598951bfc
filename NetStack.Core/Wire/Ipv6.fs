namespace NetStack.Core.Wire

open System
open System.Buffers.Binary

/// The fixed IPv6 header (RFC 8200 §3). Offsets and lengths are relative to the parsed span.
[<Struct; StructuredFormatDisplay("{Display}")>]
type Ipv6Header =
    {
        /// Traffic class: DSCP in the upper six bits, ECN in the lower two (RFC 8200 §7).
        TrafficClass: byte
        /// Flow label, 20 bits (RFC 6437).
        FlowLabel: uint32
        /// Payload length: the bytes after the 40-byte header, extension headers included.
        /// Zero is taken literally (jumbograms, RFC 2675, are not supported).
        PayloadLength: int
        /// The type of the header after the fixed header (an extension header or IpProtocol).
        NextHeader: byte
        /// Hop limit.
        HopLimit: byte
        /// Source address.
        Source: Ipv6Address
        /// Destination address.
        Destination: Ipv6Address
        /// Where the payload starts: always 40.
        PayloadOffset: int
    }

/// An IPv6 Fragment header (RFC 8200 §4.5).
[<Struct>]
type Ipv6FragmentHeader =
    {
        /// The type of the header that starts the fragmentable part.
        NextHeader: byte
        /// Fragment offset in BYTES (the wire field × 8) within the fragmentable part.
        Offset: int
        /// The M flag: more fragments follow.
        MoreFragments: bool
        /// Identification, shared by all fragments of one packet.
        Identification: uint32
    }

/// What the extension-header chain of an IPv6 packet says (RFC 8200 §4). Offsets are
/// relative to the start of the packet.
[<Struct>]
type Ipv6Extensions =
    {
        /// The protocol of what follows the chain (TCP, UDP, ICMPv6, No Next Header, or any
        /// header this walker does not step over). After a Fragment header, the Fragment
        /// header's Next Header: the walk stops there, see Fragment.
        UpperProtocol: byte
        /// Where that upper-layer header starts.
        UpperOffset: int
        /// Bytes from UpperOffset to the end of the payload (as bounded by Payload Length).
        UpperLength: int
        /// The Fragment header, when there is one. The walk stops after it: the bytes that follow
        /// are fragment data, to be reassembled before they are parsed further.
        Fragment: Ipv6FragmentHeader voption
        /// Where the unfragmentable part (RFC 8200 §4.5) ends: the fixed header plus the
        /// Hop-by-Hop and Routing headers (and Destination Options before a Routing header).
        /// When Fragment is present it is exactly where the Fragment header starts.
        UnfragmentableLength: int
        /// The offset of the Next Header byte that names the header at UnfragmentableLength:
        /// 6 (in the fixed header) or the first byte of the last unfragmentable extension header.
        /// Fragmentation rewrites it to 44; reassembly rewrites it back.
        UnfragmentableNextHeaderOffset: int
        /// How many extension headers were stepped over, the Fragment header included.
        ExtensionHeaders: int
    }

/// IPv6 (RFC 8200) header parsing, extension-header chain walking and writing.
module Ipv6 =

    /// The fixed header is always 40 bytes (RFC 8200 §3).
    [<Literal>]
    let HeaderLength = 40

    /// The Fragment header is always 8 bytes (RFC 8200 §4.5).
    [<Literal>]
    let FragmentHeaderLength = 8

    /// The walker's bound on extension headers: RFC 8200 §4.1 recommends each appear at most
    /// once (Destination Options twice), about six in all; a hostile chain of thousands of tiny
    /// headers must not cost a loop per header.
    [<Literal>]
    let MaxExtensionHeaders = 8

    /// Every IPv6 link carries at least 1280-byte packets (RFC 8200 §5).
    [<Literal>]
    let MinimumMtu = 1280

    /// The largest fragment offset in bytes: 13 bits of 8-byte units.
    [<Literal>]
    let MaxFragmentOffset = 65528

    /// Parses the fixed IPv6 header at the start of `packet`: 40 bytes present, version 6,
    /// Payload Length within the buffer (bytes past it are link padding). Allocates nothing and
    /// never throws.
    let parse (packet: ReadOnlySpan<byte>) : Result<Ipv6Header, ParseError> =
        if packet.Length < HeaderLength then
            Error(Truncated(HeaderLength, packet.Length))
        else
            let first = BinaryPrimitives.ReadUInt32BigEndian packet
            let version = int (first >>> 28)

            if version <> 6 then
                Error(BadVersion version)
            else
                let payloadLength = int (BinaryPrimitives.ReadUInt16BigEndian(packet.Slice 4))

                if HeaderLength + payloadLength > packet.Length then
                    Error(LengthBeyondBuffer(HeaderLength + payloadLength, packet.Length))
                else
                    Ok
                        {
                            TrafficClass = byte ((first >>> 20) &&& 0xFFu)
                            FlowLabel = first &&& 0xFFFFFu
                            PayloadLength = payloadLength
                            NextHeader = packet.[6]
                            HopLimit = packet.[7]
                            Source = Ipv6Address.Read(packet.Slice 8)
                            Destination = Ipv6Address.Read(packet.Slice 24)
                            PayloadOffset = HeaderLength
                        }

    /// Reads a Fragment header (8 bytes at the start of `src`, assumed present): next header,
    /// a reserved byte, 13 bits of offset in 8-byte units, two reserved bits, M, identification.
    /// Reserved bits are ignored on receipt (RFC 8200 §4.5).
    let private readFragmentHeader (src: ReadOnlySpan<byte>) : Ipv6FragmentHeader =
        let offsetFlags = BinaryPrimitives.ReadUInt16BigEndian(src.Slice 2)

        {
            NextHeader = src.[0]
            Offset = int (offsetFlags >>> 3) * 8
            MoreFragments = offsetFlags &&& 1us <> 0us
            Identification = BinaryPrimitives.ReadUInt32BigEndian(src.Slice 4)
        }

    /// Walks the extension-header chain of `packet`, whose fixed header `header` was parsed
    /// from it. Steps over Hop-by-Hop Options (only as the first header, RFC 8200 §4.1),
    /// Routing and Destination Options (length (Hdr Ext Len + 1) × 8, §4.3-4.6) and stops at a
    /// Fragment header (§4.5), No Next Header (§4.7) or any other type, which is taken as the
    /// upper layer (ESP and AH included). Every length is checked against the payload as
    /// bounded by Payload Length; a Truncated error reports the offset the header would need
    /// to reach and the end of the payload. Allocates nothing and never throws.
    let parseExtensions (packet: ReadOnlySpan<byte>) (header: Ipv6Header) : Result<Ipv6Extensions, ParseError> =
        let payloadEnd = HeaderLength + header.PayloadLength

        if header.PayloadLength < 0 || payloadEnd > packet.Length then
            Error(LengthBeyondBuffer(payloadEnd, packet.Length))
        else
            let mutable next = header.NextHeader
            let mutable position = HeaderLength
            // The offset of the byte that named the header at `position`.
            let mutable namingField = 6
            let mutable count = 0
            let mutable unfragmentableEnd = HeaderLength
            let mutable unfragmentableNaming = 6
            let mutable fragment = ValueNone
            let mutable error = ValueNone
            let mutable finished = false

            while not finished do
                let isOptionsOrRouting =
                    next = IpProtocol.HopByHop
                    || next = IpProtocol.Ipv6Routing
                    || next = IpProtocol.Ipv6DestinationOptions

                if not isOptionsOrRouting && next <> IpProtocol.Ipv6Fragment then
                    finished <- true
                elif next = IpProtocol.HopByHop && count > 0 then
                    error <- ValueSome(MisplacedExtensionHeader(int next))
                    finished <- true
                elif count >= MaxExtensionHeaders then
                    error <- ValueSome(ExtensionChainTooLong(count + 1))
                    finished <- true
                elif next = IpProtocol.Ipv6Fragment then
                    if position + FragmentHeaderLength > payloadEnd then
                        error <- ValueSome(Truncated(position + FragmentHeaderLength, payloadEnd))
                    else
                        let f = readFragmentHeader (packet.Slice position)
                        fragment <- ValueSome f
                        unfragmentableEnd <- position
                        unfragmentableNaming <- namingField
                        count <- count + 1
                        next <- f.NextHeader
                        position <- position + FragmentHeaderLength

                    finished <- true
                elif position + 2 > payloadEnd then
                    error <- ValueSome(Truncated(position + 2, payloadEnd))
                    finished <- true
                else
                    let length = (int packet.[position + 1] + 1) * 8

                    if position + length > payloadEnd then
                        error <- ValueSome(Truncated(position + length, payloadEnd))
                        finished <- true
                    else
                        // Hop-by-Hop and Routing are examined on the way, so they stay in every
                        // fragment; a Destination Options header before a Routing header is
                        // covered when that Routing header moves the end past it.
                        if next <> IpProtocol.Ipv6DestinationOptions then
                            unfragmentableEnd <- position + length
                            unfragmentableNaming <- position

                        count <- count + 1
                        namingField <- position
                        next <- packet.[position]
                        position <- position + length

            match error with
            | ValueSome e -> Error e
            | ValueNone ->
                Ok
                    {
                        UpperProtocol = next
                        UpperOffset = position
                        UpperLength = payloadEnd - position
                        Fragment = fragment
                        UnfragmentableLength = unfragmentableEnd
                        UnfragmentableNextHeaderOffset = unfragmentableNaming
                        ExtensionHeaders = count
                    }

    /// A header template: traffic class and flow label 0, hop limit 64, no payload yet.
    let header (source: Ipv6Address) (destination: Ipv6Address) (nextHeader: byte) : Ipv6Header =
        {
            TrafficClass = 0uy
            FlowLabel = 0u
            PayloadLength = 0
            NextHeader = nextHeader
            HopLimit = 64uy
            Source = source
            Destination = destination
            PayloadOffset = HeaderLength
        }

    /// Writes the fixed 40-byte header into `dst` and returns 40. Every field but PayloadOffset
    /// is taken from `header`. Throws ArgumentException when `dst` is shorter than 40 bytes, the
    /// flow label exceeds 20 bits or the payload length is outside 0..65535.
    let write (header: Ipv6Header) (dst: Span<byte>) : int =
        if header.FlowLabel > 0xFFFFFu then
            invalidArg (nameof header) $"Flow label {header.FlowLabel} does not fit in 20 bits."

        if header.PayloadLength < 0 || header.PayloadLength > 0xFFFF then
            invalidArg (nameof header) $"Payload length {header.PayloadLength} is outside 0..65535."

        if dst.Length < HeaderLength then
            invalidArg (nameof dst) $"The destination holds {dst.Length} bytes; the header needs 40."

        let first = (6u <<< 28) ||| (uint32 header.TrafficClass <<< 20) ||| header.FlowLabel
        BinaryPrimitives.WriteUInt32BigEndian(dst, first)
        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 4, uint16 header.PayloadLength)
        dst.[6] <- header.NextHeader
        dst.[7] <- header.HopLimit
        header.Source.Write(dst.Slice 8)
        header.Destination.Write(dst.Slice 24)
        HeaderLength

    /// Writes an 8-byte Fragment header into `dst` (reserved fields zero) and returns 8. Throws
    /// ArgumentException when `dst` is too small or the offset is not a multiple of 8 in 0..65528.
    let writeFragmentHeader (fragment: Ipv6FragmentHeader) (dst: Span<byte>) : int =
        if
            fragment.Offset < 0
            || fragment.Offset > MaxFragmentOffset
            || fragment.Offset % 8 <> 0
        then
            invalidArg (nameof fragment) $"Fragment offset {fragment.Offset} is not a multiple of 8 in 0..65528."

        if dst.Length < FragmentHeaderLength then
            invalidArg (nameof dst) $"The destination holds {dst.Length} bytes; the header needs 8."

        dst.[0] <- fragment.NextHeader
        dst.[1] <- 0uy

        let offsetFlags =
            uint16 (fragment.Offset / 8 <<< 3)
            ||| (if fragment.MoreFragments then 1us else 0us)

        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 2, offsetFlags)
        BinaryPrimitives.WriteUInt32BigEndian(dst.Slice 4, fragment.Identification)
        FragmentHeaderLength

type Ipv6Header with
    /// One line for `dotnet fsi` and %A: "IPv6 fd77::1 > fd77::2 next 6 hlim 64 payload 40".
    member h.Display =
        let tclass =
            if h.TrafficClass <> 0uy then
                $" tclass {h.TrafficClass}"
            else
                ""

        let flow = if h.FlowLabel <> 0u then $" flow {h.FlowLabel}" else ""
        $"IPv6 {h.Source} > {h.Destination} next {h.NextHeader} hlim {h.HopLimit} payload {h.PayloadLength}{tclass}{flow}"
