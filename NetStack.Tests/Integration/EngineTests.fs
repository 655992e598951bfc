/// The engine against the real kernel: kernel ping and sockets on one side of a TUN interface,
/// NetworkStack on the other, all inside the test runner's private network namespace.
module NetStack.Tests.Integration.EngineTests

open System
open System.Net
open System.Net.NetworkInformation
open System.Net.Sockets
open System.Threading
open Expecto
open NetStack
open NetStack.Tests

/// Each test gets its own interface and subnet (10.79.N.0 / fd79:N::), so a slow teardown of one
/// cannot disturb the next.
let private optionsWith (n: int) (inlineCompletions: bool) =
    NetStackOptions(
        TunName = $"nsengine{n}",
        Address = IPAddress.Parse $"10.79.{n}.2",
        HostAddress = IPAddress.Parse $"10.79.{n}.1",
        Address6 = IPAddress.Parse $"fd79:{n}::2",
        HostAddress6 = IPAddress.Parse $"fd79:{n}::1",
        UnsafeInlineCompletions = inlineCompletions
    )

let private optionsFor (n: int) = optionsWith n false

let private withStackUsing (options: NetStackOptions) (f: NetworkStack -> unit) =
    use stack = NetworkStack.Start options

    try
        f stack
    with e ->
        let _, addresses = Isolation.run "ip" [ "addr" ]
        let _, routes = Isolation.run "ip" [ "route" ]
        failtestf "%s\nstatistics:\n%O\n%s\n%s" (e.ToString()) stack.Statistics addresses routes

    TestUtil.assertNoExceptions stack

let private withStack (n: int) (f: NetworkStack -> unit) = withStackUsing (optionsFor n) f

/// The kernel's ping: every request answered once (KernelPing.answered).
let private ping (args: string list) = KernelPing.answered args

let private kernelSocket (local: IPAddress) =
    let socket = new Socket(local.AddressFamily, SocketType.Dgram, ProtocolType.Udp)
    socket.ReceiveTimeout <- 5000
    socket.Bind(IPEndPoint(local, 0))
    socket

let private payload (length: int) (seed: int) =
    let bytes = Array.zeroCreate<byte> length
    Random(seed).NextBytes bytes
    bytes

let private timeout = TimeSpan.FromSeconds 5.0

