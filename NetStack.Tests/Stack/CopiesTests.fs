/// Fewer copies per byte (issue 5), on in-memory devices: packets written in pieces (the
/// devices' default gather joins them; a capture records the whole packet), and data arriving
/// in order for a read that waits going straight into the reader's buffer, with partial reads,
/// holes, cancellation and disposal keeping every byte once and in order.
module NetStack.Tests.Stack.CopiesTests

open System
open System.IO
open System.Net
open System.Net.Sockets
open System.Threading
open System.Threading.Tasks
open Expecto
open NetStack
open NetStack.Engine
open NetStack.Diagnostics
open NetStack.Core.Wire
open NetStack.Core.Tcp
open NetStack.Core.Stack

let private ours4 = Ipv4Address.Parse "10.0.0.2"
let private peer4 = Ipv4Address.Parse "10.0.0.1"

let private timeout = TimeSpan.FromSeconds 5.0

let private options () =
    NetStackOptions(Address = ours4.ToIPAddress(), HostAddress = peer4.ToIPAddress())

let private segment seq ack flags (length: int) : OutgoingSegment =
    {
        Seq = SeqNum seq
        Ack = SeqNum ack
        Flags = flags
        Window = 65535us
        Options =
            if flags &&& TcpFlags.Syn = TcpFlags.Syn then
                { TcpOptions.None with
                    MaximumSegmentSize = ValueSome 1400us
                }
            else
                TcpOptions.None
        DataPosition = 0L
        DataLength = length
    }

/// A packet from the peer (port 40000) to the stack's port 80.
let private fromPeer seq ack flags (payload: byte[]) =
    let buffer = Array.zeroCreate<byte> 70000

    let n =
        IpLayer.writeTcp
            (V4 peer4)
            (V4 ours4)
            40000us
            80us
            1us
            (segment seq ack flags payload.Length)
            (ReadOnlySpan payload)
            (Span buffer)

    buffer.[.. n - 1]

/// The next TCP segment the stack wrote.
let private nextSegment (device: MemoryPacketDevice) =
    let peer = IpLayer.create (IpLayer.config (ValueSome peer4) ValueNone 65535) 0L

    let rec next () =
        match device.WaitWritten timeout with
        | null -> failtest "the stack wrote no TCP segment"
        | packet ->
            let struct (_, r) = IpLayer.receive 1L (ReadOnlySpan packet) peer
            if r.Kind = ReceivedKind.TcpSegment then r else next ()

    next ()

/// A connection accepted on port 80 after a handshake driven by hand; `f` gets the stack, the
/// device, the connection and a function making the peer's packet of data at a stream offset.
let private withConnectionPackets
    (f: NetworkStack -> MemoryPacketDevice -> TcpConnection -> (int -> byte[] -> byte[]) -> unit)
    =
    let device = new MemoryPacketDevice(1500)
    use stack = NetworkStack.Start(options (), device)
    use listener = stack.ListenTcp(80)
    device.Inject(ReadOnlySpan(fromPeer 1000u 0u TcpFlags.Syn [||]))
    let synAck = nextSegment device
    Expect.equal synAck.Tcp.Flags (TcpFlags.Syn ||| TcpFlags.Ack) "SYN,ACK"
    let ours = synAck.Tcp.Seq.Value + 1u
    device.Inject(ReadOnlySpan(fromPeer 1001u ours TcpFlags.Ack [||]))
    use connection = listener.AcceptAsync().AsTask().WaitAsync(timeout).Result

    let packet (offset: int) (data: byte[]) =
        fromPeer (1001u + uint32 offset) ours (TcpFlags.Ack ||| TcpFlags.Psh) data

    try
        f stack device connection packet
    with e ->
        failtestf "%s\nstatistics:\n%O" (e.ToString()) stack.Statistics

    NetStack.Tests.TestUtil.assertNoExceptions stack

/// `withConnectionPackets` with a function injecting the peer's data at a stream offset.
let private withConnection (f: NetworkStack -> MemoryPacketDevice -> TcpConnection -> (int -> byte[] -> unit) -> unit) =
    withConnectionPackets (fun stack device connection packet ->
        f stack device connection (fun offset data -> device.Inject(ReadOnlySpan(packet offset data))))

let private pattern (length: int) (seed: int) =
    let bytes = Array.zeroCreate<byte> length
    Random(seed).NextBytes bytes
    bytes

/// Waits until the loop has read every injected packet.
let private waitUntil (condition: unit -> bool) =
    let deadline = DateTime.UtcNow + timeout

    while not (condition ()) && DateTime.UtcNow < deadline do
        Thread.Sleep 2

    Expect.isTrue (condition ()) "the condition became true in time"

let private direct (stack: NetworkStack) =
    stack.Statistics.["tcp.receive.direct-bytes"]

/// A read that is surely waiting (armed) before the test injects data.
let private waitingRead (connection: TcpConnection) (buffer: byte[]) (token: CancellationToken) =
    let read = connection.ReadAsync(Memory buffer, token).AsTask()
    Thread.Sleep 50
    Expect.isFalse read.IsCompleted "the read waits"
    read

