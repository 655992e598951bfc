/// The DHCPv4 client against dnsmasq (RFC 2131): the stack's TAP is a port of a Linux bridge
/// whose kernel side runs dnsmasq as DHCP server, all inside the runner's private namespace.
/// dnsmasq's own log is the oracle of what the server saw (DISCOVER, REQUESTs, ACKs, DECLINE);
/// the kernel's ping is the oracle of the address being usable.
/// Interfaces ns107t1/br107 (10.107.1.0/24), ns107t2/br107b/ns107v0 and namespace ns107c (10.107.2.0/24).
module NetStack.Tests.Integration.DhcpKernelTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open System.Net
open System.Net.NetworkInformation
open System.Net.Sockets
open System.Text
open System.Threading
open Expecto
open NetStack
open NetStack.Device
open NetStack.Engine
open NetStack.Tests

let private ip (args: string list) =
    let code, output = Isolation.run "ip" args
    Expect.equal code 0 $"ip %A{args}:\n{output}"

/// dnsmasq as DHCP server only (--port=0: no DNS), its log (stderr) collected as it comes.
type Dnsmasq(args: string list) =
    let log = StringBuilder()

    let proc =
        let psi = ProcessStartInfo "dnsmasq"

        for a in
            [
                "--keep-in-foreground"
                "--no-resolv"
                "--no-hosts"
                "-C"
                "/dev/null"
                "--pid-file"
                "--port=0"
                "--bind-interfaces"
                "--dhcp-authoritative"
                "--log-dhcp"
                "--log-facility=-"
            ]
            @ args do
            psi.ArgumentList.Add a

        psi.RedirectStandardOutput <- true
        psi.RedirectStandardError <- true

        let p =
            try
                Process.Start psi
            with :? ComponentModel.Win32Exception as e ->
                failtestf "cannot run dnsmasq (package dnsmasq-base): %s" e.Message

        let add (e: DataReceivedEventArgs) =
            if not (isNull e.Data) then
                lock log (fun () -> log.AppendLine e.Data |> ignore)

        p.ErrorDataReceived.Add add
        p.OutputDataReceived.Add add
        p.BeginErrorReadLine()
        p.BeginOutputReadLine()
        p

    member _.Log = lock log (fun () -> log.ToString())

    /// Lines of the log containing `text`.
    member this.Count(text: string) =
        this.Log.Split('\n')
        |> Array.filter (fun l -> l.Contains(text: string))
        |> Array.length

    member _.Kill() =
        if not proc.HasExited then
            proc.Kill()
            proc.WaitForExit()

    interface IDisposable with
        member this.Dispose() =
            this.Kill()
            proc.Dispose()

let private waitFor (limit: TimeSpan) (what: string) (diagnostics: unit -> string) (f: unit -> bool) =
    let clock = Stopwatch.StartNew()

    while not (f ()) do
        if clock.Elapsed > limit then
            failtestf "%s not within %O\n%s" what limit (diagnostics ())

        Thread.Sleep 100

/// A stack in DHCP mode on TAP `name` (made here, so the test holds the Ethernet adapter), the
/// TAP a port of bridge `bridge` with `hostAddress`/24; `prepare` runs once the bridge is up,
/// before the stack starts (and waits up to `startTimeout` for a lease).
let private withDhcpStack
    (name: string)
    (bridge: string)
    (hostAddress: string)
    (mac: string)
    (startTimeout: TimeSpan)
    (prepare: unit -> Dnsmasq)
    (f: NetworkStack -> EthernetPacketDevice -> Dnsmasq -> unit)
    =
    let options =
        NetStackOptions(
            Mode = NetStackMode.Tap,
            TunName = name,
            Address = null,
            HostAddress = null,
            Address6 = null,
            HostAddress6 = null,
            Dhcp = true,
            DhcpHostName = "netstack-test",
            DhcpStartTimeout = startTimeout,
            MacAddress = PhysicalAddress.Parse mac
        )

    let tap = TunDevice.CreateTap name
    use link = new KernelLink(tap)
    link.SetMtu 1500
    link.SetUp()
    ip [ "link"; "add"; bridge; "type"; "bridge" ]

    try
        ip [ "link"; "set"; name; "master"; bridge ]
        ip [ "addr"; "add"; $"{hostAddress}/24"; "dev"; bridge ]
        ip [ "link"; "set"; bridge; "up" ]

        use dnsmasq = prepare ()

        let adapter =
            new EthernetPacketDevice(new TunPacketDevice(tap), options, null, tap.Name)

        use stack = NetworkStack.Start(options, adapter, tap.Name)
        f stack adapter dnsmasq
        TestUtil.assertNoExceptions stack
    finally
        Isolation.run "ip" [ "link"; "del"; bridge ] |> ignore

