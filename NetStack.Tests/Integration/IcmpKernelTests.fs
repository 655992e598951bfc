/// TCP and ICMP with the kernel as a router (RFC 1122 §4.2.3.9, RFC 1191, RFC 8201): the stack's
/// TUN interface is moved into a router namespace (forwarding on) whose other side is a veth with
/// MTU 1280 to a server namespace, and a client namespace holds kernel sockets that go through
/// the same router. The router answers too-big segments with "fragmentation needed" / "packet too
/// big", refuses chosen ports with nft reject rules (one ICMP type and code per port) and has no
/// route to 10.161.9.0/24 and fd61:9::/64. Namespaces ns161{r,s,c}PID, TUN ns161tN, subnets
/// 10.161.N.0/24 and fd61:N::/64.
module NetStack.Tests.Integration.IcmpKernelTests

open System
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Sockets
open System.Threading
open System.Threading.Tasks
open Expecto
open NetStack
open NetStack.Tests

let private inNetns (name: string) (f: unit -> 'T) : 'T = Netns.inNetns name f

let private run (args: string list) =
    let code, output = Isolation.run "ip" args
    Expect.equal code 0 $"ip %A{args}:\n{output}"

let private ipIn (ns: string) (args: string list) = run ([ "-n"; ns ] @ args)

let private execIn (ns: string) (file: string) (args: string list) =
    let code, output = Isolation.run "ip" ([ "netns"; "exec"; ns; file ] @ args)
    Expect.equal code 0 $"{file} %A{args} in {ns}:\n{output}"

// The ports the router refuses, with the ICMP it answers (nft `reject with ...`).
let private rejects4 =
    [
        7001, "port-unreachable"
        7002, "host-unreachable"
        7003, "net-unreachable"
        7004, "admin-prohibited"
        7005, "prot-unreachable"
        7006, "net-prohibited"
        7007, "host-prohibited"
    ]

let private rejects6 =
    [
        7011, "no-route"
        7012, "admin-prohibited"
        7013, "addr-unreachable"
        7014, "port-unreachable"
        7015, "policy-fail"
        7016, "reject-route"
    ]

let private nftRules =
    let rule family icmp (port, name) =
        $"    meta nfproto {family} tcp dport {port} reject with {icmp} type {name}\n"

    "table inet icmptest {\n  chain forward_filter {\n    type filter hook forward priority 0;\n"
    + String.Join("", rejects4 |> List.map (rule "ipv4" "icmp"))
    + String.Join("", rejects6 |> List.map (rule "ipv6" "icmpv6"))
    + "  }\n}\n"

/// The addresses of the test network.
let private stack4 = IPAddress.Parse "10.161.1.2"
let private server4 = IPAddress.Parse "10.161.2.2"
let private server6 = IPAddress.Parse "fd61:2::2"

type private Net =
    {
        Router: string
        Server: string
        Client: string
        Stack: NetworkStack
    }

/// Starts a stack on a new TUN, moves the TUN into a new router namespace and builds the rest of
/// the network around it; runs `f`; then disposes the stack, checks it counted no exception,
/// hands the stack's finished capture file to `afterStack`, and deletes the namespaces (which
/// takes their interfaces with them).
let private withRouterThen (n: int) (offloads: bool) (f: Net -> unit) (afterStack: string -> unit) =
    let pid = Environment.ProcessId
    let router, server, client = $"ns161r{pid}", $"ns161s{pid}", $"ns161c{pid}"
    let tun = $"ns161t{n}"
    let capture = Path.Combine(Path.GetTempPath(), $"netstack-icmp-{pid}-{n}.pcap")

    let options =
        NetStackOptions(
            TunName = tun,
            Address = stack4,
            HostAddress = IPAddress.Parse "10.161.1.1",
            Address6 = IPAddress.Parse "fd61:1::2",
            HostAddress6 = IPAddress.Parse "fd61:1::1",
            Offloads = offloads,
            CapturePath = capture,
            TcpLinger = TimeSpan.FromSeconds 2.0
        )

    let stack = NetworkStack.Start options
    let mutable made = []

    try
        try
            for ns in [ router; server; client ] do
                run [ "netns"; "add"; ns ]
                made <- ns :: made
                ipIn ns [ "link"; "set"; "lo"; "up" ]
                // No duplicate address detection: addresses (link-local ones too) usable at once.
                execIn
                    ns
                    "sysctl"
                    [
                        "-qw"
                        "net.ipv6.conf.all.accept_dad=0"
                        "net.ipv6.conf.default.accept_dad=0"
                    ]

            // The stack's link, now the router's: the TUN keeps MTU 1500.
            run [ "link"; "set"; "dev"; tun; "netns"; router ]
            ipIn router [ "addr"; "add"; "10.161.1.1"; "peer"; "10.161.1.2"; "dev"; tun ]
            ipIn router [ "addr"; "add"; "fd61:1::1"; "peer"; "fd61:1::2"; "dev"; tun; "nodad" ]
            ipIn router [ "link"; "set"; tun; "up" ]
            ipIn router [ "-6"; "route"; "add"; "fd61:1::2"; "dev"; tun ]
            // The narrow link to the server: MTU 1280 both ends.
            ipIn
                router
                [
                    "link"
                    "add"
                    "vr"
                    "mtu"
                    "1280"
                    "type"
                    "veth"
                    "peer"
                    "name"
                    "vs"
                    "mtu"
                    "1280"
                    "netns"
                    server
                ]

            ipIn router [ "addr"; "add"; "10.161.2.1/24"; "dev"; "vr" ]
            ipIn router [ "addr"; "add"; "fd61:2::1/64"; "dev"; "vr"; "nodad" ]
            ipIn router [ "link"; "set"; "vr"; "up" ]
            ipIn server [ "addr"; "add"; "10.161.2.2/24"; "dev"; "vs" ]
            ipIn server [ "addr"; "add"; "fd61:2::2/64"; "dev"; "vs"; "nodad" ]
            ipIn server [ "link"; "set"; "vs"; "up" ]
            // The server announces the MSS of a 1500-byte link (the route's advmss), as a server
            // behind the narrow link would: else its MSS option alone (1280 − 40) would keep the
            // stack's segments small and no router would need to say "too big".
            ipIn server [ "route"; "add"; "default"; "via"; "10.161.2.1"; "advmss"; "1460" ]
            ipIn server [ "-6"; "route"; "add"; "default"; "via"; "fd61:2::1"; "advmss"; "1440" ]
            // The kernel client's link (MTU 1500).
            ipIn router [ "link"; "add"; "vc"; "type"; "veth"; "peer"; "name"; "vk"; "netns"; client ]
            ipIn router [ "addr"; "add"; "10.161.3.1/24"; "dev"; "vc" ]
            ipIn router [ "addr"; "add"; "fd61:3::1/64"; "dev"; "vc"; "nodad" ]
            ipIn router [ "link"; "set"; "vc"; "up" ]
            ipIn client [ "addr"; "add"; "10.161.3.2/24"; "dev"; "vk" ]
            ipIn client [ "addr"; "add"; "fd61:3::2/64"; "dev"; "vk"; "nodad" ]
            ipIn client [ "link"; "set"; "vk"; "up" ]
            ipIn client [ "route"; "add"; "default"; "via"; "10.161.3.1" ]
            ipIn client [ "-6"; "route"; "add"; "default"; "via"; "fd61:3::1" ]
            // Forwarding, and no ICMP rate limit per peer (each test case must get its error).
            execIn
                router
                "sysctl"
                [
                    "-qw"
                    "net.ipv4.ip_forward=1"
                    "net.ipv6.conf.all.forwarding=1"
                    "net.ipv4.icmp_ratelimit=0"
                    "net.ipv6.icmp.ratelimit=0"
                    "net.ipv4.conf.all.rp_filter=0"
                ]

            let rules = Path.Combine(Path.GetTempPath(), $"netstack-icmp-{pid}.nft")
            File.WriteAllText(rules, nftRules)

            try
                execIn router "nft" [ "-f"; rules ]
            finally
                File.Delete rules

            f
                {
                    Router = router
                    Server = server
                    Client = client
                    Stack = stack
                }

            stack.Dispose()
            // After Dispose: the loop has stopped, so the counters are final.
            TestUtil.assertNoExceptions stack
            afterStack capture
        with e ->
            failtestf "%s\nstatistics:\n%O" (e.ToString()) stack.Statistics
    finally
        stack.Dispose()

        for ns in made do
            Isolation.run "ip" [ "netns"; "del"; ns ] |> ignore

        File.Delete capture

let private withRouter (n: int) (offloads: bool) (f: Net -> unit) = withRouterThen n offloads f ignore

/// Runs tshark on `file` with display filter `filter`, printing `field` of each match; returns
/// the lines. TCP is not dissected (the filters need only IP and ICMP fields): tens of thousands
/// of segments through TCP's sequence analysis took minutes on a busy machine.
let private tshark (file: string) (filter: string) (field: string) =
    let code, output =
        Isolation.run
            "tshark"
            [
                "-n"
                "-r"
                file
                "--disable-protocol"
                "tcp"
                "-Y"
                filter
                "-T"
                "fields"
                "-e"
                field
            ]

    Expect.equal code 0 $"tshark -Y '{filter}':\n{output}"

    output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
    |> Array.filter (fun l -> not (l.Contains "Running as user"))

let private fragments = "ip.flags.mf == 1 || ip.frag_offset > 0 || ipv6.fragment"

let private timeout = TimeSpan.FromSeconds 120.0
let private bulk = 20L * 1024L * 1024L

/// A kernel echo server in the server namespace on both families (port 5001): echoes each
/// connection until its FIN, then closes its side.
let private echoServer (net: Net) =
    let listener =
        inNetns net.Server (fun () ->
            let l =
                new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp)

            l.DualMode <- true
            l.Bind(IPEndPoint(IPAddress.IPv6Any, 5001))
            l.Listen 8
            l)

    let serve =
        task {
            try
                while true do
                    let! socket = listener.AcceptAsync()

                    Task.Run(fun () ->
                        task {
                            use socket = socket
                            let buffer = Array.zeroCreate<byte> 65536
                            let mutable n = 1

                            while n > 0 do
                                let! read = socket.ReceiveAsync(Memory buffer, SocketFlags.None)
                                n <- read

                                if n > 0 then
                                    let! _ = socket.SendAsync(ReadOnlyMemory(buffer, 0, n), SocketFlags.None)
                                    ()

                            socket.Shutdown SocketShutdown.Send
                        }
                        :> Task)
                    |> ignore
            with
            | :? SocketException
            | :? ObjectDisposedException -> ()
        }

    listener, serve

