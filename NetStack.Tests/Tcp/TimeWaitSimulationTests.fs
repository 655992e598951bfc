/// A client that reopens one 4-tuple again and again while the server, which closes first,
/// holds it in TIME-WAIT: two engines over a link that duplicates, reorders, delays and (in half
/// the runs) drops segments, under a virtual clock. Every connection must complete with its bytes
/// intact, every SYN that meets TIME-WAIT must be taken or refused exactly as RFC 6191 §2 says
/// (as the TCP oracle states the rule, `TcpOracle.reopensTimeWait`), a reopened connection's ISS
/// must lie beyond the old one's sequence space (RFC 1122 §4.2.2.13), and no connect may wait
/// for TIME-WAIT to run out.
module NetStack.Tests.TimeWaitSimulationTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Core.Tcp
open NetStack.Tests.TcpHarness

/// One run, all drawn from its seed.
type ReuseProfile =
    {
        /// Connections the client makes, one after the other, from the same 4-tuple.
        Connections: int
        DropPercent: int
        DuplicatePercent: int
        /// Base one-way delay and random extra (µs); extra delay reorders.
        BaseDelay: int64
        Jitter: int64
        ClientConfig: TcpConfig
        ServerConfig: TcpConfig
        /// The client draws its ISNs from a 4 µs clock (RFC 6528, as kernels do), else at random.
        ClockIss: bool
        /// Request and reply sizes are drawn from 0..MaxBytes.
        MaxBytes: int
    }

let private profileOf (seed: int) =
    let rng = Random seed

    let config () =
        { TcpConfig.Default with
            Mss = [| 536; 1460 |].[rng.Next 2]
            WindowScaling = rng.Next 2 = 0
            Timestamps = rng.Next 4 <> 0
            SelectiveAck = rng.Next 2 = 0
            Msl = 60_000_000L
            DelayedAckTimeout = int64 (rng.Next(0, 200_001))
            MaxRetransmissions = 12
        }

    {
        Connections = 12
        DropPercent = (if rng.Next 2 = 0 then 0 else rng.Next(1, 6))
        DuplicatePercent = rng.Next(0, 11)
        BaseDelay = int64 (rng.Next(100, 20_000))
        Jitter = int64 (rng.Next(0, 20_000))
        ClientConfig = config ()
        ServerConfig = config ()
        ClockIss = rng.Next 3 <> 0
        MaxBytes = [| 0; 100; 3000; 20_000 |].[rng.Next 4]
    }

type private Packet =
    {
        To: int
        ArriveAt: int64
        Order: int64
        Seg: Segment
        Data: byte[]
    }

/// What the oracle keeps per client connection.
type private Attempt =
    {
        Index: int
        Side: Side
        /// The ISN the test gave it.
        Iss: SeqNum
        OpenedAt: int64
        mutable ConnectedAt: int64 voption
        mutable Syns: int
        /// Its first SYN arrived at the server and RFC 6191 (or a free 4-tuple) took it.
        mutable FirstSynTaken: bool voption
    }

/// A server connection and what the oracle knows of it.
type private ServerConn =
    {
        /// The client connection whose SYN it took (its ISN is the SYN's sequence number).
        Index: int
        Side: Side
        /// The ISS it was given.
        Iss: SeqNum
        /// A SYN met it in TIME-WAIT and was refused.
        mutable Refused: bool
    }

