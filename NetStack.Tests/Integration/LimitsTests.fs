/// Limits and shutdown with the kernel as the peer, inside the test runner's private network
/// namespace: disposing a busy stack ends everything cleanly (pending calls fail, peers see a
/// RST, the interface goes, no descriptor or thread is left behind), and the configurable caps
/// refuse cleanly when reached. Interfaces ns96lN, subnets 10.96.N.0/24 and fd96:N::/64.
module NetStack.Tests.Integration.LimitsTests

open System
open System.IO
open System.Net
open System.Net.Sockets
open System.Threading
open System.Threading.Tasks
open Expecto
open NetStack
open NetStack.Tests

/// Test n's options: interface ns96lN, 10.96.N.2 (stack) / 10.96.N.1 (kernel), fd96:N::2 / ::1.
let private optionsFor (n: int) =
    NetStackOptions(
        TunName = $"ns96l{n}",
        Address = IPAddress.Parse $"10.96.{n}.2",
        HostAddress = IPAddress.Parse $"10.96.{n}.1",
        Address6 = IPAddress.Parse $"fd96:{n}::2",
        HostAddress6 = IPAddress.Parse $"fd96:{n}::1",
        TcpLinger = TimeSpan.FromSeconds 1.0,
        TcpSendBufferBytes = 64 * 1024
    )

/// Test n's options with the caps under test.
let private limitOptions
    (n: int)
    (halfOpen: int)
    (maxConnections: int)
    (userTimeout: Nullable<TimeSpan>)
    (udpBytes: int)
    =
    NetStackOptions(
        TunName = $"ns96l{n}",
        Address = IPAddress.Parse $"10.96.{n}.2",
        HostAddress = IPAddress.Parse $"10.96.{n}.1",
        Address6 = IPAddress.Parse $"fd96:{n}::2",
        HostAddress6 = IPAddress.Parse $"fd96:{n}::1",
        TcpLinger = TimeSpan.FromSeconds 1.0,
        TcpMaxHalfOpen = halfOpen,
        TcpMaxConnections = maxConnections,
        TcpUserTimeout = userTimeout,
        UdpReceiveQueueBytes = udpBytes
    )

let private timeout = TimeSpan.FromSeconds 20.0

