/// The stack's IPv6 link-local address (RFC 4862 §5.3, RFC 7217) on a TAP, against the kernel:
/// the address is the one RFC 7217 gives (computed here), the kernel reaches it, the stack's
/// neighbor solicitations come from it, and duplicate address detection moves it aside when
/// the kernel already has it. The stacks have no configured IPv6 address (Address6 = null).
/// Interfaces nsll1, nsll2; subnets 10.96.N.0/24.
module NetStack.Tests.Integration.LinkLocalKernelTests

open System
open System.Buffers.Binary
open System.IO
open System.Net
open System.Net.NetworkInformation
open System.Net.Sockets
open System.Security.Cryptography
open System.Threading
open Expecto
open NetStack
open NetStack.Engine
open NetStack.Tests

let private secret = Array.init 32 (fun i -> byte (200 - i))

let private macOf (n: int) =
    PhysicalAddress.Parse $"02-96-00-00-{n:x2}-02"

/// RFC 7217 §5 (Network_ID empty): fe80::/64 and the first 64 bits of
/// SHA-256(Prefix | Net_Iface | DAD_Counter | secret_key), written out here.
let private expectedLinkLocal (n: int) (dadCounter: byte) =
    let input =
        Array.concat
            [
                [| 0xFEuy; 0x80uy; 0uy; 0uy; 0uy; 0uy; 0uy; 0uy |]
                (macOf n).GetAddressBytes()
                [| dadCounter |]
                secret
            ]

    let iid = SHA256.HashData(input).AsSpan(0, 8).ToArray()
    IPAddress(Array.append [| 0xFEuy; 0x80uy; 0uy; 0uy; 0uy; 0uy; 0uy; 0uy |] iid)

let private options (n: int) =
    NetStackOptions(
        Mode = NetStackMode.Tap,
        TunName = $"nsll{n}",
        Address = IPAddress.Parse $"10.96.{n}.2",
        HostAddress = IPAddress.Parse $"10.96.{n}.1",
        Address6 = null,
        HostAddress6 = null,
        MacAddress = macOf n,
        SlaacSecretKey = secret,
        Neighbor = NeighborSettings(RetransTimer = TimeSpan.FromMilliseconds 300.0)
    )

let private stateOf (stack: NetworkStack) (address: IPAddress) =
    stack.Ipv6Addresses
    |> Seq.tryFind (fun a -> a.Address.Equals address)
    |> Option.map (fun a -> a.State)

/// The kernel's link-local address on `dev`, once DAD let it go (`ip -6 addr`, not tentative).
let private kernelLinkLocal (dev: string) =
    let mutable found = None

    TestUtil.eventually 5.0 $"the kernel's link-local address on {dev}" (fun () ->
        let _, output =
            Isolation.run "ip" [ "-6"; "-o"; "addr"; "show"; "dev"; dev; "scope"; "link" ]

        found <-
            output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            |> Array.tryFind (fun l -> not (l.Contains "tentative"))
            |> Option.map (fun l ->
                let words = l.Split(' ', StringSplitOptions.RemoveEmptyEntries)
                let cidr = words.[Array.findIndex ((=) "inet6") words + 1]
                IPAddress.Parse(cidr.Split('/').[0]))

        found.IsSome)

    found.Value

let private ifIndex (dev: string) =
    let _, output = Isolation.run "ip" [ "-o"; "link"; "show"; "dev"; dev ]
    int64 (output.Split(':').[0].Trim())

