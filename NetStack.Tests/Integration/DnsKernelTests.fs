/// The stub resolver against a real DNS server: dnsmasq (package dnsmasq-base) in the test's
/// namespace on a loopback address 10.253.N.53 that the stack reaches through its TUN link,
/// with static A/AAAA/CNAME records, a local domain (so unknown names are NXDOMAIN), a name with
/// 40 addresses (an answer over 512 bytes: TC over UDP, then TCP), a silent server (a kernel
/// UDP socket that never answers), Happy Eyeballs against kernel listeners (the AAAA address
/// blackholed: the kernel drops packets to an address it does not own, forwarding off),
/// HttpClient and the CLI by name. Test N: TUN nsdnsN, 10.131.N.0/24, fd31:N::/64.
module NetStack.Tests.Integration.DnsKernelTests

open System
open System.Diagnostics
open System.Net
open System.Net.Sockets
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open NetStack
open NetStack.Tests
open NetStack.Tests.Integration.CliTests

let private serverAddress (n: int) = IPAddress.Parse $"10.253.{n}.53"
let private silentAddress (n: int) = IPAddress.Parse $"10.253.{n}.54"
let private host4 (n: int) = IPAddress.Parse $"10.131.{n}.1"
let private host6 (n: int) = IPAddress.Parse $"fd31:{n}::1"

let private optionsFor (n: int) (servers: IPAddress list) =
    NetStackOptions(
        TunName = $"nsdns{n}",
        Address = IPAddress.Parse $"10.131.{n}.2",
        HostAddress = host4 n,
        Address6 = IPAddress.Parse $"fd31:{n}::2",
        HostAddress6 = host6 n,
        DnsServers = Collections.Generic.List<IPAddress>(servers)
    )

let private ip (args: string list) =
    let code, output = Isolation.run "ip" args
    Expect.equal code 0 $"ip %A{args}:\n{output}"

/// An address on lo for the test's servers (removed by the disposable).
let private loopbackAddress (address: IPAddress) =
    ip [ "addr"; "add"; $"{address}/32"; "dev"; "lo" ]

    { new IDisposable with
        member _.Dispose() =
            Isolation.run "ip" [ "addr"; "del"; $"{address}/32"; "dev"; "lo" ] |> ignore
    }

/// dnsmasq on 10.253.N.53:53 (UDP and TCP) with test N's records; killed (by its process) when
/// disposed. TTL of local records 300 s (dnsmasq's default is 0, which would defeat the cache).
let private dnsmasq (n: int) =
    let address = loopbackAddress (serverAddress n)
    let psi = ProcessStartInfo "dnsmasq"

    for a in
        [
            "--keep-in-foreground"
            "--no-resolv"
            "--no-hosts"
            "-C"
            "/dev/null"
            "--pid-file"
            "--bind-interfaces"
            $"--listen-address={serverAddress n}"
            "--port=53"
            "--local=/dns.test/"
            "--local-ttl=300"
            $"--host-record=web.dns.test,{host4 n},{host6 n}"
            $"--host-record=v4only.dns.test,{host4 n}"
            $"--host-record=black.dns.test,{host4 n},fd31:{n}::99"
            $"--host-record=unreachable.dns.test,{host4 n},fd31:{n}::98"
            "--cname=alias.dns.test,web.dns.test"
            "--log-queries"
            "--log-facility=-"
        ]
        @ [ for i in 1..40 -> $"--host-record=big.dns.test,10.99.0.{i}" ] do
        psi.ArgumentList.Add a

    psi.RedirectStandardOutput <- true
    psi.RedirectStandardError <- true

    let p =
        try
            Process.Start psi
        with :? ComponentModel.Win32Exception as e ->
            failtestf "cannot run dnsmasq (package dnsmasq-base): %s" e.Message

    let log = p.StandardError.ReadToEndAsync()
    p.StandardOutput.ReadToEndAsync() |> ignore
    // Up once its TCP port takes connections.
    let deadline = DateTime.UtcNow.AddSeconds 10.
    let mutable up = false

    while not up && DateTime.UtcNow < deadline && not p.HasExited do
        use probe =
            new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

        try
            probe.Connect(IPEndPoint(serverAddress n, 53))
            up <- true
        with :? SocketException ->
            Thread.Sleep 20

    if not up then
        failtestf "dnsmasq did not start: %s" (if p.HasExited then log.Result else "no TCP port")

    { new IDisposable with
        member _.Dispose() =
            if not p.HasExited then
                p.Kill()

            p.WaitForExit()
            p.Dispose()
            address.Dispose()
    }

