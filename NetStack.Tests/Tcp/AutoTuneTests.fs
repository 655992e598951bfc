/// Receive-buffer auto-tuning (dynamic right-sizing, like Linux's tcp_rcv_space_adjust), with
/// time as input: a peer sends to one of our connections in rounds of one round trip, echoing
/// the TSval of our latest ACK, and a reader consumes at a chosen rate.
module NetStack.Tests.AutoTuneTests

open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Core.Tcp

let private ms (n: int) = int64 n * 1000L

let private config (initial: int) (maximum: int) =
    { TcpConfig.Default with
        ReceiveBufferSize = initial
        ReceiveBufferMax = maximum
        DelayedAckTimeout = 0L
    }

/// One of our connections (passive) and a hand-driven peer that sends to it, checking every
/// action against the auto-tuning rules as it goes.
type private Receiver(cfg: TcpConfig) =
    let mutable conn = Unchecked.defaultof<Connection>
    let mutable started = false
    let mutable now = 0L
    let mutable ourTs = 0u
    let mutable peerTs = 100u
    let mutable sent = 0L
    let mutable buffer = cfg.ReceiveBufferSize
    let mutable right = 0L
    let mutable grown = 0
    let peerIss = SeqNum 5000u

    let fail (why: string) = failtest $"at {now} µs: {why}"

    let check (o: TcpOutput) =
        for a in o.Actions do
            match a with
            | TcpAction.ReceiveBufferGrown size ->
                if size <= buffer || size > cfg.ReceiveBufferLimit then
                    fail $"grown from {buffer} to {size}, limit {cfg.ReceiveBufferLimit}"

                buffer <- size
                grown <- grown + 1
            | TcpAction.StoreReceived(_, position, length) ->
                // Stored positions stay inside the buffer as the caller knows it at that point.
                if position + int64 length > conn.Consumed + int64 buffer then
                    fail $"store [{position}, +{length}) beyond {conn.Consumed} + {buffer}"
            | TcpAction.Transmit s when s.Flags.HasFlag TcpFlags.Ack && not (s.Flags.HasFlag TcpFlags.Syn) ->
                match s.Options.Timestamps with
                | ValueSome ts -> ourTs <- ts.Value
                | ValueNone -> ()

                // The offered right edge, as a receive-stream position, never moves left by
                // more than the scaling truncation (RFC 7323 §2.4).
                let edge = int64 (s.Ack - (peerIss + 1)) + (int64 s.Window <<< conn.Rcv.WndShift)

                if edge < right - (1L <<< conn.Rcv.WndShift) then
                    fail $"the offered right edge moved left from {right} to {edge}"

                right <- max right edge
            | TcpAction.Transmit s when s.Flags.HasFlag TcpFlags.Syn ->
                match s.Options.Timestamps with
                | ValueSome ts -> ourTs <- ts.Value
                | ValueNone -> ()
            | _ -> ()

    let apply (c: Connection, o: TcpOutput) =
        let before = if started then conn.Rcv.Right else c.Rcv.Right
        started <- true
        conn <- c
        check o

        if SeqNum.lt conn.Rcv.Right before then
            fail $"RcvRight moved left from {before} to {conn.Rcv.Right}"

        if conn.Tuning.RcvBuf <> buffer then
            fail $"the connection's buffer {conn.Tuning.RcvBuf} is not what its actions said ({buffer})"

        match Connection.audit conn with
        | Some problem -> fail problem
        | None -> ()

    /// A segment from the peer, echoing `echo` (the latest TSval the peer had seen when it sent).
    let segment (echo: uint32) (flags: TcpFlags) (seq: SeqNum) (length: int) (options: TcpOptions) : Segment =
        peerTs <- peerTs + 1u

        {
            Seq = seq
            Ack = SeqNum 9001u
            Flags = flags
            Window = 65535us
            Options =
                { options with
                    Timestamps = ValueSome { Value = peerTs; EchoReply = echo }
                }
            PayloadLength = length
        }

    do
        let syn =
            segment
                0u
                TcpFlags.Syn
                peerIss
                0
                { TcpOptions.None with
                    MaximumSegmentSize = ValueSome 1460us
                    WindowScale = ValueSome 7uy
                    SackPermitted = true
                }

        apply (Connection.accept cfg (SeqNum 9000u) now syn)
        // The handshake takes one 10 ms round trip.
        now <- ms 10
        apply (Connection.handleSegment now (segment ourTs TcpFlags.Ack (peerIss + 1) 0 TcpOptions.None) conn)
        Expect.equal conn.State TcpState.Established "established"

    /// The connection.
    member _.Conn = conn
    /// The current time.
    member _.Now = now
    /// Times the buffer grew.
    member _.Grown = grown

    /// Moves the clock on (and runs any timer due).
    member _.Advance(dt: int64) =
        now <- now + dt
        apply (Connection.handleTimer now conn)

    /// The peer sends up to `bytes` in 1448-byte segments (the MSS less timestamps), as far as
    /// the window we offered allows; `skip` leaves one segment out (a loss) to make a gap.
    member _.Send(bytes: int64, skip: int) =
        let limit = min (sent + bytes) (int64 (conn.Rcv.Right - (peerIss + 1)))
        // A burst leaves the peer before our ACKs of it come back: all of it echoes one TSval.
        let echo = ourTs
        let mutable i = 0

        while sent < limit do
            let length = int (min 1448L (limit - sent))

            if i <> skip then
                apply (
                    Connection.handleSegment
                        now
                        (segment echo TcpFlags.Ack (peerIss + 1 + int sent) length TcpOptions.None)
                        conn
                )

            sent <- sent + int64 length
            i <- i + 1

    /// The peer retransmits everything not yet delivered (fills any gap).
    member _.Repair() =
        let from = conn.Delivered

        if from < sent then
            let mutable p = from

            while p < sent do
                let length = int (min 1448L (sent - p))

                apply (
                    Connection.handleSegment
                        now
                        (segment ourTs TcpFlags.Ack (peerIss + 1 + int p) length TcpOptions.None)
                        conn
                )

                p <- p + int64 length

    /// The reader consumes up to `bytes` of what was delivered.
    member _.Read(bytes: int64) =
        let n = min bytes (conn.Delivered - conn.Consumed)

        if n > 0L then
            apply (Connection.receiveWindowUpdate now n conn)

