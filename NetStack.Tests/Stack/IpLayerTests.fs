/// The pure IP layer: classification of received packets, echo replies, UDP round trips through
/// fragmentation and reassembly, the ICMP error policy, path MTU learning and the token bucket.
module NetStack.Tests.Stack.IpLayerTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Core.Ip
open NetStack.Core.Stack
open NetStack.Tests
open NetStack.Tests.TestUtil

let private ours4 = Ipv4Address.Parse "10.0.0.2"
let private peer4 = Ipv4Address.Parse "10.0.0.1"
let private ours6 = Ipv6Address.Parse "fd00::2"
let private peer6 = Ipv6Address.Parse "fd00::1"

/// The stack's IP layer, and the peer's (the same code with the addresses swapped) to check
/// what the stack sends.
let private stackState mtu =
    IpLayer.create (IpLayer.config (ValueSome ours4) (ValueSome ours6) mtu) 0L

let private peerState mtu =
    IpLayer.create (IpLayer.config (ValueSome peer4) (ValueSome peer6) mtu) 0L

let private addresses v6 =
    if v6 then V6 peer6, V6 ours6 else V4 peer4, V4 ours4

let private receive (state: IpLayerState) (packet: byte[]) =
    let struct (state, r) = IpLayer.receive 1L (ReadOnlySpan packet) state
    state, r

/// Copies out the bytes a PayloadRef names.
let private bytesOf (input: byte[]) (reference: PayloadRef) =
    (IpLayer.slice (ReadOnlySpan input) reference).ToArray()

let private udpPacket (source: IpAddr) (destination: IpAddr) sourcePort destinationPort (payload: byte[]) =
    let buffer = Array.zeroCreate<byte> 70000

    let n =
        IpLayer.writeUdp source destination sourcePort destinationPort 77us (ReadOnlySpan payload) (Span buffer)

    buffer.[.. n - 1]

let private echoRequest (source: IpAddr) (destination: IpAddr) identifier sequence (data: byte[]) =
    let buffer = Array.zeroCreate<byte> 70000

    let n =
        IpLayer.writeEchoRequest source destination identifier sequence 5us (ReadOnlySpan data) (Span buffer)

    buffer.[.. n - 1]

/// The packets `planFragments` and `writeFragment` make of a whole packet.
let private fragments (packet: byte[]) (mtu: int) (identification: uint32) =
    let plan = IpLayer.planFragments (ReadOnlySpan packet) mtu identification

    [
        for i in 0 .. plan.Count - 1 do
            let buffer = Array.zeroCreate<byte> mtu
            let n = IpLayer.writeFragment plan (ReadOnlySpan packet) i (Span buffer)
            buffer.[.. n - 1]
    ]

/// Feeds packets in order; returns the final state and every result.
let private receiveAll (state: IpLayerState) (packets: byte[] list) =
    let mutable s = state

    let results =
        [
            for p in packets do
                let s', r = receive s p
                s <- s'
                p, r
        ]

    s, results

/// Every reference of a result lies inside the buffer it points into (`input` for references
/// into the packet itself); the TCP layer's tests check their results with it too.
let referencesInside (input: byte[]) (r: Received) =
    let inside (reference: PayloadRef) =
        let length =
            if isNull reference.Array then
                input.Length
            else
                reference.Array.Length

        reference.Offset >= 0
        && reference.Length >= 0
        && reference.Offset + reference.Length <= length

    inside r.Packet && inside r.Payload

