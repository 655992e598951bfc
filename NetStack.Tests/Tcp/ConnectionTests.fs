/// Known-answer tests of the engine's behaviour, one RFC rule at a time, and of its helpers
/// (SipHash and ISNs, RTO arithmetic, range sets).
module NetStack.Tests.ConnectionTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Core.Tcp

let private ms (n: int) = int64 n * 1000L

let private config =
    { TcpConfig.Default with
        DelayedAckTimeout = ms 40
        ReceiveBufferSize = 8000
    }

let private segment (seq: uint32) (ack: uint32) (flags: TcpFlags) (window: uint16) (length: int) =
    {
        Seq = SeqNum seq
        Ack = SeqNum ack
        Flags = flags
        Window = window
        Options = TcpOptions.None
        PayloadLength = length
    }

let private withMss (mss: uint16) (s: Segment) =
    { s with
        Options =
            { TcpOptions.None with
                MaximumSegmentSize = ValueSome mss
            }
    }

open NetStack.Tests.TestUtil.TcpActions

let private single (o: TcpOutput) =
    match sent o with
    | [ s ] -> s
    | other -> failtest $"expected one segment, got {other}"

let private ack = TcpFlags.Ack
let private iss = 1000u
let private peerIss = 5000u

/// A client that completed the handshake with a peer offering `window` and MSS 1000, at t = 10 ms.
let private established (window: uint16) =
    let c, _ = Connection.openActive config (SeqNum iss) 0L

    let c, o =
        Connection.handleSegment
            (ms 10)
            (segment peerIss (iss + 1u) (TcpFlags.Syn ||| ack) window 0 |> withMss 1000us)
            c

    Expect.equal c.State TcpState.Established "handshake done"
    Expect.contains (events o) TcpEvent.Connected "Connected"
    c

