/// Golden packets: traffic the real Linux kernel sent and answered (captured by capture.sh in a
/// private network namespace), checked against tshark's own dissection of the same frames.
///
/// Today the packets are read with a small hand-written field reader (`HandReader`) and the
/// Checksum module; once the Wire parsers land, the comparisons in `agreesWithTshark` can be
/// pointed at them: `FieldTable` already gives, per frame, every tshark field by name.
module NetStack.Tests.GoldenTests

open System
open System.Buffers.Binary
open System.IO
open Expecto
open FsCheck
open FsCheck.FSharp
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

/// A deliberately small, independent reader of the few IP fields the golden checks need. It is
/// not the stack's parser (those live in NetStack.Core.Wire); it exists so these tests do not
/// depend on the code they will later check.
module HandReader =
    /// What the hand reader found in one IP packet.
    type IpView =
        {
            /// 4 or 6.
            Version: int
            /// IPv4: IHL in bytes. IPv6: 40.
            HeaderLength: int
            /// IPv4 total length, or 40 + IPv6 payload length: where the packet ends.
            TotalLength: int
            /// IPv4 identification; IPv6 Fragment header identification (0 without one).
            Identification: uint32
            /// IPv4 DF flag.
            DontFragment: bool
            /// IPv4 MF flag, or the IPv6 Fragment header's M flag.
            MoreFragments: bool
            /// Fragment offset in 8-byte units (RFC 791 §3.1, RFC 8200 §4.5).
            FragmentOffset: int
            /// True when an IPv6 Fragment header is present.
            HasFragmentHeader: bool
            /// IPv4 TTL or IPv6 hop limit.
            HopLimit: int
            /// IPv4 protocol or IPv6 fixed header's Next Header.
            FirstProtocol: byte
            /// The upper-layer protocol after any IPv6 extension headers.
            UpperProtocol: byte
            /// Where the upper-layer header starts.
            UpperOffset: int
            /// Upper-layer bytes, from `UpperOffset` to `TotalLength`.
            UpperLength: int
            /// Source address as text (IPv6 in RFC 5952 compressed form, as tshark prints it).
            Source: string
            /// Destination address as text.
            Destination: string
            /// IPv6 flow label (0 for IPv4).
            FlowLabel: int
            /// The running sum of the pseudo-header for the upper-layer checksum (RFC 768/793,
            /// RFC 8200 §8.1: with a Routing header, the final destination).
            PseudoHeader: uint64
        }

        /// True for the first fragment of a datagram or an unfragmented one: the upper-layer
        /// header is in this packet.
        member v.CarriesUpperHeader = v.FragmentOffset = 0

        /// True when the whole upper-layer message is in this packet (checksum verifiable).
        member v.IsWholeDatagram = v.FragmentOffset = 0 && not v.MoreFragments

    let private u16 (b: byte[]) (at: int) =
        int (BinaryPrimitives.ReadUInt16BigEndian(ReadOnlySpan(b, at, 2)))

    /// Reads the IPv4 or IPv6 header (and IPv6 extension headers) of `ip`.
    let read (ip: byte[]) : Result<IpView, string> =
        if ip.Length < 1 then
            Error "empty"
        else
            match ip.[0] >>> 4 with
            | 4uy ->
                let ihl = int (ip.[0] &&& 0x0Fuy) * 4

                if ip.Length < 20 || ihl < 20 || ip.Length < ihl then
                    Error "IPv4 header truncated"
                else
                    let total = u16 ip 2
                    let flagsFrag = u16 ip 6
                    let src = Ipv4Address.Read(ReadOnlySpan(ip, 12, 4))
                    let dst = Ipv4Address.Read(ReadOnlySpan(ip, 16, 4))

                    if total < ihl || total > ip.Length then
                        Error "IPv4 total length"
                    else
                        Ok
                            {
                                Version = 4
                                HeaderLength = ihl
                                TotalLength = total
                                Identification = uint32 (u16 ip 4)
                                DontFragment = flagsFrag &&& 0x4000 <> 0
                                MoreFragments = flagsFrag &&& 0x2000 <> 0
                                FragmentOffset = flagsFrag &&& 0x1FFF
                                HasFragmentHeader = false
                                HopLimit = int ip.[8]
                                FirstProtocol = ip.[9]
                                UpperProtocol = ip.[9]
                                UpperOffset = ihl
                                UpperLength = total - ihl
                                Source = string src
                                Destination = string dst
                                FlowLabel = 0
                                PseudoHeader = Checksum.pseudoHeaderV4 src dst ip.[9] (total - ihl)
                            }
            | 6uy ->
                if ip.Length < 40 then
                    Error "IPv6 header truncated"
                else
                    let total = 40 + u16 ip 4

                    if total > ip.Length then
                        Error "IPv6 payload length"
                    else
                        let src = Ipv6Address.Read(ReadOnlySpan(ip, 8, 16))
                        let mutable dst = Ipv6Address.Read(ReadOnlySpan(ip, 24, 16))
                        let mutable next = ip.[6]
                        let mutable at = 40
                        let mutable fragment = None
                        let mutable error = None
                        let mutable walking = true

                        // RFC 8200 §4: follow Next Header through the extension headers this
                        // capture set contains; stop at the first upper-layer protocol.
                        while walking && error.IsNone do
                            match next with
                            | IpProtocol.HopByHop
                            | IpProtocol.Ipv6Routing
                            | IpProtocol.Ipv6DestinationOptions when at + 8 <= total ->
                                let length = (int ip.[at + 1] + 1) * 8

                                if at + length > total then
                                    error <- Some "extension header length"
                                else
                                    // A type 0 Routing header (RFC 2460 §4.4) with segments left
                                    // names the final destination last: that one goes in the
                                    // pseudo-header (RFC 8200 §8.1).
                                    if next = IpProtocol.Ipv6Routing && ip.[at + 2] = 0uy && ip.[at + 3] > 0uy then
                                        dst <- Ipv6Address.Read(ReadOnlySpan(ip, at + length - 16, 16))

                                    next <- ip.[at]
                                    at <- at + length
                            | IpProtocol.Ipv6Fragment when at + 8 <= total ->
                                let offsetFlags = u16 ip (at + 2)
                                let ident = BinaryPrimitives.ReadUInt32BigEndian(ReadOnlySpan(ip, at + 4, 4))
                                fragment <- Some(offsetFlags >>> 3, offsetFlags &&& 1 = 1, ident)
                                next <- ip.[at]
                                at <- at + 8
                            | IpProtocol.HopByHop
                            | IpProtocol.Ipv6Routing
                            | IpProtocol.Ipv6DestinationOptions
                            | IpProtocol.Ipv6Fragment -> error <- Some "extension header truncated"
                            | _ -> walking <- false

                        match error with
                        | Some e -> Error e
                        | None ->
                            let offset, more, ident = defaultArg fragment (0, false, 0u)

                            Ok
                                {
                                    Version = 6
                                    HeaderLength = 40
                                    TotalLength = total
                                    Identification = ident
                                    DontFragment = false
                                    MoreFragments = more
                                    FragmentOffset = offset
                                    HasFragmentHeader = fragment.IsSome
                                    HopLimit = int ip.[7]
                                    FirstProtocol = ip.[6]
                                    UpperProtocol = next
                                    UpperOffset = at
                                    UpperLength = total - at
                                    Source = string src
                                    Destination = string (Ipv6Address.Read(ReadOnlySpan(ip, 24, 16)))
                                    FlowLabel =
                                        int (BinaryPrimitives.ReadUInt32BigEndian(ReadOnlySpan(ip, 0, 4)) &&& 0xFFFFFu)
                                    PseudoHeader = Checksum.pseudoHeaderV6 src dst next (total - at)
                                }
            | v -> Error $"version {v}"

    /// Reads `ip`, failing the calling test when it is not a readable IP packet.
    let readOrFail (ip: byte[]) : IpView =
        match read ip with
        | Ok v -> v
        | Error e -> failwithf "hand reader: %s" e

