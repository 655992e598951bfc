module NetStack.Tests.Ipv6Tests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire

/// FsCheck 3 zips up to three generators; packets here need four.
let zip4 a b c d =
    gen {
        let! x = a
        let! y = b
        let! z = c
        let! w = d
        return x, y, z, w
    }

let private byteGen = Gen.choose (0, 255) |> Gen.map byte

let private bytesGen (maxLength: int) =
    gen {
        let! length = Gen.choose (0, maxLength)
        return! Gen.arrayOfLength length byteGen
    }

let private addressGen =
    gen {
        let! a = Gen.choose (Int32.MinValue, Int32.MaxValue)
        let! b = Gen.choose (Int32.MinValue, Int32.MaxValue)
        let! c = Gen.choose (Int32.MinValue, Int32.MaxValue)
        let! d = Gen.choose (Int32.MinValue, Int32.MaxValue)

        return
            Ipv6Address(
                (uint64 (uint32 a) <<< 32) ||| uint64 (uint32 b),
                (uint64 (uint32 c) <<< 32) ||| uint64 (uint32 d)
            )
    }

/// A random fixed header; PayloadLength and NextHeader are set when the packet is built.
let headerGen =
    gen {
        let! trafficClass = byteGen
        let! flowLabel = Gen.choose (0, 0xFFFFF)
        let! hopLimit = byteGen
        let! src = addressGen
        let! dst = addressGen

        return
            { Ipv6.header src dst 0uy with
                TrafficClass = trafficClass
                FlowLabel = uint32 flowLabel
                HopLimit = hopLimit
            }
    }

/// An extension header to put in a test packet: its type and its bytes (the first two, Next
/// Header and Hdr Ext Len, are filled in by `build`).
type Extension = { Kind: byte; Body: byte[] }

/// An options or routing header of 8 to 32 bytes with random contents.
let private extensionGen (kind: byte) =
    gen {
        let! units = Gen.choose (0, 3)
        let! body = Gen.arrayOfLength ((units + 1) * 8) byteGen
        return { Kind = kind; Body = body }
    }

/// A Fragment header with random fields (as bytes; Next Header filled in by `build`).
let private fragmentExtensionGen =
    gen {
        let! offset = Gen.choose (0, 8191)
        let! more = Gen.elements [ true; false ]
        let! id = Gen.choose (Int32.MinValue, Int32.MaxValue)
        let body = Array.zeroCreate<byte> 8

        Ipv6.writeFragmentHeader
            {
                NextHeader = 0uy
                Offset = offset * 8
                MoreFragments = more
                Identification = uint32 id
            }
            (Span body)
        |> ignore

        return
            {
                Kind = IpProtocol.Ipv6Fragment
                Body = body
            }
    }

/// A plausible chain in RFC 8200 §4.1 order: Hop-by-Hop, Destination Options, Routing,
/// Fragment, Destination Options, each present or not.
let chainGen =
    gen {
        let optional p g =
            Gen.frequency [ 1, Gen.constant []; p, Gen.map List.singleton g ]

        let! hbh = optional 1 (extensionGen IpProtocol.HopByHop)
        let! dest1 = optional 1 (extensionGen IpProtocol.Ipv6DestinationOptions)
        let! routing = optional 1 (extensionGen IpProtocol.Ipv6Routing)
        let! fragment = optional 1 fragmentExtensionGen
        let! dest2 = optional 1 (extensionGen IpProtocol.Ipv6DestinationOptions)
        return List.concat [ hbh; dest1; routing; fragment; dest2 ]
    }

let private upperGen =
    Gen.elements
        [
            IpProtocol.Tcp
            IpProtocol.Udp
            IpProtocol.Icmpv6
            IpProtocol.Ipv6NoNextHeader
        ]

/// Lays out fixed header, extension headers (chained by their Next Header bytes) and payload.
let build (header: Ipv6Header) (chain: Extension list) (upper: byte) (payload: byte[]) =
    let extensionBytes = chain |> List.sumBy (fun e -> e.Body.Length)
    let packet = Array.zeroCreate<byte>(40 + extensionBytes + payload.Length)
    let kinds = (chain |> List.map (fun e -> e.Kind)) @ [ upper ]

    Ipv6.write
        { header with
            NextHeader = List.head kinds
            PayloadLength = extensionBytes + payload.Length
        }
        (Span packet)
    |> ignore

    let mutable position = 40

    for e, next in List.zip chain (List.tail kinds) do
        Array.blit e.Body 0 packet position e.Body.Length
        packet.[position] <- next

        if e.Kind <> IpProtocol.Ipv6Fragment then
            packet.[position + 1] <- byte (e.Body.Length / 8 - 1)

        position <- position + e.Body.Length

    Array.blit payload 0 packet position payload.Length
    packet

