/// TcpConnection as an IDuplexPipe (Input: PipeReader over the receive ring, Output: PipeWriter
/// over the send ring) against the kernel's TCP in the test runner's private network namespace:
/// the kernel's sockets are the peer and the oracle (what they received, hashed on their side).
/// Interfaces ns121pN, subnets 10.121.N.0/24 and fd7b:N::/64.
module NetStack.Tests.Integration.PipeTests

open System
open System.Buffers
open System.IO
open System.IO.Pipelines
open System.Net
open System.Net.Sockets
open System.Security.Cryptography
open System.Threading
open System.Threading.Tasks
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack
open NetStack.Tests

let private optionsFor (n: int) =
    NetStackOptions(
        TunName = $"ns121p{n}",
        Address = IPAddress.Parse $"10.121.{n}.2",
        HostAddress = IPAddress.Parse $"10.121.{n}.1",
        Address6 = IPAddress.Parse $"fd7b:{n}::2",
        HostAddress6 = IPAddress.Parse $"fd7b:{n}::1",
        TcpLinger = TimeSpan.FromSeconds 2.0
    )

let private timeout = TimeSpan.FromSeconds 30.0

let private wait (t: Task<'T>) = TestUtil.waitWithin timeout t

let private waitUnit (task: Task) = TestUtil.waitTaskWithin timeout task

/// One step of a writer: how it puts bytes into the Output pipe.
type WriteStep =
    /// GetSpan(size) (the hint is the size: a large one cannot fit the ring's free run and takes
    /// the overflow buffer), fill `size` bytes, Advance(size).
    | GetSpanOf of size: int
    /// GetMemory(0): what the ring has contiguous; fill up to `size` bytes of it, Advance.
    | GetMemoryOf of size: int
    /// GetSpan(size), then two Advances through that one span (as Kestrel's BufferWriter does:
    /// headers, then body), half each.
    | SplitAdvanceOf of size: int
    /// PipeWriter.WriteAsync (copies straight into the ring, waiting for room).
    | WriteOf of size: int
    /// FlushAsync (with or without advanced bytes: a zero-length flush too).
    | FlushNow

let private stepGen =
    let size =
        Gen.frequency
            [
                3, Gen.choose (0, 2000)
                2, Gen.choose (2000, 70000)
                1, Gen.choose (70000, 400000)
            ]

    Gen.frequency
        [
            3, Gen.map GetSpanOf size
            3, Gen.map GetMemoryOf size
            2, Gen.map SplitAdvanceOf size
            2, Gen.map WriteOf size
            2, Gen.constant FlushNow
        ]

/// A write pattern and the reader's consume pattern (bytes to consume per read, cycled).
let private patternGen =
    Gen.zip (Gen.listOfLength 12 stepGen |> Gen.map List.ofSeq) (Gen.nonEmptyListOf (Gen.choose (0, 100000)))

/// The bytes of stream position p: a pattern both sides can compute.
let private byteAt (seed: int) (p: int64) =
    byte ((p * 2654435761L + int64 seed) >>> 13)

let private fill (seed: int) (position: int64) (span: Span<byte>) =
    for i in 0 .. span.Length - 1 do
        span[i] <- byteAt seed (position + int64 i)

/// A kernel echo server on `listener`: one connection, every byte back, the kernel's FIN after the
/// peer's. Returns (bytes, SHA-256 hex) of what the kernel received.
let private kernelEcho (listener: Socket) =
    task {
        use! socket = listener.AcceptAsync()
        use hash = IncrementalHash.CreateHash HashAlgorithmName.SHA256
        let buffer = Array.zeroCreate<byte> 65536
        let mutable total = 0L
        let mutable n = 1

        while n > 0 do
            let! read = socket.ReceiveAsync(Memory buffer, SocketFlags.None)
            n <- read

            if n > 0 then
                hash.AppendData(buffer, 0, n)
                total <- total + int64 n
                let mutable sent = 0

                while sent < n do
                    let! s = socket.SendAsync(ReadOnlyMemory(buffer, sent, n - sent), SocketFlags.None)
                    sent <- sent + s

        socket.Shutdown SocketShutdown.Send
        return total, Convert.ToHexString(hash.GetHashAndReset())
    }

/// Writes `steps` into `output` (pattern bytes from position 0), then completes it (our FIN).
/// Returns (bytes, SHA-256 hex) written.
let private runWriter (seed: int) (steps: WriteStep list) (output: PipeWriter) =
    task {
        use hash = IncrementalHash.CreateHash HashAlgorithmName.SHA256
        let mutable position = 0L

        for step in steps do
            match step with
            | GetSpanOf size ->
                let span = output.GetSpan size
                Expect.isGreaterThanOrEqual span.Length size "GetSpan gives at least the hint"
                fill seed position (span.Slice(0, size))
                hash.AppendData(span.Slice(0, size))
                output.Advance size
                position <- position + int64 size
            | SplitAdvanceOf size ->
                let span = output.GetSpan size
                fill seed position (span.Slice(0, size))
                hash.AppendData(span.Slice(0, size))
                output.Advance(size / 2)
                output.Advance(size - size / 2)
                position <- position + int64 size
            | GetMemoryOf size ->
                let memory = output.GetMemory()
                Expect.isGreaterThan memory.Length 0 "GetMemory() gives some room"
                let n = min size memory.Length
                fill seed position (memory.Span.Slice(0, n))
                hash.AppendData(memory.Span.Slice(0, n))
                output.Advance n
                position <- position + int64 n
            | WriteOf size ->
                let bytes = Array.zeroCreate<byte> size
                fill seed position (Span bytes)
                hash.AppendData bytes
                let! result = output.WriteAsync(ReadOnlyMemory bytes)

                Expect.isFalse
                    (result.IsCanceled || result.IsCompleted)
                    "a plain write is neither canceled nor completed"

                position <- position + int64 size
            | FlushNow ->
                let! result = output.FlushAsync()

                Expect.isFalse
                    (result.IsCanceled || result.IsCompleted)
                    "a plain flush is neither canceled nor completed"

        do! output.CompleteAsync()
        return position, Convert.ToHexString(hash.GetHashAndReset())
    }

/// Reads `input` to IsCompleted, consuming per `consume` (cycled; at the end all), examining all
/// when little is left (the next read then waits for more). Returns (bytes, SHA-256 hex).
let private runReader (consume: int list) (input: PipeReader) =
    task {
        use hash = IncrementalHash.CreateHash HashAlgorithmName.SHA256
        let pattern = Array.ofList consume
        let mutable total = 0L
        let mutable i = 0
        let mutable completed = false

        while not completed do
            let! result = input.ReadAsync()
            let buffer = result.Buffer

            let take =
                if result.IsCompleted then
                    buffer.Length
                else
                    min buffer.Length (int64 pattern[i % pattern.Length])

            i <- i + 1

            let mutable segments = buffer.Slice(0L, take).GetEnumerator()

            while segments.MoveNext() do
                hash.AppendData segments.Current.Span

            total <- total + take
            // Examining everything makes the next read wait for more bytes. Only with little left
            // unconsumed: a reader that keeps most of a full receive buffer unconsumed and waits
            // for more would wait forever (the window stays closed), with any PipeReader.
            let examined =
                if buffer.Length - take < 65536L then
                    buffer.End
                else
                    buffer.GetPosition take

            input.AdvanceTo(buffer.GetPosition take, examined)
            completed <- result.IsCompleted && take = buffer.Length

        input.Complete()
        return total, Convert.ToHexString(hash.GetHashAndReset())
    }

/// The exception a task ended with (None: it succeeded).
let private failureOf (t: Task) =
    try
        if not (t.Wait timeout) then
            failtest "timed out"

        None
    with :? AggregateException as e ->
        Some e.InnerException

/// The SocketError inside an IOException, or a failure.
let private socketErrorOf (e: exn option) =
    match e with
    | Some(:? IOException as e) ->
        match e.InnerException with
        | :? SocketException as s -> s.SocketErrorCode
        | other -> failtestf "expected a SocketException inside the IOException, got %A" other
    | other -> failtestf "expected an IOException, got %A" other

/// A stack connection to a kernel listener, and the kernel's accepted socket.
let private connectToKernel (stack: NetworkStack) (kernelAddress: IPAddress) =
    let listener = TestUtil.kernelListener kernelAddress
    let accepted = listener.AcceptAsync()

    let connection =
        wait (stack.ConnectTcpAsync(listener.LocalEndPoint :?> IPEndPoint).AsTask())

    let socket = wait accepted
    listener.Dispose()
    connection, socket

[<Tests>]
let tests =
    testSequenced
    <| testList
        "TCP pipe against the kernel"
        [
            testPropertyWithConfig
                { FsCheckConfig.defaultConfig with
                    maxTest = 20
                }
                "any write pattern through Output and any consume pattern through Input round-trip through a kernel echo: SHA-256 equal at the kernel and back, IsCompleted at its FIN, IPv4 and IPv6"
            <| Prop.forAll (Arb.fromGen patternGen) (fun (steps, consume) ->
                TestUtil.withStackOf (optionsFor 1) (fun stack ->
                    for seed, kernelAddress in [ 1, stack.Options.HostAddress; 2, stack.Options.HostAddress6 ] do
                        use listener = TestUtil.kernelListener kernelAddress
                        let echo = kernelEcho listener

                        let connection =
                            wait (stack.ConnectTcpAsync(listener.LocalEndPoint :?> IPEndPoint).AsTask())

                        let reading = runReader consume connection.Input
                        let written, writtenHash = wait (runWriter seed steps connection.Output)
                        let kernelGot, kernelHash = wait echo
                        let back, backHash = wait reading
                        waitUnit ((connection.DisposeAsync()).AsTask())
                        Expect.equal kernelGot written $"the kernel received every byte written over {kernelAddress}"

                        Expect.equal
                            kernelHash
                            writtenHash
                            $"the kernel received the bytes written (SHA-256) over {kernelAddress}"

                        Expect.equal back written $"every byte came back over {kernelAddress}"
                        Expect.equal backHash writtenHash $"the same bytes came back (SHA-256) over {kernelAddress}"))

            test "the peer's FIN: the read returns the rest with IsCompleted, and every later read too" {
                TestUtil.withStackOf (optionsFor 2) (fun stack ->
                    use listener = stack.ListenTcp 7000

                    use client =
                        new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                    client.Connect(IPEndPoint(stack.Options.Address, 7000))
                    let connection = wait (listener.AcceptAsync().AsTask())
                    client.Send(Text.Encoding.ASCII.GetBytes "hello, pipe") |> ignore
                    client.Shutdown SocketShutdown.Send
                    let input = connection.Input

                    let mutable result = (input.ReadAsync().AsTask() |> wait)

                    // Data and FIN may come in one read or two.
                    while not result.IsCompleted do
                        input.AdvanceTo(result.Buffer.Start, result.Buffer.End)
                        result <- input.ReadAsync().AsTask() |> wait

                    Expect.equal
                        (Text.Encoding.ASCII.GetString(result.Buffer.ToArray()))
                        "hello, pipe"
                        "the bytes before the FIN"

                    input.AdvanceTo result.Buffer.End
                    let again = input.ReadAsync().AsTask() |> wait
                    Expect.isTrue again.IsCompleted "still completed"
                    Expect.isTrue again.Buffer.IsEmpty "with nothing more"
                    input.AdvanceTo again.Buffer.End
                    // Our side can still send (half-close): the kernel reads it, then our FIN.
                    wait ((connection.Output.WriteAsync(ReadOnlyMemory(Text.Encoding.ASCII.GetBytes "bye"))).AsTask())
                    |> ignore

                    connection.Output.Complete()
                    let buffer = Array.zeroCreate<byte> 16
                    let mutable got = ""
                    let mutable n = 1

                    while n > 0 do
                        n <- client.Receive buffer
                        got <- got + Text.Encoding.ASCII.GetString(buffer, 0, n)

                    Expect.equal got "bye" "the kernel read our bytes, then our FIN (Output.Complete)"
                    waitUnit ((connection.DisposeAsync()).AsTask()))
            }

            test "the peer's RST: a pending read fails with IOException(ConnectionReset), and so does a flush" {
                TestUtil.withStackOf (optionsFor 3) (fun stack ->
                    let connection, socket = connectToKernel stack stack.Options.HostAddress
                    let input = connection.Input
                    let pending = input.ReadAsync().AsTask()
                    Thread.Sleep 100
                    Expect.isFalse pending.IsCompleted "the read waits"
                    socket.LingerState <- LingerOption(true, 0)
                    socket.Close()

                    Expect.equal
                        (socketErrorOf (failureOf pending))
                        SocketError.ConnectionReset
                        "the read fails: reset"

                    let output = connection.Output
                    output.GetSpan(10).Slice(0, 10).Fill 1uy
                    output.Advance 10

                    Expect.equal
                        (socketErrorOf (failureOf (output.FlushAsync().AsTask())))
                        SocketError.ConnectionReset
                        "the flush fails: reset"

                    connection.Dispose())
            }

            test
                "cancellation: a token ends a waiting read, CancelPendingRead gives IsCanceled (also to the next read), and the data that follows is read intact" {
                TestUtil.withStackOf (optionsFor 4) (fun stack ->
                    let connection, socket = connectToKernel stack stack.Options.HostAddress6
                    let input = connection.Input
                    use cts = new CancellationTokenSource(150)

                    match failureOf (input.ReadAsync(cts.Token).AsTask()) with
                    | Some(:? OperationCanceledException) -> ()
                    | other -> failtestf "expected OperationCanceledException, got %A" other

                    let pending = input.ReadAsync().AsTask()
                    Thread.Sleep 50
                    Expect.isFalse pending.IsCompleted "the read waits"
                    input.CancelPendingRead()
                    let canceled = wait pending
                    Expect.isTrue canceled.IsCanceled "CancelPendingRead ends the waiting read with IsCanceled"
                    Expect.isTrue canceled.Buffer.IsEmpty "with nothing in it"
                    input.AdvanceTo canceled.Buffer.Start
                    input.CancelPendingRead()
                    let next = wait (input.ReadAsync().AsTask())
                    Expect.isTrue next.IsCanceled "a cancel with no read waiting cancels the next one"
                    input.AdvanceTo next.Buffer.Start
                    socket.Send(Text.Encoding.ASCII.GetBytes "after the cancels") |> ignore
                    let mutable text = ""

                    while text.Length < 17 do
                        let result = wait (input.ReadAsync().AsTask())
                        Expect.isFalse result.IsCanceled "no cancel pending"
                        text <- Text.Encoding.ASCII.GetString(result.Buffer.ToArray())
                        input.AdvanceTo(result.Buffer.Start, result.Buffer.End)

                    Expect.equal text "after the cancels" "the data is there"
                    socket.Dispose()
                    connection.Abort()
                    connection.Dispose())
            }

            test
                "back-pressure: while the kernel does not read, FlushAsync waits (CancelPendingFlush and a token end the wait); once it reads, every byte arrives intact" {
                TestUtil.withStackOf (optionsFor 5) (fun stack ->
                    use listener = TestUtil.kernelListener stack.Options.HostAddress
                    // A small receive buffer (inherited by the accepted socket): the kernel fills soon.
                    listener.ReceiveBufferSize <- 65536
                    let accepted = listener.AcceptAsync()

                    let connection =
                        wait (stack.ConnectTcpAsync(listener.LocalEndPoint :?> IPEndPoint).AsTask())

                    use socket = wait accepted
                    let output = connection.Output
                    use hash = IncrementalHash.CreateHash HashAlgorithmName.SHA256
                    let mutable position = 0L

                    let writeChunk () =
                        let span = output.GetSpan 65536
                        let n = min span.Length 65536
                        fill 5 position (span.Slice(0, n))
                        hash.AppendData(span.Slice(0, n))
                        output.Advance n
                        position <- position + int64 n

                    let mutable pending: Task<FlushResult> = null

                    while isNull pending do
                        if position > (64L <<< 20) then
                            failtest "the flushes never waited"

                        writeChunk ()
                        let flush = output.FlushAsync().AsTask()

                        if not (flush.Wait 300) then
                            pending <- flush

                    Thread.Sleep 200
                    Expect.isFalse pending.IsCompleted "the flush still waits while the kernel does not read"
                    output.CancelPendingFlush()
                    let canceled = wait pending
                    Expect.isTrue canceled.IsCanceled "CancelPendingFlush ends it with IsCanceled"
                    // A write canceled before it starts still writes (as with Pipe): its bytes
                    // wait for the next flush.
                    output.CancelPendingFlush()
                    let late = Array.zeroCreate<byte> 100000
                    fill 5 position (Span late)
                    hash.AppendData late
                    position <- position + int64 late.Length
                    let canceledWrite = wait (output.WriteAsync(ReadOnlyMemory late).AsTask())
                    Expect.isTrue canceledWrite.IsCanceled "the write reports the cancel"
                    Expect.equal output.UnflushedBytes 100000L "its bytes wait for the next flush"
                    use cts = new CancellationTokenSource(150)

                    match failureOf (output.FlushAsync(cts.Token).AsTask()) with
                    | Some(:? OperationCanceledException) -> ()
                    | other -> failtestf "expected OperationCanceledException, got %A" other

                    let sink =
                        task {
                            use stream = new NetworkStream(socket, ownsSocket = false)
                            return! TestUtil.receiveHashed stream
                        }

                    let resumed = wait (output.FlushAsync().AsTask())
                    Expect.isFalse (resumed.IsCanceled || resumed.IsCompleted) "the flush ends once the kernel reads"

                    for _ in 1..16 do
                        writeChunk ()

                    waitUnit ((output.CompleteAsync()).AsTask())
                    let received, receivedHash = wait sink
                    Expect.equal received position "every byte arrived"
                    Expect.equal receivedHash (Convert.ToHexString(hash.GetHashAndReset())) "intact (SHA-256)"
                    waitUnit ((connection.DisposeAsync()).AsTask()))
            }

            test "a zero-length flush completes at once and sends the kernel nothing; the next byte arrives alone" {
                TestUtil.withStackOf (optionsFor 6) (fun stack ->
                    let connection, socket = connectToKernel stack stack.Options.HostAddress
                    let output = connection.Output
                    let empty = output.FlushAsync()
                    Expect.isTrue empty.IsCompletedSuccessfully "completes synchronously"
                    Expect.isFalse (empty.Result.IsCanceled || empty.Result.IsCompleted) "a plain result"
                    output.GetMemory() |> ignore
                    output.Advance 0
                    Expect.equal output.UnflushedBytes 0L "Advance(0) adds nothing"
                    let advancedNothing = output.FlushAsync()
                    Expect.isTrue advancedNothing.IsCompletedSuccessfully "completes synchronously too"
                    Thread.Sleep 200
                    Expect.equal socket.Available 0 "the kernel got no byte"
                    output.GetSpan(1)[0] <- byte 'x'
                    output.Advance 1
                    Expect.equal output.UnflushedBytes 1L "one byte waits for the flush"
                    wait (output.FlushAsync().AsTask()) |> ignore
                    let buffer = Array.zeroCreate<byte> 8
                    socket.ReceiveTimeout <- 10000
                    let n = socket.Receive buffer
                    Expect.equal (n, buffer[0]) (1, byte 'x') "exactly the one byte"
                    output.Complete()
                    Expect.equal (socket.Receive buffer) 0 "then our FIN"
                    socket.Dispose()
                    waitUnit ((connection.DisposeAsync()).AsTask()))
            }

            test
                "pipe mode: Input refuses while a Stream read waits; after the switch the Stream's reads and writes throw InvalidOperationException, and bytes the Stream read stay read" {
                TestUtil.withStackOf (optionsFor 7) (fun stack ->
                    let connection, socket = connectToKernel stack stack.Options.HostAddress
                    use cts = new CancellationTokenSource()

                    let streamRead =
                        connection.ReadAsync(Memory(Array.zeroCreate<byte> 1), cts.Token).AsTask()

                    Thread.Sleep 50

                    Expect.throwsT<InvalidOperationException>
                        (fun () -> connection.Input |> ignore)
                        "no switch during a Stream read"

                    cts.Cancel()

                    match failureOf streamRead with
                    | Some(:? OperationCanceledException) -> ()
                    | other -> failtestf "expected the read canceled, got %A" other

                    socket.Send(Text.Encoding.ASCII.GetBytes "ab") |> ignore
                    let one = Array.zeroCreate<byte> 1
                    Expect.equal (wait (connection.ReadAsync(Memory one).AsTask())) 1 "one byte through the Stream"
                    Expect.equal one[0] (byte 'a') "the first"
                    let input = connection.Input
                    let mutable result = wait (input.ReadAsync().AsTask())
                    Expect.equal (result.Buffer.ToArray()) [| byte 'b' |] "the pipe starts after it"
                    input.AdvanceTo result.Buffer.End

                    Expect.throwsT<InvalidOperationException>
                        (fun () -> connection.ReadAsync(Memory one).AsTask().GetAwaiter().GetResult() |> ignore)
                        "Stream reads throw in pipe mode"

                    Expect.throwsT<InvalidOperationException>
                        (fun () -> connection.WriteAsync(ReadOnlyMemory one).AsTask().GetAwaiter().GetResult())
                        "Stream writes throw in pipe mode"

                    socket.Dispose()
                    connection.Abort()
                    connection.Dispose())
            }

            test
                "Input.Complete throws away what comes: the kernel sends 8 MiB more and its send completes; later reads throw" {
                TestUtil.withStackOf (optionsFor 8) (fun stack ->
                    let connection, socket = connectToKernel stack stack.Options.HostAddress
                    socket.Send(Array.create 1000 7uy) |> ignore
                    Thread.Sleep 100
                    connection.Input.Complete()

                    let send =
                        task {
                            let block = Array.create (1 <<< 20) 9uy

                            for _ in 1..8 do
                                let mutable sent = 0

                                while sent < block.Length do
                                    let! n =
                                        socket.SendAsync(
                                            ReadOnlyMemory(block, sent, block.Length - sent),
                                            SocketFlags.None
                                        )

                                    sent <- sent + n

                            socket.Shutdown SocketShutdown.Send
                        }

                    waitUnit send

                    Expect.throwsT<InvalidOperationException>
                        (fun () -> connection.Input.ReadAsync().AsTask().GetAwaiter().GetResult() |> ignore)
                        "no reading after Complete"

                    connection.Output.Complete()
                    let buffer = Array.zeroCreate<byte> 16
                    socket.ReceiveTimeout <- 10000
                    Expect.equal (socket.Receive buffer) 0 "our FIN"
                    socket.Dispose()
                    waitUnit ((connection.DisposeAsync()).AsTask()))
            }

            test "Output.Complete with an exception resets the connection: the kernel's read fails with ECONNRESET" {
                TestUtil.withStackOf (optionsFor 9) (fun stack ->
                    let connection, socket = connectToKernel stack stack.Options.HostAddress
                    connection.Output.Complete(InvalidOperationException "the producer failed")
                    socket.ReceiveTimeout <- 10000

                    let error =
                        try
                            socket.Receive(Array.zeroCreate<byte> 16) |> ignore
                            None
                        with :? SocketException as e ->
                            Some e.SocketErrorCode

                    Expect.equal error (Some SocketError.ConnectionReset) "a RST, not a FIN"
                    Expect.equal stack.Statistics.["tcp.aborted"] 1L "counted as an abort"
                    socket.Dispose()
                    connection.Dispose())
            }
        ]
