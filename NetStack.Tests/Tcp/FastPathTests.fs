/// The per-segment fast path (header prediction in `Connection.handleSegmentInto`): for random
/// established connections driven by random segments, user calls and time steps, the fast path
/// gives exactly the general path's result (the same next `Connection`, the same actions in the
/// same order); it is taken for the common segments and refused for the others.
module NetStack.Tests.FastPathTests

open Expecto
open FsCheck
open FsCheck.FSharp
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

/// How the connection under test and its peer are set up.
type private Setup =
    {
        Timestamps: bool
        Sack: bool
        WindowScale: int option
        Reno: bool
        DelayedAck: bool
        NoDelay: bool
        KeepAlive: bool
        ReceiveBuffer: int
        ReceiveBufferMax: int
        PeerMss: int
    }

/// One step of the peer or of the user, its numbers interpreted against the state at the time.
type private Step =
    {
        Kind: int
        Segment: int
        A: int
        B: int
        Window: int
        Ts: int
        Push: bool
        Dt: int
    }

/// The peer's initial sequence number.
let private peerIss = SeqNum 70_000u

/// Our connection under test, ESTABLISHED by an active open answered with a SYN,ACK carrying
/// the options of `setup`.
let private establish (setup: Setup) : Connection * int64 =
    let config =
        { TcpConfig.Default with
            Timestamps = setup.Timestamps
            SelectiveAck = setup.Sack
            WindowScaling = setup.WindowScale.IsSome
            CongestionControl =
                if setup.Reno then
                    CongestionControl.Reno
                else
                    CongestionControl.Cubic
            DelayedAckTimeout = (if setup.DelayedAck then 40_000L else 0L)
            NoDelay = setup.NoDelay
            KeepAliveIdle = (if setup.KeepAlive then ValueSome 5_000_000L else ValueNone)
            ReceiveBufferSize = setup.ReceiveBuffer
            ReceiveBufferMax = setup.ReceiveBufferMax
        }

    let now = 1_000_000L
    let c, _ = Connection.openActive config (SeqNum 4_000_000_000u) now

    let options =
        { TcpOptions.None with
            MaximumSegmentSize = ValueSome(uint16 setup.PeerMss)
            SackPermitted = setup.Sack
            WindowScale = setup.WindowScale |> Option.map byte |> Option.toValueOption
            Timestamps =
                if setup.Timestamps then
                    ValueSome { Value = 500u; EchoReply = 0u }
                else
                    ValueNone
        }

    let synAck =
        {
            Seq = peerIss
            Ack = c.Snd.Iss + 1
            Flags = TcpFlags.Syn ||| TcpFlags.Ack
            Window = 65535us
            Options = options
            PayloadLength = 0
        }

    let c, _ = Connection.handleSegment (now + 1000L) synAck c
    c, now + 1000L

/// The peer's side of the run: its next sequence number, its clock and its last window.
type private Peer =
    {
        mutable Seq: SeqNum
        mutable TsVal: uint32
        mutable Window: uint16
    }

