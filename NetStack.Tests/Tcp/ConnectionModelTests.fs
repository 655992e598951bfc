/// Model-based properties on one engine. The oracle runs (`TcpOracle`): random inputs from a
/// consistent peer and blind attackers, user calls and timers; the test classifies each input
/// itself, the Stateless model says where it leads, and any difference with the engine fails;
/// the random walks must exercise every edge, reentry and ignore of the model. The hostile runs:
/// random bytes for flags and numbers, where every step must keep the engine's invariants and
/// every reported transition must be an edge of the model.
module NetStack.Tests.ConnectionModelTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Core.Tcp
open NetStack.Tests.TcpHarness

/// How a test connection starts.
type Start =
    | Active
    | Passive
    | ListenOnly

/// One input to the engine.
type Step =
    /// A segment: numbers relative to the connection's RCV.NXT / SND.UNA, or absolute when
    /// `Wild` (a blind attacker's guess).
    | Arrive of
        seqOffset: int *
        ackOffset: int *
        wild: (uint32 * uint32) option *
        flags: byte *
        window: uint16 *
        payload: int *
        mss: uint16 option
    | Tick of micros: int64
    | Write of bytes: int
    | Read of percent: int
    | CloseCall
    | AbortCall
    /// An ICMPv4 error quoting sequence number SND.UNA + `seqOffset`.
    | Icmp of icmpType: byte * code: byte * seqOffset: int * mtu: int

/// The peer's byte at sequence number `s`: a function of `s`, so repeated or overlapping
/// segments always agree, and delivered data can be checked.
let peerByte (s: uint32) = byte ((s * 2654435761u) >>> 24)

let private genOffset =
    Gen.frequency
        [
            6, Gen.constant 0
            2, Gen.choose (-3, 3)
            2, Gen.choose (-3000, 3000)
            1, Gen.choose (-70000, 70000)
        ]

let private genFlags =
    let ack = byte TcpFlags.Ack

    Gen.frequency
        [
            8, Gen.constant ack
            2, Gen.constant (ack ||| byte TcpFlags.Fin)
            1, Gen.constant (ack ||| byte TcpFlags.Psh)
            1, Gen.constant (byte TcpFlags.Syn)
            1, Gen.constant (ack ||| byte TcpFlags.Syn)
            1, Gen.constant (byte TcpFlags.Rst)
            1, Gen.constant (ack ||| byte TcpFlags.Rst)
            2, Gen.choose (0, 255) |> Gen.map byte
        ]

let private genUInt32 = Gen.choose64 (0L, int64 UInt32.MaxValue) |> Gen.map uint32

let private genStep =
    Gen.frequency
        [
            10,
            gen {
                let! seqOffset = genOffset
                let! ackOffset = genOffset

                let! wild =
                    Gen.frequency [ 6, Gen.constant None; 1, Gen.zip genUInt32 genUInt32 |> Gen.map Some ]

                let! flags = genFlags

                let! window =
                    Gen.frequency
                        [
                            4, Gen.constant 65535us
                            1, Gen.constant 0us
                            2, Gen.choose (0, 65535) |> Gen.map uint16
                        ]

                let! payload =
                    Gen.frequency [ 3, Gen.constant 0; 3, Gen.choose (1, 1500); 1, Gen.choose (1, 4000) ]

                let! mss =
                    Gen.frequency [ 3, Gen.constant None; 1, Gen.choose (0, 9000) |> Gen.map (uint16 >> Some) ]

                return Arrive(seqOffset, ackOffset, wild, flags, window, payload, mss)
            }
            3, Gen.choose (0, 3_000_000) |> Gen.map (int64 >> Tick)
            1, Gen.choose (30_000_000, 130_000_000) |> Gen.map (int64 >> Tick)
            3, Gen.choose (0, 5000) |> Gen.map Write
            2, Gen.choose (0, 100) |> Gen.map Read
            1, Gen.constant CloseCall
            1, Gen.frequency [ 1, Gen.constant AbortCall; 9, Gen.constant (Tick 1L) ]
            1,
            gen {
                let! icmpType = Gen.elements [ 3uy; 3uy; 3uy; 11uy; 12uy; 5uy ]

                let! code =
                    Gen.frequency
                        [
                            3, Gen.elements [ 0uy; 1uy; 3uy; 4uy ]
                            1, Gen.choose (0, 20) |> Gen.map byte
                        ]

                let! seqOffset = Gen.frequency [ 3, Gen.constant 0; 2, Gen.choose (-2, 3000) ]
                let! mtu = Gen.choose (0, 2000)
                return Icmp(icmpType, code, seqOffset, mtu)
            }
        ]

type private Case =
    {
        Start: Start
        Iss: uint32
        PeerIss: uint32
        Steps: Step list
        ReceiveBuffer: int
    }

