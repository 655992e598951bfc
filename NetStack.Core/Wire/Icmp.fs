namespace NetStack.Core.Wire

open System
open System.Buffers.Binary

/// What an ICMP message is, as far as this stack interprets it (the same for ICMPv4 and ICMPv6).
type IcmpMessageKind =
    /// A type this stack does not interpret; its bytes are still available raw.
    | Other = 0
    /// Echo request (ping).
    | EchoRequest = 1
    /// Echo reply.
    | EchoReply = 2
    /// Destination unreachable (the code says why).
    | DestinationUnreachable = 3
    /// Packet too big (ICMPv6 only; ICMPv4 says "fragmentation needed" with destination unreachable).
    | PacketTooBig = 4
    /// Time exceeded (TTL / hop limit, or fragment reassembly).
    | TimeExceeded = 5
    /// Parameter problem (a pointer to the offending octet).
    | ParameterProblem = 6

/// A parsed ICMPv4 or ICMPv6 message. Every message starts with type, code, checksum and a
/// 4-byte field whose meaning depends on the type; the fields below give that meaning. Offsets
/// are relative to the span given to the parser, which starts at the ICMP header (the IP payload).
[<Struct>]
type IcmpMessage =
    {
        /// The type field.
        Type: byte
        /// The code field.
        Code: byte
        /// The checksum field as received.
        Checksum: uint16
        /// The interpretation of Type.
        Kind: IcmpMessageKind
        /// True for error messages (ICMPv4: unreachable, source quench, redirect, time exceeded,
        /// parameter problem; ICMPv6: types 0..127, RFC 4443 §2.1).
        IsError: bool
        /// Echo identifier (echo request/reply), else 0.
        Identifier: uint16
        /// Echo sequence number (echo request/reply), else 0.
        SequenceNumber: uint16
        /// Next-hop MTU of an ICMPv4 "fragmentation needed" (RFC 1191 §4; 0 from old routers) or
        /// the MTU of an ICMPv6 packet too big (RFC 4443 §3.2), else 0.
        Mtu: uint32
        /// Parameter problem pointer: an octet offset into the quoted packet, else 0.
        Pointer: uint32
        /// Bytes 4..7 raw, whatever the type.
        RestOfHeader: uint32
        /// Where the body starts (always 8): the echo data, or for errors the quoted original packet.
        DataOffset: int
        /// Length of the body: the rest of the message.
        DataLength: int
    }