/// The segment `step` stands for, from the peer to `c`.
let private segmentFor (now: int64) (peer: Peer) (step: Step) (c: Connection) : Segment =
    let flight = max 0 (c.Snd.Max - c.Snd.Una)
    let a = abs step.A
    let b = abs step.B
    let mss = max 1 c.Rcv.Mss
    // An ACK somewhere in [SND.UNA, SND.MAX]; `newAck` moves it at least one byte when it can.
    let someAck = c.Snd.Una + (if flight = 0 then 0 else a % (flight + 1))

    let newAck = c.Snd.Una + (if flight = 0 then 0 else 1 + a % flight)

    let window =
        match step.Window % 4 with
        | 0 -> uint16 (abs step.Window % 65536)
        | _ -> peer.Window

    peer.Window <- window

    // Timestamps: mostly fresh, sometimes equal, sometimes older (PAWS), rarely missing; the
    // echo is one of our recent TSvals (an RTT sample) or zero.
    let timestamps =
        if not c.Ts.Enabled && step.Ts % 7 <> 0 then
            ValueNone
        else
            match abs step.Ts % 20 with
            | 0 -> ValueNone
            | 1 ->
                ValueSome
                    {
                        Value = peer.TsVal - 5u
                        EchoReply = 0u
                    }
            | 2 -> ValueSome { Value = peer.TsVal; EchoReply = 0u }
            | _ ->
                peer.TsVal <- peer.TsVal + uint32 (abs step.Ts % 3)
                let ours = uint32 (now / 1000L) + c.Ts.Offset - uint32 (abs step.Ts % 50)

                ValueSome { Value = peer.TsVal; EchoReply = ours }

    let options =
        { TcpOptions.None with
            Timestamps = timestamps
        }

    let flags = TcpFlags.Ack ||| (if step.Push then TcpFlags.Psh else TcpFlags.None)

    let seg =
        {
            Seq = c.Rcv.Nxt
            Ack = someAck
            Flags = flags
            Window = window
            Options = options
            PayloadLength = 0
        }

    match step.Segment % 30 with
    | k when k < 8 ->
        // In-order data, acknowledging something (often new data).
        { seg with PayloadLength = 1 + b % mss }
    | k when k < 16 ->
        // A pure ACK of new data when there is any.
        { seg with Ack = newAck }
    | 16
    | 17 ->
        // A duplicate ACK, or a window update.
        { seg with Ack = c.Snd.Una }
    | 18
    | 19 ->
        // Data beyond a gap.
        { seg with
            Seq = c.Rcv.Nxt + (1 + b % (2 * mss))
            PayloadLength = 1 + a % mss
        }
    | 20 ->
        // Old data again (partly or wholly below RCV.NXT).
        { seg with
            Seq = c.Rcv.Nxt - (1 + b % (2 * mss))
            PayloadLength = 1 + a % (2 * mss)
        }
    | 21 when c.SackEnabled && flight > 1 ->
        // A SACK block above SND.UNA (a hole at SND.UNA).
        let left = c.Snd.Una + (1 + a % (flight - 1))
        let right = left + (1 + b % max 1 (c.Snd.Max - left))

        { seg with
            Ack = c.Snd.Una
            Options =
                { options.WithSackBlock(
                      0,
                      {
                          Left = left.Value
                          Right = right.Value
                      }
                  ) with
                    SackBlockCount = 1
                }
        }
    | 22 ->
        // More data than the window holds.
        { seg with
            PayloadLength = max 1 (c.Rcv.Right - c.Rcv.Nxt) + 1 + b % mss
        }
    | 23 ->
        // An ACK of something never sent, or one far too old.
        { seg with
            Ack =
                if a % 2 = 0 then
                    c.Snd.Max + (1 + b % 1000)
                else
                    c.Snd.Una - (c.Snd.MaxWnd + 1 + b % 1000)
        }
    | 24 ->
        // Unusual control bits: URG, a SYN, or (rarely: it ends ESTABLISHED) a FIN.
        match b % 21 with
        | 0 ->
            { seg with
                Flags = flags ||| TcpFlags.Fin
                PayloadLength = a % 3
            }
        | n when n % 2 = 1 ->
            { seg with
                Flags = flags ||| TcpFlags.Urg
                PayloadLength = 1 + a % mss
            }
        | _ ->
            { seg with
                Flags = flags ||| TcpFlags.Syn
            }
    | _ ->
        // In-order data that also acknowledges new data.
        { seg with
            Ack = newAck
            PayloadLength = 1 + b % mss
        }

/// The result of one arriving segment through each path, compared.
let private bothPaths (now: int64) (seg: Segment) (c: Connection) : Connection * bool =
    let fast = TcpActions()
    let general = TcpActions()
    let taken = Connection.takesFastPath seg c
    let a = Connection.handleSegmentInto fast now seg c
    let b = Connection.handleSegmentGeneralInto general now seg c

    if fast.ToList() <> general.ToList() then
        failtestf
            "actions differ (fast path taken: %b) for %A in %A:\nfast    %A\ngeneral %A"
            taken
            seg
            c.State
            (fast.ToList())
            (general.ToList())

    if a <> b then
        failtestf "connections differ (fast path taken: %b) for %A:\nfast    %A\ngeneral %A" taken seg a b

    a, taken