let private second = TimeSpan.FromSeconds 1.0

[<Tests>]
let tests =
    testSequenced
    <| testList
        "DHCP with dnsmasq"
        [
            test "Dhcp needs Mode = Tap, no Address, an IPv4 DhcpPreviousAddress and a timeout not negative" {
                let tap (previous: IPAddress) (timeout: TimeSpan) =
                    NetStackOptions(
                        Mode = NetStackMode.Tap,
                        Dhcp = true,
                        Address = null,
                        HostAddress = null,
                        DhcpPreviousAddress = previous,
                        DhcpStartTimeout = timeout
                    )

                for options, what in
                    [
                        NetStackOptions(Dhcp = true, Address = null, HostAddress = null), "Tun mode"
                        NetStackOptions(Mode = NetStackMode.Tap, Dhcp = true), "an Address too"
                        tap IPAddress.IPv6Loopback TimeSpan.Zero, "an IPv6 previous address"
                        tap null (TimeSpan.FromSeconds -1.0), "a negative timeout"
                    ] do
                    use device = new MemoryPacketDevice()

                    Expect.throwsT<ArgumentException> (fun () -> NetworkStack.Start(options, device) |> ignore) what
            }

            test
                "a lease from dnsmasq: the kernel pings it, DNS servers learned, renewed at T1; with the server gone REBINDING at T2, and at expiry the address and its TCP connection go" {
                let leaseFile =
                    Path.Combine(Path.GetTempPath(), $"netstack-dhcp-{Environment.ProcessId}.leases")

                let server () =
                    new Dnsmasq(
                        [
                            "--interface=br107"
                            "--dhcp-range=10.107.1.50,10.107.1.60,255.255.255.0,2m"
                            $"--dhcp-leasefile={leaseFile}"
                            "--dhcp-option=option:router,10.107.1.1"
                            "--dhcp-option=option:dns-server,10.107.1.53,10.107.1.54"
                            "--dhcp-option=option:T1,10"
                            "--dhcp-option=option:T2,20"
                        ]
                    )

                // Start waits for the lease (DhcpStartTimeout): the first DISCOVER within 1 s,
                // retransmitted after 4 ± 1 s; the probe takes at most 1 + 2 + 2 + 2 s (RFC 5227).
                withDhcpStack
                    "ns107t1"
                    "br107"
                    "10.107.1.1"
                    "02-A7-00-00-01-02"
                    (TimeSpan.FromSeconds 20.0)
                    server
                    (fun stack adapter dnsmasq ->
                        let events = ConcurrentQueue<DhcpLeaseChangedEventArgs>()
                        stack.DhcpLeaseChanged.Add events.Enqueue

                        let diagnostics () =
                            $"state {stack.DhcpState}\nstatistics:\n{stack.Statistics}\ndnsmasq:\n{dnsmasq.Log}"

                        Expect.isNotNull stack.DhcpLease $"Start returned with a lease\n{diagnostics ()}"
                        let lease = stack.DhcpLease
                        let address = lease.Address
                        let last = int (address.GetAddressBytes().[3])
                        Expect.isTrue (last >= 50 && last <= 60) $"{address} from the range"
                        Expect.equal lease.PrefixLength 24 "the mask"
                        Expect.sequenceEqual lease.Routers [ IPAddress.Parse "10.107.1.1" ] "option 3"

                        Expect.sequenceEqual
                            lease.DnsServers
                            [ IPAddress.Parse "10.107.1.53"; IPAddress.Parse "10.107.1.54" ]
                            "option 6"

                        Expect.equal lease.Server (IPAddress.Parse "10.107.1.1") "server id"
                        Expect.equal lease.LeaseTime (TimeSpan.FromMinutes 2.0) "dnsmasq's 2 minutes"
                        Expect.equal lease.RenewalTime (10.0 * second) "T1 from option 58"
                        Expect.equal lease.RebindingTime (20.0 * second) "T2 from option 59"

                        Expect.sequenceEqual
                            adapter.LearnedDnsServers
                            [ IPAddress.Parse "10.107.1.53"; IPAddress.Parse "10.107.1.54" ]
                            "LearnedDnsServers from option 6"

                        Expect.equal
                            (dnsmasq.Count $"DHCPACK(br107) {address}")
                            1
                            $"dnsmasq acknowledged once\n{diagnostics ()}"

                        let code, output = Isolation.run "ping" [ "-c"; "1"; "-W"; "5"; string address ]
                        Expect.equal code 0 $"the kernel pings the leased address:\n{output}\n{diagnostics ()}"

                        // A TCP connection from the leased address, to see it go at expiry.
                        use kernel = TestUtil.kernelListener (IPAddress.Parse "10.107.1.1")

                        let connection =
                            stack.ConnectTcpAsync(kernel.LocalEndPoint :?> IPEndPoint).AsTask()
                            |> TestUtil.waitWithin (10.0 * second)

                        use accepted = kernel.Accept()
                        Expect.equal (accepted.RemoteEndPoint :?> IPEndPoint).Address address "from the leased address"

                        // Renewal at T1 (10 s after the REQUEST; the RFC 5227 probe took 3..7 s of them): a
                        // unicast REQUEST dnsmasq acknowledges.
                        waitFor (TimeSpan.FromSeconds 10.0) "a renewal" diagnostics (fun () ->
                            dnsmasq.Count $"DHCPACK(br107) {address}" >= 2)

                        waitFor (2.0 * second) "the renewed lease" diagnostics (fun () ->
                            stack.DhcpState = "Bound" && events.Count >= 1)

                        // The server goes: RENEWING at T1 goes unanswered, REBINDING at T2.
                        dnsmasq.Kill()
                        let killed = Stopwatch.StartNew()

                        waitFor (TimeSpan.FromSeconds 22.0) "REBINDING" diagnostics (fun () ->
                            stack.DhcpState = "Rebinding")

                        // Expiry: 120 s after the last acknowledged REQUEST, a moment before the kill.
                        waitFor (TimeSpan.FromSeconds 125.0) "expiry" diagnostics (fun () -> isNull stack.DhcpLease)

                        Expect.isGreaterThan
                            killed.Elapsed
                            (TimeSpan.FromSeconds 110.0)
                            "not before the lease's 2 minutes ran out"

                        Expect.equal stack.Statistics.["dhcp.lease.expired"] 1L "counted"

                        waitFor (2.0 * second) "the lost lease's event" diagnostics (fun () ->
                            events.ToArray() |> Array.exists (fun e -> isNull (box e.Lease)))

                        let lost = events.ToArray() |> Array.last
                        Expect.isNull (box lost.Lease) "the last event: no lease"
                        Expect.equal lost.PreviousAddress address "the address lost"

                        // The connection on the lost address fails; new IPv4 traffic has no route.
                        let failure =
                            try
                                connection.ReadAsync(Memory(Array.zeroCreate<byte> 16)).AsTask()
                                |> TestUtil.waitWithin (5.0 * second)
                                |> ignore

                                None
                            with :? AggregateException as e ->
                                Some e.InnerException

                        match failure with
                        | Some(:? IOException as e) ->
                            Expect.equal
                                (e.InnerException :?> SocketException).SocketErrorCode
                                SocketError.OperationAborted
                                "the connection's read fails: aborted"
                        | other -> failtestf "the read should fail with an IOException, not %A" other

                        Expect.equal stack.Statistics.["dhcp.tcp.aborted"] 1L "its connection aborted"

                        let unreachable =
                            try
                                stack.ConnectTcpAsync(IPEndPoint(IPAddress.Parse "10.107.1.1", 7)).AsTask()
                                |> TestUtil.waitWithin (5.0 * second)
                                |> ignore

                                None
                            with
                            | :? SocketException as e -> Some e.SocketErrorCode
                            | :? AggregateException as e when (e.InnerException :? SocketException) ->
                                Some (e.InnerException :?> SocketException).SocketErrorCode

                        Expect.equal unreachable (Some SocketError.NetworkUnreachable) "connect without an address"

                        let code, _ = Isolation.run "ping" [ "-c"; "1"; "-W"; "2"; string address ]
                        Expect.notEqual code 0 "the old address no longer answers")

                File.Delete leaseFile
            }

            test "an address another host holds is DECLINEd (RFC 5227 probe) and the stack takes another" {
                let leaseFile =
                    Path.Combine(Path.GetTempPath(), $"netstack-dhcp-decline-{Environment.ProcessId}.leases")

                let ns = "ns107c"
                ip [ "netns"; "add"; ns ]

                try
                    let prepare () =
                        // The other host: 10.107.2.50 in namespace ns107c, on the bridge by a veth.
                        ip
                            [
                                "link"
                                "add"
                                "ns107v0"
                                "type"
                                "veth"
                                "peer"
                                "name"
                                "ns107v1"
                                "netns"
                                ns
                            ]

                        ip [ "link"; "set"; "ns107v0"; "master"; "br107b"; "up" ]
                        ip [ "-n"; ns; "addr"; "add"; "10.107.2.50/24"; "dev"; "ns107v1" ]
                        ip [ "-n"; ns; "link"; "set"; "ns107v1"; "up" ]
                        ip [ "-n"; ns; "link"; "set"; "lo"; "up" ]

                        // dnsmasq offers .50 to the stack's MAC (and does not ping first).
                        new Dnsmasq(
                            [
                                "--interface=br107b"
                                "--dhcp-range=10.107.2.60,10.107.2.70,255.255.255.0,2m"
                                "--dhcp-host=02:a7:00:00:02:02,10.107.2.50"
                                "--no-ping"
                                $"--dhcp-leasefile={leaseFile}"
                            ]
                        )

                    withDhcpStack
                        "ns107t2"
                        "br107b"
                        "10.107.2.1"
                        "02-A7-00-00-02-02"
                        TimeSpan.Zero
                        prepare
                        (fun stack _ dnsmasq ->
                            let diagnostics () =
                                $"state {stack.DhcpState}\nstatistics:\n{stack.Statistics}\ndnsmasq:\n{dnsmasq.Log}"

                            waitFor (TimeSpan.FromSeconds 20.0) "a DECLINE" diagnostics (fun () ->
                                dnsmasq.Count "DHCPDECLINE(br107b) 10.107.2.50" = 1)

                            Expect.equal stack.Statistics.["dhcp.decline.sent"] 1L "one DECLINE"
                            Expect.isGreaterThanOrEqual stack.Statistics.["dhcp.conflict"] 1L "the conflict seen"
                            Expect.isNull stack.DhcpLease "no lease yet"

                            // 10 s later (RFC 2131 §3.1.5) a new DISCOVER; dnsmasq gives one from the range.
                            waitFor (TimeSpan.FromSeconds 30.0) "another lease" diagnostics (fun () ->
                                not (isNull stack.DhcpLease))

                            let address = stack.DhcpLease.Address
                            let last = int (address.GetAddressBytes().[3])
                            Expect.isTrue (last >= 60 && last <= 70) $"{address} from the range"

                            let code, output =
                                Isolation.run
                                    "ip"
                                    [ "netns"; "exec"; ns; "ping"; "-c"; "1"; "-W"; "5"; string address ]

                            Expect.equal code 0 $"the other host pings the new address:\n{output}\n{diagnostics ()}")
                finally
                    Isolation.run "ip" [ "netns"; "del"; ns ] |> ignore
                    File.Delete leaseFile
            }
        ]
