/// The differential conformance suite (issue 20, item 4): each scenario is written once against
/// the Subject interfaces and runs on a kernel Socket and on NetStack against the same kernel
/// peer; their logs (outcomes, exceptions with their SocketError, what the peer and the wire saw)
/// must match but for the differences docs/conformance.md lists.
module NetStack.Tests.Conformance.Scenarios

open System
open System.IO
open System.Net
open System.Net.Sockets
open System.Text.RegularExpressions
open System.Threading
open System.Threading.Tasks
open Expecto
open NetStack.Tests
open NetStack.Tests.Conformance.Subject
open NetStack.Tests.Conformance.Harness

// ---- Steps shared by the scenarios ------------------------------------------------------------

let private settle () = Thread.Sleep 250

/// A task that completes `ms` milliseconds from now, for a cancellation.
let private cancelAfter (ms: int) = new CancellationTokenSource(ms)

let private connect (env: Env) (name: string) (remote: IPEndPoint) (cancel: CancellationToken) =
    env.Await name (fun (_: ITcp) -> "connected") (fun () -> env.Subject.ConnectAsync(remote, cancel))

let private read (env: Env) (name: string) (connection: ITcp) (size: int) (cancel: CancellationToken) =
    env.Await name id (fun () ->
        task {
            let buffer = Array.zeroCreate<byte> size
            let! n = connection.Stream.ReadAsync(Memory buffer, cancel)

            return showBytes (ReadOnlySpan(buffer, 0, n))
        })

let private write (env: Env) (name: string) (connection: ITcp) (data: byte[]) (cancel: CancellationToken) =
    env.Await name id (fun () ->
        task {
            do! connection.Stream.WriteAsync(ReadOnlyMemory data, cancel)
            return $"{data.Length} written"
        })

let private ascii (s: string) = Text.Encoding.ASCII.GetBytes s

/// What a peer socket's next receive gives: its bytes, 0 at the subject's FIN, or the error.
let private peerReceive (peer: Socket) =
    task {
        let buffer = Array.zeroCreate<byte> 65536
        let! n = peer.ReceiveAsync(Memory buffer)

        return
            if n = 0 then
                "0"
            else
                showBytes (ReadOnlySpan(buffer, 0, n))
    }
    |> outcomeWithin (TimeSpan.FromSeconds 5.0) id

/// A peer listener on the peer's address.
let private peerListener (env: Env) =
    let listener = env.PeerSocket SocketType.Stream
    listener.Bind(env.PeerAt 0)
    listener.Listen 16
    listener

/// A connection from the subject to a peer listener (step "connect"): the subject's side and the
/// peer's accepted socket.
let private connected (env: Env) =
    use listener = peerListener env
    let port = (listener.LocalEndPoint :?> IPEndPoint).Port
    let accepted = listener.AcceptAsync()

    match connect env "connect" (env.PeerAt port) CancellationToken.None with
    | Some connection -> Some(connection, TestUtil.waitWithin stepTimeout accepted)
    | None -> None

/// A peer UDP socket bound to `address`.
let private peerUdp (env: Env) (address: IPAddress) =
    let socket = env.PeerSocket SocketType.Dgram
    socket.Bind(IPEndPoint(address, 0))
    socket

/// Who sent a datagram, by the scenario's names for the peer's sockets.
let private sender (names: (Socket * string) list) (source: IPEndPoint) =
    names
    |> List.tryFind (fun (s, _) -> (s.LocalEndPoint :?> IPEndPoint).Equals source)
    |> Option.map snd
    |> Option.defaultValue "someone else"

let private receiveFrom
    (env: Env)
    (name: string)
    (udp: IUdp)
    (size: int)
    (names: (Socket * string) list)
    (cancel: CancellationToken)
    =
    env.Await name id (fun () ->
        task {
            let buffer = Array.zeroCreate<byte> size
            let! n, source = udp.ReceiveFromAsync(Memory buffer, cancel)
            return $"{showBytes (ReadOnlySpan(buffer, 0, n))} from {sender names source}"
        })

/// The subject's packets of `protocol` in a capture: their TTLs, DSCPs and DF bits.
let private headerFields (packets: Packet list) (protocol: string) =
    let own = packets |> List.filter (fun p -> p.FromSubject && p.Protocol = protocol)

    if own.IsEmpty then
        "none"
    else
        let df = own |> List.map (fun p -> if p.Df then "DF" else "no DF")
        $"ttl {showSet (own |> List.map _.Ttl)}, dscp {showSet (own |> List.map _.Dscp)}, {showSet df}"

/// Whether the subject sent a FIN and whether it sent a RST.
let private finOrRst (packets: Packet list) =
    let own = packets |> List.filter (fun p -> p.FromSubject && p.Protocol = "TCP")
    let fin = own |> List.exists (fun p -> p.TcpFlags.Contains "F")
    let rst = own |> List.exists (fun p -> p.TcpFlags.Contains "R")
    $"FIN {fin}, RST {rst}"

let private subjectFilter (env: Env) = $"src host {env.Subject.Address}"

// ---- The differences kept on purpose (docs/conformance.md lists each under its Id) ------------