// --- Checks against one capture -----------------------------------------------------------

/// The upper-layer checksum, verified over the whole message, or None when this packet does not
/// hold a whole message (a fragment) or the protocol has no checksum we check.
let private upperChecksumVerifies (ip: byte[]) (view: HandReader.IpView) : bool option =
    if not view.IsWholeDatagram then
        None
    else
        let upper = ReadOnlySpan(ip, view.UpperOffset, view.UpperLength)

        match view.Version, view.UpperProtocol with
        | _, IpProtocol.Tcp -> Some(Checksum.verify view.PseudoHeader upper)
        // RFC 768: a zero UDP checksum over IPv4 means "not computed".
        | 4, IpProtocol.Udp when upper.Length >= 8 && BinaryPrimitives.ReadUInt16BigEndian(upper.Slice 6) = 0us -> None
        | _, IpProtocol.Udp -> Some(Checksum.verify view.PseudoHeader upper)
        // RFC 792: the ICMP checksum covers the ICMP message only, no pseudo-header.
        | 4, IpProtocol.Icmp -> Some(Checksum.verify 0UL upper)
        // RFC 4443 §2.3: ICMPv6 includes the pseudo-header.
        | 6, IpProtocol.Icmpv6 -> Some(Checksum.verify view.PseudoHeader upper)
        | _ -> None

