/// TUN offloads with the kernel as the peer, inside the runner's private network namespace:
/// the kernel hands NetStack TCP super-segments with partial checksums and takes NetStack's
/// super-segments; bulk transfers both ways, IPv4 and IPv6, with offloads on and off, must be
/// byte-exact. Subnets 10.95.N.0/24 and fd95:N::/64, interfaces ns95xN.
module NetStack.Tests.Integration.OffloadTests

open System
open System.IO
open System.Net
open System.Net.Sockets
open System.Threading.Tasks
open Expecto
open NetStack
open NetStack.Core.Wire
open NetStack.Device
open NetStack.Tests

let private optionsWith (n: int) (offloads: bool) (capture: string) =
    NetStackOptions(
        TunName = $"ns95x{n}",
        Address = IPAddress.Parse $"10.95.{n}.2",
        HostAddress = IPAddress.Parse $"10.95.{n}.1",
        Address6 = IPAddress.Parse $"fd95:{n}::2",
        HostAddress6 = IPAddress.Parse $"fd95:{n}::1",
        TcpLinger = TimeSpan.FromSeconds 2.0,
        Offloads = offloads,
        CapturePath = capture
    )

let private optionsFor (n: int) (offloads: bool) = optionsWith n offloads null

let private families (n: int) = TestUtil.families (optionsFor n false)

let private timeout = TimeSpan.FromSeconds 60.0

