/// Request/response against the kernel's TCP: an echo on the stack answers kernel sockets with
/// as few segments as the exchange needs (the reply carries the ACK and the window; no pure
/// window update goes out before it), thousands of short connections leave nothing behind,
/// idle keep-alive connections hold no buffer, busy ones keep theirs, and small exchanges write
/// (so make resident) only the first pages of a ring.
/// Interfaces ns108kN, subnets 10.108.N.0/24 and fda8:N::/64.
module NetStack.Tests.Integration.RequestResponseTests

open System
open System.Net
open System.Net.Sockets
open System.Reflection
open System.Runtime.InteropServices
open System.Threading
open System.Threading.Tasks
open Expecto
open NetStack
open NetStack.Tests

/// Test n's options: interface ns108kN, 10.108.N.2 (stack) / 10.108.N.1 (kernel), fda8:N::2 / ::1.
let private optionsFor (n: int) =
    NetStackOptions(
        TunName = $"ns108k{n}",
        Address = IPAddress.Parse $"10.108.{n}.2",
        HostAddress = IPAddress.Parse $"10.108.{n}.1",
        Address6 = IPAddress.Parse $"fda8:{n}::2",
        HostAddress6 = IPAddress.Parse $"fda8:{n}::1"
    )

let private timeout = TimeSpan.FromSeconds 60.0

let private EchoPort = 7

/// The shared echo until the listener closes (`onAccepted` sees each connection first).
let private serveEcho (onAccepted: TcpConnection -> unit) (listener: TcpConnectionListener) =
    TestUtil.echoServerWith onAccepted listener CancellationToken.None

/// One short connection from a kernel socket: connect, 1 byte out, 1 byte back, close.
let private shortConnection (target: IPEndPoint) =
    use s =
        new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp, ReceiveTimeout = 10_000)

    s.Connect target
    let one = [| 42uy |]
    s.Send one |> ignore
    Expect.equal (s.Receive one) 1 "the echo answered"
    Expect.equal one.[0] 42uy "the byte came back"

/// Waits until every connection the stack accepted has closed (the stack is the passive closer,
/// so nothing stays in TIME-WAIT on its side).
let private waitAllClosed (stack: NetworkStack) =
    let deadline = DateTime.UtcNow + TimeSpan.FromSeconds 20.0

    while stack.Statistics.["tcp.closed"] < stack.Statistics.["tcp.passive-open"]
          && DateTime.UtcNow < deadline do
        Thread.Sleep 20

    Expect.equal
        stack.Statistics.["tcp.closed"]
        stack.Statistics.["tcp.passive-open"]
        $"every accepted connection closed\n{stack.Statistics}"

/// The kernel's view of which pages of a managed array are in memory, and a way to drop them.
module private Pages =
    [<DllImport("libc", SetLastError = true)>]
    extern int madvise(nativeint address, unativeint length, int advice)

    /// MADV_DONTNEED (asm-generic/mman-common.h): the pages are dropped; private anonymous ones
    /// read back as zeros and become resident again only when touched.
    let private DontNeed = 4

    let size = int64 Environment.SystemPageSize

    /// The whole pages inside [address, address + length): [first, last) as page numbers.
    let inside (address: nativeint) (length: int) =
        let a = int64 address
        (a + size - 1L) / size, (a + int64 length) / size

    /// Drops the whole pages inside the array (its header, in the page before its first whole
    /// one, stays).
    let drop (address: nativeint) (length: int) =
        let first, last = inside address length

        if last > first then
            let r =
                madvise (nativeint (first * size), unativeint ((last - first) * size), DontNeed)

            Expect.equal r 0 $"madvise(MADV_DONTNEED) failed: errno {Marshal.GetLastPInvokeError()}"

    /// The page numbers in [first, last) that /proc/self/pagemap shows present or swapped
    /// (bits 63 and 62 of each page's 64-bit entry; Documentation/admin-guide/mm/pagemap.rst).
    let present (first: int64) (last: int64) =
        use map = IO.File.OpenRead "/proc/self/pagemap"
        let entry = Array.zeroCreate<byte> 8

        [
            for page in first .. last - 1L do
                map.Position <- page * 8L
                map.ReadExactly entry
                let bits = BitConverter.ToUInt64 entry

                if bits &&& (3UL <<< 62) <> 0UL then
                    page
        ]