/// Runs one profile: returns the client connections and the server connections, or fails.
let private simulate (seed: int) (p: ReuseProfile) =
    let rng = Random(seed * 7919 + 3)

    let bytes n =
        let b = Array.zeroCreate<byte> n
        rng.NextBytes b
        b

    let requests =
        Array.init p.Connections (fun _ -> bytes (rng.Next(0, p.MaxBytes + 1)))

    let replies =
        Array.init p.Connections (fun _ -> bytes (rng.Next(0, p.MaxBytes + 1)))

    let clientIssBase = uint32 (rng.NextInt64(0L, 1L <<< 32))
    // The server's ISNs: RFC 6528's clock plus one 4-tuple's constant offset.
    let serverIssBase = uint32 (rng.NextInt64(0L, 1L <<< 32))

    let serverIss (now: int64) =
        SeqNum(serverIssBase + uint32 (now / 4L))

    let queue = ResizeArray<Packet>()
    let mutable order = 0L
    let mutable now = 0L
    let attempts = ResizeArray<Attempt>()
    let servers = ResizeArray<ServerConn>()
    let mutable client: Attempt option = None
    let mutable server: ServerConn option = None
    let mutable reopened = 0
    let mutable refused = 0

    let describe () =
        $"seed {seed}, {p}, at {now} µs, {attempts.Count} connections opened, {reopened} reopened, {refused} SYNs refused"

    let send (from: int) (side: Side) (seg: OutgoingSegment) =
        let view, data = throughWire side seg
        let copies = if rng.Next 100 < p.DuplicatePercent then 2 else 1

        for _ in 1..copies do
            if rng.Next 100 >= p.DropPercent then
                order <- order + 1L

                queue.Add
                    {
                        To = 1 - from
                        ArriveAt = now + p.BaseDelay + rng.NextInt64(0L, p.Jitter + 1L)
                        Order = order
                        Seg = view
                        Data = data
                    }

    /// A segment from no connection (a closed 4-tuple answers with RST, §3.10.7.1).
    let sendReset (from: int) (seg: Segment) =
        match Connection.resetFor seg with
        | ValueSome rst ->
            order <- order + 1L

            queue.Add
                {
                    To = 1 - from
                    ArriveAt = now + p.BaseDelay
                    Order = order
                    Seg =
                        {
                            Seq = rst.Seq
                            Ack = rst.Ack
                            Flags = rst.Flags
                            Window = rst.Window
                            Options = rst.Options
                            PayloadLength = 0
                        }
                    Data = [||]
                }
        | ValueNone -> ()

    let step (from: int) (side: Side) (incoming: byte[]) (f: Connection -> Connection * TcpOutput) =
        let conn, output = f side.Conn
        side.Conn <- conn

        match output.NextDeadline with
        | ValueSome t when t < now -> fail $"{side.Name}: deadline {t} in the past: {describe ()}"
        | _ -> ()

        if from = 0 then
            match client with
            | Some a ->
                a.Syns <-
                    a.Syns
                    + (output.Actions
                       |> List.sumBy (function
                           | TcpAction.Transmit s when s.Flags.HasFlag TcpFlags.Syn -> 1
                           | _ -> 0))
            | None -> ()

        apply side incoming (send from side) output

    let openClient (index: int) =
        let iss =
            if p.ClockIss then
                clientIssBase + uint32 (now / 4L)
            else
                uint32 (rng.NextInt64(0L, 1L <<< 32))

        let conn, output = Connection.openActive p.ClientConfig (SeqNum iss) now
        let side = newSide $"client {index}" conn requests.[index] replies.[index].Length

        let attempt =
            {
                Index = index
                Side = side
                Iss = SeqNum iss
                OpenedAt = now
                ConnectedAt = ValueNone
                Syns = 0
                FirstSynTaken = ValueNone
            }

        attempts.Add attempt
        client <- Some attempt
        step 0 side [||] (fun c -> c, output)

    /// The client application: send the request once connected, read everything, close after
    /// the server's FIN; once CLOSED, open the next connection from the same 4-tuple at once.
    let rec reactClient () =
        match client with
        | None -> ()
        | Some a ->
            let side = a.Side

            if a.ConnectedAt.IsNone && side.Events.Contains TcpEvent.Connected then
                a.ConnectedAt <- ValueSome now

            if side.Delivered > side.Conn.Consumed then
                step 0 side [||] (Connection.receiveWindowUpdate now (side.Delivered - side.Conn.Consumed))

            if Connection.canSend side.Conn && side.Written < int64 side.Payload.Length then
                let n = int64 side.Payload.Length - side.Written
                side.Written <- side.Written + n
                step 0 side [||] (Connection.send now n)

            if
                not side.CloseCalled
                && side.Conn.State = TcpState.CloseWait
                && side.Written = int64 side.Payload.Length
            then
                side.CloseCalled <- true
                step 0 side [||] (Connection.close now)

            if side.Conn.State = TcpState.Closed then
                client <- None

                if a.Index + 1 < p.Connections then
                    openClient (a.Index + 1)
                    reactClient ()

    /// The server application (HTTP/1.0 style): once the whole request is in, send the reply and
    /// close first.
    let reactServer () =
        match server with
        | None -> ()
        | Some s ->
            let side = s.Side

            if side.Delivered > side.Conn.Consumed then
                step 1 side [||] (Connection.receiveWindowUpdate now (side.Delivered - side.Conn.Consumed))

            if
                not side.CloseCalled
                && (side.Conn.State = TcpState.Established || side.Conn.State = TcpState.CloseWait)
                && side.Delivered = int64 requests.[s.Index].Length
            then
                side.CloseCalled <- true
                side.Written <- int64 side.Payload.Length
                step 1 side [||] (Connection.send now side.Written)
                step 1 side [||] (Connection.close now)

            if side.Conn.State = TcpState.Closed then
                server <- None

    /// The listener takes a SYN for a free 4-tuple (or one just reopened) with ISS `iss`: a
    /// server connection for the client connection whose ISN the SYN carries (the current one,
    /// or an earlier one when it is a late duplicate).
    let listen (iss: SeqNum) (packet: Packet) =
        let conn, output = Connection.accept p.ServerConfig iss now packet.Seg

        let index =
            match attempts |> Seq.tryFind (fun a -> a.Iss = packet.Seg.Seq) with
            | Some a -> a.Index
            | None -> fail $"a SYN no client connection sent: {describe ()}"

        let side = newSide $"server {index}" conn replies.[index] requests.[index].Length

        let s =
            {
                Index = index
                Side = side
                Iss = iss
                Refused = false
            }

        servers.Add s
        server <- Some s
        step 1 side packet.Data (fun c -> c, output)

    let serverArrives (packet: Packet) =
        let seg = packet.Seg

        let bareSyn =
            seg.Has TcpFlags.Syn && not (seg.Has TcpFlags.Ack) && not (seg.Has TcpFlags.Rst)

        let firstSynOfAttempt () =
            match client with
            | Some a when bareSyn && a.FirstSynTaken.IsNone && seg.Seq = a.Iss -> Some a
            | _ -> None

        match server with
        | Some s when s.Side.Conn.State <> TcpState.Closed ->
            let old = s.Side.Conn

            let expected =
                if bareSyn && old.State = TcpState.TimeWait then
                    // RFC 6191 §2 (TcpOracle.reopensTimeWait). RCV.NXT from the test's own
                    // numbers: just past the FIN that ended the request the old connection took
                    // (client ISN + 1 + request + 1). TS.Recent is the engine's: the test does not
                    // model RFC 7323's update rule over a lossy, reordering link.
                    let rcvNxt = attempts.[s.Index].Iss + 1 + requests.[s.Index].Length + 1

                    if rcvNxt <> old.Rcv.Nxt then
                        fail $"TIME-WAIT with RCV.NXT {old.Rcv.Nxt}, past the request's FIN is {rcvNxt}: {describe ()}"

                    let tsRecent =
                        if old.Ts.Enabled then
                            ValueSome old.Ts.Recent
                        else
                            ValueNone

                    Some(TcpOracle.reopensTimeWait seg rcvNxt tsRecent)
                else
                    None

            let first = firstSynOfAttempt ()
            let eventsBefore = s.Side.Events.Count
            step 1 s.Side packet.Data (Connection.handleSegment now seg)

            let wasReopened =
                s.Side.Events |> Seq.skip eventsBefore |> Seq.contains TcpEvent.Reopened

            match expected with
            | Some true when not wasReopened ->
                fail
                    $"an acceptable SYN (SEQ {seg.Seq.Value}, RCV.NXT {old.Rcv.Nxt.Value}, TSval {seg.Options.Timestamps}, TS.Recent {old.Ts.Recent}) was refused: {describe ()}"
            | Some false when wasReopened ->
                fail
                    $"an old-duplicate SYN (SEQ {seg.Seq.Value}, RCV.NXT {old.Rcv.Nxt.Value}, TSval {seg.Options.Timestamps}, TS.Recent {old.Ts.Recent}) reopened TIME-WAIT: {describe ()}"
            | None when wasReopened -> fail $"reopened by a segment that is no SYN in TIME-WAIT: {describe ()}"
            | _ -> ()

            match first with
            | Some a -> a.FirstSynTaken <- ValueSome(expected = Some true)
            | None -> ()

            if expected = Some false then
                s.Refused <- true
                refused <- refused + 1

            if wasReopened then
                reopened <- reopened + 1
                server <- None
                // RFC 1122 §4.2.2.13: beyond the largest sequence number the old one used, its
                // FIN's (ISS + 1 + reply + 1 - 1), computed from what it was given and wrote.
                let largestUsed = s.Iss.Value + 1u + uint32 s.Side.Written
                let iss = Connection.reopenIss old (serverIss now)

                if int (iss.Value - largestUsed) <= 0 then
                    fail $"reopened with ISS {iss.Value}, not beyond {largestUsed}: {describe ()}"

                listen iss packet
        | _ ->
            if bareSyn then
                match firstSynOfAttempt () with
                | Some a -> a.FirstSynTaken <- ValueSome true
                | None -> ()

                listen (serverIss now) packet
            else
                sendReset 1 seg

    let clientArrives (packet: Packet) =
        match client with
        | Some a -> step 0 a.Side packet.Data (Connection.handleSegment now packet.Seg)
        | None -> sendReset 0 packet.Seg

    openClient 0
    let mutable steps = 0
    let mutable finished = false

    while not finished do
        steps <- steps + 1

        if steps > 500_000 then
            fail $"no end after {steps} steps: {describe ()}"

        let deadlines =
            [
                if queue.Count > 0 then
                    yield (queue |> Seq.map (fun q -> q.ArriveAt) |> Seq.min)
                for side in
                    [
                        client |> Option.map (fun a -> a.Side)
                        server |> Option.map (fun s -> s.Side)
                    ] do
                    match side |> Option.map (fun s -> Connection.nextDeadline s.Conn) with
                    | Some(ValueSome t) -> yield t
                    | _ -> ()
            ]

        match deadlines with
        | [] -> finished <- true
        | _ ->
            now <- max now (List.min deadlines)

            let due =
                queue
                |> Seq.filter (fun q -> q.ArriveAt <= now)
                |> Seq.sortBy (fun q -> q.ArriveAt, q.Order)
                |> List.ofSeq

            queue.RemoveAll(fun q -> q.ArriveAt <= now) |> ignore

            for packet in due do
                if packet.To = 1 then
                    match server with
                    | Some s -> noteSackBlocks s.Side packet.Seg
                    | None -> ()

                    serverArrives packet
                else
                    match client with
                    | Some a -> noteSackBlocks a.Side packet.Seg
                    | None -> ()

                    clientArrives packet

                reactServer ()
                reactClient ()

            match client with
            | Some a when (Connection.nextDeadline a.Side.Conn) |> ValueOption.exists (fun t -> t <= now) ->
                step 0 a.Side [||] (Connection.handleTimer now)
            | _ -> ()

            match server with
            | Some s when (Connection.nextDeadline s.Side.Conn) |> ValueOption.exists (fun t -> t <= now) ->
                step 1 s.Side [||] (Connection.handleTimer now)
            | _ -> ()

            reactServer ()
            reactClient ()

    List.ofSeq attempts, List.ofSeq servers, requests, replies, reopened, refused

