/// The engine loop on an in-memory device: deterministic, no kernel. Packets from the "peer" are
/// built with the IP layer's own builders and what the stack writes is read back with a peer
/// IP layer state.
module NetStack.Tests.Stack.EngineLoopTests

open System
open System.Net
open System.Net.NetworkInformation
open System.Net.Sockets
open System.Threading
open System.Threading.Tasks
open Expecto
open NetStack
open NetStack.Engine
open NetStack.Core.Wire
open NetStack.Core.Stack

let private ours4 = Ipv4Address.Parse "10.0.0.2"
let private peer4 = Ipv4Address.Parse "10.0.0.1"
let private ours6 = Ipv6Address.Parse "fd00::2"
let private peer6 = Ipv6Address.Parse "fd00::1"

let private options queueBytes =
    NetStackOptions(
        Address = ours4.ToIPAddress(),
        HostAddress = peer4.ToIPAddress(),
        Address6 = ours6.ToIPAddress(),
        HostAddress6 = peer6.ToIPAddress(),
        UdpReceiveQueueBytes = queueBytes
    )

/// A memory device that says the kernel takes checksum offload and USO: what is written with a
/// header is recorded with it (gather writes reach it joined, through the interface's default).
/// Its link MTU is 1500; `inner` must take super-packets.
type private UsoDevice(inner: MemoryPacketDevice) =
    let headers = Collections.Concurrent.ConcurrentQueue<VirtioNetHeader>()

    member _.Headers = List.ofSeq headers

    interface IOffloadPacketDevice with
        member _.Offloads =
            NetStack.Device.TunOffloads.Checksum
            ||| NetStack.Device.TunOffloads.Uso4
            ||| NetStack.Device.TunOffloads.Uso6

        member _.Mtu = 1500
        member _.TryRead(buffer, timeout, length) = inner.TryRead(buffer, timeout, &length)

        member _.TryReadWithHeader(buffer, timeout, length, header) =
            header <- VirtioNetHeader.None
            inner.TryRead(buffer, timeout, &length)

        member _.Write(packet: ReadOnlySpan<byte>) = inner.Write packet

        member _.Write(packet: ReadOnlySpan<byte>, header: inref<VirtioNetHeader>) =
            headers.Enqueue header
            inner.Write packet

        member _.Wake() = inner.Wake()
        member _.Dispose() = inner.Dispose()

let private withStack (queueBytes: int) (f: NetworkStack -> MemoryPacketDevice -> unit) =
    let device = new MemoryPacketDevice(1500)
    use stack = NetworkStack.Start(options queueBytes, device)
    f stack device
    NetStack.Tests.TestUtil.assertNoExceptions stack

/// A memory device that throws an InvalidOperationException (no device error the engine
/// expects) from its next read, or from its writes, when told: the way to make the engine's
/// loop catch and count an exception.
type private ThrowingDevice(inner: MemoryPacketDevice) =
    member val ThrowOnNextRead = false with get, set
    member val ThrowOnWrite = false with get, set

    interface IPacketDevice with
        member _.Mtu = 1500

        member this.TryRead(buffer, timeout, length) =
            if this.ThrowOnNextRead then
                this.ThrowOnNextRead <- false
                length <- 0
                raise (InvalidOperationException "an injected read failure")

            inner.TryRead(buffer, timeout, &length)

        member this.Write(packet: ReadOnlySpan<byte>) =
            if this.ThrowOnWrite then
                raise (InvalidOperationException "an injected write failure")

            inner.Write packet

        member _.Wake() = inner.Wake()
        member _.Dispose() = inner.Dispose()

let private addresses v6 =
    if v6 then V6 peer6, V6 ours6 else V4 peer4, V4 ours4

let private peerState () =
    IpLayer.create (IpLayer.config (ValueSome peer4) (ValueSome peer6) 65535) 0L

let private udpPacket source destination sourcePort destinationPort (payload: byte[]) =
    let buffer = Array.zeroCreate<byte> 70000

    let n =
        IpLayer.writeUdp source destination sourcePort destinationPort 1us (ReadOnlySpan payload) (Span buffer)

    buffer.[.. n - 1]

let private timeout = TimeSpan.FromSeconds 5.0

let private written (device: MemoryPacketDevice) =
    match device.WaitWritten timeout with
    | null -> failtest "the stack wrote nothing"
    | packet -> packet

