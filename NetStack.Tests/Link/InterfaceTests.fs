/// The pure link interface (Core/Link/Interface.fs): frames in, IP packets up; IP packets out,
/// the MAC to frame them with; timers. Oracles are the RFCs' numbers written here (three
/// solicitations RetransTimer apart, DupAddrDetectTransmits probes then RetransTimer of
/// listening) and frames built with the codecs, never the interface's own output.
module NetStack.Tests.InterfaceTests

open System
open System.Collections.Generic
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Core.Link
open NetStack.Tests.TestUtil

let private ourMac = MacAddress 0x02A8_0000_0002UL
let private peerMac = MacAddress 0x02A8_0000_0001UL
let private ours4 = Ipv4Address.Parse "10.108.0.2"
let private ours6 = Ipv6Address.Parse "fda8::2"
let private retrans = 1_000_000L

/// Records what the interface asks for.
type private Recorder() =
    member val Frames = ResizeArray<MacAddress * uint16 * byte[]>()
    member val Counts = Dictionary<string, int>()
    member val Events = ResizeArray<LinkEvent>()

    member this.Count(name: string) =
        match this.Counts.TryGetValue name with
        | true, n -> n
        | _ -> 0

    /// The frames sent since the last call.
    member this.Take() =
        let all = List.ofSeq this.Frames
        this.Frames.Clear()
        all

    interface ILinkSink with
        member this.Transmit(destination, etherType, payload: ReadOnlySpan<byte>) =
            this.Frames.Add((destination, etherType, payload.ToArray()))

        member this.Count counter =
            this.Counts.[counter] <- this.Count counter + 1

        member this.Event e = this.Events.Add e

let private settings (dad: int) =
    InterfaceSettings(
        Mac = ourMac,
        HasAddress4 = true,
        Address4 = ours4,
        PrefixLength4 = 24,
        HasAddress6 = true,
        Address6 = ours6,
        PrefixLength6 = 64,
        RetransTimer = retrans,
        DadTransmits = dad,
        GratuitousArps = 0,
        Seed = 7UL
    )

let private frame (destination: MacAddress) (source: MacAddress) (etherType: uint16) (payload: byte[]) =
    let bytes = Array.zeroCreate (14 + payload.Length)
    Ethernet.write destination source etherType (Span bytes) |> ignore
    payload.CopyTo(bytes, 14)
    bytes

let private arpFrame (destination: MacAddress) (arp: ArpPacket) =
    let body = Array.zeroCreate 28
    Arp.write arp (Span body) |> ignore
    frame destination arp.SenderMac EtherType.Arp body

/// An IPv6 packet carrying the ND message `write` puts after the header (it returns its length).
let private ndpPacket (source: Ipv6Address) (destination: Ipv6Address) (write: byte[] -> int) =
    let buffer = Array.zeroCreate 200
    let message = Array.zeroCreate 160
    let icmp = write message
    Array.blit message 0 buffer 40 icmp

    let header =
        { Ipv6.header source destination IpProtocol.Icmpv6 with
            PayloadLength = icmp
            HopLimit = 255uy
        }

    Ipv6.write header (Span buffer) |> ignore
    buffer.[.. 40 + icmp - 1]

let private ipv4Packet (source: Ipv4Address) (destination: Ipv4Address) (length: int) =
    let packet = Array.zeroCreate (28 + length)

    Ipv4.write (Ipv4.header source destination IpProtocol.Udp) ReadOnlySpan.Empty (8 + length) (Span packet)
    |> ignore

    packet

let private ipv6Packet (source: Ipv6Address) (destination: Ipv6Address) (length: int) =
    let packet = Array.zeroCreate (40 + length)

    Ipv6.write
        { Ipv6.header source destination IpProtocol.Udp with
            PayloadLength = length
        }
        (Span packet)
    |> ignore

    packet

let private receive (now: int64) (bytes: byte[]) (state: byref<InterfaceState>) (sink: Recorder) =
    Interface.receive now (ReadOnlySpan bytes) &state sink

