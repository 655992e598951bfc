/// Fewer copies per byte against the kernel (issue 5): at MTU 65000 the stack sends each segment
/// as a gather write (headers from the packet buffer, payload straight from the send ring) and
/// reads arriving in-order data straight into a waiting reader's buffer. 64 MiB each way, IPv4
/// and IPv6, SHA-256 exact, with offloads (partial checksums left to the kernel) and without
/// (checksums completed over the ring's pieces; an odd-sized send ring makes the payload wrap at
/// odd offsets, which the kernel's checksum check would catch), and readers with small buffers
/// that the loop fills in part; and a send buffer that auto-tuning grows mid-transfer. MB/s is
/// printed, never asserted.
/// Subnets 10.109.N.0/24 and fda9:N::/64, interfaces ns109cN.
module NetStack.Tests.Integration.CopiesKernelTests

open System
open System.Net
open System.Net.Sockets
open System.Security.Cryptography
open Expecto
open NetStack
open NetStack.Tests

let private optionsWith (n: int) (mtu: int) (offloads: bool) (sendBuffer: int) (sendBufferMax: int) =
    NetStackOptions(
        TunName = $"ns109c{n}",
        Address = IPAddress.Parse $"10.109.{n}.2",
        HostAddress = IPAddress.Parse $"10.109.{n}.1",
        Address6 = IPAddress.Parse $"fda9:{n}::2",
        HostAddress6 = IPAddress.Parse $"fda9:{n}::1",
        Mtu = mtu,
        Offloads = offloads,
        TcpLinger = TimeSpan.FromSeconds 10.0,
        TcpSendBufferBytes = sendBuffer,
        TcpSendBufferMaxBytes = sendBufferMax
    )

let private optionsFor (n: int) (mtu: int) (offloads: bool) =
    optionsWith n mtu offloads (256 * 1024) (4 * 1024 * 1024)

let private timeout = TimeSpan.FromSeconds 120.0

let private report (what: string) (bytes: int64) (elapsed: TimeSpan) =
    printfn "%s: %.1f MB/s" what (float bytes / 1e6 / elapsed.TotalSeconds)

/// Both directions over both families: kernel → stack into a listener, stack → kernel.
let private bothWays (options: NetStackOptions) (bytes: int64) (label: string) =
    TestUtil.withStackOf options (fun stack ->
        for (stackAddress, kernelAddress) in TestUtil.families options do
            do
                use listener = stack.ListenTcp(IPEndPoint(stackAddress, 9))

                TestUtil.kernelToStack timeout 109 bytes listener (IPEndPoint(stackAddress, 9))
                |> report $"kernel → NetStack over {stackAddress} ({label})" bytes

            do
                use kernel = TestUtil.kernelListener kernelAddress

                TestUtil.stackToKernel timeout 110 bytes stack kernel
                |> report $"NetStack → kernel over {kernelAddress} ({label})" bytes

        Expect.isGreaterThan
            stack.Statistics.["tcp.receive.direct-bytes"]
            0L
            "some data went straight into a waiting reader's buffer")

/// Stack → kernel, `bytes` from one connection whose send buffer starts at an odd size: returns
/// the buffer's size at the end and how many times it grew (SHA-256 exact at the kernel).
let private sendWithBuffer (options: NetStackOptions) (bytes: int64) =
    let mutable result = 0, 0L

    TestUtil.withStackOf options (fun stack ->
        use kernel = TestUtil.kernelListener options.HostAddress
        let endpoint = kernel.LocalEndPoint :?> IPEndPoint

        let sink =
            task {
                use! socket = kernel.AcceptAsync()
                use stream = new NetworkStream(socket)
                return! TestUtil.receiveHashed stream
            }

        let clock = Diagnostics.Stopwatch.StartNew()

        let sent, size =
            task {
                let! connection = stack.ConnectTcpAsync endpoint
                let! hash = TestUtil.sendPattern 112 connection bytes
                let size = connection.SendBufferSize
                do! connection.DisposeAsync()
                return hash, size
            }
            |> TestUtil.waitWithin timeout

        let received, hash = TestUtil.waitWithin timeout sink
        Expect.equal received bytes "every byte arrived"
        Expect.equal hash sent "the same bytes (SHA-256)"
        report $"NetStack → kernel, send buffer {options.TcpSendBufferBytes} → {size} bytes" bytes clock.Elapsed
        result <- size, stack.Statistics.["tcp.send-buffer.grown"])

    result

