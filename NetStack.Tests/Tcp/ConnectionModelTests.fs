/// Model-based properties: random sequences of segments (hostile and plausible), timers and user
/// calls on one engine. Every step must keep the invariants and stay on the Stateless model.
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

/// Runs one case through the harness checks; returns the side at the end.
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
                            c.RcvNxt

                    // Odd offsets count from SND.UNA, even ones from SND.MAX (which covers a FIN).
                    let ackBase = if ackOffset % 2 = 0 then c.SndMax else c.SndUna
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
                    QuotedSeq = c.SndUna + seqOffset
                }

            check [||] (Connection.handleIcmp now error c)

        // What was delivered is what the peer sent, byte for byte.
        let c = side.Conn

        if side.Delivered > 0L then
            let last = side.Delivered - 1L
            let expected = peerByte (c.Irs + 1 + int last).Value

            if side.Received.[int last] <> expected then
                fail $"delivered byte {last} is {side.Received.[int last]}, the peer sent {expected}"

    side

[<Tests>]
let tests =
    testList
        "ConnectionModel"
        [
            testPropertyWithConfig
                { TestUtil.heavyConfig with
                    maxTest = 500
                }
                "random segments, timers and user calls keep the invariants and follow the state model"
            <| Prop.forAll (Arb.fromGen genCase) (fun case ->
                runCase case |> ignore
                true)

            test "the random walks reach every state and use every trigger the engine fires" {
                let cases = Gen.sample 1000 genCase

                let transitions =
                    cases |> Seq.collect (fun c -> (runCase c).Transitions) |> Seq.toList

                let states = transitions |> List.map (fun t -> t.To) |> set
                let triggers = transitions |> List.map (fun t -> t.Trigger) |> set

                for state in StateModelTests.allStates do
                    Expect.isTrue (states.Contains state) $"{state} reached"

                for trigger in StateModelTests.allTriggers do
                    // The engine reports the FIN-WAIT-1 diagonal as its two steps.
                    if trigger <> TcpTrigger.RcvFinAckOfFin then
                        Expect.isTrue (triggers.Contains trigger) $"{trigger} fired"
            }

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