let private genCase =
    gen {
        let! start = Gen.elements [ Active; Active; Passive; Passive; ListenOnly ]
        let! iss = genUInt32
        let! peerIss = genUInt32
        let! steps = Gen.listOfLength 60 genStep
        let! buffer = Gen.elements [ 65535; 4000; 1000; 200000 ]

        return
            {
                Start = start
                Iss = iss
                PeerIss = peerIss
                Steps = steps
                ReceiveBuffer = buffer
            }
    }

/// Room for everything a case can write or receive.
let private streamRoom = 1 <<< 19

let private sharedPayload = Array.init streamRoom (fun i -> byte (i * 7))

/// Runs one hostile case through the harness checks; returns the side at the end.
let private runCase (case: Case) =
    let config =
        { TcpConfig.Default with
            ReceiveBufferSize = case.ReceiveBuffer
            FinWait2Timeout = ValueSome 90_000_000L
        }

    let mutable now = 1_000L
    let peerSyn = SeqNum case.PeerIss

    let side = newSide "engine" Unchecked.defaultof<Connection> sharedPayload streamRoom

    let check (incoming: byte[]) (c: Connection, output: TcpOutput) =
        side.Conn <- c

        match output.NextDeadline with
        | ValueSome t when t < now -> fail $"deadline {t} before now {now}"
        | _ -> ()

        apply side incoming (fun seg -> throughWire side seg |> ignore) output

    let synSegment =
        {
            Seq = peerSyn
            Ack = SeqNum 0u
            Flags = TcpFlags.Syn
            Window = 65535us
            Options = TcpOptions.None
            PayloadLength = 0
        }

    match case.Start with
    | Active -> check [||] (Connection.openActive config (SeqNum case.Iss) now)
    | Passive -> check [||] (Connection.accept config (SeqNum case.Iss) now synSegment)
    | ListenOnly -> check [||] (Connection.listen config (SeqNum case.Iss))

    for step in case.Steps do
        let c = side.Conn

        match step with
        | Arrive(seqOffset, ackOffset, wild, flags, window, payload, mss) ->
            let seq, ack =
                match wild with
                | Some(s, a) -> SeqNum s, SeqNum a
                | None ->
                    // Before the peer's SYN is known, aim at the SYN the case would send.
                    let rcvNxt =
                        if c.State = TcpState.SynSent || c.State = TcpState.Listen then
                            peerSyn
                        else
                            c.Rcv.Nxt

                    // Odd offsets count from SND.UNA, even ones from SND.MAX (which covers a FIN).
                    let ackBase = if ackOffset % 2 = 0 then c.Snd.Max else c.Snd.Una
                    rcvNxt + seqOffset, ackBase + ackOffset

            let seg =
                {
                    Seq = seq
                    Ack = ack
                    Flags = LanguagePrimitives.EnumOfValue flags
                    Window = window
                    Options =
                        { TcpOptions.None with
                            MaximumSegmentSize =
                                match mss with
                                | Some m -> ValueSome m
                                | None -> ValueNone
                        }
                    PayloadLength = payload
                }

            let dataStart = seq + (if seg.Has TcpFlags.Syn then 1 else 0)
            let incoming = Array.init payload (fun i -> peerByte (dataStart + i).Value)
            check incoming (Connection.handleSegment now seg c)
        | Tick micros ->
            now <- now + micros
            check [||] (Connection.handleTimer now c)
        | Write bytes ->
            if Connection.canSend c && side.Written + int64 bytes <= int64 streamRoom then
                side.Written <- side.Written + int64 bytes
                check [||] (Connection.send now (int64 bytes) c)
        | Read percent ->
            let unread = side.Delivered - c.Consumed
            check [||] (Connection.receiveWindowUpdate now (unread * int64 percent / 100L) c)
        | CloseCall -> check [||] (Connection.close now c)
        | AbortCall -> check [||] (Connection.abort now c)
        | Icmp(icmpType, code, seqOffset, mtu) ->
            let error =
                {
                    Ipv6 = false
                    Type = icmpType
                    Code = code
                    PathMtu = mtu
                    QuotedSeq = c.Snd.Una + seqOffset
                }

            check [||] (Connection.handleIcmp now error c)

        // What was delivered is what the peer sent, byte for byte.
        let c = side.Conn

        if side.Delivered > 0L then
            let last = side.Delivered - 1L
            let expected = peerByte (c.Rcv.Irs + 1 + int last).Value

            if side.Received.[int last] <> expected then
                fail $"delivered byte {last} is {side.Received.[int last]}, the peer sent {expected}"

    side

// ---- The oracle runs -----------------------------------------------------------------------

