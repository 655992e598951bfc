module NetStack.Tests.ChecksumTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire

/// A buffer of random bytes and a window into it: the window starts at any offset (so at odd
/// addresses) and has any length, odd ones included. Bytes come from a seeded Random so that
/// large inputs stay cheap to generate and shrinking keeps the case reproducible.
type Window =
    {
        Seed: int
        Offset: int
        Length: int
    }

    member this.Buffer =
        let bytes = Array.zeroCreate<byte>(this.Offset + this.Length)
        Random(this.Seed).NextBytes bytes
        bytes

let private windowGen (maxLength: int) =
    gen {
        let! seed = Gen.choose (0, Int32.MaxValue)
        let! offset = Gen.choose (0, 63)

        let! length =
            Gen.frequency
                [
                    6, Gen.choose (0, 300)
                    3, Gen.choose (0, 9000)
                    1, Gen.choose (0, maxLength)
                ]

        return
            {
                Seed = seed
                Offset = offset
                Length = length
            }
    }

let private windows = Arb.fromGen (windowGen 70000)

/// Sums `length` bytes of `buffer` at `offset` with the fast and the naive implementation.
let private bothSums (initial: uint64) (buffer: byte[]) (offset: int) (length: int) =
    let span = ReadOnlySpan(buffer, offset, length)
    Checksum.fold (Checksum.sum initial span), Checksum.fold (Checksum.sumNaive initial span)

/// The IPv4 pseudo-header of RFC 793 §3.1 as bytes.
let private pseudoV4Bytes (src: Ipv4Address) (dst: Ipv4Address) (protocol: byte) (length: int) =
    let b = Array.zeroCreate<byte> 12
    src.Write(Span(b, 0, 4))
    dst.Write(Span(b, 4, 4))
    b.[9] <- protocol
    b.[10] <- byte (length >>> 8)
    b.[11] <- byte length
    b

/// The IPv6 pseudo-header of RFC 8200 §8.1 as bytes.
let private pseudoV6Bytes (src: Ipv6Address) (dst: Ipv6Address) (nextHeader: byte) (length: int) =
    let b = Array.zeroCreate<byte> 40
    src.Write(Span(b, 0, 16))
    dst.Write(Span(b, 16, 16))
    b.[32] <- byte (length >>> 24)
    b.[33] <- byte (length >>> 16)
    b.[34] <- byte (length >>> 8)
    b.[35] <- byte length
    b.[39] <- nextHeader
    b

let private naiveFold (bytes: byte[]) =
    Checksum.fold (Checksum.sumNaive 0UL (ReadOnlySpan bytes))