/// What the peer makes of packets the stack wrote (fragments are fed until something whole comes out).
let private peerReads (device: MemoryPacketDevice) =
    let mutable state = peerState ()
    let mutable result = None

    while result.IsNone do
        let packet = written device
        let struct (s, r) = IpLayer.receive 1L (ReadOnlySpan packet) state
        state <- s

        if r.Kind <> ReceivedKind.FragmentHeld then
            result <- Some(packet, r)

    result.Value

let private waitUntil (condition: unit -> bool) =
    let deadline = DateTime.UtcNow + timeout

    while not (condition ()) && DateTime.UtcNow < deadline do
        Thread.Sleep 5

    Expect.isTrue (condition ()) "the condition became true in time"

let private socketError (task: Task) =
    try
        task.Wait timeout |> ignore
        failtest "no exception"
    with :? AggregateException as e ->
        match e.InnerException with
        | :? SocketException as s -> s.SocketErrorCode
        | other -> raise other

[<Tests>]
let tests =
    testList
        "Engine loop"
        [
            test "an injected echo request is answered on the device, v4 and v6" {
                withStack 65536 (fun stack device ->
                    for v6 in [ false; true ] do
                        let peer, ours = addresses v6
                        let buffer = Array.zeroCreate<byte> 2000
                        let data = [| 1uy .. 100uy |]

                        let n =
                            IpLayer.writeEchoRequest peer ours 5us 6us 1us (ReadOnlySpan data) (Span buffer)

                        device.Inject(ReadOnlySpan(buffer, 0, n))
                        let reply, r = peerReads device
                        Expect.equal r.Kind ReceivedKind.EchoReply "an echo reply"
                        Expect.equal (r.Echo.Identifier, r.Echo.Sequence) (5us, 6us) "identifier and sequence"
                        Expect.equal ((IpLayer.slice (ReadOnlySpan reply) r.Payload).ToArray()) data "data"

                    waitUntil (fun () -> stack.Statistics.["icmp.echo.replied"] = 2L))
            }

            test "UDP reaches a bound socket with the sender's endpoint; a closed port earns port unreachable" {
                withStack 65536 (fun stack device ->
                    use socket = stack.BindUdp(IPEndPoint(IPAddress.IPv6Any, 5000))
                    let receive = socket.ReceiveFromAsync(Memory(Array.zeroCreate<byte> 100)).AsTask()
                    let peer, ours = addresses false
                    device.Inject(ReadOnlySpan(udpPacket peer ours 7000us 5000us [| 9uy; 8uy |]))
                    Expect.isTrue (receive.Wait timeout) "received"
                    Expect.equal receive.Result.ReceivedBytes 2 "two bytes"
                    let from = receive.Result.RemoteEndPoint :?> IPEndPoint
                    Expect.equal from.Address (IPAddress.Parse "::ffff:10.0.0.1") "dual mode reports a mapped address"
                    Expect.equal from.Port 7000 "port"
                    device.Inject(ReadOnlySpan(udpPacket peer ours 7000us 5001us [| 1uy |]))
                    let _, r = peerReads device
                    Expect.equal r.Kind ReceivedKind.IcmpError "an ICMP error"
                    Expect.equal r.Error.Kind IcmpErrorKind.PortUnreachable "port unreachable"
                    Expect.equal r.Error.Quoted.Ports.Destination 5001us "about the closed port"
                    waitUntil (fun () -> stack.Statistics.["icmp.error.sent.port-unreachable"] = 1L))
            }

            test "the receive queue is bounded in bytes and its drops are counted" {
                // 1000 bytes hold six 100-byte datagrams with their 64 bytes of bookkeeping each.
                withStack 1000 (fun stack device ->
                    use socket = stack.BindUdp(IPEndPoint(IPAddress.Any, 5000))
                    let peer, ours = addresses false

                    for i in 1..20 do
                        device.Inject(ReadOnlySpan(udpPacket peer ours 7000us 5000us (Array.create 100 (byte i))))

                    waitUntil (fun () ->
                        stack.Statistics.["udp.delivered"] + stack.Statistics.["udp.drop.queue-full"] = 20L)

                    Expect.equal stack.Statistics.["udp.drop.queue-full"] 14L "fourteen dropped"
                    let buffer = Array.zeroCreate<byte> 200

                    for i in 1..6 do
                        let r = socket.ReceiveFromAsync(Memory buffer).AsTask().Result
                        Expect.equal r.ReceivedBytes 100 "a whole datagram"
                        Expect.equal buffer.[0] (byte i) "in order")
            }

            test "ports: a taken port is AddressAlreadyInUse, port 0 picks from 49152-65535, dual mode takes both" {
                withStack 65536 (fun stack _ ->
                    use a = stack.BindUdp(IPEndPoint(IPAddress.IPv6Any, 6000))

                    let inUse (endPoint: IPEndPoint) =
                        try
                            stack.BindUdp(endPoint).Dispose()
                            SocketError.Success
                        with :? SocketException as e ->
                            e.SocketErrorCode

                    Expect.equal
                        (inUse (IPEndPoint(IPAddress.Any, 6000)))
                        SocketError.AddressAlreadyInUse
                        "IPv4 taken by dual mode"

                    Expect.equal
                        (inUse (IPEndPoint(ours6.ToIPAddress(), 6000)))
                        SocketError.AddressAlreadyInUse
                        "IPv6 taken"

                    Expect.equal
                        (inUse (IPEndPoint(IPAddress.Parse "10.9.9.9", 6001)))
                        SocketError.AddressNotAvailable
                        "not ours"

                    for _ in 1..50 do
                        use e = stack.BindUdp(IPEndPoint(IPAddress.Any, 0))

                        Expect.isTrue
                            (e.LocalEndPoint.Port >= 49152 && e.LocalEndPoint.Port <= 65535)
                            "ephemeral range"

                    a.Dispose()
                    Expect.equal (inUse (IPEndPoint(IPAddress.Any, 6000))) SocketError.Success "free after dispose")
            }

            test "a datagram above the maximum is MessageSize; a 3000-byte one leaves in fragments that reassemble" {
                withStack 65536 (fun stack device ->
                    use socket = stack.BindUdp(IPEndPoint(IPAddress.IPv6Any, 0))
                    let peer, _ = addresses false

                    let tooBig =
                        socket
                            .SendToAsync(ReadOnlyMemory(Array.zeroCreate 65508), IPEndPoint(peer4.ToIPAddress(), 9))
                            .AsTask()

                    Expect.equal (socketError tooBig) SocketError.MessageSize "65508 bytes over IPv4"

                    for target in [ peer4.ToIPAddress(); peer6.ToIPAddress() ] do
                        let data = Array.init 3000 byte
                        let sent = socket.SendToAsync(ReadOnlyMemory data, IPEndPoint(target, 9)).AsTask()
                        Expect.equal sent.Result 3000 "sent"
                        let packet, r = peerReads device
                        Expect.equal r.Kind ReceivedKind.UdpDatagram "a datagram"
                        Expect.equal ((IpLayer.slice (ReadOnlySpan packet) r.Payload).ToArray()) data "whole"

                    ignore peer
                    Expect.isGreaterThan stack.Statistics.["ip.fragments.sent"] 0L "fragmented")
            }

            test "a segmented send without USO leaves as separate datagrams, in order; bad segment sizes are refused" {
                withStack 65536 (fun stack device ->
                    use socket = stack.BindUdp(IPEndPoint(IPAddress.IPv6Any, 0))

                    for target, largest in [ peer4.ToIPAddress(), 1472; peer6.ToIPAddress(), 1452 ] do
                        let remote = IPEndPoint(target, 9)
                        // 10 full datagrams and a short one; then the largest size the MTU allows.
                        for data, size in
                            [
                                Array.init 10_300 (fun i -> byte (i * 7 + i / 1000)), 1000
                                Array.init (3 * largest) byte, largest
                            ] do
                            let sent = socket.SendToAsync(ReadOnlyMemory data, remote, size).AsTask()
                            Expect.equal sent.Result data.Length "all bytes sent"
                            let count = (data.Length + size - 1) / size

                            for i in 0 .. count - 1 do
                                let packet, r = peerReads device
                                Expect.equal r.Kind ReceivedKind.UdpDatagram $"datagram {i} to {target}"
                                let expected = data.[i * size .. min data.Length ((i + 1) * size) - 1]

                                Expect.equal
                                    ((IpLayer.slice (ReadOnlySpan packet) r.Payload).ToArray())
                                    expected
                                    $"datagram {i} holds its slice"

                        Expect.throwsT<ArgumentOutOfRangeException>
                            (fun () ->
                                socket.SendToAsync(ReadOnlyMemory(Array.zeroCreate 3000), remote, largest + 1)
                                |> ignore)
                            "a datagram over the MTU"

                        Expect.throwsT<ArgumentOutOfRangeException>
                            (fun () -> socket.SendToAsync(ReadOnlyMemory(Array.zeroCreate 3000), remote, 0) |> ignore)
                            "segment size 0"

                        Expect.throwsT<ArgumentException>
                            (fun () -> socket.SendToAsync(ReadOnlyMemory(Array.zeroCreate 650), remote, 10) |> ignore)
                            "65 datagrams"

                    Expect.equal stack.Statistics.["offload.uso.sent"] 0L "no offload on a memory device"
                    Expect.equal stack.Statistics.["ip.fragments.sent"] 0L "none fragmented"
                    socket.Connect(IPEndPoint(peer4.ToIPAddress(), 9))

                    Expect.throwsT<ArgumentOutOfRangeException>
                        (fun () -> socket.SendAsync(ReadOnlyMemory(Array.zeroCreate 50), 0) |> ignore)
                        "connected: segment size 0"

                    let sent = socket.SendAsync(ReadOnlyMemory(Array.init 50 byte), 20).AsTask()
                    Expect.equal sent.Result 50 "connected: sent"

                    for length in [ 20; 20; 10 ] do
                        let packet, r = peerReads device
                        let payload = IpLayer.slice (ReadOnlySpan packet) r.Payload
                        Expect.equal payload.Length length "connected: 20, 20, 10")
            }

            test
                "with USO a segmented send is one super-datagram; below a learned path MTU it goes as fragmented datagrams" {
                let memory = new MemoryPacketDevice(65535)
                let device = new UsoDevice(memory)
                use stack = NetworkStack.Start(options 65536, device)
                use socket = stack.BindUdp(IPEndPoint(IPAddress.Any, 0))
                let remote = IPEndPoint(peer4.ToIPAddress(), 9)
                let data = Array.init 10_500 (fun i -> byte (i / 7))
                Expect.equal (socket.SendToAsync(ReadOnlyMemory data, remote, 1200).AsTask().Result) data.Length "sent"
                let packet = written memory
                Expect.equal packet.Length (28 + data.Length) "one packet: the headers and all the payload"
                Expect.equal packet.[28..] data "the payload whole"

                match device.Headers with
                | [ h ] ->
                    Expect.equal h.Segmentation VirtioGsoType.UdpL4 "gso UDP_L4"
                    Expect.equal h.GsoSize 1200us "gso_size the segment size"
                | other -> failtestf "one header expected, got %A" other

                Expect.equal stack.Statistics.["offload.uso.sent"] 1L "one super-datagram"
                Expect.equal stack.Statistics.["udp.sent"] 9L "nine datagrams counted"

                // The peer's router reports an MTU of 1000 on the path: 1200-byte datagrams no
                // longer fit, so each goes on its own, in fragments.
                let quote = udpPacket (V4 ours4) (V4 peer4) 1us 9us (Array.zeroCreate 1172)
                let icmp = Array.zeroCreate<byte> 1500

                let m =
                    Icmpv4.buildFragmentationNeeded (Span(icmp, 20, 1480)) 1000us (ReadOnlySpan quote.[..547])

                let n =
                    Ipv4.write (Ipv4.header peer4 ours4 IpProtocol.Icmp) ReadOnlySpan.Empty m (Span icmp)
                    + m

                memory.Inject(ReadOnlySpan(icmp, 0, n))
                waitUntil (fun () -> stack.Statistics.["icmp.error.packet-too-big"] = 1L)

                Expect.equal
                    (socket.SendToAsync(ReadOnlyMemory data, remote, 1200).AsTask().Result)
                    data.Length
                    "sent again"

                for i in 0..8 do
                    let packet, r = peerReads memory
                    Expect.equal r.Kind ReceivedKind.UdpDatagram $"datagram {i}"
                    let expected = data.[i * 1200 .. min data.Length ((i + 1) * 1200) - 1]

                    Expect.equal
                        ((IpLayer.slice (ReadOnlySpan packet) r.Payload).ToArray())
                        expected
                        $"datagram {i} whole"

                Expect.equal stack.Statistics.["offload.uso.sent"] 1L "no second super-datagram"
                Expect.isGreaterThan stack.Statistics.["ip.fragments.sent"] 0L "fragmented for the path"
                NetStack.Tests.TestUtil.assertNoExceptions stack
            }

            test "disposing a socket aborts its pending receive; using it afterwards is ObjectDisposed" {
                withStack 65536 (fun stack _ ->
                    let socket = stack.BindUdp(IPEndPoint(IPAddress.Any, 0))
                    let pending = socket.ReceiveFromAsync(Memory(Array.zeroCreate<byte> 10)).AsTask()
                    socket.Dispose()
                    Expect.equal (socketError pending) SocketError.OperationAborted "aborted"

                    Expect.throwsT<ObjectDisposedException>
                        (fun () -> socket.ReceiveFromAsync(Memory(Array.zeroCreate<byte> 10)) |> ignore)
                        "disposed")
            }

            test "a receive can be cancelled" {
                withStack 65536 (fun stack _ ->
                    use socket = stack.BindUdp(IPEndPoint(IPAddress.Any, 0))
                    use cts = new CancellationTokenSource()

                    let pending =
                        socket.ReceiveFromAsync(Memory(Array.zeroCreate<byte> 10), cts.Token).AsTask()

                    cts.Cancel()

                    Expect.isTrue
                        (try
                            pending.Wait timeout |> ignore
                            false
                         with :? AggregateException as e ->
                             e.InnerException :? OperationCanceledException)
                        "cancelled")
            }

            test "disposing the stack fails a pending ping and aborts pending receives" {
                let device = new MemoryPacketDevice(1500)
                let stack = NetworkStack.Start(options 65536, device)
                let socket = stack.BindUdp(IPEndPoint(IPAddress.Any, 0))
                let receive = socket.ReceiveFromAsync(Memory(Array.zeroCreate<byte> 10)).AsTask()
                let ping = stack.PingAsync(peer4.ToIPAddress(), TimeSpan.FromMinutes 1.0)
                written device |> ignore
                stack.Dispose()
                Expect.equal (socketError receive) SocketError.OperationAborted "receive aborted"

                Expect.isTrue
                    (try
                        ping.Wait timeout |> ignore
                        false
                     with :? AggregateException as e ->
                         e.InnerException :? ObjectDisposedException)
                    "ping failed with ObjectDisposedException"

                Expect.throwsT<ObjectDisposedException>
                    (fun () -> stack.BindUdp(IPEndPoint(IPAddress.Any, 0)) |> ignore)
                    "bind after dispose"

                NetStack.Tests.TestUtil.assertNoExceptions stack
            }

            test "ping: a matching reply is Success, none is TimedOut, an unreachable is DestinationUnreachable" {
                withStack 65536 (fun stack device ->
                    for v6 in [ false; true ] do
                        let peer, ours = addresses v6
                        let ping = stack.PingAsync(peer.ToIPAddress(), timeout, 32)
                        let request, r = peerReads device
                        Expect.equal r.Kind ReceivedKind.EchoRequest "an echo request"
                        let data = (IpLayer.slice (ReadOnlySpan request) r.Payload).ToArray()
                        let buffer = Array.zeroCreate<byte> 1500
                        // A reply with the wrong sequence first: it must not complete the ping.
                        let wrong =
                            IpLayer.writeEchoReply
                                peer
                                ours
                                r.Echo.Identifier
                                (r.Echo.Sequence + 1us)
                                0us
                                (ReadOnlySpan data)
                                (Span buffer)

                        device.Inject(ReadOnlySpan(buffer, 0, wrong))

                        let n =
                            IpLayer.writeEchoReply
                                peer
                                ours
                                r.Echo.Identifier
                                r.Echo.Sequence
                                0us
                                (ReadOnlySpan data)
                                (Span buffer)

                        device.Inject(ReadOnlySpan(buffer, 0, n))
                        Expect.isTrue (ping.Wait timeout) "answered"
                        Expect.equal ping.Result.Status IPStatus.Success "success"
                        Expect.equal ping.Result.BufferSize 32 "32 bytes"

                        let unreachable = stack.PingAsync(peer.ToIPAddress(), timeout)
                        let request, _ = peerReads device
                        let error = Array.zeroCreate<byte> 1500

                        let struct (_, _, e) =
                            IpLayer.tryWriteError
                                0L
                                OutgoingError.PortUnreachable
                                (ReadOnlySpan request)
                                (Span error)
                                (peerState ())

                        device.Inject(ReadOnlySpan(error, 0, e))
                        Expect.isTrue (unreachable.Wait timeout) "answered"
                        Expect.equal unreachable.Result.Status IPStatus.DestinationUnreachable "unreachable"

                    let silent = stack.PingAsync(peer4.ToIPAddress(), TimeSpan.FromMilliseconds 100.0)
                    Expect.isTrue (silent.Wait timeout) "completed"
                    Expect.equal silent.Result.Status IPStatus.TimedOut "timed out"
                    Expect.equal stack.Statistics.["icmp.echo-reply.unmatched"] 2L "wrong sequences ignored")
            }

            test "a connected socket gets ConnectionRefused after port unreachable from its remote, once" {
                withStack 65536 (fun stack device ->
                    use socket = stack.BindUdp(IPEndPoint(IPAddress.Any, 0))
                    socket.Connect(IPEndPoint(peer4.ToIPAddress(), 9))
                    socket.SendAsync(ReadOnlyMemory [| 1uy |]).AsTask().Wait()
                    let datagram = written device
                    let error = Array.zeroCreate<byte> 1500

                    let struct (_, _, e) =
                        IpLayer.tryWriteError
                            0L
                            OutgoingError.PortUnreachable
                            (ReadOnlySpan datagram)
                            (Span error)
                            (peerState ())

                    device.Inject(ReadOnlySpan(error, 0, e))
                    waitUntil (fun () -> stack.Statistics.["udp.icmp-error.reported"] = 1L)
                    let receive = socket.ReceiveFromAsync(Memory(Array.zeroCreate<byte> 10)).AsTask()
                    Expect.equal (socketError receive) SocketError.ConnectionRefused "refused"
                    let again = socket.SendAsync(ReadOnlyMemory [| 1uy |]).AsTask()
                    Expect.isTrue (again.Wait timeout) "the error is reported once")
            }

            test "garbage injected through the device never stops the loop" {
                withStack 65536 (fun stack device ->
                    let random = Random 3

                    for _ in 1..3000 do
                        let bytes = Array.zeroCreate<byte>(random.Next(0, 100))
                        random.NextBytes bytes

                        if bytes.Length > 0 then
                            bytes.[0] <- (if random.Next 2 = 0 then 0x45uy else 0x60uy)

                        device.Inject(ReadOnlySpan bytes)

                    let peer, _ = addresses false
                    let reply = stack.PingAsync(peer.ToIPAddress(), timeout)
                    let request, r = peerReads device
                    let buffer = Array.zeroCreate<byte> 1500
                    let data = (IpLayer.slice (ReadOnlySpan request) r.Payload).ToArray()

                    let n =
                        IpLayer.writeEchoReply
                            r.Destination
                            r.Source
                            r.Echo.Identifier
                            r.Echo.Sequence
                            0us
                            (ReadOnlySpan data)
                            (Span buffer)

                    device.Inject(ReadOnlySpan(buffer, 0, n))
                    Expect.equal reply.Result.Status IPStatus.Success "still answering"
                    Expect.equal stack.Statistics.["device.read"] 3001L "every packet read")
            }

            // The check every test that starts a stack makes at its end (NetStack.Tests.TestUtil.assertNoExceptions)
            // must fail when the engine did swallow an exception, whichever way it did.
            test "assertNoExceptions fails on a stack whose loop or packet handling caught an exception" {
                let assertFails (stack: NetworkStack) (counter: string) =
                    Expect.throwsC (fun () -> NetStack.Tests.TestUtil.assertNoExceptions stack) (fun e ->
                        Expect.stringContains e.Message $"{counter} 1" $"the failure names {counter}")

                // A device read that throws: the loop counts engine.loop-error and goes on.
                let memory = new MemoryPacketDevice(1500)
                let device = new ThrowingDevice(memory)
                use stack = NetworkStack.Start(options 65536, device)
                NetStack.Tests.TestUtil.assertNoExceptions stack
                device.ThrowOnNextRead <- true
                memory.Wake()
                waitUntil (fun () -> stack.Statistics.["engine.loop-error"] = 1L)
                assertFails stack "engine.loop-error"

                // A write that throws while answering an echo request: drop.exception.
                let memory = new MemoryPacketDevice(1500)
                let device = new ThrowingDevice(memory)
                use stack = NetworkStack.Start(options 65536, device)
                device.ThrowOnWrite <- true
                let peer, ours = addresses false
                let request = Array.zeroCreate<byte> 1500

                let n =
                    IpLayer.writeEchoRequest peer ours 7us 1us 0us (ReadOnlySpan [| 1uy; 2uy |]) (Span request)

                memory.Inject(ReadOnlySpan(request, 0, n))
                waitUntil (fun () -> stack.Statistics.["drop.exception"] = 1L)
                Expect.equal stack.Statistics.["engine.loop-error"] 0L "the loop itself went on"
                assertFails stack "drop.exception"
            }
        ]
