/// Any-destination mode against the kernel: a kernel socket in the test's namespace connects,
/// sends and pings to addresses routed into the stack's TUN (198.18.N.0/24 and 2001:db8:N::/48,
/// benchmarking and documentation prefixes that exist only inside this namespace), and the
/// forwarders decide. The kernel says what it saw: the peer address of its socket, the errno of
/// its connect, the source of a reply, ping's summary.
module NetStack.Tests.Integration.ForwardKernelTests

open System
open System.Net
open System.Net.Sockets
open System.Security.Cryptography
open System.Threading
open System.Threading.Tasks
open Expecto
open NetStack
open NetStack.Tests

/// Test n's options: its own interface and subnets, any-destination mode, the forwarders' bounds.
let private optionsWith (n: int) (decisionSeconds: float) (udpIdleSeconds: float) (maxPending: int) (maxFlows: int) =
    NetStackOptions(
        TunName = $"ns118f{n}",
        Address = IPAddress.Parse $"10.118.{n}.2",
        HostAddress = IPAddress.Parse $"10.118.{n}.1",
        Address6 = IPAddress.Parse $"fdb8:{n}::2",
        HostAddress6 = IPAddress.Parse $"fdb8:{n}::1",
        AnyDestination = true,
        ForwardTcpDecisionTimeout = TimeSpan.FromSeconds decisionSeconds,
        ForwardUdpIdleTimeout = TimeSpan.FromSeconds udpIdleSeconds,
        ForwardMaxPendingTcp = maxPending,
        ForwardMaxUdpFlows = maxFlows
    )

let private optionsFor (n: int) = optionsWith n 30.0 60.0 1024 4096

let private timeout = TimeSpan.FromSeconds 30.0

let private wait (task: Task<'T>) =
    if not (task.Wait timeout) then
        failtest "timed out"

    task.Result

let private ip (args: string list) =
    match Isolation.run "ip" args with
    | 0, _ -> ()
    | code, out -> failtestf "ip %s: exit %d: %s" (String.Join(" ", args)) code out

/// A stack in any-destination mode with 198.18.n.0/24 and 2001:db8:n::/48 routed to it.
let private withForwardingStack (options: NetStackOptions) (f: NetworkStack -> unit) =
    let n = int (options.Address.GetAddressBytes()[2])

    TestUtil.withStackOf options (fun stack ->
        ip [ "route"; "add"; $"198.18.{n}.0/24"; "dev"; stack.InterfaceName ]
        ip [ "-6"; "route"; "add"; $"2001:db8:{n}::/48"; "dev"; stack.InterfaceName ]
        f stack)

let private far4 n host = IPAddress.Parse $"198.18.{n}.{host}"
let private far6 n host = IPAddress.Parse $"2001:db8:{n}::{host}"

/// A kernel TCP connect to `target`, started (the forwarder decides before it can finish).
let private kernelConnect (target: IPEndPoint) =
    let socket = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp)
    socket, socket.ConnectAsync(target)

let private socketError (task: Task) =
    try
        task.Wait timeout |> ignore
        failtest "the connect succeeded"
    with :? AggregateException as e ->
        match e.InnerException with
        | :? SocketException as s -> s.SocketErrorCode
        | other -> failtestf "not a SocketException: %O" other

