/// NetStackOptions.TunWriterThread and WriterThreadDevice: writes handed to a thread of their own.
/// On a memory device: order per writer, a queue far smaller than the traffic (the writers wait),
/// failing writes counted, bad packets and writes after Dispose refused. Against the kernel,
/// without offloads: bulk TCP both ways over IPv4 and IPv6 with SHA-256, ping, and no writer
/// thread left after Dispose. Subnets 10.112.N.0/24 and fdac:N::/64, interfaces ns112wN.
module NetStack.Tests.Integration.WriterThreadTests

open System
open System.IO
open System.Net
open System.Threading
open Expecto
open NetStack
open NetStack.Engine
open NetStack.Tests

let private timeout = TimeSpan.FromSeconds 60.0

/// A packet of `length` bytes: the writer's number, then its sequence number, then filler.
let private numbered (writer: int) (sequence: int) (length: int) =
    let p = Array.create length (byte sequence)
    p.[0] <- byte writer
    BitConverter.TryWriteBytes(Span(p, 1, 4), sequence) |> ignore
    p

/// Threads of this process named "netstack writer" (Linux keeps 15 characters: all of it).
let private writerThreads () =
    Directory.GetDirectories "/proc/self/task"
    |> Array.filter (fun t ->
        try
            File.ReadAllText(Path.Combine(t, "comm")).TrimEnd() = "netstack writer"
        with :? IOException ->
            false)
    |> Array.length

let private optionsOf (n: int) (offloads: bool) (mode: NetStackMode) (ioUring: bool) (writer: Nullable<bool>) =
    NetStackOptions(
        TunName = $"ns112w{n}",
        Address = IPAddress.Parse $"10.112.{n}.2",
        HostAddress = IPAddress.Parse $"10.112.{n}.1",
        Address6 = IPAddress.Parse $"fdac:{n}::2",
        HostAddress6 = IPAddress.Parse $"fdac:{n}::1",
        Offloads = offloads,
        Mode = mode,
        TunIoUring = ioUring,
        TunWriterThread = writer,
        TcpLinger = TimeSpan.FromSeconds 10.0
    )

let private optionsWith n offloads mode ioUring =
    optionsOf n offloads mode ioUring (Nullable true)

let private options (n: int) =
    optionsWith n false NetStackMode.Tun false

/// A device whose writes wait until `gate` is set.
type private GatedDevice(inner: MemoryPacketDevice, gate: ManualResetEventSlim) =
    interface IPacketDevice with
        member _.Mtu = inner.Mtu
        member _.TryRead(buffer, timeout, length) = inner.TryRead(buffer, timeout, &length)

        member _.Write(packet: ReadOnlySpan<byte>) =
            gate.Wait() |> ignore
            inner.Write packet

        member _.Wake() = inner.Wake()
        member _.Dispose() = inner.Dispose()

/// A device whose writes of packets starting with 0xFF fail.
type private FailingDevice(inner: MemoryPacketDevice) =
    interface IPacketDevice with
        member _.Mtu = inner.Mtu
        member _.TryRead(buffer, timeout, length) = inner.TryRead(buffer, timeout, &length)

        member _.Write(packet: ReadOnlySpan<byte>) =
            if packet.[0] = 0xFFuy then
                raise (IOException "refused")

            inner.Write packet

        member _.Wake() = inner.Wake()
        member _.Dispose() = inner.Dispose()