/// Runs one seed and checks it; returns how many SYNs reopened TIME-WAIT and how many were refused.
let private checkRun (seed: int) (p: ReuseProfile) =
    let attempts, servers, requests, replies, reopened, refused = simulate seed p

    let describe () =
        $"seed {seed}, {p}, {reopened} reopened, {refused} refused"

    Expect.equal attempts.Length p.Connections $"every connection was opened: {describe ()}"

    for a in attempts do
        let side = a.Side
        let name = $"connection {a.Index}"
        Expect.equal side.Conn.State TcpState.Closed $"{name} ended CLOSED: {describe ()}"

        for e in side.Events do
            match e with
            | TcpEvent.Reset
            | TcpEvent.Refused
            | TcpEvent.TimedOut -> failtest $"{name} saw {e}: {describe ()}"
            | _ -> ()

        Expect.isTrue (side.Events.Contains TcpEvent.Connected) $"{name} connected: {describe ()}"
        Expect.isTrue (side.Events.Contains TcpEvent.PeerClosed) $"{name} saw the server's FIN: {describe ()}"
        Expect.equal side.Received replies.[a.Index] $"{name}: the reply, byte for byte: {describe ()}"
        Expect.equal side.Freed (int64 requests.[a.Index].Length) $"{name}: the request acknowledged: {describe ()}"

        // The server connection that took this client's SYN received exactly the request.
        let served =
            servers
            |> List.filter (fun s ->
                s.Side.Conn.Rcv.Irs = side.Conn.Snd.Iss
                && s.Side.Events.Contains TcpEvent.Connected)

        match served with
        | [ s ] ->
            Expect.equal
                s.Side.Received.[.. requests.[a.Index].Length - 1]
                requests.[a.Index]
                $"{name}: the request, byte for byte: {describe ()}"

            Expect.equal s.Side.Delivered (int64 requests.[a.Index].Length) $"{name}: nothing more: {describe ()}"
        | other -> failtest $"{name}: {other.Length} server connections served it: {describe ()}"

        let connectTime =
            match a.ConnectedAt with
            | ValueSome t -> t - a.OpenedAt
            | ValueNone -> failtest $"{name} never connected: {describe ()}"

        // No connect waits for TIME-WAIT (2·MSL) to end: that is the check below that every
        // refusing TIME-WAIT ended on the client's RST. The time bound is TIME-WAIT's own length:
        // on a lossy link the SYN's RFC 6298 backoff alone may pass one MSL (seed 1074176068, 4 %
        // loss: the first challenge ACK rate limited, the second lost, the client's first two
        // RSTs lost, its third ended the TIME-WAIT at 15 s, the SYN at 31 s lost, and the one at
        // 1+2+4+8+16+32 = 63 s connected).
        Expect.isLessThan connectTime (2L * p.ServerConfig.Msl) $"{name} connected within 2·MSL: {describe ()}"

        if p.DropPercent = 0 then
            // Without loss, promptly: a SYN RFC 6191 takes is answered at once (one SYN, no
            // retransmission); a refused one costs its challenge ACK, the client's RST and one
            // retransmission, two when the challenge ACK was rate limited.
            let oneWay = p.BaseDelay + p.Jitter
            let bound = 3L * p.ClientConfig.InitialRto + 8L * oneWay
            Expect.isLessThan connectTime bound $"{name} connected promptly: {describe ()}"

            if a.FirstSynTaken = ValueSome true then
                Expect.equal a.Syns 1 $"{name}: its first SYN was taken, so it was sent once: {describe ()}"

    // A TIME-WAIT that refused a SYN ends on the client's RST (or a later SYN), never by running
    // out while the client retries. Only the last connection's may run out: a late duplicate SYN
    // it refuses is answered by the client's LAST-ACK, which the challenge ACK just closes.
    for s in servers do
        let last = s.Side.Transitions |> Seq.last

        if
            s.Refused
            && s.Index < p.Connections - 1
            && last.From = TcpState.TimeWait
            && last.Trigger = TcpTrigger.TimeWaitTimeout
        then
            failtest $"the TIME-WAIT of connection {s.Index} refused a SYN and ran out its 2·MSL: {describe ()}"

        // Every server connection is over, and none saw a reset or a timeout unless it was a
        // stray one (a late duplicate SYN that the client, in another connection, refused).
        Expect.equal s.Side.Conn.State TcpState.Closed $"server {s.Index} ended CLOSED: {describe ()}"

    reopened, refused

