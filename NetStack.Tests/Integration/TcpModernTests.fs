/// The modern TCP options against the kernel's TCP, read back from the kernel's own TCP_INFO:
/// window scaling and timestamps (RFC 7323) and SACK (RFC 2018) negotiated both ways, a scaled
/// window in use, and byte-exact transfers through 5% loss.
module NetStack.Tests.Integration.TcpModernTests

open System
open System.Buffers.Binary
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Sockets
open System.Threading.Tasks
open Expecto
open NetStack
open NetStack.Engine
open NetStack.Tests

/// Each test gets its own interface and subnet (10.94.N.0/24, fd94:N::/64).
let private optionsFor (n: int) =
    NetStackOptions(
        TunName = $"ns94k{n}",
        Address = IPAddress.Parse $"10.94.{n}.2",
        HostAddress = IPAddress.Parse $"10.94.{n}.1",
        Address6 = IPAddress.Parse $"fd94:{n}::2",
        HostAddress6 = IPAddress.Parse $"fd94:{n}::1",
        TcpLinger = TimeSpan.FromSeconds 10.0
    )

let private families (n: int) = TestUtil.families (optionsFor n)

let private timeout = TimeSpan.FromSeconds 120.0

let private wait (task: Task<'T>) =
    if not (task.Wait timeout) then
        failtest "timed out"

    task.Result

let private withStack (options: NetStackOptions) (f: NetworkStack -> unit) = TestUtil.withStackOf options f

/// What the kernel says about one of its TCP sockets (struct tcp_info, linux/tcp.h).
type private KernelTcpInfo =
    {
        /// tcpi_options: TCPI_OPT_TIMESTAMPS 1, TCPI_OPT_SACK 2, TCPI_OPT_WSCALE 4.
        Options: byte
        /// tcpi_snd_wscale: the peer's (NetStack's) shift.
        SndWscale: int
        /// tcpi_rcv_wscale: the kernel's own shift.
        RcvWscale: int
        /// tcpi_snd_wnd: the peer's window as the kernel last took it (bytes, scaled), when
        /// the kernel reports it.
        SndWnd: int64 voption
    }

let private tcpInfo (socket: Socket) =
    let buffer = Array.zeroCreate<byte> 256
    // IPPROTO_TCP = 6, TCP_INFO = 11.
    let length = socket.GetRawSocketOption(6, 11, Span buffer)

    if length < 104 then
        failtest $"TCP_INFO returned {length} bytes"

    {
        Options = buffer.[5]
        // Bit fields on a little-endian machine: snd_wscale in the low nibble.
        SndWscale = int (buffer.[6] &&& 0xFuy)
        RcvWscale = int (buffer.[6] >>> 4)
        SndWnd =
            if length >= 232 then
                ValueSome(int64 (BinaryPrimitives.ReadUInt32LittleEndian(ReadOnlySpan(buffer, 228, 4))))
            else
                ValueNone
    }

/// NetStack's shift for its receive buffer's largest size (RFC 7323 §2.3), the kernel's view of
/// which is tcpi_snd_wscale.
let private stackShift (options: NetStackOptions) =
    NetStack.Core.Tcp.TcpConfig.WindowShiftFor(max options.TcpReceiveBufferBytes options.TcpReceiveBufferMaxBytes)

let private expectNegotiated (info: KernelTcpInfo) (options: NetStackOptions) (where: string) =
    Expect.equal (info.Options &&& 1uy) 1uy $"timestamps in use {where}"
    Expect.equal (info.Options &&& 4uy) 4uy $"window scaling in use {where}"
    Expect.equal (info.Options &&& 2uy) 2uy $"SACK in use {where}"
    Expect.equal info.SndWscale (stackShift options) $"the kernel applies NetStack's shift {where}"
    Expect.isGreaterThan info.RcvWscale 0 $"the kernel's own shift is in use {where}"

[<Tests>]
let tests =
    testSequenced
    <| testList
        "TcpModern with the kernel"
        [
            test
                "the kernel's TCP_INFO shows window scaling, timestamps and SACK with NetStack as server and as client, IPv4 and IPv6" {
                let options = optionsFor 1

                withStack options (fun stack ->
                    for (stackAddress, kernelAddress) in families 1 do
                        // NetStack as server.
                        use listener = stack.ListenTcp(IPEndPoint(stackAddress, 80))
                        let accepted = listener.AcceptAsync().AsTask()

                        use client =
                            new Socket(stackAddress.AddressFamily, SocketType.Stream, ProtocolType.Tcp)

                        client.Connect(IPEndPoint(stackAddress, 80))
                        let connection = wait accepted
                        expectNegotiated (tcpInfo client) options $"with a NetStack server over {stackAddress}"
                        connection.DisposeAsync().AsTask().Wait timeout |> ignore
                        // NetStack as client.
                        use kernel = TestUtil.kernelListener kernelAddress
                        let incoming = kernel.AcceptAsync()

                        let connection =
                            stack.ConnectTcpAsync(kernel.LocalEndPoint :?> IPEndPoint).AsTask() |> wait

                        use server = wait incoming
                        expectNegotiated (tcpInfo server) options $"with a NetStack client to {kernelAddress}"
                        connection.DisposeAsync().AsTask().Wait timeout |> ignore)
            }

            test "a kernel bulk transfer into a 1 MiB NetStack receive buffer runs in a window above 64 KiB" {
                let baseOptions = optionsFor 2

                let options =
                    NetStackOptions(
                        TunName = baseOptions.TunName,
                        Address = baseOptions.Address,
                        HostAddress = baseOptions.HostAddress,
                        Address6 = baseOptions.Address6,
                        HostAddress6 = baseOptions.HostAddress6,
                        TcpLinger = baseOptions.TcpLinger,
                        TcpReceiveBufferBytes = (1 <<< 20),
                        TcpReceiveBufferMaxBytes = (1 <<< 20)
                    )

                withStack options (fun stack ->
                    let stackAddress, _ = (families 2).Head
                    use listener = stack.ListenTcp(IPEndPoint(stackAddress, 9))

                    let sink =
                        task {
                            let! connection = listener.AcceptAsync()
                            let! result = TestUtil.receiveHashed connection
                            do! connection.DisposeAsync()
                            return result
                        }

                    use socket =
                        new Socket(stackAddress.AddressFamily, SocketType.Stream, ProtocolType.Tcp)

                    socket.Connect(IPEndPoint(stackAddress, 9))
                    let info = tcpInfo socket
                    Expect.equal info.SndWscale 5 "1 MiB needs shift 5"
                    let chunk = Array.zeroCreate<byte> 65536
                    Random(3).NextBytes chunk
                    let mutable largest = 0L

                    for _ in 1..256 do
                        socket.Send chunk |> ignore

                        match (tcpInfo socket).SndWnd with
                        | ValueSome w -> largest <- max largest w
                        | ValueNone -> ()

                    socket.Shutdown SocketShutdown.Send
                    let received, _ = wait sink
                    Expect.equal received (256L * 65536L) "every byte arrived"

                    match info.SndWnd with
                    | ValueSome _ ->
                        Expect.isGreaterThan largest 65535L "the kernel saw a window no 16-bit field could say"
                    | ValueNone -> failtest "this kernel's TCP_INFO has no tcpi_snd_wnd")
            }

            test "5% loss each way: bytes cross both ways intact (SHA-256), IPv4 and IPv6; prints MB/s" {
                let baseOptions = optionsFor 3

                let options =
                    NetStackOptions(
                        TunName = baseOptions.TunName,
                        Address = baseOptions.Address,
                        HostAddress = baseOptions.HostAddress,
                        Address6 = baseOptions.Address6,
                        HostAddress6 = baseOptions.HostAddress6,
                        TcpLinger = TimeSpan.FromSeconds 30.0,
                        Faults = FaultSettings(LossPercent = 5.0, Seed = 94)
                    )

                let bytes = 2L * 1024L * 1024L

                let throughput (elapsed: TimeSpan) =
                    float bytes / elapsed.TotalSeconds / 1e6

                withStack options (fun stack ->
                    for (stackAddress, kernelAddress) in families 3 do
                        use listener = stack.ListenTcp(IPEndPoint(stackAddress, 9))

                        let inbound =
                            TestUtil.kernelToStack timeout 94 bytes listener (IPEndPoint(stackAddress, 9))
                            |> throughput

                        use kernel = TestUtil.kernelListener kernelAddress
                        let outbound = TestUtil.stackToKernel timeout 95 bytes stack kernel |> throughput

                        printfn
                            $"TCP with 5%% loss over {stackAddress.AddressFamily}, 2 MiB each way: kernel -> NetStack %.2f{inbound} MB/s, NetStack -> kernel %.2f{outbound} MB/s")
            }
        ]
