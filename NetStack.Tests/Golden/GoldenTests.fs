/// Golden packets: traffic the real Linux kernel sent and answered (captured by capture.sh in a
/// private network namespace), read with the stack's own parsers and checked against tshark's
/// dissection of the same frames, field by field; then built again with the stack's builders
/// and compared byte for byte with what the kernel sent, checksums included; and the kernel's
/// fragments compared with the ones Fragmentation.fs cuts from the same datagram.
module NetStack.Tests.GoldenTests

open System
open System.Buffers.Binary
open System.IO
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Ip
open NetStack.Core.Wire
open NetStack.Tests.Pcap

/// tshark's dissection of one frame: field name (e.g. "ip.len") to the text tshark printed.
/// Fields tshark left empty are absent. A field that occurs more than once in a frame (an ICMP
/// error quotes the offending IP header, so "ip.src" appears twice) holds every occurrence joined
/// with ',' in dissection order: the outer header first when both layers carry the field.
type FieldRow = Map<string, string>

/// Loading and reading the X.fields.tsv files capture.sh writes with
/// `tshark -T fields -E header=y -E separator=/t -E occurrence=a -E aggregator=,`.
module FieldTable =
    /// Parses the tab-separated text: a header line of field names, then one line per frame.
    let parse (text: string) : FieldRow[] =
        let lines =
            text.Split('\n')
            |> Array.map (fun l -> l.TrimEnd('\r'))
            |> Array.filter (fun l -> l <> "")

        if lines.Length = 0 then
            [||]
        else
            let names = lines.[0].Split('\t')

            lines.[1..]
            |> Array.map (fun line ->
                let cells = line.Split('\t')

                if cells.Length <> names.Length then
                    failwithf "tshark row has %d cells, header has %d: %s" cells.Length names.Length line

                Array.zip names cells |> Array.filter (fun (_, v) -> v <> "") |> Map.ofArray)

    /// Reads and parses a .fields.tsv file.
    let load (path: string) : FieldRow[] = parse (File.ReadAllText path)

    /// Every occurrence of `field` in the frame, in dissection order (empty when absent).
    let values (field: string) (row: FieldRow) : string[] =
        match Map.tryFind field row with
        | Some v -> v.Split(',')
        | None -> [||]

    /// The first occurrence of `field` in the frame.
    let tryFirst (field: string) (row: FieldRow) : string option = values field row |> Array.tryHead

    /// Reads tshark's number formats: decimal ("1500") or hexadecimal ("0x4d30").
    let tryNumber (text: string) : int64 option =
        if text.StartsWith("0x", StringComparison.OrdinalIgnoreCase) then
            match
                Int64.TryParse(
                    text.AsSpan 2,
                    Globalization.NumberStyles.AllowHexSpecifier,
                    Globalization.CultureInfo.InvariantCulture
                )
            with
            | true, v -> Some v
            | _ -> None
        else
            match Int64.TryParse(text, Globalization.NumberStyles.None, Globalization.CultureInfo.InvariantCulture) with
            | true, v -> Some v
            | _ -> None

    /// The first occurrence of `field`, read as a number.
    let tryFirstNumber (field: string) (row: FieldRow) : int64 option =
        tryFirst field row |> Option.bind tryNumber

/// One golden capture: its packets and tshark's view of the same frames.
type GoldenCapture =
    {
        /// The file name without extension, e.g. "tcp-ipv4".
        Name: string
        /// The packets as Pcap.fs read them.
        File: PcapFile
        /// tshark's rows, one per frame, in frame order.
        Fields: FieldRow[]
    }

/// Where the build copies the captures (the test project's `<None Include="Golden/...">` items).
let goldenDirectory = Path.Combine(AppContext.BaseDirectory, "Golden")

/// The names of every capture next to the test binary, sorted.
let captureNames () : string[] =
    if Directory.Exists goldenDirectory then
        Directory.GetFiles(goldenDirectory, "*.pcap")
        |> Array.map Path.GetFileNameWithoutExtension
        |> Array.sort
    else
        [||]

/// Loads one capture and its tshark fields; fails the calling test when either is unreadable.
let loadCapture (name: string) : GoldenCapture =
    let file =
        match Pcap.readFile (Path.Combine(goldenDirectory, name + ".pcap")) with
        | Ok f -> f
        | Error e -> failwithf "%s.pcap: %A" name e

    {
        Name = name
        File = file
        Fields = FieldTable.load (Path.Combine(goldenDirectory, name + ".fields.tsv"))
    }

