/// Helpers shared by the test modules: FsCheck configuration and small byte utilities.
module NetStack.Tests.TestUtil

open System
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Sockets
open System.Security.Cryptography
open Expecto

/// Property configuration for codec properties: many cases, cheap each.
let codecConfig =
    { FsCheckConfig.defaultConfig with
        maxTest = 1000
    }

/// Property configuration for heavier properties (reassembly, simulations).
let heavyConfig =
    { FsCheckConfig.defaultConfig with
        maxTest = 300
    }

/// Parses a hex string ("45 00 00 54 ...", whitespace ignored) into bytes.
let hex (s: string) =
    let clean = s |> String.filter (fun c -> not (Char.IsWhiteSpace c))
    Convert.FromHexString clean

/// Formats bytes as lower-case hex.
let toHex (b: byte[]) =
    Convert.ToHexString(b).ToLowerInvariant()

/// The repository root: the nearest parent folder of the test binary holding NetStack.sln.
let repoRoot =
    lazy
        (let rec up (dir: DirectoryInfo) =
            if isNull dir then
                failwith "NetStack.sln not found above the test binary"
            elif File.Exists(Path.Combine(dir.FullName, "NetStack.sln")) then
                dir.FullName
            else
                up dir.Parent

         up (DirectoryInfo AppContext.BaseDirectory))

/// Streams `total` bytes (a 1 MiB random block from `seed`, repeated) to `stream`; returns
/// their SHA-256 as hex.
let sendPattern (seed: int) (stream: Stream) (total: int64) =
    task {
        let chunk = Array.zeroCreate<byte>(1 <<< 20)
        Random(seed).NextBytes chunk
        use hash = IncrementalHash.CreateHash HashAlgorithmName.SHA256
        let mutable sent = 0L

        while sent < total do
            let n = int (min (int64 chunk.Length) (total - sent))
            hash.AppendData(chunk, 0, n)
            do! stream.WriteAsync(ReadOnlyMemory(chunk, 0, n))
            sent <- sent + int64 n

        return Convert.ToHexString(hash.GetHashAndReset())
    }

/// Reads `stream` to its end (the peer's FIN); returns (bytes, SHA-256 as hex).
let receiveHashed (stream: Stream) =
    task {
        let buffer = Array.zeroCreate<byte>(1 <<< 18)
        use hash = IncrementalHash.CreateHash HashAlgorithmName.SHA256
        let mutable total = 0L
        let mutable n = 1

        while n > 0 do
            let! read = stream.ReadAsync(Memory buffer)
            n <- read
            hash.AppendData(buffer, 0, n)
            total <- total + int64 n

        return total, Convert.ToHexString(hash.GetHashAndReset())
    }

/// The task's result, or a test failure when it has not completed within `timeout`.
let waitWithin (timeout: TimeSpan) (task: Threading.Tasks.Task<'T>) =
    if not (task.Wait timeout) then
        failtest "timed out"

    task.Result

/// Waits for `task`, rethrowing its exception; a test failure when it has not completed within
/// `timeout`.
let waitTaskWithin (timeout: TimeSpan) (task: Threading.Tasks.Task) =
    if not (task.Wait timeout) then
        failtest "timed out"

/// The calling thread is one of the loops of the stack whose interface is `interfaceName`
/// (NetworkStack names them "netstack <interface>", a queue's with a suffix).
let onEngineThread (interfaceName: string) =
    let name = Threading.Thread.CurrentThread.Name

    not (isNull name)
    && name.StartsWith($"netstack {interfaceName}", StringComparison.Ordinal)

/// The counters under which the engine swallows an exception so that a bug cannot stop its loop:
/// "drop.exception" (handling a packet threw), "engine.loop-error" (the loop itself threw: a
/// device read, a timer), "engine.command-error" (a user call's command threw on the loop) and
/// "engine.inline-completion-error" (a continuation the loop ran itself threw, with
/// NetStackOptions.UnsafeInlineCompletions).
let exceptionCounters =
    [
        "drop.exception"
        "engine.loop-error"
        "engine.command-error"
        "engine.inline-completion-error"
    ]

/// Fails the test when `statistics` count a swallowed exception (exceptionCounters).
let assertNoExceptionsIn (statistics: NetStack.NetStackStatistics) =
    let counted =
        exceptionCounters
        |> List.filter (fun name -> statistics.[name] <> 0L)
        |> List.map (fun name -> $"{name} {statistics.[name]}")

    if not counted.IsEmpty then
        failtestf "the stack swallowed exceptions (%s)\nstatistics:\n%O" (String.Join(", ", counted)) statistics

/// The counters of a text printed as "name value" lines (NetStackStatistics.ToString, `netstack
/// serve` at exit): other lines are skipped.
let parseCounters (text: string) =
    text.Split('\n', StringSplitOptions.RemoveEmptyEntries)
    |> Array.choose (fun line ->
        match line.Trim().Split ' ' with
        | [| name; value |] ->
            match Int64.TryParse value with
            | true, v -> Some(name, v)
            | _ -> None
        | _ -> None)
    |> Map.ofArray

/// Fails the test when printed counters (parseCounters; zeros are not printed) hold one of
/// exceptionCounters.
let assertNoExceptionsInCounters (counters: Map<string, int64>) =
    for name in exceptionCounters do
        match counters.TryFind name with
        | Some n -> failtestf "the stack swallowed exceptions: %s %d" name n
        | None -> ()

/// Fails the test when the stack counted a swallowed exception (exceptionCounters). Every test
/// that starts a stack calls it once it is done with the stack (withStackOf does).
let assertNoExceptions (stack: NetStack.NetworkStack) = assertNoExceptionsIn stack.Statistics

/// Polls `condition` every 100 ms until it holds or `seconds` pass; fails the test with `what`
/// when it never held.
let eventually (seconds: float) (what: string) (condition: unit -> bool) =
    let deadline = DateTime.UtcNow.AddSeconds seconds

    while not (condition ()) && DateTime.UtcNow < deadline do
        Threading.Thread.Sleep 100

    Expect.isTrue (condition ()) what

/// Runs `f` on a stack started with `options` (disposed afterwards) and then checks that the stack
/// swallowed no exception (assertNoExceptions); a failure carries the stack's counters, which
/// usually say what went wrong on the wire.
let withStackOf (options: NetStack.NetStackOptions) (f: NetStack.NetworkStack -> unit) =
    let stack = NetStack.NetworkStack.Start options

    try
        try
            f stack
        with e ->
            failtestf "%s\nstatistics:\n%O" (e.ToString()) stack.Statistics
    finally
        stack.Dispose()

    // After Dispose: the loop has stopped, so the counters are final.
    assertNoExceptions stack

/// A kernel TCP socket listening on `address`, port chosen by the kernel (read it from
/// LocalEndPoint).
let kernelListener (address: IPAddress) =
    let listener =
        new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp)

    listener.Bind(IPEndPoint(address, 0))
    listener.Listen 16
    listener

