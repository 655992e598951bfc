/// Multicast and broadcast against the kernel, inside the runner's private namespace: kernel
/// sockets joined to groups on the stack's TUN or TAP receive the stack's multicast and send it
/// theirs; a Linux bridge with its IGMP/MLD querier on keeps the stack's memberships in its
/// multicast database (`bridge mdb`); an IGMPv2 querier gets IGMPv2 reports (tshark reads them
/// back); broadcasts both ways. Interfaces ns119t* (TUN), ns119p* (TAP), ns119br*; subnets
/// 10.119.N.0/24 and fd19:N::/64; groups 239.119.N.x and ff15::119:N:x.
module NetStack.Tests.Integration.MulticastKernelTests

open System
open System.Diagnostics
open System.IO
open System.Net
open System.Net.NetworkInformation
open System.Net.Sockets
open System.Threading
open Expecto
open NetStack
open NetStack.Engine
open NetStack.Tests

let private ip (args: string list) =
    let code, output = Isolation.run "ip" args
    Expect.equal code 0 $"ip %A{args}:\n{output}"

let private timeout = TimeSpan.FromSeconds 10.0

let private wait (task: Threading.Tasks.Task<'T>) : 'T = TestUtil.waitWithin timeout task

/// The interface index as `ip -o link` prints it ("5: name: ...").
let private ifindex (name: string) =
    let code, output = Isolation.run "ip" [ "-o"; "link"; "show"; "dev"; name ]
    Expect.equal code 0 $"ip link show {name}: {output}"
    int (output.Substring(0, output.IndexOf ':'))

let private tunOptions (n: int) =
    NetStackOptions(
        TunName = $"ns119t{n}",
        Address = IPAddress.Parse $"10.119.{n}.2",
        HostAddress = IPAddress.Parse $"10.119.{n}.1",
        Address6 = IPAddress.Parse $"fd19:{n}::2",
        HostAddress6 = IPAddress.Parse $"fd19:{n}::1"
    )

let private tapOptions (n: int) =
    NetStackOptions(
        Mode = NetStackMode.Tap,
        TunName = $"ns119p{n}",
        Address = IPAddress.Parse $"10.119.{n}.2",
        HostAddress = IPAddress.Parse $"10.119.{n}.1",
        Address6 = IPAddress.Parse $"fd19:{n}::2",
        HostAddress6 = IPAddress.Parse $"fd19:{n}::1",
        MacAddress = PhysicalAddress.Parse $"02-19-00-00-{n:x2}-02"
    )

let private withStack (options: NetStackOptions) (f: NetworkStack -> unit) =
    use stack = NetworkStack.Start options

    try
        f stack
    with e ->
        failtestf "%s\nstatistics:\n%O" (e.ToString()) stack.Statistics

    TestUtil.assertNoExceptions stack

/// A kernel UDP socket bound to `port` on any address, joined to `group` on `device`.
let private kernelMember (group: IPAddress) (device: string) (hostAddress: IPAddress) (port: int) =
    let v6 = group.AddressFamily = AddressFamily.InterNetworkV6
    let s = new Socket(group.AddressFamily, SocketType.Dgram, ProtocolType.Udp)
    s.Bind(IPEndPoint((if v6 then IPAddress.IPv6Any else IPAddress.Any), port))

    if v6 then
        s.SetSocketOption(
            SocketOptionLevel.IPv6,
            SocketOptionName.AddMembership,
            IPv6MulticastOption(group, int64 (ifindex device))
        )
    else
        s.SetSocketOption(SocketOptionLevel.IP, SocketOptionName.AddMembership, MulticastOption(group, hostAddress))

    s.ReceiveTimeout <- 5000
    s

/// A kernel UDP socket that sends its multicast out of `device`.
let private kernelSender (v6: bool) (device: string) (hostAddress: IPAddress) =
    let s =
        new Socket(
            (if v6 then
                 AddressFamily.InterNetworkV6
             else
                 AddressFamily.InterNetwork),
            SocketType.Dgram,
            ProtocolType.Udp
        )

    if v6 then
        s.SetSocketOption(SocketOptionLevel.IPv6, SocketOptionName.MulticastInterface, ifindex device)
    else
        s.SetSocketOption(SocketOptionLevel.IP, SocketOptionName.MulticastInterface, hostAddress.GetAddressBytes())

    s

let private receiveKernel (s: Socket) =
    let buffer = Array.zeroCreate<byte> 2048

    let mutable from =
        (if s.AddressFamily = AddressFamily.InterNetworkV6 then
             IPEndPoint(IPAddress.IPv6Any, 0)
         else
             IPEndPoint(IPAddress.Any, 0))
        :> EndPoint

    let n = s.ReceiveFrom(buffer, &from)
    Text.Encoding.ASCII.GetString(buffer, 0, n), (from :?> IPEndPoint)

let private receiveStack (socket: UdpSocket) =
    let buffer = Array.zeroCreate<byte> 2048

    let result = socket.ReceiveFromAsync(Memory buffer).AsTask() |> wait

    Text.Encoding.ASCII.GetString(buffer, 0, result.ReceivedBytes), (result.RemoteEndPoint :?> IPEndPoint)

/// Both ways over one family: the kernel member receives the stack's datagram to the group (from
/// the stack's address), and the stack, joined, receives the kernel's (from the host address).
let private bothWays
    (stack: NetworkStack)
    (device: string)
    (group: IPAddress)
    (hostAddress: IPAddress)
    (stackAddress: IPAddress)
    (port: int)
    =
    let v6 = group.AddressFamily = AddressFamily.InterNetworkV6
    use kernel = kernelMember group device hostAddress port
    // The kernel side's own membership, as it lists it: `ip maddr`, and /proc/net/igmp for IPv4
    // (the group as the kernel prints a __be32 on a little-endian machine).
    let _, maddr = Isolation.run "ip" [ "maddr"; "show"; "dev"; device ]
    Expect.stringContains maddr (string group) $"ip maddr lists the kernel's {group} on {device}"

    if not v6 then
        let _, igmp = Isolation.run "cat" [ "/proc/net/igmp" ]
        let hex = (BitConverter.ToUInt32(group.GetAddressBytes(), 0)).ToString "X8"
        Expect.stringContains igmp hex $"/proc/net/igmp lists {group} ({hex})"

    let text = $"to {group} from the stack"

    do
        use sender =
            stack.BindUdp(IPEndPoint((if v6 then IPAddress.IPv6Any else IPAddress.Any), port + 1))

        sender.SendToAsync(Text.Encoding.ASCII.GetBytes text, IPEndPoint(group, port)).AsTask()
        |> wait
        |> ignore

        let got, from = receiveKernel kernel
        Expect.equal got text "the kernel member received the stack's multicast"
        Expect.equal from.Address stackAddress "from the stack's address"

    use socket =
        stack.BindUdp(IPEndPoint((if v6 then IPAddress.IPv6Any else IPAddress.Any), port + 2))

    socket.JoinMulticastGroup group
    use sender = kernelSender v6 device hostAddress
    let text = $"to {group} from the kernel"

    sender.SendTo(Text.Encoding.ASCII.GetBytes text, IPEndPoint(group, port + 2))
    |> ignore

    let got, from = receiveStack socket
    Expect.equal got text "the stack received the kernel's multicast"
    Expect.equal from.Address hostAddress "from the host address"

/// `bridge mdb show dev BRIDGE` until `check` holds of it or `seconds` pass.
let private mdbUntil (bridge: string) (seconds: float) (check: string -> bool) =
    let deadline = DateTime.UtcNow.AddSeconds seconds
    let mutable output = ""
    let mutable ok = false

    while not ok && DateTime.UtcNow < deadline do
        let _, out = Isolation.run "bridge" [ "mdb"; "show"; "dev"; bridge ]
        output <- out
        ok <- check out

        if not ok then
            Thread.Sleep 200

    ok, output

let private hasGroup (port: string) (group: string) (mdb: string) =
    mdb.Split('\n')
    |> Array.exists (fun line -> line.Contains $"port {port} " && line.Contains $"grp {group} ")

let private counterUntil (stack: NetworkStack) (name: string) (at: int64) (seconds: float) =
    let deadline = DateTime.UtcNow.AddSeconds seconds

    while stack.Statistics.[name] < at && DateTime.UtcNow < deadline do
        Thread.Sleep 100

    stack.Statistics.[name]

/// A bridge with its querier on, and a stack on a TAP port of it (no host address on the TAP).
let private withBridge (name: string) (settings: string list) (n: int) (f: NetworkStack -> unit) =
    ip (
        [
            "link"
            "add"
            name
            "type"
            "bridge"
            "mcast_snooping"
            "1"
            "mcast_querier"
            "1"
        ]
        @ settings
    )

    try
        // The querier's MLD queries need the bridge's link-local address at once (no DAD).
        File.WriteAllText($"/proc/sys/net/ipv6/conf/{name}/accept_dad", "0")
        ip [ "addr"; "add"; $"10.119.{n}.1/24"; "dev"; name ]
        ip [ "link"; "set"; name; "up" ]

        let options =
            NetStackOptions(
                Mode = NetStackMode.Tap,
                TunName = $"ns119p{n}",
                Address = IPAddress.Parse $"10.119.{n}.2",
                Address6 = IPAddress.Parse $"fd19:{n}::2",
                MacAddress = PhysicalAddress.Parse $"02-19-00-00-{n:x2}-02"
            )

        use stack = NetworkStack.Start options
        ip [ "link"; "set"; $"ns119p{n}"; "master"; name ]

        try
            f stack
        with e ->
            let _, mdb = Isolation.run "bridge" [ "mdb"; "show"; "dev"; name ]
            failtestf "%s\nmdb:\n%s\nstatistics:\n%O" (e.ToString()) mdb stack.Statistics

        TestUtil.assertNoExceptions stack
    finally
        Isolation.run "ip" [ "link"; "del"; name ] |> ignore

/// tcpdump on `dev` into `file` until the returned process is killed; returns once it listens.
let private tcpdump (dev: string) (file: string) =
    let psi = ProcessStartInfo "tcpdump"

    // Immediate mode: each packet reaches tcpdump as it comes, not when a ring block times out.
    for a in [ "-n"; "-i"; dev; "--immediate-mode"; "-U"; "-w"; file; "igmp" ] do
        psi.ArgumentList.Add a

    psi.RedirectStandardError <- true
    psi.RedirectStandardOutput <- true
    let p = Process.Start psi
    let mutable line = p.StandardError.ReadLine()

    while not (isNull line) && not (line.Contains "listening on") do
        line <- p.StandardError.ReadLine()

    Expect.isNotNull line "tcpdump started"
    p

let private kernelTests =
    testSequenced
    <| testList
        "Multicast kernel"
        [
            test "TUN: kernel members receive the stack's multicast and the stack receives theirs, IPv4 and IPv6" {
                withStack (tunOptions 1) (fun stack ->
                    bothWays
                        stack
                        "ns119t1"
                        (IPAddress.Parse "239.119.1.7")
                        (IPAddress.Parse "10.119.1.1")
                        (IPAddress.Parse "10.119.1.2")
                        7100

                    bothWays
                        stack
                        "ns119t1"
                        (IPAddress.Parse "ff15::119:1:7")
                        (IPAddress.Parse "fd19:1::1")
                        (IPAddress.Parse "fd19:1::2")
                        7200

                    Expect.isGreaterThan
                        stack.Statistics.["igmp.report.v3.sent"]
                        0L
                        "the stack reported its IPv4 group"

                    Expect.isGreaterThan stack.Statistics.["mld.report.v3.sent"] 0L "the stack reported its IPv6 group")
            }

            test "TAP: both ways over IPv4 and IPv6; frames to groups not joined are filtered and counted" {
                withStack (tapOptions 2) (fun stack ->
                    let host4 = IPAddress.Parse "10.119.2.1"
                    bothWays stack "ns119p2" (IPAddress.Parse "239.119.2.7") host4 (IPAddress.Parse "10.119.2.2") 7300

                    bothWays
                        stack
                        "ns119p2"
                        (IPAddress.Parse "ff15::119:2:7")
                        (IPAddress.Parse "fd19:2::1")
                        (IPAddress.Parse "fd19:2::2")
                        7400

                    use socket = stack.BindUdp(IPEndPoint(IPAddress.Any, 7500))
                    socket.JoinMulticastGroup(IPAddress.Parse "239.119.2.1")
                    use sender = kernelSender false "ns119p2" host4
                    // Another group MAC (01:00:5e:77:02:09): the frame filter drops it.
                    let linkDrops = stack.Statistics.["link.drop.multicast"]

                    sender.SendTo([| 1uy |], IPEndPoint(IPAddress.Parse "239.119.2.9", 7500))
                    |> ignore

                    Expect.isGreaterThan
                        (counterUntil stack "link.drop.multicast" (linkDrops + 1L) 5.0)
                        linkDrops
                        "link.drop.multicast"
                    // 224.119.2.1 shares 239.119.2.1's MAC (the low 23 bits): the IP layer drops it.
                    let ipDrops = stack.Statistics.["drop.multicast.not-joined"]

                    sender.SendTo([| 2uy |], IPEndPoint(IPAddress.Parse "224.119.2.1", 7500))
                    |> ignore

                    Expect.isGreaterThan
                        (counterUntil stack "drop.multicast.not-joined" (ipDrops + 1L) 5.0)
                        ipDrops
                        "drop.multicast.not-joined"

                    // The joined group still gets through.
                    sender.SendTo(
                        Text.Encoding.ASCII.GetBytes "joined",
                        IPEndPoint(IPAddress.Parse "239.119.2.1", 7500)
                    )
                    |> ignore

                    let got, _ = receiveStack socket
                    Expect.equal got "joined" "the joined group's datagram, and only it")
            }

            test
                "a bridge's IGMPv3/MLDv2 querier: the stack's groups enter the bridge's mdb, answer its queries and leave it" {
                let bridge = "ns119br0"

                withBridge
                    bridge
                    [
                        "mcast_igmp_version"
                        "3"
                        "mcast_mld_version"
                        "2"
                        "mcast_query_interval"
                        "200"
                        "mcast_startup_query_interval"
                        "100"
                        "mcast_query_response_interval"
                        "100"
                    ]
                    50
                    (fun stack ->
                        let port = "ns119p50"
                        use socket = stack.BindUdp(IPEndPoint(IPAddress.IPv6Any, 7600))
                        socket.JoinMulticastGroup(IPAddress.Parse "239.119.50.7")
                        socket.JoinMulticastGroup(IPAddress.Parse "ff15::119:50:7")

                        let ok, mdb =
                            mdbUntil bridge 10.0 (fun m ->
                                hasGroup port "239.119.50.7" m && hasGroup port "ff15::119:50:7" m)

                        Expect.isTrue ok $"the bridge's mdb lists both groups on the stack's port:\n{mdb}"
                        // The querier asks every 2 s; the stack answers within its 1 s.
                        let queries = counterUntil stack "igmp.query.v3.received" 2L 10.0
                        Expect.isGreaterThanOrEqual queries 2L "IGMPv3 queries from the bridge"
                        let mldQueries = counterUntil stack "mld.query.v3.received" 1L 10.0
                        Expect.isGreaterThanOrEqual mldQueries 1L "MLDv2 queries from the bridge"
                        let reports = counterUntil stack "igmp.report.v3.sent" 3L 10.0
                        Expect.isGreaterThanOrEqual reports 3L "two unsolicited reports and an answer"
                        let ok, mdb = mdbUntil bridge 1.0 (fun m -> hasGroup port "239.119.50.7" m)
                        Expect.isTrue ok $"still listed after the queries:\n{mdb}"

                        // Leaving: TO_IN {} records; the bridge's last-member queries go unanswered.
                        socket.LeaveMulticastGroup(IPAddress.Parse "239.119.50.7")
                        socket.LeaveMulticastGroup(IPAddress.Parse "ff15::119:50:7")

                        let gone, mdb =
                            mdbUntil bridge 15.0 (fun m ->
                                not (hasGroup port "239.119.50.7" m) && not (hasGroup port "ff15::119:50:7" m))

                        Expect.isTrue gone $"both groups left the mdb:\n{mdb}")
            }

            test "a bridge's IGMPv2 querier gets IGMPv2 reports (RFC 3376 §7.2.1), read back by tshark" {
                let bridge = "ns119br1"

                withBridge
                    bridge
                    [
                        "mcast_igmp_version"
                        "2"
                        "mcast_query_interval"
                        "200"
                        "mcast_startup_query_interval"
                        "100"
                        "mcast_query_response_interval"
                        "100"
                    ]
                    51
                    (fun stack ->
                        let file =
                            Path.Combine(Path.GetTempPath(), $"ns119-igmpv2-{Environment.ProcessId}.pcap")
                        // On the TAP: every frame the stack writes, whatever the bridge forwards.
                        let capture = tcpdump "ns119p51" file

                        try
                            let queries = counterUntil stack "igmp.query.v2.received" 1L 10.0
                            Expect.isGreaterThanOrEqual queries 1L "an IGMPv2 query from the bridge"
                            use socket = stack.BindUdp(IPEndPoint(IPAddress.Any, 7700))
                            socket.JoinMulticastGroup(IPAddress.Parse "239.119.51.7")
                            // The join's two reports, then an answer to the next query.
                            Expect.isGreaterThanOrEqual
                                (counterUntil stack "igmp.report.v2.sent" 3L 10.0)
                                3L
                                "IGMPv2 reports"

                            let ok, mdb = mdbUntil bridge 5.0 (hasGroup "ns119p51" "239.119.51.7")
                            Expect.isTrue ok $"the bridge's mdb lists the group:\n{mdb}"
                            socket.LeaveMulticastGroup(IPAddress.Parse "239.119.51.7")

                            Expect.isGreaterThanOrEqual
                                (counterUntil stack "igmp.leave.sent" 1L 5.0)
                                1L
                                "an IGMPv2 leave"

                            Thread.Sleep 500
                        finally
                            // SIGTERM, so tcpdump writes out what it holds (SIGKILL would lose it).
                            Isolation.run "kill" [ "-TERM"; string capture.Id ] |> ignore
                            capture.WaitForExit()

                        let code, output =
                            Isolation.run
                                "tshark"
                                [
                                    "-r"
                                    file
                                    "-Y"
                                    "ip.src == 10.119.51.2"
                                    "-T"
                                    "fields"
                                    "-e"
                                    "igmp.type"
                                    "-e"
                                    "igmp.maddr"
                                    "-e"
                                    "ip.dst"
                                    "-e"
                                    "ip.ttl"
                                ]

                        let _, all = Isolation.run "tshark" [ "-r"; file ]
                        File.Delete file
                        Expect.equal code 0 $"tshark:\n{output}"
                        let output = output + "\nall:\n" + all

                        let lines =
                            output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                            |> Array.filter (fun l -> not (l.Contains "Running as user"))
                            |> Array.map (fun l -> l.Trim().Split('\t'))

                        let reports = lines |> Array.filter (fun f -> f.[0] = "0x16")
                        let leaves = lines |> Array.filter (fun f -> f.[0] = "0x17")

                        Expect.isGreaterThanOrEqual
                            reports.Length
                            3
                            $"IGMPv2 membership reports (type 0x16):\n{output}"

                        for f in reports do
                            Expect.equal f.[1] "239.119.51.7" "the group"
                            Expect.equal f.[2] "239.119.51.7" "sent to the group"
                            Expect.equal f.[3] "1" "TTL 1"

                        Expect.equal leaves.Length 1 $"one leave (type 0x17):\n{output}"
                        Expect.equal leaves.[0].[2] "224.0.0.2" "to all routers"
                        Expect.isFalse (lines |> Array.exists (fun f -> f.[0] = "0x22")) "no IGMPv3 report")
            }

            test
                "broadcast: the stack sends to 255.255.255.255 and the subnet broadcast only with EnableBroadcast, and receives the kernel's" {
                withStack (tapOptions 3) (fun stack ->
                    use kernel =
                        new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                    kernel.EnableBroadcast <- true
                    kernel.Bind(IPEndPoint(IPAddress.Any, 7800))
                    kernel.ReceiveTimeout <- 5000
                    use socket = stack.BindUdp(IPEndPoint(IPAddress.Any, 7801))

                    let refused (address: string) =
                        try
                            socket.SendToAsync([| 1uy |], IPEndPoint(IPAddress.Parse address, 7800)).AsTask()
                            |> wait
                            |> ignore

                            SocketError.Success
                        with
                        | :? SocketException as e -> e.SocketErrorCode
                        | :? AggregateException as e when (e.InnerException :? SocketException) ->
                            (e.InnerException :?> SocketException).SocketErrorCode

                    Expect.equal (refused "255.255.255.255") SocketError.AccessDenied "EACCES without EnableBroadcast"
                    Expect.equal (refused "10.119.3.255") SocketError.AccessDenied "the subnet's too"

                    socket.EnableBroadcast <- true

                    for address in [ "255.255.255.255"; "10.119.3.255" ] do
                        let text = $"to {address}"

                        socket
                            .SendToAsync(Text.Encoding.ASCII.GetBytes text, IPEndPoint(IPAddress.Parse address, 7800))
                            .AsTask()
                        |> wait
                        |> ignore

                        let got, from = receiveKernel kernel
                        Expect.equal got text $"the kernel received the stack's broadcast to {address}"
                        Expect.equal from.Address (IPAddress.Parse "10.119.3.2") "from the stack"

                    // The kernel's broadcasts: the subnet's, and the limited one out of the TAP.
                    use sender =
                        new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                    sender.EnableBroadcast <- true
                    sender.SetRawSocketOption(1, 25, ReadOnlySpan(Text.Encoding.ASCII.GetBytes "ns119p3\000"))

                    for address in [ "10.119.3.255"; "255.255.255.255" ] do
                        let text = $"kernel to {address}"

                        sender.SendTo(Text.Encoding.ASCII.GetBytes text, IPEndPoint(IPAddress.Parse address, 7801))
                        |> ignore

                        let got, from = receiveStack socket
                        Expect.equal got text $"the stack received the kernel's broadcast to {address}"
                        Expect.equal from.Address (IPAddress.Parse "10.119.3.1") "from the host")
            }
        ]

// ---------------------------------------------------------------------------------------------
// The API on an in-memory device
// ---------------------------------------------------------------------------------------------

let private withMemory (f: NetworkStack -> MemoryPacketDevice -> unit) =
    let device = new MemoryPacketDevice(1500)

    let options =
        NetStackOptions(Address = IPAddress.Parse "10.0.0.2", Address6 = IPAddress.Parse "fd00::2")

    use stack = NetworkStack.Start(options, device)
    f stack device
    TestUtil.assertNoExceptions stack

/// The next packet the stack writes whose IP protocol (IPv4) / next header (IPv6) is `protocol`.
let private nextWritten (device: MemoryPacketDevice) (protocol: byte) =
    let deadline = DateTime.UtcNow + timeout
    let mutable found = None

    while found.IsNone && DateTime.UtcNow < deadline do
        match device.WaitWritten(TimeSpan.FromMilliseconds 200.0) with
        | null -> ()
        | p when
            (p.[0] >>> 4 = 4uy && p.[9] = protocol)
            || (p.[0] >>> 4 = 6uy && p.[6] = protocol)
            ->
            found <- Some p
        | _ -> ()

    match found with
    | Some p -> p
    | None -> failtest $"no packet of protocol {protocol} written"

let private apiTests =
    testList
        "Multicast API"
        [
            test
                "multicast leaves with TTL / hop limit 1, or the socket's MulticastTimeToLive / MulticastHopLimit; unicast keeps 64" {
                withMemory (fun stack device ->
                    use socket = stack.BindUdp(IPEndPoint(IPAddress.IPv6Any, 9000))

                    let send (address: string) =
                        socket.SendToAsync([| 7uy |], IPEndPoint(IPAddress.Parse address, 9)).AsTask()
                        |> wait
                        |> ignore

                    send "239.1.2.3"
                    let p = nextWritten device 17uy
                    Expect.equal p.[8] 1uy "IPv4 multicast: TTL 1"
                    socket.MulticastTimeToLive <- 5
                    send "239.1.2.3"
                    let p = nextWritten device 17uy
                    Expect.equal p.[8] 5uy "TTL 5"
                    // The header checksum after the change (RFC 1071, summed here).
                    let mutable sum = 0

                    for i in 0..2..18 do
                        sum <- sum + (int p.[i] <<< 8) + int p.[i + 1]

                    while sum > 0xFFFF do
                        sum <- (sum &&& 0xFFFF) + (sum >>> 16)

                    Expect.equal sum 0xFFFF "the IPv4 header checksum holds"
                    send "10.0.0.9"
                    Expect.equal (nextWritten device 17uy).[8] 64uy "unicast: 64"
                    send "ff15::1"
                    Expect.equal (nextWritten device 17uy).[7] 1uy "IPv6 multicast: hop limit 1"
                    socket.MulticastHopLimit <- 9
                    send "ff15::1"
                    Expect.equal (nextWritten device 17uy).[7] 9uy "hop limit 9")
            }

            test "joins and leaves fail as System.Net.Sockets does; a disposed socket leaves its groups" {
                withMemory (fun stack device ->
                    use v4 = stack.BindUdp(IPEndPoint(IPAddress.Any, 9001))

                    let error (f: unit -> unit) =
                        try
                            f ()
                            SocketError.Success
                        with :? SocketException as e ->
                            e.SocketErrorCode

                    Expect.equal
                        (error (fun () -> v4.JoinMulticastGroup(IPAddress.Parse "10.0.0.1")))
                        SocketError.InvalidArgument
                        "not multicast: EINVAL"

                    Expect.throwsT<ArgumentException>
                        (fun () -> v4.JoinMulticastGroup(IPAddress.Parse "ff15::1"))
                        "another family"

                    Expect.equal
                        (error (fun () -> v4.LeaveMulticastGroup(IPAddress.Parse "239.0.0.1")))
                        SocketError.AddressNotAvailable
                        "not joined: EADDRNOTAVAIL"

                    Expect.equal
                        (error (fun () ->
                            v4.JoinMulticastGroup(IPAddress.Parse "239.0.0.1", IPAddress.Parse "10.9.9.9")))
                        SocketError.AddressNotAvailable
                        "another interface"

                    v4.JoinMulticastGroup(IPAddress.Parse "239.0.0.1", IPAddress.Parse "10.0.0.2")

                    Expect.equal
                        (error (fun () -> v4.JoinMulticastGroup(IPAddress.Parse "239.0.0.1")))
                        SocketError.AddressAlreadyInUse
                        "twice: EADDRINUSE"

                    for i in 2 .. UdpSocket.MaxMemberships do
                        v4.JoinMulticastGroup(IPAddress.Parse $"239.0.0.{i}")

                    Expect.equal
                        (error (fun () -> v4.JoinMulticastGroup(IPAddress.Parse "239.0.1.1")))
                        SocketError.NoBufferSpaceAvailable
                        "beyond 20: ENOBUFS"

                    Expect.isTrue v4.MulticastLoopback "IP_MULTICAST_LOOP on by default, as on Linux"

                    // A second socket on the same group: the membership is counted, not repeated.
                    use other = stack.BindUdp(IPEndPoint(IPAddress.Any, 9002))
                    other.JoinMulticastGroup(IPAddress.Parse "239.0.0.1")
                    v4.Dispose()
                    // 20 groups left by the disposal: TO_IN records for 19 (one still has a member).
                    let mutable leftRecords = Set.empty
                    let deadline = DateTime.UtcNow.AddSeconds 3.0

                    while DateTime.UtcNow < deadline do
                        match device.WaitWritten(TimeSpan.FromMilliseconds 100.0) with
                        | null -> ()
                        | q when q.[0] >>> 4 = 4uy && q.[9] = 2uy ->
                            let igmp = int (q.[0] &&& 0xFuy) * 4
                            let count = (int q.[igmp + 6] <<< 8) + int q.[igmp + 7]

                            for r in 0 .. count - 1 do
                                let at = igmp + 8 + 8 * r

                                if q.[at] = 3uy then
                                    leftRecords <-
                                        leftRecords.Add(
                                            sprintf "%d.%d.%d.%d" q.[at + 4] q.[at + 5] q.[at + 6] q.[at + 7]
                                        )
                        | _ -> ()

                    Expect.isFalse (leftRecords.Contains "239.0.0.1") "another socket still holds 239.0.0.1"
                    Expect.isTrue (leftRecords.Contains "239.0.0.20") "the disposed socket's groups were left")
            }
        ]

[<Tests>]
let tests = testList "Multicast" [ kernelTests; apiTests ]
