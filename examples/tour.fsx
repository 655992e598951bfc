// A tour of NetStack's socket API from F#: bring a stack up on a TUN device, serve TCP to a kernel
// client, connect out to a kernel server, exchange UDP datagrams and ping the kernel.
//
// The TUN device needs CAP_NET_ADMIN, so run it in a throwaway network namespace, from the
// repository root, after `./build.sh build`:
//
//     unshare --user --map-root-user --net dotnet fsi examples/tour.fsx
//
// The kernel side of the link (10.97.30.1, fd97:30::1) plays the other machine; the stack is
// 10.97.30.2 and fd97:30::2. The kernel's part is written with .NET's own Socket class.

// NetStack.Api's build folder holds it with every assembly it needs.
#r "../NetStack.Api/bin/Release/net10.0/NetStack.Core.dll"
#r "../NetStack.Api/bin/Release/net10.0/NetStack.Api.dll"
#r "../NetStack.Api/bin/Release/net10.0/Microsoft.Extensions.Logging.Abstractions.dll"

open System
open System.IO
open System.Net
open System.Net.Sockets
open System.Text
open NetStack

let options =
    NetStackOptions(
        TunName = "ns97tour",
        Address = IPAddress.Parse "10.97.30.2",
        HostAddress = IPAddress.Parse "10.97.30.1",
        Address6 = IPAddress.Parse "fd97:30::2",
        HostAddress6 = IPAddress.Parse "fd97:30::1"
    )

let tour () =
    task {
        // Creates the interface, gives the kernel side its addresses, starts the loop.
        use stack = NetworkStack.Start options
        printfn "stack up on %s: %O and %O" stack.InterfaceName options.Address options.Address6

        // TCP server: listen on both families; an accepted connection is a Stream.
        use listener = stack.ListenTcp 7

        let echo =
            task {
                let! connection = listener.AcceptAsync()
                do! connection.CopyToAsync connection // echo until the peer's FIN
                connection.ShutdownWrite() // then our FIN
                do! connection.DisposeAsync()
            }

        use client =
            new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp)

        do! client.ConnectAsync(IPEndPoint(options.Address6, 7))
        use stream = new NetworkStream(client)
        do! stream.WriteAsync(ReadOnlyMemory(Encoding.UTF8.GetBytes "hello over TCP"))
        client.Shutdown SocketShutdown.Send
        use reader = new StreamReader(stream)
        let! echoed = reader.ReadToEndAsync()
        do! echo
        printfn "TCP echo from the stack: %s" echoed

        // TCP client: the stack connects to a kernel listener.
        use kernelListener =
            new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

        kernelListener.Bind(IPEndPoint(options.HostAddress, 0))
        kernelListener.Listen 1

        let kernelSide =
            task {
                use! peer = kernelListener.AcceptAsync()

                let! _ =
                    peer.SendAsync(ReadOnlyMemory(Encoding.UTF8.GetBytes "hello from the kernel"))

                peer.Shutdown SocketShutdown.Both
            }

        let! connection = stack.ConnectTcpAsync(kernelListener.LocalEndPoint :?> IPEndPoint)
        use reader = new StreamReader(connection)
        let! greeting = reader.ReadToEndAsync()
        do! kernelSide
        printfn "TCP from %O to %O: %s" connection.LocalEndPoint connection.RemoteEndPoint greeting

        // UDP: bind (IPv6Any takes both families), receive a datagram, answer it.
        use udp = stack.BindUdp(IPEndPoint(IPAddress.IPv6Any, 7000))

        use kernelUdp =
            new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

        kernelUdp.Bind(IPEndPoint(options.HostAddress, 0))

        let! _ =
            kernelUdp.SendToAsync(
                ArraySegment(Encoding.UTF8.GetBytes "ping over UDP"),
                IPEndPoint(options.Address, 7000)
            )

        let buffer = Array.zeroCreate<byte> 2048
        let! received = udp.ReceiveFromAsync(Memory buffer)
        let text = Encoding.UTF8.GetString(buffer, 0, received.ReceivedBytes)

        let! _ =
            udp.SendToAsync(
                ReadOnlyMemory(Encoding.UTF8.GetBytes(text.ToUpperInvariant())),
                received.RemoteEndPoint :?> IPEndPoint
            )

        let answer = Array.zeroCreate<byte> 2048
        let! n = kernelUdp.ReceiveAsync(ArraySegment answer)
        printfn "UDP answer from the stack: %s" (Encoding.UTF8.GetString(answer, 0, n))

        // Ping the kernel from the stack.
        let! reply = stack.PingAsync(options.HostAddress, TimeSpan.FromSeconds 2.0)
        printfn "ping %O from the stack: %O" options.HostAddress reply.Status

        // Every counter by name (drops by reason too).
        printfn "TCP connections established: %d" stack.Statistics.["tcp.connected"]

        // The engine keeps its loop alive through any exception and counts it under one of
        // these names: above 0 means a bug (or, for engine.loop-error, a failing device).
        printfn
            "exceptions the stack caught: drop.exception %d, engine.loop-error %d, engine.command-error %d"
            stack.Statistics.["drop.exception"]
            stack.Statistics.["engine.loop-error"]
            stack.Statistics.["engine.command-error"]
    }

tour().GetAwaiter().GetResult()
