/// EthernetPacketDevice over an in-memory frame device: ARP and NDP answered, packets queued
/// until their neighbor is resolved, hostile frames dropped and counted, never thrown.
module NetStack.Tests.EthernetDeviceTests

open System
open System.Net
open System.Net.NetworkInformation
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack
open NetStack.Core.Wire
open NetStack.Core.Link
open NetStack.Engine
open NetStack.Tests.TestUtil

/// The adapter's clock without an engine: these tests need no timer to fire.
let private clock = Func<int64>(fun () -> 0L)

let private ourMac = MacAddress.Parse "02:98:00:00:00:02"
let private peerMac = MacAddress.Parse "02:98:00:00:00:01"

let private optionsWith (neighbor: NeighborSettings) =
    NetStackOptions(
        Mode = NetStackMode.Tap,
        Address = IPAddress.Parse "10.98.0.2",
        HostAddress = null,
        Address6 = IPAddress.Parse "fd98::2",
        HostAddress6 = null,
        MacAddress = PhysicalAddress.Parse "02-98-00-00-00-02",
        Neighbor = neighbor
    )

let private options () =
    optionsWith (NeighborSettings(DadTransmits = 0, GratuitousArps = 0))

let private make () =
    let frames = new MemoryPacketDevice(1500)
    frames, new EthernetPacketDevice(frames, options (), clock = clock)

let private frame (destination: MacAddress) (etherType: uint16) (payload: byte[]) =
    let bytes = Array.zeroCreate (14 + payload.Length)
    Ethernet.write destination peerMac etherType (Span bytes) |> ignore
    payload.CopyTo(bytes, 14)
    bytes

let private arpFrame (arp: ArpPacket) =
    let body = Array.zeroCreate 28
    Arp.write arp (Span body) |> ignore

    frame
        (if arp.Operation = Arp.Operation.Request then
             MacAddress.Broadcast
         else
             ourMac)
        EtherType.Arp
        body

let private readAll (device: EthernetPacketDevice) =
    let buffer = Array.zeroCreate 65536
    let mutable length = 0
    let packets = ResizeArray()

    while device.TryRead(Span buffer, 0, &length) do
        packets.Add(buffer.[.. length - 1])

    List.ofSeq packets

let private written (frames: MemoryPacketDevice) =
    let mutable packet = null
    let all = ResizeArray()

    while frames.TryTakeWritten(&packet) do
        all.Add packet

    List.ofSeq all

let private ipv4Packet (destination: string) =
    let packet = Array.zeroCreate 28

    let header =
        Ipv4.header (Ipv4Address.Parse "10.98.0.2") (Ipv4Address.Parse destination) IpProtocol.Udp

    Ipv4.write header ReadOnlySpan.Empty 8 (Span packet) |> ignore
    packet

/// A frame device that records the pieces of each gather write (then joins them, as a memory device does).
type private PiecesDevice(inner: MemoryPacketDevice) =
    member val Gathers = ResizeArray<int * int * int>()

    interface IPacketDevice with
        member _.Mtu = inner.Mtu
        member _.TryRead(buffer, timeout, length) = inner.TryRead(buffer, timeout, &length)
        member _.Write(packet: ReadOnlySpan<byte>) = inner.Write packet

        member this.WriteGather(head: ReadOnlySpan<byte>, payload: ReadOnlySpan<byte>, tail: ReadOnlySpan<byte>) =
            this.Gathers.Add((head.Length, payload.Length, tail.Length))
            let joined = Array.zeroCreate<byte>(head.Length + payload.Length + tail.Length)
            head.CopyTo(Span joined)
            payload.CopyTo(Span(joined, head.Length, payload.Length))
            tail.CopyTo(Span(joined, head.Length + payload.Length, tail.Length))
            inner.Write(ReadOnlySpan joined)

        member _.Wake() = inner.Wake()
        member _.Dispose() = inner.Dispose()