/// The differences from the kernel that NetStack keeps on purpose.
module Differences =
    /// NetworkStream.Dispose shuts down both ways (a FIN) before the close's RST.
    let unreadDisposeNoFin =
        {
            Id = "unread-dispose-no-fin"
            Step = "wire"
            Kernel = "FIN True, RST True"
            NetStack = "FIN False, RST True"
            Reason =
                "NetworkStream.Dispose calls Shutdown(Both) (a FIN) before Socket.Close (the RST); TcpConnection is socket and stream in one and its Dispose is the close: the RST alone, as Socket.Close (scenario 26)"
        }

    /// With the FIN first, the kernel's peer reads the end before the RST comes.
    let unreadDisposePeerRead =
        {
            Id = "unread-dispose-no-fin"
            Step = "peer read"
            Kernel = "ok 0"
            NetStack = "SocketException(ConnectionReset)"
            Reason = "the same difference seen by the peer: no FIN before the RST, so its read fails at once"
        }

    /// .NET on Linux closes a socket with a call still waiting abortively (a RST).
    let closeWaitingAbortive =
        {
            Id = "close-waiting-abortive"
            Step = "peer read"
            Kernel = "SocketException(ConnectionReset)"
            NetStack = "ok 0"
            Reason =
                "Socket.Close with a call still waiting on another thread resets the connection on Linux (.NET unblocks the call with an abortive close); NetStack wakes the waiting call itself and closes gracefully, so what was written still arrives"
        }

    /// Linux sets DF on UDP datagrams that fit the path MTU (IP_PMTUDISC_WANT).
    let udpDontFragment =
        {
            Id = "udp-df-default"
            Step = "wire UDP"
            Kernel = "ttl 64, dscp 0, DF"
            NetStack = "ttl 64, dscp 0, no DF"
            Reason =
                "Linux's UDP sockets do path MTU discovery by default (IP_PMTUDISC_WANT: DF on datagrams that fit, EMSGSIZE through IP_RECVERR); NetStack's UDP has no error queue to report a smaller path MTU to the sender, so it leaves DF clear and lets routers fragment"
        }

// ---- The scenarios ----------------------------------------------------------------------------

let private connecting =
    [
        scenario 1 "connect to a closed port is refused" (fun env ->
            connect env "connect" (env.PeerAt 9) CancellationToken.None
            |> Option.iter _.Dispose())

        scenario 2 "connect to a host the peer's router cannot reach fails with its ICMP" (fun env ->
            connect env "connect" (IPEndPoint(unreachableAddress, 80)) CancellationToken.None
            |> Option.iter _.Dispose())

        scenario 3 "a canceled connect sends one SYN and no RST" (fun env ->
            let packets =
                captureWhile env $"{subjectFilter env} and tcp" (fun () ->
                    use cancel = cancelAfter 300

                    connect env "connect" (IPEndPoint(silentAddress, 80)) cancel.Token
                    |> Option.iter _.Dispose()

                    // Past the first SYN retransmission (1 s): the attempt is over for good.
                    Thread.Sleep 1500)

            let own = packets |> List.filter (fun p -> p.FromSubject && p.Protocol = "TCP")
            env.Record "wire SYNs" (string (own |> List.filter (fun p -> p.TcpFlags = "S") |> List.length))
            env.Record "wire RSTs" (string (own |> List.filter (fun p -> p.TcpFlags.Contains "R") |> List.length)))
    ]

let private binding =
    [
        scenario 4 "listening twice on one port is AddressAlreadyInUse" (fun env ->
            match env.Do "listen" (fun (_: IListener) -> "listening") (fun () -> env.Subject.Listen 0) with
            | Some first ->
                use _ = first

                env.Do "listen again" (fun (_: IListener) -> "listening") (fun () -> env.Subject.Listen first.Port)
                |> Option.iter _.Dispose()
            | None -> ())

        scenario 5 "binding UDP twice on one port is AddressAlreadyInUse" (fun env ->
            match env.Do "bind" (fun (_: IUdp) -> "bound") (fun () -> env.Subject.BindUdp 0) with
            | Some first ->
                use _ = first

                env.Do "bind again" (fun (_: IUdp) -> "bound") (fun () -> env.Subject.BindUdp first.Port)
                |> Option.iter _.Dispose()
            | None -> ())

        scenarioWith
            None
            []
            6
            "listening again on a port whose connection is in TIME-WAIT (no ReuseAddress)"
            (fun env ->
                let port = 5006

                match env.Do "listen" (fun (_: IListener) -> "listening") (fun () -> env.Subject.Listen port) with
                | Some listener ->
                    let accepted = listener.AcceptAsync CancellationToken.None
                    use peer = env.PeerSocket SocketType.Stream
                    peer.Connect(env.SubjectAt port)

                    match env.Await "accept" (fun (_: ITcp) -> "accepted") (fun () -> accepted) with
                    | Some connection ->
                        // The subject closes first: its side ends in TIME-WAIT.
                        connection.Dispose()
                        env.Record "peer read" (peerReceive peer)
                        peer.Close()
                        settle ()
                    | None -> ()

                    listener.Dispose()

                    env.Do "listen again" (fun (_: IListener) -> "listening") (fun () -> env.Subject.Listen port)
                    |> Option.iter _.Dispose()
                | None -> ())
    ]