[<Tests>]
let tests =
    testList
        "Forwarding with the kernel"
        [
            test
                "a forwarded TCP connection to any address: the original destination on both sides, 4 MB each way SHA-256 exact" {
                withForwardingStack (optionsFor 1) (fun stack ->
                    use forwarder = stack.ForwardTcp()

                    for target in [ IPEndPoint(far4 1 5, 8080); IPEndPoint(far6 1 5, 443) ] do
                        let socket, connect = kernelConnect target
                        use socket = socket
                        let request = wait (forwarder.AcceptAsync().AsTask())
                        Expect.equal request.LocalEndPoint target "the original destination"
                        Expect.isFalse connect.IsCompleted "no answer before the decision"
                        use connection = wait (request.AcceptAsync().AsTask())
                        connect.Wait timeout |> ignore
                        Expect.isTrue connect.IsCompletedSuccessfully "the kernel's connect completed"

                        Expect.equal
                            (socket.RemoteEndPoint :?> IPEndPoint)
                            target
                            "the kernel is connected to the original destination"

                        Expect.equal connection.LocalEndPoint target "the stack's end is the original destination"
                        Expect.equal request.RemoteEndPoint (socket.LocalEndPoint :?> IPEndPoint) "the kernel's end"

                        // The stack echoes; the kernel sends 4 MB and hashes what comes back.
                        let echo =
                            Task.Run(fun () ->
                                let buffer = Array.zeroCreate<byte> 65536
                                let mutable n = connection.Read(buffer, 0, buffer.Length)

                                while n > 0 do
                                    connection.Write(buffer, 0, n)
                                    n <- connection.Read(buffer, 0, buffer.Length)

                                connection.Dispose())

                        use stream = new NetworkStream(socket, ownsSocket = false)
                        let total = 4L <<< 20
                        let sink = TestUtil.receiveHashed stream
                        let sentHash = wait (TestUtil.sendPattern 11 stream total)
                        socket.Shutdown SocketShutdown.Send
                        let received, receivedHash = wait sink
                        Expect.equal received total "every byte came back"
                        Expect.equal receivedHash sentHash "SHA-256"
                        echo.Wait timeout |> ignore

                    Expect.equal stack.Statistics["tcp.forward.accepted"] 2L "two accepted")
            }

            test "a refused request: the kernel's connect fails with the errno each answer means" {
                withForwardingStack (optionsFor 2) (fun stack ->
                    use forwarder = stack.ForwardTcp()

                    let cases =
                        [
                            IPEndPoint(far4 2 6, 81), ForwardRefusal.Reset, SocketError.ConnectionRefused
                            IPEndPoint(far4 2 6, 82), ForwardRefusal.HostUnreachable, SocketError.HostUnreachable
                            IPEndPoint(far4 2 6, 83), ForwardRefusal.NetworkUnreachable, SocketError.NetworkUnreachable
                            IPEndPoint(far4 2 6, 84), ForwardRefusal.PortUnreachable, SocketError.ConnectionRefused
                            // Linux: ICMP_PKT_FILTERED (code 13) is EHOSTUNREACH.
                            IPEndPoint(far4 2 6, 85),
                            ForwardRefusal.AdministrativelyProhibited,
                            SocketError.HostUnreachable
                            IPEndPoint(far6 2 6, 81), ForwardRefusal.Reset, SocketError.ConnectionRefused
                            IPEndPoint(far6 2 6, 82), ForwardRefusal.HostUnreachable, SocketError.HostUnreachable
                            // Linux: ICMPV6_ADM_PROHIBITED is EACCES.
                            IPEndPoint(far6 2 6, 85),
                            ForwardRefusal.AdministrativelyProhibited,
                            SocketError.AccessDenied
                        ]

                    for target, how, expected in cases do
                        let socket, connect = kernelConnect target
                        use socket = socket
                        let request = wait (forwarder.AcceptAsync().AsTask())
                        Expect.equal request.LocalEndPoint target "the request"
                        request.Refuse how
                        Expect.equal (socketError connect) expected $"{how} to {target}"
                        Expect.throws (fun () -> request.Refuse how) "decided once"

                    Expect.equal stack.Statistics["tcp.forward.refused"] (int64 cases.Length) "all refused")
            }

            test
                "Ignore answers nothing: the kernel's retransmitted SYN comes back as a new request, and an undecided one expires" {
                withForwardingStack (optionsWith 3 0.5 60.0 1024 4096) (fun stack ->
                    use forwarder = stack.ForwardTcp()
                    let target = IPEndPoint(far4 3 7, 9000)
                    let socket, connect = kernelConnect target
                    use socket = socket
                    let first = wait (forwarder.AcceptAsync().AsTask())
                    first.Refuse ForwardRefusal.Ignore
                    // Linux retransmits the SYN after its initial RTO of 1 s.
                    let second = wait (forwarder.AcceptAsync().AsTask())
                    Expect.equal second.LocalEndPoint target "the same destination again"
                    Expect.isFalse connect.IsCompleted "still connecting: nothing was answered"
                    // Undecided past the 0.5 s timeout: it expires; the next retransmission (2 s
                    // later) makes a third request, which is accepted.
                    let third = wait (forwarder.AcceptAsync().AsTask())
                    Expect.isTrue second.IsExpired "the second expired"

                    let late =
                        try
                            second.AcceptAsync().AsTask().Wait timeout |> ignore
                            None
                        with :? AggregateException as e ->
                            Some e.InnerException

                    match late with
                    | Some(:? SocketException as s) -> Expect.equal s.SocketErrorCode SocketError.TimedOut "too late"
                    | other -> failtestf "accepting an expired request should fail with TimedOut: %A" other

                    use connection = wait (third.AcceptAsync().AsTask())
                    connect.Wait timeout |> ignore
                    Expect.isTrue connect.IsCompletedSuccessfully "connected in the end"
                    Expect.isGreaterThanOrEqual stack.Statistics["tcp.forward.decision-timeout"] 1L "counted")
            }

            test "UDP flows: a datagram to any address reaches a flow that sees it, and replies come from that address" {
                withForwardingStack (optionsWith 4 30.0 1.0 1024 4096) (fun stack ->
                    use forwarder = stack.ForwardUdp()

                    for target in [ IPEndPoint(far4 4 8, 5353); IPEndPoint(far6 4 8, 53) ] do
                        use kernel = new Socket(target.AddressFamily, SocketType.Dgram, ProtocolType.Udp)

                        kernel.Bind(
                            IPEndPoint(
                                (if target.AddressFamily = AddressFamily.InterNetwork then
                                     IPAddress.Any
                                 else
                                     IPAddress.IPv6Any),
                                0
                            )
                        )

                        kernel.ReceiveTimeout <- 10000
                        let payload = RandomNumberGenerator.GetBytes 1000
                        kernel.SendTo(payload, target) |> ignore
                        use flow = wait (forwarder.AcceptAsync().AsTask())
                        Expect.equal flow.LocalEndPoint target "the original destination"

                        Expect.equal
                            flow.RemoteEndPoint.Port
                            (kernel.LocalEndPoint :?> IPEndPoint).Port
                            "the kernel's port"

                        let buffer = Array.zeroCreate<byte> 2000
                        let n = wait (flow.ReceiveAsync(buffer.AsMemory()).AsTask())
                        Expect.sequenceEqual buffer[0 .. n - 1] payload "the datagram"

                        // A 3000-byte reply, fragmented by the stack and reassembled by the kernel.
                        let reply = RandomNumberGenerator.GetBytes 3000
                        flow.SendAsync(reply.AsMemory()).AsTask().Wait timeout |> ignore
                        let mutable from = IPEndPoint(IPAddress.Any, 0) :> EndPoint

                        if target.AddressFamily = AddressFamily.InterNetworkV6 then
                            from <- IPEndPoint(IPAddress.IPv6Any, 0)

                        let got = Array.zeroCreate<byte> 4000
                        let m = kernel.ReceiveFrom(got, &from)
                        Expect.equal (from :?> IPEndPoint) target "the reply comes from the original destination"
                        Expect.sequenceEqual got[0 .. m - 1] reply "the reply"

                        // The same 4-tuple: the same flow.
                        kernel.SendTo([| 7uy |], target) |> ignore
                        let n = wait (flow.ReceiveAsync(buffer.AsMemory()).AsTask())
                        Expect.equal n 1 "second datagram on the flow"

                        // Idle for the timeout: the flow ends.
                        Expect.isTrue (flow.Completion.Wait(TimeSpan.FromSeconds 10.0)) "ended idle"

                        let ended =
                            try
                                flow.ReceiveAsync(buffer.AsMemory()).AsTask().Wait timeout |> ignore
                                None
                            with :? AggregateException as e ->
                                Some e.InnerException

                        match ended with
                        | Some(:? SocketException as s) ->
                            Expect.equal s.SocketErrorCode SocketError.TimedOut "TimedOut"
                        | other -> failtestf "receive on an ended flow: %A" other

                    Expect.isGreaterThanOrEqual stack.Statistics["udp.forward.flow-expired"] 2L "expired")
            }

            test
                "a refused UDP flow: the kernel's connected socket gets ECONNREFUSED; without a forwarder, the stack answers as the host would" {
                withForwardingStack (optionsFor 5) (fun stack ->
                    let target = IPEndPoint(far4 5 9, 7000)

                    use kernel =
                        new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                    kernel.Connect target
                    kernel.ReceiveTimeout <- 10000
                    // No UDP forwarder: a port unreachable from 198.18.5.9 itself.
                    kernel.Send [| 1uy |] |> ignore

                    let refused () =
                        try
                            kernel.Receive(Array.zeroCreate<byte> 16) |> ignore
                            failtest "received something"
                        with :? SocketException as e ->
                            Expect.equal e.SocketErrorCode SocketError.ConnectionRefused "ECONNREFUSED"

                    refused ()
                    use forwarder = stack.ForwardUdp()
                    kernel.Send [| 2uy |] |> ignore
                    let flow = wait (forwarder.AcceptAsync().AsTask())
                    flow.Refuse()
                    refused ()
                    Expect.isTrue flow.Completion.IsCompleted "the refused flow ended")
            }

            test "echo requests to any address: answered by the stack, or by the echo forwarder's decision" {
                withForwardingStack (optionsFor 6) (fun stack ->
                    let ping (target: IPAddress) =
                        Isolation.run "ping" [ "-c"; "1"; "-W"; "5"; string target ]

                    let code, _ = ping (far4 6 10)
                    Expect.equal code 0 "no echo forwarder: the stack answers for 198.18.6.10"
                    use forwarder = stack.ForwardEcho()

                    let serve (decide: EchoRequest -> unit) =
                        Task.Run(fun () ->
                            let request = wait (forwarder.AcceptAsync().AsTask())
                            decide request
                            request)

                    let replying = serve (fun r -> r.Reply())
                    let code, output = ping (far6 6 11)
                    Expect.equal code 0 $"answered by the forwarder's reply: {output}"
                    let request = wait replying
                    Expect.equal request.Destination (far6 6 11) "the address pinged"

                    let refusing = serve (fun r -> r.Refuse ForwardRefusal.HostUnreachable)
                    let code, output = ping (far4 6 12)
                    Expect.notEqual code 0 "no reply"
                    Expect.stringContains output "Destination Host Unreachable" "ping reports the ICMP error"
                    wait refusing |> ignore)
            }

            test
                "hostile traffic is bounded: SYNs to many addresses and datagrams to many ports stop at the caps, and forwarding still works" {
                withForwardingStack (optionsWith 7 30.0 60.0 32 50) (fun stack ->
                    use tcp = stack.ForwardTcp()
                    use udp = stack.ForwardUdp()

                    // 200 connects to different addresses, none decided.
                    let flood =
                        [
                            for i in 1..200 ->
                                let s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)
                                s.Blocking <- false

                                try
                                    s.Connect(far4 7 (1 + i % 250), 1000 + i)
                                with :? SocketException ->
                                    ()

                                s
                        ]

                    use sender =
                        new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                    for port in 1..2000 do
                        sender.SendTo([| 0uy |], IPEndPoint(far4 7 251, port)) |> ignore

                    let deadline = DateTime.UtcNow + timeout

                    while (stack.Statistics["tcp.forward.drop.pending-full"] = 0L
                           || stack.Statistics["udp.forward.drop.flows-full"] = 0L)
                          && DateTime.UtcNow < deadline do
                        Thread.Sleep 50

                    Expect.isGreaterThan
                        stack.Statistics["tcp.forward.drop.pending-full"]
                        0L
                        "SYNs beyond the cap dropped"

                    Expect.isGreaterThan
                        stack.Statistics["udp.forward.drop.flows-full"]
                        0L
                        "flows beyond the cap dropped"

                    Expect.isLessThanOrEqual
                        stack.Statistics["tcp.forward.requested"]
                        232L
                        "at most the cap, plus retransmissions after expiry"

                    for s in flood do
                        s.Dispose()

                    // Refuse every waiting request and take the flows, then a real one works.
                    let drain =
                        Task.Run(fun () ->
                            use cts = new CancellationTokenSource(TimeSpan.FromSeconds 3.0)

                            try
                                while true do
                                    let r = tcp.AcceptAsync(cts.Token).AsTask().Result

                                    if r.LocalEndPoint.Port = 4242 then
                                        use c = r.AcceptAsync().AsTask().Result
                                        c.Write([| 42uy |], 0, 1)
                                    else
                                        r.Refuse ForwardRefusal.Reset
                            with _ ->
                                ())

                    use client =
                        new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                    client.Connect(IPEndPoint(far4 7 252, 4242))
                    let one = Array.zeroCreate<byte> 1
                    client.ReceiveTimeout <- 10000
                    Expect.equal (client.Receive one) 1 "a byte through a fresh forwarded connection"
                    Expect.equal one[0] 42uy "the byte"
                    drain.Wait timeout |> ignore)
            }
        ]
