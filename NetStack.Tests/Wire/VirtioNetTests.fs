/// The virtio-net header codec (the TUN offload metadata), partial checksums, the TCP
/// super-segment writer, and the IP layer's receive of packets whose checksum the device vouches for.
module NetStack.Tests.VirtioNetTests

open System
open System.Buffers.Binary
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Core.Stack
open NetStack.Core.Tcp
open NetStack.Tests.TestUtil

let private any<'T> = ArbMap.defaults |> ArbMap.generate<'T>

/// Headers the codec accepts: known flags, a known gso type (ECN only on TCP), a gso_size
/// above 0 for GSO, any 16-bit offsets.
let private headerGen =
    gen {
        let! flags = Gen.elements [ 0uy; 1uy; 2uy; 3uy ]

        let! gso =
            Gen.elements
                [
                    VirtioGsoType.None
                    VirtioGsoType.TcpV4
                    VirtioGsoType.TcpV6
                    VirtioGsoType.UdpL4
                    VirtioGsoType.TcpV4 ||| VirtioGsoType.Ecn
                    VirtioGsoType.TcpV6 ||| VirtioGsoType.Ecn
                ]

        let! hdrLen = any<uint16>
        let! size = any<uint16>
        let! start = any<uint16>
        let! offset = any<uint16>

        return
            {
                Flags = LanguagePrimitives.EnumOfValue flags
                GsoType = gso
                HeaderLength = hdrLen
                GsoSize = (if gso = VirtioGsoType.None || size > 0us then size else 1us)
                ChecksumStart = start
                ChecksumOffset = offset
            }
    }

let private encode (h: VirtioNetHeader) =
    let bytes = Array.zeroCreate<byte> VirtioNet.HeaderLength
    VirtioNet.write h (Span bytes) |> ignore
    bytes

let private parse (bytes: byte[]) = VirtioNet.parse (ReadOnlySpan bytes)

let private src4 = Ipv4Address.Parse "10.95.0.1"
let private dst4 = Ipv4Address.Parse "10.95.0.2"
let private src6 = Ipv6Address.Parse "fd95::1"
let private dst6 = Ipv6Address.Parse "fd95::2"

let private segment (seq: uint32) (flags: TcpFlags) (length: int) : OutgoingSegment =
    {
        Seq = SeqNum seq
        Ack = SeqNum 777u
        Flags = flags
        Window = 4096us
        Options = TcpOptions.None
        DataPosition = 0L
        DataLength = length
    }

/// A TCP super-segment written by IpLayer.writeTcpSegments with `payload` in place.
let private superSegment (v6: bool) (flags: TcpFlags) (payload: byte[]) =
    let source, destination = if v6 then V6 src6, V6 dst6 else V4 src4, V4 dst4

    let seg = segment 1000u (TcpFlags.Ack) 1448
    let buffer = Array.zeroCreate<byte> 70000
    let offset = IpLayer.tcpPayloadOffset source seg.Options
    payload.CopyTo(buffer, offset)

    let n =
        IpLayer.writeTcpSegments source destination 40000us 80us 9us seg flags payload.Length (Span buffer)

    buffer.[.. n - 1], offset

let private ipHeader v6 = if v6 then 40 else 20

/// A TCP packet with `seg` and `payload` between the test addresses: the packet with its full
/// checksum, its IP header length, and a copy whose checksum field holds only the pseudo-header
/// sum, as a sender using checksum offload writes it.
let private withPartialChecksum (v6: bool) (payload: byte[]) (seg: OutgoingSegment) =
    let source, destination = if v6 then V6 src6, V6 dst6 else V4 src4, V4 dst4
    let buffer = Array.zeroCreate<byte> 70000

    let n =
        IpLayer.writeTcp source destination 1234us 80us 1us seg (ReadOnlySpan payload) (Span buffer)

    let full = buffer.[.. n - 1]
    let ip = ipHeader v6
    let partial = Array.copy full

    let pseudo =
        if v6 then
            Checksum.pseudoHeaderV6 src6 dst6 IpProtocol.Tcp (n - ip)
        else
            Checksum.pseudoHeaderV4 src4 dst4 IpProtocol.Tcp (n - ip)

    BinaryPrimitives.WriteUInt16BigEndian(Span(partial, ip + 16, 2), VirtioNet.partialChecksum pseudo)
    full, ip, partial