let private closing =
    [
        scenario 7 "reads and writes after the peer's RST" (fun env ->
            match connected env with
            | Some(connection, peer) ->
                use _ = connection
                peer.LingerState <- LingerOption(true, 0)
                peer.Close()
                settle ()
                read env "read" connection 16 CancellationToken.None |> ignore
                read env "read again" connection 16 CancellationToken.None |> ignore
                write env "write" connection (ascii "late") CancellationToken.None |> ignore
            | None -> ())

        scenario 8 "writes after the peer closed (its RST answers the first)" (fun env ->
            match connected env with
            | Some(connection, peer) ->
                use _ = connection
                peer.Close()
                read env "read" connection 16 CancellationToken.None |> ignore
                write env "write" connection (ascii "a") CancellationToken.None |> ignore
                settle ()

                write env "write after the RST" connection (ascii "b") CancellationToken.None
                |> ignore

                write env "write again" connection (ascii "c") CancellationToken.None |> ignore
                read env "read after the RST" connection 16 CancellationToken.None |> ignore
            | None -> ())

        scenario 9 "Shutdown(Send): the peer reads the end, the subject still reads, writes fail" (fun env ->
            match connected env with
            | Some(connection, peer) ->
                use _ = connection
                use _ = peer

                env.Do "shutdown send" (fun () -> "done") (fun () -> connection.Shutdown SocketShutdown.Send)
                |> ignore

                env.Record "peer read" (peerReceive peer)
                peer.Send(ascii "pong") |> ignore
                read env "read" connection 16 CancellationToken.None |> ignore
                write env "write" connection (ascii "x") CancellationToken.None |> ignore
            | None -> ())

        scenario 10 "a graceful close sends a FIN; the peer reads the end" (fun env ->
            let packets =
                captureWhile env $"{subjectFilter env} and tcp[tcpflags] & tcp-fin != 0" (fun () ->
                    match connected env with
                    | Some(connection, peer) ->
                        use _ = peer
                        write env "write" connection (ascii "bye") CancellationToken.None |> ignore
                        connection.Dispose()
                        env.Record "peer read" (peerReceive peer)
                        env.Record "peer read again" (peerReceive peer)
                    | None -> ())

            env.Record "wire" (finOrRst packets))

        scenario 11 "closing with a RST (linger 0): the peer sees a RST and no FIN" (fun env ->
            let packets =
                captureWhile env $"{subjectFilter env} and tcp[tcpflags] & tcp-rst != 0" (fun () ->
                    match connected env with
                    | Some(connection, peer) ->
                        use _ = peer
                        connection.CloseWithReset()
                        env.Record "peer read" (peerReceive peer)
                    | None -> ())

            env.Record "wire" (finOrRst packets))

        scenarioWith
            None
            [ Differences.unreadDisposeNoFin; Differences.unreadDisposePeerRead ]
            12
            "disposing the stream with unread data sends a RST (RFC 2525)"
            (fun env ->
                let packets =
                    captureWhile env $"{subjectFilter env} and tcp[tcpflags] & tcp-rst != 0" (fun () ->
                        match connected env with
                        | Some(connection, peer) ->
                            use _ = peer
                            peer.Send(ascii "unread") |> ignore
                            settle ()
                            connection.Dispose()
                            env.Record "peer read" (peerReceive peer)
                        | None -> ())

                env.Record "wire" (finOrRst packets))

        scenario 26 "closing the socket with unread data sends a RST and no FIN (RFC 2525)" (fun env ->
            let packets =
                captureWhile env $"{subjectFilter env} and tcp[tcpflags] & tcp-rst != 0" (fun () ->
                    match connected env with
                    | Some(connection, peer) ->
                        use _ = peer
                        peer.Send(ascii "unread") |> ignore
                        settle ()
                        connection.CloseSocket()
                        env.Record "peer read" (peerReceive peer)
                    | None -> ())

            env.Record "wire" (finOrRst packets))

        scenarioWith None [ Differences.closeWaitingAbortive ] 13 "closing with a read waiting" (fun env ->
            match connected env with
            | Some(connection, peer) ->
                use _ = peer
                let buffer = Array.zeroCreate<byte> 16
                let pending = connection.Stream.ReadAsync(Memory buffer).AsTask()
                settle ()
                connection.CloseSocket()
                env.Record "pending read" (outcomeWithin stepTimeout string pending)
                env.Record "peer read" (peerReceive peer)
            | None -> ())

        scenario 14 "closing with a write waiting" (fun env ->
            match connected env with
            | Some(connection, peer) ->
                use _ = peer

                let pending =
                    connection.Stream.WriteAsync(ReadOnlyMemory(Array.zeroCreate<byte>(32 <<< 20))).AsTask()

                Thread.Sleep 500
                env.Record "write before the dispose" (if pending.IsCompleted then "done" else "waiting")
                connection.CloseSocket()

                env.Record
                    "pending write"
                    (outcomeWithin
                        stepTimeout
                        (fun () -> "written")
                        (task {
                            do! pending
                            return ()
                        }))
            | None -> ())
    ]

let private zeroAndCancel =
    [
        scenario 15 "zero-length writes and reads" (fun env ->
            match connected env with
            | Some(connection, peer) ->
                use _ = connection
                use _ = peer
                write env "write nothing" connection [||] CancellationToken.None |> ignore
                let waiting = connection.Stream.ReadAsync(Memory<byte>.Empty).AsTask()
                settle ()
                env.Record "zero-byte read before data" (if waiting.IsCompleted then "done" else "waiting")
                peer.Send(ascii "x") |> ignore
                env.Record "zero-byte read" (outcomeWithin stepTimeout (fun n -> $"{n} bytes") waiting)
                read env "read" connection 16 CancellationToken.None |> ignore
                peer.Shutdown SocketShutdown.Send

                read env "zero-byte read at the end" connection 0 CancellationToken.None
                |> ignore

                read env "read at the end" connection 16 CancellationToken.None |> ignore
            | None -> ())

        scenario 16 "a canceled read, then a read" (fun env ->
            match connected env with
            | Some(connection, peer) ->
                use _ = connection
                use _ = peer
                use cancel = cancelAfter 200
                read env "read" connection 16 cancel.Token |> ignore
                peer.Send(ascii "after") |> ignore
                read env "read again" connection 16 CancellationToken.None |> ignore
            | None -> ())

        scenario 17 "a canceled accept, then an accept" (fun env ->
            match env.Do "listen" (fun (_: IListener) -> "listening") (fun () -> env.Subject.Listen 0) with
            | Some listener ->
                use _ = listener
                use cancel = cancelAfter 200

                env.Await "accept" (fun (_: ITcp) -> "accepted") (fun () -> listener.AcceptAsync cancel.Token)
                |> Option.iter _.Dispose()

                use peer = env.PeerSocket SocketType.Stream
                peer.Connect(env.SubjectAt listener.Port)

                env.Await "accept again" (fun (_: ITcp) -> "accepted") (fun () ->
                    listener.AcceptAsync CancellationToken.None)
                |> Option.iter _.Dispose()
            | None -> ())

        scenario 18 "a canceled write (the peer does not read)" (fun env ->
            match connected env with
            | Some(connection, peer) ->
                use _ = connection
                use _ = peer
                use cancel = cancelAfter 500

                write env "write" connection (Array.zeroCreate (32 <<< 20)) cancel.Token
                |> ignore
            | None -> ())

        scenario 19 "a canceled UDP receive, then a receive" (fun env ->
            match env.Do "bind" (fun (_: IUdp) -> "bound") (fun () -> env.Subject.BindUdp 0) with
            | Some udp ->
                use _ = udp
                use peer = peerUdp env peerAddress
                use cancel = cancelAfter 200
                receiveFrom env "receive" udp 64 [ peer, "the peer" ] cancel.Token |> ignore
                peer.SendTo(ascii "after", env.SubjectAt udp.Port) |> ignore

                receiveFrom env "receive again" udp 64 [ peer, "the peer" ] CancellationToken.None
                |> ignore
            | None -> ())
    ]