/// Runs `steps` from an established connection; returns how many segments took the fast path
/// and how many arrived in all. Fails when the two paths disagree.
let private run (setup: Setup) (steps: Step list) : int * int =
    let mutable c, now = establish setup

    let peer =
        {
            Seq = peerIss + 1
            TsVal = 600u
            Window = 65535us
        }

    let mutable fast = 0
    let mutable segments = 0

    for step in steps do
        match abs step.Kind % 24 with
        | k when k < 14 ->
            let seg = segmentFor now peer step c
            let next, taken = bothPaths now seg c
            c <- next
            segments <- segments + 1

            if taken then
                fast <- fast + 1
        | k when k < 18 ->
            // The user writes (when it still may).
            if Connection.canSend c then
                c <- fst (Connection.send now (int64 (1 + abs step.A % 5000)) c)
        | k when k < 21 ->
            // The user reads some or all of what was delivered.
            let unread = c.Delivered - c.Consumed

            if unread > 0L then
                let bytes =
                    if step.Push then
                        unread
                    else
                        1L + int64 (abs step.A) % unread

                c <- fst (Connection.receiveWindowUpdate now bytes c)
        | _ ->
            // Time passes and due timers run.
            now <- now + int64 (abs step.Dt % 300_000)

            match Connection.nextDeadline c with
            | ValueSome t when t <= now -> c <- fst (Connection.handleTimer now c)
            | _ -> ()

        match Connection.audit c with
        | Some broken -> failtestf "invariant broken: %s" broken
        | None -> ()

    fast, segments

let private setupGen =
    gen {
        let! ts = Gen.elements [ true; true; false ]
        let! sack = Gen.elements [ true; true; false ]
        let! ws = Gen.elements [ Some 7; Some 0; Some 2; None ]
        let! reno = Gen.elements [ false; true ]
        let! delayed = Gen.elements [ true; false ]
        let! noDelay = Gen.elements [ false; true ]
        let! keepAlive = Gen.elements [ false; false; true ]
        let! buffer = Gen.elements [ 4096; 20_000; 65535; 262_144 ]
        let! growTo = Gen.elements [ 0; 0; 1_048_576 ]
        let! mss = Gen.elements [ 536; 1000; 1460 ]

        return
            {
                Timestamps = ts
                Sack = sack
                WindowScale = ws
                Reno = reno
                DelayedAck = delayed
                NoDelay = noDelay
                KeepAlive = keepAlive
                ReceiveBuffer = buffer
                ReceiveBufferMax = growTo
                PeerMss = mss
            }
    }

let private stepGen =
    gen {
        let! kind = Gen.choose (0, 239)
        let! segment = Gen.choose (0, 299)
        let! a = Gen.choose (0, 1_000_000)
        let! b = Gen.choose (0, 1_000_000)
        let! window = Gen.choose (0, 1_000_000)
        let! ts = Gen.choose (0, 1_000_000)
        let! push = Gen.elements [ true; false ]
        let! dt = Gen.choose (0, 1_000_000)

        return
            {
                Kind = kind
                Segment = segment
                A = a
                B = b
                Window = window
                Ts = ts
                Push = push
                Dt = dt
            }
    }

let private scenarioGen =
    gen {
        let! setup = setupGen
        let! steps = Gen.listOfLength 200 stepGen
        return setup, steps
    }

let private arbScenario = Arb.fromGen scenarioGen

