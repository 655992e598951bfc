module NetStack.Tests.FragmentationTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Core.Ip

let private byteGen = Gen.choose (0, 255) |> Gen.map byte

let private payloadGen (maxLength: int) =
    gen {
        let! length = Gen.frequency [ 1, Gen.choose (0, 100); 3, Gen.choose (0, maxLength) ]
        return! Gen.arrayOfLength length byteGen
    }

/// The options RFC 791 §3.1 says go into every fragment: those whose type has the copied flag,
/// picked out the plain way.
let private copiedOptionsNaive (options: byte[]) =
    let rec walk i acc =
        if i >= options.Length || options.[i] = 0uy then
            acc
        elif options.[i] = 1uy then
            walk (i + 1) acc
        else
            let length = int options.[i + 1]

            let acc =
                if options.[i] &&& 0x80uy <> 0uy then
                    Array.append acc options.[i .. i + length - 1]
                else
                    acc

            walk (i + length) acc

    walk 0 [||]

let private padTo4 (options: byte[]) =
    Array.append options (Array.zeroCreate ((4 - options.Length % 4) % 4))

/// Writes every fragment of an IPv4 datagram into its own array sized exactly.
let private ipv4Fragments (plan: Ipv4FragmentPlan) (header: Ipv4Header) (options: byte[]) (payload: byte[]) =
    Array.init plan.Count (fun i ->
        let buffer = Array.zeroCreate<byte> plan.Mtu

        let n =
            Fragmentation.writeIpv4Fragment plan header (ReadOnlySpan options) (ReadOnlySpan payload) i (Span buffer)

        buffer.[0 .. n - 1])

/// Writes every fragment of an IPv6 packet into its own array sized exactly.
let private ipv6Fragments (plan: Ipv6FragmentPlan) (packet: byte[]) (mtu: int) =
    Array.init plan.Count (fun i ->
        let buffer = Array.zeroCreate<byte> mtu
        let n = Fragmentation.writeIpv6Fragment plan (ReadOnlySpan packet) i (Span buffer)
        buffer.[0 .. n - 1])

let private ipv4Case =
    gen {
        let! header = Ipv4Tests.headerGen
        let! options = Ipv4Tests.optionsGen
        let! payload = payloadGen 6000

        let! mtu =
            Gen.frequency [ 3, Gen.choose (68, 600); 2, Gen.choose (576, 1500); 1, Gen.constant 68 ]

        let! baseUnits = Gen.choose (0, 400)

        return
            { header with
                DontFragment = false
                FragmentOffset = baseUnits * 8
            },
            options,
            payload,
            mtu
    }

/// A packet with no Fragment header: any of Hop-by-Hop, Destination Options, Routing,
/// Destination Options, then an upper layer.
let private ipv6Case =
    gen {
        let! header = Ipv6Tests.headerGen
        let! chain = Ipv6Tests.chainGen
        let chain = chain |> List.filter (fun e -> e.Kind <> IpProtocol.Ipv6Fragment)

        let! upper =
            Gen.elements
                [
                    IpProtocol.Tcp
                    IpProtocol.Udp
                    IpProtocol.Icmpv6
                    IpProtocol.Ipv6NoNextHeader
                ]

        let! payload = payloadGen 9000
        let! mtu = Gen.frequency [ 3, Gen.choose (1280, 1500); 1, Gen.choose (1280, 9000) ]
        let! id = Gen.choose (Int32.MinValue, Int32.MaxValue)
        return Ipv6Tests.build header chain upper payload, mtu, uint32 id
    }

