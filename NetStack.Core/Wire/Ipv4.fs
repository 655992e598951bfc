namespace NetStack.Core.Wire

open System
open System.Buffers.Binary

/// An IPv4 header (RFC 791 §3.1) as parsed from a packet, or as a template to write.
/// Offsets and lengths are relative to the start of the parsed span.
[<Struct; StructuredFormatDisplay("{Display}")>]
type Ipv4Header =
    {
        /// Header length in bytes (IHL × 4): 20 to 60, options included.
        HeaderLength: int
        /// Differentiated Services Code Point (RFC 2474): the upper six bits of the old TOS byte.
        Dscp: byte
        /// Explicit Congestion Notification (RFC 3168): the lower two bits of the old TOS byte.
        Ecn: byte
        /// Total length of the datagram (header and payload) in bytes.
        TotalLength: int
        /// Identification, shared by all fragments of one datagram.
        Identification: uint16
        /// The Don't Fragment flag.
        DontFragment: bool
        /// The More Fragments flag: set on every fragment but the last.
        MoreFragments: bool
        /// Fragment offset in BYTES (the wire field × 8): where this payload starts in the
        /// original datagram's payload. Always a multiple of 8, at most 65528.
        FragmentOffset: int
        /// Time to live.
        Ttl: byte
        /// The protocol of the payload (see IpProtocol).
        Protocol: byte
        /// Header checksum as found on the wire (ignored when writing: it is computed).
        HeaderChecksum: uint16
        /// Source address.
        Source: Ipv4Address
        /// Destination address.
        Destination: Ipv4Address
        /// Where the options start (always 20 when parsed).
        OptionsOffset: int
        /// Length of the options area in bytes, padding included (HeaderLength - 20).
        OptionsLength: int
        /// Where the payload starts (= HeaderLength).
        PayloadOffset: int
        /// Payload length in bytes (TotalLength - HeaderLength); trailing link padding excluded.
        PayloadLength: int
    }

    /// True when this datagram is a fragment (More Fragments set or a non-zero offset).
    member this.IsFragment = this.MoreFragments || this.FragmentOffset <> 0