/// What the walker should report for a chain built by `build`, worked out the long way.
let private expectedExtensions (chain: Extension list) (upper: byte) (payloadLength: int) =
    let total = 40 + (chain |> List.sumBy (fun e -> e.Body.Length)) + payloadLength
    let mutable position = 40
    let mutable naming = 6
    let mutable unfragmentable = struct (40, 6)
    let mutable fragment = ValueNone
    let mutable count = 0
    let mutable stopped = false
    let mutable protocol = upper
    let kinds = (chain |> List.map (fun e -> e.Kind)) @ [ upper ]

    for e, next in List.zip chain (List.tail kinds) do
        if not stopped then
            count <- count + 1

            if e.Kind = IpProtocol.Ipv6Fragment then
                let offsetFlags = (int e.Body.[2] <<< 8) ||| int e.Body.[3]

                fragment <-
                    ValueSome
                        {
                            NextHeader = next
                            Offset = (offsetFlags >>> 3) * 8
                            MoreFragments = offsetFlags &&& 1 = 1
                            Identification =
                                Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(ReadOnlySpan(e.Body, 4, 4))
                        }

                unfragmentable <- struct (position, naming)
                protocol <- next
                stopped <- true
            elif e.Kind <> IpProtocol.Ipv6DestinationOptions then
                unfragmentable <- struct (position + e.Body.Length, position)

            naming <- position
            position <- position + e.Body.Length

    let struct (unfragmentableLength, nextHeaderOffset) = unfragmentable

    {
        UpperProtocol = protocol
        UpperOffset = position
        UpperLength = total - position
        Fragment = fragment
        UnfragmentableLength = unfragmentableLength
        UnfragmentableNextHeaderOffset = nextHeaderOffset
        ExtensionHeaders = count
    }

/// Parses the fixed header and walks the chain.
let parseAll (packet: byte[]) =
    match Ipv6.parse (ReadOnlySpan packet) with
    | Error e -> Error e
    | Ok h -> Ipv6.parseExtensions (ReadOnlySpan packet) h |> Result.map (fun x -> h, x)

/// When parsing succeeds, every offset and length lies inside the input.
let private expectInside (length: int) (packet: byte[]) =
    match Ipv6.parse (ReadOnlySpan packet) with
    | Error _ -> ()
    | Ok h ->
        Expect.isTrue (h.PayloadOffset + h.PayloadLength <= length) "payload inside the input"

        match Ipv6.parseExtensions (ReadOnlySpan packet) h with
        | Error _ -> ()
        | Ok x ->
            Expect.isTrue (x.UpperOffset >= 40 && x.UpperLength >= 0) "upper layer after the fixed header"
            Expect.isTrue (x.UpperOffset + x.UpperLength <= length) "upper layer inside the input"

            Expect.isTrue
                (x.UnfragmentableLength >= 40 && x.UnfragmentableLength <= x.UpperOffset)
                "unfragmentable part"

            Expect.isTrue
                (x.UnfragmentableNextHeaderOffset >= 6
                 && x.UnfragmentableNextHeaderOffset < x.UnfragmentableLength)
                "naming byte inside"

let private sample (chain: Extension list) =
    build
        (Ipv6.header (Ipv6Address.Parse "fe80::1") (Ipv6Address.Parse "fe80::2") 0uy)
        chain
        IpProtocol.Udp
        (Array.zeroCreate 8)

let private plain (kind: byte) =
    {
        Kind = kind
        Body = Array.zeroCreate 8
    }

