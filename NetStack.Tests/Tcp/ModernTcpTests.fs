/// The modern TCP extensions, one rule at a time: RFC 7323 window scaling, timestamps and PAWS;
/// RFC 2018 SACK blocks; RFC 6675 / RFC 6582 loss recovery and RFC 3042 limited transmit.
module NetStack.Tests.ModernTcpTests

open Expecto
open FsCheck
open FsCheck.FSharp
open System
open NetStack.Core.Wire
open NetStack.Core.Tcp
open NetStack.Tests.TcpHarness

let private stored (o: TcpOutput) =
    o.Actions
    |> List.exists (function
        | TcpAction.StoreReceived _ -> true
        | _ -> false)

let private configWith (ws: bool) (ts: bool) =
    { TcpConfig.Default with
        WindowScaling = ws
        Timestamps = ts
        ReceiveBufferSize = 1 <<< 20
    }

let private audit (c: Connection) =
    match Connection.audit c with
    | Some problem -> failtest problem
    | None -> ()

/// A data segment for `receiver` at `seq` (absolute), with timestamps (TSval, TSecr) if given.
let private data (receiver: Connection) (seq: SeqNum) (length: int) (ts: (uint32 * uint32) option) =
    {
        Seq = seq
        Ack = receiver.Snd.Max
        Flags = TcpFlags.Ack
        Window = 1000us
        Options =
            { TcpOptions.None with
                Timestamps =
                    ts
                    |> Option.map (fun (v, e) -> { Value = v; EchoReply = e })
                    |> Option.toValueOption
            }
        PayloadLength = length
    }

open NetStack.Tests.TestUtil.TcpActions

let private sackConfig (ts: bool) =
    { TcpConfig.Default with
        WindowScaling = false
        Timestamps = ts
        SelectiveAck = true
    }

/// The SACK blocks of a segment as (left, right) pairs, in order.
let private sackBlocksOf (s: OutgoingSegment) =
    [
        for i in 0 .. s.Options.SackBlockCount - 1 do
            let b = s.Options.GetSackBlock i
            b.Left, b.Right
    ]

/// A pure ACK from the peer (window 65535, no timestamps) with these SACK blocks.
let private sackAck (ack: SeqNum) (blocks: (uint32 * uint32) list) : Segment =
    let mutable options =
        { TcpOptions.None with
            SackBlockCount = List.length blocks
        }

    blocks
    |> List.iteri (fun i (l, r) -> options <- options.WithSackBlock(i, { Left = l; Right = r }))

    {
        Seq = SeqNum 7001u
        Ack = ack
        Flags = TcpFlags.Ack
        Window = 65535us
        Options = options
        PayloadLength = 0
    }

/// A client (SACK as given, no timestamps or scaling) with ten full segments (14600 bytes) in
/// flight at t = 20 ms: the connection and those segments.
let private sender (sack: bool) =
    let cfg =
        { sackConfig false with
            SelectiveAck = sack
        }

    let client, _, _, _, _ = handshake cfg cfg
    let c, o = Connection.send (ms 20) 14600L client
    Expect.equal (List.length (sent o)) 10 "ten segments in the initial window"
    c, sent o

