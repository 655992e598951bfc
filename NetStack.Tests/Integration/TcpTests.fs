/// TCP through NetworkStack with the kernel's TCP as the peer, inside the test runner's private
/// network namespace: kernel clients against NetStack servers and NetStack clients against
/// kernel servers, IPv4 and IPv6.
module NetStack.Tests.Integration.TcpTests

open System
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Sockets
open System.Security.Cryptography
open System.Threading
open System.Threading.Tasks
open Expecto
open NetStack
open NetStack.Tests

/// Each test gets its own interface and subnet (10.83.N.0/24, fd83:N::/64).
let private optionsFor (n: int) =
    NetStackOptions(
        TunName = $"nstcp{n}",
        Address = IPAddress.Parse $"10.83.{n}.2",
        HostAddress = IPAddress.Parse $"10.83.{n}.1",
        Address6 = IPAddress.Parse $"fd83:{n}::2",
        HostAddress6 = IPAddress.Parse $"fd83:{n}::1",
        TcpLinger = TimeSpan.FromSeconds 2.0
    )

/// Both families of test n: (stack address, kernel address).
let private families (n: int) = TestUtil.families (optionsFor n)

let private withStack (n: int) (f: NetworkStack -> unit) =
    NetStack.Tests.TestUtil.withStackOf (optionsFor n) f

let private timeout = TimeSpan.FromSeconds 20.0

