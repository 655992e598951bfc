/// Tap mode against the kernel: NetStack as a host with its own MAC on a TAP device (and on a
/// Linux bridge), resolving and resolved by ARP and NDP, inside the runner's private namespace.
/// Interfaces ns98t*/ns99*, subnets 10.98.N.0/24, fd98:N::/64, 10.99.0.0/24, fd99::/64.
module NetStack.Tests.Integration.TapTests

open System
open System.IO
open System.Net
open System.Net.NetworkInformation
open System.Net.Sockets
open System.Threading
open Expecto
open NetStack
open NetStack.Device
open NetStack.Engine
open NetStack.Tests

let private macOf (n: int) (host: int) =
    PhysicalAddress.Parse $"02-98-00-00-{n:x2}-{host:x2}"

let private macText (mac: PhysicalAddress) =
    String.Join(":", mac.GetAddressBytes() |> Array.map (fun b -> b.ToString "x2"))

/// Stack N: 10.98.N.2 and `address6` (fd98:N::2) on TAP ns98tN; the kernel is .1 / ::1 with the prefix.
let private tapOptions (n: int) (address6: string) (neighbor: NeighborSettings) =
    NetStackOptions(
        Mode = NetStackMode.Tap,
        TunName = $"ns98t{n}",
        Address = IPAddress.Parse $"10.98.{n}.2",
        HostAddress = IPAddress.Parse $"10.98.{n}.1",
        Address6 = IPAddress.Parse address6,
        HostAddress6 = IPAddress.Parse $"fd98:{n}::1",
        MacAddress = macOf n 2,
        Neighbor = neighbor
    )

let private optionsFor (n: int) =
    tapOptions n $"fd98:{n}::2" (NeighborSettings())

let private diagnostics (statistics: NetStackStatistics) =
    let _, neighbors = Isolation.run "ip" [ "neigh" ]
    let _, addresses = Isolation.run "ip" [ "addr" ]
    $"statistics:\n{statistics}\nip neigh:\n{neighbors}\n{addresses}"

let private withStack (options: NetStackOptions) (f: NetworkStack -> unit) =
    use stack = NetworkStack.Start options

    try
        f stack
    with e ->
        failtestf "%s\n%s" (e.ToString()) (diagnostics stack.Statistics)

    TestUtil.assertNoExceptions stack

/// A stack on a TAP made here, so the test holds the Ethernet adapter (its neighbor caches).
let private withOwnAdapter (options: NetStackOptions) (f: NetworkStack -> EthernetPacketDevice -> unit) =
    let tap = TunDevice.CreateTap options.TunName
    use link = new KernelLink(tap)
    link.SetMtu options.Mtu
    link.SetUp()
    link.AddAddress(options.HostAddress, options.PrefixLength)
    link.AddAddress(options.HostAddress6, options.PrefixLength6)

    let adapter =
        new EthernetPacketDevice(new TunPacketDevice(tap), options, null, tap.Name)

    use stack = NetworkStack.Start(options, adapter, tap.Name)

    try
        f stack adapter
    with e ->
        failtestf "%s\n%s" (e.ToString()) (diagnostics stack.Statistics)

    TestUtil.assertNoExceptions stack

let private timeout = TimeSpan.FromSeconds 10.0

