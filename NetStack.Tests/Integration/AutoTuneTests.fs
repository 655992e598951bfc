/// Receive-buffer auto-tuning against the kernel: a kernel socket sends in bulk to a NetStack
/// discard service over a link our own FaultInjectingDevice delays by 20 ms each way (40 ms
/// round trip) at MTU 9000, inside the test runner's private network namespace. Interfaces ns105*,
/// subnets 10.105.0.0/16 and fda5::/16.
module NetStack.Tests.Integration.AutoTuneTests

open System
open System.Diagnostics
open System.Net
open System.Net.Sockets
open Expecto
open NetStack
open NetStack.Engine
open NetStack.Tests

/// Each test gets its own interface and subnet (10.105.N.0/24, fda5:N::/64).
let private optionsFor (n: int) (maxBuffer: int) =
    NetStackOptions(
        TunName = $"ns105t{n}",
        Address = IPAddress.Parse $"10.105.{n}.2",
        HostAddress = IPAddress.Parse $"10.105.{n}.1",
        Address6 = IPAddress.Parse $"fda5:{n}::2",
        HostAddress6 = IPAddress.Parse $"fda5:{n}::1",
        TcpLinger = TimeSpan.FromSeconds 10.0,
        TcpReceiveBufferMaxBytes = maxBuffer,
        // The fault device passes no offloads: at MTU 1500 a kernel sender in BBR's startup
        // outruns the loop on a busy two-core machine (the TUN queue overflows and recovery
        // dominates); 9000-byte packets keep the packet rate down.
        Mtu = 9000,
        Faults = FaultSettings(Delay = TimeSpan.FromMilliseconds 20.0, Seed = 105)
    )

/// 16 MiB: at the initial 256 KiB per 40 ms round trip that is about 2.6 s at best.
let private total = 16L <<< 20

let private timeout = TimeSpan.FromSeconds 120.0

/// Sends `total` pattern bytes from a kernel socket to a discard service on the stack at
/// `address`; returns the stack's byte count, whether both SHA-256 sums agree, the
/// connection's receive buffer size at the end, and MB/s.
let private bulk (stack: NetworkStack) (address: IPAddress) =
    use listener = stack.ListenTcp(IPEndPoint(address, 9))

    let sink =
        task {
            let! connection = listener.AcceptAsync()
            let! result = TestUtil.receiveHashed connection
            let size = connection.ReceiveBufferSize
            do! connection.DisposeAsync()
            return result, size
        }

    use socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp)
    socket.Connect(IPEndPoint(address, 9))
    let clock = Stopwatch.StartNew()

    use stream = new NetworkStream(socket, ownsSocket = false)
    let sentHash = TestUtil.waitWithin timeout (TestUtil.sendPattern 105 stream total)
    socket.Shutdown SocketShutdown.Send
    let (received, receivedHash), size = TestUtil.waitWithin timeout sink
    let seconds = clock.Elapsed.TotalSeconds
    received, sentHash = receivedHash, size, float total / seconds / 1e6

[<Tests>]
let tests =
    testSequenced
    <| testList
        "AutoTune with the kernel"
        [
            test
                "kernel bulk over a 40 ms round trip grows the receive buffer past 256 KiB; SHA-256 exact; prints MB/s on vs off" {
                let on =
                    let mutable r = Unchecked.defaultof<_>

                    TestUtil.withStackOf (optionsFor 1 (4 <<< 20)) (fun stack ->
                        r <- bulk stack (IPAddress.Parse "10.105.1.2")
                        let received, same, size, _ = r
                        Expect.equal received total "every byte arrived (tuning on)"
                        Expect.isTrue same "SHA-256 of what the kernel sent equals what the stack read (tuning on)"
                        Expect.isGreaterThan size (256 * 1024) "the receive buffer grew above its initial 256 KiB"
                        Expect.isLessThanOrEqual size (4 <<< 20) "and stayed within the 4 MiB maximum"

                        Expect.isGreaterThan stack.Statistics.["tcp.receive-buffer.grown"] 0L "the growth was counted")

                    r

                let off =
                    let mutable r = Unchecked.defaultof<_>

                    TestUtil.withStackOf (optionsFor 2 (256 * 1024)) (fun stack ->
                        r <- bulk stack (IPAddress.Parse "10.105.2.2")
                        let received, same, size, _ = r
                        Expect.equal received total "every byte arrived (tuning off)"
                        Expect.isTrue same "SHA-256 of what the kernel sent equals what the stack read (tuning off)"
                        Expect.equal size (256 * 1024) "tuning off keeps the initial size")

                    r

                let _, _, sizeOn, rateOn = on
                let _, _, _, rateOff = off

                printfn
                    "auto-tuning, kernel -> NetStack over a 40 ms round trip, MTU 9000, 16 MiB: tuning on %.1f MB/s (buffer grew to %d bytes), off (256 KiB) %.1f MB/s, ratio %.2f"
                    rateOn
                    sizeOn
                    rateOff
                    (rateOn / rateOff)
            }
        ]