/// Where a segment of the consistent peer starts, in its stream.
type StreamPick =
    /// At the next byte the engine expects (RCV.NXT as the oracle sees it), plus `offset`
    /// (negative: old data, positive: out of order).
    | FromNext of offset: int
    /// So that it ends `back` bytes before the stream's end (0: with the end, and the FIN).
    | ToEnd of back: int
    /// At `permille` of the stream.
    | Anywhere of permille: int

/// Which ACK number the peer sends.
type AckPick =
    /// SND.UNA (as acknowledged so far) plus `offset`.
    | FromUna of offset: int
    /// SND.MAX (what the engine sent) plus `offset`.
    | FromMax of offset: int
    /// Just past the engine's FIN (whether or not it was sent).
    | OfFin
    | AnyAck of uint32

/// Where a RST or an in-window SYN sits, from RCV.NXT.
type SeqPick =
    | AtNext
    | After of int
    | Before of int

/// One input of an oracle run.
type OracleStep =
    /// Data (maybe none) of the consistent peer, with its FIN when it ends the stream and `fin`.
    | Data of StreamPick * length: int * fin: bool * AckPick * window: uint16 * noAck: bool
    /// The peer's SYN (its ISN): with an ACK (a SYN,ACK) or not, carrying the stream's first
    /// `length` bytes (and its FIN when that is all of it).
    | PeerSyn of withAck: bool * AckPick * length: int * fin: bool * window: uint16
    /// A RST, with or without ACK.
    | Reset of SeqPick * withAck: bool * AckPick
    /// A SYN (or SYN,ACK) in or near the window, as a confused or hostile host sends.
    | StraySyn of SeqPick * withAck: bool * AckPick
    /// A blind attacker's segment, 2^30..3·2^30 away from RCV.NXT (outside any window): flags
    /// from ACK, PSH, SYN, RST (never FIN: a FIN is the consistent peer's), any ACK number.
    | Blind of distance: uint32 * ack: uint32 * flags: byte * payload: int
    | Wait of micros: int64
    /// To the engine's next timer deadline (as the API's loop does).
    | WaitForTimer
    | Send of bytes: int
    | Receive of percent: int
    | CloseIt
    | AbortIt
    /// An ICMP or ICMPv6 error quoting our segment at SND.UNA + `offset` (as the oracle sees it),
    /// reporting `mtu` when it is a "too big".
    | IcmpError of ipv6: bool * icmpType: byte * code: byte * offset: int * mtu: int

/// How a run is set up.
type OracleCase =
    {
        Start: Start
        Iss: uint32
        PeerIss: uint32
        PeerLength: int
        Config: TcpConfig
        Steps: OracleStep list
    }

let private genAckPick =
    Gen.frequency
        [
            5, Gen.choose (-2, 3) |> Gen.map (fun o -> FromMax(if o > 0 then 0 else o))
            2, Gen.choose (-3000, 3000) |> Gen.map FromUna
            2, Gen.constant OfFin
            1, Gen.choose (-70000, 70000) |> Gen.map FromMax
            1, genUInt32 |> Gen.map AnyAck
        ]

let private genWindow =
    Gen.frequency
        [
            5, Gen.constant 65535us
            1, Gen.constant 0us
            2, Gen.choose (1, 65535) |> Gen.map uint16
        ]

let private genSeqPick =
    Gen.frequency
        [
            3, Gen.constant AtNext
            2, Gen.choose (1, 3000) |> Gen.map After
            1, Gen.choose (3000, 70000) |> Gen.map After
            1, Gen.choose (1, 3000) |> Gen.map Before
        ]