/// Fails unless tshark's first value of `field` equals `expected` (numbers compared as numbers).
let private expectNumber (row: FieldRow) (frame: int) (field: string) (expected: int64) =
    match FieldTable.tryFirstNumber field row with
    | Some actual -> Expect.equal actual expected $"frame {frame}: {field}"
    | None -> failtestf "frame %d: tshark has no %s (expected %d)" frame field expected

/// Fails unless tshark's first value of `field` is exactly `expected`.
let private expectText (row: FieldRow) (frame: int) (field: string) (expected: string) =
    Expect.equal (FieldTable.tryFirst field row) (Some expected) $"frame {frame}: {field}"

/// The hand reader's view of each frame equals tshark's, field by field, for the outer IP
/// header and, where this packet carries it, the transport header.
let private agreesWithTshark (ip: byte[]) (row: FieldRow) (frame: int) =
    let v = HandReader.readOrFail ip
    let num = expectNumber row frame
    let text = expectText row frame
    num "ip.version" (int64 v.Version)

    if v.Version = 4 then
        num "ip.hdr_len" (int64 v.HeaderLength)
        num "ip.len" (int64 v.TotalLength)
        num "ip.id" (int64 v.Identification)
        num "ip.flags.df" (if v.DontFragment then 1L else 0L)
        num "ip.flags.mf" (if v.MoreFragments then 1L else 0L)
        num "ip.frag_offset" (int64 v.FragmentOffset)
        num "ip.ttl" (int64 v.HopLimit)
        num "ip.proto" (int64 v.FirstProtocol)
        num "ip.checksum" (int64 (BinaryPrimitives.ReadUInt16BigEndian(ReadOnlySpan(ip, 10, 2))))
        text "ip.src" v.Source
        text "ip.dst" v.Destination
    else
        num "ipv6.plen" (int64 (v.TotalLength - 40))
        num "ipv6.nxt" (int64 v.FirstProtocol)
        num "ipv6.hlim" (int64 v.HopLimit)
        num "ipv6.flow" (int64 v.FlowLabel)
        text "ipv6.src" v.Source
        text "ipv6.dst" v.Destination

        if v.HasFragmentHeader then
            num "ipv6.fraghdr.offset" (int64 v.FragmentOffset)
            num "ipv6.fraghdr.more" (if v.MoreFragments then 1L else 0L)
            num "ipv6.fraghdr.ident" (int64 v.Identification)

    if v.CarriesUpperHeader then
        let at = v.UpperOffset

        let u16 o =
            int64 (BinaryPrimitives.ReadUInt16BigEndian(ReadOnlySpan(ip, at + o, 2)))

        let u32 o =
            int64 (BinaryPrimitives.ReadUInt32BigEndian(ReadOnlySpan(ip, at + o, 4)))

        match v.UpperProtocol with
        | IpProtocol.Tcp ->
            num "tcp.srcport" (u16 0)
            num "tcp.dstport" (u16 2)
            num "tcp.seq_raw" (u32 4)
            num "tcp.ack_raw" (u32 8)
            num "tcp.hdr_len" (int64 (ip.[at + 12] >>> 4) * 4L)
            num "tcp.flags" (u16 12 &&& 0x0FFFL)
            num "tcp.window_size_value" (u16 14)
            num "tcp.checksum" (u16 16)
            num "tcp.urgent_pointer" (u16 18)
        | IpProtocol.Udp ->
            num "udp.srcport" (u16 0)
            num "udp.dstport" (u16 2)
            num "udp.length" (u16 4)
            num "udp.checksum" (u16 6)
        | IpProtocol.Icmp ->
            num "icmp.type" (int64 ip.[at])
            num "icmp.code" (int64 ip.[at + 1])
            num "icmp.checksum" (u16 2)
        | IpProtocol.Icmpv6 ->
            num "icmpv6.type" (int64 ip.[at])
            num "icmpv6.code" (int64 ip.[at + 1])
            num "icmpv6.checksum" (u16 2)
        | other -> failtestf "frame %d: unexpected upper-layer protocol %d" frame other