/// A kernel HTTP server on [::]:port (dual mode) answering "hello from the kernel" to every
/// request; the remote endpoints it saw. Stops when `cancel` fires.
let private httpServer (cancel: CancellationToken) =
    let listener =
        new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp)

    listener.DualMode <- true
    listener.Bind(IPEndPoint(IPAddress.IPv6Any, 0))
    listener.Listen 16
    let seen = Collections.Concurrent.ConcurrentQueue<IPEndPoint>()

    let serve () =
        task {
            try
                while true do
                    let! client = listener.AcceptAsync cancel
                    seen.Enqueue(client.RemoteEndPoint :?> IPEndPoint)
                    use stream = new NetworkStream(client, true)
                    let buffer = Array.zeroCreate 4096
                    let request = StringBuilder()

                    while not (request.ToString().Contains "\r\n\r\n") do
                        let! n = stream.ReadAsync(buffer, 0, buffer.Length, cancel)

                        if n = 0 then
                            request.Append "\r\n\r\n" |> ignore
                        else
                            request.Append(Encoding.ASCII.GetString(buffer, 0, n)) |> ignore

                    let body = "hello from the kernel"

                    let response =
                        $"HTTP/1.1 200 OK\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n{body}"

                    do! stream.WriteAsync(Encoding.ASCII.GetBytes response, cancel)
            with
            | :? OperationCanceledException -> ()
            | :? SocketException -> ()
            | :? ObjectDisposedException -> ()
        }

    serve () |> ignore
    listener, seen

let private resolve (stack: NetworkStack) (name: string) (family: AddressFamily) =
    stack.ResolveAsync(name, family).AsTask()
    |> TestUtil.waitWithin (TimeSpan.FromSeconds 15.)

let private resolveError (stack: NetworkStack) (name: string) (family: AddressFamily) =
    try
        resolve stack name family |> ignore
        failtestf "%s resolved" name
    with :? AggregateException as e ->
        match e.InnerException with
        | :? SocketException as s -> s
        | other -> failtestf "expected a SocketException, got %O" other

let private counter (stack: NetworkStack) (name: string) = stack.Statistics.[name]