/// A simulation profile (see TcpSimulationTests) with auto-tuning on both sides: small initial
/// buffers that may grow to 1 MiB, a lossy, duplicating, reordering link, a reader at once or slow.
let private tunedProfile (seed: int) : TcpSimulationTests.LinkProfile =
    let rng = System.Random seed

    let config () =
        { TcpConfig.Default with
            Mss = [| 536; 1460 |].[rng.Next 2]
            ReceiveBufferSize = [| 3000; 8192; 20000; 65535 |].[rng.Next 4]
            ReceiveBufferMax = 1 <<< 20
            WindowScaling = rng.Next 4 <> 0
            Timestamps = rng.Next 4 <> 0
            SelectiveAck = rng.Next 2 = 0
            Msl = 60_000_000L
            DelayedAckTimeout = int64 (rng.Next(0, 200_001))
            MaxRetransmissions = 12
        }

    {
        DropPercent = rng.Next(0, 8)
        DuplicatePercent = rng.Next(0, 5)
        BaseDelay = int64 (rng.Next(100, 20_000))
        Jitter = int64 (rng.Next(0, 10_000))
        ReadEvery =
            if rng.Next 4 = 0 then
                ValueSome(int64 (rng.Next(1_000, 100_000)))
            else
                ValueNone
        ClientBytes = rng.Next(0, 200_001)
        ServerBytes = rng.Next(0, 50_001)
        ClientConfig = config ()
        ServerConfig = config ()
        SendBuffer = 1 <<< 20
    }

/// A peer offering `perRtt` bytes each 10 ms round trip and a reader that takes all of it at
/// once, for `rounds` round trips.
let private steady (cfg: TcpConfig) (perRtt: int64) (rounds: int) =
    let r = Receiver cfg

    for _ in 1..rounds do
        r.Send(perRtt, -1)
        r.Read System.Int64.MaxValue
        r.Advance(ms 10)

    r

