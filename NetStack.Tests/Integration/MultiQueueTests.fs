/// NetStackOptions.Queues: a multi-queue TUN interface (IFF_MULTI_QUEUE) with one engine loop per
/// queue, against the kernel. The kernel picks the queue of every packet it sends (its flow hash,
/// or the queue a flow's packets were last written on); the stack must deliver every byte
/// whatever it picks. Subnets 10.141.N.0/24 and fdc1:N::/64, interfaces ns141qN.
module NetStack.Tests.Integration.MultiQueueTests

open System
open System.IO
open System.Net
open System.Net.Sockets
open System.Threading
open System.Threading.Tasks
open Expecto
open NetStack
open NetStack.Tests

let private timeout = TimeSpan.FromSeconds 60.0

let private optionsOf (n: int) (queues: int) (mode: NetStackMode) (anyDestination: bool) =
    NetStackOptions(
        TunName = $"ns141q{n}",
        Address = IPAddress.Parse $"10.141.{n}.2",
        HostAddress = IPAddress.Parse $"10.141.{n}.1",
        Address6 = IPAddress.Parse $"fdc1:{n}::2",
        HostAddress6 = IPAddress.Parse $"fdc1:{n}::1",
        Queues = queues,
        Mode = mode,
        AnyDestination = anyDestination,
        TcpLinger = TimeSpan.FromSeconds 10.0
    )

let private options (n: int) = optionsOf n 2 NetStackMode.Tun false

/// The exception `f` throws (a test failure when it throws none).
let private thrown (f: unit -> unit) =
    let caught =
        try
            f ()
            None
        with e ->
            Some e

    match caught with
    | Some e -> e
    | None -> failtest "nothing was thrown"

/// `length` bytes drawn from `seed`.
let private pattern (seed: int) (length: int) =
    let bytes = Array.zeroCreate<byte> length
    Random(seed).NextBytes bytes
    bytes

/// Reads exactly `buffer.Length` bytes from `stream` (fails the test at an early end).
let private readExactly (stream: Stream) (buffer: byte[]) =
    task {
        let mutable got = 0

        while got < buffer.Length do
            let! n = stream.ReadAsync(Memory(buffer, got, buffer.Length - got))

            if n = 0 then
                failtestf "the stream ended after %d of %d bytes" got buffer.Length

            got <- got + n
    }

/// The interface exists in this namespace, as `ip link` (rtnetlink) sees it (/sys/class/net shows
/// the namespace sysfs was mounted in, not necessarily this one).
let private interfaceExists (name: string) =
    fst (Isolation.run "ip" [ "link"; "show"; "dev"; name ]) = 0

/// The stack's counter per queue.
let private perQueue (stack: NetworkStack) (name: string) =
    [ for q in 0 .. stack.Queues - 1 -> stack.Statistics.[$"{name}.queue{q}"] ]