/// ICMP for IPv4 (RFC 792): parse with checksum check, build echo and error messages.
module Icmpv4 =

    /// ICMPv4 type numbers (RFC 792).
    module MessageType =
        /// Echo reply.
        [<Literal>]
        let EchoReply = 0uy

        /// Destination unreachable.
        [<Literal>]
        let DestinationUnreachable = 3uy

        /// Source quench (deprecated by RFC 6633; still an error message).
        [<Literal>]
        let SourceQuench = 4uy

        /// Redirect.
        [<Literal>]
        let Redirect = 5uy

        /// Echo request.
        [<Literal>]
        let EchoRequest = 8uy

        /// Time exceeded.
        [<Literal>]
        let TimeExceeded = 11uy

        /// Parameter problem.
        [<Literal>]
        let ParameterProblem = 12uy

    /// Destination unreachable codes (RFC 792, RFC 1812 §5.2.7.1).
    module UnreachableCode =
        /// Network unreachable.
        [<Literal>]
        let Network = 0uy

        /// Host unreachable.
        [<Literal>]
        let Host = 1uy

        /// Protocol unreachable.
        [<Literal>]
        let Protocol = 2uy

        /// Port unreachable.
        [<Literal>]
        let Port = 3uy

        /// Fragmentation needed and DF set (carries the next-hop MTU, RFC 1191).
        [<Literal>]
        let FragmentationNeeded = 4uy

        /// Source route failed.
        [<Literal>]
        let SourceRouteFailed = 5uy

        /// Communication administratively prohibited (RFC 1812).
        [<Literal>]
        let AdministrativelyProhibited = 13uy

    /// Time exceeded codes (RFC 792).
    module TimeExceededCode =
        /// Time to live exceeded in transit.
        [<Literal>]
        let TimeToLive = 0uy

        /// Fragment reassembly time exceeded.
        [<Literal>]
        let FragmentReassembly = 1uy

    /// Type, code, checksum and the 4-byte rest of header.
    [<Literal>]
    let HeaderLength = 8

    /// RFC 1812 §4.3.2.3: an error message may quote as much of the original as keeps the whole
    /// IP datagram within 576 bytes. With a 20-byte IP header that leaves 556 bytes of ICMP.
    [<Literal>]
    let MaxErrorMessageLength = 556

    /// The most data an echo can carry: 65535 bytes of IPv4 datagram less 20 of IP and 8 of ICMP.
    [<Literal>]
    let MaxEchoDataLength = 65507

    /// Reads an ICMPv4 message (the whole IP payload) and verifies its checksum (RFC 792: the
    /// one's complement sum of the message, no pseudo-header). Unknown types are not an error:
    /// their Kind is Other.
    let parse (message: ReadOnlySpan<byte>) : Result<IcmpMessage, ParseError> =
        if message.Length < HeaderLength then
            Error(Truncated(HeaderLength, message.Length))
        elif not (Checksum.verify 0UL message) then
            Error BadChecksum
        else
            let messageType = message.[0]
            let code = message.[1]
            let rest = BinaryPrimitives.ReadUInt32BigEndian(message.Slice 4)

            let basic =
                {
                    Type = messageType
                    Code = code
                    Checksum = BinaryPrimitives.ReadUInt16BigEndian(message.Slice 2)
                    Kind = IcmpMessageKind.Other
                    IsError = false
                    Identifier = 0us
                    SequenceNumber = 0us
                    Mtu = 0u
                    Pointer = 0u
                    RestOfHeader = rest
                    DataOffset = HeaderLength
                    DataLength = message.Length - HeaderLength
                }

            match messageType with
            | MessageType.EchoRequest
            | MessageType.EchoReply ->
                Ok
                    { basic with
                        Kind =
                            (if messageType = MessageType.EchoRequest then
                                 IcmpMessageKind.EchoRequest
                             else
                                 IcmpMessageKind.EchoReply)
                        Identifier = uint16 (rest >>> 16)
                        SequenceNumber = uint16 rest
                    }
            | MessageType.DestinationUnreachable ->
                Ok
                    { basic with
                        Kind = IcmpMessageKind.DestinationUnreachable
                        IsError = true
                        // RFC 1191 §4: the low 16 bits carry the next-hop MTU for code 4.
                        Mtu =
                            (if code = UnreachableCode.FragmentationNeeded then
                                 rest &&& 0xFFFFu
                             else
                                 0u)
                    }
            | MessageType.TimeExceeded ->
                Ok
                    { basic with
                        Kind = IcmpMessageKind.TimeExceeded
                        IsError = true
                    }
            | MessageType.ParameterProblem ->
                Ok
                    { basic with
                        Kind = IcmpMessageKind.ParameterProblem
                        IsError = true
                        // RFC 792: the pointer is the first octet of the rest of header.
                        Pointer = rest >>> 24
                    }
            | MessageType.SourceQuench
            | MessageType.Redirect -> Ok { basic with IsError = true }
            | _ -> Ok basic

    /// Copies `body` after the header, writes the header and the checksum; returns the length.
    /// The body is copied first, so it may overlap `buffer` (e.g. quoting a packet in place).
    let private write (buffer: Span<byte>) (messageType: byte) (code: byte) (rest: uint32) (body: ReadOnlySpan<byte>) =
        let length = HeaderLength + body.Length

        if buffer.Length < length then
            invalidArg (nameof buffer) $"The buffer holds {buffer.Length} bytes; the ICMP message needs {length}."

        body.CopyTo(buffer.Slice HeaderLength)
        buffer.[0] <- messageType
        buffer.[1] <- code
        BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice 2, 0us)
        BinaryPrimitives.WriteUInt32BigEndian(buffer.Slice 4, rest)
        let written: ReadOnlySpan<byte> = Span<byte>.op_Implicit(buffer.Slice(0, length))
        BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice 2, Checksum.compute written)
        length

    let private writeEcho
        (buffer: Span<byte>)
        messageType
        (identifier: uint16)
        (sequence: uint16)
        (data: ReadOnlySpan<byte>)
        =
        if data.Length > MaxEchoDataLength then
            invalidArg (nameof data) $"{data.Length} bytes of echo data do not fit an IPv4 datagram."

        write buffer messageType 0uy ((uint32 identifier <<< 16) ||| uint32 sequence) data

    /// Writes an echo request carrying `data` into `buffer`; returns the message length.
    let buildEchoRequest (buffer: Span<byte>) (identifier: uint16) (sequence: uint16) (data: ReadOnlySpan<byte>) : int =
        writeEcho buffer MessageType.EchoRequest identifier sequence data

    /// Writes an echo reply carrying `data` into `buffer`; returns the message length. RFC 792:
    /// the reply echoes the request's identifier, sequence number and data.
    let buildEchoReply (buffer: Span<byte>) (identifier: uint16) (sequence: uint16) (data: ReadOnlySpan<byte>) : int =
        writeEcho buffer MessageType.EchoReply identifier sequence data

    /// Writes an error message quoting the start of `original` (the offending IP datagram, IP
    /// header first). RFC 792 asks for the IP header and 8 bytes at least; RFC 1812 §4.3.2.3 lets
    /// routers quote more as long as the error stays within 576 bytes, so as much as fits
    /// MaxErrorMessageLength is quoted. The buffer must hold the whole message.
    let private writeError (buffer: Span<byte>) messageType code rest (original: ReadOnlySpan<byte>) =
        let quoted = min original.Length (MaxErrorMessageLength - HeaderLength)
        write buffer messageType code rest (original.Slice(0, quoted))

    /// Writes a destination unreachable with `code` (see UnreachableCode) quoting `original`;
    /// returns the message length. For "fragmentation needed" use `buildFragmentationNeeded`.
    let buildDestinationUnreachable (buffer: Span<byte>) (code: byte) (original: ReadOnlySpan<byte>) : int =
        writeError buffer MessageType.DestinationUnreachable code 0u original

    /// Writes a destination unreachable, code 4 (fragmentation needed and DF set), with the
    /// next-hop MTU in the low 16 bits of the rest of header (RFC 1191 §4), quoting `original`.
    let buildFragmentationNeeded (buffer: Span<byte>) (nextHopMtu: uint16) (original: ReadOnlySpan<byte>) : int =
        writeError
            buffer
            MessageType.DestinationUnreachable
            UnreachableCode.FragmentationNeeded
            (uint32 nextHopMtu)
            original

    /// Writes a time exceeded with `code` (see TimeExceededCode) quoting `original`.
    let buildTimeExceeded (buffer: Span<byte>) (code: byte) (original: ReadOnlySpan<byte>) : int =
        writeError buffer MessageType.TimeExceeded code 0u original

    /// Writes a parameter problem (code 0) whose pointer names the offending octet of `original`.
    let buildParameterProblem (buffer: Span<byte>) (pointer: byte) (original: ReadOnlySpan<byte>) : int =
        writeError buffer MessageType.ParameterProblem 0uy (uint32 pointer <<< 24) original