/// IPv4 (RFC 791) header parsing and writing.
module Ipv4 =

    /// The fixed part of the header; IHL may not say less (RFC 791 §3.1).
    [<Literal>]
    let MinHeaderLength = 20

    /// IHL is four bits counting 32-bit words: 15 × 4 bytes at most, so 40 bytes of options.
    [<Literal>]
    let MaxHeaderLength = 60

    /// The largest options area.
    [<Literal>]
    let MaxOptionsLength = 40

    /// Option kind 0, End of Option List: the rest of the options area is padding.
    [<Literal>]
    let OptionEndOfList = 0uy

    /// Option kind 1, No Operation: a single byte, used to align the following option.
    [<Literal>]
    let OptionNoOperation = 1uy

    /// Bit 0 of the option type octet (RFC 791 §3.1): the option is copied into every fragment.
    [<Literal>]
    let OptionCopiedFlag = 0x80uy

    // Flags and fragment offset share bytes 6-7: a reserved zero bit, DF, MF, then 13 bits of
    // offset in 8-byte units. The reserved bit is ignored on receipt, as the kernel does.
    [<Literal>]
    let private FlagDontFragment = 0x4000us

    [<Literal>]
    let private FlagMoreFragments = 0x2000us

    [<Literal>]
    let private OffsetMask = 0x1FFFus

    /// The largest fragment offset in bytes: 13 bits of 8-byte units.
    [<Literal>]
    let MaxFragmentOffset = 65528

    /// Checks the structure of an options area (RFC 791 §3.1, "Options"): End of Option List
    /// ends it, No Operation is one byte, any other option carries a length byte that counts
    /// the type and length bytes themselves (so at least 2) and must stay inside the area.
    /// Returns the offset of the first bad option, or -1 when the area is well formed.
    let internal findBadOption (options: ReadOnlySpan<byte>) : int =
        let mutable i = 0
        let mutable bad = -1
        let mutable finished = false

        while not finished && i < options.Length do
            let kind = options.[i]

            if kind = OptionEndOfList then
                finished <- true
            elif kind = OptionNoOperation then
                i <- i + 1
            elif i + 1 >= options.Length then
                bad <- i
                finished <- true
            else
                let length = int options.[i + 1]

                if length < 2 || i + length > options.Length then
                    bad <- i
                    finished <- true
                else
                    i <- i + length

        bad

    /// Parses an IPv4 header at the start of `packet`, verifying the header checksum only when
    /// `verifyChecksum` (a NIC or the TUN offload may have verified it already). Checks, in
    /// order: 20 bytes present, version 4, IHL between 5 and the buffer, total length between
    /// the header length and the buffer (extra bytes after it are link padding and are not
    /// payload), the checksum, the options' lengths. Allocates nothing and never throws.
    let parseWith (verifyChecksum: bool) (packet: ReadOnlySpan<byte>) : Result<Ipv4Header, ParseError> =
        if packet.Length < MinHeaderLength then
            Error(Truncated(MinHeaderLength, packet.Length))
        else
            let version = int (packet.[0] >>> 4)
            let headerLength = int (packet.[0] &&& 0x0Fuy) * 4

            if version <> 4 then
                Error(BadVersion version)
            elif headerLength < MinHeaderLength || headerLength > packet.Length then
                Error(BadHeaderLength headerLength)
            else
                let totalLength = int (BinaryPrimitives.ReadUInt16BigEndian(packet.Slice 2))

                if totalLength < headerLength then
                    Error(LengthBelowHeader(totalLength, headerLength))
                elif totalLength > packet.Length then
                    Error(LengthBeyondBuffer(totalLength, packet.Length))
                elif verifyChecksum && not (Checksum.verify 0UL (packet.Slice(0, headerLength))) then
                    Error BadChecksum
                else
                    let options = packet.Slice(MinHeaderLength, headerLength - MinHeaderLength)
                    let bad = findBadOption options

                    if bad >= 0 then
                        Error(BadOptionLength bad)
                    else
                        let flagsOffset = BinaryPrimitives.ReadUInt16BigEndian(packet.Slice 6)

                        Ok
                            {
                                HeaderLength = headerLength
                                Dscp = packet.[1] >>> 2
                                Ecn = packet.[1] &&& 0x03uy
                                TotalLength = totalLength
                                Identification = BinaryPrimitives.ReadUInt16BigEndian(packet.Slice 4)
                                DontFragment = flagsOffset &&& FlagDontFragment <> 0us
                                MoreFragments = flagsOffset &&& FlagMoreFragments <> 0us
                                FragmentOffset = int (flagsOffset &&& OffsetMask) * 8
                                Ttl = packet.[8]
                                Protocol = packet.[9]
                                HeaderChecksum = BinaryPrimitives.ReadUInt16BigEndian(packet.Slice 10)
                                Source = Ipv4Address.Read(packet.Slice 12)
                                Destination = Ipv4Address.Read(packet.Slice 16)
                                OptionsOffset = MinHeaderLength
                                OptionsLength = headerLength - MinHeaderLength
                                PayloadOffset = headerLength
                                PayloadLength = totalLength - headerLength
                            }

    /// Parses an IPv4 header at the start of `packet` and verifies its checksum (see parseWith).
    let parse (packet: ReadOnlySpan<byte>) : Result<Ipv4Header, ParseError> = parseWith true packet

    /// A header template with the usual defaults: TTL 64, no DSCP/ECN, identification 0,
    /// no flags, no options, no payload. Fill in the rest with `{ h with ... }`.
    let header (source: Ipv4Address) (destination: Ipv4Address) (protocol: byte) : Ipv4Header =
        {
            HeaderLength = MinHeaderLength
            Dscp = 0uy
            Ecn = 0uy
            TotalLength = MinHeaderLength
            Identification = 0us
            DontFragment = false
            MoreFragments = false
            FragmentOffset = 0
            Ttl = 64uy
            Protocol = protocol
            HeaderChecksum = 0us
            Source = source
            Destination = destination
            OptionsOffset = MinHeaderLength
            OptionsLength = 0
            PayloadOffset = MinHeaderLength
            PayloadLength = 0
        }

    /// The header length for an options area of this many bytes: padded to a 32-bit boundary.
    let headerLengthFor (optionsLength: int) : int =
        MinHeaderLength + ((optionsLength + 3) &&& ~~~3)

    /// Writes the fixed 20 bytes for a header of `headerLength` bytes whose options (padding
    /// included) are already in dst[20 .. headerLength), then the checksum over all of it.
    /// Used by `write` and by fragmentation, which lays down its own option subset first.
    let internal writeFixedPart (header: Ipv4Header) (headerLength: int) (payloadLength: int) (dst: Span<byte>) =
        if header.Dscp > 63uy then
            invalidArg (nameof header) $"DSCP {header.Dscp} does not fit in six bits."

        if header.Ecn > 3uy then
            invalidArg (nameof header) $"ECN {header.Ecn} does not fit in two bits."

        if
            header.FragmentOffset < 0
            || header.FragmentOffset > MaxFragmentOffset
            || header.FragmentOffset % 8 <> 0
        then
            invalidArg (nameof header) $"Fragment offset {header.FragmentOffset} is not a multiple of 8 in 0..65528."

        if payloadLength < 0 || headerLength + payloadLength > 0xFFFF then
            invalidArg (nameof payloadLength) $"Payload length {payloadLength} makes the datagram exceed 65535 bytes."

        dst.[0] <- byte (0x40 ||| (headerLength / 4))
        dst.[1] <- (header.Dscp <<< 2) ||| header.Ecn
        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 2, uint16 (headerLength + payloadLength))
        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 4, header.Identification)

        let flagsOffset =
            (if header.DontFragment then FlagDontFragment else 0us)
            ||| (if header.MoreFragments then FlagMoreFragments else 0us)
            ||| uint16 (header.FragmentOffset / 8)

        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 6, flagsOffset)
        dst.[8] <- header.Ttl
        dst.[9] <- header.Protocol
        // The checksum covers the header with its own field taken as zero (RFC 791 §3.1).
        dst.[10] <- 0uy
        dst.[11] <- 0uy
        header.Source.Write(dst.Slice 12)
        header.Destination.Write(dst.Slice 16)
        let full = dst.Slice(0, headerLength)
        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 10, Checksum.compute (Span<byte>.op_Implicit full))

    /// Writes an IPv4 header with `options` (padded with zero bytes, i.e. End of Option List, to
    /// a multiple of four) into `dst` for a payload of `payloadLength` bytes the caller writes
    /// after it, and returns the header length. Taken from `header`: DSCP, ECN, identification,
    /// DF, MF, fragment offset, TTL, protocol, addresses; the lengths and the checksum are
    /// computed, the other fields ignored. Throws ArgumentException when `dst` is too small,
    /// `options` is longer than 40 bytes or malformed, or a field is out of range.
    let write (header: Ipv4Header) (options: ReadOnlySpan<byte>) (payloadLength: int) (dst: Span<byte>) : int =
        if options.Length > MaxOptionsLength then
            invalidArg (nameof options) $"{options.Length} bytes of options; IPv4 allows at most 40."

        if findBadOption options >= 0 then
            invalidArg (nameof options) "The options area is malformed (an option length is below 2 or past the end)."

        let headerLength = headerLengthFor options.Length

        if dst.Length < headerLength then
            invalidArg (nameof dst) $"The destination holds {dst.Length} bytes; the header needs {headerLength}."

        options.CopyTo(dst.Slice MinHeaderLength)
        dst.Slice(MinHeaderLength + options.Length, headerLength - MinHeaderLength - options.Length).Clear()
        writeFixedPart header headerLength payloadLength dst
        headerLength

    /// Copies into `dst` only the options whose type has the copied flag set (RFC 791 §3.1:
    /// those must appear in every fragment; the others only in the first), in their order,
    /// without NOP or End of Option List, and returns the number of bytes written (not padded).
    /// Throws ArgumentException when `options` is malformed or `dst` too small.
    let copiedOptions (options: ReadOnlySpan<byte>) (dst: Span<byte>) : int =
        if findBadOption options >= 0 then
            invalidArg (nameof options) "The options area is malformed (an option length is below 2 or past the end)."

        let mutable i = 0
        let mutable written = 0

        while i < options.Length && options.[i] <> OptionEndOfList do
            let kind = options.[i]

            if kind = OptionNoOperation then
                i <- i + 1
            else
                let length = int options.[i + 1]

                if kind &&& OptionCopiedFlag <> 0uy then
                    if written + length > dst.Length then
                        invalidArg (nameof dst) "The destination is shorter than the copied options."

                    options.Slice(i, length).CopyTo(dst.Slice written)
                    written <- written + length

                i <- i + length

        written

type Ipv4Header with
    /// One line for `dotnet fsi` and %A: "IPv4 10.0.0.1 > 10.0.0.2 proto 6 ttl 64 len 60 id 55689 DF".
    member h.Display =
        let fragment =
            (if h.DontFragment then " DF" else "")
            + (if h.MoreFragments then " MF" else "")
            + (if h.FragmentOffset <> 0 then
                   $" offset {h.FragmentOffset}"
               else
                   "")

        let tos =
            if h.Dscp <> 0uy || h.Ecn <> 0uy then
                $" dscp {h.Dscp} ecn {h.Ecn}"
            else
                ""

        $"IPv4 {h.Source} > {h.Destination} proto {h.Protocol} ttl {h.Ttl} len {h.TotalLength} id {h.Identification}{fragment}{tos}"