[<Tests>]
let tests =
    testList
        "Connection"
        [
            testList
                "helpers"
                [
                    test "SipHash-2-4 matches the reference vectors (key 00..0f)" {
                        let k0 = 0x0706050403020100UL
                        let k1 = 0x0f0e0d0c0b0a0908UL
                        Expect.equal (Isn.sipHash24 k0 k1 ReadOnlySpan.Empty) 0x726fdb47dd0e0e31UL "empty message"
                        let fifteen = Array.init 15 byte

                        Expect.equal
                            (Isn.sipHash24 k0 k1 (ReadOnlySpan fifteen))
                            0xa129ca6149be45e5UL
                            "00..0e (the paper's example)"
                    }

                    test "ISNs follow the 4 µs clock for one 4-tuple and differ between 4-tuples" {
                        let key = { K0 = 0x1234UL; K1 = 0x5678UL }
                        let a = [| 10uy; 0uy; 0uy; 1uy |]
                        let b = [| 10uy; 0uy; 0uy; 2uy |]

                        let isn now port =
                            Isn.generate key now (ReadOnlySpan a) port (ReadOnlySpan b) 80us

                        Expect.equal (isn 4_000L 40000us - isn 0L 40000us) 1000 "1000 ticks in 4 ms"
                        Expect.notEqual (isn 0L 40000us) (isn 0L 40001us) "another port, another offset"
                        let otherKey = { key with K1 = 0x5679UL }

                        Expect.notEqual
                            (Isn.generate otherKey 0L (ReadOnlySpan a) 40000us (ReadOnlySpan b) 80us)
                            (isn 0L 40000us)
                            "another key, another offset"

                        Expect.throws
                            (fun () -> Isn.generate key 0L (ReadOnlySpan a) 1us (ReadOnlySpan [| 1uy |]) 2us |> ignore)
                            "mixed families"
                    }

                    test "RTO per RFC 6298: first sample, smoothing, bounds, backoff" {
                        let e = Rto.initial (ms 1000)
                        Expect.equal e.Rto (ms 1000) "1 s before any sample"
                        let e = Rto.sample (ms 1) (ms 200) (ms 60_000) (ms 100) e

                        Expect.equal
                            (e.Srtt, e.RttVar, e.Rto)
                            (ms 100, ms 50, ms 300)
                            "SRTT = R, RTTVAR = R/2, RTO = R + 4·R/2"

                        let e = Rto.sample (ms 1) (ms 200) (ms 60_000) (ms 100) e
                        Expect.equal (e.Srtt, e.RttVar) (ms 100, 37_500L) "RTTVAR = 3/4·50 + 1/4·0"
                        Expect.equal e.Rto (ms 250) "100 + 4·37.5"
                        let tiny = Rto.sample (ms 1) (ms 200) (ms 60_000) 10L (Rto.initial (ms 1000))
                        Expect.equal tiny.Rto (ms 200) "clamped to MinRto"
                        let backedOff = Seq.fold (fun e _ -> Rto.backoff (ms 60_000) e) e [ 1..20 ]
                        Expect.equal backedOff.Rto (ms 60_000) "doubling stops at MaxRto"
                        let reset = Rto.resetBackoff (ms 1) (ms 200) (ms 60_000) backedOff
                        Expect.equal reset.Rto (ms 250) "progress recomputes RTO from SRTT"
                    }

                    testPropertyWithConfig
                        TestUtil.codecConfig
                        "a RangeSet holds exactly the positions added, as sorted disjoint non-adjacent ranges"
                    <| Prop.forAll
                        (Gen.listOf (Gen.zip (Gen.choose (0, 300)) (Gen.choose (0, 40))) |> Arb.fromGen)
                        (fun ranges ->
                            let set =
                                ranges
                                |> List.fold
                                    (fun s (start, len) -> RangeSet.add (int64 start) (int64 (start + len)) s)
                                    RangeSet.empty

                            let expected =
                                ranges |> List.collect (fun (s, l) -> [ s .. s + l - 1 ]) |> Set.ofList

                            let actual =
                                set.Ranges
                                |> List.collect (fun struct (s, e) -> [ int s .. int e - 1 ])
                                |> Set.ofList

                            let rec wellFormed (items: struct (int64 * int64) list) =
                                match items with
                                | struct (s1, e1) :: (struct (s2, _) :: _ as rest) ->
                                    s1 < e1 && e1 < s2 && wellFormed rest
                                | [ struct (s, e) ] -> s < e
                                | [] -> true

                            actual = expected
                            && wellFormed set.Ranges
                            && RangeSet.count set = int64 expected.Count)

                    test "RangeSet.advance moves over a range that starts at or before the position" {
                        let set = RangeSet.empty |> RangeSet.add 10L 20L |> RangeSet.add 30L 40L
                        let struct (p, rest) = RangeSet.advance 5L set
                        Expect.equal p 5L "a gap before the first range: no move"
                        Expect.equal rest set "unchanged"
                        let struct (p, rest) = RangeSet.advance 10L set
                        Expect.equal p 20L "moved past [10,20)"
                        Expect.equal rest.Ranges [ struct (30L, 40L) ] "first range consumed"
                    }
                ]

            testList
                "opening"
                [
                    test "an active open sends a SYN with our MSS and arms the 1 s retransmission timer" {
                        let c, o = Connection.openActive config (SeqNum iss) 0L
                        let syn = single o
                        Expect.equal syn.Flags TcpFlags.Syn "SYN only"
                        Expect.equal syn.Seq.Value iss "SEQ = ISS"
                        Expect.equal syn.Options.MaximumSegmentSize (ValueSome 1460us) "MSS = MTU 1500 - 40"
                        Expect.equal syn.Window 8000us "the whole receive buffer"
                        Expect.equal o.NextDeadline (ValueSome(ms 1000)) "initial RTO 1 s"
                        Expect.equal c.State TcpState.SynSent "SYN-SENT"
                    }

                    test "the SYN,ACK completes the handshake with an ACK, and the peer's MSS caps ours" {
                        let c, _ = Connection.openActive config (SeqNum iss) 0L

                        let c, o =
                            Connection.handleSegment
                                (ms 10)
                                (segment peerIss (iss + 1u) (TcpFlags.Syn ||| ack) 30000us 0 |> withMss 1000us)
                                c

                        let reply = single o

                        Expect.equal
                            (reply.Seq.Value, reply.Ack.Value, reply.Flags)
                            (iss + 1u, peerIss + 1u, ack)
                            "<SEQ=ISS+1><ACK=IRS+1><ACK>"

                        Expect.equal c.Snd.Mss 1000 "min(peer 1000, ours 1460)"
                        Expect.equal c.Snd.Wnd 30000 "peer window"
                        Expect.equal c.Rtt.Srtt (ms 10) "the SYN was timed"
                        Expect.equal o.NextDeadline ValueNone "nothing in flight, no timer"
                    }

                    test "a listener answers a SYN with SYN,ACK and the ACK establishes" {
                        let c, o =
                            Connection.accept config (SeqNum iss) 0L (segment peerIss 0u TcpFlags.Syn 65535us 0)

                        let synAck = single o
                        Expect.equal synAck.Flags (TcpFlags.Syn ||| ack) "SYN,ACK"
                        Expect.equal (synAck.Seq.Value, synAck.Ack.Value) (iss, peerIss + 1u) "<SEQ=ISS><ACK=IRS+1>"
                        Expect.equal synAck.Options.MaximumSegmentSize (ValueSome 1460us) "our MSS"
                        Expect.equal c.Snd.Mss 536 "no MSS option: RFC 9293 default 536"

                        let c, o =
                            Connection.handleSegment (ms 5) (segment (peerIss + 1u) (iss + 1u) ack 65535us 0) c

                        Expect.equal c.State TcpState.Established "ESTABLISHED"
                        Expect.equal (events o) [ TcpEvent.Connected ] "Connected"
                        Expect.equal (sent o) [] "a bare ACK needs no answer"
                    }

                    test "a listener answers a stray ACK with RST and ignores a RST" {
                        let _, o = Connection.accept config (SeqNum iss) 0L (segment 7u 777u ack 100us 0)
                        let r = single o
                        Expect.equal (r.Flags, r.Seq.Value) (TcpFlags.Rst, 777u) "<SEQ=SEG.ACK><CTL=RST>"

                        let _, o =
                            Connection.accept config (SeqNum iss) 0L (segment 7u 777u TcpFlags.Rst 100us 0)

                        Expect.equal (sent o) [] "RST ignored"
                    }

                    test "simultaneous open: both sides pass SYN-RECEIVED and end ESTABLISHED" {
                        let a, ao = Connection.openActive config (SeqNum 100u) 0L
                        let b, bo = Connection.openActive config (SeqNum 300u) 0L

                        let toSeg (o: OutgoingSegment) =
                            { segment o.Seq.Value o.Ack.Value o.Flags o.Window 0 with
                                Options = o.Options
                            }

                        let a, ao2 = Connection.handleSegment 1L (toSeg (single bo)) a
                        let b, bo2 = Connection.handleSegment 1L (toSeg (single ao)) b
                        Expect.equal (a.State, b.State) (TcpState.SynReceived, TcpState.SynReceived) "both SYN-RECEIVED"
                        // Each SYN,ACK is answered with an ACK (its SYN is old news), which establishes the other side.
                        let a, ao3 = Connection.handleSegment 2L (toSeg (single bo2)) a
                        let b, bo3 = Connection.handleSegment 2L (toSeg (single ao2)) b
                        let a, _ = Connection.handleSegment 3L (toSeg (single bo3)) a
                        let b, _ = Connection.handleSegment 3L (toSeg (single ao3)) b
                        Expect.equal (a.State, b.State) (TcpState.Established, TcpState.Established) "both ESTABLISHED"
                    }

                    test "a RST acknowledging our SYN means connection refused" {
                        let c, _ = Connection.openActive config (SeqNum iss) 0L

                        let c, o =
                            Connection.handleSegment 1L (segment 0u (iss + 1u) (TcpFlags.Rst ||| ack) 0us 0) c

                        Expect.equal c.State TcpState.Closed "CLOSED"
                        Expect.equal (events o) [ TcpEvent.Refused; TcpEvent.Closed ] "Refused, Closed"
                    }

                    test "SYN retransmissions back off and end in TimedOut after MaxSynRetransmissions" {
                        let mutable c, o = Connection.openActive config (SeqNum iss) 0L
                        let mutable deadlines = []
                        let mutable finalEvents = []

                        while c.State <> TcpState.Closed do
                            let at = o.NextDeadline.Value
                            deadlines <- deadlines @ [ at ]
                            let c2, o2 = Connection.handleTimer at c
                            c <- c2
                            o <- o2
                            finalEvents <- events o2

                        Expect.equal
                            deadlines
                            [ ms 1000; ms 3000; ms 7000; ms 15000; ms 31000; ms 63000; ms 123000 ]
                            "1, 2, 4, ... s apart, at most MaxRto = 60 s"

                        Expect.equal finalEvents [ TcpEvent.TimedOut; TcpEvent.Closed ] "gave up"
                    }
                ]

            testList
                "stray and hostile segments"
                [
                    test "a closed port answers SYN with RST,ACK and ACK with RST, and a RST with nothing (§3.10.7.1)" {
                        match Connection.resetFor (segment 42u 0u TcpFlags.Syn 100us 10) with
                        | ValueSome r ->
                            Expect.equal
                                (r.Seq.Value, r.Ack.Value, r.Flags)
                                (0u, 42u + 11u, TcpFlags.Rst ||| ack)
                                "<SEQ=0><ACK=SEQ+LEN>"
                        | ValueNone -> failtest "RST expected"

                        match Connection.resetFor (segment 42u 99u ack 100us 0) with
                        | ValueSome r -> Expect.equal (r.Seq.Value, r.Flags) (99u, TcpFlags.Rst) "<SEQ=SEG.ACK>"
                        | ValueNone -> failtest "RST expected"

                        Expect.equal
                            (Connection.resetFor (segment 42u 99u TcpFlags.Rst 0us 0))
                            ValueNone
                            "never RST a RST"
                    }

                    test
                        "RST exactly at RCV.NXT resets; elsewhere in the window draws a challenge ACK; outside it, nothing (RFC 5961 §3)" {
                        let c = established 65535us
                        let nxt = peerIss + 1u

                        let c1, o =
                            Connection.handleSegment (ms 20) (segment (nxt + 100u) 0u TcpFlags.Rst 0us 0) c

                        Expect.equal c1.State TcpState.Established "not reset"
                        Expect.equal ((single o).Ack.Value, (single o).Flags) (nxt, ack) "challenge ACK"

                        let _, o =
                            Connection.handleSegment (ms 20) (segment (nxt + 100000u) 0u TcpFlags.Rst 0us 0) c

                        Expect.equal o.Actions [] "out of window: dropped"
                        let c3, o = Connection.handleSegment (ms 20) (segment nxt 0u TcpFlags.Rst 0us 0) c
                        Expect.equal c3.State TcpState.Closed "reset"
                        Expect.equal (events o) [ TcpEvent.Reset; TcpEvent.Closed ] "Reset, Closed"
                    }

                    test "a SYN on an established connection draws a challenge ACK (RFC 5961 §4)" {
                        let c = established 65535us

                        let c, o =
                            Connection.handleSegment (ms 20) (segment (peerIss + 1u) 0u TcpFlags.Syn 0us 0) c

                        Expect.equal c.State TcpState.Established "still established"
                        Expect.equal (single o).Flags ack "challenge ACK"
                    }

                    test "challenge ACKs: at most one per OutOfWindowAckInterval, the rest counted (RFC 5961 §7)" {
                        let c = established 65535us
                        let nxt = peerIss + 1u
                        let rst = segment (nxt + 100u) 0u TcpFlags.Rst 0us 0
                        let c, o = Connection.handleSegment (ms 20) rst c
                        Expect.equal (single o).Flags ack "the first draws a challenge ACK"

                        // Within 500 ms of it: a RST, a SYN and an ACK of unsent data draw nothing.
                        let mutable c = c

                        for (at, seg) in
                            [
                                100, rst
                                200, segment nxt 0u TcpFlags.Syn 0us 0
                                519, segment nxt (iss + 5000u) ack 65535us 0
                            ] do
                            let c2, o = Connection.handleSegment (ms at) seg c
                            Expect.equal (sent o) [] $"nothing sent at {at} ms"
                            Expect.equal (events o) [ TcpEvent.AckRateLimited ] "AckRateLimited"
                            Expect.equal c2.State TcpState.Established "still established"
                            c <- c2

                        let _, o = Connection.handleSegment (ms 520) rst c
                        Expect.equal (single o).Flags ack "500 ms after the last one: a challenge ACK again"

                        let unlimited =
                            { established 65535us with
                                Config =
                                    { config with
                                        OutOfWindowAckInterval = 0L
                                    }
                            }

                        let c, _ = Connection.handleSegment (ms 20) rst unlimited
                        let _, o = Connection.handleSegment (ms 21) rst c
                        Expect.equal (single o).Flags ack "OutOfWindowAckInterval = 0: no limit"
                    }

                    test "out-of-window data is always ACKed; out-of-window segments without data are rate limited" {
                        let c = established 65535us
                        let nxt = peerIss + 1u
                        let oldData = segment (nxt - 200u) (iss + 1u) ack 65535us 100
                        let c, o1 = Connection.handleSegment (ms 20) oldData c
                        let c, o2 = Connection.handleSegment (ms 21) oldData c

                        for o in [ o1; o2 ] do
                            Expect.equal ((single o).Ack.Value, (single o).Flags) (nxt, ack) "old data: ACKed each time"

                        let oldAck = segment (nxt - 200u) (iss + 1u) ack 65535us 0
                        let c, o = Connection.handleSegment (ms 22) oldAck c
                        Expect.equal (single o).Flags ack "an old bare ACK: answered once"
                        let _, o = Connection.handleSegment (ms 23) oldAck c
                        Expect.equal (sent o) [] "and not again within 500 ms"
                        Expect.equal (events o) [ TcpEvent.AckRateLimited ] "counted"
                    }

                    test "an ACK for data never sent is answered with an ACK and dropped" {
                        let c = established 65535us

                        let c2, o =
                            Connection.handleSegment (ms 20) (segment (peerIss + 1u) (iss + 500u) ack 65535us 0) c

                        Expect.equal c2.Snd.Una c.Snd.Una "SND.UNA unchanged"
                        Expect.equal (single o).Flags ack "ACK"
                    }
                ]

            testList
                "data"
                [
                    test "out-of-order data is stored and ACKed at once; the gap filled delivers both" {
                        let c = established 65535us
                        let nxt = peerIss + 1u

                        let c, o =
                            Connection.handleSegment (ms 20) (segment (nxt + 100u) (iss + 1u) ack 65535us 50) c

                        Expect.equal
                            (o.Actions
                             |> List.filter (function
                                 | TcpAction.StoreReceived _ -> true
                                 | _ -> false))
                            [ TcpAction.StoreReceived(0, 100L, 50) ]
                            "stored at position 100"

                        Expect.equal ((single o).Ack.Value) nxt "duplicate ACK at once"

                        let c, o =
                            Connection.handleSegment (ms 21) (segment nxt (iss + 1u) ack 65535us 100) c

                        Expect.contains o.Actions (TcpAction.Deliver 150L) "both delivered"
                        Expect.equal ((single o).Ack.Value) (nxt + 150u) "ACK at once: a gap was filled"
                        Expect.equal c.Delivered 150L "in-order point"
                    }

                    test "one small segment waits for the delayed-ACK timer; a second full one is ACKed at once" {
                        let c = established 65535us
                        let nxt = peerIss + 1u

                        let c, o =
                            Connection.handleSegment (ms 20) (segment nxt (iss + 1u) ack 65535us 1460) c

                        Expect.equal (sent o) [] "no ACK yet"
                        Expect.equal o.NextDeadline (ValueSome(ms 60)) "delayed ACK due 40 ms later"

                        let c, o =
                            Connection.handleSegment (ms 21) (segment (nxt + 1460u) (iss + 1u) ack 65535us 1460) c

                        Expect.equal ((single o).Ack.Value) (nxt + 2920u) "ACK every second full-sized segment"

                        let c, o =
                            Connection.handleSegment (ms 22) (segment (nxt + 2920u) (iss + 1u) ack 65535us 10) c

                        Expect.equal (sent o) [] "small segment: delayed"
                        let _, o = Connection.handleTimer (ms 62) c
                        Expect.equal ((single o).Ack.Value) (nxt + 2930u) "the timer sends it"
                    }

                    test "the offered window shrinks as data waits unread, and reopens with a window update" {
                        let c = established 65535us
                        let nxt = peerIss + 1u
                        let mutable c = c
                        let mutable last = Unchecked.defaultof<TcpOutput>

                        for i in 0..7 do
                            let c2, o =
                                Connection.handleSegment
                                    (ms 20)
                                    (segment (nxt + uint32 (i * 1000)) (iss + 1u) ack 65535us 1000)
                                    c

                            c <- c2
                            last <- o

                        // The eighth 1000-byte segment (the peer's full size) is the second since
                        // the last ACK: it is ACKed at once.
                        Expect.equal (single last).Window 0us "8000-byte buffer full: zero window"

                        let _, o =
                            Connection.handleSegment (ms 101) (segment (nxt + 8000u) (iss + 1u) ack 65535us 10) c

                        Expect.equal
                            ((single o).Ack.Value)
                            (nxt + 8000u)
                            "data beyond a zero window is not taken, only ACKed"

                        let c, o = Connection.receiveWindowUpdate (ms 102) 8000L c
                        Expect.equal (single o).Window 8000us "window update after the read"

                        Expect.throws
                            (fun () -> Connection.receiveWindowUpdate (ms 103) 1L c |> ignore)
                            "cannot read more than delivered"
                    }

                    test "a reordered duplicate of an older window update does not shrink the send window" {
                        // The peer ACKs 3000 bytes twice with the same SEG.SEQ and SEG.ACK: first
                        // with 104 bytes of window (its application had not read yet), then with
                        // 3000 (it had). The network delivers them the other way round.
                        let c = established 10000us
                        let nxt = peerIss + 1u
                        let c, _ = Connection.send (ms 20) 3000L c
                        let acked = iss + 1u + 3000u
                        let c, _ = Connection.handleSegment (ms 30) (segment nxt acked ack 3000us 0) c
                        Expect.equal c.Snd.Wnd 3000 "the newer update"
                        let c, _ = Connection.handleSegment (ms 31) (segment nxt acked ack 104us 0) c
                        Expect.equal c.Snd.Wnd 3000 "the older one, arriving late, is ignored"

                        let c, _ = Connection.handleSegment (ms 32) (segment nxt acked ack 5000us 0) c
                        Expect.equal c.Snd.Wnd 5000 "the same SEQ and ACK may still open the window"
                        let c, _ = Connection.handleSegment (ms 33) (segment nxt acked ack 0us 0) c
                        Expect.equal c.Snd.Wnd 0 "or close it to zero"

                        let c, _ = Connection.handleSegment (ms 35) (segment nxt acked ack 2000us 0) c
                        Expect.equal c.Snd.Wnd 2000 "and reopen it from zero"
                    }

                    test "a newer segment may shrink the send window" {
                        let c = established 10000us
                        let nxt = peerIss + 1u
                        let c, _ = Connection.send (ms 20) 3000L c

                        let c, _ =
                            Connection.handleSegment (ms 30) (segment nxt (iss + 1001u) ack 8000us 0) c

                        let c, _ =
                            Connection.handleSegment (ms 31) (segment nxt (iss + 2001u) ack 500us 0) c

                        Expect.equal c.Snd.Wnd 500 "a later SEG.ACK sets the window, smaller or not"
                    }

                    test
                        "when the peer takes back window, our ACKs and our RST carry the sequence number its acceptability test lets in" {
                        // We send 3000 bytes into a 10000-byte window; the peer takes 1000 of
                        // them and announces a zero window (as Linux does when its buffer fills):
                        // the other 2000 now lie beyond its window. Its data keeps coming (a zero
                        // window only stops us), and every ACK of it must pass the peer's check
                        // (RFC 9293 §3.10.7.4: with RCV.WND = 0 a segment without data is
                        // acceptable only when SEG.SEQ = RCV.NXT), else the peer never learns
                        // what we received and resends it for ever (seen with the kernel as the
                        // peer: a transfer through a router stalled until the test's timeout).
                        let c = established 10000us
                        let nxt = peerIss + 1u
                        let c, o = Connection.send (ms 20) 3000L c
                        Expect.equal (sent o |> List.sumBy (fun s -> s.DataLength)) 3000 "3000 bytes in flight"
                        let peerRcvNxt = SeqNum(iss + 1u + 1000u)

                        let c, _ =
                            Connection.handleSegment (ms 30) (segment nxt peerRcvNxt.Value ack 0us 0) c

                        let acceptable (what: string) (s: OutgoingSegment) =
                            Expect.equal s.DataLength 0 $"{what}: no data"
                            Expect.equal s.Seq peerRcvNxt $"{what}: SEG.SEQ = the peer's RCV.NXT"

                        // Two full-sized segments: the second is acknowledged at once.
                        let c, _ =
                            Connection.handleSegment (ms 31) (segment nxt peerRcvNxt.Value ack 0us 1000) c

                        let c, o =
                            Connection.handleSegment (ms 32) (segment (nxt + 1000u) peerRcvNxt.Value ack 0us 1000) c

                        acceptable "the ACK of the second segment" (single o)
                        Expect.equal (single o).Ack (SeqNum(nxt + 2000u)) "it acknowledges both"
                        // A small one: acknowledged by the delayed-ACK timer.
                        let c, _ =
                            Connection.handleSegment (ms 33) (segment (nxt + 2000u) peerRcvNxt.Value ack 0us 10) c

                        let c, o = Connection.handleTimer (ms 80) c
                        let delayed = sent o |> List.filter (fun s -> s.Ack = SeqNum(nxt + 2010u))
                        Expect.hasLength delayed 1 "the delayed ACK"
                        acceptable "the delayed ACK" delayed.Head
                        // An out-of-order segment is answered at once, with SACK or not.
                        let c, o =
                            Connection.handleSegment (ms 90) (segment (nxt + 3010u) peerRcvNxt.Value ack 0us 100) c

                        acceptable "the duplicate ACK of a hole" (single o)
                        // ABORT: the RST must be acceptable too, or the peer keeps the connection.
                        let _, o = Connection.abort (ms 100) c
                        let rst = single o
                        Expect.isTrue (rst.Flags.HasFlag TcpFlags.Rst) "a RST"
                        Expect.equal rst.Seq peerRcvNxt "the RST at the peer's RCV.NXT"
                    }

                    test
                        "past the peer's edge by less than one unit of our window scale, an ACK keeps SND.MAX; by more, the edge (Linux's tcp_acceptable_seq)" {
                        // Our receive buffer of 4 MiB makes our shift 7 (128-byte units); the peer
                        // offers shift 7 too and a window of 100 units.
                        let cfg =
                            { config with
                                ReceiveBufferSize = 4 <<< 20
                            }

                        let c, _ = Connection.openActive cfg (SeqNum iss) 0L

                        let synAck =
                            { segment peerIss (iss + 1u) (TcpFlags.Syn ||| ack) 100us 0 with
                                Options =
                                    { TcpOptions.None with
                                        MaximumSegmentSize = ValueSome 1000us
                                        WindowScale = ValueSome 7uy
                                    }
                            }

                        let c, _ = Connection.handleSegment (ms 10) synAck c
                        Expect.isTrue c.WindowScaled "both SYNs scaled"
                        Expect.equal c.Rcv.WndShift 7 "our shift"
                        // The handshake's window is not scaled: a first ACK opens 100 · 128 bytes.
                        let nxt = peerIss + 1u
                        let c, _ = Connection.handleSegment (ms 11) (segment nxt (iss + 1u) ack 100us 0) c
                        let c, o = Connection.send (ms 20) 6000L c
                        Expect.equal (sent o |> List.sumBy (fun s -> s.DataLength)) 6000 "6000 bytes in flight"
                        let sndMax = SeqNum(iss + 1u + 6000u)
                        // The peer acknowledges 5000 and offers 7 units: its edge 5896 lies 104
                        // bytes (under one unit) before SND.MAX, as a rounded window would.
                        let c, _ = Connection.handleSegment (ms 30) (segment nxt (iss + 5001u) ack 7us 0) c
                        // A small segment of data: its ACK comes from the delayed-ACK timer.
                        let ackOf (at: int) (seg: Segment) (c: Connection) =
                            let c, _ = Connection.handleSegment (ms at) seg c
                            let c, o = Connection.handleTimer (ms (at + 50)) c
                            c, single o

                        let c, a = ackOf 31 (segment nxt (iss + 5001u) (ack ||| TcpFlags.Psh) 7us 10) c
                        Expect.equal a.Seq sndMax "the ACK keeps SND.MAX"
                        // Now it takes 5000 and closes its window: 1000 bytes past the edge.
                        let c, _ =
                            Connection.handleSegment (ms 40) (segment (nxt + 10u) (iss + 5001u) ack 0us 0) c

                        let _, a =
                            ackOf 100 (segment (nxt + 10u) (iss + 5001u) (ack ||| TcpFlags.Psh) 0us 10) c

                        Expect.equal a.Seq (SeqNum(iss + 5001u)) "the ACK at the edge, the peer's RCV.NXT"
                    }

                    test "sending splits by MSS and window, and the ACK frees the buffer and stops the timer" {
                        let c = established 2500us
                        let c, o = Connection.send (ms 20) 5000L c
                        let segs = sent o

                        Expect.equal
                            (segs |> List.map (fun s -> s.DataPosition, s.DataLength))
                            [ 0L, 1000; 1000L, 1000 ]
                            "two MSS segments; the 500-byte rest waits (sender SWS)"

                        Expect.equal o.NextDeadline (ValueSome(ms 20 + c.Rtt.Rto)) "retransmission timer"

                        let c, o =
                            Connection.handleSegment (ms 40) (segment (peerIss + 1u) (iss + 2001u) ack 5000us 0) c

                        Expect.contains (events o) (TcpEvent.SendBufferFreed 2000L) "2000 bytes freed"

                        Expect.equal
                            (sent o |> List.map (fun s -> s.DataPosition, s.DataLength))
                            [ 2000L, 1000; 3000L, 1000; 4000L, 1000 ]
                            "the rest"

                        Expect.equal c.Snd.Acked 2000L "acked"
                    }

                    test "a zero window starts the persist timer; probes are ACKs below SND.UNA until the window opens" {
                        let c = established 0us
                        let c, o = Connection.send (ms 20) 3000L c
                        Expect.equal (sent o) [] "nothing fits"
                        let probeAt = o.NextDeadline.Value
                        Expect.equal probeAt (ms 20 + c.Rtt.Rto) "persist timer"
                        let c, o = Connection.handleTimer probeAt c
                        let probe = single o
                        Expect.equal (probe.Seq.Value, probe.DataLength) (iss, 0) "<SEQ=SND.UNA-1>, no data"
                        Expect.isTrue (o.NextDeadline.Value - probeAt > c.Rtt.Rto) "the next probe backs off"

                        let _, o =
                            Connection.handleSegment (probeAt + 1L) (segment (peerIss + 1u) (iss + 1u) ack 4000us 0) c

                        Expect.equal (sent o |> List.sumBy (fun s -> s.DataLength)) 3000 "window opened: data flows"
                    }

                    test
                        "user timeout: a peer that answers every probe with a zero window is reset after UserTimeout (RFC 9293 §3.10.8)" {
                        let withTimeout (t: int64 voption) =
                            { established 0us with
                                Config = { config with UserTimeout = t }
                            }

                        // Runs timers, each probe answered with a zero window, until CLOSED or 30 s.
                        let rec run (c: Connection) (at: int64) (probes: int) =
                            let c, o = Connection.handleTimer at c

                            if c.State = TcpState.Closed then
                                c, o, at, probes
                            elif at > ms 30_000 then
                                c, o, at, probes
                            else
                                let c, _ =
                                    Connection.handleSegment (at + 1L) (segment (peerIss + 1u) (iss + 1u) ack 0us 0) c

                                run
                                    c
                                    (Connection.nextDeadline c |> ValueOption.defaultValue (at + ms 1000))
                                    (probes + 1)

                        let start c =
                            let c, o = Connection.send (ms 20) 3000L c
                            c, o.NextDeadline.Value

                        let c, first = start (withTimeout (ValueSome(ms 5000)))
                        let c, o, at, probes = run c first 0
                        Expect.equal c.State TcpState.Closed "CLOSED"
                        Expect.contains (events o) TcpEvent.UserTimedOut "UserTimedOut"
                        Expect.equal (sent o |> List.map (fun s -> s.Flags)) [ TcpFlags.Rst ] "a RST to the peer"
                        Expect.isGreaterThanOrEqual (at - first) (ms 5000) "not before the timeout"
                        Expect.isLessThan (at - first) (ms 5000 + ms 20_000) "within a probe interval of it"
                        Expect.isGreaterThan probes 1 "probes went out meanwhile"

                        let c, first = start (withTimeout ValueNone)
                        let c, _, _, _ = run c first 0
                        Expect.equal c.State TcpState.Established "without a user timeout: probing goes on"
                    }

                    test "user timeout: acknowledged progress starts the wait again" {
                        let c =
                            { established 65535us with
                                Config =
                                    { config with
                                        UserTimeout = ValueSome(ms 3000)
                                    }
                            }

                        let c, o = Connection.send (ms 20) 3000L c
                        let rto = o.NextDeadline.Value
                        // The first retransmission timeout starts the wait; 2.5 s later the peer
                        // acknowledges 1000 bytes, so at 3.5 s the wait is 1 s old, not 3.5.
                        let c, _ = Connection.handleTimer rto c

                        let c, _ =
                            Connection.handleSegment
                                (rto + ms 2500)
                                (segment (peerIss + 1u) (iss + 1001u) ack 65535us 0)
                                c

                        let c, o = Connection.handleTimer (rto + ms 3500) c
                        Expect.equal c.State TcpState.Established "progress restarted the wait"
                        Expect.isFalse (List.contains TcpEvent.UserTimedOut (events o)) "no UserTimedOut"
                        let c, o = Connection.handleTimer (rto + ms 6600) c
                        Expect.equal c.State TcpState.Closed "over 3 s without progress since then: CLOSED"
                        Expect.contains (events o) TcpEvent.UserTimedOut "UserTimedOut"
                    }

                    test "writing after close is refused" {
                        let c = established 65535us
                        let c, _ = Connection.close (ms 20) c
                        Expect.isFalse (Connection.canSend c) "closed for sending"
                        Expect.throws (fun () -> Connection.send (ms 21) 1L c |> ignore) "InvalidOperationException"
                    }

                    test
                        "a read wakes the engine at once exactly when at most half the buffer, or under 64 KiB, is free" {
                        // The reader's half of the window-update rule (ReceiveWindow.readWantsWindowUpdate),
                        // each expectation from the rule's two bounds computed here: free = size - unread.
                        let cases =
                            [
                                // size, unread, prompt
                                1_048_576, 0L, false // all free
                                1_048_576, 524_287L, false // one byte more than half free
                                1_048_576, 524_288L, true // exactly half free
                                1_048_576, 1_048_576L, true // nothing free
                                65_535, 0L, true // a 64 KiB - 1 buffer is never lazy
                                100_000, 30_000L, false // 70 000 free: over half and over 64 KiB
                                100_000, 40_000L, true // 60 000 free: over half, under 64 KiB
                                131_072, 65_536L, true // 65 536 free: exactly half
                                131_072, 65_535L, false // 65 537 free
                            ]

                        for size, unread, prompt in cases do
                            Expect.equal
                                (ReceiveWindow.readWantsWindowUpdate size unread)
                                prompt
                                $"buffer {size}, {unread} unread"
                    }
                ]

            testList
                "closing"
                [
                    test
                        "a segment that ACKs our FIN and carries the peer's FIN: FIN-WAIT-1 to TIME-WAIT in one transition (RFC 9293 Figure 5 note 2)" {
                        let c = established 65535us
                        let c, _ = Connection.close (ms 20) c
                        Expect.equal c.State TcpState.FinWait1 "FIN-WAIT-1"

                        let c, o =
                            Connection.handleSegment
                                (ms 30)
                                (segment (peerIss + 1u) (iss + 2u) (TcpFlags.Fin ||| ack) 65535us 0)
                                c

                        let transitions =
                            o.Actions
                            |> List.choose (function
                                | TcpAction.Transition t -> Some(t.From, t.Trigger, t.To)
                                | _ -> None)

                        Expect.equal
                            transitions
                            [ TcpState.FinWait1, TcpTrigger.RcvFinAckOfFin, TcpState.TimeWait ]
                            "the diagonal, not RcvAckOfFin then RcvFin"

                        Expect.equal ((single o).Ack.Value) (peerIss + 2u) "the FIN is ACKed"
                        Expect.equal o.NextDeadline (ValueSome(ms 30 + 2L * config.Msl)) "2·MSL"
                        Expect.equal c.State TcpState.TimeWait "TIME-WAIT"
                    }

                    test
                        "CLOSE in SYN-RECEIVED with nothing written sends the FIN and enters FIN-WAIT-1 at once (RFC 9293 §3.10.4)" {
                        let c, _ = Connection.listen config (SeqNum iss)

                        let c, _ =
                            Connection.handleSegment (ms 1) (segment peerIss 0u TcpFlags.Syn 65535us 0) c

                        Expect.equal c.State TcpState.SynReceived "SYN-RECEIVED"
                        let c, o = Connection.close (ms 2) c
                        Expect.equal c.State TcpState.FinWait1 "FIN-WAIT-1 without waiting for the ACK of the SYN"
                        let fin = single o

                        Expect.equal
                            (fin.Flags, fin.Seq.Value)
                            (TcpFlags.Fin ||| ack, iss + 1u)
                            "the FIN follows the SYN"

                        // The SYN,ACK and the FIN go unanswered: the timeout sends both again.
                        let rto = config.InitialRto
                        let c, o = Connection.handleTimer (ms 1 + rto) c

                        Expect.equal
                            (sent o |> List.map (fun s -> s.Flags, s.Seq.Value))
                            [ TcpFlags.Syn ||| ack, iss; TcpFlags.Fin ||| ack, iss + 1u ]
                            "SYN,ACK then FIN"

                        // One ACK of both.
                        let c, _ =
                            Connection.handleSegment (ms 2000) (segment (peerIss + 1u) (iss + 2u) ack 65535us 0) c

                        Expect.equal c.State TcpState.FinWait2 "FIN-WAIT-2"
                    }

                    test "CLOSE in SYN-RECEIVED after a SEND waits for ESTABLISHED (RFC 9293 §3.10.4)" {
                        let c, _ = Connection.listen config (SeqNum iss)

                        let c, _ =
                            Connection.handleSegment (ms 1) (segment peerIss 0u TcpFlags.Syn 65535us 0) c

                        let c, _ = Connection.send (ms 2) 10L c
                        let c, o = Connection.close (ms 3) c
                        Expect.equal c.State TcpState.SynReceived "still SYN-RECEIVED"
                        Expect.isEmpty (sent o) "nothing sent yet"

                        let c, o =
                            Connection.handleSegment (ms 4) (segment (peerIss + 1u) (iss + 1u) ack 65535us 0) c

                        let transitions =
                            o.Actions
                            |> List.choose (function
                                | TcpAction.Transition t -> Some(t.From, t.Trigger, t.To)
                                | _ -> None)

                        Expect.equal
                            transitions
                            [
                                TcpState.SynReceived, TcpTrigger.RcvAckOfSyn, TcpState.Established
                                TcpState.Established, TcpTrigger.Close, TcpState.FinWait1
                            ]
                            "ESTABLISHED, then the queued CLOSE"

                        Expect.equal
                            (sent o |> List.map (fun s -> s.Flags, s.Seq.Value, s.DataLength))
                            [ TcpFlags.Fin ||| TcpFlags.Psh ||| ack, iss + 1u, 10 ]
                            "the data, then the FIN"

                        Expect.equal c.State TcpState.FinWait1 "FIN-WAIT-1"
                    }

                    test "active close: FIN, FIN-WAIT-1, FIN-WAIT-2, TIME-WAIT for 2·MSL, CLOSED" {
                        let c = established 65535us
                        let c, o = Connection.close (ms 20) c
                        let fin = single o
                        Expect.equal (fin.Flags, fin.Seq.Value) (TcpFlags.Fin ||| ack, iss + 1u) "FIN"
                        Expect.equal c.State TcpState.FinWait1 "FIN-WAIT-1"

                        let c, _ =
                            Connection.handleSegment (ms 30) (segment (peerIss + 1u) (iss + 2u) ack 65535us 0) c

                        Expect.equal c.State TcpState.FinWait2 "FIN-WAIT-2"

                        let c, o =
                            Connection.handleSegment
                                (ms 40)
                                (segment (peerIss + 1u) (iss + 2u) (TcpFlags.Fin ||| ack) 65535us 0)
                                c

                        Expect.equal c.State TcpState.TimeWait "TIME-WAIT"
                        Expect.equal ((single o).Ack.Value) (peerIss + 2u) "the FIN is ACKed"
                        Expect.equal o.NextDeadline (ValueSome(ms 40 + 2L * config.Msl)) "2·MSL"

                        let c, o =
                            Connection.handleSegment
                                (ms 50)
                                (segment (peerIss + 1u) (iss + 2u) (TcpFlags.Fin ||| ack) 65535us 0)
                                c

                        Expect.equal ((single o).Ack.Value) (peerIss + 2u) "a repeated FIN is ACKed again"
                        Expect.equal o.NextDeadline (ValueSome(ms 50 + 2L * config.Msl)) "and 2·MSL restarts"

                        let c, _ =
                            Connection.handleSegment (ms 60) (segment (peerIss + 3u) 0u TcpFlags.Rst 0us 0) c

                        Expect.equal c.State TcpState.TimeWait "a RST off RCV.NXT does not cut TIME-WAIT short"
                        let c, o = Connection.handleTimer (ms 50 + 2L * config.Msl) c
                        Expect.equal c.State TcpState.Closed "CLOSED"
                        Expect.equal (events o) [ TcpEvent.Closed ] "Closed"
                    }

                    test "passive close: the peer's FIN, CLOSE-WAIT, our FIN, LAST-ACK, CLOSED" {
                        let c = established 65535us

                        let c, o =
                            Connection.handleSegment
                                (ms 20)
                                (segment (peerIss + 1u) (iss + 1u) (TcpFlags.Fin ||| ack) 65535us 0)
                                c

                        Expect.equal c.State TcpState.CloseWait "CLOSE-WAIT"
                        Expect.contains (events o) TcpEvent.PeerClosed "PeerClosed"
                        Expect.isTrue (Connection.canSend c) "half-close: we may still send"
                        let c, _ = Connection.send (ms 21) 10L c
                        let c, o = Connection.close (ms 22) c
                        Expect.equal c.State TcpState.LastAck "LAST-ACK"
                        Expect.equal (single o).Flags (TcpFlags.Fin ||| ack) "FIN (the data went before)"

                        let c, o =
                            Connection.handleSegment (ms 30) (segment (peerIss + 2u) (iss + 12u) ack 65535us 0) c

                        Expect.equal c.State TcpState.Closed "CLOSED"
                        Expect.equal (events o) [ TcpEvent.SendBufferFreed 10L; TcpEvent.Closed ] "freed, closed"
                    }

                    test "abort sends RST at SND.NXT and closes" {
                        let c = established 65535us
                        let c, o = Connection.abort (ms 20) c
                        Expect.equal ((single o).Flags, (single o).Seq.Value) (TcpFlags.Rst, iss + 1u) "RST"
                        Expect.equal c.State TcpState.Closed "CLOSED"
                    }

                    test "a configured FIN-WAIT-2 timeout drops a silent peer" {
                        let c = established 65535us

                        let c =
                            { c with
                                Config =
                                    { c.Config with
                                        FinWait2Timeout = ValueSome(ms 5000)
                                    }
                            }

                        let c, _ = Connection.close (ms 20) c

                        let c, o =
                            Connection.handleSegment (ms 30) (segment (peerIss + 1u) (iss + 2u) ack 65535us 0) c

                        Expect.equal o.NextDeadline (ValueSome(ms 5030)) "idle deadline"
                        let c, o = Connection.handleTimer (ms 5030) c
                        Expect.equal c.State TcpState.Closed "dropped"
                        Expect.equal (events o) [ TcpEvent.TimedOut; TcpEvent.Closed ] "TimedOut"
                    }
                ]
        ]
