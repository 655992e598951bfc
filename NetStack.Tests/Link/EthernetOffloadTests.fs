/// EthernetPacketDevice over a frame device with virtio-net headers (a TAP device with
/// offloads): the headers' offsets move by the Ethernet header between the frame and the IP
/// packet, in both directions; ARP and NDP frames go with an empty header.
module NetStack.Tests.EthernetOffloadTests

open System
open System.Collections.Generic
open System.Net
open System.Net.NetworkInformation
open Expecto
open NetStack
open NetStack.Core.Wire
open NetStack.Core.Link
open NetStack.Device
open NetStack.Engine

/// The adapter's clock without an engine: these tests need no timer to fire.
let private clock = Func<int64>(fun () -> 0L)

let private ourMac = MacAddress.Parse "02:a7:00:00:00:02"
let private peerMac = MacAddress.Parse "02:a7:00:00:00:01"

/// Frames with their headers, in and out, in memory.
type private OffloadFrames() =
    let inbox = Queue<byte[] * VirtioNetHeader>()
    let outbox = ResizeArray<byte[] * VirtioNetHeader>()

    member _.Inject(frame: byte[], header: VirtioNetHeader) = inbox.Enqueue(frame, header)
    member _.Written = List.ofSeq outbox

    interface IOffloadPacketDevice with
        member _.Offloads = TunOffloads.Checksum ||| TunOffloads.Tso4 ||| TunOffloads.Tso6

        member _.Mtu = 1500

        member this.TryRead(buffer, timeout, length) =
            let mutable header = VirtioNetHeader.None
            (this :> IOffloadPacketDevice).TryReadWithHeader(buffer, timeout, &length, &header)

        member _.TryReadWithHeader(buffer, _, length, header) =
            if inbox.Count = 0 then
                length <- 0
                header <- VirtioNetHeader.None
                false
            else
                let frame, h = inbox.Dequeue()
                frame.CopyTo buffer
                length <- frame.Length
                header <- h
                true

        member _.Write(packet: ReadOnlySpan<byte>) =
            outbox.Add(packet.ToArray(), VirtioNetHeader.None)

        member _.Write(packet: ReadOnlySpan<byte>, header: inref<VirtioNetHeader>) =
            outbox.Add(packet.ToArray(), header)

        member _.Wake() = ()
        member _.Dispose() = ()

let private optionsOn (vlan: Nullable<int>) =
    NetStackOptions(
        Mode = NetStackMode.Tap,
        VlanId = vlan,
        Address = IPAddress.Parse "10.107.0.2",
        HostAddress = null,
        Address6 = IPAddress.Parse "fda7::2",
        HostAddress6 = null,
        MacAddress = PhysicalAddress.Parse "02-a7-00-00-00-02",
        Neighbor = NeighborSettings(DadTransmits = 0, GratuitousArps = 0)
    )

let private options () = optionsOn (Nullable())

/// A TCP/IPv4 super-segment of three 1000-byte segments to the subnet broadcast address (so no
/// neighbor resolution is needed), its checksum field holding the pseudo-header sum.
let private superSegment () =
    let payload = Array.init 3000 byte
    let packet = Array.zeroCreate<byte>(20 + 20 + payload.Length)

    let header =
        Ipv4.header (Ipv4Address.Parse "10.107.0.2") (Ipv4Address.Parse "10.107.0.255") IpProtocol.Tcp

    Ipv4.write header ReadOnlySpan.Empty (20 + payload.Length) (Span packet)
    |> ignore

    packet.[20 + 12] <- 0x50uy // data offset: 5 words
    payload.CopyTo(packet, 40)
    packet, VirtioNet.tcpSegments false 20 20 1000

let private tagged (vlan: int) (etherType: uint16) (ip: byte[]) =
    let frame = Array.zeroCreate<byte>(18 + ip.Length)

    let n =
        if vlan < 0 then
            Ethernet.write ourMac peerMac etherType (Span frame)
        else
            Ethernet.writeTagged ourMac peerMac vlan etherType (Span frame)

    ip.CopyTo(frame, n)
    frame.[.. n + ip.Length - 1]

