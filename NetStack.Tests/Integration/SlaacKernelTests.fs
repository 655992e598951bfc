/// Stateless address autoconfiguration in Tap mode against the kernel: a python3 raw ICMPv6
/// socket plays the router and advertises prefixes on the TAP's link; the stack forms addresses,
/// the kernel pings them and connects to them, and short lifetimes take them away again.
/// Interfaces ns106t*, subnets 10.106.N.0/24, fda6:N::/64 (configured) and fda6:1NN::/64 (advertised).
module NetStack.Tests.Integration.SlaacKernelTests

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

/// Sends one router advertisement on `dev` to all nodes from the kernel's link-local address
/// (waiting until DAD made it usable), with one prefix option (L and A set). The kernel fills
/// the ICMPv6 checksum of a raw ICMPv6 socket; ND needs hop limit 255.
let private advertiseScript =
    """
import socket, struct, sys, time
dev, prefix, valid, preferred, lifetime = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
reachable, retrans = (int(sys.argv[6]), int(sys.argv[7])) if len(sys.argv) > 7 else (0, 0)
index = socket.if_nametoindex(dev)
deadline = time.time() + 10
while True:
    ready = False
    with open('/proc/net/if_inet6') as f:
        for line in f:
            w = line.split()
            # scope 0x20 is link-local; flag 0x40 tentative, 0x08 DAD failed
            if w[5] == dev and int(w[3], 16) == 0x20 and int(w[4], 16) & 0x48 == 0:
                ready = True
    if ready or time.time() > deadline:
        break
    time.sleep(0.1)
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
ra = struct.pack('!BBHBBHII', 134, 0, 0, 64, 0, lifetime, reachable, retrans)
pio = struct.pack('!BBBBIII', 3, 4, 64, 0xC0, valid, preferred, 0) + socket.inet_pton(socket.AF_INET6, prefix)
s.sendto(ra + pio, ('ff02::1', 0, 0, index))
"""

let private advertiseWith
    (dev: string)
    (prefix: string)
    (valid: uint32)
    (preferred: uint32)
    (routerLifetime: int)
    (timers: string list)
    =
    let path =
        Path.Combine(Path.GetTempPath(), $"netstack-ra-{Environment.ProcessId}.py")

    File.WriteAllText(path, advertiseScript)

    try
        let code, output =
            Isolation.run
                "python3"
                ([ path; dev; prefix; string valid; string preferred; string routerLifetime ]
                 @ timers)

        Expect.equal code 0 $"the advertisement was sent:\n{output}"
    finally
        File.Delete path

let private advertise dev prefix valid preferred routerLifetime =
    advertiseWith dev prefix valid preferred routerLifetime []

let private ip (args: string list) =
    let code, output = Isolation.run "ip" args
    Expect.equal code 0 $"ip %A{args}:\n{output}"

let private options (n: int) =
    NetStackOptions(
        Mode = NetStackMode.Tap,
        TunName = $"ns106t{n}",
        Address = IPAddress.Parse $"10.106.{n}.2",
        HostAddress = IPAddress.Parse $"10.106.{n}.1",
        Address6 = IPAddress.Parse $"fda6:{n}::2",
        HostAddress6 = IPAddress.Parse $"fda6:{n}::1",
        MacAddress = PhysicalAddress.Parse $"02-A6-00-00-{n:x2}-02",
        Slaac = true,
        SlaacSecretKey = Array.init 32 byte,
        Neighbor = NeighborSettings(RetransTimer = TimeSpan.FromMilliseconds 300.0)
    )

let private autoconfigured (stack: NetworkStack) (prefix: string) =
    stack.Ipv6Addresses
    |> Seq.tryFind (fun a -> a.Autoconfigured && a.Address.ToString().StartsWith prefix)

let private stateOf stack prefix =
    autoconfigured stack prefix |> Option.map (fun a -> a.State)

/// The kernel's one ping to `address` is answered (KernelPing.answered).
let private answers (address: string) =
    KernelPing.answered [ "-6"; "-c"; "1"; "-W"; "1"; address ] |> ignore

/// The kernel's one ping to `address` gets no reply (KernelPing.unanswered).
let private answersNot (address: string) =
    KernelPing.unanswered [ "-6"; "-c"; "1"; "-W"; "1"; address ] |> ignore