let private udp =
    [
        scenario 20 "UDP connect: earlier datagrams stay, later ones from other peers are dropped" (fun env ->
            match env.Do "bind" (fun (_: IUdp) -> "bound") (fun () -> env.Subject.BindUdp 0) with
            | Some udp ->
                use _ = udp
                use peer = peerUdp env peerAddress
                use samePeerOtherPort = peerUdp env peerAddress
                use otherPeer = peerUdp env otherPeerAddress

                let names =
                    [
                        peer, "the peer"
                        samePeerOtherPort, "the peer's other port"
                        otherPeer, "another peer"
                    ]

                let target = env.SubjectAt udp.Port
                otherPeer.SendTo(ascii "early", target) |> ignore
                settle ()

                env.Do "connect" (fun () -> "connected") (fun () -> udp.Connect(peer.LocalEndPoint :?> IPEndPoint))
                |> ignore

                otherPeer.SendTo(ascii "other host", target) |> ignore
                samePeerOtherPort.SendTo(ascii "other port", target) |> ignore
                peer.SendTo(ascii "mine", target) |> ignore
                receiveFrom env "receive" udp 64 names CancellationToken.None |> ignore
                receiveFrom env "receive" udp 64 names CancellationToken.None |> ignore
                use cancel = cancelAfter 500
                receiveFrom env "receive (500 ms)" udp 64 names cancel.Token |> ignore

                env.Await "send" string (fun () -> udp.SendAsync(ascii "reply", CancellationToken.None))
                |> ignore

                env.Record "peer receive" (peerReceive peer)
            | None -> ())

        scenario 21 "UDP datagrams beyond the MTU are fragmented; beyond 65507 bytes MessageSize" (fun env ->
            match env.Do "bind" (fun (_: IUdp) -> "bound") (fun () -> env.Subject.BindUdp 0) with
            | Some udp ->
                use _ = udp
                use peer = peerUdp env peerAddress
                let target = peer.LocalEndPoint :?> IPEndPoint

                let packets =
                    captureWhile env $"{subjectFilter env} and udp" (fun () ->
                        for size in [ 4000; 65507; 65508 ] do
                            env.Await $"send {size}" string (fun () ->
                                udp.SendToAsync(Array.init size byte, target, CancellationToken.None))
                            |> ignore

                            if size <= 65507 then
                                env.Record $"peer receive {size}" (peerReceive peer))

                let own = packets |> List.filter (fun p -> p.FromSubject)
                env.Record "wire fragments" (string (own |> List.exists _.Fragment))
                env.Record "wire DF on fragments" (showSet (own |> List.filter _.Fragment |> List.map _.Df))
            | None -> ())

        scenario 22 "a UDP datagram longer than the receive buffer is truncated, without MessageSize" (fun env ->
            match env.Do "bind" (fun (_: IUdp) -> "bound") (fun () -> env.Subject.BindUdp 0) with
            | Some udp ->
                use _ = udp
                use peer = peerUdp env peerAddress
                peer.SendTo(Array.create 100 200uy, env.SubjectAt udp.Port) |> ignore
                peer.SendTo(ascii "next", env.SubjectAt udp.Port) |> ignore

                receiveFrom env "receive into 10 bytes" udp 10 [ peer, "the peer" ] CancellationToken.None
                |> ignore

                receiveFrom env "receive" udp 64 [ peer, "the peer" ] CancellationToken.None
                |> ignore
            | None -> ())

        scenario 23 "a connected UDP socket hears the peer's port unreachable" (fun env ->
            match env.Do "bind" (fun (_: IUdp) -> "bound") (fun () -> env.Subject.BindUdp 0) with
            | Some udp ->
                use _ = udp

                env.Do "connect" (fun () -> "connected") (fun () -> udp.Connect(env.PeerAt 9))
                |> ignore

                env.Await "send" string (fun () -> udp.SendAsync(ascii "anyone?", CancellationToken.None))
                |> ignore

                settle ()
                use cancel = cancelAfter 500
                receiveFrom env "receive" udp 64 [] cancel.Token |> ignore

                env.Await "send again" string (fun () -> udp.SendAsync(ascii "anyone?", CancellationToken.None))
                |> ignore
            | None -> ())

        scenario
            43
            "blocking UDP calls: SendTo, ReceiveFrom, ReceiveTimeout, a blocked receive when the socket closes"
            (fun env ->
                match env.Do "bind" (fun (_: IUdp) -> "bound") (fun () -> env.Subject.BindUdp 0) with
                | Some udp ->
                    use peer = peerUdp env peerAddress
                    let target = peer.LocalEndPoint :?> IPEndPoint
                    let names = [ peer, "the peer" ]

                    let show (n: int, source: IPEndPoint) (buffer: byte[]) =
                        $"{showBytes (ReadOnlySpan(buffer, 0, n))} from {sender names source}"

                    env.Record "receive timeout by default" (string udp.ReceiveTimeout)

                    env.Do "set receive timeout -1" (fun () -> "set") (fun () -> udp.ReceiveTimeout <- -1)
                    |> ignore

                    env.Record "receive timeout after -1" (string udp.ReceiveTimeout)

                    env.Do "set receive timeout -2" (fun () -> "set") (fun () -> udp.ReceiveTimeout <- -2)
                    |> ignore

                    peer.SendTo(ascii "one", env.SubjectAt udp.Port) |> ignore
                    let buffer = Array.zeroCreate<byte> 64

                    env.Do "receive" (fun r -> show r buffer) (fun () -> udp.ReceiveFrom buffer)
                    |> ignore

                    env.Do "send" string (fun () -> udp.SendTo(ascii "two", target)) |> ignore
                    env.Record "peer receive" (peerReceive peer)

                    udp.ReceiveTimeout <- 300
                    env.Record "receive timeout" (string udp.ReceiveTimeout)

                    env.Do "receive with nothing sent" (fun r -> show r buffer) (fun () -> udp.ReceiveFrom buffer)
                    |> ignore

                    udp.ReceiveTimeout <- 0
                    // A datagram that arrives while a receive is blocked ends it.
                    let waiting = Array.zeroCreate<byte> 64
                    let arriving = Task.Run(fun () -> udp.ReceiveFrom waiting)
                    settle ()
                    env.Record "blocked before the datagram" (string arriving.IsCompleted)
                    peer.SendTo(ascii "three", env.SubjectAt udp.Port) |> ignore

                    env.Record
                        "blocked receive at the datagram"
                        (outcomeWithin stepTimeout (fun r -> show r waiting) arriving)

                    // Connected to a port nobody holds: the port unreachable that the send brings
                    // back ends a receive blocked meanwhile.
                    env.Do "connect to a closed port" (fun () -> "connected") (fun () -> udp.Connect(env.PeerAt 9))
                    |> ignore

                    let refused = Task.Run(fun () -> udp.ReceiveFrom(Array.zeroCreate 64))
                    settle ()

                    env.Do "send to the closed port" string (fun () -> udp.SendTo(ascii "anyone?", env.PeerAt 9))
                    |> ignore

                    env.Record
                        "blocked receive at the port unreachable"
                        (outcomeWithin stepTimeout (fun (n, _) -> $"{n} bytes") refused)

                    let blocked = Task.Run(fun () -> udp.ReceiveFrom(Array.zeroCreate 64))
                    Thread.Sleep 300
                    env.Record "blocked before the close" (string blocked.IsCompleted)
                    udp.Dispose()

                    env.Record
                        "blocked receive at the close"
                        (outcomeWithin stepTimeout (fun (n, _) -> $"{n} bytes") blocked)

                    env.Do "receive after the close" (fun r -> show r buffer) (fun () -> udp.ReceiveFrom buffer)
                    |> ignore
                | None -> ())
    ]