/// The tests run against one capture.
let private captureTests (name: string) =
    let load () = loadCapture name

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

            testCase "every frame holds the whole IP packet, and its length on the wire is tshark's"
            <| fun () ->
                let c = load ()

                for p, row in Array.zip c.File.Packets c.Fields do
                    let v = HandReader.readOrFail p.Ip

                    Expect.isLessThanOrEqual
                        v.TotalLength
                        p.Ip.Length
                        $"frame {p.Index + 1}: IP length within the frame"

                    expectNumber row (p.Index + 1) "frame.len" (int64 p.OriginalLength)

            testCase "every IPv4 header checksum verifies, as tshark agrees"
            <| fun () ->
                let c = load ()

                for p, row in Array.zip c.File.Packets c.Fields do
                    let v = HandReader.readOrFail p.Ip

                    if v.Version = 4 then
                        Expect.isTrue
                            (Checksum.verify 0UL (ReadOnlySpan(p.Ip, 0, v.HeaderLength)))
                            $"frame {p.Index + 1}: IPv4 header checksum"

                        // tshark's checksum status: 1 = good (0 = bad, 2 = not checked).
                        expectNumber row (p.Index + 1) "ip.checksum.status" 1L

            testCase "every whole TCP, UDP, ICMP and ICMPv6 message's checksum verifies, as tshark agrees"
            <| fun () ->
                let c = load ()

                for p, row in Array.zip c.File.Packets c.Fields do
                    let v = HandReader.readOrFail p.Ip

                    match upperChecksumVerifies p.Ip v with
                    | None -> ()
                    | Some ok ->
                        Expect.isTrue ok $"frame {p.Index + 1}: protocol {v.UpperProtocol} checksum"

                        let statusField =
                            match v.UpperProtocol with
                            | IpProtocol.Tcp -> "tcp.checksum.status"
                            | IpProtocol.Udp -> "udp.checksum.status"
                            | IpProtocol.Icmp -> "icmp.checksum.status"
                            | _ -> "icmpv6.checksum.status"

                        expectNumber row (p.Index + 1) statusField 1L

            testCase "the hand reader and tshark agree on every header field they both read"
            <| fun () ->
                let c = load ()

                for p, row in Array.zip c.File.Packets c.Fields do
                    agreesWithTshark p.Ip row (p.Index + 1)
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

// --- Hand reader: known answers ---------------------------------------------------------------

let private handReaderTests =
    testList
        "hand reader"
        [
            testCase "reads an IPv4 header computed by hand"
            <| fun () ->
                // RFC 791 header: version 4, IHL 5, total length 28, id 0x1c46, DF, TTL 64, UDP,
                // 10.0.0.1 -> 10.0.0.2, then an 8-byte UDP header (port 53 -> 53, length 8). The
                // header checksum 0x0a89 was computed by hand: the one's complement sum of the nine
                // other words is 0xf576, whose complement is 0x0a89.
                let ip =
                    TestUtil.hex "4500001c 1c464000 40110a89 0a000001 0a000002 00350035 00080000"

                let v = HandReader.readOrFail ip
                Expect.equal (v.Version, v.HeaderLength, v.TotalLength) (4, 20, 28) "lengths"
                Expect.equal (v.Identification, v.DontFragment, v.HopLimit) (0x1c46u, true, 64) "fields"
                Expect.equal (v.UpperProtocol, v.UpperOffset, v.UpperLength) (IpProtocol.Udp, 20, 8) "upper"
                Expect.equal (v.Source, v.Destination) ("10.0.0.1", "10.0.0.2") "addresses"
                Expect.isTrue (Checksum.verify 0UL (ReadOnlySpan(ip, 0, 20))) "header checksum"

            testCase "walks hop-by-hop, destination options and fragment headers to the upper layer"
            <| fun () ->
                let ip =
                    TestUtil.hex
                        "60000000 0020 00 40 fd000000000000000000000000000001 fd000000000000000000000000000002
                       3c00 0104 00000000
                       2c00 0104 00000000
                       3a00 00b9 12345678
                       80000000 00010001"

                let v = HandReader.readOrFail ip
                Expect.equal v.FirstProtocol IpProtocol.HopByHop "first"
                Expect.equal (v.UpperProtocol, v.UpperOffset, v.UpperLength) (IpProtocol.Icmpv6, 64, 8) "upper"

                Expect.equal
                    (v.FragmentOffset, v.MoreFragments, v.Identification)
                    (0xb9 >>> 3, true, 0x12345678u)
                    "fragment"

                Expect.equal (v.Source, v.Destination) ("fd00::1", "fd00::2") "addresses"

            testCase "refuses an extension header that runs past the payload"
            <| fun () ->
                let ip =
                    TestUtil.hex
                        "60000000 0008 00 40 fd000000000000000000000000000001 fd000000000000000000000000000002
                       3a01 0000 00000000"

                Expect.isError (HandReader.read ip) "hop-by-hop of 16 bytes in an 8-byte payload"
        ]

/// Every golden test: the reader's own tests, then one list per capture, then scenario facts.
[<Tests>]
let tests =
    testList
        "Golden"
        [
            pcapReaderTests
            fieldTableTests
            handReaderTests
            testCase "the captures and their tshark fields are copied next to the test binary"
            <| fun () ->
                let names = captureNames ()
                Expect.isGreaterThanOrEqual names.Length 11 "captures"

                for n in names do
                    Expect.isTrue (File.Exists(Path.Combine(goldenDirectory, n + ".fields.tsv"))) $"{n}.fields.tsv"
            testList "captures" [ for name in captureNames () -> captureTests name ]
            scenarioTests
        ]
