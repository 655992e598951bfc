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

/// python3 with plain kernel sockets on loopback: for a socket a holding a port (connected,
/// TIME-WAIT after its active close, listening) with or without SO_REUSEADDR, whether a socket b
/// with or without it can bind the port ("conn-1-0 EADDRINUSE": a with, b without).
let private bindOracle =
    """
import socket, errno, time
def case(state, a_reuse, b_reuse):
    srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(8)
    a = socket.socket()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, a_reuse)
    a.bind(('127.0.0.1', 0)); port = a.getsockname()[1]
    if state == 'listen':
        a.listen(1)
    else:
        a.connect(srv.getsockname()); c, _ = srv.accept()
        if state == 'tw':
            a.close(); c.recv(1); c.close(); time.sleep(0.2)
    b = socket.socket()
    b.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, b_reuse)
    try:
        b.bind(('127.0.0.1', port)); r = 'ok'
    except OSError as e:
        r = errno.errorcode[e.errno]
    print(f'{state}-{a_reuse}-{b_reuse} {r}')
for state in ['conn', 'tw', 'listen']:
    for a_reuse in [0, 1]:
        for b_reuse in [0, 1]:
            case(state, a_reuse, b_reuse)
"""

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
                "accepted connections take the listener's options when accepted: a later change on one connection or on the listener leaves the others as they were, as with kernel sockets" {
                // The same steps on a kernel listener (the oracle) and on the stack's: Ttl 9 on
                // the listener, two connections accepted, 33 set on the first, 77 on the
                // listener, a third accepted; then the three connections' Ttl.
                let kernelTtls =
                    use listener =
                        new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                    listener.Ttl <- 9s
                    listener.Bind(IPEndPoint(IPAddress.Loopback, 0))
                    listener.Listen 8

                    let accept () =
                        let client =
                            new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                        client.Connect(listener.LocalEndPoint)
                        client, listener.Accept()

                    let c1, a = accept ()
                    let c2, b = accept ()
                    a.Ttl <- 33s
                    listener.Ttl <- 77s
                    let c3, c = accept ()
                    let ttls = a.Ttl, b.Ttl, c.Ttl

                    for s in [ c1; c2; c3; a; b; c ] do
                        s.Dispose()

                    ttls

                Expect.equal kernelTtls (33s, 9s, 77s) "the kernel's accepted sockets"
                let options = optionsFor 13

                TestUtil.withStackOf options (fun stack ->
                    use listener =
                        stack.ListenTcp(IPEndPoint(IPAddress.Any, 0), TcpSocketOptions(Ttl = Nullable 9s))

                    let peers = Collections.Generic.List<Socket>()

                    let accept () =
                        let accepted = listener.AcceptAsync().AsTask()

                        let peer =
                            new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                        peers.Add peer
                        peer.Connect(IPEndPoint(options.Address, listener.LocalEndPoint.Port))
                        wait accepted

                    let a = accept ()
                    let b = accept ()
                    a.Ttl <- 33s
                    listener.Ttl <- 77s
                    let c = accept ()
                    Expect.equal (a.Ttl, b.Ttl, c.Ttl) kernelTtls "the stack's accepted connections, as the kernel's"

                    for connection in [ a; b; c ] do
                        connection.Dispose()

                    for peer in peers do
                        peer.Dispose())
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

            test
                "LingerState (true, N): DisposeAsync waits for the peer's ACK of data and FIN, at most N seconds, and the close goes on in the background, as a kernel socket's close does" {
                // The peer reads nothing until the close returned, through a small receive buffer, so
                // 200 KB cannot be acknowledged within the second. The kernel first, on loopback.
                let payload = Array.init 200_000 (fun i -> byte (i * 7 + i / 256))

                let readAll (peer: Socket) =
                    use back = new MemoryStream()
                    let buffer = Array.zeroCreate<byte> 65536
                    peer.ReceiveTimeout <- 20000
                    let mutable n = peer.Receive buffer

                    while n > 0 do
                        back.Write(buffer, 0, n)
                        n <- peer.Receive buffer

                    back.ToArray()

                let slowListener (address: IPAddress) =
                    let listener =
                        new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp)

                    listener.ReceiveBufferSize <- 4096
                    listener.Bind(IPEndPoint(address, 0))
                    listener.Listen 4
                    listener

                use kernelServer = slowListener IPAddress.Loopback
                let kernelIncoming = kernelServer.AcceptAsync()

                let kernelClient =
                    new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                kernelClient.Connect(kernelServer.LocalEndPoint)
                use kernelPeer = wait kernelIncoming
                kernelClient.LingerState <- LingerOption(true, 1)
                kernelClient.Blocking <- false
                let mutable sent = 0

                try
                    while sent < payload.Length do
                        sent <- sent + kernelClient.Send(payload, sent, payload.Length - sent, SocketFlags.None)
                with :? SocketException as e when e.SocketErrorCode = SocketError.WouldBlock ->
                    ()

                kernelClient.Blocking <- true
                let kernelClock = Diagnostics.Stopwatch.StartNew()
                kernelClient.Dispose()
                let kernelClose = kernelClock.Elapsed
                let kernelGot = readAll kernelPeer
                Expect.isGreaterThanOrEqual kernelClose.TotalSeconds 0.9 "the kernel's close waited its second"
                Expect.equal kernelGot payload[.. sent - 1] "then the kernel sent the rest and its FIN"

                let options =
                    NetStackOptions(
                        TunName = "ns171k14",
                        Address = IPAddress.Parse "10.171.14.2",
                        HostAddress = IPAddress.Parse "10.171.14.1",
                        Address6 = null,
                        // Not this: the linger time decides.
                        TcpLinger = TimeSpan.FromSeconds 30.0
                    )

                TestUtil.withStackOf options (fun stack ->
                    let connectLingering (listener: Socket) (seconds: int) =
                        wait (
                            stack
                                .ConnectTcpAsync(
                                    listener.LocalEndPoint :?> IPEndPoint,
                                    TcpSocketOptions(LingerState = LingerOption(true, seconds))
                                )
                                .AsTask()
                        )

                    // Writes the payload, then times DisposeAsync (neither may throw).
                    let writeAndDispose (c: TcpConnection) =
                        TestUtil.waitTaskWithin timeout (c.WriteAsync(ReadOnlyMemory payload).AsTask())
                        let clock = Diagnostics.Stopwatch.StartNew()
                        TestUtil.waitTaskWithin timeout (c.DisposeAsync().AsTask())
                        clock.Elapsed

                    use server = slowListener options.HostAddress
                    let incoming = server.AcceptAsync()

                    let connection = connectLingering server 1

                    use peer = wait incoming
                    let close = writeAndDispose connection
                    let got = readAll peer
                    Expect.isGreaterThanOrEqual close.TotalSeconds 0.9 "DisposeAsync waited its second"
                    Expect.isLessThan close.TotalSeconds 10.0 "and not TcpLinger's 30 s"
                    Expect.equal got payload "then the stack sent the rest and its FIN (no reset)"

                    // A peer that reads at once: DisposeAsync returns with the FIN's ACK, long before N.
                    use reader = TestUtil.kernelListener options.HostAddress
                    let readerIncoming = reader.AcceptAsync()

                    let quick = connectLingering reader 30

                    use readerPeer = wait readerIncoming
                    let reading = Task.Run(fun () -> readAll readerPeer)
                    let quickClose = writeAndDispose quick

                    Expect.isLessThan
                        quickClose.TotalSeconds
                        10.0
                        "DisposeAsync returned with the FIN's ACK, not after 30 s"

                    Expect.isTrue quick.FinAcknowledged "the FIN was acknowledged"
                    Expect.equal (wait reading) payload "the reader got every byte and the FIN")
            }

            test
                "UDP Ttl, TypeOfService and DontFragment are on the datagrams (tcpdump); with DontFragment a datagram over the MTU fails with MessageSize, as a kernel socket's send does" {
                let options = optionsFor 4

                TestUtil.withStackOf options (fun stack ->
                    let file, tcpdump = capture options.TunName

                    use kernel =
                        new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                    kernel.Bind(IPEndPoint(options.HostAddress, 0))
                    let target = kernel.LocalEndPoint :?> IPEndPoint
                    use plain = stack.BindUdp(IPEndPoint(IPAddress.Any, 0))
                    use marked = stack.BindUdp(IPEndPoint(IPAddress.Any, 0))
                    Expect.equal plain.Ttl 64s "default TTL"
                    Expect.isFalse plain.DontFragment "UDP default: fragmentable"
                    marked.Ttl <- 3s
                    marked.TypeOfService <- 0x20
                    marked.DontFragment <- true

                    plain.SendToAsync(ReadOnlyMemory(Array.create 50 1uy), target).AsTask()
                    |> wait
                    |> ignore

                    marked.SendToAsync(ReadOnlyMemory(Array.create 50 2uy), target).AsTask()
                    |> wait
                    |> ignore

                    let big = ReadOnlyMemory(Array.create 2000 3uy)

                    let error =
                        try
                            marked.SendToAsync(big, target).AsTask() |> wait |> ignore
                            SocketError.Success
                        with e ->
                            match e.GetBaseException() with
                            | :? SocketException as se -> se.SocketErrorCode
                            | _ -> raise e

                    Expect.equal error SocketError.MessageSize "DF and 2000 bytes over a 1500 MTU"
                    // The kernel's own UDP socket with DontFragment (IP_PMTUDISC_DO) refuses the same.
                    use kernelSender =
                        new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                    kernelSender.DontFragment <- true

                    let kernelError =
                        try
                            kernelSender.SendTo(Array.create 2000 3uy, IPEndPoint(options.Address, 9))
                            |> ignore

                            SocketError.Success
                        with :? SocketException as se ->
                            se.SocketErrorCode

                    Expect.equal kernelError SocketError.MessageSize "the kernel's send fails the same way"
                    // Without DF the same datagram goes, in fragments.
                    plain.SendToAsync(big, target).AsTask() |> wait |> ignore
                    let buffer = Array.zeroCreate<byte> 4000
                    kernel.ReceiveTimeout <- 10000
                    let sizes = [ for _ in 1..3 -> kernel.Receive buffer ]
                    Expect.equal sizes [ 50; 50; 2000 ] "the kernel got both small datagrams and the fragmented one"

                    let stackSide port =
                        $"udp and src host {options.Address} and src port {port}"

                    Capture.awaitPackets file (stackSide marked.LocalEndPoint.Port)
                    Capture.stop tcpdump
                    let markedLines = verbose file (stackSide marked.LocalEndPoint.Port)
                    let plainLines = verbose file (stackSide plain.LocalEndPoint.Port)
                    File.Delete file
                    Expect.equal markedLines.Length 1 "one datagram from the marked socket (the big one never left)"
                    Expect.stringContains markedLines.Head "tos 0x20," "DSCP 8"
                    Expect.stringContains markedLines.Head "ttl 3," "TTL 3"
                    Expect.stringContains markedLines.Head "flags [DF]" "DF"
                    Expect.stringContains plainLines.Head "tos 0x0," "TOS 0"
                    Expect.stringContains plainLines.Head "ttl 64," "TTL 64"
                    Expect.stringContains plainLines.Head "flags [none]" "no DF")
            }

            test
                "Available: UDP gives the next datagram's size and TCP the readable bytes, as the kernel's sockets (FIONREAD)" {
                let options = optionsFor 5

                TestUtil.withStackOf options (fun stack ->
                    use udp = stack.BindUdp(IPEndPoint(IPAddress.Any, 0))

                    use kernelUdp =
                        new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                    kernelUdp.Bind(IPEndPoint(options.HostAddress, 0))

                    use sender =
                        new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                    sender.Bind(IPEndPoint(options.HostAddress, 0))

                    for size in [ 100; 300 ] do
                        sender.SendTo(Array.zeroCreate size, IPEndPoint(options.Address, udp.LocalEndPoint.Port))
                        |> ignore

                        sender.SendTo(Array.zeroCreate size, kernelUdp.LocalEndPoint) |> ignore

                    TestUtil.eventually 10.0 "the kernel queued both" (fun () -> kernelUdp.Available > 0)
                    TestUtil.eventually 10.0 "the stack queued the first" (fun () -> udp.Available > 0)
                    // The kernel reports the first datagram's size, not the total.
                    Threading.Thread.Sleep 200
                    Expect.equal kernelUdp.Available 100 "kernel: the next datagram's size"
                    Expect.equal udp.Available kernelUdp.Available "the stack: the same"
                    let buffer = Array.zeroCreate<byte> 1000
                    kernelUdp.Receive buffer |> ignore
                    udp.ReceiveFromAsync(Memory buffer).AsTask() |> wait |> ignore
                    Expect.equal udp.Available kernelUdp.Available "after one receive: the second's size"
                    Expect.equal udp.Available 300 "300"

                    use server = TestUtil.kernelListener options.HostAddress
                    let incoming = server.AcceptAsync()

                    let connection =
                        wait (stack.ConnectTcpAsync(server.LocalEndPoint :?> IPEndPoint).AsTask())

                    use peer = wait incoming
                    Expect.equal connection.Available 0 "nothing yet"
                    peer.Send(Array.zeroCreate<byte> 500) |> ignore
                    TestUtil.eventually 10.0 "500 bytes readable" (fun () -> connection.Available = 500)
                    connection.Read(buffer, 0, 200) |> ignore
                    Expect.equal connection.Available 300 "300 left"
                    connection.DisposeAsync().AsTask().Wait timeout |> ignore)
            }

            test
                "ReadTimeout: a synchronous read with nothing to read throws IOException(TimedOut) after the timeout and the connection stays usable; WriteTimeout likewise for a full send buffer; bad values throw" {
                let options = optionsFor 6

                TestUtil.withStackOf options (fun stack ->
                    use server = TestUtil.kernelListener options.HostAddress
                    let incoming = server.AcceptAsync()

                    let connection =
                        wait (
                            stack
                                .ConnectTcpAsync(
                                    server.LocalEndPoint :?> IPEndPoint,
                                    TcpSocketOptions(SendBufferSize = Nullable 4096)
                                )
                                .AsTask()
                        )

                    use peer = wait incoming
                    Expect.isTrue connection.CanTimeout "CanTimeout"
                    Expect.equal connection.ReadTimeout Threading.Timeout.Infinite "infinite by default"
                    Expect.throwsT<ArgumentOutOfRangeException> (fun () -> connection.ReadTimeout <- 0) "0"
                    Expect.throwsT<ArgumentOutOfRangeException> (fun () -> connection.WriteTimeout <- -2) "-2"
                    connection.ReadTimeout <- 300
                    let buffer = Array.zeroCreate<byte> 100
                    let watch = Diagnostics.Stopwatch.StartNew()

                    let inner =
                        try
                            connection.Read(buffer, 0, 100) |> ignore
                            null
                        with :? IOException as e ->
                            e.InnerException

                    Expect.isGreaterThanOrEqual watch.ElapsedMilliseconds 250L "waited about the timeout"

                    match inner with
                    | :? SocketException as se -> Expect.equal se.SocketErrorCode SocketError.TimedOut "TimedOut"
                    | e -> failtestf "expected SocketException(TimedOut), got %O" e

                    peer.Send [| 7uy |] |> ignore
                    Expect.equal (connection.Read(buffer, 0, 100)) 1 "the connection still reads"
                    Expect.equal buffer[0] 7uy "the byte"
                    // The peer reads nothing: its receive window and our 4 KiB send buffer fill up.
                    connection.WriteTimeout <- 300
                    let chunk = Array.zeroCreate<byte> 65536

                    let writeError =
                        try
                            for _ in 1..200 do
                                connection.Write(chunk, 0, chunk.Length)

                            null
                        with :? IOException as e ->
                            e.InnerException

                    match writeError with
                    | :? SocketException as se -> Expect.equal se.SocketErrorCode SocketError.TimedOut "write TimedOut"
                    | e -> failtestf "expected SocketException(TimedOut), got %O" e

                    connection.Abort())
            }

            test
                "ReceiveBufferSize before connect decides the SYN's window and window scale (RFC 7323 §2.3, computed here); set larger after connect, the offered window grows" {
                let options = optionsFor 7

                TestUtil.withStackOf options (fun stack ->
                    let file, tcpdump = capture options.TunName
                    use server = TestUtil.kernelListener options.HostAddress
                    let remote = server.LocalEndPoint :?> IPEndPoint
                    // The smallest shift s with size <= 65535·2^s.
                    let shiftFor (size: int) =
                        Seq.find (fun s -> int64 size <= (65535L <<< s)) (seq { 0..14 })

                    let incoming = server.AcceptAsync()

                    let large =
                        wait (
                            stack
                                .ConnectTcpAsync(remote, TcpSocketOptions(ReceiveBufferSize = Nullable 1_000_000))
                                .AsTask()
                        )

                    use _largePeer = wait incoming
                    Expect.equal large.ReceiveBufferSize 1_000_000 "the buffer"
                    let incoming = server.AcceptAsync()

                    let small =
                        wait (
                            stack
                                .ConnectTcpAsync(remote, TcpSocketOptions(ReceiveBufferSize = Nullable 16000))
                                .AsTask()
                        )

                    use smallPeer = wait incoming
                    // The peer sends 200 KB while nobody reads: the window closes at 16000.
                    let sending =
                        Task.Run(fun () -> smallPeer.Send(Array.zeroCreate<byte> 200_000) |> ignore)

                    TestUtil.eventually 10.0 "16000 bytes buffered" (fun () -> small.Available = 16000)
                    small.ReceiveBufferSize <- 60000
                    TestUtil.eventually 10.0 "the window opened to 60000" (fun () -> small.Available = 60000)
                    Expect.equal small.ReceiveBufferSize 60000 "the buffer grew"

                    let stackSide (c: TcpConnection) =
                        $"tcp and src host {options.Address} and src port {c.LocalEndPoint.Port}"

                    Capture.awaitPackets file (stackSide small)
                    Capture.stop tcpdump
                    let smallLines = verbose file (stackSide small)
                    let largeLines = verbose file (stackSide large)
                    File.Delete file

                    let syn (lines: string list) =
                        lines |> List.find (fun l -> l.Contains "Flags [S]")

                    Expect.stringContains
                        (syn largeLines)
                        $"wscale {shiftFor 1_000_000}"
                        "the SYN's shift for 1 MB (4)"

                    Expect.stringContains (syn smallLines) $"wscale {shiftFor 16000}" "no shift for 16000"
                    Expect.stringContains (syn smallLines) "win 16000," "the SYN offers the buffer"

                    let windows =
                        smallLines
                        |> List.choose (fun l ->
                            let at = l.IndexOf "win "

                            if at < 0 then
                                None
                            else
                                Some(int (l.Substring(at + 4).Split(',')[0])))

                    Expect.isTrue
                        (windows |> List.exists (fun w -> w > 16000))
                        "a window beyond 16000 offered after the change"

                    Expect.isTrue (windows |> List.forall (fun w -> w <= 60000)) "never beyond the new buffer"
                    small.Abort()
                    large.Abort()
                    sending.Wait timeout |> ignore)
            }

            test
                "KeepAlive set on one connection: probes at KeepAliveTime then every KeepAliveInterval (tcpdump), answered by the kernel; a connection without it sends nothing while idle" {
                let options = optionsFor 8

                TestUtil.withStackOf options (fun stack ->
                    let file, tcpdump = capture options.TunName
                    use server = TestUtil.kernelListener options.HostAddress
                    let remote = server.LocalEndPoint :?> IPEndPoint
                    let incoming = server.AcceptAsync()
                    let probing = wait (stack.ConnectTcpAsync(remote).AsTask())
                    use _probingPeer = wait incoming
                    let incoming = server.AcceptAsync()
                    let quiet = wait (stack.ConnectTcpAsync(remote).AsTask())
                    use _quietPeer = wait incoming
                    Expect.isFalse probing.KeepAlive "off by default (NetStackOptions.TcpKeepAlive unset)"
                    probing.KeepAliveTime <- TimeSpan.FromSeconds 1.0
                    probing.KeepAliveInterval <- TimeSpan.FromSeconds 1.0
                    probing.KeepAliveRetryCount <- 3
                    probing.KeepAlive <- true
                    Expect.throwsT<ArgumentOutOfRangeException> (fun () -> probing.KeepAliveRetryCount <- 0) "count 0"

                    Expect.throwsT<ArgumentOutOfRangeException>
                        (fun () -> probing.KeepAliveTime <- TimeSpan.Zero)
                        "time 0"
                    // 3.5 s idle: the kernel answers every probe, so the connection lives on.
                    Threading.Thread.Sleep 3500
                    Capture.stop tcpdump

                    let stackSide (c: TcpConnection) =
                        $"tcp and src host {options.Address} and src port {c.LocalEndPoint.Port}"

                    let probes =
                        verbose file (stackSide probing)
                        |> List.filter (fun l -> not (l.Contains "Flags [S]"))

                    let quietLines =
                        verbose file (stackSide quiet)
                        |> List.filter (fun l -> not (l.Contains "Flags [S]"))

                    let answers =
                        verbose file $"tcp and dst host {options.Address} and dst port {probing.LocalEndPoint.Port}"

                    File.Delete file
                    // The handshake's ACK, then probes at about 1, 2 and 3 s.
                    Expect.isGreaterThanOrEqual (probes.Length - 1) 3 "three probes in 3.5 s"
                    Expect.isLessThanOrEqual (probes.Length - 1) 4 "not more than the interval allows"
                    Expect.equal quietLines.Length 1 "the other connection sent only its handshake ACK"
                    Expect.isGreaterThanOrEqual (answers.Length - 1) 3 "the kernel answered the probes"
                    probing.Abort()
                    quiet.Abort())
            }

            test
                "bind before connect: a fixed local port is the one the kernel peer sees; a port in use fails with AddressAlreadyInUse and an address not ours with AddressNotAvailable, as kernel sockets' bind; ReuseAddress shares a port between connections as two SO_REUSEADDR kernel sockets do" {
                let options = optionsFor 9

                TestUtil.withStackOf options (fun stack ->
                    use server = TestUtil.kernelListener options.HostAddress
                    use server2 = TestUtil.kernelListener options.HostAddress
                    let remote = server.LocalEndPoint :?> IPEndPoint
                    let remote2 = server2.LocalEndPoint :?> IPEndPoint
                    // The kernel's bind rule, from python3's plain sockets (.NET's Socket.Bind sets
                    // SO_REUSEADDR by itself on Linux, so it cannot show the rule without it): socket
                    // a holds a port (connected, in TIME-WAIT, or listening), socket b binds it.
                    let kernel =
                        let _, output = Isolation.run "python3" [ "-c"; bindOracle ]

                        output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                        |> Array.map (fun l -> let p = l.Split ' ' in p[0], p[1])
                        |> Map.ofArray

                    let kernelSays case =
                        match kernel.TryFind case with
                        | Some "ok" -> Ok()
                        | Some "EADDRINUSE" -> Error SocketError.AddressAlreadyInUse
                        | other -> failtestf "python3 said %A for %s" other case

                    // Why ReuseAddress defaults to true: .NET's Socket.Bind sets SO_REUSEADDR by
                    // itself on Linux, so two .NET sockets share a port where plain ones cannot.
                    Expect.equal (kernelSays "conn-0-0") (Error SocketError.AddressAlreadyInUse) "plain sockets"

                    use dotnet1 =
                        new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                    dotnet1.Bind(IPEndPoint(options.HostAddress, 0))
                    dotnet1.Connect remote
                    use _dotnetPeer = server.Accept()

                    use dotnet2 =
                        new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                    dotnet2.Bind(IPEndPoint(options.HostAddress, (dotnet1.LocalEndPoint :?> IPEndPoint).Port))
                    Expect.isTrue dotnet2.IsBound ".NET sockets: the second bind succeeds"

                    let connectFrom (local: IPEndPoint) (reuse: bool) (target: IPEndPoint) =
                        try
                            Ok(
                                wait (
                                    stack
                                        .ConnectTcpAsync(
                                            target,
                                            TcpSocketOptions(LocalEndPoint = local, ReuseAddress = reuse)
                                        )
                                        .AsTask()
                                )
                            )
                        with e ->
                            match e.GetBaseException() with
                            | :? SocketException as se -> Error se.SocketErrorCode
                            | _ -> raise e

                    let incoming = server.AcceptAsync()
                    let port = 40123

                    let c1 =
                        connectFrom (IPEndPoint(options.Address, port)) true remote
                        |> Result.defaultWith (fun e -> failtestf "connect: %A" e)

                    use p1 = wait incoming
                    Expect.equal c1.LocalEndPoint.Port port "our end"
                    Expect.equal (p1.RemoteEndPoint :?> IPEndPoint).Port port "the port the kernel sees"

                    Expect.equal
                        (connectFrom (IPEndPoint(options.Address, port)) false remote2
                         |> Result.map ignore)
                        (kernelSays "conn-1-0")
                        "the port of a connection, without ReuseAddress: as the kernel (EADDRINUSE)"

                    Expect.equal
                        (connectFrom (IPEndPoint(options.Address, port)) true remote |> Result.map ignore)
                        (Error SocketError.AddressNotAvailable)
                        "the same 4-tuple again"

                    let incoming2 = server2.AcceptAsync()

                    Expect.equal (kernelSays "conn-1-1") (Ok()) "the kernel shares a port when both have SO_REUSEADDR"

                    let c2 =
                        connectFrom (IPEndPoint(IPAddress.Any, port)) true remote2
                        |> Result.defaultWith (fun e -> failtestf "connect with ReuseAddress: %A" e)

                    use _p2 = wait incoming2
                    Expect.equal c2.LocalEndPoint.Port port "shared port"

                    Expect.equal
                        (connectFrom (IPEndPoint(IPAddress.Parse "10.171.9.77", 0)) false remote
                         |> Result.map ignore)
                        (Error SocketError.AddressNotAvailable)
                        "an address that is not ours"

                    use listener = stack.ListenTcp(IPEndPoint(IPAddress.Any, 0))

                    Expect.equal
                        (connectFrom (IPEndPoint(options.Address, listener.LocalEndPoint.Port)) true remote
                         |> Result.map ignore)
                        (kernelSays "listen-1-1")
                        "a listening port, even with ReuseAddress: as the kernel (EADDRINUSE)"

                    c1.Abort()
                    c2.Abort()

                    // TIME-WAIT holds the port: we close first, then the peer.
                    let timeWait (localPort: int) (reuse: bool) =
                        let incoming = server.AcceptAsync()

                        let c =
                            connectFrom (IPEndPoint(options.Address, localPort)) reuse remote
                            |> Result.defaultWith (fun e -> failtestf "connect: %A" e)

                        use p = wait incoming
                        c.DisposeAsync().AsTask().Wait timeout |> ignore
                        Expect.equal (p.Receive(Array.zeroCreate<byte> 1)) 0 "our FIN"
                        p.Close()
                        Threading.Thread.Sleep 300

                    let listenOn (localPort: int) (reuse: bool) =
                        try
                            stack
                                .ListenTcp(
                                    IPEndPoint(IPAddress.Any, localPort),
                                    TcpSocketOptions(ReuseAddress = reuse)
                                )
                                .Dispose()

                            Ok()
                        with :? SocketException as e ->
                            Error e.SocketErrorCode

                    timeWait 40200 false
                    Expect.equal (listenOn 40200 false) (kernelSays "tw-0-0") "TIME-WAIT, neither with SO_REUSEADDR"
                    Expect.equal (listenOn 40200 true) (kernelSays "tw-0-1") "TIME-WAIT without, the listener with"
                    timeWait 40201 true
                    Expect.equal (listenOn 40201 false) (kernelSays "tw-1-0") "TIME-WAIT with, the listener without"

                    Expect.equal
                        (listenOn 40201 true)
                        (kernelSays "tw-1-1")
                        "TIME-WAIT and the listener with SO_REUSEADDR")
            }

            test
                "Shutdown(Receive) behaves as the kernel's SHUT_RD (queued bytes, then 0 instead of waiting, later data still read, the peer unaffected); Shutdown(Send) sends the FIN; a bad value throws" {
                let options = optionsFor 10
                // One script, run on a kernel socket and on a NetStack connection (`b`), with a
                // kernel peer (`a`) each time: what b's reads return and what a sees.
                let script
                    (read: unit -> int)
                    (available: unit -> int)
                    (shutdown: SocketShutdown -> unit)
                    (send: byte[] -> unit)
                    (a: Socket)
                    =
                    a.ReceiveTimeout <- 10000
                    a.Send(Text.Encoding.ASCII.GetBytes "before") |> ignore
                    TestUtil.eventually 10.0 "6 bytes queued" (fun () -> available () = 6)
                    shutdown SocketShutdown.Receive
                    let first = read ()
                    let second = read ()
                    a.Send(Text.Encoding.ASCII.GetBytes "after") |> ignore
                    TestUtil.eventually 10.0 "5 more queued" (fun () -> available () = 5)
                    let third = read ()
                    send [| 1uy; 2uy |]
                    let buffer = Array.zeroCreate<byte> 10
                    let peerGot = a.Receive buffer
                    shutdown SocketShutdown.Send
                    let peerEnd = a.Receive buffer
                    [ first; second; third; peerGot; peerEnd ]

                let kernelResult =
                    use server = TestUtil.kernelListener IPAddress.Loopback
                    let incoming = server.AcceptAsync()
                    use a = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)
                    a.Connect server.LocalEndPoint
                    use b = wait incoming
                    b.ReceiveTimeout <- 10000
                    let buffer = Array.zeroCreate<byte> 100

                    script
                        (fun () -> b.Receive buffer)
                        (fun () -> b.Available)
                        b.Shutdown
                        (fun d -> b.Send d |> ignore)
                        a

                Expect.equal
                    kernelResult
                    [ 6; 0; 5; 2; 0 ]
                    "the kernel: 6 queued, then 0, later data read, the peer unaffected, FIN"

                TestUtil.withStackOf options (fun stack ->
                    use listener = stack.ListenTcp(IPEndPoint(IPAddress.Any, 0))
                    let accepted = listener.AcceptAsync().AsTask()
                    use a = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)
                    a.Connect(IPEndPoint(options.Address, listener.LocalEndPoint.Port))
                    let b = wait accepted
                    b.ReadTimeout <- 10000
                    let buffer = Array.zeroCreate<byte> 100

                    Expect.throwsT<ArgumentOutOfRangeException>
                        (fun () -> b.Shutdown(enum<SocketShutdown> 7))
                        "not a SocketShutdown"

                    let stackResult =
                        script
                            (fun () -> b.Read(buffer, 0, 100))
                            (fun () -> b.Available)
                            b.Shutdown
                            (fun d -> b.Write(d, 0, d.Length))
                            a

                    Expect.equal stackResult kernelResult "NetStack as the kernel"
                    b.DisposeAsync().AsTask().Wait timeout |> ignore)
            }

            test
                "UDP ReceiveMessageFromAsync names the address each datagram was sent to, as a kernel socket's IP_PKTINFO; Connect keeps what others sent before it and filters what comes after, as the kernel" {
                let options = optionsFor 11

                TestUtil.withStackOf options (fun stack ->
                    let buffer = Array.zeroCreate<byte> 100

                    for local, kernelAddress in
                        [ options.Address, options.HostAddress; options.Address6, options.HostAddress6 ] do
                        use sender =
                            new Socket(kernelAddress.AddressFamily, SocketType.Dgram, ProtocolType.Udp)

                        sender.Bind(IPEndPoint(kernelAddress, 0))
                        // The kernel's own view: a kernel socket receiving a datagram sent to its address.
                        use kernelReceiver =
                            new Socket(kernelAddress.AddressFamily, SocketType.Dgram, ProtocolType.Udp)

                        kernelReceiver.Bind(
                            IPEndPoint(
                                (if local.AddressFamily = AddressFamily.InterNetwork then
                                     IPAddress.Any
                                 else
                                     IPAddress.IPv6Any),
                                0
                            )
                        )

                        if local.AddressFamily = AddressFamily.InterNetwork then
                            kernelReceiver.SetSocketOption(
                                SocketOptionLevel.IP,
                                SocketOptionName.PacketInformation,
                                true
                            )
                        else
                            kernelReceiver.SetSocketOption(
                                SocketOptionLevel.IPv6,
                                SocketOptionName.PacketInformation,
                                true
                            )

                        sender.SendTo(
                            [| 1uy |],
                            IPEndPoint(kernelAddress, (kernelReceiver.LocalEndPoint :?> IPEndPoint).Port)
                        )
                        |> ignore

                        let mutable from =
                            (IPEndPoint(
                                (if local.AddressFamily = AddressFamily.InterNetwork then
                                     IPAddress.Any
                                 else
                                     IPAddress.IPv6Any),
                                0
                            )
                            :> EndPoint)

                        let mutable flags = SocketFlags.None
                        let mutable info = Unchecked.defaultof<IPPacketInformation>

                        kernelReceiver.ReceiveMessageFrom(buffer, 0, 100, &flags, &from, &info)
                        |> ignore

                        Expect.equal info.Address kernelAddress "the kernel: the destination address"

                        use socket =
                            stack.BindUdp(
                                IPEndPoint(
                                    (if local.AddressFamily = AddressFamily.InterNetwork then
                                         IPAddress.Any
                                     else
                                         IPAddress.IPv6Any),
                                    0
                                )
                            )

                        let receiving = socket.ReceiveMessageFromAsync(Memory buffer).AsTask()

                        sender.SendTo([| 1uy; 2uy |], IPEndPoint(local, socket.LocalEndPoint.Port))
                        |> ignore

                        let result = wait receiving
                        Expect.equal result.ReceivedBytes 2 "two bytes"

                        Expect.equal
                            result.PacketInformation.Address
                            local
                            "the stack: the destination address, as the kernel"

                        Expect.equal
                            result.PacketInformation.Interface
                            UdpSocket.StackInterfaceIndex
                            "the stack's interface"

                        Expect.equal (result.RemoteEndPoint :?> IPEndPoint).Address kernelAddress "the sender"
                        // Queued before the receive call: the same answer.
                        sender.SendTo([| 3uy |], IPEndPoint(local, socket.LocalEndPoint.Port)) |> ignore
                        TestUtil.eventually 10.0 "queued" (fun () -> socket.Available = 1)
                        let queued = wait (socket.ReceiveMessageFromAsync(Memory buffer).AsTask())
                        Expect.equal queued.PacketInformation.Address local "from the queue too"

                    // Connect: the kernel keeps what others sent before and filters what comes after.
                    let sequence
                        (available: unit -> int)
                        (connect: IPEndPoint -> unit)
                        (receive: unit -> byte)
                        (target: IPEndPoint)
                        =
                        use x = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)
                        x.Bind(IPEndPoint(options.HostAddress, 0))
                        use y = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)
                        y.Bind(IPEndPoint(options.HostAddress, 0))
                        x.SendTo([| 1uy |], target) |> ignore
                        TestUtil.eventually 10.0 "the first datagram queued" (fun () -> available () > 0)
                        connect (y.LocalEndPoint :?> IPEndPoint)
                        x.SendTo([| 2uy |], target) |> ignore
                        y.SendTo([| 3uy |], target) |> ignore
                        [ receive (); receive () ]

                    use kernelSide =
                        new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                    kernelSide.Bind(IPEndPoint(options.HostAddress, 0))
                    kernelSide.ReceiveTimeout <- 10000

                    let kernelOrder =
                        sequence
                            (fun () -> kernelSide.Available)
                            (fun e -> kernelSide.Connect e)
                            (fun () ->
                                kernelSide.Receive buffer |> ignore
                                buffer[0])
                            (kernelSide.LocalEndPoint :?> IPEndPoint)

                    use stackSide = stack.BindUdp(IPEndPoint(IPAddress.Any, 0))

                    let stackOrder =
                        sequence
                            (fun () -> stackSide.Available)
                            (fun e -> stackSide.Connect e)
                            (fun () ->
                                wait (stackSide.ReceiveFromAsync(Memory buffer).AsTask()) |> ignore
                                buffer[0])
                            (IPEndPoint(options.Address, stackSide.LocalEndPoint.Port))

                    Expect.equal kernelOrder [ 1uy; 3uy ] "the kernel: the earlier datagram, then the peer's"
                    Expect.equal stackOrder kernelOrder "the stack as the kernel")
            }

            test
                "API misuse: each bad option gives the documented exception (ArgumentOutOfRangeException naming the parameter, ArgumentException for a local end of the other family, ObjectDisposedException after dispose)" {
                let options = optionsFor 12

                TestUtil.withStackOf options (fun stack ->
                    use server = TestUtil.kernelListener options.HostAddress
                    let remote = server.LocalEndPoint :?> IPEndPoint

                    let connectWith (o: TcpSocketOptions) =
                        try
                            stack.ConnectTcpAsync(remote, o).AsTask().GetAwaiter().GetResult() |> ignore
                            None
                        with e ->
                            Some e

                    for bad in
                        [
                            TcpSocketOptions(Ttl = Nullable 0s)
                            TcpSocketOptions(Ttl = Nullable 256s)
                            TcpSocketOptions(TypeOfService = Nullable 256)
                            TcpSocketOptions(ReceiveBufferSize = Nullable 0)
                            TcpSocketOptions(SendBufferSize = Nullable -1)
                            TcpSocketOptions(LingerState = LingerOption(true, -1))
                            TcpSocketOptions(KeepAliveTime = Nullable TimeSpan.Zero)
                            TcpSocketOptions(KeepAliveInterval = Nullable(TimeSpan.FromDays 1.0))
                            TcpSocketOptions(KeepAliveRetryCount = Nullable 0)
                        ] do
                        match connectWith bad with
                        | Some(:? ArgumentOutOfRangeException as e) ->
                            Expect.equal e.ParamName "options" "names the options"
                        | other -> failtestf "expected ArgumentOutOfRangeException, got %A" other

                    match connectWith (TcpSocketOptions(LocalEndPoint = IPEndPoint(options.Address6, 0))) with
                    | Some(:? ArgumentException as e) -> Expect.equal e.ParamName "options" "the other family"
                    | other -> failtestf "expected ArgumentException, got %A" other

                    Expect.throwsT<ArgumentOutOfRangeException>
                        (fun () -> stack.ConnectTcpAsync(IPAddress.Loopback, 0).AsTask() |> ignore)
                        "port 0"

                    Expect.throwsT<ArgumentNullException>
                        (fun () -> stack.ConnectTcpAsync((null: string), 80).AsTask() |> ignore)
                        "null host"

                    let incoming = server.AcceptAsync()
                    let c = wait (stack.ConnectTcpAsync(remote.Address, remote.Port).AsTask())
                    use _peer = wait incoming
                    Expect.throwsT<ArgumentOutOfRangeException> (fun () -> c.Ttl <- 0s) "Ttl 0"
                    Expect.throwsT<ArgumentOutOfRangeException> (fun () -> c.TypeOfService <- -1) "TOS -1"
                    Expect.throwsT<ArgumentOutOfRangeException> (fun () -> c.ReceiveBufferSize <- 0) "buffer 0"
                    Expect.throwsT<ArgumentNullException> (fun () -> c.LingerState <- null) "null linger"

                    Expect.throwsT<ArgumentOutOfRangeException>
                        (fun () -> c.Shutdown(enum<SocketShutdown> 9))
                        "bad how"

                    c.Dispose()
                    Expect.throwsT<ObjectDisposedException> (fun () -> c.Ttl <- 5s) "disposed"
                    Expect.throwsT<ObjectDisposedException> (fun () -> c.Available |> ignore) "disposed"
                    use udp = stack.BindUdp(IPEndPoint(IPAddress.Any, 0))
                    Expect.throwsT<ArgumentOutOfRangeException> (fun () -> udp.Ttl <- 0s) "UDP Ttl 0"
                    Expect.throwsT<ArgumentOutOfRangeException> (fun () -> udp.TypeOfService <- 300) "UDP TOS"
                    Expect.throwsT<ArgumentOutOfRangeException> (fun () -> udp.ReceiveBufferSize <- 0) "UDP buffer 0"
                    use listener = stack.ListenTcp(IPEndPoint(IPAddress.Any, 0))
                    Expect.throwsT<ArgumentOutOfRangeException> (fun () -> listener.Ttl <- 0s) "listener Ttl 0"
                    listener.Dispose()
                    Expect.throwsT<ObjectDisposedException> (fun () -> listener.Ttl <- 5s) "disposed listener")
            }
        ]
