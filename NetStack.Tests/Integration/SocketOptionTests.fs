/// Per-socket options and everyday socket calls against the kernel: what each option puts on the
/// wire is read back by tcpdump (TTL, DSCP, DF, RST vs FIN, window, probes), and where the kernel
/// has the same option its own sockets show what Linux does (the RST of linger 0, bind conflicts).
module NetStack.Tests.Integration.SocketOptionTests

open System
open System.IO
open System.Net
open System.Net.Sockets
open System.Threading.Tasks
open Expecto
open NetStack
open NetStack.Tests

/// Each test gets its own interface and subnet (10.171.N.0/24, fdab:N::/64).
let private optionsFor (n: int) =
    NetStackOptions(
        TunName = $"ns171k{n}",
        Address = IPAddress.Parse $"10.171.{n}.2",
        HostAddress = IPAddress.Parse $"10.171.{n}.1",
        Address6 = IPAddress.Parse $"fdab:{n}::2",
        HostAddress6 = IPAddress.Parse $"fdab:{n}::1"
    )

let private timeout = TimeSpan.FromSeconds 30.0

let private wait (task: Task<'T>) = TestUtil.waitWithin timeout task

/// The packets of a capture that match `filter`, one line each with tcpdump -v's IP header
/// details (tos, ttl, flags; IPv6 class and hlim) joined to the transport line.
let private verbose (file: string) (filter: string) =
    let _, output = Isolation.run "tcpdump" [ "-n"; "-v"; "-r"; file; filter ]
    let lines = Collections.Generic.List<string>()

    for l in output.Split('\n') do
        if (l.StartsWith " " || l.StartsWith "\t") && lines.Count > 0 then
            lines[lines.Count - 1] <- lines[lines.Count - 1] + " " + l.Trim()
        elif l.Length > 0 && not (l.StartsWith "reading from") then
            lines.Add l

    List.ofSeq lines

let private capture (dev: string) =
    let file = Path.Combine(Path.GetTempPath(), $"sockopt-{Guid.NewGuid():N}.pcap")
    file, Capture.start [] dev file

let private exchange (connection: TcpConnection) (peer: Socket) =
    connection.Write(Array.create 3000 1uy, 0, 3000)
    let buffer = Array.zeroCreate<byte> 4000
    let mutable got = 0

    while got < 3000 do
        got <- got + peer.Receive(buffer, got, 4000 - got, SocketFlags.None)

    peer.Send(Array.create 100 2uy) |> ignore
    let mutable back = 0

    while back < 100 do
        back <- back + connection.Read(buffer, 0, 4000)

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Socket options"
        [
            test
                "TCP Ttl, TypeOfService and DontFragment given before connect are in every segment the stack sends (tcpdump), IPv4 and IPv6; the defaults are TTL 64, TOS 0, DF" {
                let options = optionsFor 1

                TestUtil.withStackOf options (fun stack ->
                    for kernelAddress, stackAddress in
                        [ options.HostAddress, options.Address; options.HostAddress6, options.Address6 ] do
                        let file, tcpdump = capture options.TunName
                        use server = TestUtil.kernelListener kernelAddress
                        let remote = server.LocalEndPoint :?> IPEndPoint
                        // With options, then without: the second connection shows the defaults.
                        let socketOptions =
                            TcpSocketOptions(
                                Ttl = Nullable 7s,
                                TypeOfService = Nullable 0xB8,
                                DontFragment = Nullable false
                            )

                        let ports =
                            [ socketOptions; null ]
                            |> List.map (fun o ->
                                let incoming = server.AcceptAsync()
                                let connection = wait (stack.ConnectTcpAsync(remote, o).AsTask())
                                use peer = wait incoming

                                if not (isNull o) then
                                    Expect.equal connection.Ttl 7s "Ttl reads back"
                                    Expect.equal connection.TypeOfService 0xB8 "TypeOfService reads back"
                                    Expect.isFalse connection.DontFragment "DontFragment reads back"
                                else
                                    Expect.equal connection.Ttl 64s "default Ttl"
                                    Expect.isTrue connection.DontFragment "default DontFragment"

                                exchange connection peer
                                connection.DisposeAsync().AsTask().Wait timeout |> ignore
                                connection.LocalEndPoint.Port)

                        let stackSide port =
                            $"tcp and src host {stackAddress} and src port {port}"

                        Capture.awaitPackets file (stackSide ports[1] + " and tcp[tcpflags] & tcp-fin != 0")
                        Capture.stop tcpdump
                        let withOptions = verbose file (stackSide ports[0])
                        let defaults = verbose file (stackSide ports[1])
                        File.Delete file
                        Expect.isGreaterThanOrEqual withOptions.Length 4 "SYN, data, FIN and ACKs seen"
                        Expect.isGreaterThanOrEqual defaults.Length 4 "SYN, data, FIN and ACKs seen"

                        if kernelAddress.AddressFamily = AddressFamily.InterNetwork then
                            for line in withOptions do
                                Expect.stringContains line "tos 0xb8," "DSCP 46 (EF), ECN Not-ECT"
                                Expect.stringContains line "ttl 7," "TTL 7"
                                Expect.stringContains line "flags [none]" "no DF"

                            for line in defaults do
                                Expect.stringContains line "tos 0x0," "TOS 0"
                                Expect.stringContains line "ttl 64," "TTL 64"
                                Expect.stringContains line "flags [DF]" "DF"
                        else
                            for line in withOptions do
                                Expect.stringContains line "class 0xb8," "traffic class 0xb8"
                                Expect.stringContains line "hlim 7," "hop limit 7"

                            for line in defaults do
                                Expect.isFalse (line.Contains "class 0x") "traffic class 0"
                                Expect.stringContains line "hlim 64," "hop limit 64")
            }

            test
                "a listener's Ttl and TypeOfService are on its SYN,ACK and inherited by accepted connections; set on a connection later, its next segments carry the new value" {
                let options = optionsFor 2

                TestUtil.withStackOf options (fun stack ->
                    let file, tcpdump = capture options.TunName

                    use listener =
                        stack.ListenTcp(
                            IPEndPoint(IPAddress.Any, 0),
                            TcpSocketOptions(Ttl = Nullable 9s, TypeOfService = Nullable 0x28)
                        )

                    Expect.equal listener.Ttl 9s "the listener's Ttl"
                    let accepted = listener.AcceptAsync().AsTask()

                    use peer =
                        new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                    peer.Connect(IPEndPoint(options.Address, listener.LocalEndPoint.Port))
                    let connection = wait accepted
                    Expect.equal connection.Ttl 9s "inherited Ttl"
                    Expect.equal connection.TypeOfService 0x28 "inherited TypeOfService"
                    exchange connection peer
                    connection.Ttl <- 33s
                    connection.Write(Array.create 10 3uy, 0, 10)
                    let buffer = Array.zeroCreate<byte> 10
                    let mutable got = 0

                    while got < 10 do
                        got <- got + peer.Receive(buffer, got, 10 - got, SocketFlags.None)

                    let stackSide =
                        $"tcp and src host {options.Address} and src port {listener.LocalEndPoint.Port}"

                    Capture.awaitPackets file (stackSide + " and ip[8] = 33")
                    Capture.stop tcpdump
                    let lines = verbose file stackSide
                    File.Delete file
                    let synAck = lines |> List.find (fun l -> l.Contains "Flags [S.]")
                    Expect.stringContains synAck "ttl 9," "the SYN,ACK has the listener's TTL"
                    Expect.stringContains synAck "tos 0x28," "and its TOS"
                    let last = lines |> List.filter (fun l -> l.Contains "length 10")
                    Expect.isNonEmpty last "the 10-byte segment"

                    for l in last do
                        Expect.stringContains l "ttl 33," "sent after the change: TTL 33"
                        Expect.stringContains l "tos 0x28," "TOS unchanged"

                    connection.DisposeAsync().AsTask().Wait timeout |> ignore)
            }

            test
                "LingerState (true, 0): dispose resets with the connection's TTL and sends no FIN, as a kernel socket's close does" {
                let options = optionsFor 3
                // The kernel first, on loopback: its close with linger 0 sends a RST (no FIN) with the
                // socket's own TTL.
                let loFile, loDump = capture "lo"
                use kernelServer = TestUtil.kernelListener IPAddress.Loopback
                let kernelIncoming = kernelServer.AcceptAsync()

                let kernelClient =
                    new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                kernelClient.Ttl <- 5s
                kernelClient.LingerState <- LingerOption(true, 0)
                kernelClient.Connect(kernelServer.LocalEndPoint)
                use _kernelPeer = wait kernelIncoming
                let kernelPort = (kernelClient.LocalEndPoint :?> IPEndPoint).Port
                kernelClient.Dispose()
                let kernelSide = $"tcp and src port {kernelPort}"
                Capture.awaitPackets loFile (kernelSide + " and tcp[tcpflags] & tcp-rst != 0")
                Capture.stop loDump
                let kernelLines = verbose loFile kernelSide
                File.Delete loFile
                let kernelRst = kernelLines |> List.filter (fun l -> l.Contains "Flags [R")
                Expect.isNonEmpty kernelRst "the kernel reset"
                Expect.stringContains kernelRst.Head "ttl 5," "the kernel's RST has the socket's TTL"
                Expect.isFalse (kernelLines |> List.exists (fun l -> l.Contains "Flags [F")) "the kernel sent no FIN"

                TestUtil.withStackOf options (fun stack ->
                    let file, tcpdump = capture options.TunName
                    use server = TestUtil.kernelListener options.HostAddress
                    let incoming = server.AcceptAsync()

                    let connection =
                        wait (
                            stack
                                .ConnectTcpAsync(
                                    server.LocalEndPoint :?> IPEndPoint,
                                    TcpSocketOptions(Ttl = Nullable 5s, LingerState = LingerOption(true, 0))
                                )
                                .AsTask()
                        )

                    use peer = wait incoming
                    exchange connection peer
                    Expect.equal connection.LingerState.Enabled true "linger on"
                    connection.DisposeAsync().AsTask().Wait timeout |> ignore
                    let buffer = Array.zeroCreate<byte> 10

                    peer.ReceiveTimeout <- 10000

                    let error =
                        try
                            peer.Receive buffer |> ignore
                            SocketError.Success
                        with :? SocketException as e ->
                            e.SocketErrorCode

                    Expect.equal error SocketError.ConnectionReset "the peer's read sees the reset"

                    let stackSide =
                        $"tcp and src host {options.Address} and src port {connection.LocalEndPoint.Port}"

                    Capture.awaitPackets file (stackSide + " and tcp[tcpflags] & tcp-rst != 0")
                    Capture.stop tcpdump
                    let lines = verbose file stackSide
                    File.Delete file
                    let rst = lines |> List.filter (fun l -> l.Contains "Flags [R")
                    Expect.isNonEmpty rst "the stack's reset"
                    Expect.stringContains rst.Head "ttl 5," "the RST has the connection's TTL, as the kernel's"
                    Expect.isFalse (lines |> List.exists (fun l -> l.Contains "Flags [F")) "no FIN")
            }
        ]