/// The captured packets read with the stack's own parsers (NetStack.Core.Wire): the IP header,
/// the IPv6 extension-header chain, then the transport header, and for an ICMP error the packet
/// it quotes, read the same way. Written over byte arrays: the spans live only inside each
/// function, never in a closure.
module Dissect =

    /// One IPv6 extension header met on the chain walk.
    type ExtensionHeader =
        {
            /// Its type: the Next Header value that named it (0, 43, 44 or 60 here).
            Type: byte
            /// Where it starts in the packet.
            Offset: int
            /// Its own Next Header byte.
            NextHeader: byte
            /// Its length in bytes.
            Length: int
        }

    /// An IP header as the Wire parsers read it.
    type IpHeader =
        /// An IPv4 header.
        | V4 of Ipv4Header
        /// An IPv6 fixed header, what `Ipv6.parseExtensions` said of its chain, and the chain
        /// header by header.
        | V6 of header: Ipv6Header * extensions: Ipv6Extensions * chain: ExtensionHeader list

    /// The network layer of one packet.
    type IpPart =
        {
            /// The parsed header.
            Header: IpHeader
            /// The packet's bytes, exactly: what followed its length (link padding) is cut off.
            Bytes: byte[]
            /// The protocol after the IP header (after the extension headers for IPv6).
            UpperProtocol: byte
            /// Where that protocol's bytes start in `Bytes`.
            UpperOffset: int
            /// How many bytes of it this packet carries.
            UpperLength: int
        }

        /// True for an IPv4 fragment or an IPv6 packet with a Fragment header.
        member p.IsFragment =
            match p.Header with
            | V4 h -> h.IsFragment
            | V6(_, ext, _) -> ext.Fragment.IsSome

        /// Where this packet's upper-layer bytes sit in the original datagram, in bytes.
        member p.FragmentOffset =
            match p.Header with
            | V4 h -> h.FragmentOffset
            | V6(_, ext, _) ->
                ext.Fragment
                |> ValueOption.map (fun f -> f.Offset)
                |> ValueOption.defaultValue 0

        /// The More Fragments flag (IPv4) or M flag (IPv6 Fragment header).
        member p.MoreFragments =
            match p.Header with
            | V4 h -> h.MoreFragments
            | V6(_, ext, _) -> ext.Fragment |> ValueOption.exists (fun f -> f.MoreFragments)

        /// What ties the fragments of one datagram together (RFC 791 §2.3, RFC 8200 §4.5):
        /// source, destination, protocol and identification.
        member p.DatagramKey =
            match p.Header with
            | V4 h -> string h.Source, string h.Destination, h.Protocol, uint32 h.Identification
            | V6(h, ext, _) ->
                let id =
                    ext.Fragment
                    |> ValueOption.map (fun f -> f.Identification)
                    |> ValueOption.defaultValue 0u

                string h.Source, string h.Destination, p.UpperProtocol, id

    /// A transport header as the Wire parsers read it.
    type Transport =
        /// A TCP header and its options.
        | Tcp of TcpHeader * TcpOptions
        /// A UDP header.
        | Udp of UdpHeader
        /// An ICMPv4 or ICMPv6 message; for an error, the packet it quotes, dissected.
        | Icmp of IcmpMessage * quoted: Dissection option

    /// One packet, dissected.
    and Dissection =
        {
            /// The network layer.
            Ip: IpPart
            /// The transport layer, when the whole upper-layer message is known: an unfragmented
            /// packet, or the first fragment of a datagram reassembled from the capture.
            Transport: Transport option
            /// The upper-layer message the transport was parsed from (empty without one).
            Message: byte[]
        }

    /// RFC 8200 §8.1: with a Routing header the pseudo-header carries the final destination;
    /// at the sender, the last address of the Routing header. Only the type 0 layout (RFC 2460
    /// §4.4: eight bytes, then 16-byte addresses) is read; with Segments Left 0 the packet has
    /// already arrived and the fixed header's destination is the final one.
    let checksumDestination (ip: IpPart) : Ipv6Address =
        match ip.Header with
        | V4 _ -> invalidArg (nameof ip) "IPv4 has no IPv6 pseudo-header"
        | V6(h, _, chain) ->
            chain
            |> List.tryFind (fun e ->
                e.Type = IpProtocol.Ipv6Routing
                && e.Length >= 24
                && ip.Bytes.[e.Offset + 2] = 0uy
                && ip.Bytes.[e.Offset + 3] > 0uy)
            |> Option.map (fun e -> Ipv6Address.Read(ReadOnlySpan(ip.Bytes, e.Offset + e.Length - 16, 16)))
            |> Option.defaultValue h.Destination

    /// Steps over the `ext.ExtensionHeaders` headers the parser counted, reading each one's
    /// Next Header and length, and checks the walk ends where the parser said the upper layer
    /// starts. The parser returns only the end of the chain; tshark names every header.
    let private walkChain (bytes: byte[]) (h: Ipv6Header) (ext: Ipv6Extensions) : Result<ExtensionHeader list, string> =
        let payloadEnd = Ipv6.HeaderLength + h.PayloadLength
        let mutable next = h.NextHeader
        let mutable position = Ipv6.HeaderLength
        let mutable chain = []
        let mutable error = None

        for _ in 1 .. ext.ExtensionHeaders do
            if error.IsNone then
                let length =
                    if next = IpProtocol.Ipv6Fragment then
                        Ipv6.FragmentHeaderLength
                    elif position + 1 < payloadEnd then
                        (int bytes.[position + 1] + 1) * 8
                    else
                        -1

                if length < 0 || position + length > payloadEnd then
                    error <- Some $"extension header at {position} runs past the payload"
                else
                    chain <-
                        {
                            Type = next
                            Offset = position
                            NextHeader = bytes.[position]
                            Length = length
                        }
                        :: chain

                    next <- bytes.[position]
                    position <- position + length

        match error with
        | Some e -> Error e
        | None when position <> ext.UpperOffset || next <> ext.UpperProtocol ->
            Error
                $"chain walk ends at {position} (protocol {next}); the parser says {ext.UpperOffset} ({ext.UpperProtocol})"
        | None -> Ok(List.rev chain)

    /// Parses the IP header (and IPv6 extension headers) of `bytes`, chosen by the version nibble.
    let parseIp (bytes: byte[]) : Result<IpPart, string> =
        if bytes.Length = 0 then
            Error "no bytes"
        else
            match bytes.[0] >>> 4 with
            | 4uy ->
                match Ipv4.parse (ReadOnlySpan bytes) with
                | Error e -> Error $"IPv4: %A{e}"
                | Ok h ->
                    Ok
                        {
                            Header = V4 h
                            Bytes = bytes.[0 .. h.TotalLength - 1]
                            UpperProtocol = h.Protocol
                            UpperOffset = h.PayloadOffset
                            UpperLength = h.PayloadLength
                        }
            | 6uy ->
                match Ipv6.parse (ReadOnlySpan bytes) with
                | Error e -> Error $"IPv6: %A{e}"
                | Ok h ->
                    match Ipv6.parseExtensions (ReadOnlySpan bytes) h with
                    | Error e -> Error $"IPv6 extensions: %A{e}"
                    | Ok ext ->
                        walkChain bytes h ext
                        |> Result.map (fun chain ->
                            {
                                Header = V6(h, ext, chain)
                                Bytes = bytes.[0 .. Ipv6.HeaderLength + h.PayloadLength - 1]
                                UpperProtocol = ext.UpperProtocol
                                UpperOffset = ext.UpperOffset
                                UpperLength = ext.UpperLength
                            })
            | v -> Error $"IP version {v}"

    /// Parses the upper-layer `message` of `ip` with the checksum-verifying parsers. An ICMP
    /// error's body is dissected as a packet when `depth` is 0 (one level: the quote of a quote
    /// is not followed).
    let rec private parseTransport (depth: int) (ip: IpPart) (message: byte[]) : Result<Transport, string> =
        let span = ReadOnlySpan message

        let tcp (parsed: Result<TcpHeader, ParseError>) =
            match parsed with
            | Error e -> Error $"TCP: %A{e}"
            | Ok th ->
                match Tcp.parseOptions (ReadOnlySpan(message, th.OptionsOffset, th.OptionsLength)) with
                | Error e -> Error $"TCP options: %A{e}"
                | Ok options -> Ok(Tcp(th, options))

        let udp (parsed: Result<UdpHeader, ParseError>) =
            match parsed with
            | Error e -> Error $"UDP: %A{e}"
            | Ok u -> Ok(Udp u)

        let icmp (parsed: Result<IcmpMessage, ParseError>) =
            match parsed with
            | Error e -> Error $"ICMP: %A{e}"
            | Ok m when m.IsError && depth = 0 ->
                match dissectAt (depth + 1) message.[m.DataOffset .. m.DataOffset + m.DataLength - 1] None with
                | Error e -> Error $"quoted packet: {e}"
                | Ok quoted -> Ok(Icmp(m, Some quoted))
            | Ok m -> Ok(Icmp(m, None))

        match ip.Header, ip.UpperProtocol with
        | V4 h, IpProtocol.Tcp -> tcp (Tcp.parseV4 h.Source h.Destination span)
        | V6(h, _, _), IpProtocol.Tcp -> tcp (Tcp.parseV6 h.Source (checksumDestination ip) span)
        | V4 h, IpProtocol.Udp -> udp (Udp.parseV4 h.Source h.Destination span)
        | V6(h, _, _), IpProtocol.Udp -> udp (Udp.parseV6 h.Source (checksumDestination ip) span)
        | V4 _, IpProtocol.Icmp -> icmp (Icmpv4.parse span)
        | V6(h, _, _), IpProtocol.Icmpv6 -> icmp (Icmpv6.parse h.Source (checksumDestination ip) span)
        | _, other -> Error $"no transport parser for protocol {other}"

    /// Dissects one packet. A fragment has no transport layer, except the first one of a
    /// datagram whose `reassembled` upper-layer message is given.
    and dissectAt (depth: int) (bytes: byte[]) (reassembled: byte[] option) : Result<Dissection, string> =
        match parseIp bytes with
        | Error e -> Error e
        | Ok ip ->
            let message =
                if not ip.IsFragment then
                    Some ip.Bytes.[ip.UpperOffset .. ip.UpperOffset + ip.UpperLength - 1]
                elif ip.FragmentOffset = 0 then
                    reassembled
                else
                    None

            match message with
            | None ->
                Ok
                    {
                        Ip = ip
                        Transport = None
                        Message = [||]
                    }
            | Some m ->
                parseTransport depth ip m
                |> Result.map (fun t ->
                    {
                        Ip = ip
                        Transport = Some t
                        Message = m
                    })

    /// Dissects one packet of the network (an ICMP error's quote is dissected too).
    let dissect (bytes: byte[]) (reassembled: byte[] option) = dissectAt 0 bytes reassembled

    /// Puts the fragments of each datagram back together, by offset (RFC 791 §3.2, RFC 8200
    /// §4.5): the upper-layer message per DatagramKey. A datagram with a hole or without its
    /// last fragment fails the calling test. The stack's own reassembly is tested elsewhere;
    /// this one needs only the well-behaved captures.
    let reassemble (parts: IpPart[]) : Map<string * string * byte * uint32, byte[]> =
        parts
        |> Array.filter (fun p -> p.IsFragment)
        |> Array.groupBy (fun p -> p.DatagramKey)
        |> Array.map (fun (key, fragments) ->
            let sorted = fragments |> Array.sortBy (fun p -> p.FragmentOffset)
            let mutable expected = 0

            for p in sorted do
                Expect.equal p.FragmentOffset expected $"%A{key}: fragment starts where the previous one ended"
                expected <- expected + p.UpperLength

            Expect.isFalse (Array.last sorted).MoreFragments $"%A{key}: the last fragment has MF clear"

            key,
            sorted
            |> Array.collect (fun p -> p.Bytes.[p.UpperOffset .. p.UpperOffset + p.UpperLength - 1]))
        |> Map.ofArray

    /// Every packet of a capture, dissected, the first fragments with their reassembled
    /// message; fails the calling test when one does not parse.
    let capture (packets: PcapPacket[]) : Dissection[] =
        let parts =
            packets
            |> Array.map (fun p ->
                match parseIp p.Ip with
                | Ok ip -> ip
                | Error e -> failtestf "frame %d: %s" (p.Index + 1) e)

        let messages = reassemble parts

        packets
        |> Array.mapi (fun i p ->
            match dissect p.Ip (Map.tryFind parts.[i].DatagramKey messages) with
            | Ok d -> d
            | Error e -> failtestf "frame %d: %s" (p.Index + 1) e)

    // --- Builders: the same packet again from the parsed fields --------------------------------

    /// Builds the upper-layer message of `ip` again from `transport` with the Wire builders;
    /// `message` (the parsed one) supplies only the payload bytes, and for an ICMP error the
    /// quoted packet is itself rebuilt.
    let rec buildMessage (ip: IpPart) (transport: Transport) (message: byte[]) : byte[] =
        let output = Array.zeroCreate<byte> message.Length

        let written =
            match transport, ip.Header with
            // Linux lays out its options as writeOptions does (MSS; SACK-permitted or two NOPs
            // before the timestamps; NOP + window scale), so the whole segment is rebuilt, not
            // only its fixed header.
            | Tcp(th, options), V4 h ->
                Tcp.buildV4
                    (Span output)
                    h.Source
                    h.Destination
                    th
                    options
                    (ReadOnlySpan(message, th.PayloadOffset, th.PayloadLength))
            | Tcp(th, options), V6(h, _, _) ->
                Tcp.buildV6
                    (Span output)
                    h.Source
                    (checksumDestination ip)
                    th
                    options
                    (ReadOnlySpan(message, th.PayloadOffset, th.PayloadLength))
            | Udp u, V4 h ->
                Udp.buildV4
                    (Span output)
                    h.Source
                    h.Destination
                    u.SourcePort
                    u.DestinationPort
                    (ReadOnlySpan(message, u.PayloadOffset, u.PayloadLength))
            | Udp u, V6(h, _, _) ->
                Udp.buildV6
                    (Span output)
                    h.Source
                    (checksumDestination ip)
                    u.SourcePort
                    u.DestinationPort
                    (ReadOnlySpan(message, u.PayloadOffset, u.PayloadLength))
            | Icmp(m, quoted), header ->
                let body =
                    match quoted with
                    | Some q ->
                        // The quote rebuilt, then whatever the error carried past the quoted
                        // packet's own length (nothing in these captures).
                        Array.append (rebuild q) message.[m.DataOffset + q.Ip.Bytes.Length ..]
                    | None -> message.[m.DataOffset ..]

                match header with
                | V4 _ ->
                    match m.Kind with
                    | IcmpMessageKind.EchoRequest ->
                        Icmpv4.buildEchoRequest (Span output) m.Identifier m.SequenceNumber (ReadOnlySpan body)
                    | IcmpMessageKind.EchoReply ->
                        Icmpv4.buildEchoReply (Span output) m.Identifier m.SequenceNumber (ReadOnlySpan body)
                    | IcmpMessageKind.DestinationUnreachable when m.Code = Icmpv4.UnreachableCode.FragmentationNeeded ->
                        Icmpv4.buildFragmentationNeeded (Span output) (uint16 m.Mtu) (ReadOnlySpan body)
                    | IcmpMessageKind.DestinationUnreachable ->
                        Icmpv4.buildDestinationUnreachable (Span output) m.Code (ReadOnlySpan body)
                    | IcmpMessageKind.TimeExceeded -> Icmpv4.buildTimeExceeded (Span output) m.Code (ReadOnlySpan body)
                    | IcmpMessageKind.ParameterProblem ->
                        Icmpv4.buildParameterProblem (Span output) (byte m.Pointer) (ReadOnlySpan body)
                    | _ -> failtestf "no ICMPv4 builder for type %d" m.Type
                | V6(h, _, _) ->
                    let source = h.Source
                    let destination = checksumDestination ip

                    match m.Kind with
                    | IcmpMessageKind.EchoRequest ->
                        Icmpv6.buildEchoRequest
                            (Span output)
                            source
                            destination
                            m.Identifier
                            m.SequenceNumber
                            (ReadOnlySpan body)
                    | IcmpMessageKind.EchoReply ->
                        Icmpv6.buildEchoReply
                            (Span output)
                            source
                            destination
                            m.Identifier
                            m.SequenceNumber
                            (ReadOnlySpan body)
                    | IcmpMessageKind.DestinationUnreachable ->
                        Icmpv6.buildDestinationUnreachable (Span output) source destination m.Code (ReadOnlySpan body)
                    | IcmpMessageKind.PacketTooBig ->
                        Icmpv6.buildPacketTooBig (Span output) source destination m.Mtu (ReadOnlySpan body)
                    | IcmpMessageKind.TimeExceeded ->
                        Icmpv6.buildTimeExceeded (Span output) source destination m.Code (ReadOnlySpan body)
                    | IcmpMessageKind.ParameterProblem ->
                        Icmpv6.buildParameterProblem
                            (Span output)
                            source
                            destination
                            m.Code
                            m.Pointer
                            (ReadOnlySpan body)
                    | _ -> failtestf "no ICMPv6 builder for type %d" m.Type

        Expect.equal written message.Length "the builder wrote a message as long as the parsed one"
        output

    /// Builds the whole packet of `d` again: Ipv4.write with the parsed header and options, or
    /// Ipv6.write and the extension headers copied as they were (a Fragment header is written
    /// with writeFragmentHeader), then the rebuilt transport message. A fragment's data is a
    /// slice of a message rebuilt whole elsewhere (see the fragmentation tests), so it is copied.
    and rebuild (d: Dissection) : byte[] =
        let ip = d.Ip
        let output = Array.zeroCreate<byte> ip.Bytes.Length

        match ip.Header with
        | V4 h ->
            let headerLength =
                Ipv4.write h (ReadOnlySpan(ip.Bytes, h.OptionsOffset, h.OptionsLength)) h.PayloadLength (Span output)

            Expect.equal headerLength h.HeaderLength "IPv4 header length"
        | V6(h, ext, _) ->
            Ipv6.write h (Span output) |> ignore

            match ext.Fragment with
            | ValueSome f ->
                Array.blit
                    ip.Bytes
                    Ipv6.HeaderLength
                    output
                    Ipv6.HeaderLength
                    (ext.UnfragmentableLength - Ipv6.HeaderLength)

                Ipv6.writeFragmentHeader f (Span(output, ext.UnfragmentableLength, Ipv6.FragmentHeaderLength))
                |> ignore
            | ValueNone ->
                Array.blit ip.Bytes Ipv6.HeaderLength output Ipv6.HeaderLength (ip.UpperOffset - Ipv6.HeaderLength)

        let upper =
            match d.Transport with
            | Some t when not ip.IsFragment -> buildMessage ip t d.Message
            | _ -> ip.Bytes.[ip.UpperOffset .. ip.UpperOffset + ip.UpperLength - 1]

        Array.blit upper 0 output ip.UpperOffset upper.Length
        output

    // --- Fields, named as tshark names them ---------------------------------------------------

    /// A field value: numbers are compared as numbers (tshark prints some in hex), the rest as text.
    type FieldValue =
        /// A number.
        | Number of int64
        /// Text, compared exactly (addresses).
        | Text of string

    /// The fields tshark would print for `d`, in dissection order: the outer IP header, its
    /// extension headers, the transport header, then the same for a quoted packet.
    /// `checksum.status` is tshark's verdict (1 good, 2 not checked): every message here was
    /// parsed by a checksum-verifying parser, so it is good; tshark reports 2 where it did not
    /// look: the first fragment of a datagram (it does not verify a partial message; ours was
    /// verified over the reassembled one) and an ICMP message quoted inside an ICMP error.
    let rec fields (d: Dissection) (quoted: bool) : (string * FieldValue) list =
        let num name (v: int64) = name, Number v
        let flag name (b: bool) = name, Number(if b then 1L else 0L)

        let ipFields =
            match d.Ip.Header with
            | V4 h ->
                [
                    num "ip.version" 4L
                    num "ip.hdr_len" (int64 h.HeaderLength)
                    num "ip.dsfield" (int64 ((h.Dscp <<< 2) ||| h.Ecn))
                    num "ip.len" (int64 h.TotalLength)
                    num "ip.id" (int64 h.Identification)
                    flag "ip.flags.df" h.DontFragment
                    flag "ip.flags.mf" h.MoreFragments
                    // tshark prints the wire field, in 8-byte units.
                    num "ip.frag_offset" (int64 (h.FragmentOffset / 8))
                    num "ip.ttl" (int64 h.Ttl)
                    num "ip.proto" (int64 h.Protocol)
                    num "ip.checksum" (int64 h.HeaderChecksum)
                    // Ipv4.parse verified the header checksum.
                    num "ip.checksum.status" 1L
                    "ip.src", Text(string h.Source)
                    "ip.dst", Text(string h.Destination)
                ]
            | V6(h, ext, chain) ->
                [
                    num "ip.version" 6L
                    num "ipv6.tclass" (int64 h.TrafficClass)
                    num "ipv6.flow" (int64 h.FlowLabel)
                    num "ipv6.plen" (int64 h.PayloadLength)
                    num "ipv6.nxt" (int64 h.NextHeader)
                    num "ipv6.hlim" (int64 h.HopLimit)
                    "ipv6.src", Text(string h.Source)
                    "ipv6.dst", Text(string h.Destination)
                    for e in chain do
                        let lengthByte = int64 d.Ip.Bytes.[e.Offset + 1]

                        match e.Type with
                        | IpProtocol.HopByHop ->
                            num "ipv6.hopopts.nxt" (int64 e.NextHeader)
                            num "ipv6.hopopts.len" lengthByte
                        | IpProtocol.Ipv6DestinationOptions ->
                            num "ipv6.dstopts.nxt" (int64 e.NextHeader)
                            num "ipv6.dstopts.len" lengthByte
                        | IpProtocol.Ipv6Routing ->
                            num "ipv6.routing.nxt" (int64 e.NextHeader)
                            num "ipv6.routing.type" (int64 d.Ip.Bytes.[e.Offset + 2])
                            num "ipv6.routing.segleft" (int64 d.Ip.Bytes.[e.Offset + 3])
                        | _ ->
                            match ext.Fragment with
                            | ValueSome f ->
                                num "ipv6.fraghdr.nxt" (int64 f.NextHeader)
                                num "ipv6.fraghdr.offset" (int64 (f.Offset / 8))
                                flag "ipv6.fraghdr.more" f.MoreFragments
                                num "ipv6.fraghdr.ident" (int64 f.Identification)
                            | ValueNone -> failtestf "extension header %d without a parsed Fragment header" e.Type
                ]

        let status (checkedByTshark: bool) =
            if checkedByTshark && not d.Ip.IsFragment then 1L else 2L

        let transportFields =
            match d.Transport with
            | None -> []
            | Some(Tcp(th, o)) ->
                [
                    num "tcp.srcport" (int64 th.SourcePort)
                    num "tcp.dstport" (int64 th.DestinationPort)
                    num "tcp.seq_raw" (int64 th.SequenceNumber)
                    num "tcp.ack_raw" (int64 th.AcknowledgmentNumber)
                    num "tcp.hdr_len" (int64 th.HeaderLength)
                    // tshark's 12 bits include the three reserved ones, which the parser drops;
                    // they are zero in every capture (the byte-for-byte rebuild shows it).
                    num "tcp.flags" (int64 (byte th.Flags))
                    num "tcp.window_size_value" (int64 th.Window)
                    num "tcp.checksum" (int64 th.Checksum)
                    num "tcp.checksum.status" (status true)
                    num "tcp.urgent_pointer" (int64 th.UrgentPointer)
                    num "tcp.len" (int64 th.PayloadLength)
                    match o.MaximumSegmentSize with
                    | ValueSome mss -> num "tcp.options.mss_val" (int64 mss)
                    | ValueNone -> ()
                    match o.WindowScale with
                    | ValueSome shift -> num "tcp.options.wscale.shift" (int64 shift)
                    | ValueNone -> ()
                    // tshark prints the option's own two bytes: kind 4, length 2.
                    if o.SackPermitted then
                        "tcp.options.sack_perm", Text "0402"
                    match o.Timestamps with
                    | ValueSome ts ->
                        num "tcp.options.timestamp.tsval" (int64 ts.Value)
                        num "tcp.options.timestamp.tsecr" (int64 ts.EchoReply)
                    | ValueNone -> ()
                ]
            | Some(Udp u) ->
                [
                    num "udp.srcport" (int64 u.SourcePort)
                    num "udp.dstport" (int64 u.DestinationPort)
                    num "udp.length" (int64 u.Length)
                    num "udp.checksum" (int64 u.Checksum)
                    num "udp.checksum.status" (status true)
                ]
            | Some(Icmp(m, _)) ->
                let prefix, ident, sequence =
                    match d.Ip.Header with
                    | V4 _ -> "icmp", "icmp.ident", "icmp.seq"
                    | V6 _ -> "icmpv6", "icmpv6.echo.identifier", "icmpv6.echo.sequence_number"

                [
                    num $"{prefix}.type" (int64 m.Type)
                    num $"{prefix}.code" (int64 m.Code)
                    num $"{prefix}.checksum" (int64 m.Checksum)
                    num $"{prefix}.checksum.status" (status (not quoted))
                    if m.Kind = IcmpMessageKind.EchoRequest || m.Kind = IcmpMessageKind.EchoReply then
                        num ident (int64 m.Identifier)
                        num sequence (int64 m.SequenceNumber)
                ]

        let quotedFields =
            match d.Transport with
            | Some(Icmp(_, Some q)) -> fields q true
            | _ -> []

        ipFields @ transportFields @ quotedFields