/// A lossless pair driven the way the API's loop drives it: the client writes `writes` chunks
/// of `chunk` bytes, the server reads everything; returns (fast-path segments, all segments)
/// that arrived at each side.
let private bulk (config: TcpConfig) (writes: int) (chunk: int) =
    let clientOut = TcpActions()
    let serverOut = TcpActions()
    let toServer = System.Collections.Generic.Queue<Segment>()
    let toClient = System.Collections.Generic.Queue<Segment>()
    let now = ref 0L
    let delivered = ref 0L
    let server = ref Unchecked.defaultof<Connection>
    let started = ref false
    let counts = Array.zeroCreate 4

    let collect (out: TcpActions) (link: System.Collections.Generic.Queue<Segment>) =
        for i in 0 .. out.Count - 1 do
            match out[i] with
            | TcpAction.Transmit s -> link.Enqueue(arriving s)
            | TcpAction.Deliver upTo when obj.ReferenceEquals(out, serverOut) -> delivered.Value <- upTo
            | _ -> ()

        out.Clear()

    let client =
        ref (Connection.openActiveInto clientOut config (SeqNum 1000u) now.Value)

    collect clientOut toServer

    let pump () =
        while toServer.Count > 0 || toClient.Count > 0 do
            while toServer.Count > 0 do
                let seg = toServer.Dequeue()

                if started.Value then
                    if Connection.takesFastPath seg server.Value then
                        counts[0] <- counts[0] + 1

                    counts[1] <- counts[1] + 1
                    server.Value <- Connection.handleSegmentInto serverOut now.Value seg server.Value
                else
                    server.Value <- Connection.acceptInto serverOut config (SeqNum 9000u) now.Value seg
                    started.Value <- true

                collect serverOut toClient
                let unread = delivered.Value - server.Value.Consumed

                if unread > 0L then
                    server.Value <- Connection.receiveWindowUpdateInto serverOut now.Value unread server.Value
                    collect serverOut toClient

            while toClient.Count > 0 do
                let seg = toClient.Dequeue()

                if Connection.takesFastPath seg client.Value then
                    counts[2] <- counts[2] + 1

                counts[3] <- counts[3] + 1
                client.Value <- Connection.handleSegmentInto clientOut now.Value seg client.Value
                collect clientOut toServer

    pump ()

    for _ in 1..writes do
        now.Value <- now.Value + 1000L

        match Connection.nextDeadline client.Value with
        | ValueSome t when t <= now.Value ->
            client.Value <- Connection.handleTimerInto clientOut now.Value client.Value
            collect clientOut toServer
        | _ -> ()

        match Connection.nextDeadline server.Value with
        | ValueSome t when t <= now.Value ->
            server.Value <- Connection.handleTimerInto serverOut now.Value server.Value
            collect serverOut toClient
        | _ -> ()

        client.Value <- Connection.sendInto clientOut now.Value (int64 chunk) client.Value
        collect clientOut toServer
        pump ()

    Expect.equal delivered.Value (int64 writes * int64 chunk) "every byte delivered"
    counts

/// Feeds `seg` to `c` through the list entry point.
let private feed (now: int64) (seg: Segment) (c: Connection) =
    fst (Connection.handleSegment now seg c)

