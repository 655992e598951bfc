/// The fault-injecting device: unit tests on the in-memory device (transparent when idle,
/// deterministic per seed, rates as configured, checksums always catch its corruption), and TCP and
/// UDP through loss, reordering, duplication and corruption with the kernel as the peer, inside the
/// test runner's private network namespace.
module NetStack.Tests.Integration.FaultTests

open System
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Sockets
open System.Security.Cryptography
open System.Threading
open System.Threading.Tasks
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack
open NetStack.Engine
open NetStack.Tests

// ------------------------------------------------------------------------------------------
// The decorator on a MemoryPacketDevice
// ------------------------------------------------------------------------------------------

/// Packets of 20..1500 bytes whose first four bytes are their index, the rest random.
/// A clock that moves only when told: the fault device's delays and rate limit on exact time.
type ManualClock() =
    inherit TimeProvider()
    /// The time since the clock was made.
    member val Now = TimeSpan.Zero with get, set
    override this.TimestampFrequency = TimeSpan.TicksPerSecond
    override this.GetTimestamp() = this.Now.Ticks

let private packets (count: int) (seed: int) =
    let random = Random seed

    Array.init count (fun i ->
        let p = Array.zeroCreate<byte>(random.Next(20, 1501))
        random.NextBytes p
        BitConverter.TryWriteBytes(Span(p, 0, 4), i) |> ignore
        p)

/// Injects `input` into a memory device under a decorator with `inbound` faults and reads until
/// nothing comes for 400 ms past the reorder hold (at once without faults); returns what the stack would have seen and the decorator's counters.
let private readThrough (inbound: FaultSettings) (input: byte[][]) =
    let memory = new MemoryPacketDevice(1500)
    use device = new FaultInjectingDevice(memory, inbound, FaultSettings())

    for p in input do
        memory.Inject(ReadOnlySpan p)

    let buffer = Array.zeroCreate<byte> 1500
    let output = ResizeArray<byte[]>()
    let quiet = Stopwatch.StartNew()
    // Without faults nothing is ever held: the first empty read ends it.
    let patience, wait =
        if inbound.IsNone then
            0L, 0
        else
            400L + int64 inbound.ReorderHold.TotalMilliseconds, 5

    let mutable reading = true

    while reading do
        let mutable n = 0

        if device.TryRead(Span buffer, wait, &n) then
            output.Add(buffer.[0 .. n - 1])
            quiet.Restart()
        elif quiet.ElapsedMilliseconds >= patience then
            reading <- false

    output.ToArray(), device.Statistics

/// The Internet checksum's complement sum of a whole packet (odd lengths padded, RFC 1071).
let private complementSum (p: byte[]) =
    NetStack.Core.Wire.Checksum.fold (NetStack.Core.Wire.Checksum.sum 0UL (ReadOnlySpan p))

let private bitsDiffering (a: byte[]) (b: byte[]) =
    Array.fold2 (fun n (x: byte) (y: byte) -> n + Numerics.BitOperations.PopCount(uint32 (x ^^^ y))) 0 a b

let private mixedWith (seed: int) =
    FaultSettings(LossPercent = 5.0, DuplicatePercent = 3.0, ReorderPercent = 5.0, CorruptPercent = 4.0, Seed = seed)

let private mixed = mixedWith 42