// --- Checks against one capture -----------------------------------------------------------

/// Fails unless tshark's first value of `field` equals `expected` (numbers compared as numbers).
let private expectNumber (row: FieldRow) (frame: int) (field: string) (expected: int64) =
    match FieldTable.tryFirstNumber field row with
    | Some actual -> Expect.equal actual expected $"frame {frame}: {field}"
    | None -> failtestf "frame %d: tshark has no %s (expected %d)" frame field expected

/// tshark's columns that are not protocol fields: the frame number and the length on the wire
/// (compared with the pcap record separately).
let private frameColumns = set [ "frame.number"; "frame.len" ]

/// The parsers and tshark agree on every column of the capture's table: for each field, the
/// list of its values in this frame (outer header first, then the quoted packet) is the list
/// the dissection gives, and a field the dissection names is one of the table's columns.
let private agreesWithTshark (columns: string[]) (d: Dissect.Dissection) (row: FieldRow) (frame: int) =
    let ours =
        Dissect.fields d false
        |> List.fold
            (fun (acc: Map<string, Dissect.FieldValue list>) (name, value) ->
                acc.Change(name, (fun old -> Some(defaultArg old [] @ [ value ]))))
            Map.empty

    for name in ours.Keys do
        Expect.contains columns name $"frame {frame}: the dissection names {name}, a column of the table"

    for name in columns do
        if not (frameColumns.Contains name) then
            let expected = defaultArg (Map.tryFind name ours) []
            let actual = FieldTable.values name row |> List.ofArray

            let agrees =
                expected.Length = actual.Length
                && List.forall2
                    (fun value (text: string) ->
                        match value with
                        | Dissect.Number n -> FieldTable.tryNumber text = Some n
                        | Dissect.Text t -> text = t)
                    expected
                    actual

            if not agrees then
                failtestf "frame %d: %s: tshark printed %A, the parsers give %A" frame name actual expected