/// Inputs in the mood of a phase: `chatty` has the peer talk, `quiet` lets timers run out.
let private genOracleStep (quiet: bool) =
    let peer =
        Gen.frequency
            [
                10,
                gen {
                    let! pick =
                        Gen.frequency
                            [
                                6,
                                Gen.frequency [ 6, Gen.constant 0; 3, Gen.choose (-3000, 3000) ]
                                |> Gen.map FromNext
                                3, Gen.frequency [ 3, Gen.constant 0; 2, Gen.choose (1, 1500) ] |> Gen.map ToEnd
                                1, Gen.choose (0, 1000) |> Gen.map Anywhere
                            ]

                    let! length =
                        Gen.frequency [ 3, Gen.constant 0; 4, Gen.choose (1, 1500); 1, Gen.choose (1, 5000) ]

                    let! fin = Gen.frequency [ 3, Gen.constant true; 1, Gen.constant false ]
                    let! ack = genAckPick
                    let! window = genWindow
                    let! noAck = Gen.frequency [ 15, Gen.constant false; 1, Gen.constant true ]
                    return Data(pick, length, fin, ack, window, noAck)
                }
                2,
                gen {
                    let! withAck = Gen.elements [ true; false ]
                    let! ack = genAckPick
                    let! length = Gen.frequency [ 4, Gen.constant 0; 1, Gen.choose (1, 500) ]
                    let! fin = Gen.elements [ true; false ]
                    let! window = genWindow
                    return PeerSyn(withAck, ack, length, fin, window)
                }
                2, Gen.map3 (fun s a k -> Reset(s, a, k)) genSeqPick (Gen.elements [ true; false ]) genAckPick
                1, Gen.map3 (fun s a k -> StraySyn(s, a, k)) genSeqPick (Gen.elements [ true; false ]) genAckPick
                1,
                gen {
                    let! distance = Gen.choose64 (1L <<< 30, 3L <<< 30) |> Gen.map uint32
                    let! ack = genUInt32

                    let! flags =
                        Gen.elements
                            [
                                TcpFlags.Ack
                                TcpFlags.Ack ||| TcpFlags.Psh
                                TcpFlags.Syn
                                TcpFlags.Syn ||| TcpFlags.Ack
                                TcpFlags.Rst
                                TcpFlags.Rst ||| TcpFlags.Ack
                                TcpFlags.None
                            ]

                    let! payload = Gen.frequency [ 3, Gen.constant 0; 1, Gen.choose (1, 1000) ]
                    return Blind(distance, ack, byte flags, payload)
                }
            ]

    let timers =
        Gen.frequency
            [
                4, Gen.constant WaitForTimer
                3, Gen.choose (0, 3_000_000) |> Gen.map (int64 >> Wait)
                1, Gen.choose (30_000_000, 130_000_000) |> Gen.map (int64 >> Wait)
            ]

    let calls =
        Gen.frequency
            [
                4, Gen.frequency [ 3, Gen.choose (1, 3000); 1, Gen.constant 0 ] |> Gen.map Send
                3, Gen.choose (0, 100) |> Gen.map Receive
                2, Gen.constant CloseIt
                1, Gen.frequency [ 1, Gen.constant AbortIt; 3, Gen.constant (Receive 100) ]
            ]

    let icmp =
        gen {
            let! ipv6 = Gen.elements [ false; false; true ]

            let! icmpType =
                if ipv6 then
                    Gen.elements [ 1uy; 1uy; 2uy; 3uy; 4uy; 137uy ]
                else
                    Gen.elements [ 3uy; 3uy; 3uy; 11uy; 12uy; 5uy; 4uy ]

            let! code =
                Gen.frequency
                    [
                        3, Gen.elements [ 0uy; 1uy; 2uy; 3uy; 4uy ]
                        1, Gen.choose (0, 20) |> Gen.map byte
                    ]

            let! offset =
                Gen.frequency [ 4, Gen.constant 0; 2, Gen.choose (-3, 3); 1, Gen.choose (-2000, 4000) ]

            let! mtu = Gen.frequency [ 1, Gen.constant 0; 3, Gen.choose (500, 1600) ]
            return IcmpError(ipv6, icmpType, code, offset, mtu)
        }

    if quiet then
        Gen.frequency [ 1, peer; 8, timers; 1, calls; 1, icmp ]
    else
        Gen.frequency [ 10, peer; 3, timers; 4, calls; 1, icmp ]

let private genOracleCase =
    gen {
        let! start = Gen.elements [ Active; Active; Passive; Passive; ListenOnly ]
        let! iss = genUInt32
        let! peerIss = genUInt32

        let! peerLength =
            Gen.frequency [ 1, Gen.constant 0; 4, Gen.choose (1, 3000); 1, Gen.choose (3000, 30000) ]

        let! buffer = Gen.elements [ 65535; 4000; 1000; 200000 ]

        let! finWait2 =
            Gen.elements [ ValueSome 90_000_000L; ValueSome 3_000_000L; ValueNone ]

        let! msl = Gen.elements [ 30_000_000L; 2_000_000L ]
        let! retries = Gen.elements [ (15, 6); (3, 2); (2, 1) ]
        let! userTimeout = Gen.elements [ ValueNone; ValueNone; ValueSome 10_000_000L ]

        // Phases of 4..25 inputs, each chatty or quiet.
        let! phases =
            Gen.listOfLength 6 (Gen.zip (Gen.elements [ false; false; true ]) (Gen.choose (4, 25)))

        let! steps =
            phases
            |> List.map (fun (quiet, n) -> Gen.listOfLength n (genOracleStep quiet))
            |> Gen.sequenceToList
            |> Gen.map List.concat

        return
            {
                Start = start
                Iss = iss
                PeerIss = peerIss
                PeerLength = peerLength
                Config =
                    { TcpConfig.Default with
                        ReceiveBufferSize = buffer
                        FinWait2Timeout = finWait2
                        Msl = msl
                        MaxRetransmissions = fst retries
                        MaxSynRetransmissions = snd retries
                        UserTimeout = userTimeout
                    }
                Steps = steps
            }
    }