[<Tests>]
let tests =
    testList
        "FastPath"
        [
            testPropertyWithConfig
                { TestUtil.heavyConfig with
                    maxTest = 200
                }
                "for random connections, segments, reads, writes and timers the fast path's result equals the general path's"
            <| Prop.forAll arbScenario (fun (setup, steps) -> run setup steps |> ignore)

            test "the random scenarios exercise both paths" {
                let mutable fast = 0
                let mutable all = 0

                for setup, steps in Gen.sampleWithSeed (Rnd 12345UL) 1 40 scenarioGen do
                    let f, n = run setup steps
                    fast <- fast + f
                    all <- all + n

                printfn "FastPath: %d of %d random segments took the fast path" fast all
                Expect.isGreaterThan fast (all / 5) "a good share of the segments take the fast path"
                Expect.isGreaterThan (all - fast) (all / 5) "a good share take the general path"
            }

            test "bulk data one way: nearly every segment at both ends takes the fast path" {
                let counts = bulk TcpConfig.Default 2000 1448
                // The handshake's last ACK and the window's first updates may go the general way.
                Expect.isGreaterThanOrEqual counts[0] (counts[1] - 3) "data segments at the receiver"
                Expect.isGreaterThanOrEqual counts[2] (counts[3] - 3) "ACKs at the sender"
                Expect.isGreaterThan counts[1] 1000 "data segments arrived"
            }

            test "bulk data without timestamps, SACK or window scaling, ACK per segment, Reno" {
                let config =
                    { TcpConfig.Default with
                        Timestamps = false
                        SelectiveAck = false
                        WindowScaling = false
                        DelayedAckTimeout = 0L
                        CongestionControl = CongestionControl.Reno
                    }

                let counts = bulk config 500 1460
                Expect.isGreaterThanOrEqual counts[0] (counts[1] - 3) "data segments at the receiver"
                Expect.isGreaterThanOrEqual counts[2] (counts[3] - 3) "ACKs at the sender"
            }

            test "which segments are predicted and which are not" {
                let setup =
                    {
                        Timestamps = true
                        Sack = true
                        WindowScale = Some 7
                        Reno = false
                        DelayedAck = true
                        NoDelay = false
                        KeepAlive = false
                        ReceiveBuffer = 65535
                        ReceiveBufferMax = 0
                        PeerMss = 1460
                    }

                let c, now = establish setup
                Expect.equal c.State TcpState.Established "established"
                // Three segments of ours in flight.
                let c, _ = Connection.send now 3000L c
                let ts = ValueSome { Value = 700u; EchoReply = 0u }

                let ack =
                    {
                        Seq = c.Rcv.Nxt
                        Ack = c.Snd.Una + 1000
                        Flags = TcpFlags.Ack
                        Window = 1000us
                        Options = { TcpOptions.None with Timestamps = ts }
                        PayloadLength = 0
                    }

                let data =
                    { ack with
                        Ack = c.Snd.Una
                        Flags = TcpFlags.Ack ||| TcpFlags.Psh
                        PayloadLength = 1000
                    }

                let fast seg = Connection.takesFastPath seg c
                Expect.isTrue (fast ack) "a pure ACK of new data"
                Expect.isTrue (fast data) "in-order data acknowledging nothing new"
                Expect.isTrue (fast { data with Ack = ack.Ack }) "in-order data acknowledging new data"
                Expect.isTrue (fast { ack with Ack = c.Snd.Max }) "an ACK of everything"
                Expect.isFalse (fast { ack with Ack = c.Snd.Una }) "a duplicate ACK"
                Expect.isFalse (fast { ack with Ack = c.Snd.Max + 1 }) "an ACK of unsent data"
                Expect.isFalse (fast { data with Seq = c.Rcv.Nxt + 1 }) "data beyond a gap"
                Expect.isFalse (fast { data with Seq = c.Rcv.Nxt - 1 }) "data partly old"
                Expect.isFalse (fast { data with PayloadLength = 70_000 }) "data beyond the window"

                Expect.isFalse
                    (fast
                        { data with
                            Flags = TcpFlags.Ack ||| TcpFlags.Fin
                        })
                    "data with FIN"

                Expect.isFalse
                    (fast
                        { ack with
                            Flags = TcpFlags.Ack ||| TcpFlags.Rst
                        })
                    "a RST"

                Expect.isFalse
                    (fast
                        { ack with
                            Flags = TcpFlags.Ack ||| TcpFlags.Urg
                        })
                    "URG"

                Expect.isFalse (fast { ack with Options = TcpOptions.None }) "timestamps missing"

                Expect.isFalse
                    (fast
                        { ack with
                            Options =
                                { TcpOptions.None with
                                    Timestamps = ValueSome { Value = 400u; EchoReply = 0u }
                                }
                        })
                    "a TSval older than TS.Recent (PAWS)"

                let sacked =
                    { ack with
                        Ack = c.Snd.Una
                        Options =
                            { ack.Options.WithSackBlock(
                                  0,
                                  {
                                      Left = (c.Snd.Una + 1000).Value
                                      Right = (c.Snd.Una + 2000).Value
                                  }
                              ) with
                                SackBlockCount = 1
                            }
                    }

                Expect.isFalse (fast sacked) "an ACK with a SACK block"

                // After a duplicate ACK the connection counts it: the next segments go the general
                // way until SND.UNA moves.
                let acked = feed now ack c
                Expect.isTrue (Connection.takesFastPath { ack with Ack = acked.Snd.Max } acked) "the next ACK"
                let afterDup = feed now { ack with Ack = acked.Snd.Una } acked
                Expect.equal afterDup.Recovery.DupAcks 1 "one duplicate ACK counted"

                Expect.isFalse
                    (Connection.takesFastPath { data with Ack = acked.Snd.Una } afterDup)
                    "data while duplicate ACKs are counted"

                // Data held out of order turns prediction off until the gap fills.
                let gap = feed now { data with Seq = c.Rcv.Nxt + 500 } c
                Expect.isFalse gap.Rcv.OutOfOrder.IsEmpty "held out of order"

                Expect.isFalse
                    (Connection.takesFastPath { data with PayloadLength = 500 } gap)
                    "in-order data while a range is held out of order"

                // The peer's FIN moves the connection to CLOSE-WAIT: no more prediction there.
                let closing =
                    feed
                        now
                        { data with
                            Flags = TcpFlags.Ack ||| TcpFlags.Fin
                            PayloadLength = 0
                        }
                        c

                Expect.equal closing.State TcpState.CloseWait "CLOSE-WAIT"

                Expect.isFalse
                    (Connection.takesFastPath { ack with Seq = closing.Rcv.Nxt } closing)
                    "an ACK in CLOSE-WAIT"
            }
        ]