/// The tests run against one capture.
let private captureTests (name: string) =
    let load () = loadCapture name

    let loadDissected () =
        let c = load ()
        c, Dissect.capture c.File.Packets

    testList
        name
        [
            testCase "has as many frames as tshark dissected"
            <| fun () ->
                let c = load ()
                Expect.isNonEmpty c.File.Packets "the capture holds packets"
                Expect.equal c.File.Packets.Length c.Fields.Length "frames in pcap vs tshark rows"

                c.Fields
                |> Array.iteri (fun i row -> expectNumber row (i + 1) "frame.number" (int64 (i + 1)))

            testCase "every frame's IP version nibble is the one tshark saw"
            <| fun () ->
                let c = load ()

                for p, row in Array.zip c.File.Packets c.Fields do
                    expectNumber row (p.Index + 1) "ip.version" (int64 (p.Ip.[0] >>> 4))

            testCase "every frame parses, holds the whole IP packet, and its length on the wire is tshark's"
            <| fun () ->
                let c, dissected = loadDissected ()

                for p, d, row in Array.zip3 c.File.Packets dissected c.Fields do
                    // The parsers refuse a packet whose length fields pass the bytes present.
                    Expect.isLessThanOrEqual
                        d.Ip.Bytes.Length
                        p.Ip.Length
                        $"frame {p.Index + 1}: IP length within the frame"

                    expectNumber row (p.Index + 1) "frame.len" (int64 p.OriginalLength)

            testCase "every whole message's transport checksum verifies, as tshark agrees"
            <| fun () ->
                let c, dissected = loadDissected ()

                for i in 0 .. dissected.Length - 1 do
                    let d, row, frame = dissected.[i], c.Fields.[i], i + 1

                    // Every transport below was parsed by parseV4/parseV6 or Icmpv4/Icmpv6.parse,
                    // which return BadChecksum when it does not verify.
                    match d.Transport with
                    | Some _ when not d.Ip.IsFragment ->
                        let statusField =
                            match d.Ip.UpperProtocol with
                            | IpProtocol.Tcp -> "tcp.checksum.status"
                            | IpProtocol.Udp -> "udp.checksum.status"
                            | IpProtocol.Icmp -> "icmp.checksum.status"
                            | _ -> "icmpv6.checksum.status"

                        expectNumber row frame statusField 1L
                    | Some _ -> ()
                    | None -> Expect.isTrue d.Ip.IsFragment $"frame {frame}: only a fragment lacks a transport layer"

            testCase "the parsers and tshark agree on every field tshark printed, outer and quoted packets alike"
            <| fun () ->
                let c, dissected = loadDissected ()
                // The table's header line: every field capture.sh asked tshark for.
                let columns =
                    (File.ReadLines(Path.Combine(goldenDirectory, name + ".fields.tsv")) |> Seq.head)
                        .TrimEnd('\r')
                        .Split('\t')

                for i in 0 .. dissected.Length - 1 do
                    agreesWithTshark columns dissected.[i] c.Fields.[i] (i + 1)

            testCase "every frame is rebuilt byte for byte by the builders, checksums included"
            <| fun () ->
                let c, dissected = loadDissected ()

                for p, d in Array.zip c.File.Packets dissected do
                    let rebuilt = Dissect.rebuild d

                    Expect.equal
                        (TestUtil.toHex rebuilt)
                        (TestUtil.toHex d.Ip.Bytes)
                        $"frame {p.Index + 1}: rebuilt bytes"

            testCase "every reassembled message is rebuilt byte for byte by the builders"
            <| fun () ->
                let _, dissected = loadDissected ()

                for d in dissected do
                    match d.Transport with
                    | Some t when d.Ip.IsFragment ->
                        Expect.equal
                            (TestUtil.toHex (Dissect.buildMessage d.Ip t d.Message))
                            (TestUtil.toHex d.Message)
                            "rebuilt message"
                    | _ -> ()

            testCase "every ICMP error quotes, byte for byte, a packet sent earlier in the capture"
            <| fun () ->
                let _, dissected = loadDissected ()

                for i in 0 .. dissected.Length - 1 do
                    match dissected.[i].Transport with
                    | Some(Dissect.Icmp(_, Some quoted)) ->
                        // The kernel quotes the offending packet as it arrived (RFC 792, RFC 4443
                        // §2.4(c)); here it is short enough to be quoted whole, so the quote
                        // parses back to the same flow: addresses, protocol, ports or echo id.
                        let earlier =
                            dissected.[.. i - 1] |> Array.tryFind (fun d -> d.Ip.Bytes = quoted.Ip.Bytes)

                        Expect.isSome earlier $"frame {i + 1}: the quoted packet is an earlier frame"
                        Expect.isSome quoted.Transport $"frame {i + 1}: the quote carries its transport header"
                    | Some(Dissect.Icmp(m, None)) when m.IsError ->
                        failtestf "frame %d: an ICMP error without its quote" (i + 1)
                    | _ -> ()
        ]

