namespace NetStack.Core.Wire

open System
open System.Buffers.Binary

/// A parsed UDP header (RFC 768). Offsets are relative to the span given to the parser, which
/// starts at the UDP header (the IP payload).
[<Struct>]
type UdpHeader =
    {
        /// Source port; zero when the sender expects no reply.
        SourcePort: uint16
        /// Destination port.
        DestinationPort: uint16
        /// The length field: header plus payload, in bytes (8..65535).
        Length: int
        /// The checksum field as received (zero means "not computed" over IPv4).
        Checksum: uint16
        /// Where the payload starts (always 8).
        PayloadOffset: int
        /// Payload length in bytes, from the length field (bytes past it are not UDP's).
        PayloadLength: int
    }

/// UDP datagrams (RFC 768): parse, checksum verification with the IPv4/IPv6 pseudo-headers, build.
module Udp =

    /// Size of the UDP header in bytes.
    [<Literal>]
    let HeaderLength = 8

    /// The largest datagram the 16-bit length field can describe (jumbograms, RFC 2675, are not
    /// supported).
    [<Literal>]
    let MaxLength = 65535

    /// Reads the header of `datagram` (the IP payload). The length field must cover at least the
    /// header and at most the buffer; bytes past it (link padding) are ignored. The checksum is
    /// not checked here: see `parseV4`/`parseV6`.
    let parse (datagram: ReadOnlySpan<byte>) : Result<UdpHeader, ParseError> =
        if datagram.Length < HeaderLength then
            Error(Truncated(HeaderLength, datagram.Length))
        else
            let length = int (BinaryPrimitives.ReadUInt16BigEndian(datagram.Slice 4))

            if length < HeaderLength then
                Error(LengthBelowHeader(length, HeaderLength))
            elif length > datagram.Length then
                Error(LengthBeyondBuffer(length, datagram.Length))
            else
                Ok
                    {
                        SourcePort = BinaryPrimitives.ReadUInt16BigEndian datagram
                        DestinationPort = BinaryPrimitives.ReadUInt16BigEndian(datagram.Slice 2)
                        Length = length
                        Checksum = BinaryPrimitives.ReadUInt16BigEndian(datagram.Slice 6)
                        PayloadOffset = HeaderLength
                        PayloadLength = length - HeaderLength
                    }

    /// True when the checksum of a datagram received over IPv4 verifies. RFC 768: a zero field
    /// means the sender computed none, which IPv4 allows, so it is accepted.
    let hasValidChecksumV4
        (source: Ipv4Address)
        (destination: Ipv4Address)
        (datagram: ReadOnlySpan<byte>)
        (header: UdpHeader)
        : bool =
        header.Checksum = 0us
        || Checksum.verify
            (Checksum.pseudoHeaderV4 source destination IpProtocol.Udp header.Length)
            (datagram.Slice(0, header.Length))

    /// True when the checksum of a datagram received over IPv6 verifies. RFC 8200 §8.1: the UDP
    /// checksum is mandatory over IPv6, so a zero field is rejected even though 0 and 0xFFFF are
    /// the same one's complement value.
    let hasValidChecksumV6
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (datagram: ReadOnlySpan<byte>)
        (header: UdpHeader)
        : bool =
        header.Checksum <> 0us
        && Checksum.verify
            (Checksum.pseudoHeaderV6 source destination IpProtocol.Udp header.Length)
            (datagram.Slice(0, header.Length))

    /// `parse`, then the IPv4 checksum check (`BadChecksum` when it fails).
    let parseV4
        (source: Ipv4Address)
        (destination: Ipv4Address)
        (datagram: ReadOnlySpan<byte>)
        : Result<UdpHeader, ParseError> =
        match parse datagram with
        | Ok header when not (hasValidChecksumV4 source destination datagram header) -> Error BadChecksum
        | result -> result

    /// `parse`, then the IPv6 checksum check (`BadChecksum` when it fails or is zero).
    let parseV6
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (datagram: ReadOnlySpan<byte>)
        : Result<UdpHeader, ParseError> =
        match parse datagram with
        | Ok header when not (hasValidChecksumV6 source destination datagram header) -> Error BadChecksum
        | result -> result

    /// Copies the payload after the header and writes the header with a zero checksum.
    /// The payload is copied first, so it may already sit at buffer[8..] (or overlap it).
    let private writeWithoutChecksum
        (buffer: Span<byte>)
        (sourcePort: uint16)
        (destinationPort: uint16)
        (payload: ReadOnlySpan<byte>)
        : int =
        let length = HeaderLength + payload.Length

        if length > MaxLength then
            invalidArg (nameof payload) $"A UDP payload of {payload.Length} bytes does not fit the 16-bit length field."

        if buffer.Length < length then
            invalidArg (nameof buffer) $"The buffer holds {buffer.Length} bytes; the datagram needs {length}."

        payload.CopyTo(buffer.Slice HeaderLength)
        BinaryPrimitives.WriteUInt16BigEndian(buffer, sourcePort)
        BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice 2, destinationPort)
        BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice 4, uint16 length)
        BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice 6, 0us)
        length

    /// Computes the checksum over the written datagram and stores it. RFC 768: a computed zero
    /// is sent as 0xFFFF, since a zero field means "no checksum".
    let private storeChecksum (buffer: Span<byte>) (length: int) (pseudoHeader: uint64) =
        let written: ReadOnlySpan<byte> = Span<byte>.op_Implicit(buffer.Slice(0, length))
        let value = Checksum.finish (Checksum.sum pseudoHeader written)
        BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice 6, (if value = 0us then 0xFFFFus else value))

    /// Writes a UDP datagram carrying `payload` for IPv4 into `buffer`, checksum filled, and returns
    /// its length. Throws ArgumentException when the buffer is too small or the payload too long.
    let buildV4
        (buffer: Span<byte>)
        (source: Ipv4Address)
        (destination: Ipv4Address)
        (sourcePort: uint16)
        (destinationPort: uint16)
        (payload: ReadOnlySpan<byte>)
        : int =
        let length = writeWithoutChecksum buffer sourcePort destinationPort payload
        storeChecksum buffer length (Checksum.pseudoHeaderV4 source destination IpProtocol.Udp length)
        length

    /// Writes a UDP datagram carrying `payload` for IPv6 into `buffer`, checksum filled, and returns
    /// its length. Throws ArgumentException when the buffer is too small or the payload too long.
    let buildV6
        (buffer: Span<byte>)
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (sourcePort: uint16)
        (destinationPort: uint16)
        (payload: ReadOnlySpan<byte>)
        : int =
        let length = writeWithoutChecksum buffer sourcePort destinationPort payload
        storeChecksum buffer length (Checksum.pseudoHeaderV6 source destination IpProtocol.Udp length)
        length