/// An IPv4 UDP packet from 10.98.0.2 to `destination` with `length` bytes of patterned payload.
let private udpPacket (destination: string) (length: int) =
    let packet = Array.zeroCreate (28 + length)

    for i in 28 .. packet.Length - 1 do
        packet.[i] <- byte (i * 7)

    let header =
        Ipv4.header (Ipv4Address.Parse "10.98.0.2") (Ipv4Address.Parse destination) IpProtocol.Udp

    Ipv4.write header ReadOnlySpan.Empty (8 + length) (Span packet) |> ignore
    packet

/// Options whose start runs DAD (one probe, RetransTimer 200 ms) and one gratuitous ARP.
let private startOptions () =
    optionsWith (NeighborSettings(DadTransmits = 1, GratuitousArps = 1, RetransTimer = TimeSpan.FromMilliseconds 200.0))

/// What kind of frame this is: "dad" (an NS from ::), "announcement" (gratuitous ARP), or "other".
let private kind (bytes: byte[]) =
    match Ethernet.parse (ReadOnlySpan bytes) with
    | Ok eth when eth.EtherType = EtherType.Arp ->
        match Arp.parse (ReadOnlySpan(bytes, 14, bytes.Length - 14)) with
        | Ok arp when arp.SenderIp = arp.TargetIp -> "announcement"
        | _ -> "other"
    | Ok eth when eth.EtherType = EtherType.Ipv6 ->
        match Ipv6.parse (ReadOnlySpan(bytes, 14, bytes.Length - 14)) with
        | Ok h when
            h.Source = Ipv6Address.Any
            && bytes.[14 + 40] = Ndp.MessageType.NeighborSolicitation
            ->
            "dad"
        | _ -> "other"
    | _ -> "other"