let private wait (task: Threading.Tasks.Task<'T>) : 'T =
    NetStack.Tests.TestUtil.waitWithin timeout task

let private waitUnit (task: Task) = TestUtil.waitTaskWithin timeout task

let private payload (length: int) (seed: int) =
    let bytes = Array.zeroCreate<byte> length
    Random(seed).NextBytes bytes
    bytes

/// Reads a stream to its end.
let private readAll (stream: Stream) =
    task {
        use memory = new MemoryStream()
        do! stream.CopyToAsync memory
        return memory.ToArray()
    }

/// A kernel TCP client: connect, send `data` while reading the echo, return what came back.
let private kernelEcho (server: IPEndPoint) (data: byte[]) =
    task {
        use socket = new Socket(server.AddressFamily, SocketType.Stream, ProtocolType.Tcp)
        do! socket.ConnectAsync server
        use stream = new NetworkStream(socket, ownsSocket = false)

        let send =
            task {
                do! stream.WriteAsync(ReadOnlyMemory data)
                socket.Shutdown SocketShutdown.Send
            }

        let! back = readAll stream
        do! send
        return back
    }

let private sha (data: byte[]) =
    Convert.ToHexString(SHA256.HashData data)

let private bulkBytes = 100L * 1024L * 1024L

/// MB/s of `bulkBytes` in `elapsed`.
let private throughput (elapsed: TimeSpan) =
    float bulkBytes / elapsed.TotalSeconds / 1e6

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Tcp with the kernel"
        [
            test "a kernel client's bytes come back from a NetStack echo server, IPv4 and IPv6" {
                withStack 1 (fun stack ->
                    use cancel = new CancellationTokenSource()
                    use listener = stack.ListenTcp(7)
                    let server = TestUtil.echoServer listener cancel.Token

                    for (stackAddress, _) in families 1 do
                        let data = payload 300_000 1
                        let back = kernelEcho (IPEndPoint(stackAddress, 7)) data |> wait
                        Expect.equal back.Length data.Length $"every byte came back over {stackAddress}"
                        Expect.equal (sha back) (sha data) "the same bytes"

                    cancel.Cancel()
                    server.Wait(timeout) |> ignore)
            }

            test "a NetStack client's bytes come back from a kernel echo server, IPv4 and IPv6" {
                withStack 2 (fun stack ->
                    for (_, kernelAddress) in families 2 do
                        use listener = TestUtil.kernelListener kernelAddress

                        let server =
                            task {
                                use! socket = listener.AcceptAsync()
                                use stream = new NetworkStream(socket)
                                do! stream.CopyToAsync stream
                                socket.Shutdown SocketShutdown.Send
                            }

                        let data = payload 300_000 2

                        let back =
                            task {
                                let! connection = stack.ConnectTcpAsync(listener.LocalEndPoint :?> IPEndPoint)
                                let reading = readAll connection
                                do! connection.WriteAsync(ReadOnlyMemory data)
                                connection.ShutdownWrite()
                                let! back = reading
                                do! connection.DisposeAsync()
                                return back
                            }
                            |> wait

                        waitUnit server
                        Expect.equal (sha back) (sha data) $"every byte came back from {kernelAddress}")
            }

            test
                "100 MB cross in each direction intact (SHA-256), kernel to NetStack and NetStack to kernel, IPv4 and IPv6" {
                withStack 3 (fun stack ->
                    for (stackAddress, kernelAddress) in families 3 do
                        // Kernel to NetStack.
                        use listener = stack.ListenTcp(9)

                        let inbound =
                            TestUtil.kernelToStack timeout 7 bulkBytes listener (IPEndPoint(stackAddress, 9))
                            |> throughput

                        // NetStack to kernel.
                        use kernel = TestUtil.kernelListener kernelAddress

                        let outbound = TestUtil.stackToKernel timeout 7 bulkBytes stack kernel |> throughput

                        printfn
                            $"TCP bulk over {stackAddress.AddressFamily}, 100 MiB: kernel -> NetStack %.1f{inbound} MB/s, NetStack -> kernel %.1f{outbound} MB/s")
            }

            test "200 concurrent kernel connections each get their bytes back" {
                withStack 4 (fun stack ->
                    use cancel = new CancellationTokenSource()
                    use listener = stack.ListenTcp(7, 256)
                    let server = TestUtil.echoServer listener cancel.Token
                    let families = families 4

                    let clients =
                        [|
                            for i in 0..199 do
                                let stackAddress, _ = families.[i % 2]
                                let data = payload 20_000 i

                                task {
                                    let! back = kernelEcho (IPEndPoint(stackAddress, 7)) data
                                    return sha back = sha data
                                }
                        |]

                    let results = Task.WhenAll(clients) |> wait
                    Expect.allEqual results true "every client got its own bytes back"
                    cancel.Cancel()
                    server.Wait(timeout) |> ignore)
            }

            test "half-close works both ways: data flows after the other side's FIN" {
                withStack 5 (fun stack ->
                    for (stackAddress, kernelAddress) in families 5 do
                        // The kernel half-closes first; NetStack answers after reading to the end.
                        use listener = stack.ListenTcp(IPEndPoint(stackAddress, 0))

                        let server =
                            task {
                                let! connection = listener.AcceptAsync()
                                let! request = readAll connection
                                do! connection.WriteAsync(ReadOnlyMemory(Array.rev request))
                                do! connection.DisposeAsync()
                            }

                        let request = payload 50_000 5
                        let reply = kernelEcho listener.LocalEndPoint request |> wait
                        waitUnit server
                        Expect.equal reply (Array.rev request) "the answer came after the kernel's FIN"
                        // NetStack half-closes first; the kernel answers after reading to the end.
                        use kernel = TestUtil.kernelListener kernelAddress

                        let kernelServer =
                            task {
                                use! socket = kernel.AcceptAsync()
                                use stream = new NetworkStream(socket)
                                let! request = readAll stream
                                do! stream.WriteAsync(ReadOnlyMemory(Array.rev request))
                                socket.Shutdown SocketShutdown.Send
                            }

                        let reply =
                            task {
                                let! connection = stack.ConnectTcpAsync(kernel.LocalEndPoint :?> IPEndPoint)
                                do! connection.WriteAsync(ReadOnlyMemory request)
                                connection.ShutdownWrite()

                                let! failed =
                                    task {
                                        try
                                            do! connection.WriteAsync(ReadOnlyMemory request)
                                            return None
                                        with :? IOException as e ->
                                            return Some e
                                    }

                                let error =
                                    failed
                                    |> Option.map (fun e -> (e.InnerException :?> SocketException).SocketErrorCode)

                                Expect.equal
                                    error
                                    (Some SocketError.Shutdown)
                                    "writing after ShutdownWrite fails with Shutdown"

                                let! reply = readAll connection
                                do! connection.DisposeAsync()
                                return reply
                            }
                            |> wait

                        waitUnit kernelServer
                        Expect.equal reply (Array.rev request) "the answer came after NetStack's FIN")
            }

            test "connecting to a closed port is refused, both ways and both families" {
                withStack 6 (fun stack ->
                    for (stackAddress, kernelAddress) in families 6 do
                        // NetStack to a kernel port nobody listens on: the kernel's RST.
                        let port =
                            use probe = TestUtil.kernelListener kernelAddress
                            (probe.LocalEndPoint :?> IPEndPoint).Port

                        let error =
                            try
                                stack.ConnectTcpAsync(IPEndPoint(kernelAddress, port)).AsTask()
                                |> wait
                                |> ignore

                                None
                            with :? AggregateException as e ->
                                match e.InnerException with
                                | :? SocketException as s -> Some s.SocketErrorCode
                                | other -> raise other

                        Expect.equal error (Some SocketError.ConnectionRefused) $"refused by {kernelAddress}"
                        // The kernel to a NetStack port nobody listens on: our RST.
                        use socket =
                            new Socket(kernelAddress.AddressFamily, SocketType.Stream, ProtocolType.Tcp)

                        let error =
                            try
                                socket.Connect(IPEndPoint(stackAddress, 4444))
                                None
                            with :? SocketException as s ->
                                Some s.SocketErrorCode

                        Expect.equal error (Some SocketError.ConnectionRefused) $"ECONNREFUSED from {stackAddress}"

                    // The loop counts after writing, so the kernel may have seen the RST first.
                    SpinWait.SpinUntil((fun () -> stack.Statistics.["tcp.rst.sent"] >= 2L), 2000)
                    |> ignore

                    Expect.equal stack.Statistics.["tcp.rst.sent"] 2L "one RST per refused SYN, counted")
            }

            test "Abort resets the connection (the kernel sees ECONNRESET), and the kernel's RST fails NetStack's read" {
                withStack 7 (fun stack ->
                    for (stackAddress, _) in families 7 do
                        use listener = stack.ListenTcp(IPEndPoint(stackAddress, 0))

                        use socket =
                            new Socket(stackAddress.AddressFamily, SocketType.Stream, ProtocolType.Tcp)

                        socket.Connect(listener.LocalEndPoint)
                        let connection = listener.AcceptAsync().AsTask() |> wait
                        connection.Abort()
                        socket.ReceiveTimeout <- 5000

                        let error =
                            try
                                socket.Receive(Array.zeroCreate<byte> 10) |> ignore
                                None
                            with :? SocketException as s ->
                                Some s.SocketErrorCode

                        Expect.equal error (Some SocketError.ConnectionReset) $"reset over {stackAddress}"

                        let readError =
                            try
                                connection.Read(Array.zeroCreate<byte> 10, 0, 10) |> ignore
                                None
                            with :? IOException as e ->
                                Some (e.InnerException :?> SocketException).SocketErrorCode

                        Expect.equal readError (Some SocketError.OperationAborted) "reads after Abort fail"
                        // The other way: the kernel resets (SO_LINGER 0), NetStack's reads fail.
                        let accepting = listener.AcceptAsync().AsTask()

                        use resetter =
                            new Socket(stackAddress.AddressFamily, SocketType.Stream, ProtocolType.Tcp)

                        resetter.Connect(listener.LocalEndPoint)
                        let connection = wait accepting
                        let reading = connection.ReadAsync(Memory(Array.zeroCreate<byte> 10)).AsTask()
                        resetter.LingerState <- LingerOption(true, 0)
                        resetter.Close()

                        let resetError =
                            try
                                wait reading |> ignore
                                None
                            with :? AggregateException as e ->
                                match e.InnerException with
                                | :? IOException as io -> Some (io.InnerException :?> SocketException).SocketErrorCode
                                | other -> raise other

                        Expect.equal
                            resetError
                            (Some SocketError.ConnectionReset)
                            "the kernel's RST fails the pending read"

                        Expect.throwsT<IOException>
                            (fun () -> connection.Write(Array.zeroCreate<byte> 10, 0, 10))
                            "writes after a reset fail"

                        connection.Dispose()

                        Expect.throwsT<ObjectDisposedException>
                            (fun () -> connection.Read(Array.zeroCreate<byte> 10, 0, 10) |> ignore)
                            "reads after Dispose")
            }

            test "HttpClient over NetStack fetches from python3 -m http.server on the kernel side" {
                withStack 8 (fun stack ->
                    let directory = Directory.CreateTempSubdirectory "netstack-http"
                    let body = payload 200_000 8
                    File.WriteAllBytes(Path.Combine(directory.FullName, "blob.bin"), body)
                    let _, kernelAddress = List.head (families 8)

                    let port =
                        use probe = TestUtil.kernelListener kernelAddress
                        (probe.LocalEndPoint :?> IPEndPoint).Port

                    let info =
                        ProcessStartInfo(
                            "python3",
                            [
                                "-m"
                                "http.server"
                                string port
                                "--bind"
                                string kernelAddress
                                "--directory"
                                directory.FullName
                            ],
                            RedirectStandardOutput = true,
                            RedirectStandardError = true
                        )

                    use server = Process.Start info

                    try
                        // Wait until the server listens.
                        let ready = Stopwatch.StartNew()
                        let mutable listening = false

                        while not listening && ready.Elapsed < TimeSpan.FromSeconds 10.0 do
                            use probe =
                                new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                            try
                                probe.Connect(IPEndPoint(kernelAddress, port))
                                listening <- true
                            with :? SocketException ->
                                Thread.Sleep 50

                        Expect.isTrue listening "python3 http.server listens"
                        use client = stack.CreateHttpClient()

                        let fetched =
                            client.GetByteArrayAsync($"http://{kernelAddress}:{port}/blob.bin") |> wait

                        Expect.equal (sha fetched) (sha body) "the file came through NetStack intact"
                        let listing = client.GetStringAsync($"http://{kernelAddress}:{port}/") |> wait
                        Expect.stringContains listing "blob.bin" "the directory listing names the file"
                    finally
                        server.Kill true
                        server.WaitForExit 5000 |> ignore
                        directory.Delete true)
            }

            test
                "disposing a listener resets the connections it had not handed out: each kernel client reads ECONNRESET, IPv4 and IPv6" {
                withStack 9 (fun stack ->
                    for (stackAddress, _) in families 9 do
                        let listener = stack.ListenTcp(IPEndPoint(stackAddress, 0))
                        let endpoint = listener.LocalEndPoint
                        let established = stack.Statistics.["tcp.connected"]
                        let aborted = stack.Statistics.["tcp.aborted"]

                        // Three clients connect and send a request; nobody accepts them.
                        let clients =
                            [
                                for _ in 1..3 ->
                                    let s = new Socket(stackAddress.AddressFamily, SocketType.Stream, ProtocolType.Tcp)

                                    s.Connect endpoint
                                    s.Send(Text.Encoding.ASCII.GetBytes "hello?") |> ignore
                                    s.ReceiveTimeout <- 5000
                                    s
                            ]

                        try
                            // The kernel's connect returns at the SYN,ACK; its ACK makes each one
                            // ESTABLISHED in the listener's queue.
                            SpinWait.SpinUntil(
                                (fun () -> stack.Statistics.["tcp.connected"] - established = 3L),
                                timeout
                            )
                            |> ignore

                            Expect.equal
                                (stack.Statistics.["tcp.connected"] - established)
                                3L
                                "three queued connections"

                            listener.Dispose()

                            for client in clients do
                                let error =
                                    try
                                        client.Receive(Array.zeroCreate<byte> 16) |> ignore
                                        None
                                    with :? SocketException as e ->
                                        Some e.SocketErrorCode

                                Expect.equal error (Some SocketError.ConnectionReset) $"reset over {stackAddress}"

                            // The loop counts each abort just after sending its RST.
                            SpinWait.SpinUntil((fun () -> stack.Statistics.["tcp.aborted"] - aborted = 3L), timeout)
                            |> ignore

                            Expect.equal
                                (stack.Statistics.["tcp.aborted"] - aborted)
                                3L
                                "one RST per queued connection"
                            // The port is closed now: a new client is refused.
                            use late =
                                new Socket(stackAddress.AddressFamily, SocketType.Stream, ProtocolType.Tcp)

                            let refused =
                                try
                                    late.Connect endpoint
                                    None
                                with :? SocketException as e ->
                                    Some e.SocketErrorCode

                            Expect.equal refused (Some SocketError.ConnectionRefused) "the port is closed"
                        finally
                            for client in clients do
                                client.Dispose())
            }
        ]
