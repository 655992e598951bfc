namespace NetStack.Core.Wire

open System
open System.Buffers.Binary

/// The TCP control bits (RFC 9293 §3.1, with CWR/ECE from RFC 3168), as in byte 13 of the header.
[<Flags>]
type TcpFlags =
    /// No control bit set.
    | None = 0uy
    /// No more data from sender.
    | Fin = 0x01uy
    /// Synchronize sequence numbers.
    | Syn = 0x02uy
    /// Reset the connection.
    | Rst = 0x04uy
    /// Push function.
    | Psh = 0x08uy
    /// The acknowledgment number field is significant.
    | Ack = 0x10uy
    /// The urgent pointer field is significant.
    | Urg = 0x20uy
    /// ECN-Echo (RFC 3168).
    | Ece = 0x40uy
    /// Congestion Window Reduced (RFC 3168).
    | Cwr = 0x80uy

/// A parsed TCP header (RFC 9293 §3.1). Offsets are relative to the span given to the parser,
/// which starts at the TCP header (the IP payload).
[<Struct; StructuredFormatDisplay("{Display}")>]
type TcpHeader =
    {
        /// Source port.
        SourcePort: uint16
        /// Destination port.
        DestinationPort: uint16
        /// Sequence number of the first data octet (or the ISN when SYN is set).
        SequenceNumber: uint32
        /// Next sequence number the sender expects (meaningful when ACK is set).
        AcknowledgmentNumber: uint32
        /// Header length in bytes, options included: the data offset field times 4 (20..60).
        HeaderLength: int
        /// Control bits.
        Flags: TcpFlags
        /// Receive window, unscaled (as on the wire).
        Window: uint16
        /// The checksum field as received.
        Checksum: uint16
        /// Urgent pointer (meaningful when URG is set).
        UrgentPointer: uint16
        /// Where the options start (always 20).
        OptionsOffset: int
        /// Length of the options area in bytes (HeaderLength - 20).
        OptionsLength: int
        /// Where the payload starts (HeaderLength).
        PayloadOffset: int
        /// Payload length: the rest of the span.
        PayloadLength: int
    }

    /// A header to hand to `Tcp.buildV4`/`buildV6`: the given fields, no urgent pointer; the
    /// lengths, offsets and checksum are computed by the builder.
    static member Create
        (
            sourcePort: uint16,
            destinationPort: uint16,
            sequenceNumber: uint32,
            acknowledgmentNumber: uint32,
            flags: TcpFlags,
            window: uint16
        ) =
        {
            SourcePort = sourcePort
            DestinationPort = destinationPort
            SequenceNumber = sequenceNumber
            AcknowledgmentNumber = acknowledgmentNumber
            HeaderLength = 20
            Flags = flags
            Window = window
            Checksum = 0us
            UrgentPointer = 0us
            OptionsOffset = 20
            OptionsLength = 0
            PayloadOffset = 20
            PayloadLength = 0
        }

/// One SACK block (RFC 2018 §3): the received range [Left, Right) of sequence numbers.
[<Struct; StructuredFormatDisplay("{Display}")>]
type SackBlock =
    {
        /// First sequence number of the block.
        Left: uint32
        /// Sequence number just past the block.
        Right: uint32
    }

/// The timestamps option (RFC 7323 §3.2).
[<Struct; StructuredFormatDisplay("{Display}")>]
type TcpTimestamps =
    {
        /// TSval: the sender's timestamp clock.
        Value: uint32
        /// TSecr: the TSval echoed back (meaningful when ACK is set).
        EchoReply: uint32
    }

