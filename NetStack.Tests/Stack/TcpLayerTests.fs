/// TCP in the IP layer (segments classified into the engine's Segment, segments built) and in
/// the engine loop on an in-memory device (RST for closed ports, the listener's SYN bound).
module NetStack.Tests.Stack.TcpLayerTests

open System
open System.Net
open System.Threading
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack
open NetStack.Engine
open NetStack.Core.Wire
open NetStack.Core.Tcp
open NetStack.Tests.ConnectionHarness
open NetStack.Core.Stack
open NetStack.Tests.TestUtil

let private ours4 = Ipv4Address.Parse "10.0.0.2"
let private peer4 = Ipv4Address.Parse "10.0.0.1"
let private ours6 = Ipv6Address.Parse "fd00::2"
let private peer6 = Ipv6Address.Parse "fd00::1"

/// (peer, us) of a family.
let private addresses v6 =
    if v6 then V6 peer6, V6 ours6 else V4 peer4, V4 ours4

let private stackState () =
    IpLayer.create (IpLayer.config (ValueSome ours4) (ValueSome ours6) 1500) 0L

let private receive (packet: byte[]) =
    let struct (_, r) = IpLayer.receive 1L (ReadOnlySpan packet) (stackState ())
    r

let private outgoing seq ack flags window options (length: int) : OutgoingSegment =
    {
        Seq = SeqNum seq
        Ack = SeqNum ack
        Flags = flags
        Window = window
        Options = options
        DataPosition = 0L
        DataLength = length
    }

/// An IP packet carrying a TCP segment, built with the layer's own writer.
let private tcpPacket source destination sourcePort destinationPort (segment: OutgoingSegment) (payload: byte[]) =
    let buffer = Array.zeroCreate<byte> 70000

    let n =
        IpLayer.writeTcp source destination sourcePort destinationPort 1us segment (ReadOnlySpan payload) (Span buffer)

    buffer.[.. n - 1]

let private mssOptions (mss: uint16) =
    { TcpOptions.None with
        MaximumSegmentSize = ValueSome mss
    }

/// Random segments: family, ports (1..65535), numbers, flags, window, MSS option or none, payload.
let private segmentGen =
    gen {
        let! v6 = Gen.elements [ false; true ]
        let! sourcePort = Gen.choose (1, 65535)
        let! destinationPort = Gen.choose (1, 65535)
        let! seq = Gen.choose (Int32.MinValue, Int32.MaxValue) |> Gen.map uint32
        let! ack = Gen.choose (Int32.MinValue, Int32.MaxValue) |> Gen.map uint32

        let! flags =
            Gen.choose (0, 0x3F)
            |> Gen.map (fun f -> LanguagePrimitives.EnumOfValue<byte, TcpFlags>(byte f) ||| TcpFlags.Ack)

        let! window = Gen.choose (0, 65535) |> Gen.map uint16
        let! mss = Gen.choose (0, 65535)
        let! length = Gen.choose (0, 1400)
        let! payload = Gen.arrayOfLength length (Gen.choose (0, 255) |> Gen.map byte)

        let options =
            if mss % 2 = 0 then
                TcpOptions.None
            else
                mssOptions (uint16 mss)

        return v6, uint16 sourcePort, uint16 destinationPort, outgoing seq ack flags window options length, payload
    }

let private packetOf (v6, sourcePort, destinationPort, segment, payload) =
    let peer, us = addresses v6
    tcpPacket peer us sourcePort destinationPort segment payload

/// Valid packets with random bytes changed and a random cut.
let private mutatedGen =
    gen {
        let! s = segmentGen
        let packet = packetOf s

        let! flips =
            Gen.listOf (Gen.zip (Gen.choose (0, packet.Length - 1)) (Gen.choose (0, 255)))

        let! cut = Gen.choose (0, packet.Length)
        let copy = Array.copy packet

        for at, value in flips do
            copy.[at] <- byte value

        return copy.[.. cut - 1]
    }

let private referencesInside (input: byte[]) (r: Received) = IpLayerTests.referencesInside input r

/// The TCP header's offset in a packet of the family.
let private tcpAt v6 = if v6 then 40 else 20

