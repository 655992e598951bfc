/// The engine's demultiplexer and a connection in TIME-WAIT, on an in-memory device: a SYN that
/// reopens the 4-tuple (RFC 6191) releases the old connection and becomes a new one from the
/// listener with an ISS beyond the old sequence space (RFC 1122 §4.2.2.13), never a SYN cookie;
/// without a listener it is refused with a RST; a refused SYN gets a challenge ACK whose RST
/// answer ends TIME-WAIT. The peer's side is scripted here, segment by segment.
module NetStack.Tests.Stack.TimeWaitDemuxTests

open System
open System.Net
open System.Threading
open System.Threading.Tasks
open Expecto
open NetStack
open NetStack.Engine
open NetStack.Core.Wire
open NetStack.Core.Tcp
open NetStack.Core.Stack

let private ours = Ipv4Address.Parse "10.0.0.2"
let private peer = Ipv4Address.Parse "10.0.0.1"

let private optionsWith (maxHalfOpen: int) =
    NetStackOptions(
        Address = ours.ToIPAddress(),
        HostAddress = peer.ToIPAddress(),
        Address6 = null,
        HostAddress6 = null,
        TcpMaxHalfOpen = maxHalfOpen
    )

let private timeout = TimeSpan.FromSeconds 5.0

let private ServerPort = 80us
let private ClientPort = 40000us

/// The peer's ISN for the old incarnation; its SYN, no data, and its FIN leave the stack's
/// RCV.NXT at peerIss + 2.
let private peerIss = 5_000_000u
let private oldRcvNxt = peerIss + 2u

/// Our reply in the old incarnation: short, or more bytes than RFC 6528's 4 µs clock advances
/// while the test runs (so the generator alone would give the new connection an ISS inside the
/// old sequence space, and only the bump of `Connection.reopenIss` is beyond it).
let private shortReply = 5
let private longReply = 4_000_000

/// A TCP packet from the peer (no options but those given).
let private inject (device: MemoryPacketDevice) (sourcePort: uint16) seq ack flags (options: TcpOptions) =
    let segment: OutgoingSegment =
        {
            Seq = SeqNum seq
            Ack = SeqNum ack
            Flags = flags
            Window = 65535us
            Options = options
            DataPosition = 0L
            DataLength = 0
        }

    let buffer = Array.zeroCreate<byte> 200

    let n =
        IpLayer.writeTcp (V4 peer) (V4 ours) sourcePort ServerPort 1us segment ReadOnlySpan.Empty (Span buffer)

    device.Inject(ReadOnlySpan(buffer, 0, n))

let private mss =
    { TcpOptions.None with
        MaximumSegmentSize = ValueSome 1400us
    }

/// The next TCP segment the stack wrote to `port` (others, such as a retransmitted SYN,ACK of
/// another connection, are skipped).
let private nextTo (port: uint16) (device: MemoryPacketDevice) =
    let state = IpLayer.create (IpLayer.config (ValueSome peer) ValueNone 65535) 0L
    let deadline = DateTime.UtcNow + timeout
    let mutable result = None

    while result.IsNone && DateTime.UtcNow < deadline do
        match device.WaitWritten timeout with
        | null -> ()
        | packet ->
            let struct (_, r) = IpLayer.receive 1L (ReadOnlySpan packet) state

            if r.Kind = ReceivedKind.TcpSegment && r.Ports.Destination = port then
                result <- Some r

    match result with
    | Some r -> r
    | None -> failtest "the stack wrote no TCP segment"

let private waitUntil (what: string) (condition: unit -> bool) =
    let deadline = DateTime.UtcNow + timeout

    while not (condition ()) && DateTime.UtcNow < deadline do
        Thread.Sleep 5

    Expect.isTrue (condition ()) $"{what} in time"