/// The TCP options this stack understands, parsed without allocation. Up to four SACK blocks
/// are held in fixed fields (Sack0..Sack3; SackBlockCount says how many are in use).
[<Struct; StructuredFormatDisplay("{Display}")>]
type TcpOptions =
    {
        /// Maximum segment size (kind 2, RFC 9293 §3.7.1).
        MaximumSegmentSize: uint16 voption
        /// Window scale shift count (kind 3, RFC 7323 §2). Parsed as sent; RFC 7323 §2.3 says a
        /// receiver treats values above 14 as 14.
        WindowScale: byte voption
        /// SACK-permitted (kind 4, RFC 2018 §2).
        SackPermitted: bool
        /// Timestamps (kind 8, RFC 7323 §3).
        Timestamps: TcpTimestamps voption
        /// Number of SACK blocks (kind 5, RFC 2018 §3) in Sack0..Sack3, 0..4.
        SackBlockCount: int
        /// First SACK block.
        Sack0: SackBlock
        /// Second SACK block.
        Sack1: SackBlock
        /// Third SACK block.
        Sack2: SackBlock
        /// Fourth SACK block.
        Sack3: SackBlock
    }

    /// No options at all.
    static member None =
        {
            MaximumSegmentSize = ValueNone
            WindowScale = ValueNone
            SackPermitted = false
            Timestamps = ValueNone
            SackBlockCount = 0
            Sack0 = Unchecked.defaultof<SackBlock>
            Sack1 = Unchecked.defaultof<SackBlock>
            Sack2 = Unchecked.defaultof<SackBlock>
            Sack3 = Unchecked.defaultof<SackBlock>
        }

    /// The SACK block at `index` (0..3).
    member this.GetSackBlock(index: int) : SackBlock =
        match index with
        | 0 -> this.Sack0
        | 1 -> this.Sack1
        | 2 -> this.Sack2
        | 3 -> this.Sack3
        | _ -> raise (ArgumentOutOfRangeException(nameof index, index, "A SACK block index is 0..3."))

    /// These options with `block` stored at `index` (0..3); SackBlockCount is left as it is.
    member this.WithSackBlock(index: int, block: SackBlock) : TcpOptions =
        let copy = this

        match index with
        | 0 -> { copy with Sack0 = block }
        | 1 -> { copy with Sack1 = block }
        | 2 -> { copy with Sack2 = block }
        | 3 -> { copy with Sack3 = block }
        | _ -> raise (ArgumentOutOfRangeException(nameof index, index, "A SACK block index is 0..3."))

/// TCP option kinds (IANA "TCP Option Kind Numbers").
module TcpOptionKind =
    /// End of option list (RFC 9293 §3.2): one byte, the rest of the options area is padding.
    [<Literal>]
    let EndOfList = 0uy

    /// No-operation (RFC 9293 §3.2): one byte, used to align the next option.
    [<Literal>]
    let NoOperation = 1uy

    /// Maximum segment size (RFC 9293 §3.2), length 4.
    [<Literal>]
    let MaximumSegmentSize = 2uy

    /// Window scale (RFC 7323 §2.2), length 3.
    [<Literal>]
    let WindowScale = 3uy

    /// SACK-permitted (RFC 2018 §2), length 2.
    [<Literal>]
    let SackPermitted = 4uy

    /// SACK (RFC 2018 §3), length 2 + 8n.
    [<Literal>]
    let Sack = 5uy

    /// Timestamps (RFC 7323 §3.2), length 10.
    [<Literal>]
    let Timestamps = 8uy

