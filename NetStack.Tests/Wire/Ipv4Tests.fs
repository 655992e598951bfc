module NetStack.Tests.Ipv4Tests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire

/// A random header template: every field the writer takes, in its whole range.
let headerGen =
    gen {
        let! dscp = Gen.choose (0, 63)
        let! ecn = Gen.choose (0, 3)
        let! id = Gen.choose (0, 0xFFFF)
        let! df = Gen.elements [ true; false ]
        let! mf = Gen.elements [ true; false ]
        let! offset = Gen.choose (0, 1000)
        let! ttl = Gen.choose (0, 255)
        let! protocol = Gen.choose (0, 255)
        let! src = Gen.choose (Int32.MinValue, Int32.MaxValue)
        let! dst = Gen.choose (Int32.MinValue, Int32.MaxValue)

        return
            { Ipv4.header (Ipv4Address(uint32 src)) (Ipv4Address(uint32 dst)) (byte protocol) with
                Dscp = byte dscp
                Ecn = byte ecn
                Identification = uint16 id
                DontFragment = df
                MoreFragments = mf
                FragmentOffset = offset * 8
                Ttl = byte ttl
            }
    }

/// One option: a NOP, or a type-length-value option of a random type (copied flag either way).
let private optionGen =
    Gen.frequency
        [
            1, Gen.constant [| Ipv4.OptionNoOperation |]
            4,
            gen {
                let! kind = Gen.choose (2, 255)
                let! dataLength = Gen.choose (0, 10)
                let! data = Gen.arrayOfLength dataLength (Gen.choose (0, 255) |> Gen.map byte)
                return Array.append [| byte kind; byte (dataLength + 2) |] data
            }
        ]

/// A well-formed options area of 0 to 40 bytes: options while they fit, sometimes an End of
/// Option List after them.
let optionsGen =
    gen {
        let! candidates = Gen.listOfLength 8 optionGen
        let! endMarker = Gen.elements [ true; false ]

        let kept =
            candidates
            |> List.scan (fun (total, _) o -> total + o.Length, o) (0, [||])
            |> List.tail
            |> List.takeWhile (fun (total, _) -> total <= Ipv4.MaxOptionsLength)
            |> List.map snd
            |> Array.concat

        return
            if endMarker && kept.Length < Ipv4.MaxOptionsLength then
                Array.append kept [| Ipv4.OptionEndOfList |]
            else
                kept
    }

/// Builds a whole datagram (header, options, payload) into a fresh array.
let build (header: Ipv4Header) (options: byte[]) (payload: byte[]) =
    let packet =
        Array.zeroCreate<byte>(Ipv4.headerLengthFor options.Length + payload.Length)

    let written = Ipv4.write header (ReadOnlySpan options) payload.Length (Span packet)
    Array.blit payload 0 packet written payload.Length
    packet

let private bytesGen (maxLength: int) =
    gen {
        let! length = Gen.choose (0, maxLength)
        return! Gen.arrayOfLength length (Gen.choose (0, 255) |> Gen.map byte)
    }

let private datagramGen = Gen.zip3 headerGen optionsGen (bytesGen 600)

/// Recomputes the header checksum in place, so a test can reach the checks after it.
let private refreshChecksum (packet: byte[]) =
    let headerLength = min packet.Length (int (packet.[0] &&& 0x0Fuy) * 4)
    packet.[10] <- 0uy
    packet.[11] <- 0uy
    let c = Checksum.compute (ReadOnlySpan(packet, 0, headerLength))
    packet.[10] <- byte (c >>> 8)
    packet.[11] <- byte c