[<Tests>]
let tests =
    testList
        "Checksum"
        [
            testList
                "known answers"
                [
                    test "RFC 1071 §3 example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2" {
                        let data = TestUtil.hex "0001 f203 f4f5 f6f7"
                        Expect.equal (Checksum.fold (Checksum.sum 0UL (ReadOnlySpan data))) 0xddf2us "folded sum"
                        Expect.equal (Checksum.compute (ReadOnlySpan data)) 0x220dus "checksum is the complement"
                    }

                    test "a textbook IPv4 header (192.168.0.1 to 192.168.0.199, UDP) has checksum b861" {
                        let header = TestUtil.hex "4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7"
                        Expect.equal (Checksum.compute (ReadOnlySpan header)) 0xb861us "checksum"
                        header.[10] <- 0xb8uy
                        header.[11] <- 0x61uy
                        Expect.isTrue (Checksum.verify 0UL (ReadOnlySpan header)) "verifies with the field in place"
                    }

                    test "RFC 1624 §4 example: HC 0xDD2F, m 0x5555 to m' 0x3285 gives 0x0000" {
                        Expect.equal (Checksum.update 0xDD2Fus 0x5555us 0x3285us) 0x0000us "eqn. 3"
                    }

                    test "an odd last byte is padded on the right" {
                        Expect.equal (Checksum.fold (Checksum.sum 0UL (ReadOnlySpan [| 0x12uy |]))) 0x1200us "one byte"
                        Expect.equal (Checksum.compute ReadOnlySpan<byte>.Empty) 0xFFFFus "no bytes"
                    }

                    test "a long run of 0xFF bytes folds to 0xFFFF (negative zero), all zero bytes to 0" {
                        let ones = Array.create 100_000 0xFFuy
                        let zeros = Array.zeroCreate<byte> 100_000
                        Expect.equal (Checksum.fold (Checksum.sum 0UL (ReadOnlySpan ones))) 0xFFFFus "ones"
                        Expect.equal (Checksum.fold (Checksum.sum 0UL (ReadOnlySpan zeros))) 0us "zeros"
                    }
                ]

            testList
                "vectorized sum"
                [
                    testPropertyWithConfig
                        TestUtil.codecConfig
                        "equals the naive sum for every length, offset and initial value"
                    <| Prop.forAll windows (fun w ->
                        let initial = uint64 (w.Seed % 1_000_000)
                        let fast, naive = bothSums initial w.Buffer w.Offset w.Length
                        Expect.equal fast naive "folded sums")

                    testPropertyWithConfig
                        TestUtil.codecConfig
                        "chained over even-length pieces equals one sum over the whole"
                    <| Prop.forAll (Arb.fromGen (Gen.zip (windowGen 70000) (Gen.choose (0, 70000)))) (fun (w, cut) ->
                        let buffer = w.Buffer
                        let cut = (min cut w.Length) &&& ~~~1
                        let first = Checksum.sum 0UL (ReadOnlySpan(buffer, w.Offset, cut))

                        let chained =
                            Checksum.sum first (ReadOnlySpan(buffer, w.Offset + cut, w.Length - cut))

                        let whole = Checksum.sumNaive 0UL (ReadOnlySpan(buffer, w.Offset, w.Length))
                        Expect.equal (Checksum.fold chained) (Checksum.fold whole) "chained vs whole")

                    testPropertyWithConfig
                        TestUtil.codecConfig
                        "sumAfter chains pieces of any length, odd ones included, into the sum over the whole"
                    <| Prop.forAll (Arb.fromGen (Gen.zip (windowGen 70000) (Gen.choose (0, 70000)))) (fun (w, cut) ->
                        let buffer = w.Buffer
                        let cut = min cut w.Length
                        let first = Checksum.sum 0UL (ReadOnlySpan(buffer, w.Offset, cut))

                        let chained =
                            Checksum.sumAfter first cut (ReadOnlySpan(buffer, w.Offset + cut, w.Length - cut))

                        let whole = Checksum.sumNaive 0UL (ReadOnlySpan(buffer, w.Offset, w.Length))
                        Expect.equal (Checksum.fold chained) (Checksum.fold whole) "chained vs whole")

                    test "every length up to 600 at every offset up to 7 agrees with the naive sum" {
                        // Exhaustive around the vector widths (16, 32 or 64 bytes), the two-vector
                        // threshold and the unrolled loop's odd vector, where off-by-ones would hide.
                        let buffer = Array.zeroCreate<byte> 608
                        Random(1071).NextBytes buffer

                        for offset in 0..7 do
                            for length in 0..600 do
                                let fast, naive = bothSums 0UL buffer offset length
                                Expect.equal fast naive $"length {length} offset {offset}"
                    }

                    test "64 KiB and larger inputs of 0xFF bytes (maximal carries) agree with the naive sum" {
                        for length in [ 65535; 65536; 65537; 131072; 1_000_001 ] do
                            let data = Array.create (length + 1) 0xFFuy
                            data.[0] <- 0x01uy

                            for offset in [ 0; 1 ] do
                                let fast, naive = bothSums 0xFFFF_FFFFUL data offset length
                                Expect.equal fast naive $"length {length} offset {offset}"
                    }

                    testPropertyWithConfig TestUtil.codecConfig "verify accepts data carrying its own checksum"
                    <| Prop.forAll windows (fun w ->
                        // Append the checksum as a trailing word of an even-length copy.
                        let even = w.Length &&& ~~~1
                        let data = Array.zeroCreate<byte>(even + 2)
                        Array.blit w.Buffer w.Offset data 0 even
                        let c = Checksum.compute (ReadOnlySpan(data, 0, even))
                        data.[even] <- byte (c >>> 8)
                        data.[even + 1] <- byte c
                        Expect.isTrue (Checksum.verify 0UL (ReadOnlySpan data)) "verifies")
                ]

            testList
                "incremental update"
                [
                    testPropertyWithConfig
                        TestUtil.codecConfig
                        "changing one word then updating equals recomputing (RFC 1624)"
                    <| Prop.forAll
                        (Arb.fromGen (Gen.zip3 (windowGen 2000) (Gen.choose (0, 1000)) (Gen.choose (0, 0xFFFF))))
                        (fun (w, at, newWord) ->
                            let data = Array.zeroCreate<byte>((w.Length &&& ~~~1) + 2)
                            Array.blit w.Buffer w.Offset data 0 (w.Length &&& ~~~1)
                            let at = (at % (data.Length / 2)) * 2
                            let before = Checksum.compute (ReadOnlySpan data)
                            let oldWord = (uint16 data.[at] <<< 8) ||| uint16 data.[at + 1]
                            data.[at] <- byte (newWord >>> 8)
                            data.[at + 1] <- byte newWord
                            let recomputed = Checksum.compute (ReadOnlySpan data)
                            let updated = Checksum.update before oldWord (uint16 newWord)
                            // 0x0000 and 0xFFFF are the two zeros of one's complement: eqn. 3 may give
                            // either when the new sum is zero, so compare values, not bit patterns.
                            let value (c: uint16) = if c = 0xFFFFus then 0us else c
                            Expect.equal (value updated) (value recomputed) "same one's complement value")
                ]

            testList
                "pseudo-headers"
                [
                    testPropertyWithConfig TestUtil.codecConfig "the IPv4 pseudo-header sum equals summing its bytes"
                    <| fun (src: uint32) (dst: uint32) (protocol: byte) (length: uint16) ->
                        let s, d = Ipv4Address src, Ipv4Address dst
                        let expected = naiveFold (pseudoV4Bytes s d protocol (int length))
                        Expect.equal (Checksum.fold (Checksum.pseudoHeaderV4 s d protocol (int length))) expected "sum"

                    testPropertyWithConfig TestUtil.codecConfig "the IPv6 pseudo-header sum equals summing its bytes"
                    <| fun (a: uint64) (b: uint64) (c: uint64) (d: uint64) (nextHeader: byte) (length: int) ->
                        let length = abs length
                        let s, t = Ipv6Address(a, b), Ipv6Address(c, d)
                        let expected = naiveFold (pseudoV6Bytes s t nextHeader length)
                        Expect.equal (Checksum.fold (Checksum.pseudoHeaderV6 s t nextHeader length)) expected "sum"
                ]
        ]