let private refillChecksum v6 (packet: byte[]) =
    let segment = Span(packet, tcpAt v6, packet.Length - tcpAt v6)

    if v6 then
        Tcp.fillChecksumV6 segment peer6 ours6
    else
        Tcp.fillChecksumV4 segment peer4 ours4

// ---- The engine loop on an in-memory device ----------------------------------------------------

let private options () =
    NetStackOptions(
        Address = ours4.ToIPAddress(),
        HostAddress = peer4.ToIPAddress(),
        Address6 = ours6.ToIPAddress(),
        HostAddress6 = peer6.ToIPAddress(),
        TcpMaxHalfOpen = 4
    )

let private timeout = TimeSpan.FromSeconds 5.0

/// The next TCP segment the stack wrote, as the peer parses it.
let private nextSegment (device: MemoryPacketDevice) =
    let deadline = DateTime.UtcNow + timeout
    let mutable result = None

    let peer =
        IpLayer.create (IpLayer.config (ValueSome peer4) (ValueSome peer6) 65535) 0L

    while result.IsNone && DateTime.UtcNow < deadline do
        match device.WaitWritten timeout with
        | null -> ()
        | packet ->
            let struct (_, r) = IpLayer.receive 1L (ReadOnlySpan packet) peer

            if r.Kind = ReceivedKind.TcpSegment then
                result <- Some r

    match result with
    | Some r -> r
    | None -> failtest "the stack wrote no TCP segment"

let private waitUntil (condition: unit -> bool) =
    let deadline = DateTime.UtcNow + timeout

    while not (condition ()) && DateTime.UtcNow < deadline do
        Thread.Sleep 5

    Expect.isTrue (condition ()) "the condition became true in time"

let private syn v6 (sourcePort: uint16) (destinationPort: uint16) =
    let peer, us = addresses v6
    tcpPacket peer us sourcePort destinationPort (outgoing 1000u 0u TcpFlags.Syn 65535us (mssOptions 1400us) 0) [||]

/// The errors a kernel socket gives when every ephemeral port is taken, as .NET's SocketError for
/// the errno: in a namespace of its own with a two-port ip_local_port_range, two TCP listeners and
/// two UDP sockets bound to port 0 take both ports; then a TCP bind to port 0 (listen), a UDP
/// bind to port 0 and a connect. Returns (listen, bind-udp, connect).
let private kernelExhaustionErrors () =
    let script =
        """
import errno, socket
with open('/proc/sys/net/ipv4/ip_local_port_range', 'w') as f:
    f.write('40000 40001')
server = socket.socket()
server.bind(('127.0.0.1', 5000))
server.listen(8)
held = []
def attempt(kind, op):
    s = socket.socket(socket.AF_INET, kind)
    held.append(s)
    try:
        op(s)
        return 'none'
    except OSError as e:
        return errno.errorcode[e.errno]
def listen(s):
    s.bind(('127.0.0.1', 0))
    s.listen(8)
for _ in range(2):
    print('taken', attempt(socket.SOCK_STREAM, listen), attempt(socket.SOCK_DGRAM, lambda s: s.bind(('127.0.0.1', 0))))
print('listen', attempt(socket.SOCK_STREAM, listen))
print('bind-udp', attempt(socket.SOCK_DGRAM, lambda s: s.bind(('127.0.0.1', 0))))
print('connect', attempt(socket.SOCK_STREAM, lambda s: s.connect(('127.0.0.1', 5000))))
"""

    let code, output =
        NetStack.Tests.Isolation.run
            "unshare"
            [ "--net"; "sh"; "-c"; "ip link set lo up && exec python3 -c \"$0\""; script ]

    Expect.equal code 0 $"the kernel's exhaustion script ran:\n{output}"

    let answers =
        output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
        |> Array.map (fun line -> line.Trim().Split ' ')
        |> Array.map (fun words -> words.[0], words.[1..])
        |> Array.toList

    Expect.equal
        (answers |> List.filter (fun (k, _) -> k = "taken"))
        [ "taken", [| "none"; "none" |]; "taken", [| "none"; "none" |] ]
        $"both ports taken:\n{output}"

    // .NET's errno map (SocketErrorPal): EADDRINUSE and EADDRNOTAVAIL.
    let error (name: string) =
        match answers |> List.tryFind (fun (k, _) -> k = name) with
        | Some(_, [| "EADDRINUSE" |]) -> Net.Sockets.SocketError.AddressAlreadyInUse
        | Some(_, [| "EADDRNOTAVAIL" |]) -> Net.Sockets.SocketError.AddressNotAvailable
        | other -> failtestf "the kernel's %s: %A\n%s" name other output

    error "listen", error "bind-udp", error "connect"