/// When a parse succeeds, every offset and length it reports lies inside the input.
let private expectInside (length: int) (result: Result<Ipv4Header, ParseError>) =
    match result with
    | Ok h ->
        Expect.isTrue (h.OptionsOffset >= 0 && h.OptionsLength >= 0) "options start and length are non-negative"
        Expect.isTrue (h.OptionsOffset + h.OptionsLength <= length) "options inside the input"
        Expect.isTrue (h.PayloadOffset >= 0 && h.PayloadLength >= 0) "payload start and length are non-negative"
        Expect.isTrue (h.PayloadOffset + h.PayloadLength <= length) "payload inside the input"
    | Error _ -> ()

let private parseBytes (packet: byte[]) = Ipv4.parse (ReadOnlySpan packet)

/// A minimal valid datagram to break in the malformed-input tests: 20-byte header, 8-byte payload.
let private sample () =
    let src = Ipv4Address.Parse "10.0.0.1"
    let dst = Ipv4Address.Parse "10.0.0.2"
    build (Ipv4.header src dst IpProtocol.Udp) [||] (Array.zeroCreate 8)

[<Tests>]
let tests =
    testList
        "Ipv4"
        [
            testList
                "round trip"
                [
                    testPropertyWithConfig
                        TestUtil.codecConfig
                        "an IPAddress converts to the big-endian value of its four bytes"
                    <| fun (a: byte) (b: byte) (c: byte) (d: byte) ->
                        let address = Ipv4Address.OfIPAddress(System.Net.IPAddress [| a; b; c; d |])

                        let expected =
                            (uint32 a <<< 24) ||| (uint32 b <<< 16) ||| (uint32 c <<< 8) ||| uint32 d

                        address.Value = expected
                        && address.ToIPAddress().GetAddressBytes() = [| a; b; c; d |]

                    testPropertyWithConfig TestUtil.codecConfig "writing then parsing returns every field"
                    <| Prop.forAll (Arb.fromGen datagramGen) (fun (header, options, payload) ->
                        let packet = build header options payload
                        let headerLength = Ipv4.headerLengthFor options.Length

                        match parseBytes packet with
                        | Error e -> failtest $"did not parse: {e}"
                        | Ok h ->
                            let expected =
                                { header with
                                    HeaderLength = headerLength
                                    TotalLength = packet.Length
                                    HeaderChecksum = h.HeaderChecksum
                                    OptionsOffset = 20
                                    OptionsLength = headerLength - 20
                                    PayloadOffset = headerLength
                                    PayloadLength = payload.Length
                                }

                            Expect.equal h expected "fields"

                            Expect.equal
                                (packet.[20 .. 19 + options.Length])
                                options
                                "options are copied as given, then zero padding"

                            Expect.isTrue
                                (Array.forall ((=) 0uy) packet.[20 + options.Length .. headerLength - 1])
                                "padding"

                            Expect.equal packet.[headerLength..] payload "payload")

                    testPropertyWithConfig TestUtil.codecConfig "bytes after Total Length are link padding, not payload"
                    <| Prop.forAll
                        (Arb.fromGen (Gen.zip datagramGen (bytesGen 50)))
                        (fun ((header, options, payload), pad) ->
                            let packet = Array.append (build header options payload) pad

                            match parseBytes packet with
                            | Ok h -> Expect.equal h.PayloadLength payload.Length "payload bounded by Total Length"
                            | Error e -> failtest $"did not parse: {e}")
                ]

            testList
                "hostile input"
                [
                    testPropertyWithConfig TestUtil.codecConfig "random bytes never throw, and an Ok stays inside them"
                    <| Prop.forAll (Arb.fromGen (bytesGen 100)) (fun bytes ->
                        // Half the time give it a plausible first byte so the deeper checks run too.
                        if bytes.Length > 0 && bytes.[0] % 2uy = 0uy then
                            bytes.[0] <- 0x40uy ||| (bytes.[0] &&& 0x0Fuy)

                        expectInside bytes.Length (Ipv4.parseWith false (ReadOnlySpan bytes))
                        expectInside bytes.Length (parseBytes bytes))

                    testPropertyWithConfig
                        TestUtil.codecConfig
                        "mutated and truncated valid datagrams never throw, and an Ok stays inside them"
                    <| Prop.forAll
                        (Arb.fromGen (
                            Gen.zip3 datagramGen (Gen.listOfLength 3 (Gen.choose (0, 10000))) (Gen.choose (0, 10000))
                        ))
                        (fun ((header, options, payload), flips, cut) ->
                            let packet = build header options payload

                            for f in flips do
                                packet.[f % packet.Length] <- packet.[f % packet.Length] ^^^ byte (f / 7 + 1)

                            let packet = packet.[0 .. (cut % (packet.Length + 1)) - 1]
                            expectInside packet.Length (Ipv4.parseWith false (ReadOnlySpan packet))
                            expectInside packet.Length (parseBytes packet)

                            if packet.Length >= 20 then
                                refreshChecksum packet
                                expectInside packet.Length (parseBytes packet))
                ]

            testList
                "malformed"
                [
                    test "fewer than 20 bytes is Truncated" {
                        Expect.equal (parseBytes (sample().[0..18])) (Error(Truncated(20, 19))) "19 bytes"
                        Expect.equal (parseBytes [||]) (Error(Truncated(20, 0))) "no bytes"
                    }

                    test "a version other than 4 is BadVersion" {
                        let p = sample ()
                        p.[0] <- 0x65uy
                        Expect.equal (parseBytes p) (Error(BadVersion 6)) "version 6"
                    }

                    test "IHL below 5 is BadHeaderLength" {
                        let p = sample ()
                        p.[0] <- 0x44uy
                        Expect.equal (parseBytes p) (Error(BadHeaderLength 16)) "IHL 4"
                    }

                    test "IHL past the buffer is BadHeaderLength" {
                        let p = sample ()
                        p.[0] <- 0x48uy
                        Expect.equal (parseBytes p) (Error(BadHeaderLength 32)) "IHL 8 with 28 bytes"
                    }

                    test "Total Length below the header length is LengthBelowHeader" {
                        let p = sample ()
                        p.[2] <- 0uy
                        p.[3] <- 19uy
                        refreshChecksum p
                        Expect.equal (parseBytes p) (Error(LengthBelowHeader(19, 20))) "total 19"
                    }

                    test "Total Length past the buffer is LengthBeyondBuffer" {
                        let p = sample ()
                        p.[3] <- 29uy
                        refreshChecksum p
                        Expect.equal (parseBytes p) (Error(LengthBeyondBuffer(29, 28))) "total 29 of 28"
                    }

                    test "a wrong header checksum is BadChecksum, unless verification is off" {
                        let p = sample ()
                        p.[8] <- p.[8] + 1uy
                        Expect.equal (parseBytes p) (Error BadChecksum) "TTL changed"
                        Expect.isOk (Ipv4.parseWith false (ReadOnlySpan p)) "not verified"
                    }

                    test "an option length of 0 or 1, past the area, or missing is BadOptionLength" {
                        let withOptions (options: byte[]) =
                            let p = build (Ipv4.header Ipv4Address.Any Ipv4Address.Any 0uy) [||] [||]
                            let header = Array.append p.[0..19] options
                            header.[0] <- 0x40uy ||| byte (header.Length / 4)
                            header.[3] <- byte header.Length
                            refreshChecksum header
                            parseBytes header

                        Expect.equal (withOptions [| 1uy; 0x44uy; 0uy; 0uy |]) (Error(BadOptionLength 1)) "length 0"
                        Expect.equal (withOptions [| 0x44uy; 1uy; 0uy; 0uy |]) (Error(BadOptionLength 0)) "length 1"

                        Expect.equal
                            (withOptions [| 1uy; 0x44uy; 4uy; 0uy |])
                            (Error(BadOptionLength 1))
                            "past the area"

                        Expect.equal
                            (withOptions [| 1uy; 1uy; 1uy; 0x07uy |])
                            (Error(BadOptionLength 3))
                            "no length byte"

                        Expect.isOk
                            (withOptions [| 1uy; 0uy; 0x44uy; 0uy |])
                            "anything after End of Option List is padding"

                        Expect.isOk (withOptions [| 0x94uy; 4uy; 0uy; 0uy |]) "Router Alert (RFC 2113)"
                    }
                ]

            testList
                "known answers"
                [
                    test "the textbook header 4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7 parses field by field" {
                        let bytes =
                            Array.append
                                (TestUtil.hex "4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7")
                                (Array.zeroCreate 95)

                        match parseBytes bytes with
                        | Error e -> failtest $"{e}"
                        | Ok h ->
                            Expect.equal h.HeaderLength 20 "IHL 5"
                            Expect.equal h.TotalLength 0x73 "total length"
                            Expect.isTrue h.DontFragment "DF"
                            Expect.isFalse h.IsFragment "not a fragment"
                            Expect.equal h.Ttl 64uy "TTL"
                            Expect.equal h.Protocol IpProtocol.Udp "UDP"
                            Expect.equal h.HeaderChecksum 0xb861us "checksum"
                            Expect.equal h.Source (Ipv4Address.Parse "192.168.0.1") "source"
                            Expect.equal h.Destination (Ipv4Address.Parse "192.168.0.199") "destination"
                            Expect.equal h.PayloadLength 95 "payload"

                        let rebuilt = Array.zeroCreate<byte> 20

                        match parseBytes bytes with
                        | Ok h -> Ipv4.write h ReadOnlySpan.Empty h.PayloadLength (Span rebuilt) |> ignore
                        | Error _ -> ()

                        Expect.equal rebuilt bytes.[0..19] "writing the parsed header gives the same bytes"
                    }

                    test "DSCP, ECN, MF and the offset sit where RFC 791 and RFC 2474 put them" {
                        let h =
                            { Ipv4.header (Ipv4Address.Parse "1.2.3.4") (Ipv4Address.Parse "5.6.7.8") IpProtocol.Tcp with
                                Dscp = 46uy
                                Ecn = 1uy
                                MoreFragments = true
                                FragmentOffset = 8 * 0x123
                                Identification = 0xABCDus
                            }

                        let p = build h [||] [||]
                        Expect.equal p.[1] 0xB9uy "EF (46) << 2 | ECT(1)"
                        Expect.equal p.[4..5] [| 0xABuy; 0xCDuy |] "identification"
                        Expect.equal p.[6..7] [| 0x21uy; 0x23uy |] "MF then offset 0x123"
                    }
                ]

            testList
                "writer rejects caller bugs"
                [
                    test "a destination smaller than the header" {
                        Expect.throwsT<ArgumentException>
                            (fun () ->
                                Ipv4.write
                                    (Ipv4.header Ipv4Address.Any Ipv4Address.Any 0uy)
                                    ReadOnlySpan.Empty
                                    0
                                    (Span(Array.zeroCreate 19))
                                |> ignore)
                            "19 bytes"
                    }

                    test "out-of-range fields and oversized or malformed options" {
                        let h = Ipv4.header Ipv4Address.Any Ipv4Address.Any 0uy

                        let attempt (h: Ipv4Header) (options: byte[]) (payload: int) =
                            Expect.throwsT<ArgumentException>
                                (fun () ->
                                    Ipv4.write h (ReadOnlySpan options) payload (Span(Array.zeroCreate 100))
                                    |> ignore)
                                $"{h} {options.Length} {payload}"

                        attempt { h with Dscp = 64uy } [||] 0
                        attempt { h with Ecn = 4uy } [||] 0
                        attempt { h with FragmentOffset = 12 } [||] 0
                        attempt { h with FragmentOffset = 65536 } [||] 0
                        attempt h [||] 65516
                        attempt h (Array.create 41 1uy) 0
                        attempt h [| 0x44uy; 9uy |] 0
                    }
                ]
        ]
