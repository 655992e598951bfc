/// The core's output shaping: which data segments form one TSO super-segment, and the IPv4
/// Identification a super-packet uses up. Expectations come from the kernel's rules for a GSO
/// packet (tcp_gso_segment: cut at gso_size, PSH/FIN on the last piece, headers otherwise
/// alike) and RFC 791's 65535-byte limit, written out here.
module NetStack.Tests.Stack.BatchingTests

open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Core.Tcp
open NetStack.Core.Stack

let private local4 = V4(Ipv4Address.Parse "10.0.0.2")

let private data (position: int64) (length: int) (flags: TcpFlags) : OutgoingSegment =
    {
        Seq = SeqNum(1000u + uint32 position)
        Ack = SeqNum 77u
        Flags = TcpFlags.Ack ||| flags
        Window = 500us
        Options = TcpOptions.None
        DataPosition = position
        DataLength = length
    }

/// What may change from one segment to the next, for the property.
type private Step =
    | Next of length: int * psh: bool * fin: bool
    | Gap
    | OtherAck
    | Syn
    | OtherConnection

let private stepGen =
    Gen.frequency
        [
            8,
            Gen.map3
                (fun l p f -> Next(l, p, f))
                (Gen.elements [ 1460; 1460; 1460; 700 ])
                (Gen.elements [ false; true ])
                (Gen.elements [ false; false; false; true ])
            1, Gen.constant Gap
            1, Gen.constant OtherAck
            1, Gen.constant Syn
            1, Gen.constant OtherConnection
        ]

let private config =
    { FsCheckConfig.defaultConfig with
        maxTest = 200
    }

[<Tests>]
let tests =
    testList
        "Batching"
        [
            testCase "IPv4 Identification: a super-packet of n segments uses n numbers, wrapping at 65536"
            <| fun () ->
                let ids = Ipv4Identification(65534)
                Expect.equal (ids.Next()) 65534us "first"
                Expect.equal (ids.Take 3) 65535us "a run of three starts at the next"
                Expect.equal (ids.Next()) 2us "after 65535, 0 and 1"

            testCase "full-sized consecutive segments join; the run ends after a short one"
            <| fun () ->
                let b = SegmentBatch()
                let owner = obj ()
                let s0 = data 0L 1460 TcpFlags.None
                Expect.isTrue (b.TryStart(owner, &s0, local4, true)) "starts"
                let s1 = data 1460L 1460 TcpFlags.None
                Expect.isTrue (b.TryJoin(owner, &s1)) "joins"
                let s2 = data 2920L 100 TcpFlags.Psh
                Expect.isTrue (b.TryJoin(owner, &s2)) "a shorter last one joins"
                let s3 = data 3020L 1460 TcpFlags.None
                Expect.isFalse (b.TryJoin(owner, &s3)) "nothing after a short one"

                Expect.equal
                    (b.Count, b.Bytes, b.SegmentSize, b.LastFlags)
                    (3, 3020, 1460, TcpFlags.Ack ||| TcpFlags.Psh)
                    "the run"

            testCase "without offload, or for a SYN, RST or URG, or without data, no run starts"
            <| fun () ->
                let b = SegmentBatch()
                let plain = data 0L 1460 TcpFlags.None
                Expect.isFalse (b.TryStart(obj (), &plain, local4, false)) "offload off"

                for flags in [ TcpFlags.Syn; TcpFlags.Rst; TcpFlags.Urg ] do
                    let s = data 0L 1460 flags
                    Expect.isFalse (b.TryStart(obj (), &s, local4, true)) $"{flags}"

                let empty = data 0L 0 TcpFlags.None
                Expect.isFalse (b.TryStart(obj (), &empty, local4, true)) "a pure ACK"

            testCase "an IPv4 run stops short of 65535 bytes of packet (RFC 791 total length)"
            <| fun () ->
                let b = SegmentBatch()
                let owner = obj ()
                let first = data 0L 1460 TcpFlags.None
                b.TryStart(owner, &first, local4, true) |> ignore
                let mutable position = 1460L

                while (let s = data position 1460 TcpFlags.None in b.TryJoin(owner, &s)) do
                    position <- position + 1460L

                // 20 + 20 bytes of headers: 44 segments make 64280 + 40, a 45th 65780.
                Expect.equal b.Count 44 "44 segments of 1460"

            testPropertyWithConfig config "a run holds exactly the segments that continue it, by the kernel's rules"
            <| Prop.forAll (Arb.fromGen (Gen.listOfLength 40 stepGen)) (fun steps ->
                let b = SegmentBatch()
                let a, c = obj (), obj ()
                let mutable position = 0L
                let mutable modelCount = 0
                let mutable modelFirstLength = 0
                let mutable modelLastLength = 0
                let mutable modelFin = false

                for step in steps do
                    let owner, s =
                        match step with
                        | Next(length, psh, fin) ->
                            let flags =
                                (if psh then TcpFlags.Psh else TcpFlags.None)
                                ||| (if fin then TcpFlags.Fin else TcpFlags.None)

                            a, data position length flags
                        | Gap -> a, data (position + 1L) 1460 TcpFlags.None
                        | OtherAck ->
                            a,
                            { data position 1460 TcpFlags.None with
                                Ack = SeqNum 78u
                            }
                        | Syn -> a, data position 1460 TcpFlags.Syn
                        | OtherConnection -> c, data position 1460 TcpFlags.None

                    // The model: joins when it is the next byte of the same connection with the
                    // same header but PSH/FIN, no longer than the first, after full-sized ones
                    // and no FIN.
                    let joins =
                        modelCount > 0
                        && (match step with
                            | Next _ -> true
                            | _ -> false)
                        && s.DataLength <= modelFirstLength
                        && modelLastLength = modelFirstLength
                        && not modelFin

                    let joined = b.TryJoin(owner, &s)
                    Expect.equal joined joins $"join at {step}"

                    if joined then
                        modelCount <- modelCount + 1
                        modelLastLength <- s.DataLength
                        modelFin <- s.Flags.HasFlag TcpFlags.Fin
                    else
                        b.Clear()
                        let starts = not (s.Flags.HasFlag TcpFlags.Syn)
                        Expect.equal (b.TryStart(owner, &s, local4, true)) starts $"start at {step}"

                        if starts then
                            modelCount <- 1
                            modelFirstLength <- s.DataLength
                            modelLastLength <- s.DataLength
                            modelFin <- s.Flags.HasFlag TcpFlags.Fin
                        else
                            modelCount <- 0

                    Expect.equal b.Count modelCount "the run's length"

                    match step with
                    | Next(length, _, _) -> position <- position + int64 length
                    | _ -> b.Clear()

                    if b.Count = 0 then
                        modelCount <- 0)
        ]