/// TCP segments (RFC 9293 §3.1): header and options parse, checksum with the IPv4/IPv6
/// pseudo-headers, build.
module Tcp =

    /// Size of a TCP header without options.
    [<Literal>]
    let MinHeaderLength = 20

    /// The data offset is 4 bits of 32-bit words: at most 60 bytes of header, 40 of options.
    [<Literal>]
    let MaxHeaderLength = 60

    /// Room for options: MaxHeaderLength - MinHeaderLength.
    [<Literal>]
    let MaxOptionsLength = 40

    /// The most SACK blocks one option can carry (RFC 2018 §3: 2 + 8·4 = 34 bytes of 40).
    [<Literal>]
    let MaxSackBlocks = 4

    /// The largest window shift RFC 7323 §2.3 allows.
    [<Literal>]
    let MaxWindowScale = 14uy

    /// Reads the fixed header of `segment` (the IP payload) and locates options and payload.
    /// Checksum and options are not checked here: see `parseV4`/`parseV6` and `parseOptions`.
    /// The reserved bits (byte 12, low nibble) are ignored, as RFC 9293 §3.1 asks of receivers.
    let parse (segment: ReadOnlySpan<byte>) : Result<TcpHeader, ParseError> =
        if segment.Length < MinHeaderLength then
            Error(Truncated(MinHeaderLength, segment.Length))
        else
            let headerLength = int (segment.[12] >>> 4) * 4

            if headerLength < MinHeaderLength || headerLength > segment.Length then
                Error(BadHeaderLength headerLength)
            else
                Ok
                    {
                        SourcePort = BinaryPrimitives.ReadUInt16BigEndian segment
                        DestinationPort = BinaryPrimitives.ReadUInt16BigEndian(segment.Slice 2)
                        SequenceNumber = BinaryPrimitives.ReadUInt32BigEndian(segment.Slice 4)
                        AcknowledgmentNumber = BinaryPrimitives.ReadUInt32BigEndian(segment.Slice 8)
                        HeaderLength = headerLength
                        Flags = LanguagePrimitives.EnumOfValue<byte, TcpFlags> segment.[13]
                        Window = BinaryPrimitives.ReadUInt16BigEndian(segment.Slice 14)
                        Checksum = BinaryPrimitives.ReadUInt16BigEndian(segment.Slice 16)
                        UrgentPointer = BinaryPrimitives.ReadUInt16BigEndian(segment.Slice 18)
                        OptionsOffset = MinHeaderLength
                        OptionsLength = headerLength - MinHeaderLength
                        PayloadOffset = headerLength
                        PayloadLength = segment.Length - headerLength
                    }

    /// Parses the options area (`segment.Slice(header.OptionsOffset, header.OptionsLength)`).
    /// RFC 9293 §3.2: NOP is skipped, EOL ends the list, every other option carries a length
    /// byte counting kind and length; unknown kinds are skipped by that length (§3.1, "must be
    /// prepared to handle an illegal option length"). A length of 0 or 1, or one running past
    /// the area, is `BadOptionLength` (offset within the options); a known option with the wrong
    /// size is `BadOptionSize`. When an option appears twice the last one wins.
    let parseOptions (options: ReadOnlySpan<byte>) : Result<TcpOptions, ParseError> =
        let mutable result = TcpOptions.None
        let mutable error = ValueNone
        let mutable i = 0
        let mutable finished = false

        while not finished && i < options.Length do
            let kind = options.[i]

            if kind = TcpOptionKind.EndOfList then
                finished <- true
            elif kind = TcpOptionKind.NoOperation then
                i <- i + 1
            elif i + 1 >= options.Length then
                // A kind byte with no room for its length byte.
                error <- ValueSome(BadOptionLength i)
                finished <- true
            else
                let length = int options.[i + 1]

                if length < 2 || i + length > options.Length then
                    error <- ValueSome(BadOptionLength i)
                    finished <- true
                else
                    let body = options.Slice(i + 2, length - 2)

                    match kind with
                    | TcpOptionKind.MaximumSegmentSize ->
                        if length <> 4 then
                            error <- ValueSome(BadOptionSize(int kind, length))
                        else
                            result <-
                                { result with
                                    MaximumSegmentSize = ValueSome(BinaryPrimitives.ReadUInt16BigEndian body)
                                }
                    | TcpOptionKind.WindowScale ->
                        if length <> 3 then
                            error <- ValueSome(BadOptionSize(int kind, length))
                        else
                            result <-
                                { result with
                                    WindowScale = ValueSome body.[0]
                                }
                    | TcpOptionKind.SackPermitted ->
                        if length <> 2 then
                            error <- ValueSome(BadOptionSize(int kind, length))
                        else
                            result <- { result with SackPermitted = true }
                    | TcpOptionKind.Timestamps ->
                        if length <> 10 then
                            error <- ValueSome(BadOptionSize(int kind, length))
                        else
                            result <-
                                { result with
                                    Timestamps =
                                        ValueSome
                                            {
                                                Value = BinaryPrimitives.ReadUInt32BigEndian body
                                                EchoReply = BinaryPrimitives.ReadUInt32BigEndian(body.Slice 4)
                                            }
                                }
                    | TcpOptionKind.Sack ->
                        let count = (length - 2) / 8

                        if (length - 2) % 8 <> 0 || count < 1 || count > MaxSackBlocks then
                            error <- ValueSome(BadOptionSize(int kind, length))
                        else
                            let mutable b = 0

                            while b < count do
                                let block =
                                    {
                                        Left = BinaryPrimitives.ReadUInt32BigEndian(body.Slice(8 * b))
                                        Right = BinaryPrimitives.ReadUInt32BigEndian(body.Slice(8 * b + 4))
                                    }

                                result <- result.WithSackBlock(b, block)
                                b <- b + 1

                            result <- { result with SackBlockCount = count }
                    | _ -> ()

                    if error.IsSome then finished <- true else i <- i + length

        match error with
        | ValueSome e -> Error e
        | ValueNone -> Ok result

    /// Bytes of options `writeOptions` emits for `options` (a multiple of 4). Throws
    /// ArgumentException for a SACK block count outside 0..4.
    let optionsLength (options: TcpOptions) : int =
        if options.SackBlockCount < 0 || options.SackBlockCount > MaxSackBlocks then
            invalidArg (nameof options) $"SackBlockCount is {options.SackBlockCount}; it must be 0..{MaxSackBlocks}."

        // Layout as Linux emits it, every option on its natural alignment:
        // MSS (4) | SACK-permitted + timestamps (12) | window scale (NOP + 3) | SACK (NOP NOP + 2 + 8n)
        let mss = if options.MaximumSegmentSize.IsSome then 4 else 0

        let sackPermittedAndTimestamps =
            if options.Timestamps.IsSome then 12
            elif options.SackPermitted then 4
            else 0

        let windowScale = if options.WindowScale.IsSome then 4 else 0

        let sack =
            if options.SackBlockCount > 0 then
                4 + 8 * options.SackBlockCount
            else
                0

        mss + sackPermittedAndTimestamps + windowScale + sack

    /// Writes `options` NOP-padded to a multiple of 4 bytes, in the order Linux uses (MSS,
    /// SACK-permitted, timestamps, window scale, SACK blocks), and returns the bytes written.
    /// Throws ArgumentException when they exceed 40 bytes (e.g. timestamps with four SACK blocks;
    /// Linux sends at most three then), the window scale exceeds 14, or `buffer` is too small.
    let writeOptions (buffer: Span<byte>) (options: TcpOptions) : int =
        let length = optionsLength options

        if length > MaxOptionsLength then
            invalidArg
                (nameof options)
                $"These options take {length} bytes; a TCP header has room for {MaxOptionsLength}."

        if buffer.Length < length then
            invalidArg (nameof buffer) $"The buffer holds {buffer.Length} bytes; the options need {length}."

        match options.WindowScale with
        | ValueSome shift when shift > MaxWindowScale ->
            invalidArg (nameof options) $"Window scale {shift} exceeds {MaxWindowScale} (RFC 7323 §2.3)."
        | _ -> ()

        let mutable i = 0

        match options.MaximumSegmentSize with
        | ValueSome mss ->
            buffer.[0] <- TcpOptionKind.MaximumSegmentSize
            buffer.[1] <- 4uy
            BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice 2, mss)
            i <- 4
        | ValueNone -> ()

        // SACK-permitted takes the place of the two NOPs that would align the timestamps.
        if options.SackPermitted then
            buffer.[i] <- TcpOptionKind.SackPermitted
            buffer.[i + 1] <- 2uy
        elif options.Timestamps.IsSome then
            buffer.[i] <- TcpOptionKind.NoOperation
            buffer.[i + 1] <- TcpOptionKind.NoOperation

        match options.Timestamps with
        | ValueSome ts ->
            buffer.[i + 2] <- TcpOptionKind.Timestamps
            buffer.[i + 3] <- 10uy
            BinaryPrimitives.WriteUInt32BigEndian(buffer.Slice(i + 4), ts.Value)
            BinaryPrimitives.WriteUInt32BigEndian(buffer.Slice(i + 8), ts.EchoReply)
            i <- i + 12
        | ValueNone ->
            if options.SackPermitted then
                buffer.[i + 2] <- TcpOptionKind.NoOperation
                buffer.[i + 3] <- TcpOptionKind.NoOperation
                i <- i + 4

        match options.WindowScale with
        | ValueSome shift ->
            buffer.[i] <- TcpOptionKind.NoOperation
            buffer.[i + 1] <- TcpOptionKind.WindowScale
            buffer.[i + 2] <- 3uy
            buffer.[i + 3] <- shift
            i <- i + 4
        | ValueNone -> ()

        if options.SackBlockCount > 0 then
            buffer.[i] <- TcpOptionKind.NoOperation
            buffer.[i + 1] <- TcpOptionKind.NoOperation
            buffer.[i + 2] <- TcpOptionKind.Sack
            buffer.[i + 3] <- byte (2 + 8 * options.SackBlockCount)
            i <- i + 4
            let mutable b = 0

            while b < options.SackBlockCount do
                let block = options.GetSackBlock b
                BinaryPrimitives.WriteUInt32BigEndian(buffer.Slice i, block.Left)
                BinaryPrimitives.WriteUInt32BigEndian(buffer.Slice(i + 4), block.Right)
                i <- i + 8
                b <- b + 1

        i

    /// Computes the checksum of a whole written segment from its pseudo-header sum and stores it
    /// in bytes 16..17 (RFC 9293 §3.1: the field counts as zero while summing).
    let private storeChecksum (segment: Span<byte>) (pseudoHeader: uint64) =
        BinaryPrimitives.WriteUInt16BigEndian(segment.Slice 16, 0us)
        let written: ReadOnlySpan<byte> = Span<byte>.op_Implicit segment
        BinaryPrimitives.WriteUInt16BigEndian(segment.Slice 16, Checksum.finish (Checksum.sum pseudoHeader written))

    /// Recomputes and stores the checksum of `segment` (exactly one whole TCP segment) sent over IPv4.
    let fillChecksumV4 (segment: Span<byte>) (source: Ipv4Address) (destination: Ipv4Address) : unit =
        storeChecksum segment (Checksum.pseudoHeaderV4 source destination IpProtocol.Tcp segment.Length)

    /// Recomputes and stores the checksum of `segment` (exactly one whole TCP segment) sent over IPv6.
    let fillChecksumV6 (segment: Span<byte>) (source: Ipv6Address) (destination: Ipv6Address) : unit =
        storeChecksum segment (Checksum.pseudoHeaderV6 source destination IpProtocol.Tcp segment.Length)

    /// Writes header, options and payload with a zero checksum; returns the segment length.
    /// The payload is copied first, so it may already sit where it belongs in `buffer`.
    let private writeSegment
        (buffer: Span<byte>)
        (header: TcpHeader)
        (options: TcpOptions)
        (payload: ReadOnlySpan<byte>)
        : int =
        let headerLength = MinHeaderLength + optionsLength options
        let length = headerLength + payload.Length

        // Both pseudo-headers carry the length in 16 bits here (no jumbograms).
        if length > 65535 then
            invalidArg (nameof payload) $"A {length}-byte segment does not fit an IP packet."

        if buffer.Length < length then
            invalidArg (nameof buffer) $"The buffer holds {buffer.Length} bytes; the segment needs {length}."

        payload.CopyTo(buffer.Slice headerLength)
        // Checks the 40-byte limit and the window scale before the fixed header is touched.
        writeOptions (buffer.Slice MinHeaderLength) options |> ignore
        BinaryPrimitives.WriteUInt16BigEndian(buffer, header.SourcePort)
        BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice 2, header.DestinationPort)
        BinaryPrimitives.WriteUInt32BigEndian(buffer.Slice 4, header.SequenceNumber)
        BinaryPrimitives.WriteUInt32BigEndian(buffer.Slice 8, header.AcknowledgmentNumber)
        // Data offset in the high nibble; the reserved bits are sent as zero.
        buffer.[12] <- byte ((headerLength / 4) <<< 4)
        buffer.[13] <- byte header.Flags
        BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice 14, header.Window)
        BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice 16, 0us)
        BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice 18, header.UrgentPointer)
        length

    /// Writes a segment for IPv4: the ports, numbers, flags, window and urgent pointer of `header`
    /// (its lengths, offsets and checksum are ignored), `options` as `writeOptions` lays them out,
    /// then `payload`, checksum filled. Returns the segment length. Throws ArgumentException when
    /// the buffer is too small or the options are invalid.
    let buildV4
        (buffer: Span<byte>)
        (source: Ipv4Address)
        (destination: Ipv4Address)
        (header: TcpHeader)
        (options: TcpOptions)
        (payload: ReadOnlySpan<byte>)
        : int =
        let length = writeSegment buffer header options payload
        fillChecksumV4 (buffer.Slice(0, length)) source destination
        length

    /// `buildV4` for IPv6 (the checksum uses the RFC 8200 §8.1 pseudo-header).
    let buildV6
        (buffer: Span<byte>)
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (header: TcpHeader)
        (options: TcpOptions)
        (payload: ReadOnlySpan<byte>)
        : int =
        let length = writeSegment buffer header options payload
        fillChecksumV6 (buffer.Slice(0, length)) source destination
        length

    /// True when the checksum of `segment` (one whole TCP segment) received over IPv4 verifies.
    let hasValidChecksumV4 (source: Ipv4Address) (destination: Ipv4Address) (segment: ReadOnlySpan<byte>) : bool =
        Checksum.verify (Checksum.pseudoHeaderV4 source destination IpProtocol.Tcp segment.Length) segment

    /// True when the checksum of `segment` (one whole TCP segment) received over IPv6 verifies.
    let hasValidChecksumV6 (source: Ipv6Address) (destination: Ipv6Address) (segment: ReadOnlySpan<byte>) : bool =
        Checksum.verify (Checksum.pseudoHeaderV6 source destination IpProtocol.Tcp segment.Length) segment

    /// `parse`, then the IPv4 checksum check (`BadChecksum` when it fails).
    let parseV4
        (source: Ipv4Address)
        (destination: Ipv4Address)
        (segment: ReadOnlySpan<byte>)
        : Result<TcpHeader, ParseError> =
        match parse segment with
        | Ok _ when not (hasValidChecksumV4 source destination segment) -> Error BadChecksum
        | result -> result

    /// `parse`, then the IPv6 checksum check (`BadChecksum` when it fails).
    let parseV6
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (segment: ReadOnlySpan<byte>)
        : Result<TcpHeader, ParseError> =
        match parse segment with
        | Ok _ when not (hasValidChecksumV6 source destination segment) -> Error BadChecksum
        | result -> result