let private decoratorTests =
    testList
        "FaultInjectingDevice on a memory device"
        [
            testPropertyWithConfig
                TestUtil.codecConfig
                "with no faults configured every packet passes unchanged and in order"
            <| fun (payloads: NonEmptyArray<NonEmptyArray<byte>>) ->
                let input = payloads.Get |> Array.map (fun p -> Array.truncate 1500 p.Get)

                let output, statistics = readThrough (FaultSettings()) input
                output = input && statistics.Snapshot().Count = 0

            test "the same seed gives the same drops, duplicates, reorderings and corruptions" {
                let input = packets 2000 1
                // A reordered packet is released by the next one, or by the hold's clock when the
                // reader stalls longer (a loaded machine): a long hold keeps the clock out of it.
                let hold (s: FaultSettings) =
                    FaultSettings(
                        LossPercent = s.LossPercent,
                        DuplicatePercent = s.DuplicatePercent,
                        ReorderPercent = s.ReorderPercent,
                        CorruptPercent = s.CorruptPercent,
                        Seed = s.Seed,
                        ReorderHold = TimeSpan.FromSeconds 2.0
                    )

                let first, _ = readThrough (hold mixed) input
                let second, _ = readThrough (hold mixed) input
                let other, _ = readThrough (hold (mixedWith 43)) input
                Expect.equal first.Length second.Length "as many packets"

                Expect.isTrue
                    (Array.forall2 (fun (a: byte[]) b -> a = b) first second)
                    "the same packets in the same order"

                Expect.isFalse
                    (first.Length = other.Length
                     && Array.forall2 (fun (a: byte[]) b -> a = b) first other)
                    "another seed differs"
            }

            test "loss, duplication, reordering and corruption happen at about their configured rates" {
                let count = 20000
                let input = packets count 2
                let output, statistics = readThrough mixed input

                let near (name: string) (percent: float) =
                    let value = float statistics.[name]
                    let expected = percent / 100.0 * float count
                    // Binomial: 5 standard deviations is far beyond chance.
                    let tolerance = 5.0 * sqrt (expected * (1.0 - percent / 100.0))
                    Expect.isLessThan (abs (value - expected)) tolerance $"{name} = {value}, expected about {expected}"

                near "faults.in.drop" 5.0
                // The other decisions are made for dropped packets too, and counted only for the rest.
                near "faults.in.duplicate" (3.0 * 0.95)
                near "faults.in.reorder" (5.0 * 0.95)
                near "faults.in.corrupt" (4.0 * 0.95)

                Expect.equal
                    (int64 output.Length)
                    (int64 count - statistics.["faults.in.drop"] + statistics.["faults.in.duplicate"])
                    "delivered = sent - dropped + duplicated"

                let indexOf (p: byte[]) = BitConverter.ToInt32(p, 0)

                let outOfOrder =
                    output
                    |> Array.pairwise
                    |> Array.filter (fun (a, b) -> indexOf b < indexOf a)
                    |> Array.length

                Expect.isGreaterThan outOfOrder 0 "some packets overtook others"
            }

            test "every corrupted packet has 1 to 3 flipped bits and a different Internet checksum" {
                let input = packets 5000 3

                let output, statistics =
                    readThrough (FaultSettings(CorruptPercent = 50.0, Seed = 7)) input

                Expect.equal output.Length input.Length "nothing lost"
                let mutable corrupted = 0

                for i in 0 .. input.Length - 1 do
                    let bits = bitsDiffering input.[i] output.[i]

                    if bits > 0 then
                        corrupted <- corrupted + 1
                        Expect.isLessThanOrEqual bits 3 "at most 3 bits"

                        Expect.notEqual
                            (complementSum output.[i])
                            (complementSum input.[i])
                            $"packet {i}: the checksum sees the change"

                Expect.equal (int64 corrupted) statistics.["faults.in.corrupt"] "every corruption counted"
            }

            test "a delayed written packet reaches the inner device only after the delay, released during a long read" {
                let memory = new MemoryPacketDevice(1500)
                let outbound = FaultSettings(Delay = TimeSpan.FromMilliseconds 80.0)
                use device = new FaultInjectingDevice(memory, FaultSettings(), outbound)
                let clock = Stopwatch.StartNew()
                device.Write(ReadOnlySpan(Array.create 100 7uy))
                let mutable taken = null
                Expect.isFalse (memory.TryTakeWritten(&taken)) "held at first"
                // Another thread watches the inner device while this one sits in a 20 s read: a
                // release that waited for the read's own timeout would come 20 s late, so the
                // bound below tells the two apart with room for a loaded machine.
                let arrival =
                    Task.Run(fun () ->
                        let p = memory.WaitWritten(TimeSpan.FromSeconds 30.0)
                        p, clock.ElapsedMilliseconds)

                // Once the packet is out, a wake ends the read in progress, so the test does not
                // sit out the rest of its 20 s.
                arrival.ContinueWith(fun (_: Task<_>) -> device.Wake()) |> ignore
                let buffer = Array.zeroCreate<byte> 1500
                let mutable n = 0
                // The engine's loop: reads that may end early (a wake) are simply repeated.
                while not arrival.IsCompleted && clock.ElapsedMilliseconds < 30_000L do
                    device.TryRead(Span buffer, 20_000, &n) |> ignore

                let packet, at = arrival.Result
                Expect.isNotNull packet "released"
                Expect.isGreaterThanOrEqual at 75L "not before the delay"
                Expect.isLessThan at 10_000L "during the read: its wait shrank to the release time"
            }

            test "the rate limit paces packets and drops beyond its queue" {
                // On a manual clock, so the schedule is exact whatever else the machine does.
                let clock = ManualClock()
                let memory = new MemoryPacketDevice(1500)
                // 1 MB/s with the default bucket of 10 ms at the rate (10,000 bytes): 200 packets of 1000 bytes.
                let outbound =
                    FaultSettings(RateLimitBytesPerSecond = 1_000_000L, RateLimitQueuePackets = 1000)

                use device = new FaultInjectingDevice(memory, FaultSettings(), outbound, clock)

                for _ in 1..200 do
                    device.Write(ReadOnlySpan(Array.zeroCreate<byte> 1000))

                let mutable taken = null

                let sentBy (ms: float) =
                    clock.Now <- TimeSpan.FromMilliseconds ms
                    // A write releases what is due; an empty one is not a packet and is not paced.
                    let mutable n = 0
                    device.TryRead(Span(Array.zeroCreate<byte> 1500), 0, &n) |> ignore
                    let mutable got = 0

                    while memory.TryTakeWritten(&taken) do
                        got <- got + 1

                    got

                let first = sentBy 0.0
                let next = sentBy 100.0
                let rest = sentBy 250.0
                Expect.equal first 10 "the bucket's 10,000 bytes pass at once"
                Expect.equal next 100 "then one packet per millisecond"
                Expect.equal rest 90 "and every packet is sent in the end"
                Expect.equal device.Statistics.["faults.out.rate-drop"] 0L "nothing dropped with room to queue"

                // A short queue: the bucket's 10 packets pass, 10 wait, the other 80 are dropped.
                let memory = new MemoryPacketDevice(1500)

                let outbound =
                    FaultSettings(RateLimitBytesPerSecond = 1_000_000L, RateLimitQueuePackets = 10)

                use device =
                    new FaultInjectingDevice(memory, FaultSettings(), outbound, ManualClock())

                for _ in 1..100 do
                    device.Write(ReadOnlySpan(Array.zeroCreate<byte> 1000))

                Expect.equal device.Statistics.["faults.out.rate-drop"] 80L "the excess was dropped"
                Expect.equal device.Statistics.["faults.out.rate-queued"] 10L "the queue's size waited"
            }

            test "settings out of range are refused" {
                let memory = new MemoryPacketDevice(1500)

                Expect.throwsT<ArgumentException>
                    (fun () -> new FaultInjectingDevice(memory, FaultSettings(LossPercent = 101.0)) |> ignore)
                    "loss over 100%"

                Expect.throwsT<ArgumentException>
                    (fun () ->
                        new FaultInjectingDevice(memory, FaultSettings(Delay = TimeSpan.FromSeconds -1.0))
                        |> ignore)
                    "a negative delay"
            }
        ]