/// What an oracle run saw: every (state, trigger) the oracle classified, and the engine's side.
type OracleRun =
    {
        Classified: struct (TcpState * TcpTrigger) list
        Side: Side
    }

/// Runs one case under the oracle. `tamper` may change the engine's output before the checks (the
/// tests that show the oracle catches a wrong engine use it); identity otherwise.
let private runOracleWith (tamper: Connection * TcpOutput -> Connection * TcpOutput) (case: OracleCase) : OracleRun =
    let config = case.Config
    let v = TcpOracle.create config (SeqNum case.Iss) case.PeerLength
    let side = newSide "engine" Unchecked.defaultof<Connection> sharedPayload streamRoom
    let classified = ResizeArray<struct (TcpState * TcpTrigger)>()
    let mutable now = 1_000L
    let mutable lastDeadline = ValueNone
    let mutable index = -1

    let mutable stateBefore = TcpState.Closed

    let describe (what: string) =
        $"step {index} ({what} in {stateBefore}) at {now} µs"

    // The engine's result of one input against the oracle's classification of it.
    let check (what: string) (incoming: byte[]) (classify: TcpAction list -> unit) (result: Connection * TcpOutput) =
        let c, output = tamper result
        side.Conn <- c
        lastDeadline <- output.NextDeadline
        apply side incoming (fun seg -> throughWire side seg |> ignore) output
        classify output.Actions
        classified.AddRange v.Classified

        match TcpOracle.observe v output.Actions with
        | Some problem -> fail $"{describe what}: {problem}"
        | None -> ()

        let reported =
            output.Actions
            |> List.choose (function
                | TcpAction.Transition t -> Some t
                | _ -> None)

        let expected = List.ofSeq v.Expected

        if reported <> expected then
            let show (ts: StateTransition list) =
                ts
                |> List.map (fun t -> $"{t.From} --{t.Trigger}--> {t.To}")
                |> String.concat ", "

            fail
                $"{describe what}: the model expects [{show expected}] (classified {List.ofSeq v.Classified}), the engine reported [{show reported}]"

        if c.State <> v.State then
            fail $"{describe what}: the model says {v.State}, the engine is in {c.State}"

        // The timers the oracle keeps itself run exactly as long as the engine's.
        if
            (v.State = TcpState.TimeWait || v.State = TcpState.FinWait2)
            && c.Timers.LingerAt <> v.LingerDeadline
        then
            fail $"{describe what}: the linger timer is due at {v.LingerDeadline}, the engine's at {c.Timers.LingerAt}"

    let segment (seg: Segment) =
        let dataStart = seg.Seq + (if seg.Has TcpFlags.Syn then 1 else 0)

        let incoming =
            Array.init seg.PayloadLength (fun i -> peerByte (dataStart + i).Value)

        TcpOracle.beginInput v
        let result = Connection.handleSegment now seg side.Conn

        check
            $"segment seq {seg.Seq} ack {seg.Ack} {seg.Flags} len {seg.PayloadLength} wnd {seg.Window}"
            incoming
            (TcpOracle.segment v now seg)
            result

    let userCall (what: TcpOracle.UserCall) (run: unit -> Connection * TcpOutput) =
        TcpOracle.beginInput v

        if TcpOracle.call v now what then
            check $"%A{what}" [||] ignore (run ())
        else
            // Refused (RFC 9293 §3.10.2): the engine throws and nothing changes.
            match
                (try
                    Choice1Of2(run ())
                 with :? InvalidOperationException as e ->
                     Choice2Of2 e)
            with
            | Choice1Of2 _ ->
                let call = $"%A{what}"
                fail $"{describe call}: the RFC refuses it in {v.State}, the engine took it"
            | Choice2Of2 _ -> ()

    // The peer's SYN, its stream starting at PeerIss + 1 until a SYN teaches the engine another.
    let peerStart () =
        match v.Irs with
        | ValueSome irs -> irs + 1
        | ValueNone -> SeqNum case.PeerIss + 1

    let ackOf (pick: AckPick) =
        match pick with
        | FromUna o -> v.SndUna + o
        | FromMax o -> v.SndMax + o
        | OfFin -> TcpOracle.finSeq v + 1
        | AnyAck a -> SeqNum a

    let seqOf (pick: SeqPick) =
        let next = if v.Irs.IsSome then v.RcvNxt else peerStart ()

        match pick with
        | AtNext -> next
        | After n -> next + n
        | Before n -> next - n

    let plain (seq: SeqNum) (ack: SeqNum) (flags: TcpFlags) (window: uint16) (payload: int) =
        {
            Seq = seq
            Ack = ack
            Flags = flags
            Window = window
            Options = TcpOptions.None
            PayloadLength = payload
        }

    // Opening.
    index <- 0

    match case.Start with
    | Active -> userCall TcpOracle.UserCall.ActiveOpen (fun () -> Connection.openActive config (SeqNum case.Iss) now)
    | Passive
    | ListenOnly -> userCall TcpOracle.UserCall.PassiveOpen (fun () -> Connection.listen config (SeqNum case.Iss))

    if case.Start = Passive then
        segment (plain (SeqNum case.PeerIss) (SeqNum 0u) TcpFlags.Syn 65535us 0)

    for step in case.Steps do
        index <- index + 1
        stateBefore <- v.State

        match step with
        | Data(pick, length, fin, ack, window, noAck) ->
            // The consistent peer: stream position p has sequence number start + p; nothing past
            // its end (position PeerLength, where the FIN goes); after it, only ACKs.
            let start = peerStart ()
            let inOrder = int v.Delivered + (if v.FinReceived then 1 else 0)

            let position =
                match pick with
                | FromNext o -> inOrder + o
                | ToEnd back -> case.PeerLength - back
                | Anywhere permille -> case.PeerLength * permille / 1000
                |> max 0
                |> min (case.PeerLength + 1)

            let length = max 0 (min length (case.PeerLength - position))
            let fin = fin && position + length = case.PeerLength

            let flags =
                (if noAck then TcpFlags.None else TcpFlags.Ack)
                ||| (if fin then TcpFlags.Fin else TcpFlags.None)
                ||| (if length > 0 then TcpFlags.Psh else TcpFlags.None)

            segment (plain (start + position) (ackOf ack) flags window length)
        | PeerSyn(withAck, ack, length, fin, window) ->
            let length = min length case.PeerLength
            let fin = fin && length = case.PeerLength

            let flags =
                TcpFlags.Syn
                ||| (if withAck then TcpFlags.Ack else TcpFlags.None)
                ||| (if fin then TcpFlags.Fin else TcpFlags.None)

            segment (plain (peerStart () - 1) (ackOf ack) flags window length)
        | Reset(pick, withAck, ack) ->
            let flags = TcpFlags.Rst ||| (if withAck then TcpFlags.Ack else TcpFlags.None)
            segment (plain (seqOf pick) (ackOf ack) flags 0us 0)
        | StraySyn(pick, withAck, ack) ->
            let flags = TcpFlags.Syn ||| (if withAck then TcpFlags.Ack else TcpFlags.None)
            segment (plain (seqOf pick) (ackOf ack) flags 65535us 0)
        | Blind(distance, ack, flags, payload) ->
            let seq = seqOf AtNext + int distance
            segment (plain seq (SeqNum ack) (LanguagePrimitives.EnumOfValue flags) 65535us payload)
        | Wait _
        | WaitForTimer ->
            now <-
                match step, lastDeadline with
                | Wait micros, _ -> now + micros
                | _, ValueSome t -> max now t
                | _ -> now + 1_000_000L

            let before = side.Conn

            let due (deadline: int64 voption) =
                deadline.IsSome && deadline.Value <= now

            TcpOracle.beginInput v

            check
                "timer"
                [||]
                (fun _ -> TcpOracle.timer v now (due before.Timers.RetransmitAt) (due before.Timers.PersistAt))
                (Connection.handleTimer now before)
        | Send bytes ->
            if side.Written + int64 bytes <= int64 streamRoom then
                // The harness's send buffer holds what the oracle let through (RFC 9293 §3.10.2).
                userCall (TcpOracle.UserCall.Send(int64 bytes)) (fun () ->
                    side.Written <- v.Written
                    Connection.send now (int64 bytes) side.Conn)
        | Receive percent ->
            let bytes = (v.Delivered - v.Consumed) * int64 percent / 100L

            userCall (TcpOracle.UserCall.Receive bytes) (fun () -> Connection.receiveWindowUpdate now bytes side.Conn)
        | CloseIt -> userCall TcpOracle.UserCall.Close (fun () -> Connection.close now side.Conn)
        | AbortIt -> userCall TcpOracle.UserCall.Abort (fun () -> Connection.abort now side.Conn)
        | IcmpError(ipv6, icmpType, code, offset, mtu) ->
            let quoted = v.SndUna + offset

            let error =
                {
                    Ipv6 = ipv6
                    Type = icmpType
                    Code = code
                    PathMtu = mtu
                    QuotedSeq = quoted
                }

            let family = if ipv6 then "ICMPv6" else "ICMP"
            TcpOracle.beginInput v

            check
                $"{family} type {icmpType} code {code} quoting {quoted}"
                [||]
                (fun _ -> TcpOracle.icmp v now ipv6 icmpType code quoted)
                (Connection.handleIcmp now error side.Conn)

        // What was delivered is what the peer sent, byte for byte.
        if side.Delivered > 0L then
            let last = side.Delivered - 1L
            let expected = peerByte ((peerStart ()) + int last).Value

            if side.Received.[int last] <> expected then
                fail $"delivered byte {last} is {side.Received.[int last]}, the peer sent {expected}"

    {
        Classified = List.ofSeq classified
        Side = side
    }