// --- Fragmentation: the kernel's fragments against Fragmentation.fs ---------------------------

/// The link MTU capture.sh's veth pair uses (the Linux default), which fragmented the pings.
[<Literal>]
let private CaptureMtu = 1500

/// The captured fragments of each datagram, in offset order, with its reassembled message.
let private datagrams (name: string) =
    let dissected = Dissect.capture (loadCapture name).File.Packets
    let messages = Dissect.reassemble (dissected |> Array.map (fun d -> d.Ip))

    [
        for KeyValue(key, message) in messages ->
            let fragments =
                dissected
                |> Array.filter (fun d -> d.Ip.IsFragment && d.Ip.DatagramKey = key)
                |> Array.sortBy (fun d -> d.Ip.FragmentOffset)

            fragments, message
    ]

let private fragmentationTests =
    testList
        "fragmented captures"
        [
            testCase
                "IPv4: re-fragmenting the reassembled ping with the same MTU and identification gives the kernel's fragments byte for byte"
            <| fun () ->
                let datagrams = datagrams "ipv4-ping-fragmented"
                Expect.equal datagrams.Length 2 "request and reply"

                for fragments, payload in datagrams do
                    let first = fragments.[0]

                    let header =
                        match first.Ip.Header with
                        | Dissect.V4 h -> h
                        | Dissect.V6 _ -> failtest "IPv4 capture"

                    Expect.equal header.TotalLength CaptureMtu "the first fragment fills the MTU"
                    // The datagram before fragmentation: the first fragment's header without MF.
                    let original =
                        { header with
                            MoreFragments = false
                            FragmentOffset = 0
                        }

                    let options = first.Ip.Bytes.[Ipv4.MinHeaderLength .. header.HeaderLength - 1]

                    match Fragmentation.planIpv4 original (ReadOnlySpan options) payload.Length CaptureMtu with
                    | Error e -> failtestf "%A" e
                    | Ok plan ->
                        Expect.equal plan.Count fragments.Length "as many fragments as the kernel sent"

                        for i in 0 .. plan.Count - 1 do
                            let output = Array.zeroCreate<byte> CaptureMtu

                            let written =
                                Fragmentation.writeIpv4Fragment
                                    plan
                                    original
                                    (ReadOnlySpan options)
                                    (ReadOnlySpan payload)
                                    i
                                    (Span output)

                            Expect.equal
                                (TestUtil.toHex output.[.. written - 1])
                                (TestUtil.toHex fragments.[i].Ip.Bytes)
                                $"fragment {i}"

            testCase
                "IPv6: re-fragmenting the reassembled ping with the same MTU and identification gives the kernel's fragments byte for byte"
            <| fun () ->
                let datagrams = datagrams "ipv6-ping-fragmented"
                Expect.equal datagrams.Length 2 "request and reply"

                for fragments, message in datagrams do
                    let first = fragments.[0]

                    let header, ext =
                        match first.Ip.Header with
                        | Dissect.V6(h, ext, _) -> h, ext
                        | Dissect.V4 _ -> failtest "IPv6 capture"

                    let fragment = ext.Fragment.Value
                    // 1496 bytes, not 1500: 40 + 8 leaves 1452, rounded down to 1448 of data.
                    Expect.isGreaterThan
                        (first.Ip.Bytes.Length + 8)
                        CaptureMtu
                        "the first fragment fills the MTU up to the 8-byte rounding"
                    // The packet before fragmentation: the unfragmentable part (here the fixed
                    // header alone), its last Next Header naming the fragmentable part again,
                    // then the whole message.
                    let unfragmentable = ext.UnfragmentableLength
                    let packet = Array.zeroCreate<byte>(unfragmentable + message.Length)

                    Ipv6.write
                        { header with
                            PayloadLength = packet.Length - Ipv6.HeaderLength
                        }
                        (Span packet)
                    |> ignore

                    Array.blit
                        first.Ip.Bytes
                        Ipv6.HeaderLength
                        packet
                        Ipv6.HeaderLength
                        (unfragmentable - Ipv6.HeaderLength)

                    packet.[ext.UnfragmentableNextHeaderOffset] <- fragment.NextHeader
                    Array.blit message 0 packet unfragmentable message.Length

                    let plan =
                        Fragmentation.planIpv6 (ReadOnlySpan packet) fragment.Identification CaptureMtu

                    Expect.equal plan.Count fragments.Length "as many fragments as the kernel sent"

                    for i in 0 .. plan.Count - 1 do
                        let output = Array.zeroCreate<byte> CaptureMtu

                        let written =
                            Fragmentation.writeIpv6Fragment plan (ReadOnlySpan packet) i (Span output)

                        Expect.equal
                            (TestUtil.toHex output.[.. written - 1])
                            (TestUtil.toHex fragments.[i].Ip.Bytes)
                            $"fragment {i}"

            testCase
                "Reassembly.fs puts the kernel's fragments back together, in capture order and reversed, to the same message"
            <| fun () ->
                for name in [ "ipv4-ping-fragmented"; "ipv6-ping-fragmented" ] do
                    for fragments, message in datagrams name do
                        let feed (order: Dissect.Dissection[]) =
                            let mutable state = Reassembly.empty ReassemblyConfig.Default
                            let mutable completed = []

                            for d in order do
                                let ip = d.Ip
                                let bytes = ip.Bytes

                                let key, nextHeader, headerLength =
                                    match ip.Header with
                                    | Dissect.V4 h ->
                                        ReassemblyKey.V4(h.Source, h.Destination, h.Protocol, h.Identification),
                                        h.Protocol,
                                        h.HeaderLength
                                    | Dissect.V6(h, ext, _) ->
                                        let f = ext.Fragment.Value

                                        ReassemblyKey.V6(h.Source, h.Destination, f.Identification),
                                        f.NextHeader,
                                        ext.UnfragmentableLength

                                let fragment: Fragment =
                                    {
                                        Key = key
                                        Offset = ip.FragmentOffset
                                        MoreFragments = ip.MoreFragments
                                        NextHeader = nextHeader
                                        Header = ReadOnlySpan(bytes, 0, headerLength)
                                        Payload = ReadOnlySpan(bytes, ip.UpperOffset, ip.UpperLength)
                                    }

                                let next, result = Reassembly.add 0L fragment state
                                state <- next

                                match result.Outcome with
                                | FragmentOutcome.Completed datagram -> completed <- datagram :: completed
                                | FragmentOutcome.Held -> ()
                                | other -> failtestf "%s: unexpected outcome %A" name other

                            Expect.equal (Reassembly.count state) 0 $"{name}: nothing left in progress"

                            match completed with
                            | [ datagram ] ->
                                let payload = datagram.Packet.[datagram.HeaderLength ..]
                                Expect.equal (TestUtil.toHex payload) (TestUtil.toHex message) $"{name}: the message"
                            | other -> failtestf "%s: %d completions" name other.Length

                        feed fragments
                        feed (Array.rev fragments)

            testCase "the reassembled pings parse with their checksums and carry tshark's echo fields"
            <| fun () ->
                for name in [ "ipv4-ping-fragmented"; "ipv6-ping-fragmented" ] do
                    for fragments, message in datagrams name do
                        match fragments.[0].Transport with
                        | Some(Dissect.Icmp(m, None)) ->
                            Expect.isTrue
                                (m.Kind = IcmpMessageKind.EchoRequest || m.Kind = IcmpMessageKind.EchoReply)
                                $"{name}: an echo"
                            // ping -s 6000: 6000 bytes of data after the 8-byte ICMP header.
                            Expect.equal message.Length 6008 $"{name}: message length"
                            Expect.equal m.DataLength 6000 $"{name}: echo data"
                        | other -> failtestf "%s: first fragment's transport %A" name other
        ]

