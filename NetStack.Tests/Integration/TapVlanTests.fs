/// 802.1Q VLANs in TAP mode, inside the runner's private namespace. This kernel has neither
/// 8021q (`ip link add ... type vlan` fails with "Unknown device type") nor bridge VLAN
/// filtering, so the kernel cannot be a VLAN host itself; instead stacks on VLANs 100 and 200
/// share a Linux bridge, which forwards tagged frames between its TAP ports untouched, and the
/// kernel sits untagged on the bridge. Interfaces ns107v*, ns107br0; 10.107.20.0/24, fda7:20::/64.
module NetStack.Tests.Integration.TapVlanTests

open System
open System.Net
open System.Net.NetworkInformation
open System.Net.Sockets
open Expecto
open NetStack
open NetStack.Tests

let private bridge = "ns107br0"

let private ip (args: string list) =
    let code, output = Isolation.run "ip" args
    Expect.equal code 0 $"ip %A{args}:\n{output}"

/// Stack `host` on TAP ns107v`host`, VLAN `vlan`, 10.107.20.`host` and fda7:20::`host`; the
/// kernel side is the bridge, so no host addresses go on the TAP.
let private vlanOptions (host: int) (vlan: int) (offloads: bool) =
    NetStackOptions(
        Mode = NetStackMode.Tap,
        TunName = $"ns107v{host}",
        Address = IPAddress.Parse $"10.107.20.{host}",
        HostAddress = IPAddress.Parse "10.107.20.1",
        Address6 = IPAddress.Parse $"fda7:20::{host}",
        HostAddress6 = IPAddress.Parse "fda7:20::1",
        MacAddress = PhysicalAddress.Parse $"02-a7-00-00-20-{host:x2}",
        VlanId = Nullable vlan,
        TcpLinger = TimeSpan.FromSeconds 2.0,
        Offloads = offloads
    )

let private timeout = TimeSpan.FromSeconds 60.0