let private receiveTrusted (trusted: bool) (packet: byte[]) =
    let state =
        IpLayer.create (IpLayer.config (ValueSome dst4) (ValueSome dst6) 1500) 0L

    let struct (_, r) = IpLayer.receiveChecked 1L (ReadOnlySpan packet) trusted state

    r

[<Tests>]
let tests =
    testList
        "VirtioNet"
        [
            testCase "a header reads as the kernel lays it out (little-endian fields)"
            <| fun () ->
                let bytes = hex "01 01 36 00 a8 05 14 00 10 00"

                match parse bytes with
                | Ok h ->
                    Expect.isTrue h.NeedsChecksum "NEEDS_CSUM"
                    Expect.isFalse h.DataValid "no DATA_VALID"
                    Expect.equal h.Segmentation VirtioGsoType.TcpV4 "TCPV4"
                    Expect.equal h.HeaderLength 54us "hdr_len"
                    Expect.equal h.GsoSize 1448us "gso_size"
                    Expect.equal h.ChecksumStart 20us "csum_start"
                    Expect.equal h.ChecksumOffset 16us "csum_offset"
                    Expect.equal (encode h) bytes "writes back the same bytes"
                | Error e -> failtestf "refused: %A" e

            testPropertyWithConfig codecConfig "every header the codec accepts survives write then parse"
            <| Prop.forAll (Arb.fromGen headerGen) (fun h -> parse (encode h) = Ok h)

            testPropertyWithConfig codecConfig "parse never throws, and what it accepts it writes back byte for byte"
            <| fun (bytes: byte[]) ->
                match parse bytes with
                | Ok h -> encode h = bytes.[.. VirtioNet.HeaderLength - 1]
                | Error _ -> true

            testCase "fewer than 10 bytes are Truncated"
            <| fun () -> Expect.equal (parse (Array.zeroCreate 9)) (Error(Truncated(10, 9))) "truncated"

            testCase "an unknown gso type, UFO, ECN on UDP, GSO with gso_size 0 and unknown flags are refused"
            <| fun () ->
                for bad in
                    [
                        "00 02 00 00 00 05 00 00 00 00" // gso 2: unknown
                        "00 03 00 00 00 05 00 00 00 00" // UFO
                        "00 85 00 00 00 05 00 00 00 00" // ECN on UDP_L4
                        "00 01 00 00 00 00 00 00 00 00" // TCPV4, gso_size 0
                        "04 00 00 00 00 00 00 00 00 00" // RSC_INFO
                    ] do
                    Expect.isError (parse (hex bad)) bad

            testPropertyWithConfig codecConfig "completing a partial TCP checksum gives the full checksum"
            <| fun (payload: byte[]) (v6: bool) ->
                let full, ip, partial =
                    withPartialChecksum v6 payload (segment 5u (TcpFlags.Ack ||| TcpFlags.Psh) payload.Length)

                let header = VirtioNet.tcpSegments v6 ip 20 0
                Expect.isTrue (VirtioNet.completeChecksum header (Span partial)) "completed"
                partial = full

            testPropertyWithConfig
                codecConfig
                "headers written alone, checksum completed over the payload in two pieces, equal the whole packet (gather write)"
            <| fun (payload: byte[]) (v6: bool) (cut: uint16) ->
                let source, destination = if v6 then V6 src6, V6 dst6 else V4 src4, V4 dst4
                let seg = segment 5u (TcpFlags.Ack ||| TcpFlags.Psh) payload.Length
                let full = Array.zeroCreate<byte> 70000

                let n =
                    IpLayer.writeTcp source destination 1234us 80us 1us seg (ReadOnlySpan payload) (Span full)

                // The buffer gets only the headers (writeTcpSegments leaves the payload's place
                // alone); the payload stays where it is, as a ring that wraps after `cut` bytes
                // (odd cuts included).
                let head = Array.zeroCreate<byte> 70000

                let length =
                    IpLayer.writeTcpSegments source destination 1234us 80us 1us seg seg.Flags payload.Length (Span head)

                let headerBytes = length - payload.Length
                let cut = int cut % (payload.Length + 1)
                let first = ReadOnlySpan(payload, 0, cut)

                let sum =
                    Checksum.sumAfter (Checksum.sum 0UL first) cut (ReadOnlySpan(payload, cut, payload.Length - cut))

                IpLayer.completeTcpChecksum source headerBytes sum (Span head)
                length = n && Array.append head.[.. headerBytes - 1] payload = full.[.. n - 1]

            testPropertyWithConfig
                codecConfig
                "moving a header's offsets past a link-layer header and back gives the same header"
            <| Prop.forAll (Arb.fromGen (Gen.zip headerGen (Gen.choose (0, 64)))) (fun (h, n) ->
                let fits (value: uint16) = int value + n <= 0xFFFF

                match VirtioNet.shift n h with
                | ValueSome moved ->
                    VirtioNet.shift -n moved = ValueSome h
                    && moved.GsoSize = h.GsoSize
                    && moved.ChecksumOffset = h.ChecksumOffset
                | ValueNone -> not (fits h.HeaderLength && (not h.NeedsChecksum || fits h.ChecksumStart)))

            testPropertyWithConfig
                codecConfig
                "taking off a link-layer header refuses exactly the offsets that pointed into it"
            <| Prop.forAll (Arb.fromGen (Gen.zip headerGen (Gen.choose (1, 64)))) (fun (h, n) ->
                let inside =
                    (h.NeedsChecksum && int h.ChecksumStart < n)
                    || (h.HeaderLength > 0us && int h.HeaderLength < n)

                (VirtioNet.shift -n h).IsNone = inside)

            testPropertyWithConfig
                codecConfig
                "a partial checksum completed in the frame with the moved header is the packet's full checksum"
            <| fun (payload: byte[]) (v6: bool) (link: byte[]) ->
                let full, ip, partial =
                    withPartialChecksum v6 payload (segment 9u TcpFlags.Ack payload.Length)

                // A link-layer header of 14 or 18 bytes (or any other length) in front.
                let frame = Array.append link partial

                match VirtioNet.shift link.Length (VirtioNet.tcpSegments v6 ip 20 0) with
                | ValueSome moved ->
                    Expect.isTrue (VirtioNet.completeChecksum moved (Span frame)) "completed"
                    frame.[.. link.Length - 1] = link && frame.[link.Length ..] = full
                | ValueNone -> false

            testPropertyWithConfig
                codecConfig
                "a super-segment, its checksum completed, is one valid TCP segment with every byte"
            <| fun (NonEmptyArray(payload: byte[])) (v6: bool) (fin: bool) ->
                let flags =
                    TcpFlags.Ack
                    ||| TcpFlags.Psh
                    ||| (if fin then
                             TcpFlags.Fin
                         else
                             LanguagePrimitives.EnumOfValue 0uy)

                let packet, offset = superSegment v6 flags payload
                let ip = ipHeader v6
                let header = VirtioNet.tcpSegments v6 ip (offset - ip) 1448
                Expect.equal header.Segmentation (if v6 then VirtioGsoType.TcpV6 else VirtioGsoType.TcpV4) "gso type"
                Expect.equal (int header.HeaderLength) offset "hdr_len covers IP and TCP headers"
                // Untouched, only a receiver that trusts the device takes it.
                let untouched = Array.copy packet
                Expect.equal (receiveTrusted true packet).Kind ReceivedKind.TcpSegment "trusted: taken"
                Expect.isTrue (VirtioNet.completeChecksum header (Span packet)) "completed"
                let checksumAt = ip + 16
                // The pseudo-header sum alone is a valid full checksum once in 65536 payloads
                // (when the payload's own sum is 0xFFFF); otherwise a full check refuses it.
                if
                    untouched.[checksumAt .. checksumAt + 1]
                    <> packet.[checksumAt .. checksumAt + 1]
                then
                    Expect.equal
                        (receiveTrusted false untouched).Kind
                        ReceivedKind.Dropped
                        "partial checksum fails a full check"

                let r = receiveTrusted false packet
                Expect.equal r.Kind ReceivedKind.TcpSegment "completed: a valid segment"
                Expect.equal r.Tcp.Flags flags "the last segment's flags"
                Expect.equal (packet.[offset..]) payload "the payload"
                true

            testPropertyWithConfig
                codecConfig
                "a USO super-datagram's headers, with the payload after them and the checksum completed, are the one whole datagram"
            <| fun (payload: byte[]) (v6: bool) (size: uint16) ->
                // What the kernel takes before cutting: one datagram over all the payload. Its
                // partial checksum completed the way the kernel would (skb_checksum_help) must
                // give exactly the datagram writeUdp writes.
                let source, destination = if v6 then V6 src6, V6 dst6 else V4 src4, V4 dst4
                let whole = Array.zeroCreate<byte> 70000

                let n =
                    IpLayer.writeUdp source destination 5000us 53us 7us (ReadOnlySpan payload) (Span whole)

                let packet = Array.zeroCreate<byte> 70000

                let length =
                    IpLayer.writeUdpSegments source destination 5000us 53us 7us payload.Length (Span packet)

                let ip = ipHeader v6
                Array.blit payload 0 packet (ip + 8) payload.Length
                let header = VirtioNet.udpSegments ip (1 + int size % 1472)
                Expect.equal header.Segmentation VirtioGsoType.UdpL4 "gso UDP_L4"
                Expect.equal (int header.HeaderLength) (ip + 8) "hdr_len covers the IP and UDP headers"
                Expect.isTrue (VirtioNet.completeChecksum header (Span packet)) "completed"
                length = n && packet.[.. length - 1] = whole.[.. n - 1]

            testPropertyWithConfig
                codecConfig
                "a USO super-datagram cut in software gives its datagrams, valid and in order, IPv4 identifications counting up"
            <| fun (payload: byte[]) (v6: bool) (size: uint16) ->
                let source, destination = if v6 then V6 src6, V6 dst6 else V4 src4, V4 dst4
                let size = 1 + int size % 1472
                let packet = Array.zeroCreate<byte> 70000

                let length =
                    IpLayer.writeUdpSegments source destination 5000us 53us 100us payload.Length (Span packet)

                let ip = ipHeader v6
                Array.blit payload 0 packet (ip + 8) payload.Length
                let datagrams = IpLayer.cutUdpSegments (ReadOnlySpan(packet, 0, length)) size
                let count = max 1 ((payload.Length + size - 1) / size)
                Expect.equal datagrams.Length count "one datagram per segment (one for no payload)"

                datagrams
                |> List.iteri (fun i d ->
                    let expected = payload.[i * size .. min payload.Length ((i + 1) * size) - 1]
                    let whole = Array.zeroCreate<byte> 2000

                    let n =
                        IpLayer.writeUdp
                            source
                            destination
                            5000us
                            53us
                            (100us + uint16 i)
                            (ReadOnlySpan expected)
                            (Span whole)

                    Expect.equal d whole.[.. n - 1] $"datagram {i} as writeUdp writes it")

                true

            testCase "cutting refuses what is not a UDP packet"
            <| fun () ->
                let packet, _ = superSegment false TcpFlags.Ack [| 1uy; 2uy; 3uy |]

                for bad, size in [ packet, 1000; [||], 1000; [| 0x45uy |], 1000 ] do
                    Expect.throwsT<ArgumentException>
                        (fun () -> IpLayer.cutUdpSegments (ReadOnlySpan bad) size |> ignore)
                        "not UDP"

            testCase "a USO super-datagram over the largest UDP payload is refused by the writer"
            <| fun () ->
                for v6, limit in [ false, IpLayer.MaxUdpPayloadV4; true, IpLayer.MaxUdpPayloadV6 ] do
                    let source, destination = if v6 then V6 src6, V6 dst6 else V4 src4, V4 dst4

                    Expect.throwsT<ArgumentException>
                        (fun () ->
                            IpLayer.writeUdpSegments
                                source
                                destination
                                1us
                                2us
                                1us
                                (limit + 1)
                                (Span(Array.zeroCreate 100))
                            |> ignore)
                        $"over {limit}"

            testCase "a super-segment over 65535 bytes is refused by the writer"
            <| fun () ->
                Expect.throwsT<ArgumentException>
                    (fun () -> superSegment false TcpFlags.Ack (Array.zeroCreate 65500) |> ignore)
                    "IPv4 total length"

            testCase "a trusted packet still has its IPv4 header and ICMP checksums checked"
            <| fun () ->
                let buffer = Array.zeroCreate<byte> 200

                let n =
                    IpLayer.writeEchoRequest (V4 src4) (V4 dst4) 1us 1us 1us (ReadOnlySpan [| 1uy; 2uy |]) (Span buffer)

                let icmp = buffer.[.. n - 1]
                icmp.[n - 1] <- icmp.[n - 1] ^^^ 0xFFuy
                Expect.equal (receiveTrusted true icmp).Kind ReceivedKind.Dropped "bad ICMP checksum"
                let packet, _ = superSegment false TcpFlags.Ack [| 1uy; 2uy; 3uy |]
                packet.[10] <- packet.[10] ^^^ 0xFFuy
                Expect.equal (receiveTrusted true packet).Kind ReceivedKind.Dropped "bad IPv4 header checksum"
        ]
