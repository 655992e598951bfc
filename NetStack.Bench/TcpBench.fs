module NetStack.Bench.TcpBench

open BenchmarkDotNet.Attributes
open NetStack.Core.Wire
open NetStack.Core.Tcp

/// What the receiver sees of a segment the sender emitted.
let private arriving (s: OutgoingSegment) : Segment =
    {
        Seq = s.Seq
        Ack = s.Ack
        Flags = s.Flags
        Window = s.Window
        Options = s.Options
        PayloadLength = s.DataLength
    }

/// The first segment in a sink.
let private firstInSink (sink: TcpActions) =
    let mutable found = ValueNone
    let mutable i = 0

    while found.IsNone && i < sink.Count do
        match sink[i] with
        | TcpAction.Transmit s -> found <- ValueSome s
        | _ -> ()

        i <- i + 1

    found.Value

/// The pure engine's data path: one in-order full-sized data segment from an established
/// sender, the receiver taking it (and the application reading it), and the ACK that answers it
/// taken by the sender. The receiver ACKs every segment (DelayedAckTimeout 0), so each operation
/// is exactly one data segment and one ACK, through the allocation-free entry points the API's
/// loop uses (`...Into` with reused `TcpActions`).
[<MemoryDiagnoser>]
type TcpBench() =
    let config =
        { TcpConfig.Default with
            DelayedAckTimeout = 0L
        }

    let sinkA = TcpActions()
    let sinkB = TcpActions()
    let mutable sender = Unchecked.defaultof<Connection>
    let mutable receiver = Unchecked.defaultof<Connection>
    let mutable now = 0L
    let payload = config.Mss - 12

    /// A connection pair after the handshake.
    [<GlobalSetup>]
    member _.Setup() =
        sinkA.Clear()
        sinkB.Clear()
        now <- 1000L
        let a = Connection.openActiveInto sinkA config (SeqNum 1000u) now

        let b =
            Connection.acceptInto sinkB config (SeqNum 9000u) now (arriving (firstInSink sinkA))

        sinkA.Clear()
        let a = Connection.handleSegmentInto sinkA now (arriving (firstInSink sinkB)) a
        sinkB.Clear()
        let b = Connection.handleSegmentInto sinkB now (arriving (firstInSink sinkA)) b
        sender <- a
        receiver <- b

    /// One data segment and its ACK through the sink entry points.
    [<Benchmark>]
    member _.SegmentAndAckSink() =
        now <- now + 10L
        sinkA.Clear()
        sender <- Connection.sendInto sinkA now (int64 payload) sender
        let data = firstInSink sinkA
        sinkB.Clear()
        receiver <- Connection.handleSegmentInto sinkB now (arriving data) receiver
        let ack = firstInSink sinkB
        sinkB.Clear()

        receiver <-
            Connection.receiveWindowUpdateInto sinkB now (receiver.Rcv.Delivered - receiver.Rcv.Consumed) receiver

        sinkA.Clear()
        sender <- Connection.handleSegmentInto sinkA now (arriving ack) sender
        sender.Snd.Una