[<Tests>]
let tests =
    testList
        "WriterThread"
        [
            test "two writers' 3000 packets each all leave, each writer's in order, through a 16-slot queue" {
                let memory = new MemoryPacketDevice(1500)
                use device = new WriterThreadDevice(memory, queueBytes = 1, inlineWhenIdle = false)
                Expect.equal device.QueueSlots 16 "the smallest queue"

                let write (writer: int) =
                    Thread(fun () ->
                        for i in 0..2999 do
                            let p = numbered writer i (20 + i % 1400)

                            if i % 2 = 0 then
                                device.Write(ReadOnlySpan p)
                            else
                                device.WriteGather(
                                    ReadOnlySpan(p, 0, 7),
                                    ReadOnlySpan(p, 7, 5),
                                    ReadOnlySpan(p, 12, p.Length - 12)
                                ))

                let threads = [ write 1; write 2 ]

                for t in threads do
                    t.Start()

                let next = [| 0; 0; 0 |]

                for _ in 1..6000 do
                    match memory.WaitWritten timeout with
                    | null -> failtest "a packet never came"
                    | p ->
                        let writer = int p.[0]
                        let sequence = BitConverter.ToInt32(p, 1)
                        Expect.equal sequence next.[writer] $"writer {writer}'s packets in order"
                        Expect.equal p (numbered writer sequence p.Length) "the same bytes, pieces joined"
                        Expect.equal p.Length (20 + sequence % 1400) "the same length"
                        next.[writer] <- next.[writer] + 1

                for t in threads do
                    t.Join()

                Expect.equal device.WriteErrors 0L "no write failed"
            }

            test "a failing write is counted and the writer goes on" {
                let memory = new MemoryPacketDevice(1500)

                use device =
                    new WriterThreadDevice(new FailingDevice(memory), inlineWhenIdle = false)

                device.Write(ReadOnlySpan [| 1uy; 2uy |])
                device.Write(ReadOnlySpan [| 0xFFuy; 2uy |])
                device.Write(ReadOnlySpan [| 3uy; 4uy |])
                Expect.equal (memory.WaitWritten timeout) [| 1uy; 2uy |] "the first"
                Expect.equal (memory.WaitWritten timeout) [| 3uy; 4uy |] "the third, after the failed second"
                Expect.equal device.WriteErrors 1L "one error counted"
            }

            test
                "an idle reader's write goes out on the caller's thread; in a burst, or behind queued packets, it is handed over in order" {
                let memory = new MemoryPacketDevice(1500)
                use gate = new ManualResetEventSlim(true)
                use device = new WriterThreadDevice(new GatedDevice(memory, gate))
                let buffer = Array.zeroCreate<byte> 1500
                let read () = fst (device.TryRead(Span buffer, 0))

                // Idle (nothing read yet): written before Write returns, on this thread.
                device.Write(ReadOnlySpan [| 1uy |])
                Expect.isTrue (memory.TryTakeWritten() |> fst) "already written when Write returned"
                Expect.equal (device.InlineWrites, device.HandedOver) (1L, 0L) "inline"

                // A burst: the last read found a packet, so the write is handed over; the writer
                // thread is held in the inner write by the closed gate.
                gate.Reset()
                memory.Inject(ReadOnlySpan [| 0x45uy |])
                Expect.isTrue (read ()) "a packet read"
                device.Write(ReadOnlySpan [| 2uy |])
                Expect.equal device.HandedOver 1L "handed over"

                // The reader goes idle, but packet 2 is still being written: 3 goes behind it. Had
                // it been written here, this Write would block on the gate.
                Expect.isFalse (read ()) "nothing to read"
                let third = Tasks.Task.Run(fun () -> device.Write(ReadOnlySpan [| 3uy |]))
                Expect.isTrue (third.Wait timeout) "the write behind a busy writer returns at once"
                Expect.equal (device.InlineWrites, device.HandedOver) (1L, 2L) "handed over, not inline"
                gate.Set()
                Expect.equal (memory.WaitWritten timeout) [| 2uy |] "2 first"
                Expect.equal (memory.WaitWritten timeout) [| 3uy |] "then 3"

                // Drained and idle again: inline once more.
                let clock = Diagnostics.Stopwatch.StartNew()
                let mutable inline' = false

                while not inline' && clock.Elapsed < timeout do
                    device.Write(ReadOnlySpan [| 4uy |])
                    inline' <- device.InlineWrites = 2L
                    Expect.equal (memory.WaitWritten timeout) [| 4uy |] "4"

                Expect.isTrue inline' "inline once the writer has finished"
            }

            test "a failing write on the caller's thread throws there, as the inner device's would" {
                use device = new WriterThreadDevice(new FailingDevice(new MemoryPacketDevice(1500)))

                Expect.throwsT<IOException>
                    (fun () -> device.Write(ReadOnlySpan [| 0xFFuy; 2uy |]))
                    "thrown to the caller"

                Expect.equal device.WriteErrors 0L "not a writer-thread error"
            }

            test "empty and over-long packets are refused at once; writes after Dispose throw ObjectDisposedException" {
                let device = new WriterThreadDevice(new MemoryPacketDevice(1500))
                Expect.throwsT<ArgumentException> (fun () -> device.Write ReadOnlySpan.Empty) "empty"

                Expect.throwsT<ArgumentException>
                    (fun () -> device.Write(ReadOnlySpan(Array.zeroCreate<byte> 1501)))
                    "longer than the MTU"

                Expect.throwsT<ArgumentOutOfRangeException>
                    (fun () -> new WriterThreadDevice(new MemoryPacketDevice(1500), 0) |> ignore)
                    "a queue of no bytes"

                device.Dispose()
                device.Dispose()
                Expect.throwsT<ObjectDisposedException> (fun () -> device.Write(ReadOnlySpan [| 1uy |])) "disposed"
            }

            test "TunWriterThread with offloads, in TAP mode or with io_uring is refused by Start" {
                for bad in
                    [
                        optionsWith 9 true NetStackMode.Tun false
                        optionsWith 9 false NetStackMode.Tap false
                        optionsWith 9 false NetStackMode.Tun true
                    ] do
                    Expect.throwsT<ArgumentException> (fun () -> NetworkStack.Start bad |> ignore) "refused"
            }

            testSequenced
            <| test
                "without offloads: 16 MiB each way over IPv4 and IPv6 (SHA-256 exact), ping, and no writer thread after Dispose" {
                let before = writerThreads ()

                TestUtil.withStackOf (options 1) (fun stack ->
                    Expect.equal (writerThreads ()) (before + 1) "the writer runs"

                    for (stackAddress, kernelAddress) in TestUtil.families (options 1) do
                        do
                            use listener = stack.ListenTcp(IPEndPoint(stackAddress, 9))

                            TestUtil.kernelToStack timeout 112 (16L <<< 20) listener (IPEndPoint(stackAddress, 9))
                            |> ignore

                        do
                            use kernel = TestUtil.kernelListener kernelAddress
                            TestUtil.stackToKernel timeout 113 (16L <<< 20) stack kernel |> ignore

                        let reply =
                            stack.PingAsync(kernelAddress, TimeSpan.FromSeconds 5.0)
                            |> TestUtil.waitWithin timeout

                        Expect.equal reply.Status NetworkInformation.IPStatus.Success $"ping {kernelAddress}"

                    // Both ways of writing were taken: bursts handed over, idle answers inline.
                    Expect.isGreaterThan stack.Statistics.["device.writer.handed-over"] 0L "handed over"
                    Expect.isGreaterThan stack.Statistics.["device.writer.inline"] 0L "inline")

                let mutable left = writerThreads ()
                let clock = Diagnostics.Stopwatch.StartNew()

                while left <> before && clock.Elapsed < TimeSpan.FromSeconds 5.0 do
                    Thread.Sleep 20
                    left <- writerThreads ()

                Expect.equal left before "the writer thread ended with the stack"
            }

            testSequenced
            <| test "by default (null) the writer runs without offloads, not with them, and never when false" {
                let before = writerThreads ()

                let running (o: NetStackOptions) =
                    let mutable writers = -1

                    TestUtil.withStackOf o (fun stack ->
                        let reply =
                            stack.PingAsync(o.HostAddress, TimeSpan.FromSeconds 5.0)
                            |> TestUtil.waitWithin timeout

                        Expect.equal reply.Status NetworkInformation.IPStatus.Success "ping"
                        writers <- writerThreads () - before)

                    writers

                let auto n offloads =
                    optionsOf n offloads NetStackMode.Tun false (Nullable())

                Expect.equal (running (auto 2 false)) 1 "without offloads: a writer"
                Expect.equal (running (auto 3 true)) 0 "with offloads: none"
                Expect.equal (running (optionsOf 4 false NetStackMode.Tun false (Nullable false))) 0 "false: none"
            }
        ]