let private disposal =
    [
        scenario 38 "disposing a listener: a waiting accept fails; a connection not yet accepted is reset" (fun env ->
            match env.Do "listen" (fun (_: IListener) -> "listening") (fun () -> env.Subject.Listen 0) with
            | Some listener ->
                let waiting = listener.AcceptAsync CancellationToken.None
                settle ()
                listener.Dispose()
                env.Record "waiting accept" (outcomeWithin stepTimeout (fun (_: ITcp) -> "accepted") waiting)
            | None -> ()

            match env.Do "listen again" (fun (_: IListener) -> "listening") (fun () -> env.Subject.Listen 0) with
            | Some listener ->
                use queued = env.PeerSocket SocketType.Stream
                queued.Connect(env.SubjectAt listener.Port)
                settle ()
                listener.Dispose()
                env.Record "the peer of a connection not accepted reads" (peerReceive queued)
            | None -> ())

        scenario 39 "disposing a UDP socket with a receive waiting" (fun env ->
            match env.Do "bind" (fun (_: IUdp) -> "bound") (fun () -> env.Subject.BindUdp 0) with
            | Some udp ->
                let buffer = Array.zeroCreate<byte> 64
                let waiting = udp.ReceiveFromAsync(Memory buffer, CancellationToken.None)
                settle ()
                udp.Dispose()
                env.Record "waiting receive" (outcomeWithin stepTimeout (fun (n, _) -> $"{n} bytes") waiting)

                env.Await "receive after the dispose" (fun (n, _) -> $"{n} bytes") (fun () ->
                    udp.ReceiveFromAsync(Memory buffer, CancellationToken.None))
                |> ignore

                env.Await "send after the dispose" string (fun () ->
                    udp.SendToAsync(ascii "x", env.PeerAt 9, CancellationToken.None))
                |> ignore
            | None -> ())

        scenario 40 "TCP calls after dispose" (fun env ->
            match connected env with
            | Some(connection, peer) ->
                use _ = peer
                connection.Dispose()
                read env "read" connection 16 CancellationToken.None |> ignore
                write env "write" connection (ascii "x") CancellationToken.None |> ignore

                env.Do "dispose again" (fun () -> "done") (fun () -> connection.Dispose())
                |> ignore

                env.Do "shutdown send" (fun () -> "done") (fun () -> connection.Shutdown SocketShutdown.Send)
                |> ignore
            | None -> ())

        scenario 41 "a connected UDP socket may still send to another address" (fun env ->
            match env.Do "bind" (fun (_: IUdp) -> "bound") (fun () -> env.Subject.BindUdp 0) with
            | Some udp ->
                use _ = udp
                use peer = peerUdp env peerAddress
                use other = peerUdp env otherPeerAddress
                udp.Connect(peer.LocalEndPoint :?> IPEndPoint)

                env.Await "send to another address" string (fun () ->
                    udp.SendToAsync(ascii "aside", other.LocalEndPoint :?> IPEndPoint, CancellationToken.None))
                |> ignore

                env.Record "the other peer receives" (peerReceive other)
            | None -> ())

        scenarioWith None [] 42 "ReadTimeout on a synchronous read" (fun env ->
            match connected env with
            | Some(connection, peer) ->
                use _ = connection
                use _ = peer
                env.Do "CanTimeout" string (fun () -> connection.Stream.CanTimeout) |> ignore

                env.Do "set ReadTimeout 300" (fun () -> "set") (fun () -> connection.Stream.ReadTimeout <- 300)
                |> ignore

                // On a thread of its own, waited for 2 s: without a timeout the read would block.
                let reading = Task.Run(fun () -> connection.Stream.Read(Array.zeroCreate 16, 0, 16))

                env.Record "read" (outcomeWithin (TimeSpan.FromSeconds 2.0) string reading)

                if reading.IsCompleted then
                    peer.Send(ascii "after") |> ignore
                    read env "read again" connection 16 CancellationToken.None |> ignore
            | None -> ())
    ]