/// Send-buffer auto-tuning's rule (`Connection.sendBufferWanted`) over any windows, buffer and
/// maximum: never shrinks; stays put when tuning is off or the windows fit half the buffer;
/// otherwise doubles the buffer until it holds two flights or reaches the maximum.
let private sendBufferRule (capacity: int) (maximum: int) (cwnd: int) (sndWnd: int) =
    let c = Receiver(config 65536 65536).Conn

    let c =
        { c with
            Recovery.Cwnd = cwnd
            Snd.Wnd = sndWnd
        }

    let wanted = Connection.sendBufferWanted capacity maximum c
    let flight = int64 (max 0 (min cwnd sndWnd))

    let isDoubling =
        let mutable size = int64 capacity

        while size < int64 wanted do
            size <- size * 2L

        size = int64 wanted

    if maximum <= capacity || 2L * flight <= int64 capacity then
        wanted = capacity
    else
        wanted > capacity
        && wanted <= maximum
        && (int64 wanted >= 2L * flight || wanted = maximum)
        && (isDoubling || wanted = maximum)
        && (wanted = maximum || int64 wanted / 2L < 2L * flight)

[<Tests>]
let tests =
    testList
        "AutoTune"
        [
            testProperty "send-buffer auto-tuning: twice the flight, by doublings, between the buffer and the maximum"
            <| fun (capacity: PositiveInt) (maximum: PositiveInt) (cwnd: NonNegativeInt) (sndWnd: NonNegativeInt) ->
                let capacity = capacity.Get % (8 <<< 20) + 1
                let maximum = maximum.Get % (16 <<< 20) + 1
                sendBufferRule capacity maximum cwnd.Get sndWnd.Get

            test "send-buffer auto-tuning: a 256 KiB buffer under a 1 MB window grows to 2 MiB, capped by the maximum" {
                Expect.isTrue (sendBufferRule (256 * 1024) (4 <<< 20) 1_000_000 3_000_000) "the rule"
                let c = Receiver(config 65536 65536).Conn

                let c =
                    { c with
                        Recovery.Cwnd = 1_000_000
                        Snd.Wnd = 3_000_000
                    }

                Expect.equal (Connection.sendBufferWanted (256 * 1024) (4 <<< 20) c) (2 <<< 20) "2 MiB"
                Expect.equal (Connection.sendBufferWanted (256 * 1024) (1 <<< 20) c) (1 <<< 20) "the maximum"
                Expect.equal (Connection.sendBufferWanted (256 * 1024) (256 * 1024) c) (256 * 1024) "tuning off"
                let small = { c with Snd.Wnd = 100_000 }

                Expect.equal
                    (Connection.sendBufferWanted (256 * 1024) (4 <<< 20) small)
                    (256 * 1024)
                    "a small peer window"
            }

            test "a reader that keeps up with 200 KB per round trip grows a 64 KiB buffer to about twice that" {
                let r = steady (config 65536 (4 <<< 20)) 200_000L 30
                let size = r.Conn.Tuning.RcvBuf
                Expect.isGreaterThanOrEqual size 400_000 "at least twice the per-round-trip consumption"
                Expect.isLessThanOrEqual size (400_000 + 8 * 1460) "about twice, plus a few segments of headroom"
                Expect.equal r.Conn.Tuning.RcvRtt (ms 10) "the receiver measured the 10 ms round trip from TSecr"
            }

            test "a slow reader (20 KB per round trip into 64 KiB) never grows the buffer" {
                let r = steady (config 65536 (4 <<< 20)) 20_000L 50
                Expect.equal r.Conn.Tuning.RcvBuf 65536 "still the initial size"
                Expect.equal r.Grown 0 "no growth"
            }

            test "an idle connection never grows the buffer" {
                let r = Receiver(config 65536 (4 <<< 20))

                for _ in 1..100 do
                    r.Advance(ms 50)
                    r.Read 0L

                Expect.equal r.Conn.Tuning.RcvBuf 65536 "still the initial size"
            }

            test "a reader that stops reading never grows the buffer, however fast the peer" {
                let r = Receiver(config 65536 (4 <<< 20))

                for _ in 1..20 do
                    r.Send(1_000_000L, -1)
                    r.Advance(ms 10)

                Expect.equal r.Conn.Tuning.RcvBuf 65536 "still the initial size"

                Expect.isGreaterThan
                    (r.Conn.Delivered - r.Conn.Consumed)
                    64000L
                    "the peer filled the buffer and stopped"
            }

            test "the maximum caps the buffer" {
                let r = steady (config 65536 300_000) 10_000_000L 30
                Expect.equal r.Conn.Tuning.RcvBuf 300_000 "grown to the maximum and no further"
            }

            test "a maximum equal to the initial size (tuning off) keeps the size" {
                let r = steady (config 65536 65536) 10_000_000L 30
                Expect.equal r.Conn.Tuning.RcvBuf 65536 "fixed"
                Expect.equal r.Grown 0 "no growth"
            }

            test "the SYN's window shift is chosen from the maximum, not the initial size" {
                let r = Receiver(config 65536 (4 <<< 20))
                Expect.equal r.Conn.Rcv.WndShift 7 "4 MiB needs shift 7 (RFC 7323 §2.3)"
                let off = Receiver(config 65535 0)
                Expect.equal off.Conn.Rcv.WndShift 0 "64 KiB needs none"
            }

            test "without timestamps the sender's round-trip estimate (the timed SYN,ACK) paces the tuning" {
                let cfg =
                    { config 65536 (4 <<< 20) with
                        Timestamps = false
                    }

                let r = Receiver cfg
                Expect.isFalse r.Conn.Ts.Enabled "no timestamps (our configuration)"
                Expect.isTrue r.Conn.Rtt.HasSample "the handshake gave an RTT sample"

                for _ in 1..10 do
                    r.Send(1_000_000L, -1)
                    r.Read System.Int64.MaxValue
                    r.Advance(ms 10)

                Expect.equal r.Conn.Tuning.RcvRtt 0L "no receiver measurement"
                Expect.isGreaterThan r.Conn.Tuning.RcvBuf 65536 "grown all the same"
            }

            test "growth happens before the larger window is offered" {
                let r = Receiver(config 65536 (4 <<< 20))
                // Checked by the receiver on every action: stores stay inside the buffer as
                // the actions so far sized it, and the connection agrees with them.
                for _ in 1..30 do
                    r.Send(300_000L, -1)
                    r.Read System.Int64.MaxValue
                    r.Advance(ms 5)

                Expect.isGreaterThan r.Conn.Tuning.RcvBuf 65536 "it grew"
            }

            testPropertyWithConfig
                { TestUtil.heavyConfig with
                    maxTest = 100
                }
                "two tuned engines over a lossy, reordering link: every byte crosses intact and both close"
            <| Prop.forAll (Arb.fromGen (Gen.choose (0, System.Int32.MaxValue))) (fun seed ->
                TcpSimulationTests.checkRun seed (tunedProfile seed)
                true)

            testPropertyWithConfig
                TestUtil.heavyConfig
                "for random sends, losses, reads and timers: stores stay in the buffer, the right edge never moves left, buffer <= max"
            <| fun (steps: (byte * uint16 * byte) list) (initialKiB: byte) (maxKiB: uint16) ->
                let initial = 4096 + int initialKiB * 1024
                let maximum = int maxKiB * 64
                let r = Receiver(config initial maximum)

                for (op, amount, extra) in List.truncate 60 steps do
                    match op % 5uy with
                    | 0uy -> r.Send(int64 amount * 20L, -1)
                    | 1uy -> r.Send(int64 amount * 20L, int extra % 8)
                    | 2uy -> r.Read(int64 amount * 30L)
                    | 3uy -> r.Advance(int64 extra * 500L)
                    | _ -> r.Repair()

                r.Conn.Tuning.RcvBuf <= max initial maximum && r.Conn.Tuning.RcvBuf >= initial
        ]