let private wait (task: Threading.Tasks.Task<'T>) : 'T = TestUtil.waitWithin timeout task

let private pingStatus (from: NetworkStack) (address: string) =
    (from.PingAsync(IPAddress.Parse address, TimeSpan.FromSeconds 2.0) |> wait).Status

/// `bytes` from `a` to `b` and from `b` to `a` on one connection at the same time, SHA-256 checked.
let private duplex (a: NetworkStack) (b: NetworkStack) (address: IPAddress) (bytes: int64) =
    use listener = b.ListenTcp(IPEndPoint(address, 9))

    let run (connection: TcpConnection) (seed: int) =
        task {
            let received = TestUtil.receiveHashed connection
            let! sent = TestUtil.sendPattern seed connection bytes
            connection.ShutdownWrite()
            let! got = received
            do! connection.DisposeAsync()
            return sent, got
        }

    let server =
        task {
            let! connection = listener.AcceptAsync()
            return! run connection 201
        }

    let client =
        task {
            let! connection = a.ConnectTcpAsync(IPEndPoint(address, 9))
            return! run connection 202
        }

    let clientSent, (clientGot, clientHash) = wait client
    let serverSent, (serverGot, serverHash) = wait server
    Expect.equal serverGot bytes $"every byte reached {address}"
    Expect.equal serverHash clientSent "the same bytes (SHA-256)"
    Expect.equal clientGot bytes "every byte came back"
    Expect.equal clientHash serverSent "the same bytes back (SHA-256)"

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Tap VLAN"
        [
            test
                "stacks on VLAN 100 across a bridge ping and move TCP both ways over IPv4 and IPv6, with and without offloads; VLAN 200 and the untagged kernel do not reach them" {
                ip [ "link"; "add"; bridge; "type"; "bridge"; "mcast_snooping"; "0" ]

                try
                    ip [ "addr"; "add"; "10.107.20.1/24"; "dev"; bridge ]
                    ip [ "addr"; "add"; "fda7:20::1/64"; "dev"; bridge; "nodad" ]
                    ip [ "link"; "set"; bridge; "up" ]

                    let start host vlan offloads =
                        let stack = NetworkStack.Start(vlanOptions host vlan offloads)
                        ip [ "link"; "set"; $"ns107v{host}"; "master"; bridge ]
                        stack

                    use a = start 2 100 true
                    use b = start 3 100 false
                    use d = start 4 100 true
                    use c = start 5 200 true

                    try
                        // No host addresses on the TAPs: the kernel side is the bridge.
                        let _, addresses = Isolation.run "ip" [ "-o"; "addr"; "show"; "dev"; "ns107v2" ]
                        Expect.isFalse (addresses.Contains "10.107.20.1") "the TAP has no host address"

                        for address in [ "10.107.20.3"; "fda7:20::3"; "10.107.20.4"; "fda7:20::4" ] do
                            Expect.equal (pingStatus a address) IPStatus.Success $"A reaches {address} on VLAN 100"

                        Expect.equal (pingStatus b "fda7:20::2") IPStatus.Success "B reaches A"

                        // A (offloads) to B (none): the kernel cuts A's tagged super-segments for B.
                        duplex a b (IPAddress.Parse "10.107.20.3") (8L * 1024L * 1024L)
                        duplex a b (IPAddress.Parse "fda7:20::3") (8L * 1024L * 1024L)
                        Expect.isGreaterThan a.Statistics.["offload.tso.sent"] 0L "A wrote tagged super-segments to B"
                        let toB = a.Statistics.["offload.tso.sent"]
                        // A to D, both with offloads: tagged super-segments pass the bridge whole.
                        duplex a d (IPAddress.Parse "10.107.20.4") (8L * 1024L * 1024L)
                        duplex a d (IPAddress.Parse "fda7:20::4") (8L * 1024L * 1024L)

                        Expect.isGreaterThan
                            a.Statistics.["offload.tso.sent"]
                            toB
                            "A wrote tagged super-segments to D too"

                        Expect.isGreaterThan d.Statistics.["offload.gso.received"] 0L "D read tagged super-segments"
                        Expect.equal b.Statistics.["offload.gso.received"] 0L "B has no offloads"

                        // Another VLAN and the untagged kernel are not on the stacks' link.
                        Expect.equal (pingStatus c "10.107.20.2") IPStatus.TimedOut "VLAN 200 does not reach A"
                        Expect.isGreaterThan a.Statistics.["link.drop.vlan"] 0L "A dropped VLAN 200's frames"

                        // No reply (exit 1), neither over IPv4 nor over IPv6.
                        KernelPing.unanswered [ "-c"; "2"; "-i"; "0.2"; "-W"; "1"; "10.107.20.2" ]
                        |> ignore

                        KernelPing.unanswered [ "-6"; "-c"; "2"; "-i"; "0.2"; "-W"; "1"; "fda7:20::2" ]
                        |> ignore

                        Expect.isGreaterThan a.Statistics.["link.drop.untagged"] 0L "A dropped untagged frames"

                        for s in [ a; b; c; d ] do
                            TestUtil.assertNoExceptions s
                            Expect.equal s.Statistics.["link.drop.bad-vnet-header"] 0L "headers all fit"
                    with e ->
                        failtestf "%s\nA:\n%O\nB:\n%O\nD:\n%O" (e.ToString()) a.Statistics b.Statistics d.Statistics
                finally
                    Isolation.run "ip" [ "link"; "del"; bridge ] |> ignore
            }

            test "a VLAN id outside 1..4094, or one in TUN mode, is an ArgumentException" {
                for bad in [ 0; 4095; -1 ] do
                    Expect.throwsT<ArgumentException>
                        (fun () -> NetworkStack.Start(vlanOptions 6 bad true) |> ignore)
                        $"VLAN {bad}"

                Expect.throwsT<ArgumentException>
                    (fun () ->
                        NetworkStack.Start(
                            NetStackOptions(
                                TunName = "ns107v7",
                                Address = IPAddress.Parse "10.107.21.2",
                                HostAddress = IPAddress.Parse "10.107.21.1",
                                Address6 = null,
                                VlanId = Nullable 100
                            )
                        )
                        |> ignore)
                    "TUN mode"
            }

            test "netstack refuses --vlan without --tap and outside 1..4094, naming the option" {
                for args in
                    [
                        [ "ping"; "--vlan"; "100"; "10.107.22.1" ]
                        [ "ping"; "--tap"; "--vlan"; "4095"; "10.107.22.1" ]
                        [ "ping"; "--tap"; "--vlan"; "x"; "10.107.22.1" ]
                    ] do
                    let code, _, err = CliTests.runNetstack (TimeSpan.FromSeconds 30.0) args
                    Expect.equal code 2 $"%A{args} is a bad argument"
                    Expect.stringContains err "--vlan" "the message names the option"
            }
        ]