[<Tests>]
let tests =
    testList
        "TIME-WAIT simulation"
        [
            testPropertyWithConfig
                { TestUtil.heavyConfig with
                    maxTest = 100
                }
                "a client reopening one 4-tuple after each server-first close always connects promptly, every byte delivered"
            <| Prop.forAll (Arb.fromGen (Gen.choose (0, Int32.MaxValue))) (fun seed ->
                checkRun seed (profileOf seed) |> ignore
                true)

            // TIMEWAIT_SEED=n (with TCP_TRACE=1 for every segment) replays one seed.
            if not (String.IsNullOrEmpty(Environment.GetEnvironmentVariable "TIMEWAIT_SEED")) then
                test "replay of TIMEWAIT_SEED" {
                    let seed = int (Environment.GetEnvironmentVariable "TIMEWAIT_SEED")
                    checkRun seed (profileOf seed) |> ignore
                }

            test "over fixed seeds both paths are taken: SYNs reopen TIME-WAIT and SYNs are refused" {
                let mutable reopened = 0
                let mutable refused = 0

                for seed in 1..30 do
                    let r, f = checkRun seed (profileOf seed)
                    reopened <- reopened + r
                    refused <- refused + f

                printfn
                    $"TIME-WAIT simulation, 30 seeds of 12 connections: {reopened} SYNs reopened TIME-WAIT, {refused} refused"

                Expect.isGreaterThan reopened 100 "the reopen path"
                Expect.isGreaterThan refused 10 "the challenge path"
            }
        ]