// --- Facts about what the kernel sent, to notice a capture that is not what it claims ------

let private rows name = (loadCapture name).Fields

let private count predicate (rows: FieldRow[]) =
    rows |> Array.filter predicate |> Array.length

let private has field value (row: FieldRow) =
    FieldTable.values field row |> Array.contains value

let private scenarioTests =
    testList
        "the captures show what capture.sh meant to provoke"
        [
            testCase "IPv4 ping: two echo requests and two echo replies"
            <| fun () ->
                let r = rows "ipv4-ping"
                Expect.equal (count (has "icmp.type" "8") r) 2 "echo requests"
                Expect.equal (count (has "icmp.type" "0") r) 2 "echo replies"

            testCase "IPv4 fragmented ping: five fragments each way, only the last without MF"
            <| fun () ->
                let r = rows "ipv4-ping-fragmented"
                Expect.equal r.Length 10 "fragments"
                Expect.equal (count (has "ip.flags.mf" "1") r) 8 "fragments with MF"
                Expect.equal (count (has "ip.frag_offset" "0") r) 2 "first fragments"

            testCase "IPv6 fragmented ping: every packet carries a Fragment header"
            <| fun () ->
                let r = rows "ipv6-ping-fragmented"
                Expect.equal (count (has "ipv6.nxt" "44") r) r.Length "next header 44"
                Expect.equal (count (has "ipv6.fraghdr.more" "0") r) 2 "last fragments"

            testCase "TCP over IPv4 and IPv6: the kernel's SYNs carry MSS, SACK-permitted, timestamps and window scale"
            <| fun () ->
                for name in [ "tcp-ipv4"; "tcp-ipv6" ] do
                    let syns = rows name |> Array.filter (has "tcp.flags" "0x0002")
                    Expect.equal syns.Length 1 $"{name}: one SYN"
                    let syn = syns.[0]

                    for field in
                        [
                            "tcp.options.mss_val"
                            "tcp.options.sack_perm"
                            "tcp.options.timestamp.tsval"
                            "tcp.options.wscale.shift"
                        ] do
                        Expect.isTrue (syn.ContainsKey field) $"{name}: SYN has {field}"

                    let fins =
                        rows name
                        |> count (fun row ->
                            match FieldTable.tryFirstNumber "tcp.flags" row with
                            | Some f -> f &&& 1L = 1L
                            | None -> false)

                    Expect.equal fins 2 $"{name}: a FIN from each side"

            testCase "a datagram to a closed port is answered by port unreachable, over IPv4 and IPv6"
            <| fun () ->
                let v4 = rows "icmp-port-unreachable-ipv4"
                Expect.equal (count (fun r -> has "icmp.type" "3" r && has "icmp.code" "3" r) v4) 1 "ICMP 3/3"
                let v6 = rows "icmp-port-unreachable-ipv6"
                Expect.equal (count (fun r -> has "icmpv6.type" "1" r && has "icmpv6.code" "4" r) v6) 1 "ICMPv6 1/4"

            testCase "IPv6 extension headers: hop-by-hop, destination options and routing, and the kernel's answers"
            <| fun () ->
                let r = rows "ipv6-extension-headers"
                let outerNext row = FieldTable.tryFirst "ipv6.nxt" row
                Expect.equal (count (fun row -> outerNext row = Some "0") r) 2 "packets starting with hop-by-hop"
                Expect.equal (count (fun row -> outerNext row = Some "43") r) 2 "packets starting with routing"
                Expect.equal (count (fun row -> FieldTable.tryFirst "icmpv6.type" row = Some "129") r) 2 "echo replies"

                Expect.equal
                    (count (fun row -> FieldTable.tryFirst "icmpv6.type" row = Some "4") r)
                    1
                    "parameter problem"

            testCase "the captures cover the four link types the reader strips"
            <| fun () ->
                let linkType name = (loadCapture name).File.LinkType
                Expect.equal (linkType "ipv4-ping") LinkType.Ethernet "Ethernet"
                Expect.equal (linkType "ipv6-ping") LinkType.LinuxSll2 "Linux cooked v2"
                Expect.equal (linkType "ipv6-ping-fragmented") LinkType.LinuxSll "Linux cooked v1"
                Expect.equal (linkType "icmp-port-unreachable-ipv4") LinkType.Raw "raw IP"
        ]

// --- Pcap reader: synthetic files -----------------------------------------------------------

/// Writes a classic pcap file: the inverse of Pcap.read, for the reader's own tests.
let private buildPcap (bigEndian: bool) (nano: bool) (linkType: uint32) (records: (uint32 * uint32 * byte[]) list) =
    use stream = new MemoryStream()
    let buffer = Array.zeroCreate<byte> 4

    let u32 (v: uint32) =
        if bigEndian then
            BinaryPrimitives.WriteUInt32BigEndian(Span buffer, v)
        else
            BinaryPrimitives.WriteUInt32LittleEndian(Span buffer, v)

        stream.Write(buffer, 0, 4)

    let u16 (v: uint16) =
        if bigEndian then
            BinaryPrimitives.WriteUInt16BigEndian(Span buffer, v)
        else
            BinaryPrimitives.WriteUInt16LittleEndian(Span buffer, v)

        stream.Write(buffer, 0, 2)

    u32 (if nano then 0xA1B23C4Du else 0xA1B2C3D4u)
    u16 2us
    u16 4us
    u32 0u
    u32 0u
    u32 65535u
    u32 linkType

    for seconds, fraction, frame in records do
        u32 seconds
        u32 fraction
        u32 (uint32 frame.Length)
        u32 (uint32 frame.Length)
        stream.Write(frame, 0, frame.Length)

    stream.ToArray()

/// Puts a link-layer header of `linkType` in front of `ip` (with `vlanTags` 802.1Q tags for
/// Ethernet). Link headers are big-endian whatever the file's byte order.
let private frameFor (linkType: int) (vlanTags: int) (ip: byte[]) =
    let etherType =
        if ip.Length > 0 && ip.[0] >>> 4 = 6uy then
            0x86DDus
        else
            0x0800us

    let be16 (v: uint16) = [| byte (v >>> 8); byte v |]

    match linkType with
    | LinkType.Ethernet ->
        let macs = Array.init 12 byte

        let tags =
            Array.init vlanTags (fun i ->
                Array.append (be16 (if i = 0 && vlanTags > 1 then 0x88A8us else 0x8100us)) (be16 (uint16 (100 + i))))
            |> Array.concat

        Array.concat [ macs; tags; be16 etherType; ip ]
    | LinkType.LinuxSll -> Array.concat [ be16 0us; be16 1us; be16 6us; Array.zeroCreate 8; be16 etherType; ip ]
    | LinkType.LinuxSll2 ->
        Array.concat
            [
                be16 etherType
                be16 0us
                [| 0uy; 0uy; 0uy; 2uy |]
                be16 1us
                [| 4uy; 6uy |]
                Array.zeroCreate 8
                ip
            ]
    | _ -> ip

/// Random IP-looking packets: a version nibble of 4 or 6, then random bytes.
let private genIpBytes =
    Gen.map2
        (fun (v6: bool) (rest: byte[]) -> Array.append [| (if v6 then 0x60uy else 0x45uy) |] rest)
        (ArbMap.defaults |> ArbMap.generate<bool>)
        (Gen.arrayOf (ArbMap.defaults |> ArbMap.generate<byte>))

