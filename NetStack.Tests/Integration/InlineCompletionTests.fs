/// NetStackOptions.UnsafeInlineCompletions against the kernel's TCP and UDP in the test runner's
/// private network namespace: the code awaiting a read, a write or a receive runs on the engine's
/// loop thread (its name, "netstack <interface>[ qN]", says so), every byte and datagram a kernel
/// socket sent comes back whole (hashed on the kernel's side), a blocking call made there fails at
/// once instead of stopping the loop, and errors and disposes still end the waits. Without the
/// option the same code runs on the thread pool. Interfaces ns151iN, subnets 10.151.N.0/24 and
/// fd51:N::/64.
module NetStack.Tests.Integration.InlineCompletionTests

open System
open System.Net
open System.Net.Sockets
open System.Security.Cryptography
open System.Threading
open System.Threading.Tasks
open Expecto
open NetStack
open NetStack.Tests

let private optionsWith (n: int) (inlined: bool) (queues: int) (faults: NetStack.Engine.FaultSettings) =
    NetStackOptions(
        TunName = $"ns151i{n}",
        Address = IPAddress.Parse $"10.151.{n}.2",
        HostAddress = IPAddress.Parse $"10.151.{n}.1",
        Address6 = IPAddress.Parse $"fd51:{n}::2",
        HostAddress6 = IPAddress.Parse $"fd51:{n}::1",
        UnsafeInlineCompletions = inlined,
        Queues = queues,
        Faults = faults
    )

let private optionsFor (n: int) (inlined: bool) = optionsWith n inlined 1 null

let private timeout = TimeSpan.FromSeconds 30.0

let private wait (t: Task<'T>) = TestUtil.waitWithin timeout t

let private waitUnit (t: Task) = TestUtil.waitTaskWithin timeout t

/// Where the code after each completed wait ran: on an engine thread, elsewhere.
type private Where() =
    member val Engine = 0 with get, set
    member val Elsewhere = 0 with get, set
    member val PoolElsewhere = 0 with get, set

    member this.Note(interfaceName) =
        lock this (fun () ->
            if TestUtil.onEngineThread interfaceName then
                this.Engine <- this.Engine + 1
            else
                this.Elsewhere <- this.Elsewhere + 1

                if Thread.CurrentThread.IsThreadPoolThread then
                    this.PoolElsewhere <- this.PoolElsewhere + 1)

/// Echoes one accepted connection with 64 KiB reads, noting where each read's continuation ran
/// (only reads that had to wait count: a read served from the buffer returns on the caller's thread).
let private echo (stack: NetworkStack) (where: Where) (connection: TcpConnection) =
    task {
        let buffer = Array.zeroCreate<byte> 65536
        let mutable go = true

        while go do
            let pending = connection.ReadAsync(Memory buffer)
            let waited = not pending.IsCompleted
            let! n = pending

            if waited then
                where.Note stack.InterfaceName

            if n = 0 then
                go <- false
            else
                do! connection.WriteAsync(ReadOnlyMemory(buffer, 0, n))

        do! connection.DisposeAsync()
    }

/// A kernel socket sends `total` pseudo-random bytes to the stack's echo and reads them back;
/// true when the SHA-256 of what came back is that of what was sent.
let private kernelRoundTrip (target: IPEndPoint) (total: int) (seed: int) =
    task {
        use socket = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp)
        do! socket.ConnectAsync target
        let data = Array.zeroCreate<byte> total
        Random(seed).NextBytes data

        let sender =
            task {
                let mutable sent = 0

                while sent < total do
                    let! n =
                        socket.SendAsync(ReadOnlyMemory(data, sent, min 100000 (total - sent)), SocketFlags.None)

                    sent <- sent + n

                socket.Shutdown SocketShutdown.Send
            }

        use hash = IncrementalHash.CreateHash HashAlgorithmName.SHA256
        let buffer = Array.zeroCreate<byte> 65536
        let mutable received = 0
        let mutable go = true

        while go do
            let! n = socket.ReceiveAsync(Memory buffer, SocketFlags.None)

            if n = 0 then
                go <- false
            else
                hash.AppendData(buffer, 0, n)
                received <- received + n

        do! sender
        return received = total && hash.GetHashAndReset() = SHA256.HashData data
    }