let private readExactly (connection: TcpConnection) (count: int) =
    let result = Array.zeroCreate<byte> count
    let mutable at = 0

    while at < count do
        let n =
            connection.ReadAsync(Memory(result, at, count - at)).AsTask().WaitAsync(timeout).Result

        Expect.isGreaterThan n 0 "data, not the end"
        at <- at + n

    result

let private gatherTests =
    testList
        "gather writes"
        [
            test "the default gather of a device joins head, payload and tail into one packet" {
                use device = new MemoryPacketDevice(1500)
                let packet = fromPeer 5u 6u TcpFlags.Ack (pattern 700 1)
                let gather: IPacketDevice = device

                gather.WriteGather(
                    ReadOnlySpan(packet, 0, 40),
                    ReadOnlySpan(packet, 40, 333),
                    ReadOnlySpan(packet, 373, packet.Length - 373)
                )

                gather.WriteGather(ReadOnlySpan(packet), ReadOnlySpan.Empty, ReadOnlySpan.Empty)
                Expect.equal (device.WaitWritten timeout) packet "three pieces"
                Expect.equal (device.WaitWritten timeout) packet "one piece"
            }

            test
                "a capture records the packet the pieces make, its partial checksum completed, and passes the pieces on" {
                let file = Path.GetTempFileName()

                try
                    let inner = new MemoryPacketDevice(1500)
                    let payload = pattern 1001 2
                    let whole = fromPeer 5u 6u TcpFlags.Ack payload

                    do
                        use capture = new CapturingPacketDevice(inner, new PcapWriter(File.Create file))
                        let head = Array.zeroCreate<byte> 2000

                        let length =
                            IpLayer.writeTcpSegments
                                (V4 peer4)
                                (V4 ours4)
                                40000us
                                80us
                                1us
                                (segment 5u 6u TcpFlags.Ack payload.Length)
                                TcpFlags.Ack
                                payload.Length
                                (Span head)

                        let headerBytes = length - payload.Length
                        let device: IPacketDevice = capture
                        // No offload metadata underneath: complete the checksum as the stack does.
                        let sum =
                            Checksum.sumAfter
                                (Checksum.sum 0UL (ReadOnlySpan(payload, 0, 501)))
                                501
                                (ReadOnlySpan(payload, 501, 500))

                        IpLayer.completeTcpChecksum (V4 peer4) headerBytes sum (Span head)

                        device.WriteGather(
                            ReadOnlySpan(head, 0, headerBytes),
                            ReadOnlySpan(payload, 0, 501),
                            ReadOnlySpan(payload, 501, 500)
                        )

                    Expect.equal (inner.WaitWritten timeout) whole "the device got the whole packet"
                    let recorded = File.ReadAllBytes file
                    // The one record is the last bytes of the file (24-byte file header, 16-byte record header).
                    Expect.equal recorded.[recorded.Length - whole.Length ..] whole "the capture holds the same bytes"
                finally
                    File.Delete file
            }
        ]