let private wait (task: Threading.Tasks.Task<'T>) : 'T =
    NetStack.Tests.TestUtil.waitWithin timeout task

/// Open file descriptors of this process.
let private descriptors () =
    Directory.GetFileSystemEntries "/proc/self/fd" |> Array.length

/// Threads of this process whose name starts with "netstack" (the stacks' loop threads; Linux
/// keeps the first 15 characters of a thread name in /proc).
let private stackThreads () =
    Directory.GetDirectories "/proc/self/task"
    |> Array.filter (fun t ->
        try
            File.ReadAllText(Path.Combine(t, "comm")).StartsWith "netstack"
        with :? IOException ->
            // The thread ended between the listing and the read.
            false)
    |> Array.length

/// All threads of this process.
let private threads () =
    Directory.GetDirectories "/proc/self/task" |> Array.length

/// Waits up to 10 s for `probe` to return `expected`; returns the last value seen.
let private settle (expected: int) (probe: unit -> int) =
    let deadline = DateTime.UtcNow + TimeSpan.FromSeconds 10.0
    let mutable value = probe ()

    while value <> expected && DateTime.UtcNow < deadline do
        GC.Collect()
        GC.WaitForPendingFinalizers()
        Thread.Sleep 100
        value <- probe ()

    value

/// The exception a faulted task ended with (the first inner one), waiting up to 10 s.
let private failure (name: string) (task: Task) : exn =
    try
        if not (task.Wait(TimeSpan.FromSeconds 10.0)) then
            failtestf "%s: still pending after the stack was disposed" name

        failtestf "%s: completed instead of failing" name
    with :? AggregateException as e ->
        e.InnerExceptions.[0]

/// The socket error inside an IOException or SocketException, if any.
let private socketError (e: exn) =
    match e with
    | :? SocketException as s -> Some s.SocketErrorCode
    | :? IOException as io ->
        match io.InnerException with
        | :? SocketException as s -> Some s.SocketErrorCode
        | _ -> None
    | _ -> None

/// The kernel's count of retransmitted SYNs in this network namespace (TcpExt TCPSynRetrans in
/// /proc/net/netstat, which is per namespace).
let private kernelSynRetransmits () =
    let lines = File.ReadAllLines "/proc/net/netstat"
    let i = lines |> Array.findIndex (fun l -> l.StartsWith "TcpExt:")
    let names = lines.[i].Split ' '
    let values = lines.[i + 1].Split ' '
    int64 values.[Array.findIndex ((=) "TCPSynRetrans") names]

/// Reads a kernel socket until it fails or ends; the SocketError of the failure (Success at EOF).
let private kernelReadsUntilEnd (socket: Socket) =
    socket.ReceiveTimeout <- 10_000
    let buffer = Array.zeroCreate<byte> 65536

    try
        while socket.Receive buffer > 0 do
            ()

        SocketError.Success
    with :? SocketException as e ->
        e.SocketErrorCode

/// One busy stack: a listener with an accepted connection (pending read) and a pending accept,
/// a connection to a kernel listener (pending write into a peer that does not read, pending read),
/// a connect that will never complete, a UDP socket with a pending receive, and a pending ping.
/// Dispose it and check that every call ends, the kernel peers see a RST and the interface is gone.
let private disposeBusyStack (n: int) =
    let options = optionsFor n

    let stack = NetworkStack.Start options
    let name = stack.InterfaceName
    let stackAddress = options.Address
    let kernelAddress = options.HostAddress

    try
        // Kernel client -> stack listener; accepted, with a read pending.
        let listener = stack.ListenTcp(7)

        use client =
            new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

        client.Connect(IPEndPoint(stackAddress, 7))
        let accepted = listener.AcceptAsync().AsTask() |> wait
        let acceptedRead = accepted.ReadAsync(Memory(Array.zeroCreate<byte> 100)).AsTask()
        let pendingAccept = listener.AcceptAsync().AsTask()
        // Stack client -> kernel listener that never reads (small buffer): a write stays pending.
        use kernelListener =
            new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

        kernelListener.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReceiveBuffer, 4096)
        kernelListener.Bind(IPEndPoint(kernelAddress, 0))
        kernelListener.Listen 8

        let outgoing =
            stack.ConnectTcpAsync(kernelListener.LocalEndPoint :?> IPEndPoint).AsTask()
            |> wait

        use server = kernelListener.Accept()
        let outgoingRead = outgoing.ReadAsync(Memory(Array.zeroCreate<byte> 100)).AsTask()

        let pendingWrite =
            outgoing.WriteAsync(ReadOnlyMemory(Array.zeroCreate<byte>(4 * 1024 * 1024))).AsTask()

        // A connect to an address nobody answers for, a UDP receive, a ping nobody answers.
        let pendingConnect =
            stack.ConnectTcpAsync(IPEndPoint(IPAddress.Parse $"10.96.{n}.9", 80)).AsTask()

        let udp = stack.BindUdp(IPEndPoint(IPAddress.Any, 5353))

        let pendingReceive =
            udp.ReceiveFromAsync(Memory(Array.zeroCreate<byte> 100)).AsTask()

        let pendingPing =
            stack.PingAsync(IPAddress.Parse $"10.96.{n}.9", TimeSpan.FromSeconds 60.0) :> Task

        // Let the write fill the peer's window and the SYN go out.
        Thread.Sleep 300

        for (what, task) in
            [
                "read", acceptedRead :> Task
                "accept", pendingAccept
                "outgoing read", outgoingRead
                "write", pendingWrite
                "connect", pendingConnect
                "udp receive", pendingReceive
                "ping", pendingPing
            ] do
            Expect.isFalse task.IsCompleted $"the {what} is pending before the stack is disposed"

        stack.Dispose()

        let aborted what task =
            let e = failure what task
            Expect.equal (socketError e) (Some SocketError.OperationAborted) $"{what}: {e}"

        aborted "pending read on an accepted connection" acceptedRead
        aborted "pending accept" pendingAccept
        aborted "pending read on an outgoing connection" outgoingRead
        aborted "pending write" pendingWrite
        aborted "pending UDP receive" pendingReceive

        Expect.isTrue
            (failure "pending connect" pendingConnect :? ObjectDisposedException)
            "a pending connect fails with ObjectDisposedException"

        Expect.isTrue
            (failure "pending ping" pendingPing :? ObjectDisposedException)
            "a pending ping fails with ObjectDisposedException"

        Expect.equal (kernelReadsUntilEnd client) SocketError.ConnectionReset "the kernel client saw a RST"
        Expect.equal (kernelReadsUntilEnd server) SocketError.ConnectionReset "the kernel server saw a RST"
        // The accepted and the outgoing connection; the connect in SYN-SENT gets none (RFC 9293 §3.10.5).
        Expect.equal stack.Statistics.["tcp.rst.sent-on-dispose"] 2L "both RSTs counted"

        Expect.isFalse (Directory.Exists $"/sys/class/net/{name}") $"the interface {name} is gone after Dispose"

        let code, output = Isolation.run "ip" [ "link"; "show"; name ]
        Expect.equal code 1 $"ip link show {name} exits 1 after Dispose: {output}"
        Expect.stringContains output $"Device \"{name}\" does not exist" "the interface is gone"

        Expect.throwsT<ObjectDisposedException> (fun () -> stack.ListenTcp 8 |> ignore) "ListenTcp after Dispose"

        Expect.throwsT<ObjectDisposedException>
            (fun () -> stack.BindUdp(IPEndPoint(IPAddress.Any, 9)) |> ignore)
            "BindUdp after Dispose"
    finally
        stack.Dispose()

    TestUtil.assertNoExceptions stack