let private runOracle = runOracleWith id

/// The model's entries (edges, reentries, ignores) as "STATE --Trigger--> STATE (kind)".
let private entryName (struct (s: TcpState, t: TcpTrigger)) =
    match StateModel.target s t with
    | ValueSome next when next = s -> $"{s} --{t}--> {s} (reentry)"
    | ValueSome next -> $"{s} --{t}--> {next}"
    | ValueNone when StateModel.isIgnored s t -> $"{s} --{t}--> (ignored)"
    | ValueNone -> $"{s} --{t}--> (not permitted: no change)"

/// The coverage of `runs`: every model entry with its count (and what else was classified).
let private coverageOf (runs: OracleRun seq) =
    let coverage = TcpOracle.Coverage()

    for r in runs do
        coverage.Add r.Classified

    let entries =
        TcpOracle.modelEntries StateModelTests.allStates StateModelTests.allTriggers
        |> List.map fst

    let extra = coverage.Pairs |> List.filter (fun p -> not (List.contains p entries))

    coverage, entries, extra

/// A fixed sample of oracle cases (the seed keeps the coverage test deterministic).
let private coverageCases =
    lazy (Gen.sampleWithSeed (Rnd 20_160_409UL) 50 2500 genOracleCase)

/// Runs `case` with `tamper` and returns the failure message (None: it passed).
let private failureWith tamper case =
    try
        runOracleWith tamper case |> ignore
        None
    with e ->
        Some e.Message