[<Tests>]
let tests =
    testSequenced
    <| testList
        "RequestResponse with the kernel"
        [
            test
                "short connections to an echo cost the stack three segments each (SYN,ACK; the reply carrying the ACK; FIN carrying the ACK of the peer's FIN), IPv4 and IPv6" {
                let options = optionsFor 1
                use stack = NetworkStack.Start options
                use listener = stack.ListenTcp(EchoPort, backlog = 256)
                let echo = serveEcho ignore listener

                for address in [ options.Address; options.Address6 ] do
                    let target = IPEndPoint(address, EchoPort)
                    // Warm-up: JIT and first-use paths, whose slowness could let a delayed-ACK
                    // timer fire before the reply.
                    for _ in 1..20 do
                        shortConnection target

                    waitAllClosed stack
                    let sentBefore = stack.Statistics.["tcp.sent"]
                    let count = 200

                    for _ in 1..count do
                        shortConnection target

                    waitAllClosed stack
                    let sent = stack.Statistics.["tcp.sent"] - sentBefore
                    printfn $"short connections to {address}: {sent} segments from the stack for {count} connections"
                    // Before the reply carried the window, each connection also sent a pure
                    // window update (the SYN,ACK's 64 KiB window opening to the whole buffer) just
                    // ahead of the reply, and acknowledged the peer's FIN at once before its own
                    // FIN: five segments. A few timer ACKs on a loaded machine are allowed for.
                    Expect.isLessThanOrEqual
                        sent
                        (int64 (3 * count + count / 10))
                        $"segments per connection\n{stack.Statistics}"

                listener.Dispose()
                Expect.isTrue (echo.Wait timeout) "the echo's accept loop ended"
                TestUtil.assertNoExceptions stack
            }

            test "1,000 ping-pongs of 1 byte on one connection: one segment from the stack per exchange" {
                let options = optionsFor 2
                use stack = NetworkStack.Start options
                use listener = stack.ListenTcp(EchoPort)
                let echo = serveEcho ignore listener

                use s =
                    new Socket(
                        AddressFamily.InterNetwork,
                        SocketType.Stream,
                        ProtocolType.Tcp,
                        NoDelay = true,
                        ReceiveTimeout = 10_000
                    )

                s.Connect(IPEndPoint(options.Address, EchoPort))
                let one = [| 0uy |]

                let exchange (i: int) =
                    one.[0] <- byte i
                    s.Send one |> ignore
                    Expect.equal (s.Receive one) 1 "one byte back"
                    Expect.equal one.[0] (byte i) "the answer to this exchange"

                for i in 1..50 do
                    exchange i

                let sentBefore = stack.Statistics.["tcp.sent"]
                let rounds = 1000

                for i in 1..rounds do
                    exchange i

                let sent = stack.Statistics.["tcp.sent"] - sentBefore
                printfn $"ping-pong: {sent} segments from the stack for {rounds} exchanges"
                // The reply carries the ACK of the request: no pure ACK, no window update per
                // exchange (a delayed-ACK timer that fires on a loaded machine is allowed for).
                Expect.isLessThanOrEqual
                    sent
                    (int64 (rounds + rounds / 20))
                    $"segments per exchange\n{stack.Statistics}"

                s.Shutdown SocketShutdown.Send
                Expect.equal (s.Receive one) 0 "the echo closed after our FIN"
                listener.Dispose()
                Expect.isTrue (echo.Wait timeout) "the echo's accept loop ended"
                TestUtil.assertNoExceptions stack
            }

            test
                "2,000 short connections: once closed, the stack holds none of them (each accepted connection can be collected)" {
                let options = optionsFor 3
                use stack = NetworkStack.Start options
                use listener = stack.ListenTcp(EchoPort, backlog = 256)
                let accepted = Collections.Concurrent.ConcurrentQueue<WeakReference>()
                let echo = serveEcho (fun c -> accepted.Enqueue(WeakReference c)) listener
                let target = IPEndPoint(options.Address, EchoPort)
                let count = 2000

                for _ in 1..count do
                    shortConnection target

                waitAllClosed stack
                Expect.equal accepted.Count count "every connection was accepted"
                // Timer entries of closed connections leave the queue at their deadline (the
                // SYN,ACK's retransmission timer, 1 s, is the longest a short connection arms).
                Thread.Sleep 1500

                let alive () =
                    GC.Collect()
                    GC.WaitForPendingFinalizers()
                    GC.Collect()
                    accepted |> Seq.filter (fun w -> w.IsAlive) |> Seq.length

                let mutable left = alive ()
                let deadline = DateTime.UtcNow + TimeSpan.FromSeconds 5.0

                while left > 2 && DateTime.UtcNow < deadline do
                    Thread.Sleep 200
                    left <- alive ()

                printfn $"{count} short connections: {left} still reachable after closing"
                // The engine may still point at the last connection it sent for (TSO run state).
                Expect.isLessThanOrEqual
                    left
                    2
                    $"closed connections are not held
{stack.Statistics}"

                listener.Dispose()
                Expect.isTrue (echo.Wait timeout) "the echo's accept loop ended"
                TestUtil.assertNoExceptions stack
            }

            test
                "200 keep-alive connections keep their rings while busy and hold none once idle between exchanges: a few KB of heap each, not the 256 KiB of a ring" {
                let options = optionsFor 4
                use stack = NetworkStack.Start options
                use listener = stack.ListenTcp(EchoPort, backlog = 256)
                use stop = new CancellationTokenSource()

                // An echo with a 1 KiB buffer (TestUtil's has 64 KiB, which would hide the rings).
                let echo =
                    task {
                        try
                            while true do
                                let! (c: TcpConnection) = listener.AcceptAsync stop.Token

                                Task.Run(fun () ->
                                    task {
                                        use c = c
                                        let buffer = Array.zeroCreate<byte> 1024
                                        let mutable n = 1

                                        while n > 0 do
                                            let! read = c.ReadAsync(Memory buffer)
                                            n <- read

                                            if n > 0 then
                                                do! c.WriteAsync(ReadOnlyMemory(buffer, 0, n))
                                    }
                                    :> Task)
                                |> ignore
                        with _ ->
                            ()
                    }

                let target = IPEndPoint(options.Address, EchoPort)

                let connect () =
                    let s =
                        new Socket(
                            AddressFamily.InterNetwork,
                            SocketType.Stream,
                            ProtocolType.Tcp,
                            NoDelay = true,
                            ReceiveTimeout = 10_000
                        )

                    s.Connect target
                    s

                let message = Array.init 1000 byte
                let back = Array.zeroCreate<byte> 1000

                let exchange (s: Socket) (round: int) =
                    message.[0] <- byte round
                    s.Send message |> ignore
                    let mutable got = 0

                    while got < back.Length do
                        let n = s.Receive(back, got, back.Length - got, SocketFlags.None)
                        Expect.isGreaterThan n 0 "the echo answered"
                        got <- got + n

                    Expect.sequenceEqual back message "the echo came back"

                let count = 200

                // Warm-up: the JIT, and the same load once, closed: its rings go back to the
                // shared pool, which keeps as many as it will (a number that grows with the
                // processors), so that the measurement below counts what the connections hold.
                do
                    let sockets = [ for _ in 1..count -> connect () ]

                    for round in 1..5 do
                        for s in sockets do
                            exchange s round

                    for s in sockets do
                        s.Dispose()

                    waitAllClosed stack

                let heapBefore = GC.GetTotalMemory true
                let rentedBefore = stack.Statistics.["tcp.ring.rented"]
                let sockets = [ for _ in 1..count -> connect () ]

                for round in 1..5 do
                    for s in sockets do
                        exchange s round

                // A busy connection keeps its rings between exchanges (a round of 200 takes
                // milliseconds, the sweep needs a whole second without use): at most a send and
                // a receive ring each. Returned to the pool after every exchange, the rings were
                // rented again for each of the 5 rounds, about 1,000 times.
                let rentedBusy = stack.Statistics.["tcp.ring.rented"] - rentedBefore
                printfn $"{count} connections, 5 exchanges each: {rentedBusy} rings rented"
                Expect.isLessThanOrEqual rentedBusy (2L * int64 count) "at most two rings per busy connection"

                // The loop gives back the rings a connection left empty and unused for a whole
                // sweep (once a second): within two seconds of the last exchange.
                let held () =
                    stack.Statistics.["tcp.ring.rented"] - stack.Statistics.["tcp.ring.returned"]

                let idle = Diagnostics.Stopwatch.StartNew()

                while held () > 0L && idle.Elapsed < TimeSpan.FromSeconds 5.0 do
                    Thread.Sleep 100

                let held = held ()

                let perConnection = float (GC.GetTotalMemory true - heapBefore) / float count

                printfn
                    $"{count} idle keep-alive connections: {perConnection:F0} B of managed heap each, {held} rings held after {idle.Elapsed.TotalSeconds:F1} s"
                // Each used to keep its 256 KiB send ring (and a receive ring when a request had
                // come before the read) for as long as it was open.
                Expect.equal held 0L "every idle connection gave its rings back"
                Expect.isLessThan perConnection (64.0 * 1024.0) "an idle connection holds no ring"

                // They still work: a ring comes back from the pool for the next exchange.
                for s in sockets do
                    exchange s 6
                    s.Shutdown SocketShutdown.Send
                    Expect.equal (s.Receive back) 0 "the echo closed after our FIN"
                    s.Dispose()

                waitAllClosed stack
                stop.Cancel()
                Expect.isTrue (echo.Wait timeout) "the echo's accept loop ended"

                Expect.equal
                    stack.Statistics.["tcp.ring.returned"]
                    stack.Statistics.["tcp.ring.rented"]
                    "every ring went back"

                TestUtil.assertNoExceptions stack
            }
            test
                "a connection whose exchanges are 10 KB writes only the first pages of its 256 KiB rings: every exchange starts again at a ring's first byte (the kernel's page map)" {
                let options = optionsFor 5
                use stack = NetworkStack.Start options
                use listener = stack.ListenTcp EchoPort
                let accepted = (listener.AcceptAsync CancellationToken.None).AsTask()

                use s =
                    new Socket(
                        AddressFamily.InterNetwork,
                        SocketType.Stream,
                        ProtocolType.Tcp,
                        NoDelay = true,
                        ReceiveTimeout = 10_000
                    )

                s.Connect(IPEndPoint(options.Address, EchoPort))
                use c = TestUtil.waitWithin timeout accepted

                // An echo that waits with a zero-byte read before it reads, so that what arrives
                // waits in the receive ring (a read with a buffer would take it straight), and
                // writes back what it read: both rings carry every byte.
                let server =
                    task {
                        let buffer = Array.zeroCreate<byte> 65536
                        let mutable n = 1

                        while n > 0 do
                            let! _ = c.ReadAsync(Memory<byte>.Empty)
                            let! read = c.ReadAsync(Memory buffer)
                            n <- read

                            if n > 0 then
                                do! c.WriteAsync(ReadOnlyMemory(buffer, 0, n))

                        // The client's FIN: ours follows.
                        do! c.DisposeAsync()
                    }

                let size = 10 * 1024
                let message = Array.zeroCreate<byte> size
                let back = Array.zeroCreate<byte> size

                let exchange (round: int) =
                    Random(round).NextBytes message
                    Expect.equal (s.Send message) size "sent"
                    let mutable got = 0

                    while got < size do
                        let n = s.Receive(back, got, size - got, SocketFlags.None)
                        Expect.isGreaterThan n 0 "the echo answered"
                        got <- got + n

                    Expect.sequenceEqual back message $"exchange {round} came back"

                // The first exchange rents the rings.
                exchange 0

                let ring name =
                    typeof<TcpConnection>.GetField(name, BindingFlags.NonPublic ||| BindingFlags.Instance).GetValue c
                    :?> byte[]

                let rings = [ "_send", ring "_send"; "_receive", ring "_receive" ]

                for (name, r), capacity in List.zip rings [ options.TcpSendBufferBytes; options.TcpReceiveBufferBytes ] do
                    Expect.isNotNull r $"{name}: the echo holds a ring"
                    Expect.equal r.Length capacity $"{name}: a ring of the buffer's size"

                let pins = [ for _, r in rings -> GCHandle.Alloc(r, GCHandleType.Pinned) ]

                try
                    // Out of memory: what the exchanges write comes back, page by page. (The
                    // rings hold nothing unread or unacknowledged the peer does not have: the
                    // client took the whole reply.)
                    for h in pins do
                        Pages.drop (h.AddrOfPinnedObject()) (h.Target :?> byte[]).Length

                    // 40 exchanges move 400 KiB each way, one and a half times around a ring
                    // written at stream position % 256 KiB.
                    for round in 1..40 do
                        exchange round

                    for (name, r), h in List.zip rings pins do
                        Expect.isTrue (obj.ReferenceEquals(ring name, r)) $"{name}: the busy connection kept its ring"
                        let address = h.AddrOfPinnedObject()
                        let first, last = Pages.inside address r.Length
                        let resident = Pages.present first last
                        // The pages under the ring's first 10 KiB: all written, by every exchange.
                        let head = (int64 address + int64 size - 1L) / Pages.size
                        let expected = [ first .. min head (last - 1L) ]

                        printfn
                            $"{name} ring: {resident.Length} of its {last - first} whole pages resident after 40 exchanges of {size} B (expected {expected.Length})"

                        Expect.equal
                            resident
                            expected
                            $"{name}: only the pages under the ring's first {size} bytes are resident"
                finally
                    for h in pins do
                        h.Free()

                s.Shutdown SocketShutdown.Send
                Expect.equal (s.Receive back) 0 "the echo closed after our FIN"
                TestUtil.waitWithin timeout server
                waitAllClosed stack
                TestUtil.assertNoExceptions stack
            }
        ]
