/// TIME-WAIT, one RFC rule at a time: a SYN that may reopen the 4-tuple (RFC 6191 §2, RFC 1122
/// §4.2.2.13), the ISS of the new incarnation, and which RSTs end TIME-WAIT. Every expectation is
/// computed here from what the test's peer sent (its ISN, bytes, FIN and timestamps), not read
/// from the engine.
module NetStack.Tests.TimeWaitTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Core.Tcp

let private ms (n: int) = int64 n * 1000L

/// Our ISS and the peer's ISN.
let private serverIss = 7000u
let private peerIss = 90000u

/// The peer's request and our reply, in bytes.
let private requestBytes = 20u
let private replyBytes = 100u

/// What the test's peer knows of the old incarnation once the server is in TIME-WAIT: the
/// server's RCV.NXT is past the peer's SYN, request and FIN; its SND.NXT past our SYN, reply and FIN.
let private oldRcvNxt = peerIss + 1u + requestBytes + 1u
let private oldSndNxt = serverIss + 1u + replyBytes + 1u

/// The peer's timestamp clock: TSval 1000 + the time in ms. Its FIN (at 5 ms) carries the last
/// TSval the server saw, 1005: TS.Recent (RFC 7323 §4.3).
let private peerTsval (at: int) = 1000u + uint32 at
let private lastTsval = peerTsval 5

/// When the server entered TIME-WAIT, and so when 2·MSL ends.
let private enteredAt = ms 5

let private timestamps (value: uint32) (echo: uint32) =
    ValueSome { Value = value; EchoReply = echo }

let private segment (seq: uint32) (ack: uint32) (flags: TcpFlags) (length: int) (ts: TcpTimestamps voption) =
    {
        Seq = SeqNum seq
        Ack = SeqNum ack
        Flags = flags
        Window = 65535us
        Options = { TcpOptions.None with Timestamps = ts }
        PayloadLength = length
    }

open NetStack.Tests.TestUtil.TcpActions

/// The TSval of our last segment in `o` (what the peer echoes), 0 without one.
let private ourTsval (o: TcpOutput) =
    sent o
    |> List.tryPick (fun s ->
        s.Options.Timestamps
        |> ValueOption.map (fun t -> t.Value)
        |> ValueOption.toOption)
    |> Option.defaultValue 0u

/// A server connection in TIME-WAIT, with timestamps on both sides when `ts`: the peer's SYN at
/// 0 ms, its ACK at 1 ms, its 20-byte request at 2 ms; our 100-byte reply and FIN at 3 ms (we
/// close first); the peer's ACK of them at 4 ms and its FIN at 5 ms.
let private timeWait (ts: bool) =
    let config =
        { TcpConfig.Default with
            Timestamps = ts
        }

    let stamp at echo =
        if ts then timestamps (peerTsval at) echo else ValueNone

    let c, o =
        Connection.accept config (SeqNum serverIss) 0L (segment peerIss 0u TcpFlags.Syn 0 (stamp 0 0u))

    let echo = ourTsval o

    let c, _ =
        Connection.handleSegment (ms 1) (segment (peerIss + 1u) (serverIss + 1u) TcpFlags.Ack 0 (stamp 1 echo)) c

    let c, _ =
        Connection.handleSegment
            (ms 2)
            (segment (peerIss + 1u) (serverIss + 1u) (TcpFlags.Ack ||| TcpFlags.Psh) (int requestBytes) (stamp 2 echo))
            c

    let c, _ = Connection.send (ms 3) (int64 replyBytes) c
    let c, o = Connection.close (ms 3) c
    let echo = ourTsval o
    let peerSeq = peerIss + 1u + requestBytes

    let c, _ =
        Connection.handleSegment (ms 4) (segment peerSeq oldSndNxt TcpFlags.Ack 0 (stamp 4 echo)) c

    let c, _ =
        Connection.handleSegment (ms 5) (segment peerSeq oldSndNxt (TcpFlags.Fin ||| TcpFlags.Ack) 0 (stamp 5 echo)) c

    Expect.equal c.State TcpState.TimeWait "the server is in TIME-WAIT"
    Expect.equal c.Ts.Enabled ts "timestamps as configured"
    c