let private wait (task: Threading.Tasks.Task<'T>) : 'T =
    NetStack.Tests.TestUtil.waitWithin timeout task

/// The kernel's ping: every request answered once (KernelPing.answered).
let private ping (args: string list) = KernelPing.answered args |> ignore

let private stackPings (stack: NetworkStack) (address: string) =
    let reply =
        stack.PingAsync(IPAddress.Parse address, TimeSpan.FromSeconds 5.0) |> wait

    Expect.equal reply.Status IPStatus.Success $"{address} answers the stack"

/// The kernel's neighbor entry for `address` on `dev`: "" when it has none.
let private kernelNeighbor (dev: string) (address: string) =
    let _, output = Isolation.run "ip" [ "neigh"; "show"; address; "dev"; dev ]
    output.Trim()

/// The kernel side's MAC on `dev` (sysfs shows the host's namespace, so ask `ip`).
let private kernelMac (dev: string) =
    let _, output = Isolation.run "ip" [ "-o"; "link"; "show"; "dev"; dev ]
    let words = output.Split(' ', StringSplitOptions.RemoveEmptyEntries)
    words.[(Array.findIndex ((=) "link/ether") words) + 1]

let private udpRoundTrip (stack: NetworkStack) (host: IPAddress) (stackAddress: IPAddress) (length: int) =
    use kernel = new Socket(host.AddressFamily, SocketType.Dgram, ProtocolType.Udp)
    kernel.ReceiveTimeout <- 5000
    kernel.Bind(IPEndPoint(host, 0))
    use socket = stack.BindUdp(IPEndPoint(stackAddress, 0))
    let data = Array.init length byte
    let receive = socket.ReceiveFromAsync(Memory(Array.zeroCreate<byte> 65536)).AsTask()

    kernel.SendTo(data, IPEndPoint(stackAddress, socket.LocalEndPoint.Port))
    |> ignore

    let received = wait receive
    Expect.equal received.ReceivedBytes length "the stack received every byte"

    socket.SendToAsync(ReadOnlyMemory data, kernel.LocalEndPoint :?> IPEndPoint).AsTask()
    |> wait
    |> ignore

    let buffer = Array.zeroCreate<byte> 65536
    let n = kernel.Receive buffer
    Expect.sequenceEqual buffer.[.. n - 1] data "the kernel received the same bytes"

let private transferBytes = 8L * 1024L * 1024L

/// Kernel to stack and stack to kernel, SHA-256 checked.
let private tcpBothWays (stack: NetworkStack) (stackAddress: IPAddress) (kernelAddress: IPAddress) =
    use listener = stack.ListenTcp(IPEndPoint(stackAddress, 9))

    TestUtil.kernelToStack timeout 98 transferBytes listener (IPEndPoint(stackAddress, 9))
    |> ignore

    use kernel = TestUtil.kernelListener kernelAddress
    TestUtil.stackToKernel timeout 99 transferBytes stack kernel |> ignore

/// Runs `ip ARGS`; fails the test unless it exits 0.
let private ip (args: string list) =
    let code, output = Isolation.run "ip" args
    Expect.equal code 0 $"ip %A{args}:\n{output}"

/// Frames the kernel dropped on its way into `dev` (TX dropped: the TAP's queue was full).
let private tapTxDropped (dev: string) =
    let code, output = Isolation.run "ip" [ "-s"; "-j"; "link"; "show"; "dev"; dev ]
    Expect.equal code 0 $"ip -s link show {dev}:\n{output}"
    use json = Text.Json.JsonDocument.Parse output
    json.RootElement.[0].GetProperty("stats64").GetProperty("tx").GetProperty("dropped").GetInt64()

/// ICMPv6 messages the kernel itself sent on `dev` (its DAD, router solicitations, MLD reports;
/// /proc/net is this namespace's).
let private kernelIcmp6Out (dev: string) =
    File.ReadAllLines $"/proc/net/dev_snmp6/{dev}"
    |> Array.pick (fun line ->
        match line.Split([| ' '; '\t' |], StringSplitOptions.RemoveEmptyEntries) with
        | [| "Icmp6OutMsgs"; value |] -> Some(int64 value)
        | _ -> None)

/// Writes a python3 script that floods `dev` through a raw AF_PACKET socket with `count` ARP
/// requests and `count` neighbor solicitations from random senders: half ask for the stack's
/// address (so a naive cache would learn every sender), half for random addresses.
let private flood (dev: string) (n: int) (count: int) =
    let script =
        """
import os, random, socket, struct, sys, time
dev, n, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0))
rnd = random.Random(98)
def csum(b):
    if len(b) % 2: b += b'\0'
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return (~t) & 0xffff
stack4 = socket.inet_aton('10.98.%d.2' % n)
stack6 = socket.inet_pton(socket.AF_INET6, 'fd98:%d::2' % n)
for i in range(count):
    mac = bytes([2, 0x99] + [rnd.randrange(256) for _ in range(4)])
    sender = bytes([10, 98, n, rnd.randrange(3, 255)]) if i % 4 else bytes([10, 98, rnd.randrange(256), rnd.randrange(256)])
    target = stack4 if i % 2 else bytes([10, 98, n, rnd.randrange(3, 255)])
    arp = struct.pack('!HHBBH', 1, 0x0800, 6, 4, 1) + mac + sender + bytes(6) + target
    s.send(b'\xff' * 6 + mac + b'\x08\x06' + arp)
    src = socket.inet_pton(socket.AF_INET6, 'fd98:%d::%x:%x' % (n, rnd.randrange(65536), rnd.randrange(65536)))
    tgt = stack6 if i % 2 else socket.inet_pton(socket.AF_INET6, 'fd98:%d::%x' % (n, rnd.randrange(3, 65536)))
    dst = bytes.fromhex('ff0200000000000000000001ff') + tgt[13:]
    icmp = bytearray(b'\x87\x00\x00\x00' + bytes(4) + tgt + b'\x01\x01' + mac)
    icmp[2:4] = struct.pack('!H', csum(src + dst + struct.pack('!I', len(icmp)) + bytes(3) + b'\x3a' + bytes(icmp)))
    ip = struct.pack('!IHBB', 6 << 28, len(icmp), 58, 255) + src + dst
    s.send(b'\x33\x33' + dst[12:] + mac + b'\x86\xdd' + ip + bytes(icmp))
    if i % 50 == 49: time.sleep(0.002)
"""

    let path =
        Path.Combine(Path.GetTempPath(), $"netstack-flood-{Environment.ProcessId}.py")

    File.WriteAllText(path, script)

    try
        let code, output = Isolation.run "python3" [ path; dev; string n; string count ]
        Expect.equal code 0 $"the flood ran:\n{output}"
    finally
        File.Delete path

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Tap with the kernel"
        [
            test "the kernel resolves the stack by ARP and NDP and pings it; its neighbor table holds the stack's MAC" {
                let options = optionsFor 1

                withStack options (fun stack ->
                    ping [ "-c"; "3"; "-i"; "0.2"; "-W"; "2"; "10.98.1.2" ]
                    ping [ "-6"; "-c"; "3"; "-i"; "0.2"; "-W"; "2"; "fd98:1::2" ]

                    for address in [ "10.98.1.2"; "fd98:1::2" ] do
                        let entry = kernelNeighbor "ns98t1" address

                        Expect.stringContains
                            entry
                            (macText (macOf 1 2))
                            $"the kernel knows {address} by the stack's MAC"

                        Expect.isTrue
                            ([ "REACHABLE"; "STALE"; "DELAY"; "PROBE" ] |> List.exists entry.Contains)
                            $"a resolved entry: {entry}"

                    Expect.isGreaterThanOrEqual stack.Statistics.["arp.reply.sent"] 1L "the stack answered ARP"
                    Expect.isGreaterThanOrEqual stack.Statistics.["ndp.na.sent"] 1L "the stack answered NDP"
                    Expect.isGreaterThanOrEqual stack.Statistics.["icmp.echo.replied"] 6L "six echo replies")
            }

            test "the stack resolves the kernel: its first packets wait for the ARP/NDP reply, then go out" {
                withOwnAdapter (optionsFor 2) (fun stack adapter ->
                    Expect.isEmpty (adapter.Neighbors()) "nothing resolved yet"
                    stackPings stack "10.98.2.1"
                    stackPings stack "fd98:2::1"
                    Expect.isGreaterThanOrEqual stack.Statistics.["arp.request.sent"] 1L "an ARP request"
                    Expect.isGreaterThanOrEqual stack.Statistics.["ndp.ns.sent"] 1L "a neighbor solicitation"
                    Expect.isGreaterThanOrEqual stack.Statistics.["link.released"] 2L "the queued pings were released"
                    let kernel = kernelMac "ns98t2"

                    for address in [ "10.98.2.1"; "fd98:2::1" ] do
                        let entry =
                            adapter.Neighbors()
                            |> Seq.find (fun struct (a, _, _) -> a.Equals(IPAddress.Parse address))

                        let struct (_, mac, state) = entry
                        Expect.equal (macText mac) kernel $"{address} resolved to the kernel's MAC"
                        Expect.equal state "Reachable" "confirmed by a solicited answer")
            }

            test "UDP both ways over TAP, IPv4 and IPv6" {
                withStack (optionsFor 3) (fun stack ->
                    for length in [ 1; 1400; 4000 ] do
                        udpRoundTrip stack (IPAddress.Parse "10.98.3.1") (IPAddress.Parse "10.98.3.2") length
                        udpRoundTrip stack (IPAddress.Parse "fd98:3::1") (IPAddress.Parse "fd98:3::2") length)
            }

            test "TCP transfers over TAP arrive intact (SHA-256) both ways, IPv4 and IPv6" {
                withStack (optionsFor 4) (fun stack ->
                    tcpBothWays stack (IPAddress.Parse "10.98.4.2") (IPAddress.Parse "10.98.4.1")
                    tcpBothWays stack (IPAddress.Parse "fd98:4::2") (IPAddress.Parse "fd98:4::1"))
            }

            test "duplicate address detection refuses an IPv6 address the kernel already has" {
                let options = tapOptions 5 "fd98:5::9" (NeighborSettings())

                let tap = TunDevice.CreateTap options.TunName
                use link = new KernelLink(tap)
                link.SetUp()
                link.AddAddress(IPAddress.Parse "fd98:5::9", 64)

                // Constructing the adapter sends nothing; the stack's start waits for the loop's DAD.
                let adapter =
                    new EthernetPacketDevice(new TunPacketDevice(tap), options, null, tap.Name)

                Expect.throwsT<DuplicateAddressException>
                    (fun () -> NetworkStack.Start(options, adapter, tap.Name) |> ignore)
                    "the kernel defends fd98:5::9"

                Expect.equal adapter.Statistics.["ndp.dad.failed"] 1L "counted"
            }

            test
                "DAD names the address and the defender's MAC; without a conflict the stack starts and announces itself" {
                let options = tapOptions 6 "fd98:6::9" (NeighborSettings())

                let tap = TunDevice.CreateTap options.TunName
                use link = new KernelLink(tap)
                link.SetUp()
                link.AddAddress(IPAddress.Parse "fd98:6::9", 64)
                let kernel = kernelMac "ns98t6"

                try
                    NetworkStack.Start(
                        options,
                        new EthernetPacketDevice(new TunPacketDevice(tap), options, null, tap.Name),
                        tap.Name
                    )
                    |> ignore

                    failtest "DAD should have failed"
                with :? DuplicateAddressException as e ->
                    Expect.equal e.Address (IPAddress.Parse "fd98:6::9") "the address"
                    Expect.equal (macText e.Owner) kernel "the kernel defended it"
                    Expect.stringContains e.Message "fd98:6::9" "the message names the address"

                withStack (optionsFor 7) (fun stack ->
                    Expect.equal
                        stack.Statistics.["ndp.dad.sent"]
                        2L
                        "one DAD probe each for the configured and the link-local address"

                    Expect.equal stack.Statistics.["arp.announcement.sent"] 1L "one gratuitous ARP")
            }

            test "neighbor entries expire and are resolved again (short timers)" {
                let options =
                    tapOptions
                        8
                        "fd98:8::2"
                        (NeighborSettings(
                            ReachableTime = TimeSpan.FromMilliseconds 300.0,
                            DelayFirstProbeTime = TimeSpan.FromMilliseconds 200.0,
                            RetransTimer = TimeSpan.FromMilliseconds 200.0,
                            StaleLifetime = TimeSpan.FromMilliseconds 1500.0
                        ))

                withOwnAdapter options (fun stack adapter ->
                    let stateOf (address: string) =
                        adapter.Neighbors()
                        |> Seq.tryFind (fun struct (a, _, _) -> a.Equals(IPAddress.Parse address))
                        |> Option.map (fun struct (_, _, s) -> s)

                    for address in [ "10.98.8.1"; "fd98:8::1" ] do
                        stackPings stack address
                        Expect.equal (stateOf address) (Some "Reachable") $"{address} resolved"

                    Thread.Sleep 600
                    // A timer fires only when the loop wakes; a ping is traffic enough.
                    for address in [ "10.98.8.1"; "fd98:8::1" ] do
                        Expect.equal (stateOf address) (Some "Stale") $"{address} went STALE after ReachableTime"

                    let requests = stack.Statistics.["arp.request.sent"]
                    let solicitations = stack.Statistics.["ndp.ns.sent"]

                    for address in [ "10.98.8.1"; "fd98:8::1" ] do
                        stackPings stack address

                    // STALE -> DELAY -> PROBE: one unicast probe each, answered.
                    Thread.Sleep 700

                    Expect.isGreaterThan stack.Statistics.["arp.request.sent"] requests "ARP re-confirmed the kernel"
                    Expect.isGreaterThan stack.Statistics.["ndp.ns.sent"] solicitations "NDP re-confirmed the kernel"

                    for address in [ "10.98.8.1"; "fd98:8::1" ] do
                        Expect.contains
                            [ Some "Reachable"; Some "Stale" ]
                            (stateOf address)
                            $"{address} confirmed again"

                    // Unused, the entries are forgotten; the next packet resolves from scratch.
                    Thread.Sleep 2500
                    Expect.isEmpty (adapter.Neighbors()) "forgotten after the stale lifetime"

                    for address in [ "10.98.8.1"; "fd98:8::1" ] do
                        stackPings stack address
                        Expect.equal (stateOf address) (Some "Reachable") $"{address} resolved again")
            }

            test "a flood of ARP requests and neighbor solicitations from random senders leaves the caches bounded" {
                let options = tapOptions 9 "fd98:9::2" (NeighborSettings(MaxEntries = 32))

                withOwnAdapter options (fun stack adapter ->
                    // The kernel hands frames for the stack to the TAP's queue, txqueuelen frames
                    // long (1000), and drops what does not fit (TX dropped) while the stack's
                    // reader is not scheduled: a burst of 6000 frames overflowed it on a loaded
                    // machine. A queue longer than the flood takes every frame, so every one must
                    // be read and counted.
                    ip [ "link"; "set"; "dev"; "ns98t9"; "txqueuelen"; "8000" ]
                    let counter (name: string) = stack.Statistics.[name]
                    let arpBefore = counter "arp.received"
                    let nsBefore = counter "ndp.ns.received"
                    // Frames to other groups' MACs count as link.drop.multicast (docs/multicast.md).
                    let notForUsBefore = counter "link.drop.multicast"
                    let kernelBefore = kernelIcmp6Out "ns98t9"
                    let droppedBefore = tapTxDropped "ns98t9"
                    flood "ns98t9" 9 3000

                    // Every ARP request is a broadcast; half the solicitations go to the stack's
                    // solicited-node group, half to other groups, which its Ethernet filter drops.
                    let read () =
                        counter "arp.received" - arpBefore + counter "ndp.ns.received" - nsBefore
                        + counter "link.drop.multicast"
                        - notForUsBefore

                    SpinWait.SpinUntil((fun () -> read () >= 6000L), TimeSpan.FromSeconds 10.0)
                    |> ignore

                    Expect.equal (tapTxDropped "ns98t9" - droppedBefore) 0L "the TAP queue dropped no frame"
                    Expect.equal (counter "arp.received" - arpBefore) 3000L "every ARP request was read"

                    Expect.equal
                        (counter "ndp.ns.received" - nsBefore)
                        1500L
                        "every solicitation for the stack was read"
                    // The kernel's own ICMPv6 on the link (DAD, router solicitations, MLD reports) goes
                    // to groups that are not the stack's too.
                    Expect.equal
                        (counter "link.drop.multicast" - notForUsBefore)
                        (1500L + kernelIcmp6Out "ns98t9" - kernelBefore)
                        "the other solicitations were filtered and counted"

                    ping [ "-c"; "2"; "-i"; "0.2"; "-W"; "2"; "10.98.9.2" ]
                    ping [ "-6"; "-c"; "2"; "-i"; "0.2"; "-W"; "2"; "fd98:9::2" ]
                    stackPings stack "10.98.9.1"
                    stackPings stack "fd98:9::1"
                    let neighbors = adapter.Neighbors()
                    Expect.isLessThanOrEqual neighbors.Count 64 "at most 32 entries per family")
            }

            test "netstack ping --tap resolves the kernel and is answered over IPv4 and IPv6; a bad --mac is refused" {
                for target in [ "10.98.10.1"; "fd98:10::1" ] do
                    let code, out, err =
                        CliTests.runNetstack
                            (TimeSpan.FromSeconds 60.0)
                            [
                                "ping"
                                "--tap"
                                "--mac"
                                "02:98:00:00:0a:02"
                                "--tun"
                                "ns98t10"
                                "--ip"
                                "10.98.10.2"
                                "--host-ip"
                                "10.98.10.1"
                                "--ip6"
                                "fd98:10::2"
                                "--host-ip6"
                                "fd98:10::1"
                                "-c"
                                "2"
                                "-i"
                                "0.2"
                                target
                            ]

                    Expect.equal code 0 $"netstack ping --tap {target}:\n{out}\n{err}"
                    Expect.stringContains out "2 received" "both echoes answered"

                let code, _, err =
                    CliTests.runNetstack
                        (TimeSpan.FromSeconds 30.0)
                        [ "ping"; "--tap"; "--mac"; "01:00:5e:00:00:01"; "10.98.10.1" ]

                Expect.equal code 2 "a multicast MAC is a bad argument"
                Expect.stringContains err "--mac" "the message names the option"
            }

            test "two stacks on two TAPs in a Linux bridge talk to each other and to the kernel on the bridge" {
                let bridge = "ns99br0"

                let ip (args: string list) =
                    let code, output = Isolation.run "ip" args
                    Expect.equal code 0 $"ip %A{args}:\n{output}"

                let optionsOf (host: int) =
                    NetStackOptions(
                        Mode = NetStackMode.Tap,
                        TunName = $"ns99t{host}",
                        Address = IPAddress.Parse $"10.99.0.{host}",
                        HostAddress = null,
                        Address6 = IPAddress.Parse $"fd99::{host}",
                        HostAddress6 = null,
                        MacAddress = PhysicalAddress.Parse $"02-99-00-00-00-{host:x2}"
                    )

                ip [ "link"; "add"; bridge; "type"; "bridge"; "mcast_snooping"; "0" ]

                try
                    ip [ "addr"; "add"; "10.99.0.1/24"; "dev"; bridge ]
                    ip [ "addr"; "add"; "fd99::1/64"; "dev"; bridge; "nodad" ]
                    ip [ "link"; "set"; bridge; "up" ]
                    use a = NetworkStack.Start(optionsOf 2)
                    ip [ "link"; "set"; "ns99t2"; "master"; bridge ]
                    use b = NetworkStack.Start(optionsOf 3)
                    ip [ "link"; "set"; "ns99t3"; "master"; bridge ]

                    try
                        for address in [ "10.99.0.2"; "10.99.0.3" ] do
                            ping [ "-c"; "2"; "-i"; "0.2"; "-W"; "2"; address ]

                        for address in [ "fd99::2"; "fd99::3" ] do
                            ping [ "-6"; "-c"; "2"; "-i"; "0.2"; "-W"; "2"; address ]

                        stackPings a "10.99.0.3"
                        stackPings a "fd99::3"
                        stackPings b "10.99.0.2"
                        stackPings b "fd99::1"
                        // UDP from one stack to the other.
                        use receiver = b.BindUdp(IPEndPoint(IPAddress.Parse "fd99::3", 5000))
                        use sender = a.BindUdp(IPEndPoint(IPAddress.Parse "fd99::2", 0))

                        let receive =
                            receiver.ReceiveFromAsync(Memory(Array.zeroCreate<byte> 2048)).AsTask()

                        sender
                            .SendToAsync(
                                ReadOnlyMemory(Array.init 1000 byte),
                                IPEndPoint(IPAddress.Parse "fd99::3", 5000)
                            )
                            .AsTask()
                        |> wait
                        |> ignore

                        Expect.equal (wait receive).ReceivedBytes 1000 "stack to stack over the bridge"
                        // TCP from one stack to the other, through the bridge.
                        use listener = b.ListenTcp(IPEndPoint(IPAddress.Parse "10.99.0.3", 9))

                        let sink =
                            task {
                                let! connection = listener.AcceptAsync()
                                let! result = TestUtil.receiveHashed connection
                                do! connection.DisposeAsync()
                                return result
                            }

                        let sent =
                            task {
                                let! connection = a.ConnectTcpAsync(IPEndPoint(IPAddress.Parse "10.99.0.3", 9))
                                let! hash = TestUtil.sendPattern 97 connection (2L * 1024L * 1024L)
                                do! connection.DisposeAsync()
                                return hash
                            }
                            |> wait

                        let received, hash = wait sink
                        Expect.equal received (2L * 1024L * 1024L) "every byte"
                        Expect.equal hash sent "the same bytes (SHA-256)"
                        TestUtil.assertNoExceptions a
                        TestUtil.assertNoExceptions b
                    with e ->
                        failtestf
                            "%s\nA:\n%s\nB:\n%s"
                            (e.ToString())
                            (diagnostics a.Statistics)
                            (diagnostics b.Statistics)
                finally
                    Isolation.run "ip" [ "link"; "del"; bridge ] |> ignore
            }
        ]
