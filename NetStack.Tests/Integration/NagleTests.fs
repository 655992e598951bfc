/// Nagle and NoDelay against the kernel's TCP, which delays its ACKs: small request/response
/// exchanges work with Nagle on and off and never stall for good.
module NetStack.Tests.Integration.NagleTests

open System
open System.Diagnostics
open System.Net
open System.Net.Sockets
open System.Threading.Tasks
open Expecto
open NetStack
open NetStack.Engine
open NetStack.Tests

/// Each test gets its own interface and subnet (10.102.N.0/24, fda2:N::/64).
let private optionsFor (n: int) =
    NetStackOptions(
        TunName = $"ns102k{n}",
        Address = IPAddress.Parse $"10.102.{n}.2",
        HostAddress = IPAddress.Parse $"10.102.{n}.1",
        Address6 = IPAddress.Parse $"fda2:{n}::2",
        HostAddress6 = IPAddress.Parse $"fda2:{n}::1"
    )

let private timeout = TimeSpan.FromSeconds 60.0

let private wait (task: Task<'T>) =
    if not (task.Wait timeout) then
        failtest "timed out"

    task.Result

/// `rounds` exchanges from a NetStack client to a kernel server: the client writes
/// `requestWrites` single bytes, then reads one byte back; the server answers each complete
/// request with one byte. Returns the elapsed time.
let private pingPong
    (stack: NetworkStack)
    (kernelAddress: IPAddress)
    (noDelay: bool)
    (requestWrites: int)
    (rounds: int)
    =
    use server = TestUtil.kernelListener kernelAddress
    let incoming = server.AcceptAsync()

    let connection =
        stack.ConnectTcpAsync(server.LocalEndPoint :?> IPEndPoint).AsTask() |> wait

    connection.NoDelay <- noDelay
    use peer = wait incoming

    let echo =
        Task.Run(fun () ->
            let buffer = Array.zeroCreate<byte> requestWrites

            for _ in 1..rounds do
                let mutable got = 0

                while got < requestWrites do
                    let n = peer.Receive(buffer, got, requestWrites - got, SocketFlags.None)

                    if n = 0 then
                        failwith "the client closed early"

                    got <- got + n

                peer.Send [| buffer.[0] |] |> ignore)

    let watch = Stopwatch.StartNew()
    let one = Array.zeroCreate<byte> 1

    for i in 1..rounds do
        for _ in 1..requestWrites do
            one.[0] <- byte i
            connection.WriteAsync(ReadOnlyMemory one).AsTask().Wait timeout |> ignore

        let n = wait (connection.ReadAsync(Memory one).AsTask())
        Expect.equal n 1 "one byte back"
        Expect.equal one.[0] (byte i) "the answer to this round"

    watch.Stop()
    Expect.isTrue (echo.Wait timeout) "the kernel side finished"
    connection.DisposeAsync().AsTask().Wait timeout |> ignore
    watch.Elapsed

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Nagle with the kernel"
        [
            test "1-byte ping-pong and write-write-read exchanges complete with and without NoDelay, IPv4 and IPv6" {
                let options = optionsFor 1
                use stack = NetworkStack.Start options

                for kernelAddress in [ options.HostAddress; options.HostAddress6 ] do
                    for noDelay in [ false; true ] do
                        let single = pingPong stack kernelAddress noDelay 1 50
                        // Write-write-read: with Nagle the second byte waits for the ACK of the
                        // first, which the kernel delays (it waits for a reply to ride on): the
                        // classic stall of up to one delayed-ACK time (~40 ms) per exchange.
                        // NoDelay sends it at once. Either way every exchange completes.
                        let double = pingPong stack kernelAddress noDelay 2 20

                        printfn
                            $"Nagle {kernelAddress} NoDelay={noDelay}: 50 ping-pongs {single.TotalMilliseconds:F0} ms, 20 write-write-reads {double.TotalMilliseconds:F0} ms"

                TestUtil.assertNoExceptions stack
            }

            test "keep-alive probes every 600 ms for 2.5 s are answered by the kernel and the connection stays up" {
                let baseOptions = optionsFor 2

                let options =
                    NetStackOptions(
                        TunName = baseOptions.TunName,
                        Address = baseOptions.Address,
                        HostAddress = baseOptions.HostAddress,
                        TcpKeepAlive = TimeSpan.FromMilliseconds 600.0,
                        TcpKeepAliveInterval = TimeSpan.FromMilliseconds 600.0,
                        TcpKeepAliveCount = 3
                    )

                use stack = NetworkStack.Start options

                use server = TestUtil.kernelListener (options.HostAddress)
                let incoming = server.AcceptAsync()

                let connection =
                    stack.ConnectTcpAsync(server.LocalEndPoint :?> IPEndPoint).AsTask() |> wait

                use peer = wait incoming
                let sentBefore = stack.Statistics.["tcp.sent"]
                // Four idle periods: without answers the connection would have died after 2.4 s. (Linux
                // answers an out-of-window ACK at most every 500 ms, tcp_invalid_ratelimit, so the
                // probes are spaced wider than that.)
                Threading.Thread.Sleep 2500
                let probes = stack.Statistics.["tcp.sent"] - sentBefore
                Expect.isGreaterThanOrEqual probes 3L "probes went out while idle"
                peer.Send [| 42uy |] |> ignore
                let one = Array.zeroCreate<byte> 1
                Expect.equal (wait (connection.ReadAsync(Memory one).AsTask())) 1 "the connection still carries data"
                Expect.equal one.[0] 42uy "the byte"
                printfn $"keep-alive: {probes} segments sent in 2.5 s of idle"
                Expect.isTrue (connection.DisposeAsync().AsTask().Wait timeout) "closed"
                TestUtil.assertNoExceptions stack
            }
        ]