[<Tests>]
let tests =
    testList
        "Ipv6"
        [
            testList
                "round trip"
                [
                    testPropertyWithConfig
                        TestUtil.codecConfig
                        "an IPAddress converts to its sixteen bytes as two big-endian halves"
                    <| fun (seed: int) ->
                        let bytes = Array.zeroCreate<byte> 16
                        Random(seed).NextBytes bytes
                        let address = Ipv6Address.OfIPAddress(System.Net.IPAddress bytes)

                        let half (at: int) =
                            Seq.fold (fun acc i -> (acc <<< 8) ||| uint64 bytes[at + i]) 0UL [ 0..7 ]

                        address.High = half 0
                        && address.Low = half 8
                        && address.ToIPAddress().GetAddressBytes() = bytes

                    testPropertyWithConfig
                        TestUtil.codecConfig
                        "writing then parsing the fixed header returns every field"
                    <| Prop.forAll
                        (Arb.fromGen (Gen.zip3 headerGen byteGen (bytesGen 200)))
                        (fun (header, next, payload) ->
                            let packet = build { header with NextHeader = next } [] next payload

                            match Ipv6.parse (ReadOnlySpan packet) with
                            | Error e -> failtest $"{e}"
                            | Ok h ->
                                Expect.equal
                                    h
                                    { header with
                                        NextHeader = next
                                        PayloadLength = payload.Length
                                    }
                                    "fields")

                    testPropertyWithConfig
                        TestUtil.codecConfig
                        "the chain walker finds the upper layer, the fragment header and the unfragmentable part"
                    <| Prop.forAll
                        (Arb.fromGen (zip4 headerGen chainGen upperGen (bytesGen 100)))
                        (fun (header, chain, upper, payload) ->
                            let packet = build header chain upper payload

                            match parseAll packet with
                            | Error e -> failtest $"{e}"
                            | Ok(_, x) -> Expect.equal x (expectedExtensions chain upper payload.Length) "walk")

                    testPropertyWithConfig
                        TestUtil.codecConfig
                        "writing then reading a Fragment header returns every field"
                    <| Prop.forAll
                        (Arb.fromGen (
                            zip4
                                byteGen
                                (Gen.choose (0, 8191))
                                (Gen.elements [ true; false ])
                                (Gen.choose (Int32.MinValue, Int32.MaxValue))
                        ))
                        (fun (next, units, more, id) ->
                            let f =
                                {
                                    NextHeader = next
                                    Offset = units * 8
                                    MoreFragments = more
                                    Identification = uint32 id
                                }

                            let packet = Array.zeroCreate<byte> 48

                            Ipv6.write
                                { Ipv6.header Ipv6Address.Any Ipv6Address.Any IpProtocol.Ipv6Fragment with
                                    PayloadLength = 8
                                }
                                (Span packet)
                            |> ignore

                            Ipv6.writeFragmentHeader f (Span(packet, 40, 8)) |> ignore

                            match parseAll packet with
                            | Ok(_, x) -> Expect.equal x.Fragment (ValueSome f) "fragment header"
                            | Error e -> failtest $"{e}")
                ]

            testList
                "hostile input"
                [
                    testPropertyWithConfig TestUtil.codecConfig "random bytes never throw, and an Ok stays inside them"
                    <| Prop.forAll
                        (Arb.fromGen (Gen.zip (bytesGen 200) (Gen.elements [ 0uy; 43uy; 44uy; 60uy; 6uy ])))
                        (fun (bytes, next) ->
                            // Mostly a plausible start, so the chain walker sees random chains.
                            if bytes.Length >= 40 then
                                bytes.[0] <- 0x60uy
                                bytes.[4] <- 0uy
                                bytes.[5] <- byte (min 255 (bytes.Length - 40))
                                bytes.[6] <- next

                            expectInside bytes.Length bytes)

                    testPropertyWithConfig
                        TestUtil.codecConfig
                        "mutated and truncated valid packets never throw, and an Ok stays inside them"
                    <| Prop.forAll
                        (Arb.fromGen (
                            Gen.zip3
                                (zip4 headerGen chainGen upperGen (bytesGen 60))
                                (Gen.listOfLength 3 (Gen.choose (0, 10000)))
                                (Gen.choose (0, 10000))
                        ))
                        (fun ((header, chain, upper, payload), flips, cut) ->
                            let packet = build header chain upper payload

                            for f in flips do
                                packet.[f % packet.Length] <- packet.[f % packet.Length] ^^^ byte (f / 7 + 1)

                            let packet = packet.[0 .. (cut % (packet.Length + 1)) - 1]
                            expectInside packet.Length packet)
                ]

            testList
                "malformed"
                [
                    test "fewer than 40 bytes is Truncated" {
                        Expect.equal
                            (Ipv6.parse (ReadOnlySpan((sample []).[0..38])))
                            (Error(Truncated(40, 39)))
                            "39 bytes"
                    }

                    test "a version other than 6 is BadVersion" {
                        let p = sample []
                        p.[0] <- 0x40uy
                        Expect.equal (Ipv6.parse (ReadOnlySpan p)) (Error(BadVersion 4)) "version 4"
                    }

                    test "Payload Length past the buffer is LengthBeyondBuffer" {
                        let p = sample []
                        p.[5] <- 9uy
                        Expect.equal (Ipv6.parse (ReadOnlySpan p)) (Error(LengthBeyondBuffer(49, 48))) "49 of 48"
                    }

                    test "Hop-by-Hop anywhere but first is MisplacedExtensionHeader" {
                        let p =
                            sample [ plain IpProtocol.Ipv6DestinationOptions; plain IpProtocol.HopByHop ]

                        Expect.equal (parseAll p) (Error(MisplacedExtensionHeader 0)) "second"
                    }

                    test "more extension headers than the bound is ExtensionChainTooLong" {
                        let chain =
                            List.replicate (Ipv6.MaxExtensionHeaders + 1) (plain IpProtocol.Ipv6DestinationOptions)

                        Expect.equal (parseAll (sample chain)) (Error(ExtensionChainTooLong 9)) "nine"

                        let chain =
                            List.replicate Ipv6.MaxExtensionHeaders (plain IpProtocol.Ipv6DestinationOptions)

                        Expect.isOk (parseAll (sample chain)) "eight are fine"
                    }

                    test "an extension header longer than the payload is Truncated" {
                        let p = sample [ plain IpProtocol.Ipv6Routing ]
                        p.[41] <- 1uy // 16 bytes claimed; 8 of header + 8 of UDP are there: exactly fits
                        Expect.isOk (parseAll p) "16 bytes fit"
                        p.[41] <- 2uy
                        Expect.equal (parseAll p) (Error(Truncated(64, 56))) "24 bytes do not"
                    }

                    test "a chain running off the end is Truncated at the header it needs" {
                        let p = sample [ plain IpProtocol.Ipv6DestinationOptions ]
                        // Claim a Fragment header after the options, where only 8 bytes of UDP remain,
                        // then cut the payload to 4 of them.
                        p.[40] <- IpProtocol.Ipv6Fragment
                        p.[5] <- 12uy
                        Expect.equal (parseAll p.[0..51]) (Error(Truncated(56, 52))) "fragment header"
                        p.[40] <- IpProtocol.Ipv6DestinationOptions
                        p.[5] <- 9uy
                        Expect.equal (parseAll p.[0..48]) (Error(Truncated(50, 49))) "no room for the length byte"
                    }
                ]

            testList
                "known answers"
                [
                    test "a hand-assembled UDP packet ::1 to ::2 parses field by field" {
                        let packet =
                            TestUtil.hex
                                """
                            6a12 3456 0008 1140
                            0000 0000 0000 0000 0000 0000 0000 0001
                            0000 0000 0000 0000 0000 0000 0000 0002
                            1234 5678 0008 0000
                            """

                        match parseAll packet with
                        | Error e -> failtest $"{e}"
                        | Ok(h, x) ->
                            Expect.equal h.TrafficClass 0xA1uy "traffic class spans the first two bytes"
                            Expect.equal h.FlowLabel 0x23456u "flow label"
                            Expect.equal h.PayloadLength 8 "payload length"
                            Expect.equal h.HopLimit 64uy "hop limit"
                            Expect.equal h.Source (Ipv6Address.Parse "::1") "source"
                            Expect.equal h.Destination (Ipv6Address.Parse "::2") "destination"

                            Expect.equal
                                (x.UpperProtocol, x.UpperOffset, x.UpperLength)
                                (IpProtocol.Udp, 40, 8)
                                "upper layer"

                            Expect.equal x.Fragment ValueNone "no fragment header"
                    }

                    test "the Fragment header 3a 00 00 b9 12 34 56 78 is ICMPv6 at offset 184, M set, id 0x12345678" {
                        let packet = Array.append (sample []).[0..39] (TestUtil.hex "3a00 00b9 1234 5678")
                        packet.[5] <- 8uy
                        packet.[6] <- IpProtocol.Ipv6Fragment

                        match parseAll packet with
                        | Error e -> failtest $"{e}"
                        | Ok(_, x) ->
                            Expect.equal
                                x.Fragment
                                (ValueSome
                                    {
                                        NextHeader = IpProtocol.Icmpv6
                                        Offset = 184
                                        MoreFragments = true
                                        Identification = 0x12345678u
                                    })
                                "fields"

                            Expect.equal
                                (x.UnfragmentableLength, x.UnfragmentableNextHeaderOffset)
                                (40, 6)
                                "right after the fixed header"
                    }
                ]

            testList
                "writer rejects caller bugs"
                [
                    test "short destinations and out-of-range fields" {
                        let h = Ipv6.header Ipv6Address.Any Ipv6Address.Any 0uy

                        let f =
                            {
                                NextHeader = 0uy
                                Offset = 0
                                MoreFragments = false
                                Identification = 0u
                            }

                        let throws name (action: unit -> int) =
                            Expect.throwsT<ArgumentException> (action >> ignore) name

                        throws "39 bytes" (fun () -> Ipv6.write h (Span(Array.zeroCreate 39)))

                        throws "flow label" (fun () ->
                            Ipv6.write { h with FlowLabel = 0x100000u } (Span(Array.zeroCreate 40)))

                        throws "payload length" (fun () ->
                            Ipv6.write { h with PayloadLength = 65536 } (Span(Array.zeroCreate 40)))

                        throws "7 bytes" (fun () -> Ipv6.writeFragmentHeader f (Span(Array.zeroCreate 7)))

                        throws "offset 4" (fun () ->
                            Ipv6.writeFragmentHeader { f with Offset = 4 } (Span(Array.zeroCreate 8)))

                        throws "offset 65536" (fun () ->
                            Ipv6.writeFragmentHeader { f with Offset = 65536 } (Span(Array.zeroCreate 8)))
                    }
                ]
        ]