/// Kernel → stack with the stack reading `readSize` bytes at a time: most reads wait, and a
/// 64 KB segment fills each waiting buffer in part, the rest going through the receive ring.
let private smallReads (options: NetStackOptions) (bytes: int64) (readSize: int) =
    TestUtil.withStackOf options (fun stack ->
        let stackAddress = options.Address
        use listener = stack.ListenTcp(IPEndPoint(stackAddress, 9))

        let sink =
            task {
                let! connection = listener.AcceptAsync()
                let buffer = Array.zeroCreate<byte> readSize
                use hash = IncrementalHash.CreateHash HashAlgorithmName.SHA256
                let mutable total = 0L
                let mutable n = 1

                while n > 0 do
                    let! read = connection.ReadAsync(Memory buffer)
                    n <- read
                    hash.AppendData(buffer, 0, n)
                    total <- total + int64 n

                do! connection.DisposeAsync()
                return total, Convert.ToHexString(hash.GetHashAndReset())
            }

        let sent =
            task {
                use socket =
                    new Socket(stackAddress.AddressFamily, SocketType.Stream, ProtocolType.Tcp)

                do! socket.ConnectAsync(IPEndPoint(stackAddress, 9))
                use stream = new NetworkStream(socket)
                let! hash = TestUtil.sendPattern 111 stream bytes
                socket.Shutdown SocketShutdown.Send
                return hash
            }
            |> TestUtil.waitWithin timeout

        let received, hash = TestUtil.waitWithin timeout sink
        Expect.equal received bytes "every byte arrived"
        Expect.equal hash sent "the same bytes (SHA-256)")

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Copies with the kernel"
        [
            test "MTU 65000, offloads on: 64 MiB each way, IPv4 and IPv6, SHA-256 exact; prints MB/s" {
                bothWays (optionsFor 1 65000 true) (64L <<< 20) "offloads on"
            }

            test
                "MTU 65000, offloads off, a send ring of an odd size: 64 MiB each way, IPv4 and IPv6, SHA-256 exact; prints MB/s" {
                // Send-buffer auto-tuning off: the ring keeps its odd size for the whole transfer.
                bothWays
                    (optionsWith 2 65000 false (256 * 1024 + 1) (256 * 1024 + 1))
                    (64L <<< 20)
                    "offloads off, odd ring"
            }

            test "MTU 65000: 16 MiB kernel → NetStack read 1000 and 70001 bytes at a time, SHA-256 exact" {
                smallReads (optionsFor 3 65000 true) (16L <<< 20) 1000
                smallReads (optionsFor 3 65000 true) (16L <<< 20) 70001
            }

            test
                "send-buffer auto-tuning: a 100,003-byte send buffer grows, moving its unacknowledged bytes, while 64 MiB go out at MTU 65000" {
                let size, grown =
                    sendWithBuffer (optionsWith 5 65000 true 100_003 (4 * 1024 * 1024)) (64L <<< 20)

                Expect.isGreaterThan grown 0L "the buffer grew"
                Expect.isGreaterThan size 100_003 "SendBufferSize says so"
                Expect.isLessThanOrEqual size (4 * 1024 * 1024) "up to TcpSendBufferMaxBytes"
            }

            test "send-buffer auto-tuning off (TcpSendBufferMaxBytes = TcpSendBufferBytes): the buffer keeps its size" {
                let size, grown =
                    sendWithBuffer (optionsWith 6 65000 true 100_003 100_003) (16L <<< 20)

                Expect.equal grown 0L "never grew"
                Expect.equal size 100_003 "SendBufferSize unchanged"
            }

            test "MTU 1500, offloads on: 64 MiB each way, IPv4 and IPv6, SHA-256 exact; prints MB/s" {
                bothWays (optionsFor 4 1500 true) (64L <<< 20) "MTU 1500, offloads on"
            }
        ]