let private wire =
    [
        scenario 24 "defaults on the wire: TCP" (fun env ->
            let packets =
                captureWhile env $"{subjectFilter env} and tcp[tcpflags] & tcp-fin != 0" (fun () ->
                    match connected env with
                    | Some(connection, peer) ->
                        use _ = peer
                        env.Record "NoDelay" (string connection.NoDelay)
                        write env "write" connection (ascii "hello") CancellationToken.None |> ignore
                        env.Record "peer read" (peerReceive peer)
                        connection.Dispose()
                        env.Record "peer read again" (peerReceive peer)
                    | None -> ())

            env.Record "wire TCP" (headerFields packets "TCP"))

        scenarioWith None [ Differences.udpDontFragment ] 25 "defaults on the wire: UDP" (fun env ->
            match env.Do "bind" (fun (_: IUdp) -> "bound") (fun () -> env.Subject.BindUdp 0) with
            | Some udp ->
                use _ = udp
                use peer = peerUdp env peerAddress

                let packets =
                    captureWhile env $"{subjectFilter env} and udp" (fun () ->
                        env.Await "send" string (fun () ->
                            udp.SendToAsync(ascii "hello", peer.LocalEndPoint :?> IPEndPoint, CancellationToken.None))
                        |> ignore

                        env.Record "peer receive" (peerReceive peer))

                env.Record "wire UDP" (headerFields packets "UDP")
            | None -> ())
    ]

/// The subject's TCP packets.
let private ownTcp (packets: Packet list) =
    packets |> List.filter (fun p -> p.FromSubject && p.Protocol = "TCP")