/// Kernel to stack, SHA-256 at both ends: a kernel socket connects to `target`, where the stack's
/// `listener` listens, and `connected` sees it (to read TCP_INFO, say); it sends `total` bytes of
/// `seed`'s pattern (sendPattern), shuts its sending side and reads until the stack's FIN, while
/// the stack reads to the kernel's FIN and closes. Fails the test unless every byte arrived, the
/// hashes agree and the stack closed with a FIN; returns the time from the connect to the end.
let kernelToStackWith
    (connected: Socket -> unit)
    (timeout: TimeSpan)
    (seed: int)
    (total: int64)
    (listener: NetStack.TcpConnectionListener)
    (target: IPEndPoint)
    =
    let sink =
        task {
            let! connection = listener.AcceptAsync()
            let! result = receiveHashed connection
            do! connection.DisposeAsync()
            return result
        }

    let clock = Stopwatch.StartNew()

    let sentHash, sawFin =
        task {
            use socket = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp)

            do! socket.ConnectAsync target
            connected socket
            use stream = new NetworkStream(socket)
            let! hash = sendPattern seed stream total
            socket.Shutdown SocketShutdown.Send
            // The stack's FIN: the kernel's read returns 0.
            let! rest = stream.ReadAsync(Memory(Array.zeroCreate<byte> 16))
            return hash, (rest = 0)
        }
        |> waitWithin timeout

    let received, receivedHash = waitWithin timeout sink
    Expect.equal received total $"every byte arrived at the stack over {target.Address}"
    Expect.equal receivedHash sentHash $"the same bytes (SHA-256) at the stack over {target.Address}"
    Expect.isTrue sawFin $"the stack closed with a FIN over {target.Address}"
    clock.Elapsed

/// kernelToStackWith with nothing to look at on the kernel's socket.
let kernelToStack
    (timeout: TimeSpan)
    (seed: int)
    (total: int64)
    (listener: NetStack.TcpConnectionListener)
    (target: IPEndPoint)
    =
    kernelToStackWith ignore timeout seed total listener target

/// Stack to kernel, SHA-256 at both ends: the stack connects to the listening kernel socket
/// `kernel`, whose accepted socket `accepted` sees (to read TCP_INFO, say), sends `total` bytes of
/// `seed`'s pattern (sendPattern) and closes gracefully (waiting for the ACK of its data and FIN);
/// the kernel reads to the FIN. Fails the test unless every byte arrived and the hashes agree;
/// returns the time from the connect to the end.
let stackToKernelWith
    (accepted: Socket -> unit)
    (timeout: TimeSpan)
    (seed: int)
    (total: int64)
    (stack: NetStack.NetworkStack)
    (kernel: Socket)
    =
    let endpoint = kernel.LocalEndPoint :?> IPEndPoint

    let kernelSink =
        task {
            use! socket = kernel.AcceptAsync()
            accepted socket
            use stream = new NetworkStream(socket)
            return! receiveHashed stream
        }

    let clock = Stopwatch.StartNew()

    let sentHash =
        task {
            let! connection = stack.ConnectTcpAsync endpoint
            let! hash = sendPattern seed connection total
            do! connection.DisposeAsync()
            return hash
        }
        |> waitWithin timeout

    let received, receivedHash = waitWithin timeout kernelSink
    Expect.equal received total $"every byte arrived at the kernel over {endpoint.Address}"
    Expect.equal receivedHash sentHash $"the same bytes (SHA-256) at the kernel over {endpoint.Address}"
    clock.Elapsed