let private wait (task: Threading.Tasks.Task<'T>) : 'T =
    TestUtil.waitWithin (TimeSpan.FromSeconds 10.0) task

let private diagnostics (stack: NetworkStack) =
    let _, addresses = Isolation.run "ip" [ "addr" ]
    let _, neighbors = Isolation.run "ip" [ "-6"; "neigh" ]
    $"statistics:\n{stack.Statistics}\naddresses: %A{stack.Ipv6Addresses}\n{addresses}\n{neighbors}"

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Link-local with the kernel"
        [
            test
                "without Address6 the stack forms its RFC 7217 link-local address, the kernel pings it and connects to it, and the stack's neighbor solicitations come from it" {
                let o = options 1
                let ll = expectedLinkLocal 1 0uy
                use stack = NetworkStack.Start o

                try
                    TestUtil.eventually 5.0 "the link-local address is assigned" (fun () ->
                        stateOf stack ll = Some "Preferred")

                    let dev = stack.InterfaceName
                    // The kernel pings from its own link-local address: once its DAD is over.
                    kernelLinkLocal dev |> ignore
                    let scoped = $"{ll}%%{dev}"
                    KernelPing.answered [ "-6"; "-c"; "1"; "-W"; "2"; scoped ] |> ignore

                    // The kernel connects to the stack's link-local address (scope: the TAP).
                    use listener = stack.ListenTcp 7
                    let accepted = listener.AcceptAsync().AsTask()

                    use kernel =
                        new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp)

                    let target = IPAddress(ll.GetAddressBytes(), ifIndex dev)
                    kernel.Connect(IPEndPoint(target, 7))
                    kernel.Send [| 7uy |] |> ignore
                    use connection = wait accepted
                    let buffer = Array.zeroCreate<byte> 1
                    Expect.equal (wait (connection.ReadAsync(buffer, 0, 1))) 1 "one byte"
                    Expect.equal connection.LocalEndPoint.Address ll "accepted on the link-local address"

                    // The stack resolves a second link-local address of the kernel's (the first
                    // one it learned from the kernel's own solicitation): its solicitation goes
                    // from its own link-local address with its MAC (RFC 4861 §7.2.2), as the
                    // kernel's side of the wire shows.
                    Isolation.run "ip" [ "-6"; "addr"; "add"; "fe80::96:1/64"; "dev"; dev; "nodad" ]
                    |> ignore

                    let kernelLl = IPAddress.Parse "fe80::96:1"

                    let capture =
                        Path.Combine(Path.GetTempPath(), $"netstack-ll-{Guid.NewGuid():N}.pcap")

                    let dump = Capture.start [] dev capture

                    try
                        let reply = stack.PingAsync(kernelLl, TimeSpan.FromSeconds 5.0) |> wait
                        Expect.equal reply.Status IPStatus.Success "the kernel answers the stack's ping"
                        // Once tcpdump has the solicitation, nothing of it is lost by stopping.
                        Capture.awaitPackets capture "ether src 02:96:00:00:01:02 and icmp6 and ip6[40] == 135"
                    finally
                        Capture.stop dump

                    let code, output =
                        Isolation.run
                            "tshark"
                            [
                                "-n"
                                "-r"
                                capture
                                "-Y"
                                "icmpv6.type == 135 && eth.src == 02:96:00:00:01:02"
                                "-T"
                                "fields"
                                "-e"
                                "ipv6.src"
                                "-e"
                                "icmpv6.nd.ns.target_address"
                            ]

                    File.Delete capture
                    Expect.equal code 0 $"tshark:\n{output}"

                    let solicitations =
                        output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                        |> Array.filter (fun l -> not (l.Contains "Running as user"))
                        |> Array.map (fun l -> l.Trim().Split('\t'))

                    Expect.isNonEmpty solicitations $"the stack solicited the kernel's address:\n{output}"

                    for s in solicitations do
                        Expect.equal (IPAddress.Parse s.[0]) ll $"from the link-local address: {String.Join(' ', s)}"
                        Expect.equal (IPAddress.Parse s.[1]) kernelLl "for the kernel's address"
                with e ->
                    failtestf "%s\n%s" (e.ToString()) (diagnostics stack)

                TestUtil.assertNoExceptions stack
            }

            test "a link-local address the kernel already has fails DAD; the stack takes the next RFC 7217 identifier" {
                let o = options 2
                let taken = expectedLinkLocal 2 0uy
                let next = expectedLinkLocal 2 1uy

                // The kernel holds the stack's first choice before the stack starts (its TAP is
                // made and addressed here, so the address is there from the first frame).
                let tap = NetStack.Device.TunDevice.CreateTap o.TunName
                use link = new NetStack.Device.KernelLink(tap)
                link.SetUp()
                link.AddAddress(o.HostAddress, o.PrefixLength)

                Isolation.run "ip" [ "-6"; "addr"; "add"; $"{taken}/64"; "dev"; tap.Name; "nodad" ]
                |> ignore

                // What passed on the wire, printed when the test fails.
                let capture =
                    Path.Combine(Path.GetTempPath(), $"netstack-lldad-{Guid.NewGuid():N}.pcap")

                let dump = Capture.start [] tap.Name capture

                let adapter = new EthernetPacketDevice(new TunPacketDevice(tap), o, null, tap.Name)

                use stack = NetworkStack.Start(o, adapter, tap.Name)

                try
                    TestUtil.eventually 5.0 "the next identifier is assigned" (fun () ->
                        stateOf stack next = Some "Preferred")

                    Expect.equal (stateOf stack taken) None "the kernel's address is not the stack's"
                    Expect.equal stack.Statistics.["ndp.slaac.duplicate"] 1L "one duplicate"

                    KernelPing.answered [ "-6"; "-c"; "1"; "-W"; "2"; $"{next}%%{tap.Name}" ]
                    |> ignore
                with e ->
                    Capture.stop dump
                    let _, wire = Isolation.run "tcpdump" [ "-n"; "-e"; "-v"; "-r"; capture ]
                    failtestf "%s\n%s\nwire:\n%s" (e.ToString()) (diagnostics stack) wire

                Capture.stop dump
                File.Delete capture
                TestUtil.assertNoExceptions stack
            }
        ]
