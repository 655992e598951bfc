/// NetStack as a subject: NetworkStack's TcpConnection, TcpConnectionListener and UdpSocket, the
/// stack on a TUN device that lives in the peer's namespace.
module NetStack.Tests.Conformance.NetStackSubject

open System
open System.Net
open System.Net.Sockets
open NetStack
open NetStack.Tests.Conformance.Subject

/// TcpSocketOptions holding `options`.
let private socketOptions (options: SocketOption list) =
    let o = TcpSocketOptions()

    for option in options do
        match option with
        | Ttl ttl -> o.Ttl <- Nullable ttl
        | TypeOfService tos -> o.TypeOfService <- Nullable tos
        | DontFragment df -> o.DontFragment <- Nullable df
        | Linger linger -> o.LingerState <- linger
        | KeepAlive(time, interval, count) ->
            o.KeepAlive <- Nullable true
            o.KeepAliveTime <- Nullable time
            o.KeepAliveInterval <- Nullable interval
            o.KeepAliveRetryCount <- Nullable count
        | NoDelay noDelay -> o.NoDelay <- Nullable noDelay
        | ReuseAddress reuse -> o.ReuseAddress <- reuse
        | LocalEndPoint local -> o.LocalEndPoint <- local

    o

type private StackTcp(connection: TcpConnection) =
    interface ITcp with
        member _.Stream = connection

        member _.Shutdown how = connection.Shutdown how

        member _.CloseWithReset() =
            connection.LingerState <- LingerOption(true, 0)
            connection.Dispose()

        member _.CloseSocket() = connection.Dispose()

        member _.NoDelay
            with get () = connection.NoDelay
            and set value = connection.NoDelay <- value

        member _.Set option =
            match option with
            | Ttl ttl -> connection.Ttl <- ttl
            | TypeOfService tos -> connection.TypeOfService <- tos
            | DontFragment df -> connection.DontFragment <- df
            | Linger linger -> connection.LingerState <- linger
            | KeepAlive(time, interval, count) ->
                connection.KeepAlive <- true
                connection.KeepAliveTime <- time
                connection.KeepAliveInterval <- interval
                connection.KeepAliveRetryCount <- count
            | NoDelay noDelay -> connection.NoDelay <- noDelay
            | ReuseAddress _
            | LocalEndPoint _ -> invalidArg "option" $"{option} is for before the connect"

        member _.Available = connection.Available
        member _.Dispose() = connection.Dispose()

type private StackListener(listener: TcpConnectionListener) =
    interface IListener with
        member _.Port = listener.LocalEndPoint.Port

        member _.AcceptAsync cancel =
            task {
                let! connection = listener.AcceptAsync cancel
                return new StackTcp(connection) :> ITcp
            }

        member _.Dispose() = listener.Dispose()

type private StackUdp(socket: UdpSocket) =
    interface IUdp with
        member _.Port = socket.LocalEndPoint.Port
        member _.Connect remote = socket.Connect remote

        member _.SendToAsync(datagram, remote, cancel) =
            socket.SendToAsync(ReadOnlyMemory datagram, remote, cancel).AsTask()

        member _.SendAsync(datagram, cancel) =
            socket.SendAsync(ReadOnlyMemory datagram, cancel).AsTask()

        member _.ReceiveFromAsync(buffer, cancel) =
            task {
                let! result = socket.ReceiveFromAsync(buffer, cancel)
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

        member _.Set option =
            match option with
            | Ttl ttl -> socket.Ttl <- ttl
            | TypeOfService tos -> socket.TypeOfService <- tos
            | DontFragment df -> socket.DontFragment <- df
            | other -> invalidArg "option" $"{other} is not a UDP option here"

        member _.Available = socket.Available
        member _.Dispose() = socket.Dispose()

/// NetStack as the subject: `stack` at `address`, its TUN named `device` in the peer's namespace.
let create (stack: NetworkStack) (address: IPAddress) (device: string) =
    { new ISubject with
        member _.Name = "netstack"
        member _.Address = address
        member _.PeerSideDevice = device

        member _.ConnectAsync(remote, cancel) =
            task {
                let! connection = stack.ConnectTcpAsync(remote, cancel)
                return new StackTcp(connection) :> ITcp
            }

        member _.ConnectWith(remote, options, cancel) =
            task {
                let! connection = stack.ConnectTcpAsync(remote, socketOptions options, cancel)
                return new StackTcp(connection) :> ITcp
            }

        member _.Listen port =
            new StackListener(stack.ListenTcp(IPEndPoint(address, port), 16)) :> IListener

        member _.ListenWith(port, options) =
            new StackListener(stack.ListenTcp(IPEndPoint(address, port), socketOptions options, 16)) :> IListener

        member _.BindUdp port =
            new StackUdp(stack.BindUdp(IPEndPoint(address, port))) :> IUdp
    }