/// `total` bytes from the stack to the kernel echo server at `address` and back, both at once:
/// the echo must be the same bytes (SHA-256).
let private echoThrough (stack: NetworkStack) (address: IPAddress) (total: int64) (seed: int) =
    task {
        let! connection = stack.ConnectTcpAsync(IPEndPoint(address, 5001))

        let sending =
            task {
                let! hash = TestUtil.sendPattern seed connection total
                connection.ShutdownWrite()
                return hash
            }

        let! received, receivedHash = TestUtil.receiveHashed connection
        let! sentHash = sending
        do! connection.DisposeAsync()
        Expect.equal received total $"every byte came back over {address}"
        Expect.equal receivedHash sentHash $"the same bytes (SHA-256) over {address}"
    }
    |> TestUtil.waitWithin timeout

/// A connect that fails: its SocketError and how long it took (a success or a timeout fails the test).
let private failedConnect (connect: CancellationToken -> Task) =
    use cancel = new CancellationTokenSource(TimeSpan.FromSeconds 10.0)
    let clock = Stopwatch.StartNew()

    try
        (connect cancel.Token).Wait()
        failtest "the connect succeeded"
    with :? AggregateException as e ->
        match e.InnerException with
        | :? SocketException as s -> s.SocketErrorCode, clock.Elapsed
        | :? OperationCanceledException -> failtest "no answer within 10 s"
        | other -> raise other

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Icmp with the kernel"
        [
            for offloads in [ true; false ] do
                test
                    $"20 MB each way through a router with a 1280-byte link: DF on every IPv4 segment, no fragment, the MSS follows ICMP (offloads {offloads})" {
                    let transfers (net: Net) =
                        let listener, serve = echoServer net

                        let wire =
                            Path.Combine(Path.GetTempPath(), $"netstack-icmp-vr-{Environment.ProcessId}.pcap")

                        let dump = Capture.start [ "ip"; "netns"; "exec"; net.Router ] "vr" wire

                        try
                            try
                                echoThrough net.Stack server4 bulk 161
                                echoThrough net.Stack server6 bulk 162
                                let lowered = net.Stack.Statistics.["tcp.icmp.mtu-lowered"]
                                let tooBig = net.Stack.Statistics.["icmp.error.packet-too-big"]
                                // One accepted too-big per destination; the rest said 1280 again.
                                Expect.equal lowered 2L "each connection lowered its MSS once (RFC 1191, RFC 8201)"
                                // A new connection to a known destination starts with the lower MSS.
                                echoThrough net.Stack server4 (1L <<< 20) 163
                                echoThrough net.Stack server6 (1L <<< 20) 164
                                Expect.equal net.Stack.Statistics.["icmp.error.packet-too-big"] tooBig "no new too-big"

                                Expect.equal
                                    net.Stack.Statistics.["tcp.icmp.mtu-lowered"]
                                    lowered
                                    "nothing more to lower"

                                Expect.equal
                                    net.Stack.Statistics.["ip.fragments.sent"]
                                    0L
                                    "the stack fragmented nothing"
                            finally
                                Thread.Sleep 200
                                Capture.stop dump
                                listener.Dispose()
                                serve.Wait(TimeSpan.FromSeconds 5.0) |> ignore

                            Expect.isGreaterThan
                                (tshark wire "ip.proto == 6 || ipv6.nxt == 6" "frame.number").Length
                                1000
                                "the narrow link carried the transfers"

                            Expect.isEmpty (tshark wire fragments "frame.number") "no IP fragment on the 1280-byte link"
                        finally
                            File.Delete wire

                    // What the stack wrote (its own capture, complete once the stack is disposed).
                    let stackCapture (capture: string) =
                        // Not ICMP: an error from the router quotes one of our headers, and
                        // `ip.src` would match the quote while `ip.flags.df` read the outer header.
                        let df =
                            tshark capture $"ip.src == {stack4} && ip.proto == 6 && !icmp" "ip.flags.df"
                        // (With TSO a capture record is a super-segment of up to 64 KiB.)
                        Expect.isGreaterThan df.Length 300 "the stack's capture holds its IPv4 segments"
                        Expect.all df (fun v -> v = "1" || v = "True") "every IPv4 TCP packet of the stack has DF"
                        Expect.isEmpty (tshark capture fragments "frame.number") "the stack sent no fragment"

                    withRouterThen (if offloads then 1 else 2) offloads transfers stackCapture
                }

            test
                "an unreachable destination fails the connect at once with the SocketError a kernel socket gets for the same ICMP" {
                withRouter 3 true (fun net ->
                    let cases =
                        [
                            for port, name in rejects4 do
                                IPEndPoint(server4, port), $"icmp {name}"
                            for port, name in rejects6 do
                                IPEndPoint(server6, port), $"icmpv6 {name}"
                            IPEndPoint(IPAddress.Parse "10.161.9.9", 80), "no route (IPv4)"
                            IPEndPoint(IPAddress.Parse "fd61:9::9", 80), "no route (IPv6)"
                        ]

                    for target, what in cases do
                        let kernelError, kernelTime =
                            let socket =
                                inNetns net.Client (fun () ->
                                    new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp))

                            try
                                failedConnect (fun token -> socket.ConnectAsync(target, token).AsTask())
                            finally
                                socket.Dispose()

                        let stackError, stackTime =
                            failedConnect (fun token -> net.Stack.ConnectTcpAsync(target, token).AsTask())

                        printfn
                            $"{what} ({target}): kernel {kernelError} in {kernelTime.TotalMilliseconds:F0} ms, stack {stackError} in {stackTime.TotalMilliseconds:F0} ms"

                        Expect.notEqual kernelError SocketError.TimedOut $"{what}: the kernel heard the ICMP"
                        Expect.equal stackError kernelError $"{what}: the stack's error is the kernel's"
                        // The first SYN retransmission is at 1 s: a connect that ignored the ICMP
                        // would take the whole SYN retry time.
                        Expect.isLessThan stackTime (TimeSpan.FromSeconds 1.0) $"{what}: failed at once"

                    Expect.equal
                        net.Stack.Statistics.["tcp.icmp.error"]
                        (int64 cases.Length)
                        "every connect ended by ICMP"

                    Expect.equal net.Stack.Statistics.["tcp.timed-out"] 0L "none timed out")
            }
        ]