// ------------------------------------------------------------------------------------------
// With the kernel as the peer
// ------------------------------------------------------------------------------------------

/// The issue's fault mix: 5% loss, 5% reordering, 1% duplicates, 0.5% corruption, both directions.
let private issueFaults (seed: int) =
    FaultSettings(LossPercent = 5.0, ReorderPercent = 5.0, DuplicatePercent = 1.0, CorruptPercent = 0.5, Seed = seed)

/// Each test gets its own interface and subnet (10.91.N.0/24, fd91:N::/64).
let private optionsFor (n: int) =
    NetStackOptions(
        TunName = $"nsfault{n}",
        Address = IPAddress.Parse $"10.91.{n}.2",
        HostAddress = IPAddress.Parse $"10.91.{n}.1",
        Address6 = IPAddress.Parse $"fd91:{n}::2",
        HostAddress6 = IPAddress.Parse $"fd91:{n}::1",
        TcpLinger = TimeSpan.FromSeconds 10.0,
        Faults = issueFaults (1000 + n)
    )

let private families (n: int) = TestUtil.families (optionsFor n)

/// Bytes sent in each direction per family through the faults: 2 MiB in the default run, or
/// NETSTACK_FAULT_MIB MiB (the issue's 50 MB check: `NETSTACK_FAULT_MIB=50`).
let private faultBytes =
    match Int64.TryParse(Environment.GetEnvironmentVariable "NETSTACK_FAULT_MIB") with
    | true, mib when mib > 0L -> mib * 1024L * 1024L
    | _ -> 2L * 1024L * 1024L