let private result (task: Threading.Tasks.Task<'T>) =
    if not (task.Wait timeout) then
        failtest "timed out"

    task.Result

/// Packets the kernel dropped on their way into the TUN device `dev` (its queue was full).
let private tunTxDropped (dev: string) =
    let code, output = Isolation.run "ip" [ "-s"; "-j"; "link"; "show"; "dev"; dev ]
    Expect.equal code 0 $"ip -s link show {dev}:\n{output}"
    use json = Text.Json.JsonDocument.Parse output
    json.RootElement.[0].GetProperty("stats64").GetProperty("tx").GetProperty("dropped").GetInt64()

/// Packets dropped so far, over every reason.
let private drops (stack: NetworkStack) =
    stack.Statistics.Snapshot()
    |> Seq.filter (fun kv -> kv.Key.StartsWith "drop.")
    |> Seq.sumBy (fun kv -> kv.Value)

/// After a burst of `count` garbage packets into stack `n` (see optionsFor), `dropsBefore` drops
/// before it: every one of them was dropped and counted by reason (the kernel's own packets on the
/// link, router solicitations or MLD reports, may add drops of their own), and the kernel's pings
/// to both of the stack's addresses are still answered.
let private expectGarbageDroppedAndPingsAnswered (stack: NetworkStack) (n: int) (dropsBefore: int64) (count: int64) =
    SpinWait.SpinUntil((fun () -> drops stack - dropsBefore >= count), TimeSpan.FromSeconds 10.0)
    |> ignore

    Expect.isGreaterThanOrEqual (drops stack - dropsBefore) count "every garbage packet was dropped and counted"
    ping [ "-c"; "2"; "-i"; "0.2"; "-W"; "2"; $"10.79.{n}.2" ] |> ignore
    ping [ "-6"; "-c"; "2"; "-i"; "0.2"; "-W"; "2"; $"fd79:{n}::2" ] |> ignore

/// UDP both ways between a kernel socket and a stack socket.
let private udpRoundTrip (stack: NetworkStack) (host: IPAddress) (stackAddress: IPAddress) (length: int) =
    use kernel = kernelSocket host
    use socket = stack.BindUdp(IPEndPoint(stackAddress, 0))
    let data = payload length length
    let target = IPEndPoint(stackAddress, socket.LocalEndPoint.Port)
    // Kernel to stack.
    let receive = socket.ReceiveFromAsync(Memory(Array.zeroCreate<byte> 65536)).AsTask()
    kernel.SendTo(data, target) |> ignore
    let received = result receive
    Expect.equal received.ReceivedBytes length "the stack received every byte"
    let from = received.RemoteEndPoint :?> IPEndPoint
    Expect.equal from.Port (kernel.LocalEndPoint :?> IPEndPoint).Port "from the kernel socket's port"
    // Stack to kernel.
    let back = payload length (length + 1)

    socket.SendToAsync(ReadOnlyMemory back, kernel.LocalEndPoint :?> IPEndPoint).AsTask()
    |> result
    |> ignore

    let buffer = Array.zeroCreate<byte> 65536
    let n = kernel.Receive buffer
    Expect.equal n length "the kernel received every byte"
    Expect.sequenceEqual (buffer.[.. n - 1]) back "the same bytes"

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Engine with the kernel"
        [
            test "the kernel pings the stack over IPv4 and IPv6" {
                withStack 1 (fun stack ->
                    ping [ "-c"; "3"; "-i"; "0.2"; "-W"; "2"; "10.79.1.2" ] |> ignore
                    ping [ "-6"; "-c"; "3"; "-i"; "0.2"; "-W"; "2"; "fd79:1::2" ] |> ignore
                    // The loop counts a reply just after writing it, so ping may have its last
                    // reply before the counter moves.
                    let deadline = DateTime.UtcNow.AddSeconds 5.0

                    while stack.Statistics.["icmp.echo.replied"] < 6L && DateTime.UtcNow < deadline do
                        Threading.Thread.Sleep 10

                    Expect.equal stack.Statistics.["icmp.echo.replied"] 6L "six replies, one per request")
            }

            test "pings of 6000 bytes are reassembled and answered in fragments, both families" {
                withStack 2 (fun stack ->
                    ping [ "-c"; "2"; "-i"; "0.2"; "-W"; "2"; "-s"; "6000"; "10.79.2.2" ] |> ignore

                    ping [ "-6"; "-c"; "2"; "-i"; "0.2"; "-W"; "2"; "-s"; "6000"; "fd79:2::2" ]
                    |> ignore

                    Expect.isGreaterThan stack.Statistics.["ip.fragment.held"] 0L "fragments were held"
                    Expect.isGreaterThan stack.Statistics.["ip.fragments.sent"] 0L "replies were fragmented")
            }

            test "the stack pings the kernel over IPv4 and IPv6, small and fragmented" {
                withStack 3 (fun stack ->
                    for address in [ "10.79.3.1"; "fd79:3::1" ] do
                        for size in [ 56; 6000 ] do
                            let reply = stack.PingAsync(IPAddress.Parse address, timeout, size) |> result
                            Expect.equal reply.Status IPStatus.Success $"{address} answers {size} bytes"
                            Expect.equal reply.BufferSize size "the data came back")
            }

            test "a ping to an address nobody has times out" {
                withStack 4 (fun stack ->
                    let reply =
                        stack.PingAsync(IPAddress.Parse "10.79.4.3", TimeSpan.FromMilliseconds 300.0)
                        |> result

                    Expect.equal reply.Status IPStatus.TimedOut "no answer from nobody: timed out"
                    Expect.equal stack.Statistics.["ping.timed-out"] 1L "counted as timed out")
            }

            test "UDP flows both ways over IPv4 and IPv6 with 1, 1472, 1473 and 60000 bytes" {
                withStack 5 (fun stack ->
                    for host, ours in [ "10.79.5.1", "10.79.5.2"; "fd79:5::1", "fd79:5::2" ] do
                        for length in [ 1; 1472; 1473; 60000 ] do
                            udpRoundTrip stack (IPAddress.Parse host) (IPAddress.Parse ours) length)
            }

            test "a connected kernel socket sees ECONNREFUSED from a closed stack port" {
                withStack 6 (fun stack ->
                    for host, ours in [ "10.79.6.1", "10.79.6.2"; "fd79:6::1", "fd79:6::2" ] do
                        use kernel = kernelSocket (IPAddress.Parse host)
                        kernel.Connect(IPEndPoint(IPAddress.Parse ours, 9))
                        kernel.Send [| 1uy |] |> ignore

                        let error =
                            try
                                kernel.Receive(Array.zeroCreate<byte> 16) |> ignore
                                SocketError.Success
                            with :? SocketException as e ->
                                e.SocketErrorCode

                        Expect.equal error SocketError.ConnectionRefused $"refused over {host}"

                    // The loop counts an error just after writing it, so the kernel can report
                    // ECONNREFUSED a moment before the counter moves: give it that moment.
                    let counted () =
                        stack.Statistics.["icmp.error.sent.port-unreachable"] >= 2L

                    SpinWait.SpinUntil(counted, TimeSpan.FromSeconds 2.0) |> ignore

                    Expect.equal
                        stack.Statistics.["icmp.error.sent.port-unreachable"]
                        2L
                        "two errors, one per datagram")
            }

            test "a connected stack socket sees ConnectionRefused from a closed kernel port" {
                withStack 7 (fun stack ->
                    for host, ours in [ "10.79.7.1", "10.79.7.2"; "fd79:7::1", "fd79:7::2" ] do
                        use socket = stack.BindUdp(IPEndPoint(IPAddress.Parse ours, 0))
                        socket.Connect(IPEndPoint(IPAddress.Parse host, 9))
                        socket.SendAsync(ReadOnlyMemory [| 1uy |]).AsTask() |> result |> ignore

                        let error =
                            try
                                socket.ReceiveFromAsync(Memory(Array.zeroCreate<byte> 16)).AsTask()
                                |> result
                                |> ignore

                                SocketError.Success
                            with :? AggregateException as e ->
                                match e.InnerException with
                                | :? SocketException as s -> s.SocketErrorCode
                                | other -> raise other

                        Expect.equal error SocketError.ConnectionRefused $"refused over {host}")
            }

            test
                "a connected UDP socket returns datagrams from its peer only: another port's and another address's are dropped and counted, IPv4 and IPv6" {
                withStack 11 (fun stack ->
                    let ip (args: string list) =
                        let code, output = Isolation.run "ip" args
                        Expect.equal code 0 $"ip %A{args}: {output}"

                    for host, other, ours in
                        [
                            "10.79.11.1", "10.79.11.3", "10.79.11.2"
                            "fd79:11::1", "fd79:11::3", "fd79:11::2"
                        ] do
                        // A second kernel address: its datagrams leave through the TUN like the host's.
                        // (nodad: usable at once, not tentative while the kernel's DAD work runs.)
                        let otherPrefix, flags =
                            if other.Contains ':' then
                                $"{other}/128", [ "nodad" ]
                            else
                                $"{other}/32", []

                        ip ([ "addr"; "add"; otherPrefix; "dev"; "lo" ] @ flags)

                        try
                            use peer = kernelSocket (IPAddress.Parse host)
                            use otherPort = kernelSocket (IPAddress.Parse host)
                            use otherAddress = kernelSocket (IPAddress.Parse other)
                            use socket = stack.BindUdp(IPEndPoint(IPAddress.Parse ours, 0))
                            socket.Connect(peer.LocalEndPoint :?> IPEndPoint)
                            let target = socket.LocalEndPoint

                            let dropped () =
                                stack.Statistics.["udp.drop.not-connected-peer"]

                            let before = dropped ()
                            otherPort.SendTo(Text.Encoding.ASCII.GetBytes "another port", target) |> ignore

                            otherAddress.SendTo(Text.Encoding.ASCII.GetBytes "another address", target)
                            |> ignore

                            SpinWait.SpinUntil((fun () -> dropped () = before + 2L), timeout) |> ignore

                            Expect.equal
                                (dropped () - before)
                                2L
                                $"both strangers' datagrams dropped and counted over {host}"

                            peer.SendTo(Text.Encoding.ASCII.GetBytes "the peer", target) |> ignore
                            let buffer = Array.zeroCreate<byte> 100
                            let r = socket.ReceiveFromAsync(Memory buffer).AsTask() |> result

                            Expect.equal
                                (Text.Encoding.ASCII.GetString(buffer, 0, r.ReceivedBytes))
                                "the peer"
                                "the peer's datagram"

                            Expect.equal r.RemoteEndPoint (peer.LocalEndPoint) "from the peer"
                            // Nothing else was queued: the next receive waits until it is canceled.
                            use cancel = new CancellationTokenSource(TimeSpan.FromMilliseconds 300.0)

                            let next = socket.ReceiveFromAsync(Memory buffer, cancel.Token).AsTask()

                            let outcome =
                                try
                                    next.Wait timeout |> ignore
                                    "a datagram"
                                with :? AggregateException as e when (e.InnerException :? OperationCanceledException) ->
                                    "canceled"

                            Expect.equal outcome "canceled" "no stranger's datagram is returned later"
                            Expect.equal (dropped () - before) 2L "and nothing more was dropped"
                        finally
                            ip [ "addr"; "del"; otherPrefix; "dev"; "lo" ])
            }

            test "a burst of garbage is counted and the stack still answers pings" {
                withStack 8 (fun stack ->
                    let random = Random 8
                    let before = drops stack

                    for i in 1..2000 do
                        let garbage = Array.zeroCreate<byte>(random.Next(0, 200))
                        random.NextBytes garbage
                        // Half of them look like IP headers, to get past the version check.
                        if garbage.Length > 0 && i % 2 = 0 then
                            garbage.[0] <- (if i % 4 = 0 then 0x45uy else 0x60uy)

                        stack.InjectPacket(ReadOnlySpan garbage)

                    expectGarbageDroppedAndPingsAnswered stack 8 before 2000L)
            }

            test "garbage the kernel writes into the TUN interface is counted and the stack still answers pings" {
                withStack 10 (fun stack ->
                    // An AF_PACKET socket on the TUN interface hands its bytes, as they are, to
                    // the device's reader: the same path as any packet from the kernel.
                    let script =
                        """
import random, socket, sys
name, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
r = random.Random(10)
for i in range(count):
    b = bytearray(r.getrandbits(8) for _ in range(r.randrange(1, 200)))
    if i % 2 == 0:
        b[0] = 0x45 if i % 4 == 0 else 0x60
    s.sendto(bytes(b), (name, 0x86DD if b[0] >> 4 == 6 else 0x0800))
"""


                    // The TUN's queue (txqueuelen, 500 packets) drops what the stack has not read
                    // yet when it is full; longer than the burst, it takes every packet.
                    let code, output =
                        Isolation.run "ip" [ "link"; "set"; "dev"; stack.InterfaceName; "txqueuelen"; "2000" ]

                    Expect.equal code 0 $"ip link set txqueuelen: {output}"
                    let queueDrops = tunTxDropped stack.InterfaceName
                    let before = drops stack

                    let code, output =
                        Isolation.run "python3" [ "-c"; script; stack.InterfaceName; "1000" ]

                    Expect.equal code 0 $"the kernel wrote the garbage:\n{output}"
                    Expect.equal (tunTxDropped stack.InterfaceName - queueDrops) 0L "the TUN queue dropped none"
                    expectGarbageDroppedAndPingsAnswered stack 10 before 1000L)
            }

            test
                "a socket's datagrams reach the kernel in the order sent, whether written on the sender's thread while the loop sleeps or queued while it is busy" {
                // The loop is held busy on purpose: with UnsafeInlineCompletions the code after a
                // stack receive runs on the loop itself, and there it waits for this test's signal.
                withStackUsing (optionsWith 12 true) (fun stack ->
                    use receiver = kernelSocket (IPAddress.Parse "10.79.12.1")
                    receiver.ReceiveBufferSize <- 1 <<< 20
                    let target = receiver.LocalEndPoint :?> IPEndPoint
                    use sender = stack.BindUdp(IPEndPoint(IPAddress.Any, 0))
                    use holder = stack.BindUdp(IPEndPoint(IPAddress.Any, 9))
                    use poker = kernelSocket (IPAddress.Parse "10.79.12.1")
                    let holderEnd = IPEndPoint(IPAddress.Parse "10.79.12.2", 9)
                    let rounds = 10
                    let batch = 100
                    let received = Collections.Generic.List<int>()
                    let buffer = Array.zeroCreate<byte> 64
                    let next = ref 0
                    let sent () = stack.Statistics.["udp.sent"]
                    let sentInline () = stack.Statistics.["udp.sent.inline"]

                    let sendBatch () =
                        for _ in 1..batch do
                            let datagram = BitConverter.GetBytes next.Value
                            let sent = sender.SendToAsync(ReadOnlyMemory datagram, target).AsTask()
                            Expect.equal (result sent) 4 "bytes sent"
                            next.Value <- next.Value + 1

                    // Reads back what was sent (the kernel socket's buffer holds it all: nothing lost).
                    let readBack (count: int) =
                        for _ in 1..count do
                            let n = receiver.Receive buffer
                            Expect.equal n 4 "a whole datagram"
                            received.Add(BitConverter.ToInt32(buffer, 0))

                    // Holds the loop in the continuation of a receive the kernel's datagram ends;
                    // returns what lets it go.
                    let holdLoop () =
                        use held = new ManualResetEventSlim()
                        let release = new ManualResetEventSlim()
                        let onLoop = ref false

                        let holding =
                            task {
                                let! _ = holder.ReceiveFromAsync(Memory(Array.zeroCreate<byte> 16))
                                onLoop.Value <- TestUtil.onEngineThread stack.InterfaceName
                                held.Set()
                                release.Wait timeout |> ignore
                            }

                        poker.SendTo([| 1uy |], holderEnd) |> ignore
                        Expect.isTrue (held.Wait timeout) "the receive's continuation started"
                        Expect.isTrue onLoop.Value "and runs on the engine thread"

                        fun () ->
                            release.Set()
                            TestUtil.waitTaskWithin timeout holding
                            release.Dispose()

                    // The loop asleep: written on this thread.
                    Thread.Sleep 200
                    sendBatch ()
                    readBack batch
                    let inlineQuiet = sentInline ()

                    for _ in 1..rounds do
                        let letGo = holdLoop ()
                        let sentBefore, inlineBefore = sent (), sentInline ()
                        sendBatch ()
                        // Held: every datagram of the batch waits in the loop's queue.
                        Expect.equal (sent ()) sentBefore "while the loop is held, nothing is sent"
                        Expect.equal (sentInline ()) inlineBefore "nor written on the sender's thread"
                        letGo ()
                        // Straight after: sent while the loop drains its queue and then sleeps, so
                        // some queued and some written here; none may overtake the held batch.
                        sendBatch ()
                        readBack (2 * batch)

                    let queued = sent () - sentInline ()

                    printfn
                        "datagrams written on the sender's thread: %d (%d with the loop quiet), queued for the loop: %d"
                        (sentInline ())
                        inlineQuiet
                        queued

                    Expect.sequenceEqual received [ 0 .. next.Value - 1 ] "every datagram, in the order sent"

                    Expect.isGreaterThan
                        inlineQuiet
                        0L
                        "with the loop asleep, datagrams were written on the sender's thread"

                    Expect.isGreaterThanOrEqual
                        queued
                        (int64 (rounds * batch))
                        "with the loop held, datagrams were queued for it")
            }

            test "disposing the stack removes its interface" {
                let stack = NetworkStack.Start(optionsFor 9)
                let name = stack.InterfaceName
                Expect.equal (fst (Isolation.run "ip" [ "link"; "show"; "dev"; name ])) 0 "the interface exists"
                stack.Dispose()
                let code, output = Isolation.run "ip" [ "link"; "show"; "dev"; name ]
                // iproute2 exits 1 and names the device when it does not exist.
                Expect.equal code 1 $"ip link show exits 1: {output}"
                Expect.stringContains output $"Device \"{name}\" does not exist" "the interface is gone"
                TestUtil.assertNoExceptions stack
            }
        ]
