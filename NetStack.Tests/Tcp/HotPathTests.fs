/// The engine's data path allocates nothing: two connections joined by a lossless in-memory
/// link, driven through the sink entry points (`Connection.sendInto`, `handleSegmentInto`, ...)
/// the way the API's loop drives them, move bulk data without a single managed allocation once
/// warmed up. Allocation is a count of bytes on this thread, not a timing.
module NetStack.Tests.HotPathTests

open System
open Expecto
open NetStack.Core.Wire
open NetStack.Core.Tcp

/// What the receiver sees of a segment the sender emitted (the payload bytes stay out of it).
let private arriving (s: OutgoingSegment) : Segment =
    {
        Seq = s.Seq
        Ack = s.Ack
        Flags = s.Flags
        Window = s.Window
        Options = s.Options
        PayloadLength = s.DataLength
    }

/// One direction of the link: a preallocated FIFO of segments in flight.
[<Sealed>]
type private Link() =
    let queue: Segment array = Array.zeroCreate 4096
    let mutable head = 0
    let mutable tail = 0

    member _.Push(s: Segment) =
        if tail - head = queue.Length then
            failwith "link queue overflow"

        queue[tail % queue.Length] <- s
        tail <- tail + 1

    member _.IsEmpty = head = tail

    member _.Pop() =
        let s = queue[head % queue.Length]
        head <- head + 1
        s

/// A client (active open) and a server (accepted from the client's SYN) with their sinks, the
/// application's reads on the server, and counters of what crossed the link. Every method runs
/// without closures or lists so the measured loop allocates only if the engine does.
[<Sealed>]
type private Pair(config: TcpConfig) =
    let toServer = Link()
    let toClient = Link()
    let clientOut = TcpActions()
    let serverOut = TcpActions()
    let mutable client = Unchecked.defaultof<Connection>
    let mutable server = Unchecked.defaultof<Connection>
    let mutable serverStarted = false
    let mutable now = 0L
    let mutable written = 0L
    let mutable delivered = 0L
    let mutable freed = 0L
    let mutable dataSegments = 0
    let mutable acks = 0

    /// Carries out one side's actions: segments onto the link, the server's deliveries and the
    /// client's freed send buffer into the counters.
    member private _.Collect(out: TcpActions, link: Link, fromServer: bool) =
        for i in 0 .. out.Count - 1 do
            match out[i] with
            | TcpAction.Transmit s ->
                if s.DataLength > 0 then
                    dataSegments <- dataSegments + 1
                elif fromServer then
                    acks <- acks + 1

                link.Push(arriving s)
            | TcpAction.Deliver upTo when fromServer -> delivered <- upTo
            | TcpAction.Event(TcpEvent.SendBufferFreed bytes) -> freed <- freed + bytes
            | _ -> ()

        out.Clear()

    /// The server's application reads everything delivered (the API's read → window update).
    member private this.ServerReads() =
        let unread = delivered - server.Consumed

        if unread > 0L then
            server <- Connection.receiveWindowUpdateInto serverOut now unread server
            this.Collect(serverOut, toClient, true)

    /// Delivers every segment in flight, both ways, until the link is quiet.
    member this.Pump() =
        while not (toServer.IsEmpty && toClient.IsEmpty) do
            while not toServer.IsEmpty do
                let seg = toServer.Pop()

                if serverStarted then
                    server <- Connection.handleSegmentInto serverOut now seg server
                else
                    server <- Connection.acceptInto serverOut config (SeqNum 7000u) now seg
                    serverStarted <- true

                this.Collect(serverOut, toClient, true)
                this.ServerReads()

            while not toClient.IsEmpty do
                client <- Connection.handleSegmentInto clientOut now (toClient.Pop()) client
                this.Collect(clientOut, toServer, false)

    /// Runs both sides' timers that are due.
    member this.Timers() =
        match Connection.nextDeadline client with
        | ValueSome t when t <= now ->
            client <- Connection.handleTimerInto clientOut now client
            this.Collect(clientOut, toServer, false)
        | _ -> ()

        match Connection.nextDeadline server with
        | ValueSome t when t <= now ->
            server <- Connection.handleTimerInto serverOut now server
            this.Collect(serverOut, toClient, true)
        | _ -> ()

        this.Pump()

    /// Opens the connection (SYN, SYN-ACK, ACK).
    member this.Open() =
        client <- Connection.openActiveInto clientOut config (SeqNum 1000u) now
        this.Collect(clientOut, toServer, false)
        this.Pump()

    /// One millisecond passes and the client's application writes `bytes`.
    member this.Step(bytes: int) =
        now <- now + 1000L
        this.Timers()
        client <- Connection.sendInto clientOut now (int64 bytes) client
        written <- written + int64 bytes
        this.Collect(clientOut, toServer, false)
        this.Pump()

    /// Bytes allocated on this thread by `steps` steps of `bytes` each. A plain loop here: a
    /// `for` inside Expecto's `test { }` builder allocates its own enumerator and closures.
    member this.Allocated(steps: int, bytes: int) =
        let before = GC.GetAllocatedBytesForCurrentThread()

        for _ in 1..steps do
            this.Step bytes

        GC.GetAllocatedBytesForCurrentThread() - before

    member _.Client = client
    member _.Server = server
    member _.Written = written
    member _.Delivered = delivered
    member _.Freed = freed
    member _.DataSegments = dataSegments
    member _.Acks = acks

[<Tests>]
let tests =
    testList
        "HotPath"
        [
            test "1000 in-order data segments and their ACKs through the sink entry points allocate 0 bytes" {
                let pair = Pair TcpConfig.Default
                pair.Open()
                Expect.equal pair.Client.State TcpState.Established "client established"
                Expect.equal pair.Server.State TcpState.Established "server established"
                // One full segment per write: the MSS less the timestamps option (RFC 7323).
                let segment = TcpConfig.Default.Mss - 12

                // Warm-up: JIT, static initialisation, the sinks' arrays at their working size.
                for _ in 1..3000 do
                    pair.Step segment

                let segments0 = pair.DataSegments
                let acks0 = pair.Acks
                let allocated = pair.Allocated(1000, segment)
                Expect.equal (pair.DataSegments - segments0) 1000 "one data segment per write"
                Expect.isGreaterThan (pair.Acks - acks0) 400 "the server ACKs at least every second segment"
                Expect.equal pair.Delivered pair.Written "every byte written was delivered in order"

                Expect.isGreaterThanOrEqual
                    pair.Freed
                    (pair.Written - int64 segment)
                    "all but the last segment acknowledged"

                Expect.equal allocated 0L "bytes allocated on this thread by 1000 segments and their ACKs"
            }
        ]