let private shuffle (seed: int) (items: 'T list) =
    let random = Random seed
    items |> List.map (fun x -> random.Next(), x) |> List.sortBy fst |> List.map snd

let private payloadGen (maxLength: int) =
    gen {
        let! length = Gen.choose (0, maxLength)
        let! bytes = Gen.arrayOfLength length (Gen.choose (0, 255) |> Gen.map byte)
        return bytes
    }

/// Valid packets of every kind the layer handles, from the peer to us.
let private validPacketGen =
    gen {
        let! v6 = Gen.elements [ false; true ]
        let! data = payloadGen 200
        let! kind = Gen.choose (0, 1)
        let source, destination = addresses v6

        return
            if kind = 0 then
                udpPacket source destination 1000us 2000us data
            else
                echoRequest source destination 7us 9us data
    }

/// Random bytes, the first nibble often 4 or 6 so that the IP parsers are reached.
let private garbageGen =
    gen {
        let! bytes = payloadGen 120
        let! first = Gen.elements [ 0x45uy; 0x46uy; 0x60uy; 0x4Fuy; 0x00uy; 0x61uy ]

        if bytes.Length > 0 then
            bytes.[0] <- first

        return bytes
    }

let private mutatedGen =
    gen {
        let! packet = validPacketGen

        let! flips =
            Gen.listOf (Gen.zip (Gen.choose (0, packet.Length - 1)) (Gen.choose (0, 255)))

        let! cut = Gen.choose (0, packet.Length)
        let copy = Array.copy packet

        for at, value in flips do
            copy.[at] <- byte value

        return copy.[.. cut - 1]
    }

/// The receive path of whole packets allocates nothing (reassembly is the documented exception):
/// exactly zero bytes on this thread over 20,000 packets.
///
/// A bound of 1,000 B was widened to 20,000 B after an 8 KB reading in one loaded full-suite run.
/// Not the code under test: per packet it allocates nothing in tier-0 code as in optimized code
/// (the same zero with DOTNET_TC_CallCounting=0, DOTNET_TieredCompilation=0 and by default, at
/// this commit and at the one the bound was widened in). What the measurement did hold was F#'s
/// loop itself: a `for` inside `test { }` is the builder's For, a sequence and a closure (112 B,
/// every run); and whatever else the run did on this thread around a garbage collection while
/// dozens of tests allocated in parallel. So the loop is a plain function's, the test runs alone
/// (testSequenced) and inside a no-GC region, and must see no collection and no byte.
let private allocatedBy (rounds: int) (run: unit -> unit) =
    let before = GC.GetAllocatedBytesForCurrentThread()

    for _ in 1..rounds do
        run ()

    GC.GetAllocatedBytesForCurrentThread() - before

let private allocationTest =
    testSequenced
    <| test "receiving a whole UDP datagram or echo request allocates nothing" {
        let peer, ours = addresses false

        let packets =
            [|
                udpPacket peer ours 1us 2us (Array.zeroCreate 1000)
                echoRequest peer ours 1us 2us [| 1uy |]
            |]

        let state = stackState 1500

        let run () =
            for p in packets do
                let struct (_, r) = IpLayer.receive 1L (ReadOnlySpan p) state
                ignore r.Kind

        // Warm up (tiered JIT), then measure.
        allocatedBy 1000 run |> ignore
        Expect.isTrue (GC.TryStartNoGCRegion(64L <<< 20)) "a no-GC region for the measurement"
        let collections = GC.CollectionCount 0
        let allocated = allocatedBy 10_000 run
        let collected = GC.CollectionCount 0 - collections

        if Runtime.GCSettings.LatencyMode = Runtime.GCLatencyMode.NoGCRegion then
            GC.EndNoGCRegion()

        Expect.equal collected 0 "no garbage collection during the measurement"
        Expect.equal allocated 0L $"{allocated} bytes for 20000 packets"
    }

[<Tests>]
let tests =
    testList
        "IpLayer"
        [
            test
                "loopback: 127/8, ::1 and our own sources only in packets that never left the stack (RFC 1122 §3.2.1.3 (g), RFC 4291 §2.5.3)" {
                let ours4 = Ipv4Address.Parse "10.1.0.2"
                let ours6 = Ipv6Address.Parse "fd01::2"

                let state =
                    IpLayer.create (IpLayer.config (ValueSome ours4) (ValueSome ours6) 1500) 0L

                let buffer = Array.zeroCreate<byte> 256

                let kinds (source: IpAddr) (destination: IpAddr) =
                    let n =
                        IpLayer.writeEchoRequest source destination 1us 1us 0us (ReadOnlySpan [| 1uy |]) (Span buffer)

                    let packet = ReadOnlySpan(buffer, 0, n)
                    let struct (_, wire) = IpLayer.receive 0L packet state
                    let struct (_, looped) = IpLayer.receiveLooped 0L packet state
                    wire.Kind, looped.Kind, IpLayer.loopsBack packet state

                let lo4 = V4(Ipv4Address.Parse "127.0.0.1")
                let lo6 = V6(Ipv6Address.Parse "::1")

                for source, destination in
                    [
                        lo4, V4(Ipv4Address.Parse "127.3.2.1")
                        V4 ours4, V4 ours4
                        lo6, lo6
                        V6 ours6, V6 ours6
                    ] do
                    Expect.equal
                        (kinds source destination)
                        (ReceivedKind.Dropped, ReceivedKind.EchoRequest, true)
                        $"{source} -> {destination}: dropped from the wire, taken when looped, kept inside"

                let _, _, outward = kinds (V4 ours4) (V4(Ipv4Address.Parse "10.1.0.1"))

                Expect.isFalse outward "a neighbor's address leaves by the device"

                Expect.equal
                    (IpLayer.loopedSource (V4(Ipv4Address.Parse "127.9.9.9")) state)
                    (ValueSome lo4)
                    "127/8 from 127.0.0.1"

                Expect.equal (IpLayer.loopedSource lo6 state) (ValueSome lo6) "::1 from ::1"
                Expect.equal (IpLayer.loopedSource (V6 ours6) state) (ValueSome(V6 ours6)) "ours from itself"
                Expect.equal (IpLayer.loopedSource (V6(Ipv6Address.Parse "fd01::1")) state) ValueNone "not ours"
            }

            testPropertyWithConfig codecConfig "random bytes never make receive throw, and references stay inside"
            <| Prop.forAll (Arb.fromGen garbageGen) (fun bytes ->
                let _, r = receive (stackState 1500) bytes
                Expect.isTrue (referencesInside bytes r) "references inside")

            testPropertyWithConfig codecConfig "mutated or truncated valid packets never make receive throw"
            <| Prop.forAll (Arb.fromGen mutatedGen) (fun bytes ->
                let _, r = receive (stackState 1500) bytes
                Expect.isTrue (referencesInside bytes r) "references inside"

                if r.Kind = ReceivedKind.Dropped then
                    Expect.notEqual r.Drop DropReason.NotDropped "a drop names its reason")

            testPropertyWithConfig
                codecConfig
                "an echo request is answered with its identifier, sequence and data, v4 and v6"
            <| fun (v6: bool) (identifier: uint16) (sequence: uint16) (data: byte[]) ->
                let source, destination = addresses v6

                let _, r =
                    receive (stackState 65535) (echoRequest source destination identifier sequence data)

                Expect.equal r.Kind ReceivedKind.EchoRequest "an echo request"
                let buffer = Array.zeroCreate<byte> 70000
                let request = echoRequest source destination identifier sequence data

                let n =
                    IpLayer.writeEchoReply
                        r.Destination
                        r.Source
                        r.Echo.Identifier
                        r.Echo.Sequence
                        1us
                        (IpLayer.slice (ReadOnlySpan request) r.Payload)
                        (Span buffer)

                let reply = buffer.[.. n - 1]
                let _, back = receive (peerState 65535) reply
                Expect.equal back.Kind ReceivedKind.EchoReply "the peer sees an echo reply"
                Expect.equal back.Echo.Identifier identifier "identifier"
                Expect.equal back.Echo.Sequence sequence "sequence"
                Expect.equal back.Source destination "from the address pinged"
                Expect.equal (bytesOf reply back.Payload) data "the same data"

            testPropertyWithConfig
                heavyConfig
                "a fragmented echo request arriving in any order is reassembled and answered"
            <| Prop.forAll
                (Arb.fromGen (Gen.zip3 (Gen.elements [ false; true ]) (payloadGen 9000) (Gen.choose (0, 1000))))
                (fun (v6, data, seed) ->
                    let source, destination = addresses v6
                    let request = echoRequest source destination 3us 4us data
                    let pieces = fragments request 1280 (uint32 seed) |> shuffle seed
                    let _, results = receiveAll (stackState 1500) pieces

                    let answers =
                        results |> List.filter (fun (_, r) -> r.Kind = ReceivedKind.EchoRequest)

                    Expect.equal answers.Length 1 "exactly one echo request"
                    let input, r = answers.Head
                    Expect.equal (bytesOf input r.Payload) data "the reassembled data")

            testPropertyWithConfig
                heavyConfig
                "UDP built, fragmented for a random MTU and received in any order comes out whole"
            <| Prop.forAll
                (Arb.fromGen (
                    Gen.zip3
                        (Gen.elements [ false; true ])
                        (payloadGen 20000)
                        (Gen.zip (Gen.choose (1280, 1500)) (Gen.choose (0, 1000)))
                ))
                (fun (v6, data, (mtu, seed)) ->
                    let source, destination = addresses v6
                    let packet = udpPacket source destination 1234us 5678us data
                    let pieces = fragments packet mtu (uint32 seed) |> shuffle seed

                    for p in pieces do
                        Expect.isLessThanOrEqual p.Length mtu "every packet fits the MTU"

                    let _, results = receiveAll (stackState 1500) pieces

                    let datagrams =
                        results |> List.filter (fun (_, r) -> r.Kind = ReceivedKind.UdpDatagram)

                    Expect.equal datagrams.Length 1 "exactly one datagram"
                    let input, r = datagrams.Head
                    Expect.equal r.Ports.Source 1234us "source port"
                    Expect.equal r.Ports.Destination 5678us "destination port"
                    Expect.equal r.Source source "source"
                    Expect.equal (bytesOf input r.Payload) data "payload")

            testPropertyWithConfig
                codecConfig
                "the token bucket never grants more than the burst plus the rate over any interval"
            <| Prop.forAll
                (Arb.fromGen (
                    Gen.zip3 (Gen.choose (0, 1000)) (Gen.choose (1, 20)) (Gen.listOf (Gen.choose (0, 50_000)))
                ))
                (fun (rate, burst, steps) ->
                    let mutable bucket = TokenBucket.create rate burst 0L
                    let mutable now = 0L

                    let grants =
                        [|
                            for step in steps do
                                now <- now + int64 step
                                let struct (granted, next) = TokenBucket.tryTake now bucket
                                bucket <- next

                                if granted then
                                    now
                        |]

                    for i in 0 .. grants.Length - 1 do
                        for j in i .. grants.Length - 1 do
                            let allowed = int64 burst + int64 rate * (grants.[j] - grants.[i]) / 1_000_000L
                            Expect.isLessThanOrEqual (int64 (j - i + 1)) allowed "grants within the budget")

            test "a full bucket grants its burst at once, then one token per 1/rate seconds" {
                let mutable bucket = TokenBucket.create 10 3 0L

                let take now =
                    let struct (granted, next) = TokenBucket.tryTake now bucket
                    bucket <- next
                    granted

                Expect.equal [ take 0L; take 0L; take 0L; take 0L ] [ true; true; true; false ] "burst of 3"
                Expect.isFalse (take 99_999L) "not before 100 ms"
                Expect.isTrue (take 100_000L) "one after 100 ms"
            }

            test "an IPv4 echo request gets the echo reply computed by hand" {
                // 10.0.0.1 -> 10.0.0.2, id 1, seq 1, no data. Header checksum: the words sum to
                // 0x9920, so 0x66DF; ICMP: 0x0802 -> 0xF7FD for the request, 0x0002 -> 0xFFFD for the reply.
                let request = hex "4500001c 00000000 4001 66df 0a000001 0a000002 0800f7fd 00010001"
                let _, r = receive (stackState 1500) request
                Expect.equal r.Kind ReceivedKind.EchoRequest "an echo request"
                let buffer = Array.zeroCreate<byte> 100

                let n =
                    IpLayer.writeEchoReply
                        r.Destination
                        r.Source
                        r.Echo.Identifier
                        r.Echo.Sequence
                        0us
                        ReadOnlySpan.Empty
                        (Span buffer)

                Expect.equal
                    (toHex buffer.[.. n - 1])
                    "4500001c00000000400166df0a0000020a0000010000fffd00010001"
                    "reply bytes"
            }

            test "each malformed or unwanted packet is dropped with its own reason" {
                let source, destination = addresses false
                let udp = udpPacket source destination 1us 2us [| 1uy; 2uy; 3uy |]
                let badIpChecksum = Array.copy udp
                badIpChecksum.[10] <- badIpChecksum.[10] ^^^ 0xFFuy
                let badUdpChecksum = Array.copy udp
                badUdpChecksum.[27] <- badUdpChecksum.[27] ^^^ 0xFFuy
                let v6 = udpPacket (V6 peer6) (V6 ours6) 1us 2us [| 1uy |]
                let zeroChecksum6 = Array.copy v6
                zeroChecksum6.[46] <- 0uy
                zeroChecksum6.[47] <- 0uy
                let toPortZero = udpPacket source destination 1us 0us [||]

                let cases =
                    [
                        "empty", [||], DropReason.Malformed(PacketLayer.Ip, Truncated(1, 0))
                        "version 5", [| 0x50uy |], DropReason.Malformed(PacketLayer.Ip, BadVersion 5)
                        "IPv4 checksum", badIpChecksum, DropReason.Malformed(PacketLayer.Ipv4, BadChecksum)
                        "UDP checksum", badUdpChecksum, DropReason.Malformed(PacketLayer.Udp, BadChecksum)
                        "IPv6 UDP zero checksum", zeroChecksum6, DropReason.Malformed(PacketLayer.Udp, BadChecksum)
                        "not for us",
                        udpPacket source (V4(Ipv4Address.Parse "10.0.0.9")) 1us 2us [||],
                        DropReason.NotForUs
                        "multicast source",
                        udpPacket (V4(Ipv4Address.Parse "224.0.0.1")) destination 1us 2us [||],
                        DropReason.BadSource
                        "loopback source",
                        udpPacket (V4(Ipv4Address.Parse "127.0.0.1")) destination 1us 2us [||],
                        DropReason.BadSource
                        "our own source", udpPacket destination destination 1us 2us [||], DropReason.BadSource
                        "our own IPv6 source", udpPacket (V6 ours6) (V6 ours6) 1us 2us [||], DropReason.BadSource
                        "port zero", toPortZero, DropReason.UdpPortZero
                        // ff02::1 (all nodes) is always taken; a group nobody joined is not.
                        "IPv6 multicast destination not joined",
                        udpPacket (V6 peer6) (V6(Ipv6Address.Parse "ff15::1")) 1us 2us [||],
                        DropReason.NotJoined
                        "IPv4 multicast destination not joined",
                        udpPacket (V4 peer4) (V4(Ipv4Address.Parse "239.1.2.3")) 1us 2us [||],
                        DropReason.NotJoined
                    ]

                for name, packet, reason in cases do
                    let _, r = receive (stackState 1500) packet
                    Expect.equal r.Kind ReceivedKind.Dropped name
                    Expect.equal r.Drop reason name

                Expect.equal
                    (DropReason.name (DropReason.Malformed(PacketLayer.Ipv4, BadChecksum)))
                    "drop.ipv4.bad-checksum"
                    "counter name"

                Expect.equal (DropReason.name DropReason.NotForUs) "drop.not-for-us" "counter name"
            }

            test "port unreachable from the peer reaches us with the quoted addresses and ports, v4 and v6" {
                for v6 in [ false; true ] do
                    let peer, ours = addresses v6
                    // We send a datagram; the peer has no socket and answers with an error.
                    let datagram = udpPacket ours peer 40000us 9us [| 42uy |]
                    let buffer = Array.zeroCreate<byte> 1500

                    let struct (_, verdict, n) =
                        IpLayer.tryWriteError
                            0L
                            OutgoingError.PortUnreachable
                            (ReadOnlySpan datagram)
                            (Span buffer)
                            (peerState 1500)

                    Expect.equal verdict ErrorVerdict.Sent "the peer sends the error"
                    let _, r = receive (stackState 1500) buffer.[.. n - 1]
                    Expect.equal r.Kind ReceivedKind.IcmpError "an ICMP error"
                    Expect.equal r.Error.Kind IcmpErrorKind.PortUnreachable "port unreachable"
                    Expect.equal r.Error.Quoted.Protocol IpProtocol.Udp "about UDP"
                    Expect.equal r.Error.Quoted.Source ours "from us"
                    Expect.equal r.Error.Quoted.Destination peer "to the peer"
                    Expect.isTrue r.Error.Quoted.PortsKnown "the quote reaches the ports"
                    Expect.equal (r.Error.Quoted.Ports.Source, r.Error.Quoted.Ports.Destination) (40000us, 9us) "ports"
            }

            testPropertyWithConfig
                codecConfig
                "an ICMP error's quote shows ports, echo identifier and sequence, or SEG.SEQ exactly when it reaches their bytes"
            <| fun (v6: bool) (kind: byte) (first: uint16) (second: uint16) (sequence: uint32) (cut: byte) ->
                let peer, ours = addresses v6
                let ip = if v6 then 40 else 20
                let buffer = Array.zeroCreate<byte> 1500
                let data = [| 1uy; 2uy; 3uy |]

                let segment: NetStack.Core.Tcp.OutgoingSegment =
                    {
                        Seq = NetStack.Core.Tcp.SeqNum sequence
                        Ack = NetStack.Core.Tcp.SeqNum 0u
                        Flags = TcpFlags.Ack
                        Window = 1000us
                        Options = TcpOptions.None
                        DataPosition = 0L
                        DataLength = data.Length
                    }

                // One of our packets: UDP and TCP from port `first` to `second`, or an echo
                // request with identifier `first` and sequence `second`.
                let protocol, n =
                    match int kind % 3 with
                    | 0 -> IpProtocol.Udp, IpLayer.writeUdp ours peer first second 1us (ReadOnlySpan data) (Span buffer)
                    | 1 ->
                        IpProtocol.Tcp,
                        IpLayer.writeTcp ours peer first second 1us segment (ReadOnlySpan data) (Span buffer)
                    | _ ->
                        (if v6 then IpProtocol.Icmpv6 else IpProtocol.Icmp),
                        IpLayer.writeEchoRequest ours peer first second 1us (ReadOnlySpan data) (Span buffer)

                // The peer quotes the first `length` bytes of it (less than a whole IP header too).
                let length = min n (int cut % (ip + 12))
                let original = ReadOnlySpan(buffer, 0, length)
                let icmp = Array.zeroCreate<byte> 1500

                let m =
                    if v6 then
                        let m =
                            Icmpv6.buildDestinationUnreachable
                                (Span(icmp, 40, 1460))
                                peer6
                                ours6
                                Icmpv6.UnreachableCode.Port
                                original

                        Ipv6.write
                            { Ipv6.header peer6 ours6 IpProtocol.Icmpv6 with
                                PayloadLength = m
                            }
                            (Span icmp)
                        + m
                    else
                        let m =
                            Icmpv4.buildDestinationUnreachable
                                (Span(icmp, 20, 1480))
                                Icmpv4.UnreachableCode.Port
                                original

                        Ipv4.write (Ipv4.header peer4 ours4 IpProtocol.Icmp) ReadOnlySpan.Empty m (Span icmp)
                        + m

                let _, r = receive (stackState 1500) icmp.[.. m - 1]
                let transport = length - ip

                if transport < 0 then
                    Expect.equal
                        (r.Kind, r.Drop)
                        (ReceivedKind.Dropped, DropReason.UnrelatedIcmpError)
                        "a quote without a whole IP header says nothing"
                else
                    let q = r.Error.Quoted
                    let isIcmp = int kind % 3 = 2
                    Expect.equal r.Kind ReceivedKind.IcmpError "an ICMP error"
                    Expect.equal r.Error.Kind IcmpErrorKind.PortUnreachable "port unreachable"
                    Expect.equal (q.Protocol, q.Source, q.Destination) (protocol, ours, peer) "the quoted header"
                    // UDP and TCP ports: transport bytes 0-3; an echo's identifier and
                    // sequence: ICMP bytes 4-7; SEG.SEQ: TCP bytes 4-7.
                    Expect.equal q.PortsKnown (not isIcmp && transport >= 4) "ports known"
                    Expect.equal q.EchoKnown (isIcmp && transport >= 8) "echo known"
                    Expect.equal q.SequenceKnown (protocol = IpProtocol.Tcp && transport >= 8) "sequence known"

                    if q.PortsKnown then
                        Expect.equal (q.Ports.Source, q.Ports.Destination) (first, second) "the ports"

                    if q.EchoKnown then
                        Expect.equal (q.Echo.Identifier, q.Echo.Sequence) (first, second) "identifier and sequence"

                    if q.SequenceKnown then
                        Expect.equal q.Sequence sequence "SEG.SEQ"

            test "ICMP errors are never sent about ICMP errors, later fragments, multicast, and beyond the rate" {
                let peer, ours = addresses false
                let buffer = Array.zeroCreate<byte> 1500

                let verdictOf (state: IpLayerState) (original: byte[]) =
                    let struct (state, verdict, _) =
                        IpLayer.tryWriteError
                            0L
                            OutgoingError.PortUnreachable
                            (ReadOnlySpan original)
                            (Span buffer)
                            state

                    state, verdict

                // An error about our datagram, as the stack would receive it.
                let datagram = udpPacket ours peer 1us 2us [| 1uy |]

                let struct (_, _, n) =
                    IpLayer.tryWriteError
                        0L
                        OutgoingError.PortUnreachable
                        (ReadOnlySpan datagram)
                        (Span buffer)
                        (peerState 1500)

                let error = buffer.[.. n - 1]
                Expect.equal (snd (verdictOf (stackState 1500) error)) ErrorVerdict.AboutIcmpError "not about an error"
                let big = udpPacket peer ours 1us 2us (Array.zeroCreate 3000)
                let later = (fragments big 1280 1u).[1]

                Expect.equal
                    (snd (verdictOf (stackState 1500) later))
                    ErrorVerdict.NotFirstFragment
                    "not about a later fragment"

                let multicast = udpPacket peer (V4(Ipv4Address.Parse "239.1.1.1")) 1us 2us [||]

                Expect.equal
                    (snd (verdictOf (stackState 1500) multicast))
                    ErrorVerdict.NotUnicastDestination
                    "not about multicast"

                let mutable state = stackState 1500
                let plain = udpPacket peer ours 1us 2us [||]

                let verdicts =
                    [
                        for _ in 1..12 do
                            let s, v = verdictOf state plain
                            state <- s
                            v
                    ]

                Expect.equal (verdicts |> List.filter ((=) ErrorVerdict.Sent) |> List.length) 10 "a burst of 10"
                Expect.equal (List.last verdicts) ErrorVerdict.RateLimited "then rate-limited"
            }

            test "packet too big lowers the path MTU, never below the family minimum" {
                for v6, reported, expected in [ true, 1400u, 1400; true, 1000u, 1280; false, 576u, 576; false, 20u, 68 ] do
                    let peer, ours = addresses v6
                    let sent = udpPacket ours peer 1us 2us (Array.zeroCreate 1450)
                    let buffer = Array.zeroCreate<byte> 1500
                    let quote = sent.[..547]

                    let n =
                        if v6 then
                            let m =
                                Icmpv6.buildPacketTooBig
                                    (Span(buffer, 40, 1460))
                                    peer6
                                    ours6
                                    reported
                                    (ReadOnlySpan quote)

                            Ipv6.write
                                { Ipv6.header peer6 ours6 IpProtocol.Icmpv6 with
                                    PayloadLength = m
                                }
                                (Span buffer)
                            + m
                        else
                            let m =
                                Icmpv4.buildFragmentationNeeded
                                    (Span(buffer, 20, 1480))
                                    (uint16 reported)
                                    (ReadOnlySpan quote)

                            Ipv4.write (Ipv4.header peer4 ours4 IpProtocol.Icmp) ReadOnlySpan.Empty m (Span buffer)
                            + m

                    let state, r = receive (stackState 1500) buffer.[.. n - 1]
                    Expect.equal r.Error.Kind IcmpErrorKind.PacketTooBig "too big"
                    Expect.equal (IpLayer.pathMtu 2L peer state) expected $"path MTU after a report of {reported}"

                    Expect.equal
                        (IpLayer.pathMtu (2L + PathMtu.DefaultLifetime) peer state)
                        1500
                        "forgotten after its lifetime"
            }

            test
                "TCP over IPv4 carries DF; a too-big quoting TCP gives its sequence number and path MTU, and the cache learns only from learnPathMtu" {
                for v6 in [ false; true ] do
                    let peer, ours = addresses v6

                    let segment: NetStack.Core.Tcp.OutgoingSegment =
                        {
                            Seq = NetStack.Core.Tcp.SeqNum 0xDEADBEEFu
                            Ack = NetStack.Core.Tcp.SeqNum 0u
                            Flags = TcpFlags.Syn
                            Window = 1000us
                            Options = TcpOptions.None
                            DataPosition = 0L
                            DataLength = 0
                        }

                    let buffer = Array.zeroCreate<byte> 1500

                    let n =
                        IpLayer.writeTcp ours peer 40000us 80us 9us segment ReadOnlySpan.Empty (Span buffer)

                    let sent = buffer.[.. n - 1]

                    if not v6 then
                        match Ipv4.parse (ReadOnlySpan sent) with
                        | Ok h -> Expect.isTrue h.DontFragment "DF set, on a SYN too (RFC 1191 §3)"
                        | Error e -> failtest $"{e}"

                    let icmp = Array.zeroCreate<byte> 1500

                    let m =
                        if v6 then
                            let m =
                                Icmpv6.buildPacketTooBig (Span(icmp, 40, 1460)) peer6 ours6 1300u (ReadOnlySpan sent)

                            Ipv6.write
                                { Ipv6.header peer6 ours6 IpProtocol.Icmpv6 with
                                    PayloadLength = m
                                }
                                (Span icmp)
                            + m
                        else
                            let m =
                                Icmpv4.buildFragmentationNeeded (Span(icmp, 20, 1480)) 1300us (ReadOnlySpan sent)

                            Ipv4.write (Ipv4.header peer4 ours4 IpProtocol.Icmp) ReadOnlySpan.Empty m (Span icmp)
                            + m

                    let state, r = receive (stackState 1500) icmp.[.. m - 1]
                    Expect.equal r.Kind ReceivedKind.IcmpError "an ICMP error"
                    Expect.equal r.Error.Quoted.Protocol IpProtocol.Tcp "about TCP"
                    Expect.isTrue r.Error.Quoted.SequenceKnown "the quote reaches the sequence number"
                    Expect.equal r.Error.Quoted.Sequence 0xDEADBEEFu "the quoted SEG.SEQ"
                    Expect.equal r.Error.PathMtu 1300 "the reported MTU"

                    Expect.equal
                        (IpLayer.pathMtu 2L peer state)
                        1500
                        "not believed before TCP checked it (RFC 5927 §4.1)"

                    let state = IpLayer.learnPathMtu 2L peer 1300 state
                    Expect.equal (IpLayer.pathMtu 3L peer state) 1300 "learned once TCP accepted it"
            }

            test "a datagram whose first fragment came but never completed earns a time exceeded" {
                for v6 in [ false; true ] do
                    let peer, ours = addresses v6
                    let big = udpPacket peer ours 1us 2us (Array.zeroCreate 3000)
                    let first = (fragments big 1280 9u).[0]
                    let state, r = receive (stackState 1500) first
                    Expect.equal r.Kind ReceivedKind.FragmentHeld "held"
                    let deadline = (IpLayer.nextDeadline state).Value
                    let struct (_, abandoned) = IpLayer.expire deadline state
                    Expect.equal abandoned.Length 1 "one datagram given up"
                    let a = abandoned.Head
                    let quote = Array.zeroCreate<byte> 1500
                    let q = IpLayer.writeFirstFragment a.Key a.FirstFragment.Value (Span quote)
                    Expect.equal quote.[.. q - 1] first "the first fragment as it arrived"
                    let buffer = Array.zeroCreate<byte> 1500

                    let struct (_, verdict, n) =
                        IpLayer.tryWriteError
                            deadline
                            OutgoingError.ReassemblyTimeExceeded
                            (ReadOnlySpan quote.[.. q - 1])
                            (Span buffer)
                            state

                    Expect.equal verdict ErrorVerdict.Sent "sent"
                    let _, seen = receive (peerState 1500) buffer.[.. n - 1]
                    Expect.equal seen.Kind ReceivedKind.IcmpError "the peer reads an ICMP error"
                    Expect.equal seen.Error.Kind IcmpErrorKind.TimeExceeded "time exceeded"
                    Expect.equal seen.Error.Code 1uy "code 1: reassembly"
            }
            allocationTest
        ]
