module NetStack.Tests.SeqNumTests

open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Tcp

let private genSeq =
    Gen.choose64 (0L, int64 System.UInt32.MaxValue) |> Gen.map (uint32 >> SeqNum)

/// Distances below 2^31 in either direction: the range where the order is defined.
let private genOffset = Gen.choose (-(1 <<< 30), (1 <<< 30))

let private arbPair = Gen.zip genSeq genOffset |> Arb.fromGen

[<Tests>]
let tests =
    testList
        "SeqNum"
        [
            testPropertyWithConfig TestUtil.codecConfig "adding a positive offset moves strictly after"
            <| Prop.forAll arbPair (fun (a, n) ->
                let n = abs n + 1
                SeqNum.lt a (a + n) && SeqNum.gt (a + n) a && not (SeqNum.lt (a + n) a))

            testPropertyWithConfig TestUtil.codecConfig "the distance recovers the offset across the wrap"
            <| Prop.forAll arbPair (fun (a, n) -> (a + n) - a = n && (a + n) - n = a)

            testPropertyWithConfig TestUtil.codecConfig "exactly one of lt, equal, gt holds"
            <| Prop.forAll arbPair (fun (a, n) ->
                let b = a + n

                let count =
                    [ SeqNum.lt a b; (a = b); SeqNum.gt a b ] |> List.filter id |> List.length

                count = 1
                && SeqNum.le a b = (SeqNum.lt a b || a = b)
                && SeqNum.ge a b = (SeqNum.gt a b || a = b))

            testPropertyWithConfig TestUtil.codecConfig "max and min pick by serial order"
            <| Prop.forAll arbPair (fun (a, n) ->
                let b = a + n
                let hi = SeqNum.max a b
                let lo = SeqNum.min a b

                SeqNum.le lo hi
                && (hi = a || hi = b)
                && (lo = a || lo = b)
                && (n = 0 || hi <> lo))

            testPropertyWithConfig TestUtil.codecConfig "inWindow is the half-open window test"
            <| Prop.forAll
                (Gen.zip3 genSeq (Gen.choose (0, 1 <<< 30)) (Gen.choose (-(1 <<< 20), 1 <<< 30))
                 |> Arb.fromGen)
                (fun (lo, size, at) ->
                    let hi = lo + size
                    let x = lo + at
                    SeqNum.inWindow lo x hi = (at >= 0 && at < size))

            test "known answers around the wrap" {
                let top = SeqNum 0xFFFFFFF0u
                let wrapped = top + 0x20
                Expect.equal wrapped.Value 0x10u "0xFFFFFFF0 + 0x20 wraps to 0x10"
                Expect.isTrue (SeqNum.lt top wrapped) "0xFFFFFFF0 is before 0x10"
                Expect.equal (wrapped - top) 0x20 "distance across the wrap"
                Expect.equal (top - wrapped) -0x20 "negative distance across the wrap"
                Expect.equal (SeqNum.forward top wrapped) 0x20u "forward distance"
                Expect.isTrue (SeqNum.inWindow top (SeqNum 0u) wrapped) "0 lies in [0xFFFFFFF0, 0x10)"
                Expect.isFalse (SeqNum.inWindow top wrapped wrapped) "the right edge is outside"
                Expect.isFalse (SeqNum.inWindow top top top) "an empty window holds nothing"
                Expect.isTrue (SeqNum.lt (SeqNum 0u) (SeqNum 0x7FFFFFFFu)) "2^31-1 ahead is after"
                Expect.isTrue (SeqNum.gt (SeqNum 0u) (SeqNum 0x80000001u)) "2^31+1 ahead is behind"
            }
        ]