let private genFileSpec =
    Gen.zip3
        (Gen.zip (ArbMap.defaults |> ArbMap.generate<bool>) (ArbMap.defaults |> ArbMap.generate<bool>))
        (Gen.zip
            (Gen.elements
                [
                    LinkType.Ethernet
                    LinkType.Raw
                    LinkType.RawAlt12
                    LinkType.RawAlt14
                    LinkType.LinuxSll
                    LinkType.LinuxSll2
                ])
            (Gen.choose (0, 3)))
        (Gen.listOf (
            Gen.zip3
                (ArbMap.defaults |> ArbMap.generate<uint32>)
                (ArbMap.defaults |> ArbMap.generate<uint32>)
                genIpBytes
        ))

let private goldenFileBytes =
    lazy
        (captureNames ()
         |> Array.map (fun n -> File.ReadAllBytes(Path.Combine(goldenDirectory, n + ".pcap"))))

let private goldenFiles () = goldenFileBytes.Value

let private pcapReaderTests =
    testList
        "Pcap reader"
        [
            testPropertyWithConfig
                TestUtil.codecConfig
                "a file written with any byte order, resolution and link type reads back every packet's IP bytes and timestamp"
            <| Prop.forAll (Arb.fromGen genFileSpec) (fun ((bigEndian, nano), (linkType, tags), packets) ->
                let records =
                    packets |> List.map (fun (s, f, ip) -> s, f, frameFor linkType tags ip)

                let bytes = buildPcap bigEndian nano (uint32 linkType) records

                match Pcap.read bytes with
                | Error e -> failtestf "unexpected %A" e
                | Ok file ->
                    Expect.equal file.BigEndian bigEndian "byte order"
                    Expect.equal file.Resolution (if nano then Nanoseconds else Microseconds) "resolution"
                    Expect.equal file.LinkType linkType "link type"
                    Expect.equal file.Version (2, 4) "version"
                    Expect.equal file.Packets.Length packets.Length "packets"

                    for p, (s, f, ip) in List.zip (List.ofArray file.Packets) packets do
                        Expect.equal p.Ip ip "IP bytes"
                        Expect.equal p.TimestampSeconds s "seconds"
                        Expect.equal p.TimestampFraction f "fraction")

            testPropertyWithConfig TestUtil.codecConfig "random bytes give a result, never an exception"
            <| fun (bytes: byte[]) ->
                // Half the cases start with a valid file header so the record loop is reached.
                let header = buildPcap (bytes.Length % 2 = 0) false 1u []

                for input in [ bytes; Array.append header bytes ] do
                    match Pcap.read input with
                    | Ok file ->
                        for p in file.Packets do
                            Expect.isLessThanOrEqual p.Ip.Length (input.Length - 40) "IP bytes lie inside the file"
                    | Error _ -> ()

            testPropertyWithConfig
                TestUtil.codecConfig
                "a golden file cut short reads as a prefix of its packets or fails, never throws"
            <| fun (pick: NonNegativeInt) (cut: NonNegativeInt) ->
                let files = goldenFiles ()

                if files.Length > 0 then
                    let whole = files.[pick.Get % files.Length]
                    let full = Result.defaultWith (fun e -> failtestf "%A" e) (Pcap.read whole)
                    let short = whole.[0 .. (cut.Get % whole.Length) - 1]

                    match Pcap.read short with
                    | Ok file ->
                        Expect.isLessThanOrEqual file.Packets.Length full.Packets.Length "no invented packets"

                        for p in file.Packets do
                            Expect.equal p.Ip full.Packets.[p.Index].Ip "same bytes as in the whole file"
                    | Error _ -> ()

            testPropertyWithConfig
                TestUtil.codecConfig
                "a golden file with random bytes overwritten gives a result, never an exception"
            <| fun (pick: NonNegativeInt) (changes: (NonNegativeInt * byte) list) ->
                let files = goldenFiles ()

                if files.Length > 0 then
                    let bytes = Array.copy files.[pick.Get % files.Length]

                    for at, value in changes do
                        bytes.[at.Get % bytes.Length] <- value

                    match Pcap.read bytes with
                    | Ok file ->
                        for p in file.Packets do
                            Expect.isLessThanOrEqual p.Ip.Length (bytes.Length - 40) "IP bytes lie inside the file"
                            Expect.isLessThanOrEqual p.CapturedLength (bytes.Length - 40) "record inside the file"
                    | Error _ -> ()

            testCase "a known big-endian nanosecond raw-IP file reads field by field"
            <| fun () ->
                // Hand-assembled: magic a1b23c4d (BE, ns), version 2.4, zone 0, sigfigs 0,
                // snaplen 0x40000, link type 101; one record: 1 s + 500 ns, 4 of 8 bytes captured.
                let file =
                    TestUtil.hex
                        "a1b23c4d 0002 0004 00000000 00000000 00040000 00000065
                       00000001 000001f4 00000004 00000008 45000008"

                match Pcap.read file with
                | Error e -> failtestf "%A" e
                | Ok f ->
                    Expect.isTrue f.BigEndian "big-endian"
                    Expect.equal f.Resolution Nanoseconds "nanoseconds"
                    Expect.equal f.SnapLength 0x40000u "snap length"
                    Expect.equal f.LinkType 101 "raw"
                    let p = f.Packets.[0]
                    Expect.equal (p.TimestampSeconds, p.TimestampFraction) (1u, 500u) "timestamp"
                    Expect.equal (p.CapturedLength, p.OriginalLength) (4, 8) "lengths"
                    Expect.equal p.Ip [| 0x45uy; 0uy; 0uy; 8uy |] "IP bytes"

            testCase "an Ethernet frame with 802.1ad and 802.1Q tags yields the IP packet after both"
            <| fun () ->
                let ip = TestUtil.hex "60000000 0000 3b 40"
                let frame = frameFor LinkType.Ethernet 2 ip
                Expect.equal frame.Length (14 + 8 + ip.Length) "two tags"
                Expect.equal (Pcap.ipOffset LinkType.Ethernet 0 (ReadOnlySpan frame)) (Ok 22) "offset"

            testCase "each malformed file gives its own error"
            <| fun () ->
                let ip = TestUtil.hex "45000014"
                let file link frames = buildPcap false false link frames

                let expectError bytes expected =
                    Expect.equal (Pcap.read bytes) (Error expected) $"%A{expected}"

                expectError [||] (FileTooShort 0)
                expectError (Array.zeroCreate 23) (FileTooShort 23)
                expectError (Array.zeroCreate 24) (BadMagic 0u)
                let v3 = file 1u []
                v3.[4] <- 3uy
                expectError v3 (UnsupportedVersion(3, 4))
                expectError (file 105u []) (UnsupportedLinkType 105u)
                expectError (file 0x10000001u []) (UnsupportedLinkType 0x10000001u)
                let good = file 101u [ 0u, 0u, ip ]
                expectError (Array.append good [| 1uy; 2uy; 3uy |]) (RecordHeaderTruncated(1, good.Length))
                expectError good.[.. good.Length - 2] (RecordTooLong(0, 4, 3))
                let huge = file 101u [ 0u, 0u, ip ]
                BinaryPrimitives.WriteUInt32LittleEndian(Span(huge, 32, 4), 0xFFFFFFFFu)
                expectError huge (RecordTooLong(0, Int32.MaxValue, 4))
                expectError (file 1u [ 0u, 0u, Array.zeroCreate 13 ]) (LinkHeaderTruncated(0, 14, 13))
                expectError (file 113u [ 0u, 0u, Array.zeroCreate 15 ]) (LinkHeaderTruncated(0, 16, 15))
                expectError (file 276u [ 0u, 0u, Array.zeroCreate 19 ]) (LinkHeaderTruncated(0, 20, 19))
                expectError (file 101u [ 0u, 0u, [||] ]) (LinkHeaderTruncated(0, 1, 0))
                let arp = Array.append (Array.zeroCreate 12) [| 0x08uy; 0x06uy |]
                expectError (file 1u [ 0u, 0u, arp ]) (NotIp(0, 0x0806))
                expectError (file 101u [ 0u, 0u, [| 0x55uy |] ]) (NotIp(0, 5))
                let vlanOnly = Array.append (Array.zeroCreate 12) [| 0x81uy; 0x00uy; 0uy; 1uy |]
                expectError (file 1u [ 0u, 0u, vlanOnly ]) (LinkHeaderTruncated(0, 18, 16))
        ]

// --- FieldTable -------------------------------------------------------------------------------