[<Tests>]
let tests =
    testList
        "Multi-queue TUN"
        [
            test
                "Queues 0 and 17, Queues 2 in TAP mode, with AnyDestination or on a device passed in are refused, each saying why" {
                let refused (o: NetStackOptions) (expected: string) =
                    let e = thrown (fun () -> NetworkStack.Start o |> ignore)
                    Expect.isTrue (e :? ArgumentException) $"an ArgumentException, not {e.GetType()}"

                    Expect.stringContains e.Message expected $"the message says why: {e.Message}"

                    e

                let zero =
                    refused (optionsOf 9 0 NetStackMode.Tun false) "Queues 0 is outside 1..16"

                Expect.isTrue (zero :? ArgumentOutOfRangeException) "out of range"

                let many =
                    refused (optionsOf 9 17 NetStackMode.Tun false) "Queues 17 is outside 1..16"

                Expect.isTrue (many :? ArgumentOutOfRangeException) "out of range"

                refused (optionsOf 9 2 NetStackMode.Tap false) "multi-queue is for TUN interfaces"
                |> ignore

                refused (optionsOf 9 2 NetStackMode.Tun true) "AnyDestination" |> ignore
                Expect.isFalse (interfaceExists "ns141q9") "no interface was made"

                let device = Device.TunDevice.Create "ns141q9"

                let e = thrown (fun () -> NetworkStack.Start(options 9, device) |> ignore)

                Expect.isTrue (e :? ArgumentException) "an ArgumentException"
                Expect.stringContains e.Message "a device passed in is one queue" "the message says why"

                Expect.equal
                    device.FileDescriptor
                    -1
                    "the device was disposed, as Start(options, device) does on failure"
            }

            testSequenced
            <| test
                "the kernel opens 32 connections to a stack echo on 2 queues (IPv4 and IPv6): every byte comes back, both queues carry traffic, and the interface goes with Dispose" {
                let o = options 1

                TestUtil.withStackOf o (fun stack ->
                    Expect.equal stack.Queues 2 "two queues"
                    use listener = stack.ListenTcp 7
                    use cancel = new CancellationTokenSource()
                    let server = TestUtil.echoServer listener cancel.Token

                    let client (i: int) =
                        task {
                            let address = if i % 2 = 0 then o.Address else o.Address6
                            use socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp)
                            do! socket.ConnectAsync(IPEndPoint(address, 7))
                            use stream = new NetworkStream(socket)
                            let sent = pattern i (64 * 1024 + i)
                            let back = Array.zeroCreate<byte> sent.Length
                            let reading = readExactly stream back
                            do! stream.WriteAsync(ReadOnlyMemory sent)
                            do! reading
                            Expect.equal back sent $"connection {i}: the same bytes back"
                            socket.Shutdown SocketShutdown.Send
                            // The echo's FIN.
                            let! rest = stream.ReadAsync(Memory(Array.zeroCreate<byte> 16))
                            Expect.equal rest 0 $"connection {i}: the stack closed"
                        }
                        :> Task

                    let clients = [| for i in 0..31 -> client i |]
                    Expect.isTrue (Task.WaitAll(clients, timeout)) "every connection finished"

                    // The stack to itself (looped inside the engine that connects, whose listener
                    // endpoint accepts): 4 connections, so both engines connect.
                    let looped (i: int) =
                        task {
                            let! c = stack.ConnectTcpAsync(IPEndPoint(o.Address, 7))
                            let sent = pattern (50 + i) 4096
                            let back = Array.zeroCreate<byte> sent.Length
                            do! c.WriteAsync(ReadOnlyMemory sent)
                            do! readExactly c back
                            Expect.equal back sent $"looped connection {i}: echoed"
                            do! c.DisposeAsync()
                        }
                        :> Task

                    Expect.isTrue
                        (Task.WaitAll([| for i in 0..3 -> looped i |], timeout))
                        "the stack's own connections echoed"

                    cancel.Cancel()
                    server.Wait timeout |> ignore
                    let reads = perQueue stack "device.read"
                    // 32 flows, each placed by the kernel's hash: all on one queue has odds 2^-31.
                    Expect.all reads (fun n -> n > 0L) $"both queues read packets: {reads}"
                    Expect.equal (List.sum reads) stack.Statistics.["device.read"] "the totals sum the queues")

                Expect.isFalse (interfaceExists o.TunName) "the interface went with the last queue"
            }

            testSequenced
            <| test
                "the stack connects 32 times to a kernel echo from 2 queues; after 6 s idle (the kernel's flow table forgets the queue) the kernel sends first, and every byte arrives, handed to the owner" {
                let o = options 2

                TestUtil.withStackOf o (fun stack ->
                    use kernel = TestUtil.kernelListener o.HostAddress
                    kernel.Listen 64
                    let target = kernel.LocalEndPoint :?> IPEndPoint
                    let accepted = Collections.Concurrent.ConcurrentQueue<Socket>()
                    // The kernel's side: echoes the first 16 KiB of each connection, then waits.
                    let acceptor =
                        task {
                            for _ in 1..32 do
                                let! s = kernel.AcceptAsync()
                                accepted.Enqueue s

                                Task.Run(fun () ->
                                    task {
                                        let buffer = Array.zeroCreate<byte>(16 * 1024)
                                        use stream = new NetworkStream(s, false)
                                        do! readExactly stream buffer
                                        do! stream.WriteAsync(ReadOnlyMemory buffer)
                                    }
                                    :> Task)
                                |> ignore
                        }

                    let connections =
                        [|
                            for i in 0..31 ->
                                task {
                                    let! c = stack.ConnectTcpAsync target
                                    let sent = pattern (100 + i) (16 * 1024)
                                    let back = Array.zeroCreate<byte> sent.Length
                                    do! c.WriteAsync(ReadOnlyMemory sent)
                                    do! readExactly c back
                                    Expect.equal back sent $"connection {i}: echoed"
                                    return c
                                }
                        |]

                    Expect.isTrue
                        (Task.WaitAll(connections |> Array.map (fun t -> t :> Task), timeout))
                        "all connected and echoed"

                    acceptor.Wait timeout |> ignore
                    let ports = connections |> Array.map (fun t -> t.Result.LocalEndPoint.Port)
                    // Each engine draws its own ports: both drew some (round-robin).
                    Expect.equal
                        (ports |> Array.countBy (fun p -> p % 2) |> Array.sort)
                        [| (0, 16); (1, 16) |]
                        "16 ports of each parity"

                    let handedBefore = stack.Statistics.["engine.queue.handoff"]
                    Thread.Sleep(TimeSpan.FromSeconds 6.0)
                    // Kernel first: 8 KiB on every connection, which the stack must read.
                    let byPort =
                        accepted.ToArray()
                        |> Array.map (fun s -> (s.RemoteEndPoint :?> IPEndPoint).Port, s)
                        |> dict

                    let reads =
                        connections
                        |> Array.mapi (fun i t ->
                            task {
                                let c = t.Result
                                let s = byPort.[c.LocalEndPoint.Port]
                                let data = pattern (200 + i) 8192
                                let! _ = s.SendAsync(ReadOnlyMemory data, SocketFlags.None)
                                let got = Array.zeroCreate<byte> data.Length
                                do! readExactly c got
                                Expect.equal got data $"connection {i}: the kernel's bytes"
                                do! c.DisposeAsync()
                                s.Dispose()
                            }
                            :> Task)

                    Expect.isTrue (Task.WaitAll(reads, timeout)) "every connection read the kernel's bytes"
                    let handed = stack.Statistics.["engine.queue.handoff"] - handedBefore
                    // After the flow table forgot them, the kernel picks by hash: all 32 on their
                    // owner's queue has odds 2^-32.
                    Expect.isGreaterThan handed 0L "segments arrived on the other queue and were handed to their owner")
            }

            testSequenced
            <| test
                "attached to a persistent multi_queue interface made with ip tuntap (AttachExisting), 2 queues serve 16 kernel connections, and the interface stays after Dispose" {
                let ip (args: string list) =
                    let code, output = Isolation.run "ip" args
                    Expect.equal code 0 $"ip %A{args}: {output}"

                let name = "ns141q5"
                ip [ "tuntap"; "add"; "dev"; name; "mode"; "tun"; "multi_queue" ]

                try
                    ip [ "addr"; "add"; "10.141.5.1"; "peer"; "10.141.5.2"; "dev"; name ]
                    ip [ "link"; "set"; name; "up" ]

                    let o =
                        NetStackOptions(
                            TunName = name,
                            AttachExisting = true,
                            Address = IPAddress.Parse "10.141.5.2",
                            Address6 = null,
                            Queues = 2
                        )

                    TestUtil.withStackOf o (fun stack ->
                        use listener = stack.ListenTcp 7
                        use cancel = new CancellationTokenSource()
                        let server = TestUtil.echoServer listener cancel.Token

                        let client (i: int) =
                            task {
                                use socket =
                                    new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                                do! socket.ConnectAsync(IPEndPoint(o.Address, 7))
                                use stream = new NetworkStream(socket)
                                let sent = pattern (300 + i) 8192
                                let back = Array.zeroCreate<byte> sent.Length
                                let reading = readExactly stream back
                                do! stream.WriteAsync(ReadOnlyMemory sent)
                                do! reading
                                Expect.equal back sent $"connection {i}: the same bytes back"
                            }
                            :> Task

                        Expect.isTrue
                            (Task.WaitAll([| for i in 0..15 -> client i |], timeout))
                            "every connection echoed"

                        cancel.Cancel()
                        server.Wait timeout |> ignore
                        let reads = perQueue stack "device.read"
                        // 16 flows by hash: all on one queue has odds 2^-15.
                        Expect.all reads (fun n -> n > 0L) $"both queues read packets: {reads}")

                    Expect.isTrue (interfaceExists name) "the persistent interface stays"
                finally
                    Isolation.run "ip" [ "tuntap"; "del"; "dev"; name; "mode"; "tun"; "multi_queue" ]
                    |> ignore
            }

            testSequenced
            <| test
                "steady state: the engine loops of a 2-queue stack allocate nothing per packet, both ways, on a connection of each engine" {
                let defaults = NetStackOptions()

                let o =
                    NetStackOptions(
                        TunName = "ns141q6",
                        Address = IPAddress.Parse "10.141.6.2",
                        HostAddress = IPAddress.Parse "10.141.6.1",
                        Address6 = null,
                        HostAddress6 = null,
                        Queues = 2,
                        // Per wire packet (no super-segments), and no buffer growth inside the
                        // measured transfer (a growth rents a ring once: per connection, not per
                        // packet), as the Allocation list measures one engine.
                        Offloads = false,
                        TcpReceiveBufferMaxBytes = defaults.TcpReceiveBufferBytes,
                        TcpSendBufferMaxBytes = defaults.TcpSendBufferBytes,
                        TcpLinger = TimeSpan.FromSeconds 2.0
                    )

                TestUtil.withStackOf o (fun stack ->
                    use kernel = TestUtil.kernelListener o.HostAddress

                    // Round-robin: the two connects go to the two engines.
                    let pairs =
                        [
                            for _ in 1..2 ->
                                let c =
                                    stack.ConnectTcpAsync(kernel.LocalEndPoint :?> IPEndPoint).AsTask()
                                    |> TestUtil.waitWithin timeout

                                c, kernel.Accept()
                        ]

                    Expect.equal
                        (pairs |> List.map (fun (c, _) -> c.LocalEndPoint.Port % 2) |> List.sort)
                        [ 0; 1 ]
                        "one connection on each engine"

                    let block = Array.zeroCreate<byte> 65536

                    let inward (bytes: int64) =
                        [|
                            for (c: TcpConnection), (s: Socket) in pairs do
                                Task.Run(fun () ->
                                    let mutable left = bytes

                                    while left > 0L do
                                        left <-
                                            left - int64 (s.Send(block, 0, int (min left 65536L), SocketFlags.None)))

                                task {
                                    let buffer = Array.zeroCreate<byte> 65536
                                    let mutable left = bytes

                                    while left > 0L do
                                        let! n = c.ReadAsync(Memory buffer)

                                        if n = 0 then
                                            failtest "early end of stream"

                                        left <- left - int64 n
                                }
                                :> Task
                        |]
                        |> fun t -> Expect.isTrue (Task.WaitAll(t, timeout)) "kernel → stack done"

                    let outward (bytes: int64) =
                        [|
                            for (c: TcpConnection), (s: Socket) in pairs do
                                task {
                                    let mutable left = bytes

                                    while left > 0L do
                                        let n = int (min left 65536L)
                                        do! c.WriteAsync(ReadOnlyMemory(block, 0, n))
                                        left <- left - int64 n
                                }
                                :> Task

                                Task.Run(fun () ->
                                    let buffer = Array.zeroCreate<byte> 65536
                                    let mutable left = bytes

                                    while left > 0L do
                                        let n = s.Receive buffer

                                        if n = 0 then
                                            failtest "early end of stream"

                                        left <- left - int64 n)
                        |]
                        |> fun t -> Expect.isTrue (Task.WaitAll(t, timeout)) "stack → kernel done"

                    let counters () =
                        stack.Statistics.["engine.loop.allocated-bytes"],
                        stack.Statistics.["device.read"] + stack.Statistics.["device.written"]

                    let perPacket (transfer: int64 -> unit) =
                        transfer (4L <<< 20)
                        let a0, p0 = counters ()
                        transfer (16L <<< 20)
                        let a1, p1 = counters ()
                        float (a1 - a0) / float (max 1L (p1 - p0)), p1 - p0

                    perPacket inward |> ignore
                    let inBytes, inPackets = perPacket inward
                    let outBytes, outPackets = perPacket outward

                    printfn
                        "2 queues, loop allocation per packet: kernel → stack %.1f B over %d packets, stack → kernel %.1f B over %d packets"
                        inBytes
                        inPackets
                        outBytes
                        outPackets

                    // As in the Allocation list: one object per packet would be at least 24 B.
                    Expect.isLessThan inBytes 4.0 "kernel → stack: bytes the loops allocate per packet"
                    Expect.isLessThan outBytes 4.0 "stack → kernel: bytes the loops allocate per packet"

                    for c, s in pairs do
                        c.Dispose()
                        s.Dispose())
            }

            testSequenced
            <| test
                "a listener on port 0 (an ephemeral port) keeps each kernel connection on the queue the kernel chose: its segments are not handed to the engine port % 2" {
                let o =
                    NetStackOptions(
                        TunName = "ns141q7",
                        Address = IPAddress.Parse "10.141.7.2",
                        HostAddress = IPAddress.Parse "10.141.7.1",
                        Address6 = null,
                        HostAddress6 = null,
                        Queues = 2
                    )

                TestUtil.withStackOf o (fun stack ->
                    use listener = stack.ListenTcp 0
                    let port = listener.LocalEndPoint.Port
                    Expect.isGreaterThanOrEqual port NetworkStack.EphemeralPortFirst "an ephemeral port"
                    use cancel = new CancellationTokenSource()
                    let server = TestUtil.echoServer listener cancel.Token

                    let client (i: int) =
                        task {
                            use socket =
                                new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                            do! socket.ConnectAsync(IPEndPoint(o.Address, port))
                            use stream = new NetworkStream(socket)
                            let sent = pattern (400 + i) 65536
                            let back = Array.zeroCreate<byte> sent.Length
                            let reading = readExactly stream back
                            do! stream.WriteAsync(ReadOnlyMemory sent)
                            do! reading
                            Expect.equal back sent $"connection {i}: the same bytes back"
                        }
                        :> Task

                    Expect.isTrue (Task.WaitAll([| for i in 0..15 -> client i |], timeout)) "every connection echoed"
                    cancel.Cancel()
                    server.Wait timeout |> ignore
                    let reads = perQueue stack "device.read"
                    let handed = stack.Statistics.["engine.queue.handoff"]
                    // 16 flows by hash: all on one queue has odds 2^-15.
                    Expect.all reads (fun n -> n > 0L) $"both queues read packets: {reads}"
                    // Were the port steered as a connect's, the engine port % 2 would take every
                    // SYN and own all 16 connections (and the segments read before its answers
                    // reached the kernel's flow table would be handed over).
                    let connected = stack.Statistics.["tcp.connected"]
                    let onQueue1 = stack.Statistics.Parts.[0].["tcp.connected"]
                    Expect.equal connected 16L "16 connections"
                    Expect.isTrue (onQueue1 > 0L && onQueue1 < 16L) $"both engines own some ({onQueue1} on queue 1)"

                    Expect.isLessThan
                        (handed * 10L)
                        (List.sum reads)
                        $"few handoffs ({handed} of {List.sum reads} packets)")
            }

            testSequenced
            <| test "UDP echo from 32 kernel source ports and ping both ways over a 2-queue stack" {
                let o = options 3

                TestUtil.withStackOf o (fun stack ->
                    use udp = stack.BindUdp(IPEndPoint(IPAddress.Any, 7))
                    use cancel = new CancellationTokenSource()

                    let echo =
                        task {
                            let buffer = Array.zeroCreate<byte> 2048

                            try
                                while true do
                                    let! r = udp.ReceiveFromAsync(Memory buffer, cancel.Token)

                                    let! _ =
                                        udp.SendToAsync(
                                            ReadOnlyMemory(buffer, 0, r.ReceivedBytes),
                                            r.RemoteEndPoint :?> IPEndPoint
                                        )

                                    ()
                            with
                            | :? OperationCanceledException -> ()
                            | :? SocketException -> ()
                        }

                    let client (i: int) =
                        task {
                            use socket =
                                new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                            socket.Bind(IPEndPoint(o.HostAddress, 0))
                            socket.Connect(IPEndPoint(o.Address, 7))
                            socket.ReceiveTimeout <- 10000

                            for k in 0..4 do
                                let data = pattern (1000 * i + k) (100 + i + k)
                                socket.Send data |> ignore
                                let back = Array.zeroCreate<byte> 2048
                                let n = socket.Receive back
                                Expect.equal (back.[.. n - 1]) data $"source {i}, datagram {k}: echoed"
                        }
                        :> Task

                    Expect.isTrue (Task.WaitAll([| for i in 0..31 -> client i |], timeout)) "every datagram echoed"
                    cancel.Cancel()
                    echo.Wait timeout |> ignore
                    // 32 flows by hash: none on queue 1 has odds 2^-32; those were handed to queue 0.
                    Expect.isGreaterThan
                        stack.Statistics.["engine.queue.handoff"]
                        0L
                        "UDP read on queue 1 went to queue 0"

                    KernelPing.answered [ "-c"; "5"; "-i"; "0.05"; "-W"; "5"; string o.Address ]
                    |> ignore

                    KernelPing.answered [ "-6"; "-c"; "5"; "-i"; "0.05"; "-W"; "5"; string o.Address6 ]
                    |> ignore

                    for address in [ o.HostAddress; o.HostAddress6 ] do
                        let reply =
                            stack.PingAsync(address, TimeSpan.FromSeconds 5.0)
                            |> TestUtil.waitWithin timeout

                        Expect.equal reply.Status NetworkInformation.IPStatus.Success $"the stack pings {address}")
            }

            testSequenced
            <| test
                "bulk over 2 queues: 4 parallel flows kernel → stack and 4 stack → kernel, 16 MiB each, SHA-256 exact" {
                let o = options 4

                TestUtil.withStackOf o (fun stack ->
                    let total = 16L <<< 20

                    do
                        use listener = stack.ListenTcp 9
                        let target = IPEndPoint(o.Address, 9)
                        // One seed for all: each sink may take any of the four connections.
                        let flows =
                            [|
                                for _ in 1..4 ->
                                    Task.Run(fun () ->
                                        TestUtil.kernelToStack timeout 141 total listener target |> ignore)
                            |]

                        Expect.isTrue (Task.WaitAll(flows, timeout)) "kernel → stack done"

                    do
                        use kernel = TestUtil.kernelListener o.HostAddress

                        let flows =
                            [|
                                for _ in 1..4 ->
                                    Task.Run(fun () -> TestUtil.stackToKernel timeout 142 total stack kernel |> ignore)
                            |]

                        Expect.isTrue (Task.WaitAll(flows, timeout)) "stack → kernel done"

                    let reads = perQueue stack "device.read"
                    Expect.all reads (fun n -> n > 0L) $"both queues read packets: {reads}")
            }

            testSequenced
            <| test
                "an ICMP error reaches the connection of either engine: 4 connects (round-robin over 2 queues) through a kernel router with no route all fail as queue 0's" {
                let o = options 5
                // The interface moves into a namespace of its own, where the kernel forwards:
                // a SYN to an address it has no route to is answered with an ICMP destination
                // unreachable (ip_error), on whichever queue the kernel's flow hash picks.
                let router = $"ns141r{Environment.ProcessId}"

                let ip (args: string list) =
                    let code, output = Isolation.run "ip" args
                    Expect.equal code 0 $"ip %A{args}:\n{output}"

                ip [ "netns"; "add"; router ]

                try
                    TestUtil.withStackOf o (fun stack ->
                        ip [ "link"; "set"; "dev"; o.TunName; "netns"; router ]

                        ip
                            [
                                "-n"
                                router
                                "addr"
                                "add"
                                $"{o.HostAddress}"
                                "peer"
                                $"{o.Address}"
                                "dev"
                                o.TunName
                            ]

                        ip [ "-n"; router; "link"; "set"; o.TunName; "up" ]

                        ip
                            [
                                "netns"
                                "exec"
                                router
                                "sysctl"
                                "-qw"
                                "net.ipv4.ip_forward=1"
                                "net.ipv4.icmp_ratelimit=0"
                            ]

                        let unreachable = IPEndPoint(IPAddress.Parse "10.142.5.9", 80)
                        let handoffsBefore = stack.Statistics.["engine.queue.handoff"]

                        let errors =
                            [
                                for _ in 1..4 ->
                                    let connect = stack.ConnectTcpAsync(unreachable).AsTask()

                                    let failed =
                                        try
                                            connect.Wait timeout |> ignore
                                            None
                                        with :? AggregateException as e ->
                                            match e.InnerException with
                                            | :? SocketException as s -> Some s.SocketErrorCode
                                            | other -> failtestf "connect failed with %O" other

                                    match failed with
                                    | Some error -> error
                                    | None when connect.IsCompleted -> failtest "the connect succeeded"
                                    | None -> failtest "the connect neither failed nor succeeded in time"
                            ]

                        // Round-robin: engines 1, 0, 1, 0. Queue 0 reads every ICMP packet (one
                        // read on queue 1 is handed over) and finds its own connections; engine
                        // 1's must end the same way, not by their SYN retries running out.
                        Expect.notEqual errors[1] SocketError.TimedOut "queue 0's connect failed on the ICMP error"

                        Expect.all
                            errors
                            (fun e -> e = errors[1])
                            $"every engine's connect failed as queue 0's: {errors}"

                        Expect.isGreaterThan
                            stack.Statistics.["engine.queue.handoff"]
                            handoffsBefore
                            "packets were handed between the engines")
                finally
                    // After the stack has let go of the interface, which goes with the namespace.
                    Isolation.run "ip" [ "netns"; "del"; router ] |> ignore
            }
        ]