[<Tests>]
let tests =
    testList
        "Ethernet device"
        [
            test "a stack on the adapter runs DAD and the gratuitous ARP on its loop; Start returns after RetransTimer" {
                let frames = new MemoryPacketDevice(1500)
                let o = startOptions ()
                let adapter = new EthernetPacketDevice(frames, o)
                Expect.isEmpty (written frames) "constructing the adapter sends nothing"
                let clock = Diagnostics.Stopwatch.StartNew()
                use stack = NetworkStack.Start(o, adapter, "memtap")
                let elapsed = clock.Elapsed
                Expect.isTrue adapter.Started.IsCompletedSuccessfully "started"

                Expect.isGreaterThanOrEqual
                    elapsed.TotalMilliseconds
                    190.0
                    "Start waited for RetransTimer after the probe (RFC 4862 §5.4)"

                Expect.equal
                    (written frames |> List.map kind)
                    [ "dad"; "dad"; "announcement" ]
                    "the probes of the configured and the link-local address (RFC 4862 §5.4), then the announcement"

                Expect.equal stack.Statistics.["ndp.dad.sent"] 2L "counted"
                Expect.equal stack.Statistics.["arp.announcement.sent"] 1L "counted"
                TestUtil.assertNoExceptions stack
            }

            test
                "an advertisement for the address during DAD fails Start with DuplicateAddressException naming the defender" {
                let frames = new MemoryPacketDevice(1500)
                let o = startOptions ()
                let ours = Ipv6Address.Parse "fd98::2"
                let advertisement = Array.zeroCreate 200

                let icmp =
                    Ndp.writeNeighborAdvertisement
                        ours
                        Ndp.AllNodes
                        ours
                        false
                        false
                        true
                        (ValueSome peerMac)
                        (Span(advertisement, 40, 160))

                Ipv6.write
                    { Ipv6.header ours Ndp.AllNodes IpProtocol.Icmpv6 with
                        PayloadLength = icmp
                        HopLimit = 255uy
                    }
                    (Span advertisement)
                |> ignore

                frames.Inject(
                    frame (MacAddress.OfIpv6Multicast Ndp.AllNodes) EtherType.Ipv6 advertisement.[.. 40 + icmp - 1]
                )

                let adapter = new EthernetPacketDevice(frames, o)

                let e =
                    Expect.throwsC (fun () -> NetworkStack.Start(o, adapter, "memtap") |> ignore) (fun e -> e)

                match e with
                | :? DuplicateAddressException as d ->
                    Expect.equal d.Address (IPAddress.Parse "fd98::2") "the address"
                    Expect.equal d.Owner (PhysicalAddress.Parse "02-98-00-00-00-01") "the defender's MAC"
                | other -> failtestf "DuplicateAddressException expected, got %O" other

                Expect.equal adapter.Statistics.["ndp.dad.failed"] 1L "counted"

                Expect.equal
                    adapter.Statistics.["arp.announcement.sent"]
                    0L
                    "no announcement for a stack that does not start"

                TestUtil.assertNoExceptionsIn adapter.Statistics
            }

            test "an ARP request for the stack's address is answered; one for another address is not" {
                let frames, device = make ()
                use _ = device

                let ask (target: string) =
                    frames.Inject(
                        arpFrame (Arp.request peerMac (Ipv4Address.Parse "10.98.0.1") (Ipv4Address.Parse target))
                    )

                ask "10.98.0.7"
                ask "10.98.0.2"
                Expect.isEmpty (readAll device) "nothing for the IP layer"

                match written frames with
                | [ reply ] ->
                    let eth = Result.toOption (Ethernet.parse (ReadOnlySpan reply)) |> Option.get
                    Expect.equal eth.Destination peerMac "to the asker"
                    let arp = Result.toOption (Arp.parse (ReadOnlySpan(reply, 14, 28))) |> Option.get
                    Expect.equal arp.Operation Arp.Operation.Reply "a reply"
                    Expect.equal arp.SenderMac ourMac "our MAC"
                    Expect.equal (string arp.SenderIp) "10.98.0.2" "for our address"
                | other -> failtestf "one reply expected, got %d frames" other.Length
            }

            test "a packet to an unresolved neighbor waits for the ARP reply, then goes to its MAC" {
                let frames, device = make ()
                use _ = device
                device.Write(ReadOnlySpan(ipv4Packet "10.98.0.1"))

                match written frames with
                | [ request ] ->
                    let arp = Result.toOption (Arp.parse (ReadOnlySpan(request, 14, 28))) |> Option.get
                    Expect.equal arp.Operation Arp.Operation.Request "an ARP request"
                    Expect.equal (string arp.TargetIp) "10.98.0.1" "for the destination"
                | other -> failtestf "one ARP request expected, got %d frames" other.Length

                frames.Inject(
                    arpFrame (
                        Arp.replyTo
                            (Arp.request ourMac (Ipv4Address.Parse "10.98.0.2") (Ipv4Address.Parse "10.98.0.1"))
                            peerMac
                    )
                )

                readAll device |> ignore

                match written frames with
                | [ released ] ->
                    let eth = Result.toOption (Ethernet.parse (ReadOnlySpan released)) |> Option.get
                    Expect.equal eth.Destination peerMac "to the resolved MAC"
                    Expect.equal eth.EtherType EtherType.Ipv4 "the IPv4 packet"
                    Expect.sequenceEqual released.[14..] (ipv4Packet "10.98.0.1") "unchanged"
                | other -> failtestf "the released packet expected, got %d frames" other.Length

                device.Write(ReadOnlySpan(ipv4Packet "10.98.0.1"))
                Expect.hasLength (written frames) 1 "the next packet goes out at once"
                device.Write(ReadOnlySpan(ipv4Packet "192.0.2.1"))
                Expect.isEmpty (written frames) "no gateway: off-prefix packets are dropped"
                Expect.equal device.Statistics.["link.drop.no-route"] 1L "and counted"
            }

            test "IP packets come up without the Ethernet header and padding; frames for other MACs do not" {
                let frames, device = make ()
                use _ = device
                let packet = ipv4Packet "10.98.0.2"
                let padded = Array.append (frame ourMac EtherType.Ipv4 packet) (Array.zeroCreate 18)
                frames.Inject padded
                frames.Inject(frame (MacAddress.Parse "02:00:00:00:00:99") EtherType.Ipv4 packet)
                let up = readAll device
                Expect.equal up [ packet ] "exactly the IP packet, once"
                Expect.equal device.Statistics.["link.drop.not-for-us"] 1L "the other MAC's frame dropped"
            }

            testPropertyWithConfig codecConfig "hostile frames are dropped and counted, never thrown"
            <| Prop.forAll
                (Arb.fromGen (
                    gen {
                        let! etherType =
                            Gen.elements [ EtherType.Arp; EtherType.Ipv4; EtherType.Ipv6; EtherType.Vlan; 0x88B5us ]

                        let! destination =
                            Gen.elements
                                [
                                    ourMac
                                    MacAddress.Broadcast
                                    MacAddress.OfIpv6Multicast(Ndp.solicitedNode (Ipv6Address.Parse "fd98::2"))
                                ]

                        let! length = Gen.choose (0, 120)
                        let! body = Gen.arrayOfLength length (ArbMap.defaults |> ArbMap.generate<byte>)
                        let! ndp = Gen.elements [ 0uy; 133uy; 134uy; 135uy; 136uy; 137uy ]

                        if etherType = EtherType.Ipv6 && body.Length > 41 then
                            body.[0] <- 0x60uy
                            body.[6] <- IpProtocol.Icmpv6
                            body.[7] <- 255uy

                            if ndp <> 0uy then
                                body.[40] <- ndp

                        return frame destination etherType body
                    }
                    |> Gen.listOf
                ))
                (fun frameList ->
                    let frames, device = make ()
                    use _ = device

                    for f in frameList do
                        frames.Inject f

                    readAll device |> ignore
                    written frames |> ignore
                    true)

            test
                "a gather write leaves the payload pieces to the frame device; a short head, and a wait for ARP, join them" {
                let memory = new MemoryPacketDevice(1500)
                let pieces = new PiecesDevice(memory)
                use device = new EthernetPacketDevice(pieces, options (), clock = clock)
                let packet = udpPacket "10.98.0.1" 1000

                let gather (headLength: int) (cut: int) =
                    device.WriteGather(
                        ReadOnlySpan(packet, 0, headLength),
                        ReadOnlySpan(packet, headLength, cut - headLength),
                        ReadOnlySpan(packet, cut, packet.Length - cut)
                    )

                // Unresolved: the pieces are joined into the neighbor queue; the ARP reply releases them.
                gather 28 500
                Expect.hasLength (written memory) 1 "an ARP request"

                memory.Inject(
                    arpFrame (
                        Arp.replyTo
                            (Arp.request ourMac (Ipv4Address.Parse "10.98.0.2") (Ipv4Address.Parse "10.98.0.1"))
                            peerMac
                    )
                )

                readAll device |> ignore
                let expected = frame peerMac EtherType.Ipv4 packet
                // (frame writes peerMac as the source: ours goes there in what the device sends.)
                Ethernet.write peerMac ourMac EtherType.Ipv4 (Span expected) |> ignore
                Expect.equal (written memory) [ expected ] "released whole after the ARP reply"
                Expect.isEmpty pieces.Gathers "queued packets go out as one piece"

                // Resolved: the frame header and the head in one piece, payload and tail as given.
                gather 28 500
                Expect.equal (written memory) [ expected ] "the same frame"
                Expect.equal (List.ofSeq pieces.Gathers) [ (14 + 28, 472, packet.Length - 500) ] "a gather write"

                // A head shorter than the IP header: joined first, written whole.
                pieces.Gathers.Clear()
                gather 7 500
                Expect.equal (written memory) [ expected ] "the same frame again"
                Expect.isEmpty pieces.Gathers "written as one piece"
            }
        ]