/// ICMP for IPv6 (RFC 4443): parse with the pseudo-header checksum, build echo and error messages.
module Icmpv6 =

    /// ICMPv6 type numbers (RFC 4443 §2.1: 0..127 are errors, 128..255 informational).
    module MessageType =
        /// Destination unreachable.
        [<Literal>]
        let DestinationUnreachable = 1uy

        /// Packet too big.
        [<Literal>]
        let PacketTooBig = 2uy

        /// Time exceeded.
        [<Literal>]
        let TimeExceeded = 3uy

        /// Parameter problem.
        [<Literal>]
        let ParameterProblem = 4uy

        /// Echo request.
        [<Literal>]
        let EchoRequest = 128uy

        /// Echo reply.
        [<Literal>]
        let EchoReply = 129uy

    /// Destination unreachable codes (RFC 4443 §3.1).
    module UnreachableCode =
        /// No route to destination.
        [<Literal>]
        let NoRoute = 0uy

        /// Communication with destination administratively prohibited.
        [<Literal>]
        let AdministrativelyProhibited = 1uy

        /// Beyond scope of source address.
        [<Literal>]
        let BeyondScope = 2uy

        /// Address unreachable.
        [<Literal>]
        let Address = 3uy

        /// Port unreachable.
        [<Literal>]
        let Port = 4uy

    /// Time exceeded codes (RFC 4443 §3.3).
    module TimeExceededCode =
        /// Hop limit exceeded in transit.
        [<Literal>]
        let HopLimit = 0uy

        /// Fragment reassembly time exceeded.
        [<Literal>]
        let FragmentReassembly = 1uy

    /// Parameter problem codes (RFC 4443 §3.4).
    module ParameterProblemCode =
        /// Erroneous header field encountered.
        [<Literal>]
        let ErroneousHeaderField = 0uy

        /// Unrecognized Next Header type encountered.
        [<Literal>]
        let UnrecognizedNextHeader = 1uy

        /// Unrecognized IPv6 option encountered.
        [<Literal>]
        let UnrecognizedOption = 2uy

    /// Type, code, checksum and the 4-byte field every RFC 4443 message has.
    [<Literal>]
    let HeaderLength = 8

    /// RFC 4443 §2.4(c): an error message quotes as much of the offending packet as fits without
    /// the error exceeding the minimum IPv6 MTU, 1280 bytes; less 40 of IPv6 header, 1240 of ICMPv6.
    [<Literal>]
    let MaxErrorMessageLength = 1240

    /// The most data an echo can carry: a 65535-byte IPv6 payload less 8 bytes of ICMPv6.
    [<Literal>]
    let MaxEchoDataLength = 65527

    /// Reads an ICMPv6 message (the whole upper-layer payload) sent from `source` to `destination`
    /// and verifies its checksum, which covers the RFC 8200 §8.1 pseudo-header (RFC 4443 §2.3).
    /// Every message type RFC 4443 and RFC 4861 define is at least 8 bytes long, so shorter ones
    /// are Truncated. Unknown types are not an error: their Kind is Other.
    let parse
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (message: ReadOnlySpan<byte>)
        : Result<IcmpMessage, ParseError> =
        if message.Length < HeaderLength then
            Error(Truncated(HeaderLength, message.Length))
        elif
            not (Checksum.verify (Checksum.pseudoHeaderV6 source destination IpProtocol.Icmpv6 message.Length) message)
        then
            Error BadChecksum
        else
            let messageType = message.[0]
            let rest = BinaryPrimitives.ReadUInt32BigEndian(message.Slice 4)

            let basic =
                {
                    Type = messageType
                    Code = message.[1]
                    Checksum = BinaryPrimitives.ReadUInt16BigEndian(message.Slice 2)
                    Kind = IcmpMessageKind.Other
                    // RFC 4443 §2.1: the high-order bit of the type tells errors from informational.
                    IsError = messageType < 128uy
                    Identifier = 0us
                    SequenceNumber = 0us
                    Mtu = 0u
                    Pointer = 0u
                    RestOfHeader = rest
                    DataOffset = HeaderLength
                    DataLength = message.Length - HeaderLength
                }

            match messageType with
            | MessageType.EchoRequest
            | MessageType.EchoReply ->
                Ok
                    { basic with
                        Kind =
                            (if messageType = MessageType.EchoRequest then
                                 IcmpMessageKind.EchoRequest
                             else
                                 IcmpMessageKind.EchoReply)
                        Identifier = uint16 (rest >>> 16)
                        SequenceNumber = uint16 rest
                    }
            | MessageType.DestinationUnreachable ->
                Ok
                    { basic with
                        Kind = IcmpMessageKind.DestinationUnreachable
                    }
            | MessageType.PacketTooBig ->
                Ok
                    { basic with
                        Kind = IcmpMessageKind.PacketTooBig
                        Mtu = rest
                    }
            | MessageType.TimeExceeded ->
                Ok
                    { basic with
                        Kind = IcmpMessageKind.TimeExceeded
                    }
            | MessageType.ParameterProblem ->
                Ok
                    { basic with
                        Kind = IcmpMessageKind.ParameterProblem
                        Pointer = rest
                    }
            | _ -> Ok basic

    /// Copies `body` after the header, writes the header and the pseudo-header checksum; returns
    /// the length. The body is copied first, so it may overlap `buffer`.
    let private write
        (buffer: Span<byte>)
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (messageType: byte)
        (code: byte)
        (rest: uint32)
        (body: ReadOnlySpan<byte>)
        =
        let length = HeaderLength + body.Length

        if buffer.Length < length then
            invalidArg (nameof buffer) $"The buffer holds {buffer.Length} bytes; the ICMPv6 message needs {length}."

        body.CopyTo(buffer.Slice HeaderLength)
        buffer.[0] <- messageType
        buffer.[1] <- code
        BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice 2, 0us)
        BinaryPrimitives.WriteUInt32BigEndian(buffer.Slice 4, rest)
        let written: ReadOnlySpan<byte> = Span<byte>.op_Implicit(buffer.Slice(0, length))

        let pseudoHeader =
            Checksum.pseudoHeaderV6 source destination IpProtocol.Icmpv6 length

        BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice 2, Checksum.finish (Checksum.sum pseudoHeader written))
        length

    let private writeEcho
        (buffer: Span<byte>)
        source
        destination
        messageType
        (identifier: uint16)
        (sequence: uint16)
        (data: ReadOnlySpan<byte>)
        =
        if data.Length > MaxEchoDataLength then
            invalidArg (nameof data) $"{data.Length} bytes of echo data do not fit an IPv6 payload."

        write buffer source destination messageType 0uy ((uint32 identifier <<< 16) ||| uint32 sequence) data

    /// Writes an echo request (RFC 4443 §4.1) from `source` to `destination` carrying `data`;
    /// returns the message length.
    let buildEchoRequest
        (buffer: Span<byte>)
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (identifier: uint16)
        (sequence: uint16)
        (data: ReadOnlySpan<byte>)
        : int =
        writeEcho buffer source destination MessageType.EchoRequest identifier sequence data

    /// Writes an echo reply (RFC 4443 §4.2) from `source` to `destination` echoing the request's
    /// identifier, sequence number and data; returns the message length.
    let buildEchoReply
        (buffer: Span<byte>)
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (identifier: uint16)
        (sequence: uint16)
        (data: ReadOnlySpan<byte>)
        : int =
        writeEcho buffer source destination MessageType.EchoReply identifier sequence data

    /// Writes an error message quoting as much of `original` (the offending packet, IPv6 header
    /// first) as RFC 4443 §2.4(c) allows: the whole error within MaxErrorMessageLength.
    let private writeError
        (buffer: Span<byte>)
        source
        destination
        messageType
        code
        rest
        (original: ReadOnlySpan<byte>)
        =
        let quoted = min original.Length (MaxErrorMessageLength - HeaderLength)
        write buffer source destination messageType code rest (original.Slice(0, quoted))

    /// Writes a destination unreachable (RFC 4443 §3.1) with `code` (see UnreachableCode),
    /// quoting `original`; returns the message length.
    let buildDestinationUnreachable
        (buffer: Span<byte>)
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (code: byte)
        (original: ReadOnlySpan<byte>)
        : int =
        writeError buffer source destination MessageType.DestinationUnreachable code 0u original

    /// Writes a packet too big (RFC 4443 §3.2) carrying the next-hop `mtu`, quoting `original`.
    let buildPacketTooBig
        (buffer: Span<byte>)
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (mtu: uint32)
        (original: ReadOnlySpan<byte>)
        : int =
        writeError buffer source destination MessageType.PacketTooBig 0uy mtu original

    /// Writes a time exceeded (RFC 4443 §3.3) with `code` (see TimeExceededCode), quoting `original`.
    let buildTimeExceeded
        (buffer: Span<byte>)
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (code: byte)
        (original: ReadOnlySpan<byte>)
        : int =
        writeError buffer source destination MessageType.TimeExceeded code 0u original

    /// Writes a parameter problem (RFC 4443 §3.4) with `code` (see ParameterProblemCode) whose
    /// pointer is the offset of the offending octet in `original`.
    let buildParameterProblem
        (buffer: Span<byte>)
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (code: byte)
        (pointer: uint32)
        (original: ReadOnlySpan<byte>)
        : int =
        writeError buffer source destination MessageType.ParameterProblem code pointer original
