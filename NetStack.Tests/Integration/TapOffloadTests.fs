/// TAP mode with virtio-net offloads against the kernel, inside the runner's private namespace:
/// the kernel hands the stack TCP super-segments in Ethernet frames and takes the stack's; full
/// duplex bulk transfers must be byte-exact. Interfaces ns107tN, subnets 10.107.N.0/24 and
/// fda7:N::/64.
module NetStack.Tests.Integration.TapOffloadTests

open System
open System.Net
open System.Net.NetworkInformation
open System.Net.Sockets
open Expecto
open NetStack
open NetStack.Device
open NetStack.Tests

let private tapOptions (n: int) (offloads: bool) =
    NetStackOptions(
        Mode = NetStackMode.Tap,
        TunName = $"ns107t{n}",
        Address = IPAddress.Parse $"10.107.{n}.2",
        HostAddress = IPAddress.Parse $"10.107.{n}.1",
        Address6 = IPAddress.Parse $"fda7:{n}::2",
        HostAddress6 = IPAddress.Parse $"fda7:{n}::1",
        MacAddress = PhysicalAddress.Parse $"02-a7-00-00-{n:x2}-02",
        TcpLinger = TimeSpan.FromSeconds 2.0,
        Offloads = offloads
    )

let private timeout = TimeSpan.FromSeconds 90.0

let private wait (task: Threading.Tasks.Task<'T>) : 'T = TestUtil.waitWithin timeout task

let private counter (stack: NetworkStack) (name: string) = stack.Statistics.[name]

/// One connection from a kernel socket to the stack; both ends send `bytes` at the same time
/// and read the other's to its FIN, so data and ACKs share super-segments both ways.
let private duplex (stack: NetworkStack) (stackAddress: IPAddress) (port: int) (bytes: int64) =
    use listener = stack.ListenTcp(IPEndPoint(stackAddress, port))

    let stackSide =
        task {
            let! connection = listener.AcceptAsync()
            let received = TestUtil.receiveHashed connection
            let! sent = TestUtil.sendPattern 107 connection bytes
            connection.ShutdownWrite()
            let! got = received
            do! connection.DisposeAsync()
            return sent, got
        }

    let kernelSide =
        task {
            use socket =
                new Socket(stackAddress.AddressFamily, SocketType.Stream, ProtocolType.Tcp)

            do! socket.ConnectAsync(IPEndPoint(stackAddress, port))
            use stream = new NetworkStream(socket)
            let received = TestUtil.receiveHashed stream
            let! sent = TestUtil.sendPattern 108 stream bytes
            socket.Shutdown SocketShutdown.Send
            let! got = received
            return sent, got
        }

    let kernelSent, (kernelGot, kernelHash) = wait kernelSide
    let stackSent, (stackGot, stackHash) = wait stackSide
    Expect.equal stackGot bytes $"every byte reached the stack over {stackAddress}"
    Expect.equal stackHash kernelSent "the stack got the kernel's bytes (SHA-256)"
    Expect.equal kernelGot bytes $"every byte reached the kernel over {stackAddress}"
    Expect.equal kernelHash stackSent "the kernel got the stack's bytes (SHA-256)"

/// The kernel's ping: every request answered once (KernelPing.answered).
let private ping (args: string list) = KernelPing.answered args |> ignore

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Tap offloads"
        [
            test "in TAP mode the kernel agrees checksum offload and TSO for IPv4 and IPv6 by default" {
                TestUtil.withStackOf (tapOptions 1 true) (fun stack ->
                    let wanted = TunOffloads.Checksum ||| TunOffloads.Tso4 ||| TunOffloads.Tso6
                    printfn $"TAP offloads in force: {stack.Offloads}"
                    Expect.equal (stack.Offloads &&& wanted) wanted "checksum, TSO4 and TSO6 in force")
            }

            test "32 MiB each way at once over TAP with offloads, IPv4 and IPv6, SHA-256 exact, as super-segments" {
                TestUtil.withStackOf (tapOptions 2 true) (fun stack ->
                    let mib32 = 32L * 1024L * 1024L
                    duplex stack (IPAddress.Parse "10.107.2.2") 7 mib32
                    duplex stack (IPAddress.Parse "fda7:2::2") 7 mib32

                    Expect.isGreaterThan
                        (counter stack "offload.gso.received")
                        0L
                        "the kernel handed the stack super-segments"

                    Expect.isGreaterThan (counter stack "offload.tso.sent") 0L "the stack wrote super-segments"

                    Expect.isGreaterThan
                        (counter stack "offload.tso.segments")
                        (2L * counter stack "offload.tso.sent")
                        "several segments per super-segment"

                    for name in
                        [
                            "device.write-error"
                            "drop.exception"
                            "link.drop.bad-vnet-header"
                            "link.drop.malformed"
                            "engine.loop-error"
                        ] do
                        Expect.equal (counter stack name) 0L name)
            }

            test "a segmented UDP send over TAP reaches a kernel socket as separate datagrams, as USO super-datagrams" {
                TestUtil.withStackOf (tapOptions 4 true) (fun stack ->
                    let pairs = TestUtil.families (tapOptions 4 true)

                    // Neighbors resolved first: an unresolved one queues 3 packets at most (the
                    // super-datagram is cut for that queue, and the oldest datagrams give way).
                    for (_, kernelAddress) in pairs do
                        let reply = stack.PingAsync(kernelAddress, TimeSpan.FromSeconds 5.0) |> wait
                        Expect.equal reply.Status IPStatus.Success $"ping {kernelAddress}"

                    let sends = TestUtil.udpSegmentsToKernel stack pairs 5456

                    if stack.Offloads.HasFlag TunOffloads.Uso4 then
                        Expect.equal (counter stack "offload.uso.sent") sends "one super-datagram per send"
                    else
                        printfn $"TAP without USO ({stack.Offloads}): the datagrams went one by one")
            }

            test "a segmented UDP send to a neighbor not yet resolved waits whole in the neighbor queue and arrives" {
                TestUtil.withStackOf (tapOptions 5 true) (fun stack ->
                    // No ping first: the first send of each family finds its neighbor unresolved.
                    TestUtil.udpSegmentsToKernel stack (TestUtil.families (tapOptions 5 true)) 5457
                    |> ignore

                    if stack.Offloads.HasFlag TunOffloads.Uso4 then
                        Expect.isGreaterThan
                            (counter stack "link.uso.cut-for-queue")
                            0L
                            "a super-datagram was cut for the queue")
            }

            test "with offloads off the TAP stack has none, answers pings and moves TCP both ways as ordinary frames" {
                TestUtil.withStackOf (tapOptions 3 false) (fun stack ->
                    Expect.equal stack.Offloads TunOffloads.None "no offloads"
                    ping [ "-c"; "2"; "-i"; "0.2"; "-W"; "2"; "10.107.3.2" ]
                    ping [ "-6"; "-c"; "2"; "-i"; "0.2"; "-W"; "2"; "fda7:3::2" ]
                    let mib4 = 4L * 1024L * 1024L
                    duplex stack (IPAddress.Parse "10.107.3.2") 7 mib4
                    duplex stack (IPAddress.Parse "fda7:3::2") 7 mib4
                    Expect.equal (counter stack "offload.gso.received") 0L "no super-segments read"
                    Expect.equal (counter stack "offload.tso.sent") 0L "none written")
            }
        ]