/// A scripted case: the test opens actively, the peer answers, sends `PeerLength` bytes and its
/// FIN, then `steps`.
let private scripted (steps: OracleStep list) =
    {
        Start = Active
        Iss = 1000u
        PeerIss = 5000u
        PeerLength = 100
        Config = TcpConfig.Default
        Steps =
            [
                PeerSyn(true, FromMax 0, 0, false, 65535us)
                Data(FromNext 0, 100, true, FromMax 0, 65535us, false)
            ]
            @ steps
    }

/// A scripted case in which the engine closes first: it opens actively, the peer answers, the
/// engine closes, and the peer's `PeerLength` bytes and FIN acknowledge the engine's FIN (FIN-WAIT-1
/// to TIME-WAIT); then `steps`.
let private closedFirst (steps: OracleStep list) =
    { scripted [] with
        Steps =
            [
                PeerSyn(true, FromMax 0, 0, false, 65535us)
                CloseIt
                Data(FromNext 0, 100, true, OfFin, 65535us, false)
            ]
            @ steps
    }

/// Replaces the output's transitions with `f`'s.
let private mapTransitions (f: StateTransition -> StateTransition option) (c: Connection, o: TcpOutput) =
    c,
    { o with
        Actions =
            o.Actions
            |> List.choose (function
                | TcpAction.Transition t -> f t |> Option.map TcpAction.Transition
                | a -> Some a)
    }