/// Sends `packet` as the engine's glue does: resolve, and queue a copy when pending.
let private send (now: int64) (packet: byte[]) (state: byref<InterfaceState>) (sink: Recorder) =
    let next = Interface.resolve now (ReadOnlySpan packet) &state sink

    match next.Kind with
    | NextHopKind.Send -> sink.Frames.Add((next.Mac, next.EtherType, Array.copy packet))
    | NextHopKind.Pending -> Interface.queue now (Array.copy packet) &state sink
    | _ -> ()

    next.Kind

/// Unicast, non-zero MACs other than ours.
let private peerMacs =
    Gen.choose64 (1L, 0xFFFF_FFFFL)
    |> Gen.map (fun low -> MacAddress(0x0200_0000_0000UL ||| uint64 low))

/// Neighbors on our IPv4 prefix (10.108.0.0/24) other than ours and the broadcast.
let private neighbors4 =
    Gen.choose (1, 254)
    |> Gen.filter (fun host -> host <> 2)
    |> Gen.map (fun host -> Ipv4Address(0x0A6C_0000u ||| uint32 host))

let private neighbors6 =
    Gen.choose64 (3L, Int64.MaxValue)
    |> Gen.map (fun low -> Ipv6Address(ours6.High, uint64 low))

// ------------------------------------------------------------------------------------------
// Hostile input
// ------------------------------------------------------------------------------------------

let private anyBytes n =
    Gen.arrayOfLength n (ArbMap.defaults |> ArbMap.generate<byte>)

