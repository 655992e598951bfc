module NetStack.Tests.TcpHeaderTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Tests.TestUtil

let private v4Source = Ipv4Address.Parse "10.0.0.1"
let private v4Destination = Ipv4Address.Parse "10.0.0.2"
let private v6Source = Ipv6Address.Parse "fd00::1"
let private v6Destination = Ipv6Address.Parse "fd00::2"

let private any<'T> = ArbMap.defaults |> ArbMap.generate<'T>

let private optional (g: Gen<'T>) =
    Gen.oneof [ Gen.constant ValueNone; Gen.map ValueSome g ]

/// Any option set the writer accepts: each option present or not, up to four SACK blocks (as
/// many as fit in 40 bytes with the others), unused SACK fields left at their default.
let private optionsGen =
    gen {
        let! mss = optional any<uint16>
        let! windowScale = optional (Gen.choose (0, 14) |> Gen.map byte)
        let! sackPermitted = any<bool>

        let! timestamps =
            optional (Gen.map2 (fun v e -> { Value = v; EchoReply = e }) any<uint32> any<uint32>)

        let others =
            (if mss.IsSome then 4 else 0)
            + (if timestamps.IsSome then 12
               elif sackPermitted then 4
               else 0)
            + (if windowScale.IsSome then 4 else 0)

        let! count = Gen.choose (0, min 4 ((Tcp.MaxOptionsLength - others - 4) / 8))

        let! blocks =
            Gen.arrayOfLength count (Gen.map2 (fun l r -> { Left = l; Right = r }) any<uint32> any<uint32>)

        let mutable options =
            { TcpOptions.None with
                MaximumSegmentSize = mss
                WindowScale = windowScale
                SackPermitted = sackPermitted
                Timestamps = timestamps
                SackBlockCount = count
            }

        for i in 0 .. count - 1 do
            options <- options.WithSackBlock(i, blocks.[i])

        return options
    }

let private headerGen =
    gen {
        let! ports = Gen.zip any<uint16> any<uint16>
        let! numbers = Gen.zip any<uint32> any<uint32>
        let! flags = any<byte>
        let! window = any<uint16>
        let! urgent = any<uint16>

        return
            { TcpHeader.Create(
                  fst ports,
                  snd ports,
                  fst numbers,
                  snd numbers,
                  LanguagePrimitives.EnumOfValue<byte, TcpFlags> flags,
                  window
              ) with
                UrgentPointer = urgent
            }
    }

let private segmentArb = Gen.zip3 headerGen optionsGen any<byte[]> |> Arb.fromGen

let private mutatedArb =
    Gen.zip3 (Gen.zip3 headerGen optionsGen any<byte[]>) any<(uint16 * byte)[]> any<uint16>
    |> Arb.fromGen

let private writeOptions (options: TcpOptions) =
    let buffer = Array.zeroCreate (Tcp.optionsLength options)
    let n = Tcp.writeOptions (Span buffer) options
    Expect.equal n buffer.Length "writeOptions writes optionsLength bytes"
    buffer

let private parseOptions (bytes: byte[]) = Tcp.parseOptions (ReadOnlySpan bytes)

let private buildV4 (header: TcpHeader) (options: TcpOptions) (payload: byte[]) =
    let buffer =
        Array.zeroCreate (Tcp.MinHeaderLength + Tcp.optionsLength options + payload.Length)

    let n =
        Tcp.buildV4 (Span buffer) v4Source v4Destination header options (ReadOnlySpan payload)

    Expect.equal n buffer.Length "build returns the segment length"
    buffer

/// Applies byte overwrites at positions taken modulo the length, then maybe cuts the array.
let private mutate (bytes: byte[]) (changes: (uint16 * byte)[]) (cut: uint16) =
    let copy = Array.copy bytes

    if copy.Length > 0 then
        for (i, v) in changes do
            copy.[int i % copy.Length] <- v

    if cut % 2us = 0us then
        copy
    else
        Array.truncate (int cut % (copy.Length + 1)) copy

/// Parses header and options; when both succeed, checks that every offset lies in the input.
let private parseAllInside (bytes: byte[]) =
    match Tcp.parse (ReadOnlySpan bytes) with
    | Error _ -> ()
    | Ok h ->
        Expect.isTrue
            (h.OptionsOffset = 20
             && h.OptionsOffset + h.OptionsLength = h.PayloadOffset
             && h.PayloadOffset = h.HeaderLength
             && h.PayloadLength >= 0
             && h.PayloadOffset + h.PayloadLength = bytes.Length)
            "offsets inside the input"

        match Tcp.parseOptions (ReadOnlySpan(bytes, h.OptionsOffset, h.OptionsLength)) with
        | Ok o -> Expect.isTrue (o.SackBlockCount >= 0 && o.SackBlockCount <= 4) "at most four SACK blocks"
        | Error _ -> ()

/// The option bytes of a SYN from Linux: MSS 1460, SACK-permitted, timestamps, NOP, window scale 7.
let private linuxSynOptions = "020405b4 0402 080a 000a8f1c 00000000 01 030307"

let private optionsError (hexBytes: string) =
    match parseOptions (hex hexBytes) with
    | Ok o -> failtestf "expected an error, parsed %A" o
    | Error e -> e

[<Tests>]
let tests =
    testList
        "TcpHeader"
        [
            testPropertyWithConfig codecConfig "options with any subset of kinds round-trip through write and parse"
            <| Prop.forAll (Arb.fromGen optionsGen) (fun options ->
                let bytes = writeOptions options
                Expect.equal (bytes.Length % 4) 0 "options are padded to 32 bits"
                Expect.isLessThanOrEqual bytes.Length Tcp.MaxOptionsLength "at most 40 bytes"
                Expect.equal (parseOptions bytes) (Ok options) "same options back")

            testPropertyWithConfig
                codecConfig
                "build then parse over IPv4 returns every header field, the options and the payload"
            <| Prop.forAll segmentArb (fun (header, options, payload) ->
                let bytes = buildV4 header options payload

                match Tcp.parseV4 v4Source v4Destination (ReadOnlySpan bytes) with
                | Error e -> failtestf "parse failed: %A" e
                | Ok h ->
                    let headerLength = 20 + Tcp.optionsLength options

                    Expect.equal
                        h
                        { header with
                            HeaderLength = headerLength
                            Checksum = h.Checksum
                            OptionsLength = headerLength - 20
                            PayloadOffset = headerLength
                            PayloadLength = payload.Length
                        }
                        "header fields"

                    Expect.equal
                        (Tcp.parseOptions (ReadOnlySpan(bytes, h.OptionsOffset, h.OptionsLength)))
                        (Ok options)
                        "options"

                    Expect.equal bytes.[h.PayloadOffset ..] payload "payload")

            testPropertyWithConfig codecConfig "build then parse over IPv6 verifies the checksum"
            <| Prop.forAll segmentArb (fun (header, options, payload) ->
                let buffer = Array.zeroCreate (20 + Tcp.optionsLength options + payload.Length + 7)

                let n =
                    Tcp.buildV6 (Span buffer) v6Source v6Destination header options (ReadOnlySpan payload)

                let bytes = buffer.[.. n - 1]

                match Tcp.parseV6 v6Source v6Destination (ReadOnlySpan bytes) with
                | Error e -> failtestf "parse failed: %A" e
                | Ok h ->
                    Expect.equal (h.SequenceNumber, h.Flags) (header.SequenceNumber, header.Flags) "fields"
                    let elsewhere = Ipv6Address.Parse "fd00::3"

                    Expect.isError
                        (Tcp.parseV6 v6Source elsewhere (ReadOnlySpan bytes))
                        "the pseudo-header covers the destination"

                    Expect.isError
                        (Tcp.parseV4 v4Source v4Destination (ReadOnlySpan bytes))
                        "the IPv4 pseudo-header sums differently")

            testPropertyWithConfig codecConfig "parsing random bytes as a header or as options never throws"
            <| fun (bytes: byte[]) ->
                parseAllInside bytes
                parseOptions bytes |> ignore
                Tcp.parseV4 v4Source v4Destination (ReadOnlySpan bytes) |> ignore
                Tcp.parseV6 v6Source v6Destination (ReadOnlySpan bytes) |> ignore

            testPropertyWithConfig
                codecConfig
                "parsing mutated and truncated segments never throws and keeps offsets inside the input"
            <| Prop.forAll mutatedArb (fun (segment, changes, cut) ->
                let header, options, payload = segment
                let bytes = mutate (buildV4 header options payload) changes cut
                parseAllInside bytes
                Tcp.parseV4 v4Source v4Destination (ReadOnlySpan bytes) |> ignore)

            testPropertyWithConfig codecConfig "random option bytes never throw and SACK counts stay within 0..4"
            <| fun (bytes: byte[]) (kinds: byte[]) ->
                // Sprinkle known kinds so the typed branches see malformed lengths too.
                let bytes = Array.copy bytes

                for i in 0 .. min (bytes.Length - 1) (kinds.Length - 1) do
                    if i % 3 = 0 then
                        bytes.[i] <- kinds.[i] % 9uy

                match parseOptions bytes with
                | Ok o -> Expect.isTrue (o.SackBlockCount >= 0 && o.SackBlockCount <= 4) "SACK count"
                | Error(BadOptionLength offset) -> Expect.isTrue (offset >= 0 && offset < bytes.Length) "offset inside"
                | Error _ -> ()

            test "a Linux SYN's option bytes parse to MSS 1460, SACK-permitted, timestamps and window scale 7" {
                let expected =
                    { TcpOptions.None with
                        MaximumSegmentSize = ValueSome 1460us
                        SackPermitted = true
                        Timestamps = ValueSome { Value = 0x000a8f1cu; EchoReply = 0u }
                        WindowScale = ValueSome 7uy
                    }

                Expect.equal (parseOptions (hex linuxSynOptions)) (Ok expected) "parsed options"

                Expect.equal
                    (toHex (writeOptions expected))
                    (toHex (hex linuxSynOptions))
                    "written as Linux lays them out"
            }

            test "a whole SYN segment matches bytes checked independently" {
                // 10.0.0.1:40000 -> 10.0.0.2:80, seq 0x01020304, SYN, window 64240, Linux options;
                // checksum 0x0950 computed separately over the pseudo-header and segment.
                let expected = "9c40 0050 01020304 00000000 a0 02 faf0 0950 0000 " + linuxSynOptions

                let options =
                    parseOptions (hex linuxSynOptions) |> Result.defaultValue TcpOptions.None

                let header = TcpHeader.Create(40000us, 80us, 0x01020304u, 0u, TcpFlags.Syn, 64240us)
                Expect.equal (toHex (buildV4 header options [||])) (toHex (hex expected)) "segment bytes"
            }

            test "SACK blocks, a timestamp and NOP padding parse from a Linux-style ACK" {
                let bytes =
                    hex "0101 080a 00000001 00000002 0101 0512 00000064 000000c8 0000012c 00000190"

                match parseOptions bytes with
                | Ok o ->
                    Expect.equal o.Timestamps (ValueSome { Value = 1u; EchoReply = 2u }) "timestamps"
                    Expect.equal o.SackBlockCount 2 "two blocks"
                    Expect.equal (o.GetSackBlock 0) { Left = 100u; Right = 200u } "first block"
                    Expect.equal (o.GetSackBlock 1) { Left = 300u; Right = 400u } "second block"
                | Error e -> failtestf "%A" e
            }

            test "an unknown option is skipped by its length and EOL ends the list" {
                // Kind 30 (MPTCP) with 6 bytes, then MSS, then EOL followed by garbage.
                match parseOptions (hex "1e06 01020304 0204 0218 00 ff ff ff") with
                | Ok o ->
                    Expect.equal
                        o
                        { TcpOptions.None with
                            MaximumSegmentSize = ValueSome 536us
                        }
                        "MSS only"
                | Error e -> failtestf "%A" e
            }

            test "option lengths of 0, 1, past the end, or a missing length byte are BadOptionLength" {
                Expect.equal (optionsError "01 1e00 0000") (BadOptionLength 1) "length 0"
                Expect.equal (optionsError "1e01 0000") (BadOptionLength 0) "length 1"
                Expect.equal (optionsError "0101 0204 05") (BadOptionLength 2) "MSS past the end"
                Expect.equal (optionsError "010101 02") (BadOptionLength 3) "kind with no length byte"
            }

            test "known options with the wrong size are BadOptionSize" {
                Expect.equal (optionsError "0205 000000 00") (BadOptionSize(2, 5)) "MSS of 5"
                Expect.equal (optionsError "0304 0000") (BadOptionSize(3, 4)) "window scale of 4"
                Expect.equal (optionsError "0403 00 00") (BadOptionSize(4, 3)) "SACK-permitted of 3"
                Expect.equal (optionsError "0808 000000000000") (BadOptionSize(8, 8)) "timestamps of 8"
                Expect.equal (optionsError "0502 0000") (BadOptionSize(5, 2)) "SACK with no block"
                Expect.equal (optionsError "050b 000000000000000000") (BadOptionSize(5, 11)) "SACK of 11"

                Expect.equal
                    (optionsError ("052a" + String.replicate 40 "00"))
                    (BadOptionSize(5, 42))
                    "SACK with five blocks"
            }

            test "a segment shorter than 20 bytes is Truncated" {
                Expect.equal (Tcp.parse (ReadOnlySpan(Array.zeroCreate 19))) (Error(Truncated(20, 19))) "19 bytes"
            }

            test "a data offset below 5 or past the segment is BadHeaderLength" {
                let bytes = hex "9c40 0050 01020304 00000000 40 02 faf0 0000 0000"
                Expect.equal (Tcp.parse (ReadOnlySpan bytes)) (Error(BadHeaderLength 16)) "data offset 4"
                bytes.[12] <- 0x60uy
                Expect.equal (Tcp.parse (ReadOnlySpan bytes)) (Error(BadHeaderLength 24)) "data offset 6 in 20 bytes"
            }

            test "a wrong checksum is BadChecksum" {
                let bytes =
                    buildV4 (TcpHeader.Create(1us, 2us, 3u, 4u, TcpFlags.Ack, 5us)) TcpOptions.None "data"B

                bytes.[bytes.Length - 1] <- bytes.[bytes.Length - 1] ^^^ 0x80uy

                Expect.equal
                    (Tcp.parseV4 v4Source v4Destination (ReadOnlySpan bytes))
                    (Error BadChecksum)
                    "one flipped payload bit"
            }

            test "every flag round-trips by name" {
                let all =
                    TcpFlags.Cwr
                    ||| TcpFlags.Ece
                    ||| TcpFlags.Urg
                    ||| TcpFlags.Ack
                    ||| TcpFlags.Psh
                    ||| TcpFlags.Rst
                    ||| TcpFlags.Syn
                    ||| TcpFlags.Fin

                Expect.equal (byte all) 0xFFuy "the eight control bits fill byte 13"

                let bytes =
                    buildV4
                        (TcpHeader.Create(1us, 2us, 3u, 4u, TcpFlags.Psh ||| TcpFlags.Ack, 5us))
                        TcpOptions.None
                        [||]

                Expect.equal bytes.[13] 0x18uy "PSH|ACK is 0x18"
            }

            test "options the writer cannot encode are an ArgumentException" {
                let block = { Left = 1u; Right = 2u }

                let fourBlocksAndTimestamps =
                    { TcpOptions.None with
                        Timestamps = ValueSome { Value = 1u; EchoReply = 2u }
                        SackBlockCount = 4
                        Sack0 = block
                        Sack1 = block
                        Sack2 = block
                        Sack3 = block
                    }

                Expect.throwsT<ArgumentException>
                    (fun () -> Tcp.writeOptions (Span(Array.zeroCreate 60)) fourBlocksAndTimestamps |> ignore)
                    "48 bytes of options"

                Expect.throwsT<ArgumentException>
                    (fun () ->
                        Tcp.writeOptions
                            (Span(Array.zeroCreate 40))
                            { TcpOptions.None with
                                WindowScale = ValueSome 15uy
                            }
                        |> ignore)
                    "window scale 15"

                Expect.throwsT<ArgumentException>
                    (fun () ->
                        Tcp.optionsLength
                            { TcpOptions.None with
                                SackBlockCount = 5
                            }
                        |> ignore)
                    "five SACK blocks"

                Expect.throwsT<ArgumentException>
                    (fun () ->
                        Tcp.buildV4
                            (Span(Array.zeroCreate 23))
                            v4Source
                            v4Destination
                            (TcpHeader.Create(1us, 2us, 3u, 4u, TcpFlags.Ack, 5us))
                            TcpOptions.None
                            (ReadOnlySpan "data"B)
                        |> ignore)
                    "23 bytes for 24"
            }
        ]