let private options =
    [
        scenario 27 "Ttl, TypeOfService and DontFragment set before connect mark every segment" (fun env ->
            let packets =
                captureWhile env $"{subjectFilter env} and tcp[tcpflags] & tcp-fin != 0" (fun () ->
                    use listener = peerListener env
                    let accepted = listener.AcceptAsync()

                    let options = [ Ttl 7s; TypeOfService 0x28; DontFragment false ]

                    match
                        env.Await "connect" (fun (_: ITcp) -> "connected") (fun () ->
                            env.Subject.ConnectWith(
                                env.PeerAt (listener.LocalEndPoint :?> IPEndPoint).Port,
                                options,
                                CancellationToken.None
                            ))
                    with
                    | Some connection ->
                        use peer = TestUtil.waitWithin stepTimeout accepted
                        write env "write" connection (ascii "marked") CancellationToken.None |> ignore
                        env.Record "peer read" (peerReceive peer)
                        connection.Dispose()
                        env.Record "peer read again" (peerReceive peer)
                    | None -> ())

            env.Record "wire TCP" (headerFields packets "TCP"))

        scenarioWith None [] 28 "Ttl and TypeOfService set on a connection change its later segments" (fun env ->
            match connected env with
            | Some(connection, peer) ->
                use _ = peer

                let packets =
                    captureWhile env $"{subjectFilter env} and tcp[tcpflags] & tcp-fin != 0" (fun () ->
                        env.Do "set Ttl 9" (fun () -> "set") (fun () -> connection.Set(Ttl 9s))
                        |> ignore

                        env.Do "set TypeOfService 0x48" (fun () -> "set") (fun () ->
                            connection.Set(TypeOfService 0x48))
                        |> ignore

                        write env "write" connection (ascii "later") CancellationToken.None |> ignore
                        env.Record "peer read" (peerReceive peer)
                        connection.Dispose()
                        env.Record "peer read again" (peerReceive peer))

                env.Record "wire TCP" (headerFields packets "TCP")
            | None -> ())

        scenario 29 "a listener's Ttl and TypeOfService are inherited by its connections" (fun env ->
            let packets =
                captureWhile env $"{subjectFilter env} and tcp[tcpflags] & tcp-fin != 0" (fun () ->
                    match
                        env.Do "listen" (fun (_: IListener) -> "listening") (fun () ->
                            env.Subject.ListenWith(0, [ Ttl 5s; TypeOfService 0x20 ]))
                    with
                    | Some listener ->
                        use _ = listener
                        let accepting = listener.AcceptAsync CancellationToken.None
                        use peer = env.PeerSocket SocketType.Stream
                        peer.Connect(env.SubjectAt listener.Port)

                        match env.Await "accept" (fun (_: ITcp) -> "accepted") (fun () -> accepting) with
                        | Some connection ->
                            write env "write" connection (ascii "inherited") CancellationToken.None
                            |> ignore

                            env.Record "peer read" (peerReceive peer)
                            connection.Dispose()
                            env.Record "peer read again" (peerReceive peer)
                        | None -> ()
                    | None -> ())

            env.Record "wire TCP" (headerFields packets "TCP"))

        scenario 30 "connect from a fixed local port; from a port a listener holds" (fun env ->
            use listener = peerListener env
            let target = env.PeerAt (listener.LocalEndPoint :?> IPEndPoint).Port
            let accepted = listener.AcceptAsync()

            match
                env.Await "connect from port 5030" (fun (_: ITcp) -> "connected") (fun () ->
                    env.Subject.ConnectWith(target, [ LocalEndPoint(env.SubjectAt 5030) ], CancellationToken.None))
            with
            | Some connection ->
                use _ = connection
                use peer = TestUtil.waitWithin stepTimeout accepted
                env.Record "the peer sees port" (string (peer.RemoteEndPoint :?> IPEndPoint).Port)
            | None -> ()

            match env.Do "listen on 5031" (fun (_: IListener) -> "listening") (fun () -> env.Subject.Listen 5031) with
            | Some held ->
                use _ = held

                env.Await "connect from port 5031" (fun (_: ITcp) -> "connected") (fun () ->
                    env.Subject.ConnectWith(target, [ LocalEndPoint(env.SubjectAt 5031) ], CancellationToken.None))
                |> Option.iter _.Dispose()

                env.Await "connect from port 5031 with ReuseAddress" (fun (_: ITcp) -> "connected") (fun () ->
                    env.Subject.ConnectWith(
                        target,
                        [ ReuseAddress true; LocalEndPoint(env.SubjectAt 5031) ],
                        CancellationToken.None
                    ))
                |> Option.iter _.Dispose()
            | None -> ())

        scenarioWith None [] 31 "connect again from a local port whose connection is in TIME-WAIT" (fun env ->
            use listener = peerListener env
            let target = env.PeerAt (listener.LocalEndPoint :?> IPEndPoint).Port
            use other = peerListener env
            let otherTarget = env.PeerAt (other.LocalEndPoint :?> IPEndPoint).Port
            let local = LocalEndPoint(env.SubjectAt 5032)
            let accepted = listener.AcceptAsync()

            match
                env.Await "connect" (fun (_: ITcp) -> "connected") (fun () ->
                    env.Subject.ConnectWith(target, [ local ], CancellationToken.None))
            with
            | Some connection ->
                use peer = TestUtil.waitWithin stepTimeout accepted
                // The subject closes first: its end goes to TIME-WAIT.
                connection.Dispose()
                env.Record "peer read" (peerReceive peer)
                peer.Close()
                settle ()

                for name, options, remote in
                    [
                        "to the same peer", [ local ], target
                        "to the same peer with ReuseAddress", [ ReuseAddress true; local ], target
                        "to another peer port", [ local ], otherTarget
                        "to another peer port with ReuseAddress", [ ReuseAddress true; local ], otherTarget
                    ] do
                    // Each attempt ends with a RST, so no state of it is left for the next one.
                    env.Await $"connect again {name}" (fun (_: ITcp) -> "connected") (fun () ->
                        env.Subject.ConnectWith(remote, options, CancellationToken.None))
                    |> Option.iter _.CloseWithReset()

                    settle ()
            | None -> ())

        scenario 32 "keep-alive: probes after the idle time, not before" (fun env ->
            use listener = peerListener env
            let target = env.PeerAt (listener.LocalEndPoint :?> IPEndPoint).Port
            let accepted = listener.AcceptAsync()

            let tcpdump =
                Capture.start [ "ip"; "netns"; "exec"; env.PeerNs ] env.Subject.PeerSideDevice env.CaptureFile

            try
                match
                    env.Await "connect" (fun (_: ITcp) -> "connected") (fun () ->
                        env.Subject.ConnectWith(
                            target,
                            [ KeepAlive(TimeSpan.FromSeconds 1.0, TimeSpan.FromSeconds 1.0, 3) ],
                            CancellationToken.None
                        ))
                with
                | Some connection ->
                    use _ = connection
                    use peer = TestUtil.waitWithin stepTimeout accepted
                    Capture.awaitPackets env.CaptureFile $"{subjectFilter env} and tcp"

                    let count () =
                        (readPackets env.Subject.Address env.CaptureFile |> ownTcp).Length

                    let atStart = count ()
                    Thread.Sleep 600
                    env.Record "subject's segments in the first 0.6 s idle" (string (count () - atStart))
                    Thread.Sleep 2000
                    env.Record "probes within 2.6 s idle" (string (count () - atStart >= 1))
                    env.Record "peer read" (peerReceive peer |> fun r -> if r = "pending" then "nothing" else r)
                | None -> ()
            finally
                Capture.stop tcpdump)

        scenarioWith None [] 33 "Shutdown(Receive): what reads give, what the peer sees" (fun env ->
            match connected env with
            | Some(connection, peer) ->
                use _ = connection
                use _ = peer

                env.Do "shutdown receive" (fun () -> "done") (fun () -> connection.Shutdown SocketShutdown.Receive)
                |> ignore

                read env "read" connection 16 CancellationToken.None |> ignore
                peer.Send(ascii "late") |> ignore
                settle ()
                read env "read after data" connection 16 CancellationToken.None |> ignore
                write env "write" connection (ascii "still") CancellationToken.None |> ignore
                env.Record "peer read" (peerReceive peer)
            | None -> ())

        scenarioWith None [] 34 "Shutdown(Both): the peer reads the end; reads and writes after it" (fun env ->
            match connected env with
            | Some(connection, peer) ->
                use _ = connection
                use _ = peer

                env.Do "shutdown both" (fun () -> "done") (fun () -> connection.Shutdown SocketShutdown.Both)
                |> ignore

                env.Record "peer read" (peerReceive peer)
                read env "read" connection 16 CancellationToken.None |> ignore
                write env "write" connection (ascii "x") CancellationToken.None |> ignore
            | None -> ())

        scenarioWith None [] 35 "Available: the bytes readable now (TCP)" (fun env ->
            match connected env with
            | Some(connection, peer) ->
                use _ = connection
                use _ = peer
                env.Do "available" string (fun () -> connection.Available) |> ignore
                peer.Send(ascii "12345") |> ignore
                settle ()

                env.Do "available after 5 bytes" string (fun () -> connection.Available)
                |> ignore

                read env "read 2" connection 2 CancellationToken.None |> ignore

                env.Do "available after reading 2" string (fun () -> connection.Available)
                |> ignore
            | None -> ())

        scenarioWith None [] 36 "Available on UDP: the next datagram's size" (fun env ->
            match env.Do "bind" (fun (_: IUdp) -> "bound") (fun () -> env.Subject.BindUdp 0) with
            | Some udp ->
                use _ = udp
                use peer = peerUdp env peerAddress
                env.Do "available" string (fun () -> udp.Available) |> ignore
                peer.SendTo(ascii "abc", env.SubjectAt udp.Port) |> ignore
                peer.SendTo(ascii "defghij", env.SubjectAt udp.Port) |> ignore
                settle ()
                env.Do "available after 3 + 7 bytes" string (fun () -> udp.Available) |> ignore
            | None -> ())

        scenarioWith None [] 37 "UDP Ttl, TypeOfService and DontFragment on the wire" (fun env ->
            match env.Do "bind" (fun (_: IUdp) -> "bound") (fun () -> env.Subject.BindUdp 0) with
            | Some udp ->
                use _ = udp
                use peer = peerUdp env peerAddress

                let packets =
                    captureWhile env $"{subjectFilter env} and udp" (fun () ->
                        for option in [ Ttl 3s; TypeOfService 0x60; DontFragment true ] do
                            env.Do $"set {option}" (fun () -> "set") (fun () -> udp.Set option) |> ignore

                        env.Await "send" string (fun () ->
                            udp.SendToAsync(
                                ascii "marked",
                                peer.LocalEndPoint :?> IPEndPoint,
                                CancellationToken.None
                            ))
                        |> ignore

                        env.Record "peer receive" (peerReceive peer))

                env.Record "wire UDP" (headerFields packets "UDP")
            | None -> ())
    ]