/// Frames from garbage to well-formed ARP and ND messages with random fields.
let private hostileFrame =
    let destinations =
        Gen.elements
            [
                ourMac
                MacAddress.Broadcast
                MacAddress.OfIpv6Multicast(Ndp.solicitedNode ours6)
                MacAddress.OfIpv6Multicast Ndp.AllNodes
                peerMac
            ]

    let garbage =
        gen {
            let! destination = destinations

            let! etherType =
                Gen.elements
                    [
                        EtherType.Arp
                        EtherType.Ipv4
                        EtherType.Ipv6
                        EtherType.Vlan
                        0x88B5us
                        0x0100us
                    ]

            let! length = Gen.choose (0, 120)
            let! body = anyBytes length
            let! ndp = Gen.elements [ 0uy; 133uy; 134uy; 135uy; 136uy; 137uy ]

            if etherType = EtherType.Ipv6 && body.Length > 41 then
                body.[0] <- 0x60uy
                body.[6] <- IpProtocol.Icmpv6
                body.[7] <- 255uy

                if ndp <> 0uy then
                    body.[40] <- ndp

            return frame destination peerMac etherType body
        }

    let arp =
        gen {
            let! operation = Gen.elements [ Arp.Operation.Request; Arp.Operation.Reply ]

            let! senderMac =
                Gen.oneof [ peerMacs; Gen.constant ourMac; Gen.constant MacAddress.Broadcast ]

            let! senderIp =
                Gen.oneof [ neighbors4; Gen.constant ours4; Gen.constant Ipv4Address.Any ]

            let! targetIp = Gen.oneof [ neighbors4; Gen.constant ours4 ]
            let! destination = destinations

            return
                arpFrame
                    destination
                    {
                        Operation = operation
                        SenderMac = senderMac
                        SenderIp = senderIp
                        TargetMac = MacAddress.Zero
                        TargetIp = targetIp
                    }
        }

    let nd =
        gen {
            let! kind = Gen.choose (0, 2)

            let! source =
                Gen.oneof
                    [
                        neighbors6
                        Gen.constant Ipv6Address.Any
                        Gen.constant (Ipv6Address.Parse "fe80::1")
                    ]

            let! target = Gen.oneof [ neighbors6; Gen.constant ours6 ]
            let! mac = peerMacs
            let! flags = Gen.choose (0, 7)
            let! lifetime = Gen.elements [ 0us; 1800us ]
            let! reachable = Gen.elements [ 0u; 5000u; UInt32.MaxValue ]

            let! prefixHigh =
                Gen.elements [ 0xFDA8_0000_0000_0001UL; 0xFDA8_0000_0000_0002UL; ours6.High ]

            let! valid = Gen.elements [ 0u; 60u; Slaac.Infinite ]

            let packet =
                match kind with
                | 0 ->
                    let destination =
                        if source = Ipv6Address.Any then
                            Ndp.solicitedNode target
                        else
                            ours6

                    ndpPacket source destination (fun dst ->
                        Ndp.writeNeighborSolicitation
                            source
                            destination
                            target
                            (if source = Ipv6Address.Any then
                                 ValueNone
                             else
                                 ValueSome mac)
                            (Span dst))
                | 1 ->
                    let source = if source = Ipv6Address.Any then target else source

                    ndpPacket source ours6 (fun dst ->
                        Ndp.writeNeighborAdvertisement
                            source
                            ours6
                            target
                            (flags &&& 1 <> 0)
                            (flags &&& 2 <> 0)
                            (flags &&& 4 <> 0)
                            (if flags &&& 1 <> 0 then ValueSome mac else ValueNone)
                            (Span dst))
                | _ ->
                    let source = Ipv6Address.Parse "fe80::1"

                    let message =
                        {
                            Type = Ndp.MessageType.RouterAdvertisement
                            Target = Ipv6Address.Any
                            Router = false
                            Solicited = false
                            Override = false
                            CurHopLimit = 64uy
                            Managed = false
                            OtherConfiguration = false
                            RouterLifetime = lifetime
                            ReachableTime = reachable
                            RetransTimer = reachable
                            SourceLinkAddress = ValueSome mac
                            TargetLinkAddress = ValueNone
                            Mtu = 0u
                            Prefix =
                                ValueSome
                                    {
                                        PrefixLength = 64
                                        OnLink = true
                                        Autonomous = true
                                        ValidLifetime = valid
                                        PreferredLifetime = valid
                                        Prefix = Ipv6Address(prefixHigh, 0UL)
                                    }
                            PrefixCount = 1
                        }

                    ndpPacket source Ndp.AllNodes (fun dst ->
                        Ndp.writeRouterAdvertisement source Ndp.AllNodes message (Span dst))

            let destination =
                MacAddress.OfIpv6Multicast(
                    if packet.[24] = 0xFFuy then
                        Ipv6Address.Read(ReadOnlySpan(packet, 24, 16))
                    else
                        Ndp.AllNodes
                )

            return frame destination mac EtherType.Ipv6 packet
        }

    Gen.frequency [ 3, garbage; 2, arp; 2, nd ]

/// One step of a random run: a frame in, a packet out, or time passing.
type private Step =
    | Frame of byte[]
    | Out of byte[]
    | Wait of int64

let private steps =
    let out =
        Gen.oneof
            [
                neighbors4 |> Gen.map (fun d -> ipv4Packet ours4 d 10)
                neighbors6 |> Gen.map (fun d -> ipv6Packet ours6 d 10)
                Gen.constant (ipv4Packet ours4 (Ipv4Address.Parse "192.0.2.1") 10)
                Gen.constant (ipv6Packet ours6 (Ipv6Address.Parse "2001:db8::1") 10)
            ]

    Gen.frequency
        [
            4, hostileFrame |> Gen.map Frame
            2, out |> Gen.map Out
            1, Gen.choose64 (0L, 3_000_000L) |> Gen.map Wait
        ]
    |> Gen.listOf