[<Tests>]
let tests =
    testList
        "Ethernet offloads"
        [
            test "the adapter reports the frame device's offloads" {
                use device =
                    new EthernetPacketDevice(new OffloadFrames(), options (), clock = clock)

                Expect.equal
                    device.Offloads
                    (TunOffloads.Checksum ||| TunOffloads.Tso4 ||| TunOffloads.Tso6)
                    "passed through"
            }

            test "a super-segment written goes out as one frame whose header counts the 14-byte Ethernet header" {
                let frames = new OffloadFrames()
                use device = new EthernetPacketDevice(frames, options (), clock = clock)
                let packet, header = superSegment ()
                (device :> IOffloadPacketDevice).Write(ReadOnlySpan packet, &header)

                match frames.Written with
                | [ frame, h ] ->
                    Expect.equal frame.Length (14 + packet.Length) "one frame, the packet whole"
                    Expect.equal frame.[14..] packet "the packet after the Ethernet header"
                    Expect.equal h.ChecksumStart (uint16 (14 + 20)) "csum_start from the frame"
                    Expect.equal h.HeaderLength (uint16 (14 + 40)) "hdr_len from the frame"
                    Expect.equal h.GsoSize 1000us "gso_size unchanged"
                    Expect.equal h.ChecksumOffset 16us "csum_offset unchanged"
                    Expect.equal h.GsoType VirtioGsoType.TcpV4 "TCPV4"
                | other -> failtestf "expected one frame, got %d" other.Length
            }

            test
                "a UDP super-datagram for an unresolved neighbor is cut into datagrams for the queue; the ARP reply releases them" {
                let frames = new OffloadFrames()
                use device = new EthernetPacketDevice(frames, options (), clock = clock)
                let source = NetStack.Core.Stack.V4(Ipv4Address.Parse "10.107.0.2")
                let destination = NetStack.Core.Stack.V4(Ipv4Address.Parse "10.107.0.1")
                let payload = Array.init 4500 (fun i -> byte (i / 1000 + i))
                let packet = Array.zeroCreate<byte>(28 + payload.Length)

                NetStack.Core.Stack.IpLayer.writeUdpSegments
                    source
                    destination
                    7us
                    9us
                    50us
                    payload.Length
                    (Span packet)
                |> ignore

                payload.CopyTo(packet, 28)
                let header = VirtioNet.udpSegments 20 1000
                (device :> IOffloadPacketDevice).Write(ReadOnlySpan packet, &header)

                match frames.Written with
                | [ request, h ] ->
                    Expect.equal
                        (Result.toOption (Ethernet.parse (ReadOnlySpan request)) |> Option.get).EtherType
                        EtherType.Arp
                        "an ARP request"

                    Expect.equal h VirtioNetHeader.None "with an empty header"
                | other -> failtestf "one ARP request expected, got %d frames" other.Length

                Expect.equal device.Statistics.["link.uso.cut-for-queue"] 1L "cut for the queue"
                Expect.equal device.Statistics.["link.drop.unresolved-gso"] 0L "nothing dropped as a whole"

                let reply =
                    Arp.replyTo
                        (Arp.request ourMac (Ipv4Address.Parse "10.107.0.2") (Ipv4Address.Parse "10.107.0.1"))
                        peerMac

                let body = Array.zeroCreate 28
                Arp.write reply (Span body) |> ignore
                frames.Inject(tagged -1 EtherType.Arp body, VirtioNetHeader.None)
                let buffer = Array.zeroCreate 65536
                let mutable length = 0

                while device.TryRead(Span buffer, 0, &length) do
                    ()

                // Five datagrams (4 × 1000 + 500), all kept (MaxQueuedPerEntry is 64).
                let released = frames.Written |> List.skip 1
                Expect.hasLength released 5 "all five datagrams"

                released
                |> List.iteri (fun i (frame, h) ->
                    let n = i
                    let expected = payload.[n * 1000 .. min payload.Length ((n + 1) * 1000) - 1]
                    let whole = Array.zeroCreate<byte> 2000

                    let length =
                        NetStack.Core.Stack.IpLayer.writeUdp
                            source
                            destination
                            7us
                            9us
                            (50us + uint16 n)
                            (ReadOnlySpan expected)
                            (Span whole)

                    Expect.equal h VirtioNetHeader.None $"datagram {n}: an ordinary frame"

                    Expect.equal
                        frame.[14..]
                        whole.[.. length - 1]
                        $"datagram {n}, complete checksum and its own identification")
            }

            test "a frame read hands up the IP packet with the header's offsets counted from the IP header" {
                let frames = new OffloadFrames()
                use device = new EthernetPacketDevice(frames, options (), clock = clock)
                let packet, header = superSegment ()

                let onFrame = (VirtioNet.shift 14 header).Value

                frames.Inject(tagged -1 EtherType.Ipv4 packet, onFrame)
                let buffer = Array.zeroCreate<byte> 70000
                let mutable length = 0
                let mutable read = VirtioNetHeader.None

                Expect.isTrue
                    ((device :> IOffloadPacketDevice).TryReadWithHeader(Span buffer, 0, &length, &read))
                    "read"

                Expect.equal buffer.[.. length - 1] packet "the IP packet"
                Expect.equal read header "the header as the engine counts it"
            }

            test "a plain read completes a partial checksum and drops a super-segment, counted" {
                let frames = new OffloadFrames()
                use device = new EthernetPacketDevice(frames, options (), clock = clock)
                let packet, header = superSegment ()
                frames.Inject(tagged -1 EtherType.Ipv4 packet, (VirtioNet.shift 14 header).Value)

                let single =
                    { (VirtioNet.shift 14 header).Value with
                        GsoType = VirtioGsoType.None
                        GsoSize = 0us
                    }

                frames.Inject(tagged -1 EtherType.Ipv4 packet, single)
                let buffer = Array.zeroCreate<byte> 70000
                let mutable length = 0
                Expect.isTrue (device.TryRead(Span buffer, 0, &length)) "the ordinary packet is read"
                Expect.equal device.Statistics.["link.drop.gso"] 1L "the super-segment was dropped"
                let expected = Array.copy packet

                VirtioNet.completeChecksum header (Span expected) |> ignore

                Expect.equal buffer.[.. length - 1] expected "its checksum completed"
            }

            test "a header whose partial checksum starts inside the Ethernet header is dropped and counted" {
                let frames = new OffloadFrames()
                use device = new EthernetPacketDevice(frames, options (), clock = clock)
                let packet, header = superSegment ()

                frames.Inject(
                    tagged -1 EtherType.Ipv4 packet,
                    { header with
                        ChecksumStart = 4us
                        HeaderLength = 0us
                    }
                )

                let buffer = Array.zeroCreate<byte> 70000
                let mutable length = 0
                Expect.isFalse (device.TryRead(Span buffer, 0, &length)) "nothing handed up"
                Expect.equal device.Statistics.["link.drop.bad-vnet-header"] 1L "counted"
            }

            test "ARP answers go out with an empty header" {
                let frames = new OffloadFrames()
                use device = new EthernetPacketDevice(frames, options (), clock = clock)

                let request =
                    Arp.request peerMac (Ipv4Address.Parse "10.107.0.1") (Ipv4Address.Parse "10.107.0.2")

                let body = Array.zeroCreate 28
                Arp.write request (Span body) |> ignore
                let frame = Array.zeroCreate<byte>(14 + 28)

                Ethernet.write MacAddress.Broadcast peerMac EtherType.Arp (Span frame) |> ignore

                body.CopyTo(frame, 14)
                frames.Inject(frame, VirtioNetHeader.None)
                let buffer = Array.zeroCreate<byte> 2048
                let mutable length = 0
                device.TryRead(Span buffer, 0, &length) |> ignore

                match frames.Written with
                | [ _, h ] -> Expect.equal h VirtioNetHeader.None "an empty header"
                | other -> failtestf "expected one ARP reply, got %d frames" other.Length
            }

            test "with a VLAN every frame carries its 802.1Q tag and a super-segment's offsets count 18 bytes" {
                let frames = new OffloadFrames()

                use device =
                    new EthernetPacketDevice(frames, optionsOn (Nullable 100), clock = clock)

                let packet, header = superSegment ()
                (device :> IOffloadPacketDevice).Write(ReadOnlySpan packet, &header)

                match frames.Written with
                | [ frame, h ] ->
                    let parsed = Ethernet.parse (ReadOnlySpan frame)
                    Expect.isOk parsed "a valid frame"

                    match parsed with
                    | Ok eth ->
                        Expect.equal (eth.VlanTags, eth.VlanId) (1, 100) "one tag, VLAN 100"
                        Expect.equal eth.EtherType EtherType.Ipv4 "IPv4 inside"
                    | Error _ -> ()

                    Expect.equal frame.[18..] packet "the packet after the tagged header"
                    Expect.equal h.ChecksumStart (uint16 (18 + 20)) "csum_start counts the tag"
                    Expect.equal h.HeaderLength (uint16 (18 + 40)) "hdr_len counts the tag"
                | other -> failtestf "expected one frame, got %d" other.Length
            }

            test "with a VLAN only frames with that tag are read; untagged and other VLANs are dropped and counted" {
                let frames = new OffloadFrames()

                use device =
                    new EthernetPacketDevice(frames, optionsOn (Nullable 100), clock = clock)

                let packet, header = superSegment ()
                frames.Inject(tagged -1 EtherType.Ipv4 packet, (VirtioNet.shift 14 header).Value)
                frames.Inject(tagged 200 EtherType.Ipv4 packet, (VirtioNet.shift 18 header).Value)
                frames.Inject(tagged 100 EtherType.Ipv4 packet, (VirtioNet.shift 18 header).Value)
                let buffer = Array.zeroCreate<byte> 70000
                let mutable length = 0
                let mutable read = VirtioNetHeader.None

                Expect.isTrue
                    ((device :> IOffloadPacketDevice).TryReadWithHeader(Span buffer, 0, &length, &read))
                    "the VLAN 100 frame is read"

                Expect.equal buffer.[.. length - 1] packet "its packet"
                Expect.equal read header "its header, counted from the IP header"
                Expect.equal device.Statistics.["link.drop.untagged"] 1L "the untagged frame"
                Expect.equal device.Statistics.["link.drop.vlan"] 1L "the VLAN 200 frame"
            }

            test "on a VLAN an ARP request with the tag is answered with the tag" {
                let frames = new OffloadFrames()

                use device =
                    new EthernetPacketDevice(frames, optionsOn (Nullable 4094), clock = clock)

                let request =
                    Arp.request peerMac (Ipv4Address.Parse "10.107.0.1") (Ipv4Address.Parse "10.107.0.2")

                let body = Array.zeroCreate 28
                Arp.write request (Span body) |> ignore
                let frame = Array.zeroCreate<byte>(18 + 28)

                Ethernet.writeTagged MacAddress.Broadcast peerMac 4094 EtherType.Arp (Span frame)
                |> ignore

                body.CopyTo(frame, 18)
                frames.Inject(frame, VirtioNetHeader.None)
                let buffer = Array.zeroCreate<byte> 2048
                let mutable length = 0
                device.TryRead(Span buffer, 0, &length) |> ignore

                match frames.Written with
                | [ reply, _ ] ->
                    match Ethernet.parse (ReadOnlySpan reply) with
                    | Ok eth ->
                        Expect.equal
                            (eth.VlanTags, eth.VlanId, eth.EtherType)
                            (1, 4094, EtherType.Arp)
                            "a tagged ARP reply"
                    | Error e -> failtestf "bad frame: %A" e
                | other -> failtestf "expected one ARP reply, got %d frames" other.Length
            }

            test "the adapter refuses a VLAN id outside 1..4094" {
                for bad in [ 0; 4095 ] do
                    Expect.throwsT<ArgumentException>
                        (fun () ->
                            new EthernetPacketDevice(new OffloadFrames(), optionsOn (Nullable bad), clock = clock)
                            |> ignore)
                        $"VLAN {bad}"
            }
        ]