let private fieldTableTests =
    testList
        "tshark field table"
        [
            testCase "parses names, drops empty cells and keeps every occurrence of a repeated field"
            <| fun () ->
                let rows =
                    FieldTable.parse "frame.number\tip.src\tudp.length\n1\t10.0.0.2,10.0.0.1\t\n2\t10.0.0.1\t27\n"

                Expect.equal rows.Length 2 "rows"
                Expect.equal (FieldTable.values "ip.src" rows.[0]) [| "10.0.0.2"; "10.0.0.1" |] "both occurrences"
                Expect.equal (FieldTable.tryFirst "ip.src" rows.[0]) (Some "10.0.0.2") "outer first"
                Expect.isFalse (rows.[0].ContainsKey "udp.length") "empty cell absent"
                Expect.equal (FieldTable.tryFirstNumber "udp.length" rows.[1]) (Some 27L) "decimal"

            testCase "reads tshark's decimal and hexadecimal numbers"
            <| fun () ->
                Expect.equal (FieldTable.tryNumber "0x4d30") (Some 0x4d30L) "hex"
                Expect.equal (FieldTable.tryNumber "0x0002") (Some 2L) "padded hex"
                Expect.equal (FieldTable.tryNumber "3382976480") (Some 3382976480L) "decimal beyond int32"
                Expect.equal (FieldTable.tryNumber "10.0.0.1") None "not a number"
        ]

// --- The dissector: known answers and hostile input -------------------------------------------

/// Every frame of every capture, as (capture name, IP bytes).
let private goldenPackets =
    lazy
        (captureNames ()
         |> Array.collect (fun n -> (loadCapture n).File.Packets |> Array.map (fun p -> n, p.Ip)))

/// Fails unless everything `d` locates lies inside the `input.Length` bytes it was read from.
let rec private expectInside (inputLength: int) (d: Dissect.Dissection) =
    let ip = d.Ip
    Expect.isLessThanOrEqual ip.Bytes.Length inputLength "the packet lies inside the input"
    Expect.isGreaterThanOrEqual ip.UpperOffset 0 "upper layer starts inside"
    Expect.isLessThanOrEqual (ip.UpperOffset + ip.UpperLength) ip.Bytes.Length "upper layer ends inside"

    match d.Transport with
    | None -> ()
    | Some(Dissect.Tcp(th, _)) ->
        Expect.isLessThanOrEqual (th.OptionsOffset + th.OptionsLength) th.PayloadOffset "TCP options inside"
        Expect.equal (th.PayloadOffset + th.PayloadLength) d.Message.Length "TCP payload inside"
    | Some(Dissect.Udp u) ->
        Expect.isLessThanOrEqual (u.PayloadOffset + u.PayloadLength) d.Message.Length "UDP payload inside"
    | Some(Dissect.Icmp(m, quoted)) ->
        Expect.equal (m.DataOffset + m.DataLength) d.Message.Length "ICMP body inside"
        quoted |> Option.iter (expectInside m.DataLength)

let private dissectorTests =
    testList
        "dissector"
        [
            testCase "reads an IPv4/UDP packet computed by hand"
            <| fun () ->
                // RFC 791 header: version 4, IHL 5, total length 28, id 0x1c46, DF, TTL 64, UDP,
                // 10.0.0.1 -> 10.0.0.2, then an 8-byte UDP header (port 53 -> 53, length 8, no
                // checksum, which IPv4 allows: RFC 768). The header checksum 0x0a89 was computed
                // by hand: the one's complement sum of the nine other words is 0xf576, whose
                // complement is 0x0a89.
                let ip =
                    TestUtil.hex "4500001c 1c464000 40110a89 0a000001 0a000002 00350035 00080000"

                match Dissect.dissect ip None with
                | Error e -> failtest e
                | Ok d ->
                    match d.Ip.Header, d.Transport with
                    | Dissect.V4 h, Some(Dissect.Udp u) ->
                        Expect.equal (h.HeaderLength, h.TotalLength) (20, 28) "lengths"
                        Expect.equal (h.Identification, h.DontFragment, h.Ttl) (0x1c46us, true, 64uy) "fields"
                        Expect.equal (string h.Source, string h.Destination) ("10.0.0.1", "10.0.0.2") "addresses"
                        Expect.equal h.HeaderChecksum 0x0a89us "header checksum"
                        Expect.equal (u.SourcePort, u.DestinationPort, u.Length) (53us, 53us, 8) "UDP"
                        // The UDP builder always computes a checksum, so only the IPv4 header
                        // comes back byte for byte.
                        Expect.equal (Dissect.rebuild d).[..19] ip.[..19] "IPv4 header rebuilt"
                    | other -> failtestf "%A" other

            testCase "walks hop-by-hop, destination options and fragment headers, and stops at the fragment data"
            <| fun () ->
                let ip =
                    TestUtil.hex
                        "60000000 0020 00 40 fd000000000000000000000000000001 fd000000000000000000000000000002
                       3c00 0104 00000000
                       2c00 0104 00000000
                       3a00 00b9 12345678
                       80000000 00010001"

                match Dissect.dissect ip None with
                | Error e -> failtest e
                | Ok d ->
                    match d.Ip.Header with
                    | Dissect.V6(h, ext, chain) ->
                        Expect.equal h.NextHeader IpProtocol.HopByHop "first"

                        Expect.equal
                            (chain |> List.map (fun e -> e.Type, e.Offset, e.Length))
                            [
                                IpProtocol.HopByHop, 40, 8
                                IpProtocol.Ipv6DestinationOptions, 48, 8
                                IpProtocol.Ipv6Fragment, 56, 8
                            ]
                            "chain"

                        Expect.equal
                            (d.Ip.UpperProtocol, d.Ip.UpperOffset, d.Ip.UpperLength)
                            (IpProtocol.Icmpv6, 64, 8)
                            "upper"
                        // 0x00b9: offset 23 units (184 bytes), M set.
                        let f = ext.Fragment.Value
                        Expect.equal (f.Offset, f.MoreFragments, f.Identification) (184, true, 0x12345678u) "fragment"
                        Expect.isNone d.Transport "a later fragment has no transport header"
                        Expect.equal (Dissect.rebuild d) ip "rebuilt"
                    | Dissect.V4 _ -> failtest "IPv6"

            testCase "refuses an extension header that runs past the payload with the parser's error"
            <| fun () ->
                // A Hop-by-Hop header saying 16 bytes (Hdr Ext Len 1) in an 8-byte payload.
                let ip =
                    TestUtil.hex
                        "60000000 0008 00 40 fd000000000000000000000000000001 fd000000000000000000000000000002
                       3a01 0000 00000000"

                Expect.equal
                    (Dissect.dissect ip None)
                    (Error $"IPv6 extensions: %A{Truncated(56, 48)}")
                    "hop-by-hop of 16 bytes in an 8-byte payload"

            testCase "a type 0 Routing header with segments left puts its last address in the pseudo-header"
            <| fun () ->
                let (_, frame7) =
                    goldenPackets.Value
                    |> Array.filter (fun (n, _) -> n = "ipv6-extension-headers")
                    |> fun frames -> frames.[6]

                match Dissect.dissect frame7 None with
                | Error e -> failtest e
                | Ok d ->
                    // capture.sh: scapy's third echo request routes via fd00::3, segments left 1.
                    Expect.equal (string (Dissect.checksumDestination d.Ip)) "fd00::3" "final destination"
                    Expect.isSome d.Transport "its ICMPv6 checksum verifies against fd00::3"

            testPropertyWithConfig
                TestUtil.codecConfig
                "a golden packet with random bytes overwritten and cut short dissects or fails, never throws, and locates nothing outside itself"
            <| fun (pick: NonNegativeInt) (changes: (NonNegativeInt * byte) list) (cut: NonNegativeInt) ->
                let packets = goldenPackets.Value

                if packets.Length > 0 then
                    let _, original = packets.[pick.Get % packets.Length]
                    let bytes = Array.copy original

                    for at, value in changes do
                        bytes.[at.Get % bytes.Length] <- value

                    // Half the cases keep the whole packet so mutations reach the deeper layers.
                    let input =
                        if cut.Get % 2 = 0 then
                            bytes
                        else
                            bytes.[.. (cut.Get % bytes.Length) - 1]

                    match Dissect.dissect input None with
                    | Ok d -> expectInside input.Length d
                    | Error e ->
                        // The chain walk re-reads what parseExtensions accepted: it must agree.
                        Expect.isFalse (e.StartsWith "chain walk") e
        ]

/// Every golden test: the reader's own tests, the dissector's, one list per capture, the
/// fragmented captures against Fragmentation, then scenario facts.
[<Tests>]
let tests =
    testList
        "Golden"
        [
            pcapReaderTests
            fieldTableTests
            dissectorTests
            testCase "the captures and their tshark fields are copied next to the test binary"
            <| fun () ->
                let names = captureNames ()
                Expect.isGreaterThanOrEqual names.Length 11 "captures"

                for n in names do
                    Expect.isTrue (File.Exists(Path.Combine(goldenDirectory, n + ".fields.tsv"))) $"{n}.fields.tsv"
            testList "captures" [ for name in captureNames () -> captureTests name ]
            fragmentationTests
            scenarioTests
        ]
