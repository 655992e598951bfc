/// Loopback inside the stack: TCP, UDP and ping from the stack to its own addresses and to
/// 127.0.0.1 and ::1 work without the device. The oracles: the bytes (SHA-256 at both ends),
/// the kernel's side of the TUN, where tcpdump sees none of it, and the kernel's own rule that
/// 127.0.0.0/8 from the wire is not for us.
/// Interfaces nsloop1..2, subnets 10.95.N.0/24, fd95:N::/64.
module NetStack.Tests.Integration.LoopbackTests

open System
open System.IO
open System.Net
open System.Net.NetworkInformation
open System.Net.Sockets
open Expecto
open NetStack
open NetStack.Tests

let private optionsFor (n: int) (offloads: bool) =
    NetStackOptions(
        TunName = $"nsloop{n}",
        Address = IPAddress.Parse $"10.95.{n}.2",
        HostAddress = IPAddress.Parse $"10.95.{n}.1",
        Address6 = IPAddress.Parse $"fd95:{n}::2",
        HostAddress6 = IPAddress.Parse $"fd95:{n}::1",
        Offloads = offloads
    )

let private timeout = TimeSpan.FromSeconds 30.0

let private wait (task: Threading.Tasks.Task<'T>) : 'T = TestUtil.waitWithin timeout task

/// The stack connects to its own listener at `target`, sends `total` bytes of a pattern one
/// way and the listener's side echoes its hash back; both sides see the same bytes.
let private transfer (stack: NetworkStack) (listener: TcpConnectionListener) (target: IPAddress) (total: int64) =
    let accepted = listener.AcceptAsync().AsTask()

    use client =
        stack.ConnectTcpAsync(IPEndPoint(target, listener.LocalEndPoint.Port)).AsTask()
        |> wait

    use server = wait accepted
    Expect.equal server.RemoteEndPoint client.LocalEndPoint $"{target}: the server sees the client's endpoint"

    let sent =
        task {
            let! hash = TestUtil.sendPattern 7 client total
            client.ShutdownWrite()
            return hash
        }

    let received = TestUtil.receiveHashed server |> wait
    let sentHash = wait sent
    Expect.equal received (total, sentHash) $"{target}: every byte, in order"

/// The stack's own traffic for `f`, as the kernel's side of the TUN sees it: nothing but one
/// sentinel ping to the kernel afterwards, which proves the capture was running.
let private silentOnTheWire (stack: NetworkStack) (n: int) (f: unit -> unit) =
    let capture =
        Path.Combine(Path.GetTempPath(), $"netstack-loop-{Guid.NewGuid():N}.pcap")

    let written = stack.Statistics.["device.written"]
    let dump = Capture.start [] stack.InterfaceName capture
    let sentinel = $"icmp and dst host 10.95.{n}.1"

    try
        f ()
        let host = IPAddress.Parse $"10.95.{n}.1"
        let reply = stack.PingAsync(host, TimeSpan.FromSeconds 5.0) |> wait
        Expect.equal reply.Status IPStatus.Success "the sentinel ping"
        Capture.awaitPackets capture sentinel
    finally
        Capture.stop dump

    // What the stack wrote, less the sentinel (the kernel's own packets come from its addresses).
    let fromStack =
        Capture.read
            capture
            $"not ({sentinel}) and not src host 10.95.{n}.1 and not src host fd95:{n}::1 and not src net fe80::/10"

    File.Delete capture
    Expect.isEmpty fromStack "nothing else reached the device"
    Expect.equal stack.Statistics.["device.written"] (written + 1L) "the device wrote only the sentinel"

let private run (n: int) (offloads: bool) =
    TestUtil.withStackOf (optionsFor n offloads) (fun stack ->
        use listener = stack.ListenTcp 7000
        let own4 = IPAddress.Parse $"10.95.{n}.2"
        let own6 = IPAddress.Parse $"fd95:{n}::2"

        silentOnTheWire stack n (fun () ->
            for target in [ own4; IPAddress.Loopback; own6; IPAddress.IPv6Loopback ] do
                transfer stack listener target (4L <<< 20)

                let reply = stack.PingAsync(target, TimeSpan.FromSeconds 5.0, 3000) |> wait
                Expect.equal reply.Status IPStatus.Success $"{target} answers the stack's ping"
                Expect.equal reply.Address target $"{target}: the reply comes from it"

            // UDP: a socket bound to 127.0.0.1 and one on the stack's address exchange datagrams.
            use a = stack.BindUdp(IPEndPoint(IPAddress.Loopback, 0))
            use b = stack.BindUdp(IPEndPoint(own4, 0))
            let receive = b.ReceiveFromAsync(Memory(Array.zeroCreate<byte> 2000)).AsTask()

            a.SendToAsync(ReadOnlyMemory(Array.create 1200 5uy), b.LocalEndPoint).AsTask()
            |> wait
            |> ignore

            let got = wait receive
            Expect.equal got.ReceivedBytes 1200 "the datagram"
            Expect.equal (got.RemoteEndPoint :?> IPEndPoint).Address IPAddress.Loopback "from 127.0.0.1"

            // A datagram to a closed port of ours: the port unreachable loops back too, and a
            // connected socket hears ECONNREFUSED, as on Linux's loopback.
            use c = stack.BindUdp(IPEndPoint(IPAddress.Loopback, 0))
            c.Connect(IPEndPoint(IPAddress.Loopback, 9))
            c.SendAsync(ReadOnlyMemory [| 1uy |]).AsTask() |> wait |> ignore

            let error =
                try
                    c.ReceiveFromAsync(Memory(Array.zeroCreate<byte> 16)).AsTask().Wait timeout
                    |> ignore

                    None
                with :? AggregateException as e ->
                    match e.InnerException with
                    | :? SocketException as s -> Some s.SocketErrorCode
                    | _ -> None

            Expect.equal error (Some SocketError.ConnectionRefused) "refused")

        Expect.isGreaterThan stack.Statistics.["loopback.packets"] 0L "counted as looped"
        Expect.equal stack.Statistics.["loopback.drop.full"] 0L "none dropped")

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Loopback"
        [
            test "TCP, UDP and ping to the stack's own addresses, 127.0.0.1 and ::1 stay inside the stack (offloads)" {
                run 1 true
            }

            test "the same without offloads" { run 2 false }

            test
                "multicast loopback (IP_MULTICAST_LOOP, on by default as on Linux): the stack's member of a group gets the stack's own datagram to it; switched off, it does not" {
                TestUtil.withStackOf (optionsFor 4 false) (fun stack ->
                    let group = IPAddress.Parse "239.95.4.1"
                    use member' = stack.BindUdp(IPEndPoint(IPAddress.Any, 7100))
                    member'.JoinMulticastGroup group
                    use sender = stack.BindUdp(IPEndPoint(IPAddress.Any, 0))
                    Expect.isTrue sender.MulticastLoopback "on by default"
                    let buffer = Array.zeroCreate<byte> 64

                    let send (b: byte) (target: IPAddress) =
                        sender.SendToAsync(ReadOnlyMemory [| b |], IPEndPoint(target, 7100)).AsTask()
                        |> wait
                        |> ignore

                    let receive () =
                        let r = member'.ReceiveFromAsync(Memory buffer).AsTask() |> wait
                        r.ReceivedBytes, buffer.[0]

                    send 1uy group
                    Expect.equal (receive ()) (1, 1uy) "the group's datagram came back"

                    // Off: the group's datagram is followed by a unicast one to ourselves; the
                    // loopback keeps order, so the unicast one comes first only if the group's
                    // did not loop back.
                    sender.MulticastLoopback <- false
                    send 2uy group
                    send 3uy (IPAddress.Parse "10.95.4.2")
                    Expect.equal (receive ()) (1, 3uy) "the unicast one: the group's stayed out")
            }
        ]