/// A new SYN from the peer: sequence number `seq`, TSval `tsval` (none: no timestamps option).
let private newSyn (seq: uint32) (tsval: uint32 option) =
    segment
        seq
        0u
        TcpFlags.Syn
        0
        (match tsval with
         | Some v -> timestamps v 0u
         | None -> ValueNone)

/// Fails unless `o` ended TIME-WAIT for a reopening SYN: the model's RcvReopeningSyn edge, the
/// Reopened event then Closed, and nothing sent (the listener answers the SYN).
let private expectReopened (c: Connection, o: TcpOutput) (what: string) =
    Expect.equal c.State TcpState.Closed $"{what}: CLOSED"

    Expect.equal
        (transitions o)
        [ TcpState.TimeWait, TcpTrigger.RcvReopeningSyn, TcpState.Closed ]
        $"{what}: TIME-WAIT ends on the reopening SYN"

    Expect.equal (events o) [ TcpEvent.Reopened; TcpEvent.Closed ] $"{what}: Reopened, then Closed"
    Expect.isEmpty (sent o) $"{what}: nothing sent (the listener answers)"

/// Fails unless `o` answered with the challenge ACK <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK> and left
/// TIME-WAIT and its 2·MSL timer as they were.
let private expectChallenged (before: Connection) (c: Connection, o: TcpOutput) (what: string) =
    Expect.equal c.State TcpState.TimeWait $"{what}: still TIME-WAIT"
    Expect.isEmpty (transitions o) $"{what}: no transition"

    match sent o with
    | [ ack ] ->
        Expect.equal ack.Flags TcpFlags.Ack $"{what}: a bare ACK"
        Expect.equal (ack.Seq.Value, ack.Ack.Value) (oldSndNxt, oldRcvNxt) $"{what}: at SND.NXT, acknowledging RCV.NXT"
    | other -> failtest $"{what}: expected one challenge ACK, got {other}"

    Expect.equal o.NextDeadline (Connection.nextDeadline before) $"{what}: the 2·MSL timer is not restarted"
    Expect.equal o.NextDeadline (ValueSome(enteredAt + 2L * TcpConfig.Default.Msl)) $"{what}: 2·MSL from the FIN"

/// Sequence number a + n modulo 2^32.
let private plus (a: uint32) (n: int64) = uint32 ((int64 a + n) &&& 0xFFFFFFFFL)

/// What the peer sees of an outgoing segment.
let private arriving (s: OutgoingSegment) : Segment =
    {
        Seq = s.Seq
        Ack = s.Ack
        Flags = s.Flags
        Window = s.Window
        Options = s.Options
        PayloadLength = s.DataLength
    }

/// A server connection from ISS `iss` (no options) that sent `bytes` and closed first, the peer
/// acknowledging everything it received at once (1 ms later) and closing when our FIN arrived:
/// in TIME-WAIT, or where it got stuck (the caller checks).
let private afterTransfer (config: TcpConfig) (iss: uint32) (bytes: int) =
    let c, _ =
        Connection.accept config (SeqNum iss) 0L (segment peerIss 0u TcpFlags.Syn 0 ValueNone)

    let c, _ =
        Connection.handleSegment (ms 1) (segment (peerIss + 1u) (iss + 1u) TcpFlags.Ack 0 ValueNone) c

    let c, _ = Connection.send (ms 2) (int64 bytes) c
    let mutable c, o = Connection.close (ms 2) c
    let mutable at = 3
    // The sequence number just past what the peer has received, and whether our FIN was in it.
    let mutable received = iss + 1u
    let mutable finSeen = false

    while c.State <> TcpState.TimeWait && at < 100_000 do
        for s in sent o do
            let finish = s.Seq.Value + uint32 s.DataLength

            if s.Seq.Value = received then
                received <- finish + (if s.Flags.HasFlag TcpFlags.Fin then 1u else 0u)
                finSeen <- finSeen || s.Flags.HasFlag TcpFlags.Fin

        let flags =
            if finSeen then
                TcpFlags.Ack ||| TcpFlags.Fin
            else
                TcpFlags.Ack

        let next, output =
            if (sent o).IsEmpty then
                Connection.handleTimer (ms at) c
            else
                Connection.handleSegment (ms at) (segment (peerIss + 1u) received flags 0 ValueNone) c

        c <- next
        o <- output
        at <- at + 1

    Expect.equal c.State TcpState.TimeWait $"{bytes} bytes from ISS {iss}: TIME-WAIT"
    c