/// stackToKernelWith with nothing to look at on the kernel's socket.
let stackToKernel (timeout: TimeSpan) (seed: int) (total: int64) (stack: NetStack.NetworkStack) (kernel: Socket) =
    stackToKernelWith ignore timeout seed total stack kernel

/// A NetStack echo server: accepts connections on `listener` (`onAccepted` sees each first) and
/// echoes each, on its own task, until the peer's FIN, then closes it (or aborts it on an error).
/// Keeps no reference to finished connections. Runs until `cancel` fires or the listener is
/// disposed.
let echoServerWith
    (onAccepted: NetStack.TcpConnection -> unit)
    (listener: NetStack.TcpConnectionListener)
    (cancel: Threading.CancellationToken)
    : Threading.Tasks.Task =
    task {
        try
            while not cancel.IsCancellationRequested do
                let! connection = listener.AcceptAsync cancel
                onAccepted connection

                Threading.Tasks.Task.Run(fun () ->
                    task {
                        try
                            let buffer = Array.zeroCreate<byte> 65536
                            let mutable n = 1

                            while n > 0 do
                                let! read = connection.ReadAsync(Memory buffer)
                                n <- read

                                if n > 0 then
                                    do! connection.WriteAsync(ReadOnlyMemory(buffer, 0, n))

                            do! connection.DisposeAsync()
                        with _ ->
                            connection.Abort()
                    }
                    :> Threading.Tasks.Task)
                |> ignore
        with
        | :? OperationCanceledException -> ()
        | :? SocketException -> ()
        | :? ObjectDisposedException -> ()
    }

/// echoServerWith with nothing to look at on each connection.
let echoServer (listener: NetStack.TcpConnectionListener) (cancel: Threading.CancellationToken) =
    echoServerWith ignore listener cancel

/// Both families of a test's options: [(stack address, kernel address) over IPv4; the same over
/// IPv6].
let families (options: NetStack.NetStackOptions) =
    [ options.Address, options.HostAddress; options.Address6, options.HostAddress6 ]

/// Segmented UDP sends from the stack to a kernel socket, for each (stack address, kernel address)
/// pair: 40 datagrams of 1200 bytes and a short one, then 20 of the largest size the MTU allows
/// (1500). Every datagram must arrive whole, on its own and in order. Returns the number of sends.
let udpSegmentsToKernel (stack: NetStack.NetworkStack) (pairs: (IPAddress * IPAddress) list) (port: int) =
    let mutable sends = 0L
    let mutable datagrams = 0L

    for (stackAddress, kernelAddress) in pairs do
        use udp = stack.BindUdp(IPEndPoint(stackAddress, port))

        use kernel =
            new Socket(kernelAddress.AddressFamily, SocketType.Dgram, ProtocolType.Udp)

        kernel.Bind(IPEndPoint(kernelAddress, 0))
        kernel.ReceiveTimeout <- 5000

        let largest =
            if kernelAddress.AddressFamily = AddressFamily.InterNetworkV6 then
                1452
            else
                1472

        for data, size in
            [
                Array.init (40 * 1200 + 77) (fun i -> byte (i / 1200 + i)), 1200
                Array.init (20 * largest) (fun i -> byte (i * 3)), largest
            ] do
            let sent =
                udp.SendToAsync(ReadOnlyMemory data, kernel.LocalEndPoint :?> IPEndPoint, size).AsTask()
                |> waitWithin (TimeSpan.FromSeconds 30.0)

            Expect.equal sent data.Length "all bytes sent"
            sends <- sends + 1L
            let buffer = Array.zeroCreate<byte> 65536

            for i in 0 .. (data.Length + size - 1) / size - 1 do
                let got = kernel.Receive buffer
                let expected = data.[i * size .. min data.Length ((i + 1) * size) - 1]
                Expect.equal got expected.Length $"datagram {i} over {kernelAddress} has its own size"
                Expect.equal buffer.[.. got - 1] expected $"datagram {i} holds its slice, in order"
                datagrams <- datagrams + 1L

            Expect.equal kernel.Available 0 "nothing more"

    Expect.equal stack.Statistics.["udp.sent"] datagrams "every datagram counted"
    sends

/// What a TCP engine call put out, by kind (the core's unit tests read its actions this way).
module TcpActions =
    open NetStack.Core.Tcp

    /// The segments it transmits, in order.
    let sent (o: TcpOutput) =
        o.Actions
        |> List.choose (function
            | TcpAction.Transmit s -> Some s
            | _ -> None)

    /// The events it raises for the user, in order.
    let events (o: TcpOutput) =
        o.Actions
        |> List.choose (function
            | TcpAction.Event e -> Some e
            | _ -> None)

    /// The state transitions it reports: (from, trigger, to).
    let transitions (o: TcpOutput) =
        o.Actions
        |> List.choose (function
            | TcpAction.Transition t -> Some(t.From, t.Trigger, t.To)
            | _ -> None)