let private wait (task: Task<'T>) =
    if not (task.Wait timeout) then
        failtest "timed out"

    task.Result

let private waitDone (task: Task) =
    if not (task.Wait timeout) then
        failtest "timed out"

/// Drives one connection from ClientPort through the handshake, our reply of `replyBytes`
/// (the peer acknowledging each segment as it arrives) and our close, the peer's ACK and FIN,
/// into TIME-WAIT; returns our ISS. Our SND.NXT ends at ISS + 1 + replyBytes + 1.
let private toTimeWait
    (stack: NetworkStack)
    (device: MemoryPacketDevice)
    (listener: TcpConnectionListener)
    (replyBytes: int)
    =
    let accepted = listener.AcceptAsync().AsTask()
    inject device ClientPort peerIss 0u TcpFlags.Syn mss
    let synAck = nextTo ClientPort device
    Expect.equal synAck.Tcp.Flags (TcpFlags.Syn ||| TcpFlags.Ack) "SYN,ACK"
    let iss = synAck.Tcp.Seq.Value
    inject device ClientPort (peerIss + 1u) (iss + 1u) TcpFlags.Ack TcpOptions.None
    let connection = wait accepted

    let writing =
        connection.WriteAsync(ReadOnlyMemory(Array.create replyBytes 7uy)).AsTask()

    let dataEnd = iss + 1u + uint32 replyBytes
    let oldSndNxt = dataEnd + 1u
    let mutable closing = None
    // The next sequence number the peer expects; it acknowledges every segment that arrives.
    let mutable received = iss + 1u

    while received <> oldSndNxt do
        // The whole reply is in: the write is done, and the server closes.
        if received = dataEnd && closing.IsNone then
            waitDone writing
            closing <- Some(connection.DisposeAsync().AsTask())

        let s = nextTo ClientPort device

        if s.Tcp.Seq.Value = received then
            received <-
                received
                + uint32 s.Tcp.PayloadLength
                + (if s.Tcp.Has TcpFlags.Fin then 1u else 0u)

        inject device ClientPort (peerIss + 1u) received TcpFlags.Ack TcpOptions.None

    Expect.isTrue (closing.Value.Wait timeout) "our FIN was acknowledged"
    inject device ClientPort (peerIss + 1u) oldSndNxt (TcpFlags.Fin ||| TcpFlags.Ack) TcpOptions.None
    let mutable ack = nextTo ClientPort device

    // Window updates may come before it.
    while ack.Tcp.Ack.Value <> oldRcvNxt do
        ack <- nextTo ClientPort device

    Expect.equal (ack.Tcp.Flags, ack.Tcp.Seq.Value) (TcpFlags.Ack, oldSndNxt) "the ACK of the peer's FIN"
    Expect.equal stack.Statistics.["tcp.closed"] 0L "the connection is held (TIME-WAIT)"
    iss

/// The stack on a memory device, checked at the end for exceptions the engine turned into counters.
let private withStack (maxHalfOpen: int) (f: NetworkStack -> MemoryPacketDevice -> unit) =
    let device = new MemoryPacketDevice(1500)
    let stack = NetworkStack.Start(optionsWith maxHalfOpen, device)

    try
        try
            f stack device
        with e ->
            failtestf "%s\nstatistics:\n%O" (e.ToString()) stack.Statistics
    finally
        stack.Dispose()

    // After Dispose: the loop has stopped, so the counters are final.
    NetStack.Tests.TestUtil.assertNoExceptions stack

/// "After" in sequence space: ahead by 1 .. 2^31 - 1.
let private after (a: uint32) (b: uint32) = int (a - b) > 0

[<Tests>]
let tests =
    testList
        "TIME-WAIT in the engine"
        [
            test
                "a SYN beyond RCV.NXT reopens TIME-WAIT: the old connection is released and the listener's new one starts beyond the old sequence space" {
                withStack 16 (fun stack device ->
                    use listener = stack.ListenTcp(int ServerPort)
                    let clock = Diagnostics.Stopwatch.StartNew()
                    let oldIss = toTimeWait stack device listener longReply
                    let largestUsed = oldIss + 1u + uint32 longReply
                    let accepted = listener.AcceptAsync().AsTask()
                    let newIsn = peerIss + 100_000u
                    inject device ClientPort newIsn 0u TcpFlags.Syn mss
                    let synAck = nextTo ClientPort device
                    Expect.equal synAck.Tcp.Flags (TcpFlags.Syn ||| TcpFlags.Ack) "a SYN,ACK"
                    Expect.equal synAck.Tcp.Ack.Value (newIsn + 1u) "for the new SYN"

                    Expect.isTrue
                        (after synAck.Tcp.Seq.Value largestUsed)
                        $"ISS {synAck.Tcp.Seq.Value} beyond the old incarnation's last sequence number {largestUsed}"

                    Expect.equal stack.Statistics.["tcp.time-wait.reopened"] 1L "counted as reopened"
                    Expect.equal stack.Statistics.["tcp.closed"] 1L "the old connection was released"
                    Expect.equal stack.Statistics.["tcp.passive-open"] 2L "a second passive open"
                    // The premise: the 4 µs clock moved less than the old incarnation's sequence space.
                    Expect.isLessThan (clock.Elapsed.TotalMicroseconds / 4.0) (float longReply) "a long reply"
                    let newIss = synAck.Tcp.Seq.Value
                    inject device ClientPort (newIsn + 1u) (newIss + 1u) TcpFlags.Ack TcpOptions.None
                    let connection = wait accepted
                    Expect.equal connection.RemoteEndPoint.Port (int ClientPort) "the same 4-tuple"
                    connection.Abort()
                    let rst = nextTo ClientPort device

                    Expect.equal
                        (rst.Tcp.Flags, rst.Tcp.Seq.Value)
                        (TcpFlags.Rst, newIss + 1u)
                        "the new connection is live"

                    waitUntil "both connections closed" (fun () -> stack.Statistics.["tcp.closed"] = 2L))
            }

            test "with the half-open queue full, a reopening SYN still gets a connection of its own, not a SYN cookie" {
                withStack 1 (fun stack device ->
                    use listener = stack.ListenTcp(int ServerPort)
                    let oldIss = toTimeWait stack device listener shortReply
                    // Another client's SYN fills the one half-open slot...
                    inject device (ClientPort + 1us) 777u 0u TcpFlags.Syn mss
                    Expect.equal (nextTo (ClientPort + 1us) device).Tcp.Ack.Value 778u "its SYN,ACK"
                    // ...so that a third's gets a cookie.
                    inject device (ClientPort + 2us) 888u 0u TcpFlags.Syn mss
                    Expect.equal (nextTo (ClientPort + 2us) device).Tcp.Ack.Value 889u "a SYN,ACK"
                    waitUntil "a cookie counted" (fun () -> stack.Statistics.["tcp.syncookie.sent"] = 1L)
                    let newIsn = peerIss + 100_000u
                    inject device ClientPort newIsn 0u TcpFlags.Syn mss
                    let synAck = nextTo ClientPort device
                    Expect.equal synAck.Tcp.Ack.Value (newIsn + 1u) "a SYN,ACK for the reopening SYN"
                    Expect.equal stack.Statistics.["tcp.time-wait.reopened"] 1L "reopened"
                    // Counted before its SYN,ACK is sent; a cookie makes no connection.
                    Expect.equal stack.Statistics.["tcp.passive-open"] 3L "a connection was made for it"

                    Expect.isTrue
                        (after synAck.Tcp.Seq.Value (oldIss + 1u + uint32 shortReply))
                        "its ISS is beyond the old sequence space")
            }

            test "without a listener, a reopening SYN ends TIME-WAIT and is refused with a RST" {
                withStack 16 (fun stack device ->
                    let listener = stack.ListenTcp(int ServerPort)
                    toTimeWait stack device listener shortReply |> ignore
                    listener.Dispose()
                    let newIsn = peerIss + 100_000u
                    inject device ClientPort newIsn 0u TcpFlags.Syn mss
                    let rst = nextTo ClientPort device

                    Expect.equal
                        (rst.Tcp.Flags, rst.Tcp.Ack.Value)
                        (TcpFlags.Rst ||| TcpFlags.Ack, newIsn + 1u)
                        "<SEQ=0><ACK=SEG.SEQ+1><CTL=RST,ACK> (RFC 9293 §3.10.7.1)"

                    Expect.equal stack.Statistics.["tcp.time-wait.reopened"] 1L "TIME-WAIT ended"
                    Expect.equal stack.Statistics.["tcp.closed"] 1L "the old connection was released"
                    Expect.equal stack.Statistics.["tcp.passive-open"] 1L "no new connection")
            }

            test
                "a SYN at or before RCV.NXT gets a challenge ACK; the client's RST at its ACK number ends TIME-WAIT; its SYN again connects" {
                withStack 16 (fun stack device ->
                    use listener = stack.ListenTcp(int ServerPort)
                    let oldIss = toTimeWait stack device listener shortReply
                    let oldSndNxt = oldIss + 1u + uint32 shortReply + 1u
                    // The old incarnation's own SYN, as a late duplicate would bring it.
                    inject device ClientPort peerIss 0u TcpFlags.Syn mss
                    let challenge = nextTo ClientPort device

                    Expect.equal
                        (challenge.Tcp.Flags, challenge.Tcp.Seq.Value, challenge.Tcp.Ack.Value)
                        (TcpFlags.Ack, oldSndNxt, oldRcvNxt)
                        "<SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>"

                    Expect.equal stack.Statistics.["tcp.time-wait.reopened"] 0L "not reopened"
                    // RFC 9293 §3.10.7.3: a client in SYN-SENT answers it with <SEQ=SEG.ACK><CTL=RST>.
                    inject device ClientPort oldRcvNxt 0u TcpFlags.Rst TcpOptions.None
                    waitUntil "TIME-WAIT ended" (fun () -> stack.Statistics.["tcp.closed"] = 1L)
                    Expect.equal stack.Statistics.["tcp.time-wait.reset"] 1L "by the RST"
                    inject device ClientPort peerIss 0u TcpFlags.Syn mss
                    let synAck = nextTo ClientPort device
                    Expect.equal synAck.Tcp.Flags (TcpFlags.Syn ||| TcpFlags.Ack) "now a SYN,ACK"
                    Expect.equal synAck.Tcp.Ack.Value (peerIss + 1u) "for that SYN"
                    Expect.equal stack.Statistics.["tcp.passive-open"] 2L "a new connection")
            }
        ]