// ---- Compact display (`dotnet fsi`, %A): one line each, as tcpdump writes them --------------

/// The names of the control bits set, as tcpdump abbreviates them ("S.", "F.", "P.", "R").
module internal TcpFlagText =
    /// e.g. "SYN ACK"; "none" for no bits.
    let names (flags: TcpFlags) =
        let names =
            [
                TcpFlags.Syn, "SYN"
                TcpFlags.Fin, "FIN"
                TcpFlags.Rst, "RST"
                TcpFlags.Psh, "PSH"
                TcpFlags.Ack, "ACK"
                TcpFlags.Urg, "URG"
                TcpFlags.Ece, "ECE"
                TcpFlags.Cwr, "CWR"
            ]
            |> List.filter (fun (bit, _) -> flags &&& bit = bit)
            |> List.map snd

        if names.IsEmpty then "none" else String.Join(" ", names)

type SackBlock with
    /// "left-right" (the right edge exclusive).
    member b.Display = $"{b.Left}-{b.Right}"

type TcpTimestamps with
    /// "TS val V ecr E", as tcpdump.
    member t.Display = $"TS val {t.Value} ecr {t.EchoReply}"

type TcpOptions with
    /// "<mss 1460,sackOK,TS val 1 ecr 0,wscale 7>" in tcpdump's words; "<>" for none.
    member this.Display =
        let o = this // a copy: the list expression below cannot capture the struct's byref

        let parts =
            [
                match o.MaximumSegmentSize with
                | ValueSome mss -> $"mss {mss}"
                | ValueNone -> ()
                if o.SackPermitted then
                    "sackOK"
                match o.Timestamps with
                | ValueSome ts -> ts.Display
                | ValueNone -> ()
                match o.WindowScale with
                | ValueSome shift -> $"wscale {shift}"
                | ValueNone -> ()
                if o.SackBlockCount > 0 then
                    let blocks =
                        [ o.Sack0; o.Sack1; o.Sack2; o.Sack3 ]
                        |> List.truncate o.SackBlockCount
                        |> List.map (fun b -> b.Display)

                    "sack " + String.Join(" ", blocks)
            ]

        "<" + String.Join(",", parts) + ">"

type TcpHeader with
    /// "46164 > 8000 [SYN] seq 3383013344 win 64240 len 0" (ack only with ACK set).
    member h.Display =
        let ack =
            if h.Flags &&& TcpFlags.Ack = TcpFlags.Ack then
                $" ack {h.AcknowledgmentNumber}"
            else
                ""

        $"TCP {h.SourcePort} > {h.DestinationPort} [{TcpFlagText.names h.Flags}] seq {h.SequenceNumber}{ack} win {h.Window} len {h.PayloadLength}"