[<Tests>]
let tests =
    testList
        "Fragmentation"
        [
            testList
                "IPv4"
                [
                    testPropertyWithConfig
                        TestUtil.heavyConfig
                        "fragments fit the MTU, parse, carry the right offsets, flags and options, and reassemble to the payload"
                    <| Prop.forAll (Arb.fromGen ipv4Case) (fun (header, options, payload, mtu) ->
                        match Fragmentation.planIpv4 header (ReadOnlySpan options) payload.Length mtu with
                        | Error e -> failtest $"{e}"
                        | Ok plan ->
                            let fragments = ipv4Fragments plan header options payload
                            let rebuilt = Array.create payload.Length 0xEEuy
                            let mutable covered = 0

                            for i, f in Array.indexed fragments do
                                Expect.isLessThanOrEqual f.Length mtu "fits the MTU"

                                match Ipv4.parse (ReadOnlySpan f) with
                                | Error e -> failtest $"fragment {i} does not parse: {e}"
                                | Ok h ->
                                    let last = i = fragments.Length - 1
                                    Expect.equal h.TotalLength f.Length "total length"
                                    Expect.equal h.Identification header.Identification "identification"

                                    Expect.equal
                                        (h.Source, h.Destination, h.Protocol, h.Ttl)
                                        (header.Source, header.Destination, header.Protocol, header.Ttl)
                                        "addressing"

                                    Expect.equal
                                        (h.Dscp, h.Ecn, h.DontFragment)
                                        (header.Dscp, header.Ecn, false)
                                        "service and DF"

                                    Expect.equal
                                        h.MoreFragments
                                        (not last || header.MoreFragments)
                                        "MF on all but the last"

                                    Expect.equal
                                        h.FragmentOffset
                                        (header.FragmentOffset + covered)
                                        "offset follows the previous fragments"

                                    if not last then
                                        Expect.equal (h.PayloadLength % 8) 0 "a multiple of 8 but the last"

                                    let expectedOptions = if i = 0 then options else copiedOptionsNaive options
                                    Expect.equal f.[20 .. h.HeaderLength - 1] (padTo4 expectedOptions) "options"

                                    Array.blit
                                        f
                                        h.PayloadOffset
                                        rebuilt
                                        (h.FragmentOffset - header.FragmentOffset)
                                        h.PayloadLength

                                    covered <- covered + h.PayloadLength

                            Expect.equal covered payload.Length "the fragments cover the payload"
                            Expect.equal rebuilt payload "concatenated by offset they are the payload")

                    testPropertyWithConfig
                        TestUtil.codecConfig
                        "a datagram that fits goes out as one, byte for byte as Ipv4.write makes it"
                    <| Prop.forAll (Arb.fromGen ipv4Case) (fun (header, options, payload, _) ->
                        let mtu =
                            max Fragmentation.MinimumIpv4Mtu (Ipv4.headerLengthFor options.Length + payload.Length)

                        match Fragmentation.planIpv4 header (ReadOnlySpan options) payload.Length mtu with
                        | Ok plan ->
                            Expect.equal plan.Count 1 "one"

                            Expect.equal
                                (ipv4Fragments plan header options payload).[0]
                                (Ipv4Tests.build header options payload)
                                "unchanged"
                        | Error e -> failtest $"{e}")

                    testPropertyWithConfig
                        TestUtil.codecConfig
                        "with Don't Fragment a datagram over the MTU is FragmentationNeeded"
                    <| Prop.forAll (Arb.fromGen ipv4Case) (fun (header, options, payload, mtu) ->
                        let header = { header with DontFragment = true }
                        let result = Fragmentation.planIpv4 header (ReadOnlySpan options) payload.Length mtu

                        if Ipv4.headerLengthFor options.Length + payload.Length > mtu then
                            Expect.equal result (Error(FragmentationNeeded mtu)) "refused"
                        else
                            Expect.isOk result "fits")

                    test "4000 bytes over a 1500-byte MTU are 1480 + 1480 + 1040 at offsets 0, 185 and 370 units" {
                        let header =
                            { Ipv4.header (Ipv4Address.Parse "10.0.0.1") (Ipv4Address.Parse "10.0.0.2") IpProtocol.Udp with
                                Identification = 0x1234us
                            }

                        let payload = Array.init 4000 byte

                        match Fragmentation.planIpv4 header ReadOnlySpan.Empty payload.Length 1500 with
                        | Error e -> failtest $"{e}"
                        | Ok plan ->
                            let fragments = ipv4Fragments plan header [||] payload
                            Expect.equal (fragments |> Array.map Array.length) [| 1500; 1500; 1060 |] "lengths"

                            let flagsAndOffset =
                                fragments |> Array.map (fun f -> (int f.[6] <<< 8) ||| int f.[7])

                            Expect.equal flagsAndOffset [| 0x2000; 0x2000 ||| 185; 370 |] "MF and offsets"
                    }

                    test "options without the copied flag stay in the first fragment only" {
                        // Record Route (7, not copied) then Security (130, copied), RFC 791 §3.1.
                        let options =
                            [|
                                7uy
                                7uy
                                4uy
                                0uy
                                0uy
                                0uy
                                0uy
                                130uy
                                11uy
                                0uy
                                0uy
                                0uy
                                0uy
                                0uy
                                0uy
                                0uy
                                0uy
                                0uy
                            |]

                        let header =
                            Ipv4.header (Ipv4Address.Parse "10.0.0.1") (Ipv4Address.Parse "10.0.0.2") IpProtocol.Udp

                        let payload = Array.zeroCreate<byte> 200

                        match Fragmentation.planIpv4 header (ReadOnlySpan options) payload.Length 100 with
                        | Error e -> failtest $"{e}"
                        | Ok plan ->
                            Expect.equal (plan.FirstHeaderLength, plan.LaterHeaderLength) (40, 32) "header lengths"

                            Expect.equal
                                (plan.FirstPayloadLength, plan.LaterPayloadLength)
                                (56, 64)
                                "payload per fragment"

                            Expect.equal plan.Count 4 "56 + 64 + 64 + 16"
                    }

                    test "an MTU below 68, malformed options or a wrong payload are caller bugs" {
                        let header = Ipv4.header Ipv4Address.Any Ipv4Address.Any 0uy

                        Expect.throwsT<ArgumentException>
                            (fun () -> Fragmentation.planIpv4 header ReadOnlySpan.Empty 100 67 |> ignore)
                            "MTU 67"

                        Expect.throwsT<ArgumentException>
                            (fun () -> Fragmentation.planIpv4 header (ReadOnlySpan [| 0x44uy; 1uy |]) 100 576 |> ignore)
                            "option length 1"

                        match Fragmentation.planIpv4 header ReadOnlySpan.Empty 100 576 with
                        | Ok plan ->
                            Expect.throwsT<ArgumentException>
                                (fun () ->
                                    Fragmentation.writeIpv4Fragment
                                        plan
                                        header
                                        ReadOnlySpan.Empty
                                        (ReadOnlySpan(Array.zeroCreate 99))
                                        0
                                        (Span(Array.zeroCreate 576))
                                    |> ignore)
                                "99 bytes of payload"

                            Expect.throwsT<ArgumentException>
                                (fun () ->
                                    Fragmentation.writeIpv4Fragment
                                        plan
                                        header
                                        ReadOnlySpan.Empty
                                        (ReadOnlySpan(Array.zeroCreate 100))
                                        0
                                        (Span(Array.zeroCreate 119))
                                    |> ignore)
                                "buffer too small"
                        | Error e -> failtest $"{e}"
                    }
                ]

            testList
                "IPv6"
                [
                    testPropertyWithConfig
                        TestUtil.heavyConfig
                        "fragments fit the MTU, parse, repeat the unfragmentable part and reassemble to the fragmentable part"
                    <| Prop.forAll (Arb.fromGen ipv6Case) (fun (packet, mtu, id) ->
                        let original =
                            match Ipv6Tests.parseAll packet with
                            | Ok(_, x) -> x
                            | Error e -> failtest $"the test packet does not parse: {e}"

                        let plan = Fragmentation.planIpv6 (ReadOnlySpan packet) id mtu
                        let fragments = ipv6Fragments plan packet mtu

                        if packet.Length <= mtu then
                            Expect.equal fragments [| packet |] "fits: sent unchanged"
                        else
                            let unfragmentable = original.UnfragmentableLength
                            let fragmentable = packet.[unfragmentable..]
                            let rebuilt = Array.create fragmentable.Length 0xEEuy
                            let mutable covered = 0

                            for i, f in Array.indexed fragments do
                                Expect.isLessThanOrEqual f.Length mtu "fits the MTU"

                                match Ipv6Tests.parseAll f with
                                | Error e -> failtest $"fragment {i} does not parse: {e}"
                                | Ok(h, x) ->
                                    let last = i = fragments.Length - 1
                                    Expect.equal (40 + h.PayloadLength) f.Length "payload length"

                                    match x.Fragment with
                                    | ValueNone -> failtest "no Fragment header"
                                    | ValueSome fh ->
                                        Expect.equal fh.Identification id "identification"
                                        Expect.equal fh.MoreFragments (not last) "M on all but the last"
                                        Expect.equal fh.Offset covered "offset follows the previous fragments"

                                        Expect.equal
                                            fh.NextHeader
                                            packet.[original.UnfragmentableNextHeaderOffset]
                                            "next header of the fragmentable part"

                                    Expect.equal x.UnfragmentableLength unfragmentable "same unfragmentable part"
                                    let expectedPrefix = Array.copy packet.[0 .. unfragmentable - 1]
                                    expectedPrefix.[4] <- f.[4]
                                    expectedPrefix.[5] <- f.[5]
                                    expectedPrefix.[original.UnfragmentableNextHeaderOffset] <- IpProtocol.Ipv6Fragment

                                    Expect.equal
                                        f.[0 .. unfragmentable - 1]
                                        expectedPrefix
                                        "unfragmentable part repeated, naming the Fragment header"

                                    if not last then
                                        Expect.equal (x.UpperLength % 8) 0 "a multiple of 8 but the last"

                                    Array.blit f x.UpperOffset rebuilt covered x.UpperLength
                                    covered <- covered + x.UpperLength

                            Expect.equal covered fragmentable.Length "the fragments cover the fragmentable part"
                            Expect.equal rebuilt fragmentable "concatenated by offset they are the fragmentable part")

                    test "a 3000-byte UDP payload over a 1280-byte MTU is 1232 + 1232 + 544 fragmentable bytes" {
                        let header =
                            Ipv6.header (Ipv6Address.Parse "fe80::1") (Ipv6Address.Parse "fe80::2") IpProtocol.Udp

                        let packet = Ipv6Tests.build header [] IpProtocol.Udp (Array.zeroCreate 3008)
                        let plan = Fragmentation.planIpv6 (ReadOnlySpan packet) 7u 1280
                        let fragments = ipv6Fragments plan packet 1280
                        Expect.equal (fragments |> Array.map Array.length) [| 1280; 1280; 592 |] "lengths"

                        Expect.equal
                            (fragments |> Array.map (fun f -> f.[6]))
                            [| 44uy; 44uy; 44uy |]
                            "fixed header names the Fragment header"

                        Expect.equal
                            (fragments |> Array.map (fun f -> f.[40]))
                            [| 17uy; 17uy; 17uy |]
                            "Fragment header names UDP"

                        let offsetFlags =
                            fragments |> Array.map (fun f -> (int f.[42] <<< 8) ||| int f.[43])

                        Expect.equal offsetFlags [| 1; (154 <<< 3) ||| 1; 308 <<< 3 |] "offsets in 8-byte units and M"
                    }

                    test "an MTU below 1280 or a packet that is already a fragment are caller bugs" {
                        let header = Ipv6.header Ipv6Address.Any Ipv6Address.Any IpProtocol.Udp
                        let packet = Ipv6Tests.build header [] IpProtocol.Udp (Array.zeroCreate 2000)

                        Expect.throwsT<ArgumentException>
                            (fun () -> Fragmentation.planIpv6 (ReadOnlySpan packet) 1u 1279 |> ignore)
                            "MTU 1279"

                        let fragment =
                            ipv6Fragments (Fragmentation.planIpv6 (ReadOnlySpan packet) 1u 1280) packet 1280
                            |> Array.head

                        Expect.throwsT<ArgumentException>
                            (fun () -> Fragmentation.planIpv6 (ReadOnlySpan fragment) 1u 1280 |> ignore)
                            "already fragmented"
                    }
                ]
        ]
