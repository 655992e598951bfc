/// The kernel as a subject: System.Net.Sockets.Socket (and NetworkStream for the stream calls),
/// each socket made inside the subject's own network namespace, which a veth pair joins to the
/// peer's namespace.
module NetStack.Tests.Conformance.KernelSubject

open System
open System.Net
open System.Net.Sockets
open NetStack.Tests
open NetStack.Tests.Conformance.Subject

/// Sets `option` on a kernel socket.
let apply (socket: Socket) (option: SocketOption) =
    match option with
    | Ttl ttl -> socket.Ttl <- ttl
    | TypeOfService tos -> socket.SetSocketOption(SocketOptionLevel.IP, SocketOptionName.TypeOfService, tos)
    | DontFragment df -> socket.DontFragment <- df
    | Linger linger -> socket.LingerState <- linger
    | KeepAlive(time, interval, count) ->
        socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true)
        socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime, int time.TotalSeconds)
        socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveInterval, int interval.TotalSeconds)
        socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveRetryCount, count)
    | NoDelay noDelay -> socket.NoDelay <- noDelay
    | ReuseAddress reuse -> socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, reuse)
    | LocalEndPoint local -> socket.Bind local

type private KernelTcp(socket: Socket) =
    let stream = new NetworkStream(socket, ownsSocket = true)

    interface ITcp with
        member _.Stream = stream
        member _.Shutdown how = socket.Shutdown how

        member _.CloseWithReset() =
            socket.LingerState <- LingerOption(true, 0)
            socket.Close()
            stream.Dispose()

        member _.CloseSocket() =
            socket.Close()
            stream.Dispose()

        member _.NoDelay
            with get () = socket.NoDelay
            and set value = socket.NoDelay <- value

        member _.Set option = apply socket option
        member _.Available = socket.Available
        member _.Dispose() = stream.Dispose()

type private KernelListener(socket: Socket) =
    interface IListener with
        member _.Port = (socket.LocalEndPoint :?> IPEndPoint).Port

        member _.AcceptAsync cancel =
            task {
                let! accepted = socket.AcceptAsync cancel
                return new KernelTcp(accepted) :> ITcp
            }

        member _.Dispose() = socket.Dispose()

type private KernelUdp(socket: Socket) =
    interface IUdp with
        member _.Port = (socket.LocalEndPoint :?> IPEndPoint).Port
        member _.Connect remote = socket.Connect remote

        member _.SendToAsync(datagram, remote, cancel) =
            socket.SendToAsync(ReadOnlyMemory datagram, SocketFlags.None, remote, cancel).AsTask()

        member _.SendAsync(datagram, cancel) =
            socket.SendAsync(ReadOnlyMemory datagram, SocketFlags.None, cancel).AsTask()

        member _.ReceiveFromAsync(buffer, cancel) =
            task {
                let! result =
                    socket.ReceiveFromAsync(buffer, SocketFlags.None, IPEndPoint(IPAddress.Any, 0), cancel)

                return result.ReceivedBytes, (result.RemoteEndPoint :?> IPEndPoint)
            }

        member _.ReceiveFrom buffer =
            let mutable from = IPEndPoint(IPAddress.Any, 0) :> EndPoint
            let n = socket.ReceiveFrom(Span<byte> buffer, &from)
            n, (from :?> IPEndPoint)

        member _.SendTo(datagram, remote) =
            socket.SendTo(ReadOnlySpan<byte> datagram, remote :> EndPoint)

        member _.ReceiveTimeout
            with get () = socket.ReceiveTimeout
            and set value = socket.ReceiveTimeout <- value

        member _.Set option = apply socket option
        member _.Available = socket.Available
        member _.Dispose() = socket.Dispose()

/// A kernel socket of `kind` made in namespace `ns` (it stays there, whichever thread uses it).
let socketIn (ns: string) (family: AddressFamily) (kind: SocketType) =
    let protocol =
        if kind = SocketType.Stream then
            ProtocolType.Tcp
        else
            ProtocolType.Udp

    Netns.inNetns ns (fun () -> new Socket(family, kind, protocol))

/// The kernel subject living in namespace `ns` at `address`; `device` is its veth's name in the
/// peer's namespace.
let create (ns: string) (address: IPAddress) (device: string) =
    { new ISubject with
        member _.Name = "kernel"
        member _.Address = address
        member _.PeerSideDevice = device

        member this.ConnectAsync(remote, cancel) = this.ConnectWith(remote, [], cancel)

        member _.ConnectWith(remote, options, cancel) =
            task {
                let socket = socketIn ns remote.AddressFamily SocketType.Stream

                try
                    for option in options do
                        apply socket option

                    do! socket.ConnectAsync(remote, cancel)
                    return new KernelTcp(socket) :> ITcp
                with e ->
                    socket.Dispose()
                    return raise e
            }

        member this.Listen port = this.ListenWith(port, [])

        member _.ListenWith(port, options) =
            let socket = socketIn ns address.AddressFamily SocketType.Stream

            try
                for option in options do
                    apply socket option

                socket.Bind(IPEndPoint(address, port))
                socket.Listen 16
                new KernelListener(socket) :> IListener
            with _ ->
                socket.Dispose()
                reraise ()

        member _.BindUdp port =
            let socket = socketIn ns address.AddressFamily SocketType.Dgram

            try
                socket.Bind(IPEndPoint(address, port))
                new KernelUdp(socket) :> IUdp
            with _ ->
                socket.Dispose()
                reraise ()
    }