/// Two interfaces on one Ethernet segment with no delay: every frame one sends reaches the other
/// (and only it), until the link is quiet. Returns the IP packets each passed up.
let private pump
    (now: int64)
    (a: byref<InterfaceState>)
    (sinkA: Recorder)
    (b: byref<InterfaceState>)
    (sinkB: Recorder)
    =
    let upA = ResizeArray<byte[]>()
    let upB = ResizeArray<byte[]>()
    let mutable rounds = 0

    while (sinkA.Frames.Count > 0 || sinkB.Frames.Count > 0) && rounds < 1000 do
        rounds <- rounds + 1

        for (destination, etherType, payload) in sinkA.Take() do
            let bytes = frame destination a.Config.Mac etherType payload
            let verdict = Interface.receive now (ReadOnlySpan bytes) &b sinkB

            if verdict.Deliver then
                upB.Add(bytes.[verdict.Offset .. verdict.Offset + verdict.Length - 1])

        for (destination, etherType, payload) in sinkB.Take() do
            let bytes = frame destination b.Config.Mac etherType payload
            let verdict = Interface.receive now (ReadOnlySpan bytes) &a sinkA

            if verdict.Deliver then
                upA.Add(bytes.[verdict.Offset .. verdict.Offset + verdict.Length - 1])

    Expect.isLessThan rounds 1000 "the link goes quiet"
    List.ofSeq upA, List.ofSeq upB

/// Runs both interfaces' timers due by `now`, then pumps.
let private settle
    (now: int64)
    (a: byref<InterfaceState>)
    (sinkA: Recorder)
    (b: byref<InterfaceState>)
    (sinkB: Recorder)
    =
    while min (Interface.nextDeadline a) (Interface.nextDeadline b) <= now do
        let at = min (Interface.nextDeadline a) (Interface.nextDeadline b)

        if Interface.nextDeadline a <= at then
            Interface.handleTimer at &a sinkA

        if Interface.nextDeadline b <= at then
            Interface.handleTimer at &b sinkB

        pump at &a sinkA &b sinkB |> ignore

// ------------------------------------------------------------------------------------------
// The tests
// ------------------------------------------------------------------------------------------

let private allocatedBy (rounds: int) (run: unit -> unit) =
    let before = GC.GetAllocatedBytesForCurrentThread()

    for _ in 1..rounds do
        run ()

    GC.GetAllocatedBytesForCurrentThread() - before

