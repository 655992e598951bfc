/// The TUN device's batched io_uring mode against the real kernel, inside the runner's private
/// network namespace: the device alone (a burst read with fewer enters than packets, queued
/// writes leaving in order, Wake and Dispose ending a blocked wait) and the whole stack over it
/// with offloads off and on (bulk TCP both ways with SHA-256, ping, a UDP round trip, IPv4 and
/// IPv6). Subnets 10.110.N.0/24 and fdaa:N::/64, interfaces ns110xN.
module NetStack.Tests.Integration.IoUringTests

open System
open System.Diagnostics
open System.Net
open System.Net.Sockets
open System.Threading
open Expecto
open NetStack
open NetStack.Core.Wire
open NetStack.Device
open NetStack.Tests

let private timeout = TimeSpan.FromSeconds 60.0

let private wait (task: Threading.Tasks.Task<'T>) : 'T = TestUtil.waitWithin timeout task

let private put16 (b: byte[]) (offset: int) (value: int) =
    b.[offset] <- byte (value >>> 8)
    b.[offset + 1] <- byte value

/// An IPv4 UDP packet with both checksums (RFC 791, RFC 768).
let private ipv4Udp (src: IPAddress) (dst: IPAddress) (srcPort: int) (dstPort: int) (payload: byte[]) =
    let packet = Array.zeroCreate<byte>(28 + payload.Length)
    packet.[0] <- 0x45uy
    put16 packet 2 packet.Length
    packet.[8] <- 64uy
    packet.[9] <- 17uy
    src.GetAddressBytes().CopyTo(packet, 12)
    dst.GetAddressBytes().CopyTo(packet, 16)
    put16 packet 10 (int (Checksum.compute (ReadOnlySpan<byte>(packet, 0, 20))))
    put16 packet 20 srcPort
    put16 packet 22 dstPort
    put16 packet 24 (8 + payload.Length)
    payload.CopyTo(packet, 28)
    let s = Ipv4Address.OfIPAddress src
    let d = Ipv4Address.OfIPAddress dst
    let pseudo = Checksum.pseudoHeaderV4 s d 17uy (8 + payload.Length)

    let sum =
        match Checksum.finish (Checksum.sum pseudo (ReadOnlySpan<byte>(packet, 20, 8 + payload.Length))) with
        | 0us -> 0xFFFFus
        | c -> c

    put16 packet 26 (int sum)
    packet

/// A created TUN device in io_uring mode, kernel side 10.110.N.1 with the device's end at .2.
let private configured (n: int) (virtioNetHeader: bool) =
    let device = TunDevice.Create($"ns110x{n}", virtioNetHeader)
    let link = new KernelLink(device)
    link.SetMtu 1500
    link.SetUp()
    link.AddAddress(IPAddress.Parse $"10.110.{n}.1", IPAddress.Parse $"10.110.{n}.2")
    let enabled, reason = device.TryEnableIoUring()
    Expect.isTrue enabled $"io_uring mode is available on this kernel ({reason})"
    device, link

/// Reads until a UDP packet to `port` arrives or the time is up; returns its payload.
let private readUdpTo (device: TunDevice) (port: int) (deadline: int64) =
    let buffer = Array.zeroCreate<byte> 65536
    let mutable found = None

    while found.IsNone && Environment.TickCount64 < deadline do
        match device.TryRead(Span<byte> buffer, 100) with
        | true, length when length >= 28 && buffer.[0] = 0x45uy && buffer.[9] = 17uy ->
            let dst = (int buffer.[22] <<< 8) ||| int buffer.[23]

            if dst = port then
                found <- Some buffer.[28 .. length - 1]
        | _ -> ()

    found

/// One TryReadInPlace: the packet copied out of the ring's buffer (None when nothing came).
let private readInPlace (device: TunDevice) (timeoutMs: int) =
    let mutable packet = ReadOnlySpan<byte>()
    let mutable header = VirtioNetHeader.None

    if device.TryReadInPlace(timeoutMs, &packet, &header) then
        Some(packet.ToArray())
    else
        None

let private optionsFor (n: int) (offloads: bool) =
    NetStackOptions(
        TunName = $"ns110x{n}",
        Address = IPAddress.Parse $"10.110.{n}.2",
        HostAddress = IPAddress.Parse $"10.110.{n}.1",
        Address6 = IPAddress.Parse $"fdaa:{n}::2",
        HostAddress6 = IPAddress.Parse $"fdaa:{n}::1",
        TcpLinger = TimeSpan.FromSeconds 2.0,
        Offloads = offloads,
        TunIoUring = true
    )

let private bulkBytes = 16L * 1024L * 1024L

/// Bulk both ways, ping and a UDP round trip, over IPv4 and IPv6, on a stack in io_uring mode.
let private wholePath (n: int) (offloads: bool) =
    let options = optionsFor n offloads

    TestUtil.withStackOf options (fun stack ->
        Expect.isTrue stack.UsesIoUring "the stack's device runs in io_uring mode"

        for (stackAddress, kernelAddress) in TestUtil.families options do
            use listener = stack.ListenTcp 9

            TestUtil.kernelToStack timeout 110 bulkBytes listener (IPEndPoint(stackAddress, 9))
            |> ignore

            use kernel = TestUtil.kernelListener kernelAddress
            TestUtil.stackToKernel timeout 111 bulkBytes stack kernel |> ignore
            let reply = stack.PingAsync(kernelAddress, TimeSpan.FromSeconds 5.0, 3000) |> wait
            Expect.equal reply.Status NetworkInformation.IPStatus.Success $"ping {kernelAddress} (3000 bytes)"
            use udp = stack.BindUdp(IPEndPoint(stackAddress, 5353))

            use peer =
                new Socket(kernelAddress.AddressFamily, SocketType.Dgram, ProtocolType.Udp)

            peer.Bind(IPEndPoint(kernelAddress, 0))
            let data = Array.init 1200 (fun i -> byte (i * 7))
            peer.SendTo(data, IPEndPoint(stackAddress, 5353)) |> ignore
            let buffer = Array.zeroCreate<byte> 2000
            let got = udp.ReceiveFromAsync(Memory buffer).AsTask() |> wait
            Expect.equal buffer.[.. got.ReceivedBytes - 1] data $"a datagram from the kernel over {kernelAddress}"

            udp.SendToAsync(ReadOnlyMemory(data, 0, 600), (got.RemoteEndPoint :?> IPEndPoint)).AsTask()
            |> wait
            |> ignore

            let back = Array.zeroCreate<byte> 2000
            peer.ReceiveTimeout <- 5000
            let n = peer.Receive back
            Expect.equal back.[.. n - 1] data.[..599] $"and its answer back over {kernelAddress}"

        Expect.equal stack.Statistics.["device.write-error"] 0L "no write failed")

[<Tests>]
let tests =
    testSequenced
    <| testList
        "IoUring"
        [
            test "a burst of datagrams from the kernel is read with fewer enters than packets" {
                let device, link = configured 1 false

                use _ = link
                use _ = device

                use kernel =
                    new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                kernel.Bind(IPEndPoint(IPAddress.Parse "10.110.1.1", 0))
                let target = IPEndPoint(IPAddress.Parse "10.110.1.2", 7000)
                // Arm the ring (the first read posts the multishot read) before the burst.
                device.TryRead(Span<byte>(Array.zeroCreate<byte> 2048), 0) |> ignore

                for i in 0..199 do
                    kernel.SendTo(BitConverter.GetBytes i, target) |> ignore

                let before = device.IoUringEnters
                let deadline = Environment.TickCount64 + 10_000L
                let mutable next = 0

                while next < 200 && Environment.TickCount64 < deadline do
                    match readUdpTo device 7000 deadline with
                    | Some payload ->
                        Expect.equal (BitConverter.ToInt32(payload, 0)) next "datagrams come out in the order sent"
                        next <- next + 1
                    | None -> ()

                Expect.equal next 200 "all 200 datagrams were read"
                let enters = device.IoUringEnters - before
                printfn $"200 datagrams read with {enters} io_uring_enter calls"
                Expect.isLessThan enters 200L "fewer enters than packets"
            }

            test "writes queued by the reading thread leave in order, at its next read call at the latest" {
                let device, link = configured 2 false

                use _ = link
                use _ = device

                use kernel =
                    new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                kernel.Bind(IPEndPoint(IPAddress.Parse "10.110.2.1", 7001))
                kernel.ReceiveTimeout <- 5000
                let source = IPAddress.Parse "10.110.2.2"
                let destination = IPAddress.Parse "10.110.2.1"
                let buffer = Array.zeroCreate<byte> 2048
                // This thread reads, so its writes queue in the ring.
                device.TryRead(Span<byte> buffer, 0) |> ignore

                for i in 0..99 do
                    device.Write(ReadOnlySpan(ipv4Udp source destination 4000 7001 (BitConverter.GetBytes i)))

                // The read call sends what is queued (whatever it reads).
                device.TryRead(Span<byte> buffer, 0) |> ignore
                let received = Array.zeroCreate<byte> 64

                for i in 0..99 do
                    let n = kernel.Receive received
                    Expect.equal n 4 "a 4-byte datagram"
                    Expect.equal (BitConverter.ToInt32(received, 0)) i "in the order written"

                Expect.equal device.QueuedWriteErrors 0L "no queued write failed"
            }

            test "a write from another thread than the reader goes out at once, after the queued ones" {
                let device, link = configured 3 false

                use _ = link
                use _ = device

                use kernel =
                    new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                kernel.Bind(IPEndPoint(IPAddress.Parse "10.110.3.1", 7002))
                kernel.ReceiveTimeout <- 5000
                let source = IPAddress.Parse "10.110.3.2"
                let destination = IPAddress.Parse "10.110.3.1"
                device.TryRead(Span<byte>(Array.zeroCreate<byte> 2048), 0) |> ignore

                for i in 0..2 do
                    device.Write(ReadOnlySpan(ipv4Udp source destination 4000 7002 (BitConverter.GetBytes i)))

                let other =
                    Thread(fun () ->
                        device.Write(ReadOnlySpan(ipv4Udp source destination 4000 7002 (BitConverter.GetBytes 3))))

                other.Start()
                other.Join()
                let received = Array.zeroCreate<byte> 64

                for i in 0..3 do
                    kernel.Receive received |> ignore
                    Expect.equal (BitConverter.ToInt32(received, 0)) i "queued writes first, then the other thread's"
            }

            test "a gather write from the reading thread goes out after the writes it queued" {
                let device, link = configured 7 false

                use _ = link
                use _ = device

                use kernel =
                    new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                kernel.Bind(IPEndPoint(IPAddress.Parse "10.110.7.1", 7003))
                kernel.ReceiveTimeout <- 5000
                let source = IPAddress.Parse "10.110.7.2"
                let destination = IPAddress.Parse "10.110.7.1"
                // This thread reads, so its plain writes queue in the ring.
                device.TryRead(Span<byte>(Array.zeroCreate<byte> 2048), 0) |> ignore

                for i in 0..2 do
                    device.Write(ReadOnlySpan(ipv4Udp source destination 4000 7003 (BitConverter.GetBytes i)))

                // A TCP segment leaves this way (headers + send-ring pieces); no read call follows.
                let last =
                    ipv4Udp source destination 4000 7003 (Array.append (BitConverter.GetBytes 3) [| 1uy; 2uy; 3uy |])

                let none = VirtioNetHeader.None

                device.WriteGather(
                    ReadOnlySpan(last, 0, 28),
                    ReadOnlySpan(last, 28, 5),
                    ReadOnlySpan(last, 33, last.Length - 33),
                    &none
                )

                let received = Array.zeroCreate<byte> 64

                for i in 0..3 do
                    kernel.Receive received |> ignore
                    Expect.equal (BitConverter.ToInt32(received, 0)) i "the queued writes first, then the gather write"
            }

            test "Wake ends a blocked read at once, and Dispose ends one with ObjectDisposedException" {
                let device, link = configured 4 false
                use _ = link
                let outcome = ref ""

                let reader =
                    Thread(fun () ->
                        let buffer = Array.zeroCreate<byte> 2048

                        try
                            // Infinite waits: only a wake or the disposal can end them (the
                            // kernel's own router solicitations and MLD reports are skipped).
                            let mutable woken = false

                            while not woken do
                                match device.TryRead(Span<byte> buffer, Timeout.Infinite) with
                                | false, _ -> woken <- true
                                | true, _ -> ()

                            outcome.Value <- "woken"

                            while true do
                                device.TryRead(Span<byte> buffer, Timeout.Infinite) |> ignore
                        with
                        | :? ObjectDisposedException -> outcome.Value <- outcome.Value + ",disposed"
                        | e -> outcome.Value <- outcome.Value + "," + e.GetType().Name)

                reader.Start()
                Thread.Sleep 300
                device.Wake()
                Thread.Sleep 300
                Expect.equal outcome.Value "woken" "Wake ended the first wait"
                let clock = Stopwatch.StartNew()
                device.Dispose()
                Expect.isTrue (reader.Join(TimeSpan.FromSeconds 10.0)) "the reader left its wait"
                Expect.equal outcome.Value "woken,disposed" "with ObjectDisposedException"
                printfn $"Dispose to the reader's exit: {clock.Elapsed.TotalMilliseconds:F1} ms"
                // The ring held the TUN file in its pending read; the interface must still go.
                Expect.isFalse
                    (fst (Isolation.run "ip" [ "link"; "show"; "dev"; "ns110x4" ]) = 0)
                    "the interface is gone"

                use again = TunDevice.Create "ns110x4"
                Expect.equal again.Name "ns110x4" "and its name is free again"
            }

            test "packets read in place hand their buffers back: 200 datagrams pass through 64 buffers" {
                let device, link = configured 7 false

                use _ = link
                use _ = device

                use kernel =
                    new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                kernel.Bind(IPEndPoint(IPAddress.Parse "10.110.7.1", 0))
                let target = IPEndPoint(IPAddress.Parse "10.110.7.2", 7003)
                readInPlace device 0 |> ignore
                let deadline = Environment.TickCount64 + 10_000L
                let mutable next = 0

                // In batches of 50, so that the kernel's queue (500 packets) never overflows.
                for batch in 0..3 do
                    for i in batch * 50 .. batch * 50 + 49 do
                        kernel.SendTo(BitConverter.GetBytes i, target) |> ignore

                    while next < batch * 50 + 50 && Environment.TickCount64 < deadline do
                        match readInPlace device 100 with
                        | Some p when p.Length = 32 && p.[0] = 0x45uy && p.[9] = 17uy ->
                            Expect.equal (BitConverter.ToInt32(p, 28)) next "the datagrams in the order sent"
                            next <- next + 1
                        | _ -> ()

                Expect.equal next 200 "all 200 read in place"
            }

            test "reading in place needs io_uring mode" {
                use device = TunDevice.Create "ns110x8"

                Expect.throwsT<InvalidOperationException>
                    (fun () -> readInPlace device 0 |> ignore)
                    "InvalidOperationException on a plain device"
            }

            test "the whole TCP, UDP and ICMP path works over io_uring without offloads" { wholePath 5 false }

            test "the whole TCP, UDP and ICMP path works over io_uring with offloads" { wholePath 6 true }
        ]