let private tcpEcho (n: int) (inlined: bool) (queues: int) =
    TestUtil.withStackOf (optionsWith n inlined queues null) (fun stack ->
        let where = Where()
        let accepts = Where()
        use listener = stack.ListenTcp 7
        use stop = new CancellationTokenSource()

        let server =
            task {
                let served = ResizeArray<Task>()

                try
                    while true do
                        let pending = listener.AcceptAsync stop.Token
                        let waited = not pending.IsCompleted
                        let! c = pending

                        if waited then
                            accepts.Note stack.InterfaceName

                        served.Add(echo stack where c)
                with :? OperationCanceledException ->
                    ()

                do! Task.WhenAll served
            }

        // Four connections over each family at once (with two queues the kernel spreads them).
        let clients =
            [
                for (address, _) in TestUtil.families stack.Options do
                    for i in 1..4 do
                        kernelRoundTrip (IPEndPoint(address, 7)) (1 <<< 21) i
            ]

        for ok in Task.WhenAll(clients) |> wait do
            Expect.isTrue ok "every byte came back, in order (SHA-256 on the kernel's side)"

        stop.Cancel()
        waitUnit server

        if inlined then
            Expect.isGreaterThan where.Engine 0 "reads waited and continued"
            Expect.equal where.Elsewhere 0 "every waiting read continued on an engine thread"
            Expect.isGreaterThan stack.Statistics.["engine.inline-completions"] 0L "the loop ran the completions"
            Expect.equal accepts.Elsewhere 0 "every waiting accept continued on an engine thread"
        else
            Expect.equal where.Engine 0 "no read continued on an engine thread"
            Expect.equal where.PoolElsewhere where.Elsewhere "every waiting read continued on the thread pool"
            Expect.equal accepts.Engine 0 "no accept continued on an engine thread"
            Expect.equal stack.Statistics.["engine.inline-completions"] 0L "no completion ran inline")

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Inline completions (UnsafeInlineCompletions) against the kernel"
        [
            testCase
                "TCP echo, 8 connections of 2 MiB: waiting reads continue on the engine thread, every byte comes back"
            <| fun () -> tcpEcho 1 true 1

            testCase "TCP echo with two queues: each engine runs the continuations of its own connections"
            <| fun () -> tcpEcho 2 true 2

            testCase "Off (the default): the same reads continue on the thread pool"
            <| fun () -> tcpEcho 3 false 1

            testCase
                "UDP echo of 2000 datagrams, one at a time: each receive continues on the engine thread; an ICMP port unreachable ends a waiting receive with ConnectionRefused"
            <| fun () ->
                TestUtil.withStackOf (optionsFor 4 true) (fun stack ->
                    let where = Where()
                    use echoSocket = stack.BindUdp(IPEndPoint(IPAddress.IPv6Any, 7000))
                    use stop = new CancellationTokenSource()

                    let server =
                        task {
                            let buffer = Array.zeroCreate<byte> 2048

                            try
                                while true do
                                    let! r = echoSocket.ReceiveFromAsync(Memory buffer, stop.Token)
                                    where.Note stack.InterfaceName

                                    let! _ =
                                        echoSocket.SendToAsync(
                                            ReadOnlyMemory(buffer, 0, r.ReceivedBytes),
                                            r.RemoteEndPoint :?> IPEndPoint
                                        )

                                    ()
                            with :? OperationCanceledException ->
                                ()
                        }

                    for (address, hostAddress) in TestUtil.families stack.Options do
                        use kernel = new Socket(address.AddressFamily, SocketType.Dgram, ProtocolType.Udp)
                        kernel.Bind(IPEndPoint(hostAddress, 0))
                        kernel.ReceiveTimeout <- 5000
                        let target = IPEndPoint(address, 7000)
                        let reply = Array.zeroCreate<byte> 2048

                        for i in 0..999 do
                            let payload = Array.init (1 + i % 1400) (fun j -> byte (i + j))
                            kernel.SendTo(payload, target) |> ignore
                            let n = kernel.Receive reply
                            Expect.sequenceEqual (reply[.. n - 1]) payload $"datagram {i} came back as sent"

                    stop.Cancel()
                    // The echo ended at its cancellation (anything else rethrows here).
                    waitUnit server
                    Expect.equal where.Elsewhere 0 "every receive continued on the engine thread"
                    Expect.equal where.Engine 2000 "every datagram was received"

                    // A connected socket's waiting receive, then a datagram to a kernel port nobody
                    // listens on: the kernel's port unreachable fails the receive (as on Linux).
                    use closed =
                        new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                    closed.Bind(IPEndPoint(stack.Options.HostAddress, 0))
                    let port = (closed.LocalEndPoint :?> IPEndPoint).Port
                    closed.Dispose()
                    use refused = stack.BindUdp(IPEndPoint(stack.Options.Address, 0))
                    refused.Connect(IPEndPoint(stack.Options.HostAddress, port))
                    let error = ref SocketError.Success
                    let continuedOnEngine = ref false

                    let receive =
                        task {
                            try
                                let! _ = refused.ReceiveFromAsync(Memory(Array.zeroCreate<byte> 16))
                                ()
                            with :? SocketException as e ->
                                error.Value <- e.SocketErrorCode
                                continuedOnEngine.Value <- TestUtil.onEngineThread stack.InterfaceName
                        }

                    refused.SendAsync(ReadOnlyMemory [| 1uy |]).AsTask() |> wait |> ignore
                    waitUnit receive
                    Expect.equal error.Value SocketError.ConnectionRefused "the port unreachable ended the receive"
                    Expect.isTrue continuedOnEngine.Value "and its continuation ran on the engine thread")

            testCase
                "A blocking call on the engine thread throws InvalidOperationException; disposing a connection there ends its other waiting read"
            <| fun () ->
                TestUtil.withStackOf (optionsFor 5 true) (fun stack ->
                    use listener = stack.ListenTcp 7
                    use udp = stack.BindUdp(IPEndPoint(stack.Options.Address, 0))

                    let armed = TaskCompletionSource()

                    let server =
                        task {
                            let! first = listener.AcceptAsync()
                            let! second = listener.AcceptAsync()
                            // Waits for the kernel's FIN on the second connection, until disposed.
                            let idle = second.ReadAsync(Memory(Array.zeroCreate<byte> 16)).AsTask()
                            let buffer = Array.zeroCreate<byte> 16
                            let pending = first.ReadAsync(Memory buffer)
                            armed.SetResult()
                            let! n = pending
                            // Here: the engine thread.
                            let onLoop = TestUtil.onEngineThread stack.InterfaceName
                            let failures = ResizeArray<string>()

                            let expectThrows (what: string) (call: unit -> unit) =
                                try
                                    call ()
                                    failures.Add $"{what} returned"
                                with
                                | :? InvalidOperationException -> ()
                                | e -> failures.Add $"{what} threw {e.GetType().Name}"

                            expectThrows "TcpConnection.Read" (fun () -> first.Read(buffer, 0, 16) |> ignore)
                            expectThrows "TcpConnection.Write" (fun () -> first.Write(buffer, 0, 1))
                            let mutable from = IPEndPoint(IPAddress.Any, 0) :> EndPoint

                            expectThrows "UdpSocket.ReceiveFrom" (fun () ->
                                udp.ReceiveFrom(Span(buffer), &from) |> ignore)

                            expectThrows "UdpSocket.SendTo" (fun () ->
                                udp.SendTo(ReadOnlySpan(buffer, 0, 1), IPEndPoint(stack.Options.HostAddress, 9))
                                |> ignore)
                            // The asynchronous calls work from here, and the connection goes on.
                            do! first.WriteAsync(ReadOnlyMemory(buffer, 0, n))
                            // Disposed on the engine thread: the other read's wait ends (OperationAborted).
                            do! second.DisposeAsync()

                            let! idleError =
                                task {
                                    try
                                        let! _ = idle
                                        return SocketError.Success
                                    with :? IO.IOException as e when (e.InnerException :? SocketException) ->
                                        return (e.InnerException :?> SocketException).SocketErrorCode
                                }

                            do! first.DisposeAsync()
                            return onLoop, List.ofSeq failures, idleError
                        }

                    use a = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)
                    a.Connect(IPEndPoint(stack.Options.Address, 7))
                    use b = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)
                    b.Connect(IPEndPoint(stack.Options.Address, 7))
                    // Both accepted and the first's read waiting before the byte comes.
                    waitUnit armed.Task
                    a.Send [| 42uy |] |> ignore
                    a.ReceiveTimeout <- 10000
                    let echoed = Array.zeroCreate<byte> 1
                    Expect.equal (a.Receive echoed) 1 "the byte came back"
                    Expect.equal echoed[0] 42uy "the same byte"
                    let onLoop, failures, idleError = wait server
                    Expect.isTrue onLoop "the read's continuation ran on the engine thread"
                    Expect.isEmpty failures "every blocking call threw InvalidOperationException"

                    Expect.equal
                        idleError
                        SocketError.OperationAborted
                        "the disposed connection's waiting read ended as the kernel's does")

            testCase
                "A continuation that throws on the engine thread is counted (engine.inline-completion-error), fails assertNoExceptions, and the loop goes on"
            <| fun () ->
                let stack = NetworkStack.Start(optionsFor 6 true)

                try
                    use udp = stack.BindUdp(IPEndPoint(stack.Options.Address, 7000))
                    // A bare continuation (not an async method's, whose task would hold the exception).
                    let pending = udp.ReceiveFromAsync(Memory(Array.zeroCreate<byte> 16))

                    pending
                        .GetAwaiter()
                        .UnsafeOnCompleted(fun () -> raise (InvalidOperationException "thrown by a continuation"))

                    use kernel =
                        new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                    kernel.SendTo([| 1uy |], IPEndPoint(stack.Options.Address, 7000)) |> ignore

                    TestUtil.eventually 10.0 "the exception was counted" (fun () ->
                        stack.Statistics.["engine.inline-completion-error"] = 1L)

                    Expect.throwsC (fun () -> TestUtil.assertNoExceptions stack) (fun e ->
                        Expect.stringContains
                            e.Message
                            "engine.inline-completion-error 1"
                            "the failure names the counter")
                    // The loop went on: the next datagram is received.
                    let next = udp.ReceiveFromAsync(Memory(Array.zeroCreate<byte> 16)).AsTask()
                    kernel.SendTo([| 2uy |], IPEndPoint(stack.Options.Address, 7000)) |> ignore
                    Expect.equal (wait next).ReceivedBytes 1 "the next datagram arrived"
                    Expect.equal stack.Statistics.["engine.loop-error"] 0L "the loop itself caught nothing"
                finally
                    stack.Dispose()

            testCase
                "The stack as a client: connect, a refused connect and DisposeAsync's wait for the FIN's ACK continue on the engine thread; the kernel gets every byte"
            <| fun () ->
                // A 5 ms delay each way on the device: the kernel's SYN,ACK or RST cannot come back
                // before the caller awaits the connect (a local RST can take less time than the
                // caller's path to its await, and a connect already complete continues on the
                // caller's thread, whatever the option).
                let options =
                    optionsWith 7 true 1 (NetStack.Engine.FaultSettings(Delay = TimeSpan.FromMilliseconds 5.0))

                TestUtil.withStackOf options (fun stack ->
                    for (_, hostAddress) in TestUtil.families stack.Options do
                        use kernel = TestUtil.kernelListener hostAddress
                        let target = kernel.LocalEndPoint :?> IPEndPoint
                        let data = Array.init 500000 (fun i -> byte (i * 13 + i / 251))

                        let received =
                            task {
                                use! s = kernel.AcceptAsync()
                                use back = new IO.MemoryStream()
                                let buffer = Array.zeroCreate<byte> 65536
                                let mutable go = true

                                while go do
                                    let! n = s.ReceiveAsync(Memory buffer, SocketFlags.None)

                                    if n = 0 then go <- false else back.Write(buffer, 0, n)

                                return back.ToArray()
                            }

                        let client =
                            task {
                                let pending = stack.ConnectTcpAsync target
                                Expect.isFalse pending.IsCompleted "the connect waits for the handshake"
                                let! c = pending
                                let afterConnect = TestUtil.onEngineThread stack.InterfaceName
                                do! c.WriteAsync(ReadOnlyMemory data)
                                do! c.DisposeAsync()
                                return afterConnect, TestUtil.onEngineThread stack.InterfaceName
                            }

                        let afterConnect, afterDispose = wait client
                        Expect.isTrue afterConnect "the connect continued on the engine thread"

                        Expect.isTrue
                            afterDispose
                            "DisposeAsync's wait for the FIN's ACK continued on the engine thread"

                        Expect.isTrue (wait received = data) "the kernel received every byte, in order, then the FIN"

                        // Nothing listens on the closed port: the kernel's RST ends the connect.
                        let closedPort =
                            use s = TestUtil.kernelListener hostAddress
                            (s.LocalEndPoint :?> IPEndPoint).Port

                        let refused =
                            task {
                                try
                                    let pending = stack.ConnectTcpAsync(IPEndPoint(hostAddress, closedPort))
                                    Expect.isFalse pending.IsCompleted "the connect waits for the kernel's answer"
                                    let! c = pending
                                    c.Dispose()
                                    return SocketError.Success, false
                                with :? SocketException as e ->
                                    return e.SocketErrorCode, TestUtil.onEngineThread stack.InterfaceName
                            }

                        let error, onLoop = wait refused
                        Expect.equal error SocketError.ConnectionRefused "refused, as by the kernel"
                        Expect.isTrue onLoop "the failed connect continued on the engine thread")

            testCase
                "Accepts canceled from another thread while connections arrive: every connection is accepted once, none lost"
            <| fun () ->
                TestUtil.withStackOf (optionsFor 8 true) (fun stack ->
                    use listener = stack.ListenTcp 7
                    let target = IPEndPoint(stack.Options.Address, 7)
                    let mutable accepted = 0
                    let mutable canceled = 0
                    let kernels = ResizeArray<Socket>()

                    for round in 1..200 do
                        use cancel = new CancellationTokenSource()
                        let first = listener.AcceptAsync(cancel.Token).AsTask()

                        let kernel =
                            new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                        kernels.Add kernel
                        // The cancel races the handshake's end (and the loop's hand-over).
                        let connecting = kernel.ConnectAsync target

                        if round % 2 = 0 then
                            Thread.SpinWait(round * 50)

                        cancel.Cancel()
                        connecting.Wait timeout |> ignore

                        let connection =
                            try
                                let c = wait first
                                accepted <- accepted + 1
                                c
                            with _ ->
                                canceled <- canceled + 1
                                // Not lost: the next accept gets it.
                                wait (listener.AcceptAsync().AsTask())

                        connection.Dispose()

                    for k in kernels do
                        k.Dispose()

                    printfn
                        "inline accepts: %d by the raced accept, %d by the next one (%d handed back by the loop after the cancel won)"
                        accepted
                        canceled
                        stack.Statistics.["tcp.accept.handed-back"]

                    Expect.equal (accepted + canceled) 200 "every connection accepted exactly once")

            testCase
                "Code on one stack's loop that disposes another stack's connection: that stack (option off) continues its read on the thread pool"
            <| fun () ->
                TestUtil.withStackOf (optionsFor 9 true) (fun inlined ->
                    TestUtil.withStackOf (optionsFor 10 false) (fun pooled ->
                        use listener = pooled.ListenTcp 7

                        use kernel =
                            new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                        kernel.Connect(IPEndPoint(pooled.Options.Address, 7))
                        let connection = wait (listener.AcceptAsync().AsTask())

                        let read =
                            task {
                                try
                                    let! _ = connection.ReadAsync(Memory(Array.zeroCreate<byte> 16))
                                    return "returned", false, false
                                with :? IO.IOException ->
                                    return
                                        "aborted",
                                        TestUtil.onEngineThread inlined.InterfaceName,
                                        Thread.CurrentThread.IsThreadPoolThread
                            }

                        use udp = inlined.BindUdp(IPEndPoint(inlined.Options.Address, 7000))

                        let disposer =
                            task {
                                let! _ = udp.ReceiveFromAsync(Memory(Array.zeroCreate<byte> 16))
                                let onLoop = TestUtil.onEngineThread inlined.InterfaceName
                                connection.Dispose()
                                return onLoop
                            }

                        use sender =
                            new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                        sender.SendTo([| 1uy |], IPEndPoint(inlined.Options.Address, 7000)) |> ignore
                        Expect.isTrue (wait disposer) "the dispose ran on the inline stack's loop"
                        let outcome, onOtherLoop, onPool = wait read
                        Expect.equal outcome "aborted" "the read ended with the dispose"
                        Expect.isFalse onOtherLoop "not on the other stack's loop"
                        Expect.isTrue onPool "on the thread pool, as the stack's option says"))
        ]