// A standard query for big.dns.test A, ID 0xbeef, RD, written out here (RFC 1035 §4.1) so the
// check that dnsmasq truncates does not rely on the stack's codec.
let private bigQuery =
    TestUtil.hex "beef 0100 0001 0000 0000 0000 03 626967 03 646e73 04 74657374 00 0001 0001"

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Dns with dnsmasq"
        [
            test "A, AAAA and CNAME records from dnsmasq, in RFC 6724 order; the second ask comes from the cache" {
                use _ = dnsmasq 1

                TestUtil.withStackOf (optionsFor 1 [ serverAddress 1 ]) (fun stack ->
                    Expect.equal (List.ofSeq stack.DnsServers) [ serverAddress 1 ] "servers in effect"
                    // fd31:1::1 is in our ULA /48 (precedence 45 > IPv4's 35).
                    Expect.equal
                        (resolve stack "web.dns.test" AddressFamily.Unspecified)
                        [| host6 1; host4 1 |]
                        "both, IPv6 first"

                    Expect.equal
                        (resolve stack "alias.dns.test" AddressFamily.InterNetwork)
                        [| host4 1 |]
                        "through the CNAME"

                    Expect.equal
                        (resolve stack "WEB.Dns.Test." AddressFamily.InterNetworkV6)
                        [| host6 1 |]
                        "AAAA, any case"

                    let sent = counter stack "dns.query.sent"
                    Expect.equal (resolve stack "web.dns.test" AddressFamily.InterNetwork) [| host4 1 |] "again"
                    Expect.equal (counter stack "dns.query.sent") sent "nothing sent: cached"
                    Expect.isGreaterThan (counter stack "dns.cache.hit") 0L "cache hit counted"

                    Expect.equal
                        (resolve stack "10.1.2.3" AddressFamily.Unspecified)
                        [| IPAddress.Parse "10.1.2.3" |]
                        "a literal"

                    Expect.equal
                        (resolve stack "localhost" AddressFamily.InterNetwork)
                        [| IPAddress.Loopback |]
                        "localhost"

                    Expect.equal (counter stack "dns.drop.wrong-source") 0L "nothing ignored")
            }

            test "NXDOMAIN is HostNotFound, a name without AAAA is NoData, as .NET's Dns reports them" {
                use _ = dnsmasq 2

                TestUtil.withStackOf (optionsFor 2 [ serverAddress 2 ]) (fun stack ->
                    let nx = resolveError stack "nothere.dns.test" AddressFamily.Unspecified
                    Expect.equal nx.SocketErrorCode SocketError.HostNotFound "NXDOMAIN"
                    let nodata = resolveError stack "v4only.dns.test" AddressFamily.InterNetworkV6
                    Expect.equal nodata.SocketErrorCode SocketError.NoData "no AAAA"
                    Expect.equal (resolve stack "v4only.dns.test" AddressFamily.Unspecified) [| host4 2 |] "A only")

                // Without servers: HostNotFound saying what to set.
                TestUtil.withStackOf (optionsFor 2 []) (fun stack ->
                    let e = resolveError stack "web.dns.test" AddressFamily.Unspecified
                    Expect.equal e.SocketErrorCode SocketError.HostNotFound "no servers"
                    Expect.stringContains e.Message "DnsServers" "says what to set")
            }

            test "an answer over 512 bytes comes truncated over UDP (checked by hand), then whole over TCP" {
                use _ = dnsmasq 3
                // The kernel's own UDP socket asks dnsmasq directly: TC must be set.
                use raw = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)
                raw.ReceiveTimeout <- 5000
                raw.SendTo(bigQuery, IPEndPoint(serverAddress 3, 53)) |> ignore
                let reply = Array.zeroCreate<byte> 4096
                let n = raw.Receive reply
                Expect.equal (reply.[0], reply.[1]) (0xbeuy, 0xefuy) "our ID"
                Expect.isTrue (reply.[2] &&& 0x02uy <> 0uy) "dnsmasq set TC"
                Expect.isLessThanOrEqual n 512 "within 512 bytes"

                TestUtil.withStackOf (optionsFor 3 [ serverAddress 3 ]) (fun stack ->
                    let addresses = resolve stack "big.dns.test" AddressFamily.InterNetwork

                    Expect.equal
                        (addresses |> Array.map string |> Set.ofArray)
                        (set [ for i in 1..40 -> $"10.99.0.{i}" ])
                        "all 40 addresses"

                    Expect.equal (counter stack "dns.truncated") 1L "one truncated answer"
                    Expect.isGreaterThanOrEqual (counter stack "tcp.sent") 3L "a TCP exchange")
            }

            test
                "a silent first server: the second answers after the 2 s timeout; only silent servers: TryAgain after 2 + 4 s" {
                use _ = dnsmasq 4
                use _ = loopbackAddress (silentAddress 4)
                // Takes the queries and never answers (no ICMP port unreachable either).
                use silent =
                    new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                silent.Bind(IPEndPoint(silentAddress 4, 53))

                TestUtil.withStackOf (optionsFor 4 [ silentAddress 4; serverAddress 4 ]) (fun stack ->
                    let clock = Stopwatch.StartNew()

                    Expect.equal
                        (resolve stack "web.dns.test" AddressFamily.InterNetwork)
                        [| host4 4 |]
                        "answered by the second"

                    let elapsed = clock.Elapsed.TotalSeconds
                    printfn "measured: answer from the second server after %.3f s" elapsed
                    Expect.isGreaterThanOrEqual elapsed 2.0 "not before the first timeout"
                    Expect.isLessThan elapsed 2.5 "soon after it"
                    Expect.equal (counter stack "dns.timeout") 1L "one timeout")

                TestUtil.withStackOf (optionsFor 4 [ silentAddress 4 ]) (fun stack ->
                    let clock = Stopwatch.StartNew()
                    let e = resolveError stack "web.dns.test" AddressFamily.InterNetwork
                    let elapsed = clock.Elapsed.TotalSeconds
                    printfn "measured: TryAgain after %.3f s" elapsed
                    Expect.equal e.SocketErrorCode SocketError.TryAgain "TryAgain"
                    Expect.isGreaterThanOrEqual elapsed 6.0 "2 s, then 4 s"
                    Expect.isLessThan elapsed 6.5 "then gives up"
                    Expect.equal (counter stack "dns.timeout") 2L "two timeouts")
            }

            test
                "Happy Eyeballs: both reachable, IPv6 wins; AAAA blackholed, IPv4 wins after 250 ms; AAAA unreachable, IPv4 at once" {
                use _ = dnsmasq 5
                // fd31:5::99 is dropped without a word (a blackhole route); fd31:5::98 has no
                // route, so the kernel answers ICMPv6 destination unreachable.
                ip [ "-6"; "route"; "add"; "blackhole"; "fd31:5::99/128" ]

                use _ =
                    { new IDisposable with
                        member _.Dispose() =
                            Isolation.run "ip" [ "-6"; "route"; "del"; "blackhole"; "fd31:5::99/128" ]
                            |> ignore
                    }

                use cancel = new CancellationTokenSource()
                let listener, _ = httpServer cancel.Token
                use _ = listener
                let port = (listener.LocalEndPoint :?> IPEndPoint).Port

                TestUtil.withStackOf (optionsFor 5 [ serverAddress 5 ]) (fun stack ->
                    let connect name =
                        stack.ConnectTcpAsync(DnsEndPoint(name, port)).AsTask()
                        |> TestUtil.waitWithin (TimeSpan.FromSeconds 10.)

                    // Resolve first so that the timing below is the race only.
                    resolve stack "black.dns.test" AddressFamily.Unspecified |> ignore
                    resolve stack "unreachable.dns.test" AddressFamily.Unspecified |> ignore
                    resolve stack "web.dns.test" AddressFamily.Unspecified |> ignore

                    use both = connect "web.dns.test"
                    Expect.equal both.RemoteEndPoint.Address (host6 5) "IPv6"

                    let clock = Stopwatch.StartNew()
                    use black = connect "black.dns.test"
                    let elapsed = clock.Elapsed.TotalMilliseconds
                    printfn "measured: IPv4 connected after %.1f ms (AAAA blackholed)" elapsed
                    Expect.equal black.RemoteEndPoint.Address (host4 5) "IPv4"
                    Expect.isGreaterThanOrEqual elapsed 250.0 "after the connection attempt delay"
                    Expect.isLessThan elapsed 400.0 "and soon after it"

                    // RFC 8305 §5: a failed attempt starts the next one at once.
                    let clock = Stopwatch.StartNew()
                    use unreachable = connect "unreachable.dns.test"
                    let elapsed = clock.Elapsed.TotalMilliseconds
                    printfn "measured: IPv4 connected after %.1f ms (AAAA unreachable)" elapsed
                    Expect.equal unreachable.RemoteEndPoint.Address (host4 5) "IPv4"
                    Expect.isLessThan elapsed 250.0 "before the connection attempt delay"
                    Expect.equal (counter stack "tcp.icmp.error") 1L "the ICMPv6 error ended the IPv6 attempt"
                    cancel.Cancel())
            }

            test "HttpClient fetches by name through the stack's resolver" {
                use _ = dnsmasq 6
                use cancel = new CancellationTokenSource()
                let listener, seen = httpServer cancel.Token
                use _ = listener
                let port = (listener.LocalEndPoint :?> IPEndPoint).Port

                TestUtil.withStackOf (optionsFor 6 [ serverAddress 6 ]) (fun stack ->
                    use client = stack.CreateHttpClient()

                    let body =
                        client.GetStringAsync($"http://alias.dns.test:{port}/")
                        |> TestUtil.waitWithin (TimeSpan.FromSeconds 10.)

                    Expect.equal body "hello from the kernel" "body"
                    let from = seen |> Seq.head
                    Expect.equal from.Address (IPAddress.Parse "fd31:6::2") "the stack's IPv6 address connected"

                    let failure =
                        try
                            client.GetStringAsync($"http://nothere.dns.test:{port}/")
                            |> TestUtil.waitWithin (TimeSpan.FromSeconds 10.)
                            |> ignore

                            None
                        with :? AggregateException as e ->
                            match e.InnerException with
                            | :? Net.Http.HttpRequestException as h -> Some h
                            | _ -> None

                    match failure with
                    | Some h ->
                        match h.InnerException with
                        | :? SocketException as s -> Expect.equal s.SocketErrorCode SocketError.HostNotFound "NXDOMAIN"
                        | other -> failtestf "inner %O" other
                    | None -> failtest "expected an HttpRequestException"

                    cancel.Cancel())
            }

            test "netstack get and ping take host names with --dns" {
                use _ = dnsmasq 7
                use cancel = new CancellationTokenSource()
                let listener, _ = httpServer cancel.Token
                use _ = listener
                let port = (listener.LocalEndPoint :?> IPEndPoint).Port

                let link =
                    [
                        "--tun"
                        "nsdns7"
                        "--ip"
                        "10.131.7.2"
                        "--host-ip"
                        "10.131.7.1"
                        "--ip6"
                        "none"
                    ]

                let code, out, err =
                    runNetstack
                        (TimeSpan.FromSeconds 30.)
                        ([ "get"; $"http://web.dns.test:{port}/"; "--dns"; "10.253.7.53" ] @ link)

                Expect.equal code 0 $"get exit status; stderr: {err}"
                Expect.equal out "hello from the kernel" "body on stdout"

                let code, out, err =
                    runNetstack
                        (TimeSpan.FromSeconds 30.)
                        ([ "ping"; "web.dns.test"; "-c"; "1"; "--dns"; "10.253.7.53" ] @ link)

                Expect.equal code 0 $"ping exit status; stderr: {err}"
                Expect.stringContains out "PING web.dns.test (10.131.7.1)" "resolved"
                Expect.stringContains out "1 received" "a reply"

                let code, _, err =
                    runNetstack
                        (TimeSpan.FromSeconds 30.)
                        ([ "get"; $"http://nothere.dns.test:{port}/"; "--dns"; "10.253.7.53" ] @ link)

                Expect.equal code 1 "NXDOMAIN fails"
                Expect.stringContains err "HostNotFound" "says why"

                let code, _, err =
                    runNetstack (TimeSpan.FromSeconds 30.) ([ "get"; $"http://web.dns.test:{port}/" ] @ link)

                Expect.equal code 1 "no --dns"
                Expect.stringContains err "--dns" "says what to give"
                cancel.Cancel()
            }
        ]