[<Tests>]
let tests =
    testList
        "TcpLayer"
        [
            testPropertyWithConfig codecConfig "a built TCP segment is received with every field, both families"
            <| Prop.forAll (Arb.fromGen segmentGen) (fun ((v6, sourcePort, destinationPort, segment, payload) as s) ->
                let packet = packetOf s
                let r = receive packet
                Expect.equal r.Kind ReceivedKind.TcpSegment "a TCP segment"
                let peer, us = addresses v6
                Expect.equal r.Source peer "source"
                Expect.equal r.Destination us "destination"
                Expect.equal r.Ports.Source sourcePort "source port"
                Expect.equal r.Ports.Destination destinationPort "destination port"
                Expect.equal r.Tcp.Seq segment.Seq "SEG.SEQ"
                Expect.equal r.Tcp.Ack segment.Ack "SEG.ACK"
                Expect.equal r.Tcp.Flags segment.Flags "flags"
                Expect.equal r.Tcp.Window segment.Window "window"
                Expect.equal r.Tcp.Options.MaximumSegmentSize segment.Options.MaximumSegmentSize "MSS option"
                Expect.equal r.Tcp.PayloadLength payload.Length "payload length"
                Expect.isTrue (referencesInside packet r) "references inside"

                Expect.sequenceEqual
                    ((IpLayer.slice (ReadOnlySpan packet) r.Payload).ToArray())
                    payload
                    "the payload bytes")

            testPropertyWithConfig codecConfig "mutated or truncated TCP packets never make receive throw"
            <| Prop.forAll (Arb.fromGen mutatedGen) (fun bytes ->
                let r = receive bytes
                Expect.isTrue (referencesInside bytes r) "references inside"

                if r.Kind = ReceivedKind.Dropped then
                    Expect.notEqual r.Drop DropReason.NotDropped "a drop names its reason")

            testPropertyWithConfig
                codecConfig
                "a changed byte in the TCP part is a bad checksum (or a bad header), never a segment"
            <| Prop.forAll
                (Arb.fromGen (Gen.zip segmentGen (Gen.zip (Gen.choose (0, 100000)) (Gen.choose (1, 255)))))
                (fun (((v6, _, _, _, _) as s), (where, delta)) ->
                    let packet = packetOf s
                    let at = tcpAt v6 + where % (packet.Length - tcpAt v6)
                    packet.[at] <- packet.[at] ^^^ byte delta
                    let r = receive packet
                    Expect.equal r.Kind ReceivedKind.Dropped "dropped"

                    match r.Drop with
                    | DropReason.Malformed(PacketLayer.Tcp, BadChecksum)
                    | DropReason.Malformed(PacketLayer.Tcp, BadHeaderLength _)
                    | DropReason.TcpPortZero -> ()
                    | other -> failtestf "unexpected drop %A" other)

            test "port 0 either way is dropped as drop.tcp.port-zero" {
                for v6 in [ false; true ] do
                    let peer, us = addresses v6

                    for sourcePort, destinationPort in [ 0us, 80us; 80us, 0us ] do
                        let packet =
                            tcpPacket
                                peer
                                us
                                sourcePort
                                destinationPort
                                (outgoing 1u 0u TcpFlags.Syn 100us TcpOptions.None 0)
                                [||]

                        let r = receive packet
                        Expect.equal r.Drop DropReason.TcpPortZero "port zero"
                        Expect.equal (DropReason.name r.Drop) "drop.tcp.port-zero" "its counter"
            }

            test "TCP to the IPv4 limited broadcast is dropped as not unicast" {
                let packet =
                    tcpPacket
                        (V4 peer4)
                        (V4(Ipv4Address.Parse "255.255.255.255"))
                        1000us
                        80us
                        (outgoing 1u 0u TcpFlags.Syn 100us TcpOptions.None 0)
                        [||]

                let r = receive packet
                Expect.equal r.Drop DropReason.TcpNotUnicast "not unicast"
                Expect.equal (DropReason.name r.Drop) "drop.tcp.not-unicast" "its counter"
            }

            test "an option running past the options area drops the segment as drop.tcp.bad-option-length" {
                for v6 in [ false; true ] do
                    let peer, us = addresses v6

                    let packet =
                        tcpPacket peer us 1000us 80us (outgoing 1u 0u TcpFlags.Syn 100us (mssOptions 1460us) 0) [||]

                    // The MSS option (kind 2, length 4) claims 9 bytes in a 4-byte area.
                    packet.[tcpAt v6 + 21] <- 9uy
                    refillChecksum v6 packet
                    let r = receive packet

                    match r.Drop with
                    | DropReason.Malformed(PacketLayer.Tcp, BadOptionLength _) -> ()
                    | other -> failtestf "unexpected %A" other

                    Expect.equal (DropReason.name r.Drop) "drop.tcp.bad-option-length" "its counter"
            }

            test "a segment written by writeTcp matches a hand-computed IPv4 header and TCP checksum" {
                // SYN 10.0.0.2:49152 -> 10.0.0.1:80, seq 1, window 1000, no options, no data.
                let segment = outgoing 1u 0u TcpFlags.Syn 1000us TcpOptions.None 0
                let packet = tcpPacket (V4 ours4) (V4 peer4) 49152us 80us segment [||]
                Expect.equal packet.Length 40 "20 + 20 bytes"
                Expect.equal packet.[9] 6uy "protocol TCP"
                // TCP checksum by hand (RFC 1071 one's-complement sum of 16-bit words):
                // pseudo-header 0a00 + 0002 + 0a00 + 0001 + 0006 (TCP) + 0014 (length 20) = 141d;
                // header c000 + 0050 + 0000 + 0001 + 0000 + 0000 + 5002 + 03e8 = 1143b;
                // 141d + 1143b = 12858, folded 2859, complemented d7a6.
                Expect.equal (toHex packet.[20..39]) ("c000005000000001000000005002" + "03e8d7a60000") "the TCP header"
            }

            test "writeTcp rejects a payload whose length is not the segment's, and a small buffer" {
                let segment = outgoing 1u 0u TcpFlags.Ack 1000us TcpOptions.None 10
                let buffer = Array.zeroCreate<byte> 2000

                Expect.throwsT<ArgumentException>
                    (fun () ->
                        IpLayer.writeTcp
                            (V4 ours4)
                            (V4 peer4)
                            1us
                            2us
                            0us
                            segment
                            (ReadOnlySpan(Array.zeroCreate 9))
                            (Span buffer)
                        |> ignore)
                    "payload length"

                Expect.throwsT<ArgumentException>
                    (fun () ->
                        IpLayer.writeTcp
                            (V4 ours4)
                            (V4 peer4)
                            1us
                            2us
                            0us
                            segment
                            (ReadOnlySpan(Array.zeroCreate 10))
                            (Span(Array.zeroCreate<byte> 49))
                        |> ignore)
                    "buffer too small"
            }

            test "the orphan helper gives FIN-WAIT-2 a deadline and leaves other states' timers alone" {
                let config = TcpConfig.Default
                let c, _ = Connection.listen config (SeqNum 5u)
                let orphaned = TcpLayer.orphan 100L c

                Expect.equal
                    orphaned.Config.FinWait2Timeout
                    (ValueSome TcpLayer.OrphanFinWait2Timeout)
                    "the timeout is set"

                Expect.equal orphaned.Timers.LingerAt ValueNone "LISTEN gets no deadline"

                let finWait2 = { c with State = TcpState.FinWait2 }

                Expect.equal
                    (TcpLayer.orphan 100L finWait2).Timers.LingerAt
                    (ValueSome(100L + TcpLayer.OrphanFinWait2Timeout))
                    "FIN-WAIT-2 gets one at once"
            }

            test "the loop answers a SYN to a closed port with RST,ACK and counts it, both families" {
                let device = new MemoryPacketDevice(1500)
                use stack = NetworkStack.Start(options (), device)

                for v6 in [ false; true ] do
                    device.Inject(ReadOnlySpan(syn v6 40000us 81us))
                    let r = nextSegment device
                    Expect.equal r.Tcp.Flags (TcpFlags.Rst ||| TcpFlags.Ack) "RST,ACK"
                    Expect.equal r.Tcp.Ack (SeqNum 1001u) "acknowledges the SYN"
                    Expect.equal r.Ports.Source 81us "from the closed port"
                    Expect.equal r.Ports.Destination 40000us "to the sender"

                waitUntil (fun () -> stack.Statistics.["tcp.rst.sent"] = 2L)
                NetStack.Tests.TestUtil.assertNoExceptions stack
            }

            test
                "a listener answers SYN with SYN,ACK carrying our MSS; beyond TcpMaxHalfOpen with SYN cookies, whose ACK completes the connection" {
                let device = new MemoryPacketDevice(1500)
                use stack = NetworkStack.Start(options (), device)
                use _listener = stack.ListenTcp(80)
                device.Inject(ReadOnlySpan(syn false 40000us 80us))
                let r = nextSegment device
                Expect.equal r.Tcp.Flags (TcpFlags.Syn ||| TcpFlags.Ack) "SYN,ACK"
                Expect.equal r.Tcp.Ack (SeqNum 1001u) "acknowledges the SYN"
                Expect.equal r.Tcp.Options.MaximumSegmentSize (ValueSome 1460us) "MSS from the 1500-byte MTU"
                // Three more fill the half-open queue (4); the next six are answered with cookies.
                for port in 40001..40003 do
                    device.Inject(ReadOnlySpan(syn false (uint16 port) 80us))
                    nextSegment device |> ignore

                for port in 40004..40009 do
                    device.Inject(ReadOnlySpan(syn false (uint16 port) 80us))
                    let r = nextSegment device
                    Expect.equal r.Tcp.Flags (TcpFlags.Syn ||| TcpFlags.Ack) "a cookie SYN,ACK"
                    Expect.equal r.Tcp.Options.MaximumSegmentSize (ValueSome 1460us) "with our MSS, and nothing else"

                    if port = 40009 then
                        // The peer's ACK returns the cookie: the connection is rebuilt and accepted.
                        let peer, us = addresses false

                        let ack =
                            tcpPacket
                                peer
                                us
                                (uint16 port)
                                80us
                                (outgoing 1001u (r.Tcp.Seq.Value + 1u) TcpFlags.Ack 65535us TcpOptions.None 0)
                                [||]

                        device.Inject(ReadOnlySpan ack)
                        let accepted = _listener.AcceptAsync().AsTask()
                        Expect.isTrue (accepted.Wait timeout) "the cookie connection is accepted"
                        Expect.equal (accepted.Result.RemoteEndPoint.Port) port "from the cookie's peer"

                Expect.equal stack.Statistics.["tcp.syncookie.sent"] 6L "six cookies"
                Expect.equal stack.Statistics.["tcp.syncookie.validated"] 1L "one came back"
                Expect.equal stack.Statistics.["tcp.passive-open"] 5L "four half-open connections, and the cookie's"
                NetStack.Tests.TestUtil.assertNoExceptions stack
            }

            test "with TcpSynCookies off, SYNs beyond TcpMaxHalfOpen are dropped and counted" {
                let device = new MemoryPacketDevice(1500)

                use stack =
                    NetworkStack.Start(
                        NetStackOptions(
                            Address = ours4.ToIPAddress(),
                            HostAddress = peer4.ToIPAddress(),
                            Address6 = ours6.ToIPAddress(),
                            HostAddress6 = peer6.ToIPAddress(),
                            TcpMaxHalfOpen = 4,
                            TcpSynCookies = false
                        ),
                        device
                    )

                use _listener = stack.ListenTcp(80)

                for port in 40001..40010 do
                    device.Inject(ReadOnlySpan(syn false (uint16 port) 80us))

                waitUntil (fun () -> stack.Statistics.["tcp.drop.half-open-full"] = 6L)
                Expect.equal stack.Statistics.["tcp.passive-open"] 4L "four half-open connections"
                NetStack.Tests.TestUtil.assertNoExceptions stack
            }

            test "a canceled ConnectTcpAsync throws OperationCanceledException and frees its connection" {
                let device = new MemoryPacketDevice(1500)
                use stack = NetworkStack.Start(options (), device)
                use cancel = new CancellationTokenSource(TimeSpan.FromMilliseconds 200.0)

                let attempt =
                    stack.ConnectTcpAsync(IPEndPoint(peer4.ToIPAddress(), 80), cancel.Token).AsTask()

                let r = nextSegment device
                Expect.equal r.Tcp.Flags TcpFlags.Syn "a SYN went out"

                Expect.isGreaterThanOrEqual
                    (int r.Ports.Source)
                    NetworkStack.EphemeralPortFirst
                    "from an ephemeral port"

                Expect.equal r.Tcp.Options.MaximumSegmentSize (ValueSome 1460us) "with our MSS"

                let error =
                    try
                        attempt.Wait timeout |> ignore
                        None
                    with :? AggregateException as e ->
                        Some(e.InnerException.GetType())

                Expect.equal error (Some typeof<Threading.Tasks.TaskCanceledException>) "canceled"
                waitUntil (fun () -> stack.Statistics.["tcp.closed"] = 1L)
                NetStack.Tests.TestUtil.assertNoExceptions stack
            }

            test
                "a pending AcceptAsync fails with OperationAborted when the listener is disposed, and honours cancellation" {
                let device = new MemoryPacketDevice(1500)
                use stack = NetworkStack.Start(options (), device)
                let listener = stack.ListenTcp(80)
                use cancel = new CancellationTokenSource()
                let canceled = listener.AcceptAsync(cancel.Token).AsTask()
                let pending = listener.AcceptAsync().AsTask()
                cancel.Cancel()

                let wasCanceled =
                    try
                        canceled.Wait timeout |> ignore
                        false
                    with :? AggregateException ->
                        canceled.IsCanceled

                Expect.isTrue wasCanceled "the canceled accept is canceled"
                listener.Dispose()

                let error =
                    try
                        pending.Wait timeout |> ignore
                        None
                    with :? AggregateException as e ->
                        match e.InnerException with
                        | :? Net.Sockets.SocketException as s -> Some s.SocketErrorCode
                        | _ -> None

                Expect.equal error (Some Net.Sockets.SocketError.OperationAborted) "aborted"

                Expect.throwsT<ObjectDisposedException>
                    (fun () -> listener.AcceptAsync().AsTask() |> ignore)
                    "accepting on a disposed listener"

                NetStack.Tests.TestUtil.assertNoExceptions stack
            }

            test "ListenTcp refuses a taken port with AddressAlreadyInUse and picks free ephemeral ports" {
                let device = new MemoryPacketDevice(1500)
                use stack = NetworkStack.Start(options (), device)
                use first = stack.ListenTcp(8080)

                let error =
                    try
                        stack.ListenTcp(8080) |> ignore
                        None
                    with :? Net.Sockets.SocketException as e ->
                        Some e.SocketErrorCode

                Expect.equal error (Some Net.Sockets.SocketError.AddressAlreadyInUse) "the port is taken"
                use a = stack.ListenTcp(0)
                use b = stack.ListenTcp(IPEndPoint(IPAddress.Any, 0))
                Expect.isGreaterThanOrEqual a.LocalEndPoint.Port NetworkStack.EphemeralPortFirst "ephemeral"
                Expect.notEqual a.LocalEndPoint.Port b.LocalEndPoint.Port "distinct"
                first.Dispose()
                use again = stack.ListenTcp(8080)
                Expect.equal again.LocalEndPoint.Port 8080 "free again after Dispose"
                NetStack.Tests.TestUtil.assertNoExceptions stack
            }

            test
                "with every ephemeral port taken, ListenTcp(0) and BindUdp(0) throw AddressAlreadyInUse and ConnectTcpAsync fails with AddressNotAvailable, as a kernel socket's bind and connect; a freed port is the one used next" {
                let kernelListen, kernelBindUdp, kernelConnect = kernelExhaustionErrors ()

                let device = new MemoryPacketDevice(1500)
                use stack = NetworkStack.Start(options (), device)
                let first = NetworkStack.EphemeralPortFirst
                let ports = [ first .. NetworkStack.EphemeralPortLast ]
                // Both families on each port (the stack has an IPv4 and an IPv6 address).
                let listeners = [| for port in ports -> stack.ListenTcp port |]

                let sockets =
                    [| for port in ports -> stack.BindUdp(IPEndPoint(IPAddress.IPv6Any, port)) |]

                let errorOf (f: unit -> unit) =
                    try
                        f ()
                        None
                    with
                    | :? Net.Sockets.SocketException as e -> Some e.SocketErrorCode
                    | :? AggregateException as e ->
                        match e.InnerException with
                        | :? Net.Sockets.SocketException as s -> Some s.SocketErrorCode
                        | other -> raise other

                // The kernel's answers, pinned: a change of kernel shows here, not as a mismatch.
                Expect.equal
                    (kernelListen, kernelBindUdp, kernelConnect)
                    (Net.Sockets.SocketError.AddressAlreadyInUse,
                     Net.Sockets.SocketError.AddressAlreadyInUse,
                     Net.Sockets.SocketError.AddressNotAvailable)
                    "the kernel: bind(0) EADDRINUSE, connect EADDRNOTAVAIL"

                Expect.equal (errorOf (fun () -> stack.ListenTcp 0 |> ignore)) (Some kernelListen) "ListenTcp(0)"

                Expect.equal
                    (errorOf (fun () -> stack.ListenTcp(IPEndPoint(IPAddress.Any, 0)) |> ignore))
                    (Some kernelListen)
                    "ListenTcp(0.0.0.0:0)"

                Expect.equal
                    (errorOf (fun () -> stack.BindUdp(IPEndPoint(IPAddress.IPv6Any, 0)) |> ignore))
                    (Some kernelBindUdp)
                    "BindUdp([::]:0)"

                Expect.equal
                    (errorOf (fun () ->
                        stack.ConnectTcpAsync(IPEndPoint(peer4.ToIPAddress(), 80)).AsTask().Wait timeout
                        |> ignore))
                    (Some kernelConnect)
                    "ConnectTcpAsync"

                Expect.equal stack.Statistics.["tcp.refused.no-ephemeral-port"] 1L "the refused connect is counted"
                Expect.isNull (device.WaitWritten(TimeSpan.FromMilliseconds 100.0)) "and sent nothing"
                // One port freed: the next pick can only be that one.
                listeners.[100].Dispose()
                use listener = stack.ListenTcp 0
                Expect.equal listener.LocalEndPoint.Port (first + 100) "ListenTcp(0) takes the freed port"
                listener.Dispose()
                use cancel = new CancellationTokenSource()

                let attempt =
                    stack.ConnectTcpAsync(IPEndPoint(peer4.ToIPAddress(), 80), cancel.Token).AsTask()

                let synFrom = nextSegment device
                Expect.equal synFrom.Tcp.Flags TcpFlags.Syn "a SYN"
                Expect.equal (int synFrom.Ports.Source) (first + 100) "ConnectTcpAsync takes the freed port"
                cancel.Cancel()
                Expect.throwsT<AggregateException> (fun () -> attempt.Wait timeout |> ignore) "canceled"
                sockets.[7].Dispose()
                use socket = stack.BindUdp(IPEndPoint(IPAddress.IPv6Any, 0))
                Expect.equal socket.LocalEndPoint.Port (first + 7) "BindUdp(0) takes the freed port"

                for l in listeners do
                    l.Dispose()

                for s in sockets do
                    s.Dispose()

                NetStack.Tests.TestUtil.assertNoExceptions stack
            }
        ]