/// Segment 0 (at SND.UNA) is missing and the peer SACKs segments 1, 2 and 3, one ACK each at
/// t = 30 ms: the connection after each ACK and what that ACK made it do.
let private sackAboveHole (c: Connection) =
    let base' = c.Snd.Una

    (c, [ 1..3 ])
    ||> List.mapFold (fun c k ->
        let c2, o =
            Connection.handleSegment
                (ms 30)
                (sackAck base' [ ((base' + 1460).Value, (base' + 1460 * (k + 1)).Value) ])
                c

        (c2, o), c2)
    |> fst

/// RFC 9438 (CUBIC) computed here from its equations, in segments and seconds: the oracle for the
/// engine's window in congestion avoidance. Nothing of the engine's Congestion module is used.
module private Rfc9438 =
    /// §5: C = 0.4.
    let C = 0.4
    /// §4.6: β_cubic = 0.7.
    let Beta = 0.7
    /// §4.3: α_cubic = 3(1 − β)/(1 + β), until W_est reaches cwnd_prior, then 1.
    let Alpha = 3.0 * (1.0 - Beta) / (1.0 + Beta)

    /// §4.2 eq. 1: W_cubic(t) = C·(t − K)³ + W_max.
    let wCubic (wMax: float) (k: float) (t: float) =
        let d = t - k
        C * d * d * d + wMax

    /// One congestion-avoidance epoch (§4.2): from the first ACK after the window reduction.
    type Epoch =
        {
            /// t_epoch, µs.
            Start: int64
            /// W_max (segments): cwnd before the reduction (no fast convergence on a first loss, §4.7).
            WMax: float
            /// cwnd_prior (segments): cwnd when ssthresh was last set (§4.3).
            CwndPrior: float
            /// K = ∛((W_max − cwnd_epoch)/C) (§4.2 eq. 2).
            K: float
            /// The window (segments).
            Cwnd: float
            /// W_est (segments), from cwnd_epoch (§4.3).
            WEst: float
            /// ACKs that found W_cubic(t) below W_est (§4.3), and above it (§4.4, §4.5).
            RenoFriendly: int
            Cubic: int
        }

    let epoch (start: int64) (wMax: float) (cwndEpoch: float) =
        {
            Start = start
            WMax = wMax
            CwndPrior = wMax
            K = Math.Cbrt(max 0.0 (wMax - cwndEpoch) / C)
            Cwnd = cwndEpoch
            WEst = cwndEpoch
            RenoFriendly = 0
            Cubic = 0
        }

    /// A new ACK of `segments` segments at `now` (µs), the smoothed RTT `rtt` (s): W_est grows by
    /// α·segments/cwnd (§4.3); in the Reno-friendly region (W_cubic(t) < W_est) cwnd becomes W_est,
    /// never lower (congestion avoidance does not shrink the window; §4.2 bounds target below by
    /// cwnd for the same reason); otherwise it grows by (target − cwnd)/cwnd per ACK, target being
    /// W_cubic(t + RTT) bounded to [cwnd, 1.5·cwnd] (§4.2, §4.4, §4.5).
    let onAck (now: int64) (rtt: float) (segments: float) (e: Epoch) =
        let t = float (now - e.Start) / 1e6
        let alpha = if e.WEst >= e.CwndPrior then 1.0 else Alpha
        let wEst = e.WEst + alpha * segments / e.Cwnd

        if wCubic e.WMax e.K t < wEst then
            { e with
                WEst = wEst
                Cwnd = max e.Cwnd wEst
                RenoFriendly = e.RenoFriendly + 1
            }
        else
            let target = wCubic e.WMax e.K (t + rtt) |> max e.Cwnd |> min (1.5 * e.Cwnd)

            { e with
                WEst = wEst
                Cwnd = e.Cwnd + (target - e.Cwnd) / e.Cwnd * segments
                Cubic = e.Cubic + 1
            }

/// A CUBIC sender (MSS 1000, SACK, window scaling, no timestamps) with an unbounded stream to send,
/// driven over a path whose round trip is exactly `rtt` µs: every segment is acknowledged on its own
/// (with SACK blocks past a hole) one RTT after it left, and the first segment sent in round
/// `lossRound` (slow start doubles the window each round from 10 segments) is lost. From the first
/// ACK after fast recovery ends, each ACK's window is compared with RFC 9438 computed in the test
/// (Rfc9438), until `seconds` after that. Returns the RFC's epoch at the end.
let private cubicAgainstRfc (rtt: int64) (lossRound: int) (seconds: float) =
    let mss = 1000

    let cfg =
        { TcpConfig.Default with
            Mss = mss
            WindowScaling = true
            Timestamps = false
            SelectiveAck = true
            CongestionControl = CongestionControl.Cubic
            ReceiveBufferSize = 16 <<< 20
        }

    // The handshake takes one RTT too, so the first RTT sample, and the smoothed RTT, is `rtt`.
    let client, o = Connection.openActive cfg (SeqNum 1000u) 0L
    let _, o2 = Connection.accept cfg (SeqNum 7000u) (rtt / 2L) (arriving (single o))
    let client, _ = Connection.handleSegment rtt (arriving (single o2)) client
    let mutable c, o = Connection.send rtt (1L <<< 30) client
    // In flight, in sending order: (sent at, stream position, length).
    let pending = Collections.Generic.Queue<int64 * int64 * int>()

    let enqueue (now: int64) (o: TcpOutput) =
        for s in sent o do
            if s.DataLength > 0 then
                pending.Enqueue((now, s.DataPosition, s.DataLength))

    enqueue rtt o
    let lostAt = ref -1L
    let mutable lossSeen = false
    let mutable received = RangeSet.empty
    let mutable wMaxBytes = 0
    let mutable recoveryPoint = -1L
    let mutable model: Rfc9438.Epoch option = None
    let mutable finished = false
    let mutable checkedAcks = 0

    while not finished do
        let sentAt, position, length = pending.Dequeue()
        let now = sentAt + rtt
        let round = int ((sentAt - rtt) / rtt)

        match Connection.nextDeadline c with
        | ValueSome deadline when deadline < now -> failtestf "a timer fell due at %d before the ACK at %d" deadline now
        | _ -> ()

        if round = lossRound && lostAt.Value < 0L then
            // The first segment of the loss round: lost.
            lostAt.Value <- position
            wMaxBytes <- c.Recovery.Cwnd
        else
            received <- RangeSet.add position (position + int64 length) received

            let acked =
                match RangeSet.endOfRangeAt 0L received with
                | ValueSome e -> e
                | ValueNone -> 0L

            let blocks =
                [
                    for struct (s, e) in received.Ranges do
                        if s > acked then
                            yield (1001u + uint32 s, 1001u + uint32 e)
                ]
                |> List.truncate 3

            let before = c

            let c2, o =
                Connection.handleSegment now (sackAck (SeqNum(1001u + uint32 acked)) blocks) c

            c <- c2
            enqueue now o

            if events o |> List.contains TcpEvent.FastRetransmit then
                lossSeen <- true
                recoveryPoint <- int64 (before.Snd.Max - before.Snd.Una) + before.Snd.Acked
                // §4.6: ssthresh = cwnd·β; SACK recovery (RFC 6675) runs at ssthresh.
                Expect.equal c.Recovery.Ssthresh (int (float wMaxBytes * Rfc9438.Beta)) "ssthresh = β·cwnd at the loss"

            match model with
            | Some e ->
                let segments = float (c.Snd.Acked - before.Snd.Acked) / float mss
                // A window is a whole number of bytes: each ACK's new window is cut down to one.
                let e = Rfc9438.onAck now (float rtt / 1e6) segments e

                let e =
                    { e with
                        Cwnd = floor (e.Cwnd * float mss) / float mss
                    }

                model <- Some e
                checkedAcks <- checkedAcks + 1
                let expected = e.Cwnd * float mss

                // One byte for floating point: the same value computed in another order may fall
                // on the other side of a whole byte.
                if abs (float c.Recovery.Cwnd - expected) > 1.0 then
                    failtestf
                        "at %.3f s into the epoch (%s region): cwnd %d bytes, RFC 9438 %.1f (W_max %.1f, K %.3f s, W_est %.2f segments)"
                        (float (now - e.Start) / 1e6)
                        (if
                             e.RenoFriendly > 0
                             && Rfc9438.wCubic e.WMax e.K (float (now - e.Start) / 1e6) < e.WEst
                         then
                             "Reno-friendly"
                         else
                             "cubic")
                        c.Recovery.Cwnd
                        expected
                        e.WMax
                        e.K
                        e.WEst

                finished <- float (now - e.Start) / 1e6 >= seconds
            | None when lossSeen && not c.Recovery.InRecovery ->
                // Recovery ended with this ACK (everything sent before the loss acknowledged): the
                // window is ssthresh, and congestion avoidance starts with the next ACK.
                Expect.isGreaterThanOrEqual (int64 c.Snd.Acked) recoveryPoint "recovery ends at its recovery point"
                Expect.equal c.Recovery.Cwnd c.Recovery.Ssthresh "cwnd = ssthresh when recovery ends"
                let wMax = float wMaxBytes / float mss
                model <- Some(Rfc9438.epoch now wMax (float c.Recovery.Cwnd / float mss))
            | None -> ()

    Expect.equal c.Rtt.Srtt rtt "the smoothed RTT is the path's"
    Expect.isGreaterThan checkedAcks 0 "acknowledgments were checked"
    model.Value

[<Tests>]
let tests =
    testList
        "TcpModern"
        [
            testList
                "negotiation"
                [
                    for cws in [ false; true ] do
                        for cts in [ false; true ] do
                            for sws in [ false; true ] do
                                for sts in [ false; true ] do
                                    test $"client WS {cws} TS {cts}, server WS {sws} TS {sts}" {
                                        let client, server, syn, synAck, ack =
                                            handshake (configWith cws cts) (configWith sws sts)

                                        Expect.equal syn.Options.WindowScale.IsSome cws "SYN offers WS as configured"
                                        Expect.equal syn.Options.Timestamps.IsSome cts "SYN offers TS as configured"

                                        Expect.equal
                                            synAck.Options.WindowScale.IsSome
                                            (cws && sws)
                                            "SYN,ACK answers WS only when offered"

                                        Expect.equal
                                            synAck.Options.Timestamps.IsSome
                                            (cts && sts)
                                            "SYN,ACK answers TS only when offered"

                                        for c in [ client; server ] do
                                            Expect.equal c.WindowScaled (cws && sws) "WS in use iff both sent it"
                                            Expect.equal c.Ts.Enabled (cts && sts) "TS in use iff both sent them"
                                            audit c

                                        Expect.equal ack.Options.Timestamps.IsSome (cts && sts) "the ACK carries TS"
                                        // 1 MiB needs shift 5 (65535·2^4 < 2^20 <= 65535·2^5).
                                        let shift = if cws && sws then 5 else 0
                                        Expect.equal client.Snd.WndShift shift "the peer's shift"
                                        Expect.equal client.Rcv.WndShift shift "our shift"

                                        Expect.equal
                                            (int64 server.Snd.Wnd)
                                            (if cws && sws then
                                                 int64 ack.Window <<< 5
                                             else
                                                 int64 ack.Window)
                                            "the handshake's ACK window is scaled"

                                        Expect.equal
                                            client.Snd.Mss
                                            (1460 - (if cts && sts then 12 else 0))
                                            "timestamps take 12 bytes of each segment"
                                    }
                ]

            testList
                "window scaling"
                [
                    test "the shift is the smallest that covers the buffer, 0 at 65535 and 14 at the top" {
                        Expect.equal (TcpConfig.WindowShiftFor 65535) 0 "65535 needs no shift"
                        Expect.equal (TcpConfig.WindowShiftFor 65536) 1 "one more byte needs one"
                        Expect.equal (TcpConfig.WindowShiftFor(65535 <<< 14)) 14 "the largest buffer needs 14"

                        { TcpConfig.Default with
                            ReceiveBufferSize = 65535 <<< 14
                        }
                            .Validate()

                        Expect.throws
                            (fun () ->
                                { TcpConfig.Default with
                                    ReceiveBufferSize = (65535 <<< 14) + 1
                                }
                                    .Validate())
                            "no window field can offer more"
                    }

                    test "shift 0: windows are taken and sent as they are" {
                        let cfg =
                            { configWith true false with
                                ReceiveBufferSize = 65535
                            }

                        let client, server, _, synAck, ack = handshake cfg cfg
                        Expect.equal synAck.Options.WindowScale (ValueSome 0uy) "WS 0 is still offered"
                        Expect.equal ack.Window 65535us "a 65535-byte window, unscaled"
                        Expect.equal server.Snd.Wnd 65535 "taken unscaled"
                        Expect.isTrue client.WindowScaled "negotiated"
                    }

                    test "shift 14: a peer's window field of 1 is 16384 bytes, a shift above 14 counts as 14" {
                        let cfg = configWith true false
                        let client, o = Connection.openActive cfg (SeqNum 1000u) 0L
                        let syn = single o

                        let synAck =
                            {
                                Seq = SeqNum 5000u
                                Ack = syn.Seq + 1
                                Flags = TcpFlags.Syn ||| TcpFlags.Ack
                                Window = 1000us
                                Options =
                                    { TcpOptions.None with
                                        WindowScale = ValueSome 15uy
                                    }
                                PayloadLength = 0
                            }

                        let client, _ = Connection.handleSegment (ms 1) synAck client
                        Expect.equal client.Snd.Wnd 1000 "the SYN,ACK's window is never scaled"
                        Expect.equal client.Snd.WndShift 14 "15 is taken as 14"

                        let update =
                            {
                                Seq = SeqNum 5001u
                                Ack = syn.Seq + 1
                                Flags = TcpFlags.Ack
                                Window = 1us
                                Options = TcpOptions.None
                                PayloadLength = 0
                            }

                        let client, _ = Connection.handleSegment (ms 2) update client
                        Expect.equal client.Snd.Wnd 16384 "1 << 14"

                        let client, _ =
                            Connection.handleSegment (ms 3) { update with Window = 65535us } client

                        Expect.equal client.Snd.Wnd (65535 <<< 14) "the largest window there is"
                        audit client
                    }

                    test
                        "a 1 MiB buffer is offered through the scaled field; the edge retracts by less than 2^shift at most" {
                        let cfg = configWith true false
                        let client, _, _, _, _ = handshake cfg cfg
                        let mutable c = client
                        let mutable right = c.Rcv.Right
                        let mutable seq = c.Rcv.Nxt
                        let rng = System.Random 7

                        for _ in 1..300 do
                            let length = rng.Next(1, 1461)
                            let c2, o = Connection.handleSegment (ms 5) (data c seq length None) c

                            for s in sent o do
                                let edge = s.Ack + (int s.Window <<< 5)
                                Expect.isTrue (SeqNum.ge (edge + 31) right) "the offered edge never moves left by 32"
                                right <- SeqNum.max edge right

                            seq <- seq + length
                            c <- c2
                            audit c

                            if rng.Next 4 = 0 && c.Delivered > c.Consumed then
                                let c3, o = Connection.receiveWindowUpdate (ms 6) (c.Delivered - c.Consumed) c

                                for s in sent o do
                                    let edge = s.Ack + (int s.Window <<< 5)
                                    Expect.isTrue (SeqNum.ge (edge + 31) right) "nor after a read"
                                    right <- SeqNum.max edge right

                                c <- c3
                                audit c

                        Expect.isGreaterThan (c.Rcv.Right - c.Rcv.Nxt) 65535 "more than 64 KiB is offered"
                    }
                ]

            testList
                "timestamps"
                [
                    test "TSval follows the millisecond clock plus an offset, and TSecr echoes TS.Recent" {
                        let cfg = configWith false true
                        let client, server, syn, synAck, ack = handshake cfg cfg
                        let tsSyn = syn.Options.Timestamps.Value
                        Expect.equal tsSyn.EchoReply 0u "a SYN echoes nothing"
                        Expect.equal synAck.Options.Timestamps.Value.EchoReply tsSyn.Value "the SYN,ACK echoes the SYN"

                        Expect.equal
                            ack.Options.Timestamps.Value.Value
                            (tsSyn.Value + 2u)
                            "the client's clock moved 2 ms between SYN and ACK"

                        Expect.equal
                            ack.Options.Timestamps.Value.EchoReply
                            synAck.Options.Timestamps.Value.Value
                            "the ACK echoes the SYN,ACK"

                        Expect.notEqual client.Ts.Offset server.Ts.Offset "offsets differ per connection"
                    }

                    test "an RTT sample comes from TSecr" {
                        let cfg =
                            { configWith false true with
                                MinRto = 1000L
                            }

                        let client, server, _, _, _ = handshake cfg cfg
                        let client, o = Connection.send (ms 100) 1000L client
                        let seg = single o
                        let server, o = Connection.handleSegment (ms 120) (arriving seg) server
                        // The server delays its ACK; the timer sends it.
                        let _, o2 = Connection.handleTimer (ms 200) server

                        let reply =
                            match sent o @ sent o2 with
                            | s :: _ -> s
                            | [] -> failtest "no ACK"

                        Expect.equal
                            reply.Options.Timestamps.Value.EchoReply
                            seg.Options.Timestamps.Value.Value
                            "the ACK echoes the data's TSval"

                        let client, _ = Connection.handleSegment (ms 250) (arriving reply) client
                        // The handshake gave a 2 ms sample; 150 ms from the echoed TSval is the
                        // second: SRTT = 7/8·2 + 1/8·150 ms (one sample expected per round trip).
                        Expect.equal client.Rtt.Srtt 20_500L "SRTT with the 150 ms sample"
                        audit client
                    }

                    test "a round trip under one timestamp tick is measured in microseconds, not as 0 from TSecr" {
                        let cfg =
                            { configWith false true with
                                MinRto = 1000L
                            }

                        let client, server, _, _, _ = handshake cfg cfg
                        // Two full segments, so the server ACKs at once (RFC 9293 §3.8.6.3), 300 µs
                        // later: the same millisecond, so TSecr says 0 ms.
                        let client, o = Connection.send (ms 100) (int64 (2 * client.Snd.Mss)) client

                        let server, acks =
                            sent o
                            |> List.fold
                                (fun (server, acks) seg ->
                                    let server, o = Connection.handleSegment (ms 100 + 150L) (arriving seg) server
                                    server, acks @ sent o)
                                (server, [])

                        let ack =
                            match acks with
                            | [ a ] -> a
                            | other -> failtestf "one immediate ACK expected, got %d" other.Length

                        Expect.equal
                            ack.Options.Timestamps.Value.EchoReply
                            (List.head (sent o)).Options.Timestamps.Value.Value
                            "the ACK echoes the data's TSval, sent in the same millisecond"

                        let client, _ = Connection.handleSegment (ms 100 + 300L) (arriving ack) client
                        // The handshake's 2 ms sample, then R' = 300 µs (RFC 6298 §2.3):
                        // SRTT = 7/8·2000 + 1/8·300 µs, in the integer form.
                        Expect.equal client.Rtt.Srtt ((7L * 2000L + 300L) / 8L) "SRTT with the 300 µs sample"
                        audit client
                        ignore server
                    }

                    test "PAWS: an old TSval is ACKed and dropped; a newer one is taken" {
                        let cfg = configWith false true
                        let client, _, _, _, _ = handshake cfg cfg
                        let recent = client.Ts.Recent

                        let c, o =
                            Connection.handleSegment
                                (ms 10)
                                (data client client.Rcv.Nxt 100 (Some(recent - 5u, 0u)))
                                client

                        Expect.isFalse (stored o) "an old duplicate is not stored"
                        Expect.equal (single o).Ack client.Rcv.Nxt "it draws an ACK"
                        Expect.equal c.Rcv.Nxt client.Rcv.Nxt "nothing taken"

                        let c, o =
                            Connection.handleSegment
                                (ms 10)
                                (data client client.Rcv.Nxt 100 (Some(recent + 5u, 0u)))
                                client

                        Expect.isTrue (stored o) "a newer TSval is taken"
                        Expect.equal c.Ts.Recent (recent + 5u) "and becomes TS.Recent"
                        audit c
                    }

                    test "PAWS forgets a TS.Recent idle for over 24 days" {
                        let cfg = configWith false true
                        let client, _, _, _, _ = handshake cfg cfg
                        let later = 25L * 86_400_000_000L

                        let _, o =
                            Connection.handleSegment
                                later
                                (data client client.Rcv.Nxt 100 (Some(client.Ts.Recent - 5u, 0u)))
                                client

                        Expect.isTrue (stored o) "a stale TS.Recent rejects nothing"
                    }

                    test "a segment without timestamps is dropped once they are on; a RST without them still counts" {
                        let cfg = configWith false true
                        let client, _, _, _, _ = handshake cfg cfg

                        let c, o =
                            Connection.handleSegment (ms 10) (data client client.Rcv.Nxt 100 None) client

                        Expect.isEmpty o.Actions "silently dropped (RFC 7323 §3.2)"
                        Expect.equal c.Rcv.Nxt client.Rcv.Nxt "nothing taken"

                        let rst =
                            {
                                Seq = client.Rcv.Nxt
                                Ack = SeqNum 0u
                                Flags = TcpFlags.Rst
                                Window = 0us
                                Options = TcpOptions.None
                                PayloadLength = 0
                            }

                        let c, _ = Connection.handleSegment (ms 11) rst client
                        Expect.equal c.State TcpState.Closed "the RST resets"
                    }

                    test "TS.Recent is not taken from a segment beyond Last.ACK.sent (out of order)" {
                        let cfg = configWith false true
                        let client, _, _, _, _ = handshake cfg cfg
                        let recent = client.Ts.Recent

                        let c, o =
                            Connection.handleSegment
                                (ms 10)
                                (data client (client.Rcv.Nxt + 500) 100 (Some(recent + 50u, 0u)))
                                client

                        Expect.isTrue (stored o) "the early segment is stored"
                        Expect.equal c.Ts.Recent recent "but its TSval is not echoed"
                        audit c
                    }
                ]
            testList
                "SACK"
                [
                    for cs in [ false; true ] do
                        for ss in [ false; true ] do
                            test $"SACK-permitted: client {cs}, server {ss}" {
                                let cfg (sack: bool) =
                                    { configWith true true with
                                        SelectiveAck = sack
                                    }

                                let client, server, syn, synAck, _ = handshake (cfg cs) (cfg ss)
                                Expect.equal syn.Options.SackPermitted cs "the SYN offers SACK as configured"
                                Expect.equal synAck.Options.SackPermitted (cs && ss) "the SYN,ACK answers in kind"
                                Expect.equal client.SackEnabled (cs && ss) "client"
                                Expect.equal server.SackEnabled (cs && ss) "server"
                            }

                    test
                        "blocks: the newest arrival's range first, then the recently reported ones, at most 4 (3 with timestamps)" {
                        let client, _, _, _, _ = handshake (sackConfig false) (sackConfig false)
                        let r = client.Rcv.Nxt
                        let blocks (o: TcpOutput) = sackBlocksOf (single o)
                        let at (a: int) (b: int) = ((r + a).Value, (r + b).Value)
                        let c, o = Connection.handleSegment (ms 5) (data client (r + 1000) 500 None) client
                        Expect.equal (blocks o) [ at 1000 1500 ] "one block"
                        let c, o = Connection.handleSegment (ms 5) (data c (r + 3000) 500 None) c
                        Expect.equal (blocks o) [ at 3000 3500; at 1000 1500 ] "the newest first"
                        let c, o = Connection.handleSegment (ms 5) (data c (r + 5000) 500 None) c
                        Expect.equal (blocks o) [ at 5000 5500; at 3000 3500; at 1000 1500 ] "three"
                        let c, o = Connection.handleSegment (ms 5) (data c (r + 1500) 500 None) c

                        Expect.equal
                            (blocks o)
                            [ at 1000 2000; at 5000 5500; at 3000 3500 ]
                            "the grown range comes first"

                        let c, _ = Connection.handleSegment (ms 5) (data c (r + 7000) 500 None) c
                        let c, o = Connection.handleSegment (ms 5) (data c (r + 9000) 500 None) c
                        Expect.equal (List.length (blocks o)) 4 "four fit without timestamps"
                        Expect.equal (List.head (blocks o)) (at 9000 9500) "the newest first"
                        let c, o = Connection.handleSegment (ms 5) (data c r 1000 None) c

                        Expect.equal
                            (blocks o)
                            [ at 9000 9500; at 7000 7500; at 5000 5500; at 3000 3500 ]
                            "the first gap filled: the rest remain, the most recent first"

                        audit c

                        // With timestamps only three blocks fit.
                        let client, _, _, _, _ = handshake (sackConfig true) (sackConfig true)
                        let mutable c = client

                        for k in 1..5 do
                            let c2, o =
                                Connection.handleSegment
                                    (ms 5)
                                    (data c (r + 1000 * (2 * k)) 500 (Some(c.Ts.Recent, 0u)))
                                    c

                            c <- c2

                            Expect.equal
                                (List.length (sackBlocksOf (single o)))
                                (min k 3)
                                "at most three next to timestamps"
                    }

                    testPropertyWithConfig
                        TestUtil.codecConfig
                        "hostile SACK blocks leave the scoreboard inside [SND.UNA, SND.MAX) and the invariants intact"
                    <| fun (blocks: (int * int * uint32 * uint32 * bool) list) ->
                        let c, _ = sender true
                        let mutable c = c

                        for (offset, length, rawLeft, rawRight, raw) in List.truncate 40 blocks do
                            let left, right =
                                if raw then
                                    rawLeft, rawRight
                                else
                                    (c.Snd.Una + (offset % 20000)).Value,
                                    (c.Snd.Una + (offset % 20000) + (length % 5000)).Value

                            let ack = if offset % 7 = 0 then c.Snd.Una + 1460 else c.Snd.Una

                            let c2, _ = Connection.handleSegment (ms 30) (sackAck ack [ (left, right) ]) c
                            c <- c2
                            audit c

                            for struct (s, e) in c.Recovery.Scoreboard.Ranges do
                                Expect.isTrue (s >= c.Snd.Acked && e <= c.Written) "inside the send stream"

                    test "three SACKed segments above a hole: the hole is resent at once, nothing SACKed is" {
                        let c, first = sender true
                        let steps = sackAboveHole c

                        for c, _ in steps do
                            audit c

                        let c = fst (List.last steps)
                        let resent = steps |> List.collect (snd >> sent)

                        let fast =
                            steps
                            |> List.sumBy (fun (_, o) ->
                                events o |> List.filter ((=) TcpEvent.FastRetransmit) |> List.length)

                        Expect.equal fast 1 "one fast retransmit"

                        match resent with
                        | [ s ] ->
                            Expect.equal s.DataPosition 0L "the hole at SND.UNA"
                            Expect.equal s.DataLength 1460 "one segment"
                        | other -> failtest $"expected one retransmission, got {other}"

                        Expect.isTrue c.Recovery.InRecovery "in recovery"

                        Expect.equal
                            c.Recovery.Ssthresh
                            (List.sumBy (fun (s: OutgoingSegment) -> s.DataLength) first * 7 / 10)
                            "ssthresh is 0.7 cwnd (CUBIC, the default)"
                        // Full ACK: recovery ends.
                        let c, _ = Connection.handleSegment (ms 40) (sackAck c.Snd.Max []) c
                        Expect.isFalse c.Recovery.InRecovery "recovery over"
                        Expect.equal c.Recovery.Cwnd c.Recovery.Ssthresh "cwnd = ssthresh"
                        audit c
                    }

                    test "NewReno without SACK: three duplicate ACKs resend SND.UNA, a partial ACK the next hole" {
                        let c, _ = sender false
                        let base' = c.Snd.Una
                        let mutable c = c
                        let mutable out = []

                        for _ in 1..3 do
                            let c2, o = Connection.handleSegment (ms 30) (sackAck base' []) c
                            c <- c2
                            out <- out @ sent o

                        match out with
                        | [ s ] -> Expect.equal s.DataPosition 0L "SND.UNA resent after the third duplicate"
                        | other -> failtest $"expected one retransmission, got {other}"

                        let c, o = Connection.handleSegment (ms 40) (sackAck (base' + 3 * 1460) []) c

                        match sent o with
                        | s :: _ -> Expect.equal s.DataPosition (3L * 1460L) "the partial ACK's hole resent"
                        | [] -> failtest "nothing resent after a partial ACK"

                        Expect.isTrue c.Recovery.InRecovery "still in recovery"
                        let c, _ = Connection.handleSegment (ms 50) (sackAck c.Snd.Max []) c
                        Expect.isFalse c.Recovery.InRecovery "a full ACK ends it"
                        audit c
                    }

                    test "limited transmit: each of the first two duplicate ACKs lets one new segment out" {
                        let c, _ = sender false
                        let c, _ = Connection.send (ms 25) (2L * 1460L) c
                        let base' = c.Snd.Una
                        let c, o = Connection.handleSegment (ms 30) (sackAck base' []) c

                        Expect.equal
                            (sent o |> List.map (fun s -> s.DataPosition))
                            [ 14600L ]
                            "the first duplicate: one new segment"

                        let _, o = Connection.handleSegment (ms 31) (sackAck base' []) c

                        Expect.equal
                            (sent o |> List.map (fun s -> s.DataPosition))
                            [ 16060L ]
                            "the second duplicate: another"
                    }
                ]
            testList
                "congestion control"
                [
                    test "CUBIC: K, the curve's ends and fast convergence match RFC 9438" {
                        let k = Congestion.cubicK 100.0 70.0
                        Expect.floatClose Accuracy.high k (Math.Cbrt 75.0) "K = cbrt((W_max - cwnd_epoch)/C)"
                        Expect.floatClose Accuracy.high (Congestion.cubicWindow 100.0 k 0.0) 70.0 "W(0) = cwnd_epoch"
                        Expect.floatClose Accuracy.high (Congestion.cubicWindow 100.0 k k) 100.0 "W(K) = W_max"

                        let struct (ssthresh, s) =
                            Congestion.onLoss CongestionControl.Cubic 100_000 1000 100_000 CubicState.Initial

                        Expect.equal ssthresh 70_000 "beta = 0.7"
                        Expect.equal s.WMax 100_000.0 "W_max remembered"
                        let struct (_, s) = Congestion.onLoss CongestionControl.Cubic 90_000 1000 90_000 s
                        Expect.equal s.WMax (90_000.0 * 1.7 / 2.0) "fast convergence lowers W_max"

                        let struct (ssthresh, _) =
                            Congestion.onLoss CongestionControl.Reno 100_000 1000 100_000 CubicState.Initial

                        Expect.equal ssthresh 50_000 "Reno halves the flight"
                    }

                    test
                        "CUBIC after a loss at 80 segments, 100 ms RTT: ACK by ACK the window is RFC 9438's through the concave and convex regions" {
                        // Slow start: 10, 20, 40, 80 segments; the first segment of the fourth round is lost.
                        let e = cubicAgainstRfc 100_000L 3 (Math.Cbrt(24.0 / 0.4) + 1.5)
                        Expect.floatClose Accuracy.high e.WMax 80.0 "W_max: the window at the loss"
                        Expect.isGreaterThan e.Cubic 0 "the cubic region was checked"
                        Expect.isGreaterThan e.Cwnd e.WMax "and past W_max, the convex region"
                    }

                    test
                        "CUBIC after a loss at 10 segments, 100 ms RTT: the Reno-friendly W_est governs, with α = 1 once it passes cwnd_prior (RFC 9438 §4.3)" {
                        // The first segment of the initial window is lost: W_max = 10 segments, K ≈ 1.96 s,
                        // and W_est (0.53 segment per RTT, then 1) outgrows the cubic curve.
                        let e = cubicAgainstRfc 100_000L 0 3.0
                        Expect.floatClose Accuracy.high e.WMax 10.0 "W_max: the initial window"
                        Expect.isGreaterThan e.RenoFriendly 0 "the Reno-friendly region was checked"
                        Expect.isGreaterThan e.WEst e.CwndPrior "past cwnd_prior, where α is 1"
                    }

                    test "slow start grows by at most 2 MSS per ACK (ABC, L = 2); Reno adds about 1 MSS per window" {
                        let struct (w, _) =
                            Congestion.onAck
                                CongestionControl.Cubic
                                0L
                                0L
                                1000
                                10_000L
                                10_000
                                1_000_000
                                CubicState.Initial

                        Expect.equal w 12_000 "a stretch ACK counts as 2 MSS"
                        let mutable cwnd = 10_000

                        for _ in 1..10 do
                            let struct (w, _) =
                                Congestion.onAck CongestionControl.Reno 0L 0L 1000 1000L cwnd 5_000 CubicState.Initial

                            cwnd <- w

                        Expect.isTrue (cwnd >= 10_900 && cwnd <= 11_000) $"one window of ACKs: {cwnd}"
                    }
                ]
            testList
                "long streams"
                [
                    test
                        "a reader that keeps up sends no pure window updates; one that let the window fall to half the buffer does" {
                        // Window scaling on, a 1 MiB buffer, no timestamps, ReceiveBufferMax equal
                        // to the buffer (no auto-tuning).
                        let cfg =
                            { configWith true false with
                                ReceiveBufferMax = 1 <<< 20
                            }

                        let client, server, _, _, _ = handshake cfg cfg
                        let mutable s = server
                        let mutable seq = client.Snd.Nxt

                        let deliver (count: int) =
                            for _ in 1..count do
                                let s2, _ = Connection.handleSegment (ms 10) (data s seq 1460 None) s
                                s <- s2
                                seq <- seq + 1460

                        // Ten segments, read at once: the window offered is still far above half
                        // the buffer, and the data's own ACKs carry the window: no update.
                        deliver 10
                        let s2, o = Connection.receiveWindowUpdate (ms 11) (s.Delivered - s.Consumed) s
                        s <- s2
                        Expect.isEmpty (sent o) "no pure window update while the window is large"
                        // 400 segments unread: the window falls below half the buffer; reading them
                        // more than doubles it, and the peer is told at once.
                        deliver 400
                        let before = s.Rcv.Right - s.Rcv.Nxt
                        Expect.isLessThanOrEqual (2 * before) (1 <<< 20) "offered window at most half the buffer"
                        let s3, o = Connection.receiveWindowUpdate (ms 12) (s.Delivered - s.Consumed) s
                        let update = single o
                        Expect.equal update.Ack s3.Rcv.Nxt "a pure ACK"

                        Expect.isGreaterThanOrEqual
                            (int update.Window <<< s3.Rcv.WndShift)
                            (2 * before)
                            "at least twice the window"
                    }

                    test "sending goes on past 2 GiB and 4 GiB, where sequence numbers pass ISS + 2^31 and wrap" {
                        for start in [ (1L <<< 31) - 5000L; (1L <<< 32) - 5000L; (5L <<< 31) - 5000L ] do
                            let c, _ = sender true
                            let una = c.Snd.Max
                            let c, _ = Connection.handleSegment (ms 25) (sackAck una []) c
                            // As if `start` bytes had been sent and acknowledged already.
                            let skip = int (start - c.Snd.Acked)

                            let c =
                                { c with
                                    Snd.Written = start
                                    Snd.Acked = start
                                    Snd.Una = c.Snd.Una + skip
                                    Snd.Nxt = c.Snd.Nxt + skip
                                    Snd.Max = c.Snd.Max + skip
                                    Snd.Wl2 = c.Snd.Wl2 + skip
                                }

                            audit c
                            let mutable c = c
                            let mutable total = 0L

                            for round in 1..6 do
                                let c2, o = Connection.send (ms (30 + round)) 4380L c
                                let bytes = sent o |> List.sumBy (fun s -> int64 s.DataLength)
                                Expect.equal bytes 4380L $"round {round} from {start}: everything written goes out"
                                let c3, _ = Connection.handleSegment (ms (30 + round)) (sackAck c2.Snd.Max []) c2
                                Expect.equal c3.Snd.Acked c3.Written "and is acknowledged"
                                total <- total + bytes
                                c <- c3

                            Expect.isGreaterThan c.Written (start + 20_000L) "past the mark"
                    }
                ]
            testList
                "tail loss probe (RFC 8985 §7) and lost retransmissions"
                [
                    test
                        "a lost tail: after 2·SRTT the probe resends the last segment, its SACK starts recovery, no timeout" {
                        let c, _ = sender true
                        let base' = c.Snd.Una
                        // The first eight segments arrive; the last two are lost.
                        let c, _ = Connection.handleSegment (ms 22) (sackAck (base' + 8 * 1460) []) c
                        audit c

                        let probeAt =
                            match c.Timers.ProbeAt with
                            | ValueSome t -> t
                            | ValueNone -> failtest "no probe timer with data outstanding"

                        Expect.isLessThan probeAt c.Timers.RetransmitAt.Value "the probe comes before the RTO"
                        Expect.isLessThan (probeAt - ms 22) (ms 20) "about 2·SRTT (SRTT 2 ms) after the ACK"
                        let c, o = Connection.handleTimer probeAt c
                        let probe = single o
                        Expect.equal probe.DataPosition (9L * 1460L) "the last segment"
                        Expect.equal probe.DataLength 1460 "a whole segment"
                        Expect.contains (events o) TcpEvent.LossProbe "reported"
                        Expect.equal c.Retries 0 "not a timeout"
                        Expect.isTrue c.Timers.ProbeAt.IsNone "one probe per episode"
                        audit c
                        // The peer SACKs the probe: segment 9 is lost and resent at once.
                        let c, o =
                            Connection.handleSegment
                                (probeAt + ms 2)
                                (sackAck (base' + 8 * 1460) [ ((base' + 9 * 1460).Value, (base' + 10 * 1460).Value) ])
                                c

                        Expect.isTrue c.Recovery.InRecovery "recovery began"
                        let resent = single o
                        Expect.equal resent.DataPosition (8L * 1460L) "the hole below the probe"
                        Expect.isTrue c.Recovery.ProbeEnd.IsNone "the episode ended in recovery"
                        let c, _ = Connection.handleSegment (probeAt + ms 4) (sackAck c.Snd.Max []) c
                        Expect.isFalse c.Recovery.InRecovery "all acknowledged"
                        Expect.equal c.Retries 0 "no timeout at all"
                        audit c
                    }

                    test "with new data waiting the probe sends new data; when that is all ACKed the window is not cut" {
                        let c, _ = sender true
                        let base' = c.Snd.Una
                        // More data than the window holds waits.
                        let c, _ = Connection.send (ms 21) 30_000L c
                        let c, o = Connection.handleSegment (ms 22) (sackAck (base' + 8 * 1460) []) c
                        let sentNow = sent o |> List.sumBy (fun s -> s.DataLength)
                        let cwnd = c.Recovery.Cwnd
                        let c, o = Connection.handleTimer c.Timers.ProbeAt.Value c
                        let probe = single o
                        Expect.isGreaterThanOrEqual probe.DataPosition (14600L + int64 sentNow) "new data"
                        Expect.isFalse c.Recovery.ProbeResent "not a retransmission"
                        let c, _ = Connection.handleSegment (ms 40) (sackAck c.Snd.Max []) c
                        Expect.isTrue c.Recovery.ProbeEnd.IsNone "episode over"
                        Expect.isGreaterThanOrEqual c.Recovery.Cwnd cwnd "no reduction: nothing was lost"
                        audit c
                    }

                    test "no probe without SACK, and none in recovery" {
                        let c, _ = sender false
                        let c, _ = Connection.handleSegment (ms 22) (sackAck (c.Snd.Una + 1460) []) c
                        Expect.isTrue c.Timers.ProbeAt.IsNone "NewReno connection: the RTO only"
                        let c, _ = sender true
                        let c = fst (List.last (sackAboveHole c))
                        Expect.isTrue c.Recovery.InRecovery "in recovery"
                        Expect.isTrue c.Timers.ProbeAt.IsNone "no probe in recovery"
                    }

                    test "a lost retransmission is resent once data sent after it is SACKed, before any timeout" {
                        let c, _ = sender true
                        let base' = c.Snd.Una
                        let c, _ = Connection.send (ms 21) 30_000L c
                        // Segment 0 is lost; 1..3 are SACKed: recovery resends segment 0.
                        let steps = sackAboveHole c
                        let c = fst (List.last steps)
                        let resent = steps |> List.collect (snd >> sent)

                        Expect.isTrue c.Recovery.InRecovery "in recovery"
                        Expect.exists resent (fun s -> s.DataPosition = 0L) "segment 0 resent"
                        let top = c.Snd.Max
                        // Everything sent so far but segment 0 arrives: the pipe empties, new
                        // data goes out (sent after the retransmission).
                        let c2, o =
                            Connection.handleSegment (ms 31) (sackAck base' [ ((base' + 1460).Value, top.Value) ]) c

                        Expect.isFalse (sent o |> List.exists (fun s -> s.DataPosition = 0L)) "not resent yet"
                        Expect.isGreaterThan (c2.Snd.Max - top) (3 * 1460) "new data sent in recovery"
                        // The new data arrives but segment 0's retransmission does not: it was lost.
                        let c3, o =
                            Connection.handleSegment
                                (ms 32)
                                (sackAck base' [ ((base' + 1460).Value, (top + 3 * 1460).Value) ])
                                c2

                        Expect.exists
                            (sent o)
                            (fun s -> s.DataPosition = 0L && s.DataLength = 1460)
                            "segment 0 resent again"

                        Expect.equal c3.Retries 0 "no timeout"
                        Expect.isTrue c3.Recovery.InRecovery "still the same recovery"
                        audit c3
                        // It arrives this time: recovery completes.
                        let c4, _ = Connection.handleSegment (ms 34) (sackAck c3.Snd.Max []) c3
                        Expect.isFalse c4.Recovery.InRecovery "recovery over"
                        Expect.isEmpty c4.Recovery.RetransmitMarks "nothing watched any more"
                    }
                ]
        ]