let private directTests =
    testList
        "direct receive"
        [
            test "an in-order segment goes straight into a waiting read's buffer" {
                withConnection (fun stack _ connection inject ->
                    let buffer = Array.zeroCreate<byte> 4096
                    let read = waitingRead connection buffer CancellationToken.None
                    let data = pattern 1000 3
                    inject 0 data
                    let n = read.WaitAsync(timeout).Result
                    Expect.equal n 1000 "the whole segment"
                    Expect.equal buffer.[.. n - 1] data "the same bytes"
                    Expect.equal (direct stack) 1000L "through the direct path")
            }

            test
                "segments queued together fill a waiting read, which is woken once, at the burst's end (16 packets at most)" {
                withConnectionPackets (fun stack device connection packet ->
                    let buffer = Array.zeroCreate<byte> 65536
                    let read = waitingRead connection buffer CancellationToken.None
                    let data = pattern 10_000 9
                    // Ten segments the loop finds queued at once: one burst.
                    device.InjectAll [ for i in 0..9 -> packet (i * 1000) data.[i * 1000 .. i * 1000 + 999] ]
                    let n = read.WaitAsync(timeout).Result

                    Expect.equal
                        n
                        10_000
                        "all ten segments in the one read: it was woken after the burst, not after the first"

                    Expect.equal buffer.[.. n - 1] data "in order"

                    // Forty at once: the burst is cut after at most 16 packets, so the read is woken
                    // with part of them; the rest follows in order.
                    let read = waitingRead connection buffer CancellationToken.None
                    let more = pattern 40_000 10

                    device.InjectAll
                        [
                            for i in 0..39 -> packet (10_000 + i * 1000) more.[i * 1000 .. i * 1000 + 999]
                        ]

                    let n = read.WaitAsync(timeout).Result
                    Expect.isGreaterThan n 1000 "more than one segment"
                    Expect.isLessThanOrEqual n 16_000 "at most 16 packets' worth before the wake"
                    Expect.equal buffer.[.. n - 1] more.[.. n - 1] "in order"
                    Expect.equal (readExactly connection (40_000 - n)) more.[n..] "the rest"
                    Expect.equal (direct stack) (10_000L + int64 n) "the read's bytes went directly")
            }

            test "a segment longer than the waiting buffer fills it; the rest is buffered and read next, in order" {
                withConnection (fun stack _ connection inject ->
                    let buffer = Array.zeroCreate<byte> 100
                    let read = waitingRead connection buffer CancellationToken.None
                    let data = pattern 1300 4
                    inject 0 data
                    Expect.equal (read.WaitAsync(timeout).Result) 100 "the buffer full"
                    Expect.equal buffer data.[..99] "the first bytes"
                    Expect.equal (readExactly connection 1200) data.[100..] "the rest, from the receive buffer"
                    Expect.equal (direct stack) 100L "only the first 100 bytes went directly")
            }

            test "a segment above a hole waits in the buffer; the one filling the hole goes to the reader first" {
                withConnection (fun stack _ connection inject ->
                    let data = pattern 2000 5
                    let buffer = Array.zeroCreate<byte> 4096
                    let read = waitingRead connection buffer CancellationToken.None
                    inject 1000 data.[1000..]
                    waitUntil (fun () -> stack.Statistics.["tcp.received"] >= 3L)
                    Expect.isFalse read.IsCompleted "nothing readable yet"
                    inject 0 data.[..999]
                    let n = read.WaitAsync(timeout).Result
                    Expect.equal n 1000 "the segment that filled the hole"
                    Expect.equal buffer.[.. n - 1] data.[..999] "in order"
                    Expect.equal (readExactly connection 1000) data.[1000..] "then the one above it"
                    Expect.equal (direct stack) 1000L "the second segment went through the ring")
            }

            test "a canceled read takes nothing; what arrives afterwards is read by the next read" {
                withConnection (fun stack _ connection inject ->
                    use cancel = new CancellationTokenSource()
                    let read = waitingRead connection (Array.zeroCreate 4096) cancel.Token
                    cancel.Cancel()

                    Expect.throwsT<OperationCanceledException>
                        (fun () -> read.WaitAsync(timeout).GetAwaiter().GetResult() |> ignore)
                        "canceled"

                    let data = pattern 700 6
                    inject 0 data
                    waitUntil (fun () -> stack.Statistics.["tcp.received"] >= 3L)
                    Expect.equal (readExactly connection 700) data "every byte, once"
                    Expect.equal (direct stack) 0L "no reader waited")
            }

            test "bytes read directly count for the window: a peer filling it many times over is never stalled" {
                withConnection (fun stack device connection inject ->
                    // 64 segments of 1400 bytes, each injected only after the read for the previous
                    // one returned: 89,600 bytes, more than a window of 65,535 would take unread.
                    let data = pattern (64 * 1400) 7
                    let buffer = Array.zeroCreate<byte> 1400

                    for i in 0..63 do
                        let read = connection.ReadAsync(Memory buffer).AsTask()
                        inject (i * 1400) data.[i * 1400 .. i * 1400 + 1399]
                        let n = read.WaitAsync(timeout).Result
                        Expect.equal buffer.[.. n - 1] data.[i * 1400 .. i * 1400 + n - 1] $"segment {i}"

                        if n < 1400 then
                            Expect.equal
                                (readExactly connection (1400 - n))
                                data.[i * 1400 + n .. i * 1400 + 1399]
                                $"rest of {i}"

                    // The last ACK the stack sent leaves room: the window was given back as read.
                    let mutable last = None

                    let rec drain () =
                        match device.WaitWritten(TimeSpan.FromMilliseconds 300.0) with
                        | null -> ()
                        | packet ->
                            let peer = IpLayer.create (IpLayer.config (ValueSome peer4) ValueNone 65535) 0L

                            let struct (_, r) = IpLayer.receive 1L (ReadOnlySpan packet) peer

                            if r.Kind = ReceivedKind.TcpSegment then
                                last <- Some r

                            drain ()

                    drain ()

                    match last with
                    | Some r ->
                        Expect.equal r.Tcp.Ack.Value (1001u + uint32 data.Length) "everything acknowledged"
                        Expect.isGreaterThan (int r.Tcp.Window) 1400 "the window is open"
                    | None -> failtest "no ACK"

                    Expect.isGreaterThan (direct stack) 0L "the direct path was used")
            }

            test "disposing a connection with a read waiting ends the read; later data is thrown away" {
                withConnection (fun stack _ connection inject ->
                    let read = waitingRead connection (Array.zeroCreate 4096) CancellationToken.None
                    connection.Dispose()

                    // As a kernel socket's waiting read when it is closed (docs/conformance.md).
                    let error =
                        try
                            read.WaitAsync(timeout).GetAwaiter().GetResult() |> ignore
                            None
                        with :? IOException as e ->
                            Some (e.InnerException :?> SocketException).SocketErrorCode

                    Expect.equal error (Some SocketError.OperationAborted) "the waiting read is aborted"

                    inject 0 (pattern 500 8)
                    waitUntil (fun () -> stack.Statistics.["tcp.received"] >= 3L)
                    Expect.equal (direct stack) 0L "nothing written into the dead read's buffer")
            }
        ]

[<Tests>]
let tests = testList "Copies" [ gatherTests; directTests ]
