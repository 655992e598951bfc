/// NetStack as a subject: NetworkStack's TcpConnection, TcpConnectionListener and UdpSocket, the
/// stack on a TUN device that lives in the peer's namespace.
module NetStack.Tests.Conformance.NetStackSubject

open System
open System.Net
open System.Net.Sockets
open NetStack
open NetStack.Tests.Conformance.Subject

type private StackTcp(connection: TcpConnection) =
    interface ITcp with
        member _.Stream = connection

        member _.Shutdown how =
            match how with
            | SocketShutdown.Send -> connection.ShutdownWrite()
            | other -> raise (NotSupportedException $"TcpConnection has no Shutdown({other}) yet")

        member _.CloseWithReset() =
            connection.Abort()
            connection.Dispose()

        member _.CloseSocket() = connection.Dispose()

        member _.NoDelay
            with get () = connection.NoDelay
            and set value = connection.NoDelay <- value

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

        member _.Listen port =
            new StackListener(stack.ListenTcp(IPEndPoint(address, port), 16)) :> IListener

        member _.BindUdp port =
            new StackUdp(stack.BindUdp(IPEndPoint(address, port))) :> IUdp
    }