let private wait (task: Threading.Tasks.Task<'T>) : 'T =
    NetStack.Tests.TestUtil.waitWithin timeout task

let private bulkBytes = 24L * 1024L * 1024L

let private counter (stack: NetworkStack) (name: string) = stack.Statistics.[name]

/// Kernel to NetStack: `bulkBytes` from a kernel socket into a NetStack listener; checks the SHA-256.
let private inbound (stack: NetworkStack) (stackAddress: IPAddress) (port: int) =
    use listener = stack.ListenTcp(port)

    TestUtil.kernelToStack timeout 95 bulkBytes listener (IPEndPoint(stackAddress, port))
    |> ignore

/// NetStack to kernel: `bulkBytes` from a NetStack connection into a kernel listener.
let private outbound (stack: NetworkStack) (kernelAddress: IPAddress) =
    use kernel = TestUtil.kernelListener kernelAddress
    TestUtil.stackToKernel timeout 96 bulkBytes stack kernel |> ignore

let private withStack (options: NetStackOptions) (f: NetworkStack -> unit) =
    NetStack.Tests.TestUtil.withStackOf options f

/// The TUN interface's receive counters (what the kernel took from the stack) from /proc/net/dev,
/// which shows the current network namespace: (packets, errors, dropped).
let private linkReceive (name: string) =
    let line =
        File.ReadAllLines "/proc/net/dev"
        |> Array.find (fun l -> l.TrimStart().StartsWith(name + ":"))

    let fields =
        line.Substring(line.IndexOf ':' + 1).Split(' ', StringSplitOptions.RemoveEmptyEntries)
        |> Array.map int64

    fields.[1], fields.[2], fields.[3]

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Offloads"
        [
            test "with offloads on, the kernel agrees to checksum offload and TSO for IPv4 and IPv6" {
                withStack (optionsFor 1 true) (fun stack ->
                    let wanted = TunOffloads.Checksum ||| TunOffloads.Tso4 ||| TunOffloads.Tso6
                    printfn $"TUN offloads in force: {stack.Offloads}"
                    Expect.equal (stack.Offloads &&& wanted) wanted "checksum, TSO4 and TSO6 in force")
            }

            test "with offloads off, the device has none and the stack reads ordinary packets" {
                withStack (optionsFor 2 false) (fun stack ->
                    Expect.equal stack.Offloads TunOffloads.None "no offloads"
                    inbound stack (IPAddress.Parse "10.95.2.2") 9
                    Expect.equal (counter stack "offload.gso.received") 0L "no super-segments")
            }

            test "with offloads on, bulk data crosses intact both ways over IPv4 and IPv6 as super-segments" {
                withStack (optionsFor 3 true) (fun stack ->
                    for (stackAddress, kernelAddress) in families 3 do
                        inbound stack stackAddress 9
                        outbound stack kernelAddress

                    Expect.isGreaterThan
                        (counter stack "offload.gso.received")
                        0L
                        "the kernel handed the stack super-segments"

                    Expect.isGreaterThan (counter stack "offload.tso.sent") 0L "the stack sent super-segments"

                    Expect.isGreaterThan
                        (counter stack "offload.tso.segments")
                        (2L * counter stack "offload.tso.sent")
                        "several segments per super-segment"

                    Expect.equal (counter stack "device.write-error") 0L "the kernel refused no write"
                    let packets, errors, dropped = linkReceive stack.InterfaceName
                    Expect.equal errors 0L "the kernel took every packet the stack wrote without error"
                    Expect.equal dropped 0L "and dropped none"

                    Expect.isLessThan
                        packets
                        (counter stack "tcp.sent")
                        "the kernel counted a super-segment as one packet")
            }

            test "with offloads off, bulk data crosses intact both ways over IPv4 and IPv6 as ordinary packets" {
                withStack (optionsFor 4 false) (fun stack ->
                    for (stackAddress, kernelAddress) in families 4 do
                        inbound stack stackAddress 9
                        outbound stack kernelAddress

                    Expect.equal (counter stack "offload.tso.sent") 0L "no super-segments sent"
                    Expect.equal (counter stack "offload.gso.received") 0L "none received")
            }

            test "a capture with offloads on holds super-segments whole, every TCP checksum complete" {
                let path = Path.GetTempFileName()

                try
                    withStack (optionsWith 6 true path) (fun stack ->
                        let stackAddress, kernelAddress = families 6 |> List.head
                        inbound stack stackAddress 9
                        outbound stack kernelAddress)

                    match Pcap.readFile path with
                    | Error e -> failtestf "the capture does not read back: %A" e
                    | Ok file ->
                        let tcp =
                            file.Packets
                            |> Array.choose (fun p ->
                                match Ipv4.parse (ReadOnlySpan p.Ip) with
                                | Ok h when h.Protocol = IpProtocol.Tcp -> Some(p.Ip, h)
                                | _ -> None)

                        Expect.isGreaterThan tcp.Length 10 "TCP packets captured"

                        for ip, h in tcp do
                            let segment = ReadOnlySpan(ip, h.PayloadOffset, h.PayloadLength)

                            Expect.isTrue
                                (Tcp.hasValidChecksumV4 h.Source h.Destination segment)
                                $"a complete checksum on a {ip.Length}-byte packet"

                        Expect.exists tcp (fun (ip, _) -> ip.Length > 1500) "super-segments longer than the MTU"
                finally
                    File.Delete path
            }

            test "a kernel socket sending with UDP_SEGMENT reaches a NetStack socket as separate datagrams" {
                withStack (optionsFor 7 true) (fun stack ->
                    for (stackAddress, kernelAddress) in families 7 do
                        use udp = stack.BindUdp(IPEndPoint(stackAddress, 5454))

                        use kernel =
                            new Socket(kernelAddress.AddressFamily, SocketType.Dgram, ProtocolType.Udp)

                        kernel.Bind(IPEndPoint(kernelAddress, 0))
                        // UDP_SEGMENT (linux/udp.h, level SOL_UDP 17, option 103): one send, 1000-byte datagrams.
                        kernel.SetRawSocketOption(17, 103, ReadOnlySpan(BitConverter.GetBytes 1000))
                        let data = Array.init 10_000 (fun i -> byte (i / 1000 + i))
                        kernel.SendTo(data, IPEndPoint(stackAddress, 5454)) |> ignore
                        let buffer = Array.zeroCreate<byte> 65536

                        for i in 0..9 do
                            let result = udp.ReceiveFromAsync(Memory buffer).AsTask() |> wait
                            Expect.equal result.ReceivedBytes 1000 $"datagram {i} over {kernelAddress} is one segment"

                            Expect.equal
                                buffer.[..999]
                                data.[i * 1000 .. i * 1000 + 999]
                                $"datagram {i} holds its slice, in order"

                    if stack.Offloads.HasFlag TunOffloads.Uso4 then
                        Expect.isGreaterThan
                            (counter stack "offload.uso.received")
                            0L
                            "the kernel handed over super-datagrams")
            }

            for offloads, n in [ true, 9; false, 10 ] do
                test
                    $"a NetStack segmented UDP send reaches a kernel socket as separate datagrams (offloads {offloads})" {
                    withStack (optionsFor n offloads) (fun stack ->
                        let sends = TestUtil.udpSegmentsToKernel stack (families n) 5455
                        let uso = stack.Offloads.HasFlag TunOffloads.Uso4
                        Expect.equal uso offloads "USO in force exactly with offloads (Linux 6.2+)"

                        Expect.equal
                            (counter stack "offload.uso.sent")
                            (if uso then sends else 0L)
                            "one super-datagram per send with USO, none without")
                }

            test "with offloads on, UDP, ping and a small TCP exchange work as before" {
                withStack (optionsFor 5 true) (fun stack ->
                    for (stackAddress, kernelAddress) in families 5 do
                        let reply = stack.PingAsync(kernelAddress, TimeSpan.FromSeconds 5.0, 3000) |> wait

                        Expect.equal reply.Status NetworkInformation.IPStatus.Success $"ping {kernelAddress}"
                        use udp = stack.BindUdp(IPEndPoint(stackAddress, 5353))

                        use kernel =
                            new Socket(kernelAddress.AddressFamily, SocketType.Dgram, ProtocolType.Udp)

                        kernel.Bind(IPEndPoint(kernelAddress, 0))
                        let data = Array.init 1200 byte
                        kernel.SendTo(data, IPEndPoint(stackAddress, 5353)) |> ignore
                        let buffer = Array.zeroCreate<byte> 2000
                        let result = udp.ReceiveFromAsync(Memory buffer).AsTask() |> wait
                        Expect.equal result.ReceivedBytes 1200 $"a datagram from the kernel over {kernelAddress}"
                        Expect.equal buffer.[..1199] data "its bytes")
            }

            test "one connection each way carries more than 2 GiB intact (sequence numbers pass ISS + 2^31)" {
                // Sending once stopped for good at 2 GiB on a connection (a modulo-2^32 comparison
                // with the ISS); the unit tests cover the arithmetic, this the whole path.
                let total = (1L <<< 31) + 16L * 1024L * 1024L
                let long = TimeSpan.FromMinutes 4.0

                withStack (optionsFor 8 true) (fun stack ->
                    let stackAddress = IPAddress.Parse "10.95.8.2"
                    let kernelAddress = IPAddress.Parse "10.95.8.1"
                    use listener = stack.ListenTcp 9100

                    let inTime =
                        TestUtil.kernelToStack long 97 total listener (IPEndPoint(stackAddress, 9100))

                    use kernel = TestUtil.kernelListener kernelAddress
                    let outTime = TestUtil.stackToKernel long 98 total stack kernel

                    printfn
                        $"2 GiB + 16 MiB over one connection: kernel -> NetStack {inTime.TotalSeconds:F1} s, NetStack -> kernel {outTime.TotalSeconds:F1} s")
            }
        ]