/// What the idle-connection measurement found.
type IdleResult =
    {
        /// Connections the kernel opened.
        Connections: int
        /// Connections the listener accepted.
        Accepted: int
        /// Managed heap growth (after a full collection) per connection.
        ManagedBytesPerConnection: float
        /// Resident set growth per connection.
        RssBytesPerConnection: float
    }

    override this.ToString() =
        $"idle connections: {this.Accepted}/{this.Connections} accepted; per connection %.0f{this.ManagedBytesPerConnection} bytes of managed heap, %.0f{this.RssBytesPerConnection} bytes of RSS"

/// Many idle kernel connections (Hostile.py idle, one process) to one listener of a stack.
module IdleConnections =

    let private rss () =
        File.ReadAllLines "/proc/self/status"
        |> Array.find (fun l -> l.StartsWith "VmRSS:")
        |> fun l -> int64 (l.Split(' ', StringSplitOptions.RemoveEmptyEntries).[1]) * 1024L

    /// Opens `count` kernel connections to port 7 of `stack`, waits (up to `patience`) until all
    /// are accepted, and measures the growth of the managed heap and of the RSS per connection.
    let measure (stack: NetworkStack) (count: int) (patience: TimeSpan) =
        use listener = stack.ListenTcp(7, 1024)
        let accepted = Collections.Concurrent.ConcurrentQueue<TcpConnection>()

        let acceptLoop =
            task {
                try
                    while true do
                        let! c = listener.AcceptAsync()
                        accepted.Enqueue c
                with :? SocketException as e when e.SocketErrorCode = SocketError.OperationAborted ->
                    // The listener was disposed (below): the documented end of a pending accept.
                    ()
            }

        let heapBefore = GC.GetTotalMemory true
        let rssBefore = rss ()
        let psi = Diagnostics.ProcessStartInfo "python3"

        for a in
            [
                HostileTests.scriptPath ()
                "idle"
                string stack.Options.Address
                "7"
                string count
            ] do
            psi.ArgumentList.Add a

        psi.RedirectStandardInput <- true
        psi.RedirectStandardOutput <- true
        use python = Diagnostics.Process.Start psi

        try
            let line = python.StandardOutput.ReadLine()
            let clock = Diagnostics.Stopwatch.StartNew()

            while accepted.Count < count && clock.Elapsed < patience do
                Thread.Sleep 50

            let heap = GC.GetTotalMemory true - heapBefore
            let resident = rss () - rssBefore

            if isNull line || not (line.StartsWith "connected") then
                failtestf "Hostile.py idle did not connect: %s" line

            {
                Connections = count
                Accepted = accepted.Count
                ManagedBytesPerConnection = float heap / float count
                RssBytesPerConnection = float resident / float count
            }
        finally
            python.StandardInput.Close()

            if not (python.WaitForExit 30_000) then
                python.Kill()

            listener.Dispose()

            if not (acceptLoop.Wait timeout) then
                failtest "the accept loop did not end when the listener was disposed"

            for c in accepted do
                c.Abort()

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Limits"
        [
            test
                "Dispose fails every pending call, resets kernel peers, removes the interface and leaks no descriptor or thread" {
                // One round first, so that lazily created runtime descriptors and threads exist
                // before counting.
                disposeBusyStack 1
                GC.Collect()
                GC.WaitForPendingFinalizers()
                Thread.Sleep 500
                let fds = descriptors ()
                let named = stackThreads ()
                let all = threads ()

                for n in 2..6 do
                    disposeBusyStack n

                let fdsAfter = settle fds descriptors
                let namedAfter = settle named stackThreads

                printfn
                    $"Dispose, 5 rounds: descriptors {fds} -> {fdsAfter}, netstack threads {named} -> {namedAfter}, all threads {all} -> {threads ()}"

                Expect.equal fdsAfter fds "as many open descriptors as before the five stacks"
                Expect.equal namedAfter named "as many netstack loop threads as before the five stacks"
            }

            test
                "a SYN flood from random sources fills the half-open queue; SYN cookies then let a kernel client connect and transfer" {
                use stack = NetworkStack.Start(limitOptions 10 64 65536 (Nullable()) (256 * 1024))

                try
                    use listener = stack.ListenTcp(7, 128)
                    let server = HostileTests.echoServer listener
                    let heapBefore = GC.GetTotalMemory true

                    let flood =
                        Task.Run(fun () -> HostileTests.hostilePy [ "flood"; "10.96.10.2"; "7"; "20000"; "10.96.10" ])

                    // Once cookies are going out, the half-open queue is full of spoofed SYNs.
                    HostileTests.waitCounted stack "tcp.syncookie.sent" 0L 200L |> ignore

                    use client =
                        new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                    client.Connect(IPEndPoint(IPAddress.Parse "10.96.10.2", 7))
                    let data = Array.init 50_000 (fun i -> byte (i * 13))
                    Expect.equal (HostileTests.echoOnce client data) data "the legitimate client's bytes come back"
                    let code, output = wait flood
                    Expect.equal code 0 $"Hostile.py flood ran: {output}"
                    let statistics = stack.Statistics
                    let sent = statistics.["tcp.syncookie.sent"]
                    let validated = statistics.["tcp.syncookie.validated"]
                    let passive = statistics.["tcp.passive-open"]
                    let growth = GC.GetTotalMemory true - heapBefore

                    printfn
                        $"SYN flood of 20000: {sent} cookies sent, {validated} validated, {passive} half-open connections made, heap +{growth} bytes"

                    // The kernel's TUN queue drops part of a flood this fast before the stack
                    // reads it; what counts is that the SYNs that arrived past the cap got cookies.
                    // The legitimate client's own segments (50 KB echoed) are at most a few hundred.
                    let arrived = statistics.["ipv4.received"]
                    Expect.isGreaterThan arrived 1_000L "the flood reached the stack"

                    Expect.isGreaterThan
                        (float sent)
                        (0.9 * float (arrived - passive - 300L))
                        "the SYNs beyond the half-open cap were answered with cookies"

                    // Spoofed sources never answer their SYN,ACK: the one validated cookie is the client's.
                    Expect.equal validated 1L "the legitimate client came in by cookie"

                    Expect.isLessThanOrEqual
                        passive
                        (64L + 2L)
                        "no more half-open connections than the cap (plus the client)"

                    Expect.isLessThan growth (16L * 1024L * 1024L) "managed memory stayed bounded"
                    client.Close()
                    listener.Dispose()
                    Expect.isTrue (server.Wait timeout) "the echo server ended"
                with e ->
                    failtestf "%s\nstatistics:\n%O" (e.ToString()) stack.Statistics

                TestUtil.assertNoExceptions stack
            }

            test "TcpMaxConnections refuses SYNs beyond it with a RST and connects with TooManyOpenSockets" {
                use stack = NetworkStack.Start(limitOptions 11 256 8 (Nullable()) (256 * 1024))
                use listener = stack.ListenTcp(7, 128)
                let server = HostileTests.echoServer listener

                let clients =
                    [
                        for _ in 1..10 ->
                            let s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                            try
                                s.Connect(IPEndPoint(IPAddress.Parse "10.96.11.2", 7))
                                Ok s
                            with :? SocketException as e ->
                                s.Dispose()
                                Error e.SocketErrorCode
                    ]

                let connected = clients |> List.filter Result.isOk |> List.length

                let refused =
                    clients
                    |> List.filter ((=) (Error SocketError.ConnectionRefused))
                    |> List.length

                Expect.equal connected 8 "eight connections, the cap"
                Expect.equal refused 2 "the ninth and tenth were refused by a RST"
                Expect.equal stack.Statistics.["tcp.drop.max-connections"] 2L "both refusals counted"

                use kernel = TestUtil.kernelListener (IPAddress.Parse "10.96.11.1")

                let e =
                    failure "connect at the cap" (stack.ConnectTcpAsync(kernel.LocalEndPoint :?> IPEndPoint).AsTask())

                Expect.equal (socketError e) (Some SocketError.TooManyOpenSockets) $"ConnectTcpAsync at the cap: {e}"

                for c in clients do
                    match c with
                    | Ok s -> s.Dispose()
                    | Error _ -> ()

                listener.Dispose()
                Expect.isTrue (server.Wait timeout) "the echo server ended"
                TestUtil.assertNoExceptions stack
            }

            test "a full accept queue drops further SYNs (counted); a full UDP receive queue drops datagrams (counted)" {
                use stack = NetworkStack.Start(limitOptions 12 256 65536 (Nullable()) 4096)
                use _listener = stack.ListenTcp(8, 2)

                let queued =
                    [
                        for _ in 1..2 ->
                            let s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)
                            s.Connect(IPEndPoint(IPAddress.Parse "10.96.12.2", 8))
                            s
                    ]

                use third =
                    new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 1.5)
                let synRetransmitsBefore = kernelSynRetransmits ()

                let attempt =
                    third.ConnectAsync(IPEndPoint(IPAddress.Parse "10.96.12.2", 8), cancel.Token).AsTask()

                // Neither answered nor refused: the kernel's connect is still retrying its SYN when
                // the token cancels it.
                let outcome =
                    try
                        attempt.Wait(TimeSpan.FromSeconds 5.0) |> ignore
                        "completed"
                    with :? AggregateException as e ->
                        match e.InnerException with
                        | :? OperationCanceledException -> "canceled"
                        | other -> other.ToString()

                Expect.equal outcome "canceled" "the third client is not answered while the queue is full"

                // Every SYN the kernel sent (its first and each retransmission) was dropped and counted.
                let syns = 1L + kernelSynRetransmits () - synRetransmitsBefore

                Expect.equal stack.Statistics.["tcp.drop.listen-queue-full"] syns "each dropped SYN is counted"

                for s in queued do
                    s.Dispose()

                // UDP: 4096 bytes of queue hold three 1000-byte datagrams (each also costs 64).
                use udp = stack.BindUdp(IPEndPoint(IPAddress.Any, 9))

                use sender =
                    new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                for _ in 1..50 do
                    sender.SendTo(Array.zeroCreate<byte> 1000, IPEndPoint(IPAddress.Parse "10.96.12.2", 9))
                    |> ignore

                let dropped = HostileTests.waitCounted stack "udp.drop.queue-full" 0L 47L
                Expect.equal dropped 47L "all but three datagrams dropped and counted"
                let buffer = Array.zeroCreate<byte> 2000

                for _ in 1..3 do
                    let r = udp.ReceiveFromAsync(Memory buffer).AsTask() |> wait
                    Expect.equal r.ReceivedBytes 1000 "a queued datagram"

                TestUtil.assertNoExceptions stack
            }

            test
                "a peer that advertises a zero window forever: persist probes, then the user timeout ends the connection with TimedOut" {
                use stack =
                    NetworkStack.Start(limitOptions 13 256 65536 (Nullable(TimeSpan.FromSeconds 3.0)) (256 * 1024))

                use kernel =
                    new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                kernel.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReceiveBuffer, 4096)
                kernel.Bind(IPEndPoint(IPAddress.Parse "10.96.13.1", 0))
                kernel.Listen 4

                let connection =
                    stack.ConnectTcpAsync(kernel.LocalEndPoint :?> IPEndPoint).AsTask() |> wait

                use server = kernel.Accept()
                let clock = Diagnostics.Stopwatch.StartNew()
                let sentBefore = stack.Statistics.["tcp.sent"]

                let writing =
                    connection.WriteAsync(ReadOnlyMemory(Array.zeroCreate<byte>(8 * 1024 * 1024))).AsTask()

                let e = failure "a write into a window that never opens" writing
                let probes = stack.Statistics.["tcp.sent"] - sentBefore
                printfn $"zero window: the write failed after {clock.Elapsed.TotalSeconds:F1} s, {probes} segments sent"
                Expect.equal (socketError e) (Some SocketError.TimedOut) $"the write fails with TimedOut: {e}"
                Expect.equal stack.Statistics.["tcp.user-timeout"] 1L "the user timeout is counted"
                Expect.equal (kernelReadsUntilEnd server) SocketError.ConnectionReset "the kernel peer saw a RST"
                connection.Dispose()
                TestUtil.assertNoExceptions stack
            }

            test "1,000 idle kernel connections to one listener are all accepted; memory per connection is reported" {
                use stack = NetworkStack.Start(limitOptions 14 256 65536 (Nullable()) (256 * 1024))
                // NETSTACK_IDLE_CONNECTIONS=10000 runs the full-size measurement by hand.
                let count =
                    match Environment.GetEnvironmentVariable "NETSTACK_IDLE_CONNECTIONS" with
                    | null
                    | "" -> 1000
                    | n -> int n

                let result = IdleConnections.measure stack count (TimeSpan.FromSeconds 120.0)
                printfn $"{result}"
                Expect.equal result.Accepted count "every connection was accepted"
                Expect.isGreaterThan result.ManagedBytesPerConnection 0.0 "the managed heap grew with the connections"
                TestUtil.assertNoExceptions stack
            }

            test "netstack bench --idle-connections accepts every connection and prints the memory per connection" {
                // The command re-executes itself in a namespace of its own, nested in the test's.
                let code, out, err =
                    CliTests.runNetstack (TimeSpan.FromSeconds 120.0) [ "bench"; "--idle-connections"; "300" ]

                Expect.equal code 0 $"netstack bench --idle-connections 300 succeeded: {out}{err}"
                Expect.stringContains out "300 of 300 idle TCP connections accepted" "all accepted"
                Expect.stringContains out "bytes of managed heap" "the heap per connection is printed"
            }
        ]