[<Tests>]
let tests =
    testList
        "TIME-WAIT"
        [
            testList
                "a SYN in TIME-WAIT (RFC 6191 §2)"
                [
                    test "timestamps on both: a TSval newer than TS.Recent reopens, whatever the sequence number" {
                        let old = timeWait true

                        for seq in
                            [
                                peerIss
                                oldRcvNxt - 1u
                                oldRcvNxt
                                oldRcvNxt + 1u
                                plus oldRcvNxt 1_000_000L
                            ] do
                            expectReopened
                                (Connection.handleSegment (ms 200) (newSyn seq (Some(lastTsval + 1u))) old)
                                $"SEQ {seq}, TSval {lastTsval + 1u}"
                    }

                    test
                        "timestamps on both: a TSval equal to TS.Recent reopens only with a sequence number beyond RCV.NXT" {
                        let old = timeWait true

                        expectReopened
                            (Connection.handleSegment (ms 200) (newSyn (oldRcvNxt + 1u) (Some lastTsval)) old)
                            "SEQ RCV.NXT + 1, equal TSval"

                        for seq in [ oldRcvNxt; oldRcvNxt - 1u; peerIss ] do
                            expectChallenged
                                old
                                (Connection.handleSegment (ms 200) (newSyn seq (Some lastTsval)) old)
                                $"SEQ {seq}, equal TSval"
                    }

                    test "timestamps on both: an older TSval is an old duplicate, not reopened even far beyond RCV.NXT" {
                        let old = timeWait true

                        for seq in [ oldRcvNxt + 1u; plus oldRcvNxt 1_000_000L; peerIss ] do
                            expectChallenged
                                old
                                (Connection.handleSegment (ms 200) (newSyn seq (Some(lastTsval - 1u))) old)
                                $"SEQ {seq}, TSval {lastTsval - 1u}"
                    }

                    test "no timestamps: a sequence number beyond RCV.NXT reopens; at it or before it, a challenge ACK" {
                        let old = timeWait false

                        for seq in [ oldRcvNxt + 1u; plus oldRcvNxt 65536L; plus oldRcvNxt 1_000_000_000L ] do
                            expectReopened (Connection.handleSegment (ms 200) (newSyn seq None) old) $"SEQ {seq}"

                        // The old SYN itself (a duplicate delayed in the network), and numbers the
                        // old incarnation used or could have used.
                        for seq in [ peerIss; peerIss + 1u; oldRcvNxt - 1u; oldRcvNxt ] do
                            expectChallenged old (Connection.handleSegment (ms 200) (newSyn seq None) old) $"SEQ {seq}"
                    }

                    test
                        "timestamps on the old connection only: the sequence number decides, and a refused SYN is answered" {
                        let old = timeWait true

                        expectReopened
                            (Connection.handleSegment (ms 200) (newSyn (oldRcvNxt + 1u) None) old)
                            "SEQ RCV.NXT + 1 without timestamps"

                        // RFC 7323 §3.2 drops a segment without timestamps on such a connection;
                        // a SYN in TIME-WAIT gets the challenge ACK all the same, so its sender's
                        // RST can end TIME-WAIT.
                        expectChallenged
                            old
                            (Connection.handleSegment (ms 200) (newSyn (oldRcvNxt - 5u) None) old)
                            "SEQ before RCV.NXT without timestamps"
                    }

                    test "a SYN with ACK never reopens" {
                        for ts in [ false; true ] do
                            let old = timeWait ts

                            let syn =
                                { newSyn (oldRcvNxt + 1u) (if ts then Some(lastTsval + 1u) else None) with
                                    Flags = TcpFlags.Syn ||| TcpFlags.Ack
                                    Ack = SeqNum oldSndNxt
                                }

                            let c, o = Connection.handleSegment (ms 200) syn old
                            Expect.equal c.State TcpState.TimeWait $"timestamps {ts}: still TIME-WAIT"
                            Expect.isFalse (List.contains TcpEvent.Reopened (events o)) "not reopened"
                    }

                    test "challenge ACKs to refused SYNs are rate limited (one per 500 ms), TIME-WAIT unchanged" {
                        let old = timeWait false
                        let refused = newSyn peerIss None
                        let c1, o1 = Connection.handleSegment (ms 100) refused old
                        expectChallenged old (c1, o1) "the first"
                        let c2, o2 = Connection.handleSegment (ms 300) refused c1
                        Expect.isEmpty (sent o2) "200 ms later: no ACK"
                        Expect.equal (events o2) [ TcpEvent.AckRateLimited ] "counted as rate limited"
                        Expect.equal c2.State TcpState.TimeWait "still TIME-WAIT"
                        let c3, o3 = Connection.handleSegment (ms 600) refused c2
                        expectChallenged c2 (c3, o3) "500 ms after the first"
                    }
                ]

            testList
                "the new incarnation's ISS (RFC 1122 §4.2.2.13)"
                [
                    test "the ISS is larger than any sequence number the old incarnation used, for any generator value" {
                        let old = timeWait true
                        // The largest sequence number we used: our FIN's.
                        let largestUsed = oldSndNxt - 1u

                        let distances =
                            [
                                -1_000_000L
                                -65537L
                                -1L
                                0L
                                1L
                                2L
                                65536L
                                65537L
                                65538L
                                1L <<< 30
                                (1L <<< 31) - 1L
                                1L <<< 31
                                (1L <<< 31) + 1L
                            ]

                        let values = [ 0u; UInt32.MaxValue ] @ List.map (plus oldSndNxt) distances

                        for generated in values do
                            let iss = Connection.reopenIss old (SeqNum generated)
                            // "Larger" in sequence space: ahead by 1 .. 2^31 - 1 (RFC 9293 §3.4).
                            let ahead = int (iss.Value - largestUsed)
                            Expect.isGreaterThan ahead 0 $"generator {generated}: ISS {iss.Value} after {largestUsed}"
                    }

                    test
                        "the generator's value stands when it is well ahead already, so the ISS stays unpredictable (RFC 6528)" {
                        let old = timeWait false

                        // At most 2^31 - 1 beyond the largest sequence number used (SND.NXT - 1).
                        for d in [ 65537L; 1_000_000L; (1L <<< 31) - 2L ] do
                            let generated = plus oldSndNxt d

                            Expect.equal
                                (Connection.reopenIss old (SeqNum generated)).Value
                                generated
                                $"{d} ahead of SND.NXT"
                    }

                    testPropertyWithConfig
                        { FsCheckConfig.defaultConfig with
                            maxTest = 200
                        }
                        "after any old incarnation, the reopened connection's SYN,ACK starts beyond the old SND.NXT"
                    <| Prop.forAll
                        (Arb.fromGen (
                            Gen.zip3
                                (Gen.choose64 (0L, 0xFFFFFFFFL))
                                (Gen.choose (0, 200_000))
                                (Gen.choose64 (0L, 0xFFFFFFFFL))
                        ))
                        (fun (iss, bytes, generated) ->
                            let config =
                                { TcpConfig.Default with
                                    Timestamps = false
                                    SelectiveAck = false
                                }

                            let old = afterTransfer config (uint32 iss) bytes
                            // The largest sequence number the old incarnation used: its FIN's.
                            let largestUsed = plus (uint32 iss) (int64 bytes + 1L)
                            let syn = newSyn (peerIss + 100u) None
                            let closed, _ = Connection.handleSegment (ms 60_000) syn old
                            let newIss = Connection.reopenIss old (SeqNum(uint32 generated))
                            let next, o = Connection.accept config newIss (ms 60_000) syn

                            match sent o with
                            | [ synAck ] ->
                                closed.State = TcpState.Closed
                                && next.State = TcpState.SynReceived
                                && synAck.Flags = (TcpFlags.Syn ||| TcpFlags.Ack)
                                && synAck.Ack.Value = peerIss + 101u
                                && int (synAck.Seq.Value - largestUsed) > 0
                            | _ -> false)
                ]

            testList
                "RSTs in TIME-WAIT"
                [
                    test "a RST exactly at RCV.NXT ends TIME-WAIT, with or without ACK or timestamps" {
                        for ts in [ false; true ] do
                            for flags in [ TcpFlags.Rst; TcpFlags.Rst ||| TcpFlags.Ack ] do
                                let old = timeWait ts
                                let rst = segment oldRcvNxt oldSndNxt flags 0 ValueNone
                                let c, o = Connection.handleSegment (ms 200) rst old
                                Expect.equal c.State TcpState.Closed $"timestamps {ts}, {flags}: CLOSED"

                                Expect.equal
                                    (transitions o)
                                    [ TcpState.TimeWait, TcpTrigger.RcvRst, TcpState.Closed ]
                                    "the RcvRst edge"

                                Expect.equal
                                    (events o)
                                    [ TcpEvent.Closed ]
                                    "Closed, and no Reset: the user saw the close"

                                Expect.isEmpty (sent o) "nothing sent"
                    }

                    test "a RST anywhere else is ignored without an answer" {
                        for ts in [ false; true ] do
                            let old = timeWait ts

                            for seq in
                                [
                                    oldRcvNxt + 1u
                                    oldRcvNxt + 1000u
                                    oldRcvNxt - 1u
                                    peerIss
                                    plus oldRcvNxt (1L <<< 31)
                                ] do
                                let c, o =
                                    Connection.handleSegment
                                        (ms 200)
                                        (segment seq oldSndNxt TcpFlags.Rst 0 ValueNone)
                                        old

                                Expect.equal c.State TcpState.TimeWait $"timestamps {ts}, SEQ {seq}: still TIME-WAIT"
                                Expect.isEmpty o.Actions $"timestamps {ts}, SEQ {seq}: nothing at all"
                    }

                    test
                        "a client whose new SYN is refused connects after one SYN retransmission: challenge ACK, its RST, its SYN again" {
                        let old = timeWait false
                        // A client reusing the 4-tuple with an ISN below the old RCV.NXT and no
                        // timestamps: the one case RFC 6191 cannot tell from an old duplicate.
                        let clientConfig =
                            { TcpConfig.Default with
                                Timestamps = false
                            }

                        let client, o = Connection.openActive clientConfig (SeqNum(peerIss + 7u)) (ms 100)
                        let syn = arriving (List.exactlyOne (sent o))
                        let server, o = Connection.handleSegment (ms 100) syn old
                        expectChallenged old (server, o) "the refused SYN"
                        let challenge = arriving (List.exactlyOne (sent o))
                        // RFC 9293 §3.10.7.3: an ACK that does not acknowledge our SYN earns <SEQ=SEG.ACK><CTL=RST>.
                        let client, o = Connection.handleSegment (ms 101) challenge client
                        Expect.equal client.State TcpState.SynSent "the client still waits"
                        let rst = List.exactlyOne (sent o)
                        Expect.equal (rst.Flags, rst.Seq.Value) (TcpFlags.Rst, oldRcvNxt) "its RST is at RCV.NXT"
                        let server, _ = Connection.handleSegment (ms 102) (arriving rst) server
                        Expect.equal server.State TcpState.Closed "the RST ends TIME-WAIT"
                        // The client's SYN again, after its initial RTO: now no connection holds the
                        // 4-tuple, and a listener takes it.
                        let retransmitAt = ms 100 + clientConfig.InitialRto
                        Expect.equal (Connection.nextDeadline client) (ValueSome retransmitAt) "the SYN timer"
                        let client, o = Connection.handleTimer retransmitAt client
                        let syn = arriving (List.exactlyOne (sent o))
                        Expect.equal syn.Flags TcpFlags.Syn "the SYN again"
                        let fresh, o = Connection.accept TcpConfig.Default (SeqNum 123456u) retransmitAt syn
                        Expect.equal fresh.State TcpState.SynReceived "a new connection"
                        let synAck = arriving (List.exactlyOne (sent o))
                        let client, _ = Connection.handleSegment (retransmitAt + ms 1) synAck client
                        Expect.equal client.State TcpState.Established "connected, one RTO late instead of 2·MSL"
                    }
                ]
        ]