[<Tests>]
let tests =
    testList
        "Link interface"
        [
            testPropertyWithConfig heavyConfig "hostile frames, packets out and timers in any order never throw"
            <| Prop.forAll (Arb.fromGen steps) (fun run ->
                let s = settings 1
                s.SlaacSecret <- Array.create 16 7uy
                let sink = Recorder()
                let mutable state = Interface.create s 0L
                let mutable now = 0L

                for step in run do
                    match step with
                    | Frame bytes ->
                        let verdict = receive now bytes &state sink

                        if verdict.Deliver then
                            Expect.isLessThanOrEqual (verdict.Offset + verdict.Length) bytes.Length "inside the frame"
                    | Out packet -> send now packet &state sink |> ignore
                    | Wait gap ->
                        now <- now + gap

                        if Interface.nextDeadline state <= now then
                            Interface.handleTimer now &state sink

                    Expect.isGreaterThanOrEqual (Interface.nextDeadline state) 0L "a deadline, never negative"

                true)

            testPropertyWithConfig
                codecConfig
                "IPv4: a packet to a new neighbor waits for the ARP reply, then goes to its MAC"
            <| Prop.forAll (Arb.fromGen (Gen.zip neighbors4 peerMacs)) (fun (neighbor, mac) ->
                let sink = Recorder()
                let mutable state = Interface.create (settings 0) 0L
                let packet = ipv4Packet ours4 neighbor 20
                Expect.equal (send 5L packet &state sink) NextHopKind.Pending "pending"

                match sink.Take() with
                | [ (destination, etherType, body) ] ->
                    Expect.equal (destination, etherType) (MacAddress.Broadcast, EtherType.Arp) "a broadcast ARP frame"

                    match Arp.parse (ReadOnlySpan body) with
                    | Ok arp ->
                        Expect.equal arp.Operation Arp.Operation.Request "a request"

                        Expect.equal
                            (arp.SenderMac, arp.SenderIp, arp.TargetIp)
                            (ourMac, ours4, neighbor)
                            "from us, for it"
                    | Error e -> failtestf "bad ARP: %A" e
                | other -> failtestf "one ARP request expected, got %A" other

                let reply = Arp.replyTo (Arp.request ourMac ours4 neighbor) mac
                let verdict = receive 10L (arpFrame ourMac reply) &state sink
                Expect.isFalse verdict.Deliver "ARP stays in the link layer"
                Expect.equal (sink.Take()) [ (mac, EtherType.Ipv4, packet) ] "the queued packet, released to its MAC"
                let next = Interface.resolve 11L (ReadOnlySpan packet) &state sink

                Expect.equal
                    (next.Kind, next.Mac, next.EtherType)
                    (NextHopKind.Send, mac, EtherType.Ipv4)
                    "resolved now"

                Expect.equal (sink.Count "link.released") 1 "counted"
                true)

            testPropertyWithConfig codecConfig "IPv6: a packet to a new neighbor waits for the solicited advertisement"
            <| Prop.forAll (Arb.fromGen (Gen.zip neighbors6 peerMacs)) (fun (neighbor, mac) ->
                let sink = Recorder()
                let mutable state = Interface.create (settings 0) 0L
                let packet = ipv6Packet ours6 neighbor 20
                Expect.equal (send 5L packet &state sink) NextHopKind.Pending "pending"
                let group = Ndp.solicitedNode neighbor

                match sink.Take() with
                | [ (destination, etherType, body) ] ->
                    Expect.equal
                        (destination, etherType)
                        (MacAddress.OfIpv6Multicast group, EtherType.Ipv6)
                        "to the solicited-node group's MAC"

                    match Ipv6.parse (ReadOnlySpan body) with
                    | Ok h ->
                        Expect.equal (h.Source, h.Destination, h.HopLimit) (ours6, group, 255uy) "IPv6 header"

                        match
                            Ndp.parse h.Source h.Destination h.HopLimit (ReadOnlySpan(body, 40, h.PayloadLength))
                        with
                        | Ok m ->
                            Expect.equal m.Type Ndp.MessageType.NeighborSolicitation "an NS"
                            Expect.equal m.Target neighbor "for the neighbor"
                            Expect.equal m.SourceLinkAddress (ValueSome ourMac) "with our MAC"
                        | Error e -> failtestf "bad NS: %A" e
                    | Error e -> failtestf "bad IPv6: %A" e
                | other -> failtestf "one NS expected, got %A" other

                let advertisement =
                    ndpPacket neighbor ours6 (fun dst ->
                        Ndp.writeNeighborAdvertisement
                            neighbor
                            ours6
                            neighbor
                            false
                            true
                            true
                            (ValueSome mac)
                            (Span dst))

                let verdict =
                    receive 10L (frame ourMac mac EtherType.Ipv6 advertisement) &state sink

                Expect.isFalse verdict.Deliver "ND stays in the link layer"
                Expect.equal (sink.Take()) [ (mac, EtherType.Ipv6, packet) ] "released to its MAC"
                let next = Interface.resolve 11L (ReadOnlySpan packet) &state sink
                Expect.equal (next.Kind, next.Mac) (NextHopKind.Send, mac) "resolved now"
                Expect.equal (NeighborCache.state neighbor state.Ndp) NeighborState.Reachable "REACHABLE (solicited)"
                true)

            testPropertyWithConfig
                heavyConfig
                "two interfaces on one link: every packet one sends the other passes up once, in order, whatever the pauses"
            <| Prop.forAll
                (Arb.fromGen (
                    Gen.listOf (
                        Gen.zip3 (Gen.elements [ 4; 6 ]) (Gen.choose (0, 1200)) (Gen.choose64 (0L, 120_000_000L))
                    )
                ))
                (fun sends ->
                    let theirMac = MacAddress 0x02A8_0000_0003UL
                    let theirs4 = Ipv4Address.Parse "10.108.0.3"
                    let theirs6 = Ipv6Address.Parse "fda8::3"
                    let other = settings 1
                    other.Mac <- theirMac
                    other.Address4 <- theirs4
                    other.Address6 <- theirs6
                    other.Seed <- 11UL
                    let sinkA = Recorder()
                    let sinkB = Recorder()
                    let mutable a = Interface.create (settings 1) 0L
                    let mutable b = Interface.create other 0L
                    settle (2L * retrans) &a sinkA &b sinkB
                    Expect.isFalse (a.StartPending || b.StartPending) "both started"
                    Expect.equal (a.Dad.Phase, b.Dad.Phase) (DadPhase.Passed, DadPhase.Passed) "no conflict"
                    let mutable now = 2L * retrans
                    let received = ResizeArray<byte[]>()
                    let sent = ResizeArray<byte[]>()

                    for (version, length, pause) in sends do
                        now <- now + pause
                        settle now &a sinkA &b sinkB

                        let packet =
                            if version = 4 then
                                ipv4Packet ours4 theirs4 length
                            else
                                ipv6Packet ours6 theirs6 length

                        // Numbered, so that order and duplicates show.
                        if length >= 2 then
                            packet.[packet.Length - 2] <- byte (sent.Count >>> 8)
                            packet.[packet.Length - 1] <- byte sent.Count

                        sent.Add packet
                        send now packet &a sinkA |> ignore
                        let _, up = pump now &a sinkA &b sinkB
                        received.AddRange up

                    Expect.equal (List.ofSeq received) (List.ofSeq sent) "every packet once, in order"
                    true)

            test "an unanswered resolution asks three times, RetransTimer apart, then drops the queue (RFC 4861 §7.2.2)" {
                let sink = Recorder()
                let mutable state = Interface.create (settings 0) 0L
                let neighbor = Ipv4Address.Parse "10.108.0.9"
                send 0L (ipv4Packet ours4 neighbor 1) &state sink |> ignore
                send 0L (ipv4Packet ours4 neighbor 2) &state sink |> ignore
                let mutable requests = [ 0L ]
                sink.Take() |> ignore

                for _ in 1..10 do
                    let at = Interface.nextDeadline state
                    Interface.handleTimer at &state sink

                    for (_, etherType, _) in sink.Take() do
                        if etherType = EtherType.Arp then
                            requests <- requests @ [ at ]

                Expect.equal
                    requests
                    [ 0L; retrans; 2L * retrans ]
                    "MAX_MULTICAST_SOLICIT = 3 requests, RetransTimer apart"

                Expect.equal (sink.Count "link.drop.unresolved") 2 "both waiting packets dropped"
                Expect.equal (NeighborCache.state neighbor state.Arp) NeighborState.Absent "the entry is gone"
            }

            testPropertyWithConfig
                codecConfig
                "the queue of an unresolved neighbor holds MaxQueuedPerEntry packets, the newest; drops are counted"
            <| Prop.forAll (Arb.fromGen (Gen.zip (Gen.choose (1, 8)) (Gen.choose (0, 20)))) (fun (bound, sent) ->
                let s = settings 0
                s.MaxQueuedPerEntry <- bound
                let sink = Recorder()
                let mutable state = Interface.create s 0L
                let neighbor = Ipv4Address.Parse "10.108.0.9"
                let packets = [ for i in 1..sent -> ipv4Packet ours4 neighbor i ]

                for p in packets do
                    send 1L p &state sink |> ignore

                let requests = sink.Take()
                Expect.equal requests.Length (min sent 1) "one ARP request, whatever the number of packets"
                let reply = Arp.replyTo (Arp.request ourMac ours4 neighbor) peerMac
                receive 2L (arpFrame ourMac reply) &state sink |> ignore
                let released = sink.Take() |> List.map (fun (_, _, p) -> p)
                let kept = List.skip (max 0 (sent - bound)) packets
                Expect.equal released kept "the newest MaxQueuedPerEntry, in order"
                Expect.equal (sink.Count "link.drop.queue-full") (max 0 (sent - bound)) "each drop counted"
                true)

            testPropertyWithConfig
                codecConfig
                "DAD: DupAddrDetectTransmits probes RetransTimer apart, then Ready; IP waits for it"
            <| Prop.forAll (Arb.fromGen (Gen.choose (1, 4))) (fun transmits ->
                let sink = Recorder()
                let start = 1_000L
                let mutable state = Interface.create (settings transmits) start

                let incoming =
                    frame ourMac peerMac EtherType.Ipv4 (ipv4Packet (Ipv4Address.Parse "10.108.0.1") ours4 4)

                Expect.isFalse (receive start incoming &state sink).Deliver "not while tentative"
                Expect.equal (sink.Count "link.drop.tentative") 1 "counted"
                let mutable probes = []
                let mutable readyAt = 0L

                while state.StartPending do
                    let at = Interface.nextDeadline state
                    readyAt <- at
                    Interface.handleTimer at &state sink

                    for (destination, _, body) in sink.Take() do
                        match
                            Ndp.parse
                                Ipv6Address.Any
                                (Ndp.solicitedNode ours6)
                                255uy
                                (ReadOnlySpan(body, 40, body.Length - 40))
                        with
                        | Ok m when m.Type = Ndp.MessageType.NeighborSolicitation && m.Target = ours6 ->
                            Expect.equal
                                destination
                                (MacAddress.OfIpv6Multicast(Ndp.solicitedNode ours6))
                                "to the group"

                            Expect.equal m.SourceLinkAddress ValueNone "no source link-layer address (§5.4.2)"
                            probes <- probes @ [ at ]
                        | other -> failtestf "a DAD probe expected: %A" other

                    if state.StartPending then
                        Expect.isEmpty (List.ofSeq sink.Events) "no outcome yet"

                Expect.equal probes [ for i in 0 .. transmits - 1 -> start + int64 i * retrans ] "the probes"

                match List.ofSeq sink.Events with
                | [ e ] ->
                    Expect.equal e.Kind LinkEventKind.Ready "Ready"
                    Expect.equal readyAt (start + int64 transmits * retrans) "RetransTimer after the last probe"

                    Expect.equal
                        (Interface.nextDeadline state)
                        (start + ReachableTime.RecomputeInterval)
                        "then only the ReachableTime redraw (RFC 4861 §6.3.2) is due"
                | other -> failtestf "one event expected: %A" other

                Expect.isTrue (receive start incoming &state sink).Deliver "IP comes up once the address is ours"
                true)

            testPropertyWithConfig
                codecConfig
                "DAD: another node's probe or advertisement for the address fails it, naming the node"
            <| Prop.forAll
                (Arb.fromGen (Gen.zip3 (Gen.choose (1, 3)) peerMacs (Gen.elements [ true; false ])))
                (fun (transmits, other, probe) ->
                    let sink = Recorder()
                    let mutable state = Interface.create (settings transmits) 0L
                    Interface.handleTimer 0L &state sink

                    let conflicting =
                        if probe then
                            let group = Ndp.solicitedNode ours6

                            frame
                                (MacAddress.OfIpv6Multicast group)
                                other
                                EtherType.Ipv6
                                (ndpPacket Ipv6Address.Any group (fun dst ->
                                    Ndp.writeNeighborSolicitation Ipv6Address.Any group ours6 ValueNone (Span dst)))
                        else
                            frame
                                (MacAddress.OfIpv6Multicast Ndp.AllNodes)
                                other
                                EtherType.Ipv6
                                (ndpPacket ours6 Ndp.AllNodes (fun dst ->
                                    Ndp.writeNeighborAdvertisement
                                        ours6
                                        Ndp.AllNodes
                                        ours6
                                        false
                                        false
                                        true
                                        (ValueSome other)
                                        (Span dst)))

                    receive (retrans / 2L) conflicting &state sink |> ignore

                    match List.ofSeq sink.Events with
                    | [ e ] ->
                        Expect.equal
                            (e.Kind, e.Address6, e.Mac)
                            (LinkEventKind.DuplicateAddress, ours6, other)
                            "the outcome"
                    | other -> failtestf "one event expected: %A" other

                    Expect.equal (sink.Count "ndp.dad.failed") 1 "counted"
                    Expect.equal state.Dad.Phase DadPhase.Failed "failed"

                    for t in 1L .. 5L do
                        Interface.handleTimer (t * retrans) &state sink

                    Expect.equal sink.Events.Count 1 "never Ready after"
                    true)

            test "an ARP request for us is answered to its sender; an ARP probe (sender 0.0.0.0) to its frame's source" {
                let sink = Recorder()
                let mutable state = Interface.create (settings 0) 0L
                let asker = Ipv4Address.Parse "10.108.0.1"

                receive 0L (arpFrame MacAddress.Broadcast (Arp.request peerMac asker ours4)) &state sink
                |> ignore

                match sink.Take() with
                | [ (destination, EtherType.Arp, body) ] ->
                    Expect.equal destination peerMac "to the asker"
                    let arp = Result.toOption (Arp.parse (ReadOnlySpan body)) |> Option.get

                    Expect.equal
                        (arp.Operation, arp.SenderMac, arp.SenderIp)
                        (Arp.Operation.Reply, ourMac, ours4)
                        "our reply"
                | other -> failtestf "one reply expected: %A" other

                Expect.equal (NeighborCache.state asker state.Arp) NeighborState.Stale "the asker learned (STALE)"

                let probe =
                    { Arp.request peerMac Ipv4Address.Any ours4 with
                        SenderMac = peerMac
                    }

                receive 0L (arpFrame MacAddress.Broadcast probe) &state sink |> ignore

                match sink.Take() with
                | [ (destination, EtherType.Arp, _) ] -> Expect.equal destination peerMac "to the frame's source"
                | other -> failtestf "one reply expected: %A" other
            }

            testSequenced
            <| test "a packet to a resolved next hop, a frame for us: no allocation" {
                let sink = Recorder()
                let mutable state = Interface.create (settings 0) 0L
                let neighbor = Ipv4Address.Parse "10.108.0.9"
                let packet = ipv4Packet ours4 neighbor 100
                let packet6 = ipv6Packet ours6 (Ipv6Address.Parse "fda8::9") 100
                send 0L packet &state sink |> ignore

                receive 0L (arpFrame ourMac (Arp.replyTo (Arp.request ourMac ours4 neighbor) peerMac)) &state sink
                |> ignore

                send 0L packet6 &state sink |> ignore

                let advertisement =
                    ndpPacket (Ipv6Address.Parse "fda8::9") ours6 (fun dst ->
                        Ndp.writeNeighborAdvertisement
                            (Ipv6Address.Parse "fda8::9")
                            ours6
                            (Ipv6Address.Parse "fda8::9")
                            false
                            true
                            true
                            (ValueSome peerMac)
                            (Span dst))

                receive 0L (frame ourMac peerMac EtherType.Ipv6 advertisement) &state sink
                |> ignore

                let incoming = frame ourMac peerMac EtherType.Ipv4 (ipv4Packet neighbor ours4 100)
                let mutable s = state
                let mutable kinds = 0

                let run () =
                    kinds <- kinds + int (Interface.resolve 1L (ReadOnlySpan packet) &s sink).Kind
                    kinds <- kinds + int (Interface.resolve 1L (ReadOnlySpan packet6) &s sink).Kind

                    if not (Interface.receive 1L (ReadOnlySpan incoming) &s sink).Deliver then
                        kinds <- kinds + 1

                allocatedBy 1000 run |> ignore
                kinds <- 0
                let allocated = allocatedBy 10_000 run
                Expect.equal kinds 0 "every packet resolved (Send = 0) and every frame delivered"
                Expect.equal allocated 0L $"{allocated} bytes for 30000 packets"
            }
        ]