[<Tests>]
let tests =
    testList
        "ConnectionModel"
        [
            testPropertyWithConfig
                { TestUtil.heavyConfig with
                    maxTest = 400
                }
                "oracle: every input's transitions and resulting state are the model's, the test classifying the input itself"
            <| Prop.forAll (Arb.fromGen genOracleCase) (fun case ->
                runOracle case |> ignore
                true)

            test "oracle: the random walks exercise every edge, reentry and ignore of the model" {
                let runs = coverageCases.Value |> Array.map runOracle
                let coverage, entries, extra = coverageOf runs
                let hit = entries |> List.filter (fun e -> coverage.Count e > 0)

                printfn
                    "TCP model coverage: %d of %d entries exercised (%d cases)"
                    hit.Length
                    entries.Length
                    runs.Length

                for e in entries do
                    printfn "  %7d  %s" (coverage.Count e) (entryName e)

                for e in extra do
                    printfn "  %7d  %s" (coverage.Count e) (entryName e)

                let missing = entries |> List.filter (fun e -> coverage.Count e = 0)
                Expect.isEmpty (missing |> List.map entryName) "every model entry is exercised"
            }

            test "oracle: fails a run whose engine labels an ABORT as a timeout (a legal edge, the wrong trigger)" {
                let case = scripted [ AbortIt ]

                let relabel (t: StateTransition) =
                    Some(
                        if t.Trigger = TcpTrigger.Abort then
                            { t with Trigger = TcpTrigger.Timeout }
                        else
                            t
                    )

                Expect.isNone (failureWith id case) "the honest engine passes"

                match failureWith (mapTransitions relabel) case with
                | Some message -> Expect.stringContains message "the model expects" "the oracle's verdict"
                | None -> failtest "a mislabelled trigger passed"
            }

            test "oracle: fails a run whose engine leaves ESTABLISHED unchanged on the peer's FIN" {
                // The FIN arrives in the scripted case's second segment.
                let case = scripted []

                let stays (t: StateTransition) =
                    if t.Trigger = TcpTrigger.RcvFin then None else Some t

                let unchanged (c: Connection, o: TcpOutput) =
                    let c, o = mapTransitions stays (c, o)

                    if c.State = TcpState.CloseWait then
                        { c with State = TcpState.Established }, o
                    else
                        c, o

                match failureWith unchanged case with
                | Some message -> Expect.stringContains message "the model expects" "the oracle's verdict"
                | None -> failtest "a missing transition passed"
            }

            test
                "oracle: in TIME-WAIT a SYN beyond RCV.NXT reopens (RFC 6191), one at or before it and a RST off RCV.NXT change nothing, a RST at RCV.NXT ends it" {
                let run steps =
                    let r = runOracle (closedFirst steps)
                    List.last r.Classified, r.Side.Conn.State

                Expect.equal
                    (run [])
                    (struct (TcpState.FinWait1, TcpTrigger.RcvFinAckOfFin), TcpState.TimeWait)
                    "the script reaches TIME-WAIT"

                for beyond in [ 1; 3000; 70000 ] do
                    Expect.equal
                        (run [ StraySyn(After beyond, false, FromMax 0) ])
                        (struct (TcpState.TimeWait, TcpTrigger.RcvReopeningSyn), TcpState.Closed)
                        $"a SYN {beyond} beyond RCV.NXT"

                for pick in [ AtNext; Before 1; Before 3000 ] do
                    Expect.equal
                        (run [ StraySyn(pick, false, FromMax 0) ])
                        (struct (TcpState.TimeWait, TcpTrigger.RcvSyn), TcpState.TimeWait)
                        $"a SYN {pick}: challenge ACK"

                Expect.equal
                    (run [ Reset(AtNext, false, FromMax 0) ])
                    (struct (TcpState.TimeWait, TcpTrigger.RcvRst), TcpState.Closed)
                    "a RST at RCV.NXT"

                let last, state = run [ Reset(After 1, false, FromMax 0) ]
                Expect.notEqual last (struct (TcpState.TimeWait, TcpTrigger.RcvRst)) "a RST off RCV.NXT is no RcvRst"
                Expect.equal state TcpState.TimeWait "a RST off RCV.NXT is ignored"
            }

            test
                "oracle: fails a run whose engine refuses a reopening SYN in TIME-WAIT, or labels it a RST (a legal edge, the wrong trigger)" {
                let case = closedFirst [ StraySyn(After 1, false, FromMax 0) ]
                Expect.isNone (failureWith id case) "the honest engine passes"

                let asRst (t: StateTransition) =
                    Some(
                        if t.Trigger = TcpTrigger.RcvReopeningSyn then
                            { t with Trigger = TcpTrigger.RcvRst }
                        else
                            t
                    )

                match failureWith (mapTransitions asRst) case with
                | Some message -> Expect.stringContains message "the model expects" "the oracle's verdict"
                | None -> failtest "a reopening labelled as a RST passed"

                // RFC 1337's TIME-WAIT, or one that answers every SYN with a challenge ACK.
                let refuses (c: Connection, o: TcpOutput) =
                    let reopened =
                        o.Actions
                        |> List.exists (function
                            | TcpAction.Transition t -> t.Trigger = TcpTrigger.RcvReopeningSyn
                            | _ -> false)

                    if reopened then
                        { c with State = TcpState.TimeWait },
                        { o with
                            Actions =
                                o.Actions
                                |> List.filter (function
                                    | TcpAction.Transition _
                                    | TcpAction.Event _ -> false
                                    | _ -> true)
                        }
                    else
                        c, o

                match failureWith refuses case with
                | Some message -> Expect.stringContains message "the model expects" "the oracle's verdict"
                | None -> failtest "a refused reopening passed"
            }

            testPropertyWithConfig
                { TestUtil.heavyConfig with
                    maxTest = 300
                }
                "hostile: random flags and numbers keep the invariants and every reported transition is a model edge"
            <| Prop.forAll (Arb.fromGen genCase) (fun case ->
                runCase case |> ignore
                true)

            testPropertyWithConfig
                { TestUtil.heavyConfig with
                    maxTest = 300
                }
                "the engine is deterministic: the same inputs give the same connection and actions"
            <| Prop.forAll (Arb.fromGen genCase) (fun case ->
                let a = runCase case
                let b = runCase case

                a.Conn = b.Conn
                && List.ofSeq a.Transitions = List.ofSeq b.Transitions
                && List.ofSeq a.Events = List.ofSeq b.Events)
        ]