/// A minute, plus time for a larger NETSTACK_FAULT_MIB at 256 KiB/s.
let private timeout =
    TimeSpan.FromSeconds(60.0 + float (faultBytes / (256L * 1024L)))

let private wait (task: Threading.Tasks.Task<'T>) : 'T =
    NetStack.Tests.TestUtil.waitWithin timeout task

let private withStack (n: int) (f: NetworkStack -> unit) =
    NetStack.Tests.TestUtil.withStackOf (optionsFor n) f



/// Datagrams of the UDP echo exchange per family.
let private udpRequests = 400

/// The request (and expected echo) for sequence number `i`: its index, then a pattern it determines.
let private udpPayload (i: int) =
    let random = Random i
    let p = Array.zeroCreate<byte>(8 + random.Next(1, 1200))
    random.NextBytes p
    BitConverter.TryWriteBytes(Span(p, 0, 4), i) |> ignore
    BitConverter.TryWriteBytes(Span(p, 4, 4), p.Length) |> ignore
    p

/// True when `data` is exactly the payload its first four bytes name.
let private isIntact (data: ReadOnlySpan<byte>) =
    data.Length >= 8
    && (let i = BitConverter.ToInt32 data
        i >= 0 && i < udpRequests && data.SequenceEqual(ReadOnlySpan(udpPayload i)))

let private kernelTests =
    testSequenced
    <| testList
        "faults with the kernel"
        [
            test
                "TCP bytes cross each way intact (SHA-256) through loss, reordering, duplicates and corruption, and both sides close cleanly, IPv4 and IPv6" {
                withStack 1 (fun stack ->
                    let mutable lostOut = 0L
                    let mutable timeoutsOut = 0L

                    for (stackAddress, kernelAddress) in families 1 do
                        // Kernel to NetStack: NetStack reads to the kernel's FIN, then closes its side.
                        use listener = stack.ListenTcp(IPEndPoint(stackAddress, 9))

                        let inbound =
                            TestUtil.kernelToStack timeout 11 faultBytes listener (IPEndPoint(stackAddress, 9))

                        // NetStack to kernel: a graceful close waits until the kernel acknowledged data and FIN.
                        use kernel = TestUtil.kernelListener kernelAddress
                        let before = stack.Statistics.Snapshot()
                        let outbound = TestUtil.stackToKernel timeout 11 faultBytes stack kernel

                        let counted (name: string) =
                            stack.Statistics.[name]
                            - (match before.TryGetValue name with
                               | true, v -> v
                               | _ -> 0L)

                        // How the link's losses of the stack's segments were repaired.
                        let lost = counted "faults.out.drop" + counted "faults.out.corrupt"
                        let timeouts = counted "tcp.retransmission-timeout"
                        let fast = counted "tcp.retransmit.fast"
                        let probes = counted "tcp.loss-probe"
                        lostOut <- lostOut + lost
                        timeoutsOut <- timeoutsOut + timeouts

                        printfn
                            $"TCP through faults over {stackAddress.AddressFamily}, {faultBytes >>> 20} MiB each way: in %.1f{inbound.TotalSeconds} s, out %.1f{outbound.TotalSeconds} s; out: {lost} packets lost, {fast} fast recoveries, {probes} loss probes, {timeouts} timeouts"

                        Expect.isGreaterThan lost 0L "the link lost some of the stack's segments"
                        // Most loss episodes end in fast (SACK) recovery, not in a timeout.
                        Expect.isGreaterThan
                            fast
                            timeouts
                            $"fast recoveries outnumber timeouts over {stackAddress.AddressFamily}"

                    // Loss recovery bounded: a retransmission timeout needs a second loss that hides
                    // the first (its retransmission, the tail loss probe, or the ACKs that would
                    // report them), each lost with p = loss + corruption = 5.5%: at most 2p of the
                    // packets the link took from the stack, over both families' transfers (about
                    // 160 lost; about a third of the bound is typical). Recovery by timeouts alone
                    // fails this and the check above.
                    let p = (issueFaults 0).LossPercent / 100.0 + (issueFaults 0).CorruptPercent / 100.0

                    Expect.isLessThanOrEqual
                        (float timeoutsOut)
                        (2.0 * p * float lostOut)
                        $"{timeoutsOut} timeouts: at most 2p of the {lostOut} lost packets"

                    let s = stack.Statistics

                    for name in
                        [
                            "faults.in.drop"
                            "faults.out.drop"
                            "faults.in.corrupt"
                            "faults.out.corrupt"
                            "faults.in.reorder"
                            "faults.out.duplicate"
                        ] do
                        Expect.isGreaterThan s.[name] 0L $"{name} happened")
            }

            test
                "UDP echo with application retries through the same faults never delivers a corrupted datagram, IPv4 and IPv6" {
                withStack 2 (fun stack ->
                    use cancel = new CancellationTokenSource()
                    use server = stack.BindUdp(IPEndPoint(IPAddress.IPv6Any, 7))
                    let mutable badAtStack = 0

                    // Echoes until the test cancels it; any other end (an exception) fails the test
                    // below, where the task is awaited.
                    let echo =
                        task {
                            let buffer = Array.zeroCreate<byte> 2048

                            try
                                while true do
                                    let! r = server.ReceiveFromAsync(Memory buffer, cancel.Token)

                                    if not (isIntact (ReadOnlySpan(buffer, 0, r.ReceivedBytes))) then
                                        Interlocked.Increment(&badAtStack) |> ignore

                                    let! sent =
                                        server.SendToAsync(
                                            ReadOnlyMemory(buffer, 0, r.ReceivedBytes),
                                            r.RemoteEndPoint :?> IPEndPoint
                                        )

                                    if sent <> r.ReceivedBytes then
                                        failwithf "the echo sent %d of %d bytes" sent r.ReceivedBytes
                            with :? OperationCanceledException when cancel.IsCancellationRequested ->
                                ()
                        }

                    for (stackAddress, _) in families 2 do
                        use client =
                            new Socket(stackAddress.AddressFamily, SocketType.Dgram, ProtocolType.Udp)

                        client.Connect(IPEndPoint(stackAddress, 7))
                        client.ReceiveTimeout <- 50
                        let buffer = Array.zeroCreate<byte> 2048
                        let mutable badAtKernel = 0
                        let mutable retries = 0

                        for i in 0 .. udpRequests - 1 do
                            let request = udpPayload i
                            let mutable answered = false
                            let mutable attempts = 0

                            while not answered do
                                attempts <- attempts + 1

                                if attempts > 50 then
                                    failtestf "request %d got no answer in 50 attempts" i

                                client.Send request |> ignore
                                let mutable waiting = true

                                while waiting do
                                    try
                                        let n = client.Receive buffer

                                        if not (isIntact (ReadOnlySpan(buffer, 0, n))) then
                                            badAtKernel <- badAtKernel + 1
                                        elif BitConverter.ToInt32(buffer, 0) = i then
                                            answered <- true
                                            waiting <- false
                                    // Late answers to earlier requests (duplicates, retries) are intact but not ours: keep waiting.
                                    // No answer within the receive timeout: send again. Any other
                                    // error (a refusal, say) is a failure.
                                    with :? SocketException as e when e.SocketErrorCode = SocketError.TimedOut ->
                                        retries <- retries + 1
                                        waiting <- false

                        Expect.equal
                            badAtKernel
                            0
                            $"no corrupted echo reached the kernel's socket over {stackAddress.AddressFamily}"

                        printfn
                            $"UDP echo through faults over {stackAddress.AddressFamily}: {udpRequests} requests, {retries} retries"

                    cancel.Cancel()
                    // Wait rethrows what ended the echo early; it must end at the cancellation.
                    Expect.isTrue (echo.Wait timeout) "the echo ended when canceled"
                    Expect.equal badAtStack 0 "no corrupted request reached NetStack's socket"

                    Expect.isGreaterThan
                        (stack.Statistics.["faults.in.corrupt"] + stack.Statistics.["faults.out.corrupt"])
                        0L
                        "corruption happened")
            }
        ]

[<Tests>]
let tests = testList "Faults" [ decoratorTests; kernelTests ]