let private wait (task: Threading.Tasks.Task<'T>) : 'T =
    TestUtil.waitWithin (TimeSpan.FromSeconds 10.0) task

let private diagnostics (stack: NetworkStack) =
    let _, addresses = Isolation.run "ip" [ "addr" ]
    $"statistics:\n{stack.Statistics}\naddresses: %A{stack.Ipv6Addresses}\n{addresses}"

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Slaac with the kernel"
        [
            test
                "the stack solicits routers, forms an address from an advertised prefix, answers ping and TCP on it and connects from it" {
                let o = options 1
                use stack = NetworkStack.Start o

                try
                    ip [ "addr"; "add"; "fda6:101::1/64"; "dev"; "ns106t1"; "nodad" ]

                    TestUtil.eventually 3.0 "a router solicitation went out" (fun () ->
                        stack.Statistics.["ndp.rs.sent"] >= 1L)

                    advertise "ns106t1" "fda6:101::" 86400u 86400u 1800

                    TestUtil.eventually 5.0 "an address was formed and assigned" (fun () ->
                        stateOf stack "fda6:101:" = Some "Preferred")

                    let address = (autoconfigured stack "fda6:101:").Value.Address

                    Expect.equal
                        stack.Statistics.["ndp.slaac.assigned"]
                        2L
                        "two assigned: the link-local address (RFC 4862 §5.3) and the prefix's"

                    Expect.isGreaterThanOrEqual stack.Statistics.["ndp.dad.sent"] 3L "DAD ran for each"
                    answers (string address)
                    answers "fda6:1::2"

                    // The kernel connects to a listener bound to any address.
                    use listener = stack.ListenTcp(IPEndPoint(IPAddress.IPv6Any, 9))
                    let accepted = listener.AcceptAsync().AsTask()

                    use kernel =
                        new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp)

                    kernel.Connect(IPEndPoint(address, 9))
                    kernel.Send [| 42uy |] |> ignore
                    let connection = wait accepted
                    let buffer = Array.zeroCreate<byte> 1
                    Expect.equal (wait (connection.ReadAsync(buffer, 0, 1))) 1 "one byte"
                    Expect.equal buffer.[0] 42uy "the byte"
                    connection.Dispose()

                    // The stack connects to the kernel in that prefix from its address there (RFC 6724 rule 8).
                    use server =
                        new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp)

                    server.Bind(IPEndPoint(IPAddress.Parse "fda6:101::1", 0))
                    server.Listen 1
                    let incoming = server.AcceptAsync()

                    let outgoing =
                        stack.ConnectTcpAsync(server.LocalEndPoint :?> IPEndPoint).AsTask() |> wait

                    use peer = wait incoming
                    Expect.equal (peer.RemoteEndPoint :?> IPEndPoint).Address address "from the autoconfigured address"
                    outgoing.Dispose()

                    // An advertisement with valid lifetime 0 only cuts it to two hours (§5.5.3 e).
                    advertise "ns106t1" "fda6:101::" 0u 0u 1800

                    TestUtil.eventually 3.0 "deprecated with two hours left" (fun () ->
                        match autoconfigured stack "fda6:101:" with
                        | Some a ->
                            a.State = "Deprecated"
                            && a.ValidLifetime.Value <= TimeSpan.FromHours 2.0
                            && a.ValidLifetime.Value > TimeSpan.FromHours 1.9
                        | None -> false)

                    Expect.equal stack.Statistics.["ndp.slaac.two-hour-rule"] 1L "counted"
                    answers (string address)
                with e ->
                    failtestf "%s\n%s" (e.ToString()) (diagnostics stack)

                TestUtil.assertNoExceptions stack
            }

            test "an address with short lifetimes is deprecated, then removed, and then pings to it fail" {
                let o = options 2
                use stack = NetworkStack.Start o

                try
                    ip [ "addr"; "add"; "fda6:102::1/64"; "dev"; "ns106t2"; "nodad" ]
                    advertise "ns106t2" "fda6:102::" 6u 3u 0
                    TestUtil.eventually 5.0 "assigned" (fun () -> stateOf stack "fda6:102:" = Some "Preferred")
                    let address = string (autoconfigured stack "fda6:102:").Value.Address
                    answers address

                    TestUtil.eventually 5.0 "deprecated after 3 s" (fun () ->
                        stateOf stack "fda6:102:" = Some "Deprecated")

                    answers address
                    TestUtil.eventually 6.0 "removed after 6 s" (fun () -> stateOf stack "fda6:102:" = None)
                    answersNot address
                    answers "fda6:2::2"
                    Expect.equal stack.Statistics.["ndp.slaac.removed"] 1L "counted"
                with e ->
                    failtestf "%s\n%s" (e.ToString()) (diagnostics stack)

                TestUtil.assertNoExceptions stack
            }

            test
                "an advertisement's Reachable Time and Retrans Timer set the IPv6 neighbor timers, ReachableTime randomised" {
                let o = options 4
                let tap = TunDevice.CreateTap o.TunName
                use link = new KernelLink(tap)
                link.SetUp()
                link.AddAddress(o.HostAddress6, o.PrefixLength6)

                let adapter = new EthernetPacketDevice(new TunPacketDevice(tap), o, null, tap.Name)

                use stack = NetworkStack.Start(o, adapter, tap.Name)

                try
                    let struct (reachable, _) = adapter.Ipv6NeighborTimers
                    Expect.isGreaterThanOrEqual reachable (TimeSpan.FromSeconds 15.0) "0.5x the 30 s default or more"
                    Expect.isLessThanOrEqual reachable (TimeSpan.FromSeconds 45.0) "1.5x or less"
                    advertiseWith "ns106t4" "fda6:104::" 600u 600u 1800 [ "5000"; "700" ]

                    TestUtil.eventually 3.0 "the advertised timers were applied" (fun () ->
                        let struct (reachable, retrans) = adapter.Ipv6NeighborTimers

                        retrans = TimeSpan.FromMilliseconds 700.0
                        && reachable >= TimeSpan.FromMilliseconds 2500.0
                        && reachable <= TimeSpan.FromMilliseconds 7500.0)

                    Expect.equal stack.Statistics.["ndp.ra.timers"] 1L "counted"
                    answers "fda6:4::2"
                with e ->
                    failtestf "%s\n%s" (e.ToString()) (diagnostics stack)

                TestUtil.assertNoExceptions stack
            }
        ]