// ---- The README's error table ------------------------------------------------------------------

/// The rows of the README's error table: (call, when, result, [scenario number, step]).
let private readmeRows () =
    let readme = File.ReadAllText(Path.Combine(TestUtil.repoRoot.Value, "README.md"))
    let lines = readme.Split('\n') |> Array.map _.TrimEnd()

    let header =
        lines |> Array.findIndex (fun l -> l = "| call | when | result | checked by |")

    [
        for line in lines |> Array.skip (header + 2) |> Array.takeWhile (fun l -> l.StartsWith "|") do
            match line.Split('|') |> Array.map _.Trim() with
            | [| ""; call; condition; result; checkedBy; "" |] ->
                let steps =
                    [
                        for key in checkedBy.Split(';') do
                            let colon = key.IndexOf ':'
                            int (key.[.. colon - 1].Trim()), key.[colon + 1 ..].Trim()
                    ]

                call, condition, result, steps
            | _ -> failtestf "a README error table row has four cells: %s" line
    ]

/// What a result cell says a step's outcome is: "`SocketException` (X)" is SocketException(X),
/// "`IOException` (X)" an IOException wrapping SocketException(X), "`T`" an exception of type T,
/// "returns V" (or "waits, then returns V") a success whose value begins with V.
let private expectedOutcome (result: string) =
    let exceptionCell = Regex.Match(result, @"^`(\w+)`(?: \((\w+)\))?$")
    let returns = Regex.Match(result, @"returns ([^(]+?)(?: \(.*\))?$")

    if exceptionCell.Success then
        let name = exceptionCell.Groups.[1].Value
        let error = exceptionCell.Groups.[2]

        let outcome =
            match name with
            | "IOException" when error.Success -> $"IOException(SocketException({error.Value}))"
            | _ when error.Success -> $"{name}({error.Value})"
            | _ -> name

        fun (observed: string) -> observed = outcome
    elif returns.Success then
        let value = "ok " + returns.Groups.[1].Value
        fun (observed: string) -> observed = value || observed.StartsWith(value + " ")
    else
        failtestf "the README's result cell '%s' is neither an exception nor 'returns ...'" result

let private readmeTable =
    test "the README's error table is what the kernel and NetStack did" {
        let rows = readmeRows ()
        Expect.isGreaterThanOrEqual rows.Length 10 "the table has its rows"

        for call, condition, result, steps in rows do
            let matches = expectedOutcome result
            Expect.isNonEmpty steps $"{call} / {condition} names the suite's steps"

            for n, step in steps do
                for subject in [ "kernel"; "netstack" ] do
                    match outcomes.TryGetValue $"{subject} {n}: {step}" with
                    | true, observed ->
                        Expect.isTrue
                            (matches observed)
                            $"README: {call} when {condition} gives {result}; the {subject} gave {observed} ({n}: {step})"
                    | _ ->
                        failtestf
                            "README row %s / %s: the suite has no outcome for the %s at %d: %s (run the whole Conformance list)"
                            call
                            condition
                            subject
                            n
                            step
    }

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Conformance"
        (connecting
         @ binding
         @ closing
         @ zeroAndCancel
         @ udp
         @ disposal
         @ wire
         @ options
         @ [ readmeTable ])
