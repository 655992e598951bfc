module NetStack.Tests.IcmpTests

open System
open System.Buffers.Binary
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Tests.TestUtil

let private v6Source = Ipv6Address.Parse "fe80::1"
let private v6Destination = Ipv6Address.Parse "fe80::2"

let private any<'T> = ArbMap.defaults |> ArbMap.generate<'T>

/// An "original packet" to quote: up to 1500 bytes, so both quoting limits are crossed.
let private originalGen =
    gen {
        let! length = Gen.choose (0, 1500)
        return! Gen.arrayOfLength length any<byte>
    }

let private parseV4 (bytes: byte[]) = Icmpv4.parse (ReadOnlySpan bytes)

let private parseV6 (bytes: byte[]) =
    Icmpv6.parse v6Source v6Destination (ReadOnlySpan bytes)

/// Runs a builder over a buffer with room to spare and returns exactly the bytes written.
let private build (room: int) (write: byte[] -> int) =
    let buffer = Array.zeroCreate (room + 5)
    let n = write buffer
    buffer.[.. n - 1]

let private expectOk result =
    match result with
    | Ok(m: IcmpMessage) -> m
    | Error e -> failtestf "parse failed: %A" e

let private expectInside (bytes: byte[]) (m: IcmpMessage) =
    Expect.isTrue
        (m.DataOffset = 8
         && m.DataLength >= 0
         && m.DataOffset + m.DataLength = bytes.Length)
        "the body lies inside the input"

/// Writes a correct ICMPv4 checksum into arbitrary bytes.
let private fixChecksumV4 (bytes: byte[]) =
    BinaryPrimitives.WriteUInt16BigEndian(Span(bytes, 2, 2), 0us)
    BinaryPrimitives.WriteUInt16BigEndian(Span(bytes, 2, 2), Checksum.compute (ReadOnlySpan bytes))

/// Writes a correct ICMPv6 checksum (fe80::1 -> fe80::2) into arbitrary bytes.
let private fixChecksumV6 (bytes: byte[]) =
    BinaryPrimitives.WriteUInt16BigEndian(Span(bytes, 2, 2), 0us)

    let pseudoHeader =
        Checksum.pseudoHeaderV6 v6Source v6Destination IpProtocol.Icmpv6 bytes.Length

    BinaryPrimitives.WriteUInt16BigEndian(
        Span(bytes, 2, 2),
        Checksum.finish (Checksum.sum pseudoHeader (ReadOnlySpan bytes))
    )

/// Random bytes of at least the header length with a correct checksum: they must always parse.
let private checkedMessageGen (fix: byte[] -> unit) =
    gen {
        let! length = Gen.choose (8, 200)
        let! bytes = Gen.arrayOfLength length any<byte>
        fix bytes
        return bytes
    }

/// One error message: what to build and what the parse must then say.
type private ErrorCase =
    {
        Build: byte[] -> byte[] -> int
        Kind: IcmpMessageKind
        Type: byte
        Code: byte
        Mtu: uint32
        Pointer: uint32
    }

let private v4ErrorGen =
    gen {
        let! code = any<byte>
        let! mtu = any<uint16>
        let! pointer = any<byte>

        return!
            Gen.elements
                [
                    {
                        Build = fun b o -> Icmpv4.buildDestinationUnreachable (Span b) code (ReadOnlySpan o)
                        Kind = IcmpMessageKind.DestinationUnreachable
                        Type = 3uy
                        Code = code
                        Mtu = 0u
                        Pointer = 0u
                    }
                    {
                        Build = fun b o -> Icmpv4.buildFragmentationNeeded (Span b) mtu (ReadOnlySpan o)
                        Kind = IcmpMessageKind.DestinationUnreachable
                        Type = 3uy
                        Code = 4uy
                        Mtu = uint32 mtu
                        Pointer = 0u
                    }
                    {
                        Build = fun b o -> Icmpv4.buildTimeExceeded (Span b) code (ReadOnlySpan o)
                        Kind = IcmpMessageKind.TimeExceeded
                        Type = 11uy
                        Code = code
                        Mtu = 0u
                        Pointer = 0u
                    }
                    {
                        Build = fun b o -> Icmpv4.buildParameterProblem (Span b) pointer (ReadOnlySpan o)
                        Kind = IcmpMessageKind.ParameterProblem
                        Type = 12uy
                        Code = 0uy
                        Mtu = 0u
                        Pointer = uint32 pointer
                    }
                ]
    }

let private v6ErrorGen =
    gen {
        let! code = any<byte>
        let! mtu = any<uint32>
        let! pointer = any<uint32>
        let s, d = v6Source, v6Destination

        return!
            Gen.elements
                [
                    {
                        Build = fun b o -> Icmpv6.buildDestinationUnreachable (Span b) s d code (ReadOnlySpan o)
                        Kind = IcmpMessageKind.DestinationUnreachable
                        Type = 1uy
                        Code = code
                        Mtu = 0u
                        Pointer = 0u
                    }
                    {
                        Build = fun b o -> Icmpv6.buildPacketTooBig (Span b) s d mtu (ReadOnlySpan o)
                        Kind = IcmpMessageKind.PacketTooBig
                        Type = 2uy
                        Code = 0uy
                        Mtu = mtu
                        Pointer = 0u
                    }
                    {
                        Build = fun b o -> Icmpv6.buildTimeExceeded (Span b) s d code (ReadOnlySpan o)
                        Kind = IcmpMessageKind.TimeExceeded
                        Type = 3uy
                        Code = code
                        Mtu = 0u
                        Pointer = 0u
                    }
                    {
                        Build = fun b o -> Icmpv6.buildParameterProblem (Span b) s d code pointer (ReadOnlySpan o)
                        Kind = IcmpMessageKind.ParameterProblem
                        Type = 4uy
                        Code = code
                        Mtu = 0u
                        Pointer = pointer
                    }
                ]
    }

/// Builds the error, parses it back and checks every field and the quote.
let private errorRoundTrip (parse: byte[] -> Result<IcmpMessage, ParseError>) (limit: int) (e: ErrorCase) original =
    let bytes = build 1600 (fun buffer -> e.Build buffer original)

    let m =
        match parse bytes with
        | Ok m -> m
        | Error error ->
            // This failed twice in full-suite runs (BadChecksum on the first cases) and never on
            // replay: say whether the bytes changed after they were built (memory written by
            // someone else) or the same bytes now parse (a wrong sum that once).
            let again = build 1600 (fun buffer -> e.Build buffer original)

            let differing =
                [
                    for i in 0 .. min bytes.Length again.Length - 1 do
                        if bytes.[i] <> again.[i] then
                            yield i
                ]

            failtestf
                "parse failed: %A; %d bytes; rebuilt: %d bytes, differing at %A; the same bytes parse again: %b"
                error
                bytes.Length
                again.Length
                (List.truncate 16 differing)
                (Result.isOk (parse bytes))

    Expect.equal
        (m.Type, m.Code, m.Kind, m.IsError, m.Mtu, m.Pointer)
        (e.Type, e.Code, e.Kind, true, e.Mtu, e.Pointer)
        "type, code, kind, MTU and pointer"

    let quoted = min (Array.length original) (limit - 8)
    Expect.equal m.DataLength quoted "as much of the original as the limit allows"
    Expect.equal bytes.[m.DataOffset ..] original.[.. quoted - 1] "the quote is the start of the original"

[<Tests>]
let tests =
    testList
        "Icmp"
        [
            testPropertyWithConfig codecConfig "ICMPv4 echo requests and replies round-trip with their data"
            <| fun (reply: bool) (identifier: uint16) (sequence: uint16) (data: byte[]) ->
                let bytes =
                    build (8 + data.Length) (fun b ->
                        if reply then
                            Icmpv4.buildEchoReply (Span b) identifier sequence (ReadOnlySpan data)
                        else
                            Icmpv4.buildEchoRequest (Span b) identifier sequence (ReadOnlySpan data))

                let m = expectOk (parseV4 bytes)

                let kind =
                    if reply then
                        IcmpMessageKind.EchoReply
                    else
                        IcmpMessageKind.EchoRequest

                Expect.equal
                    (m.Type, m.Code, m.Kind, m.IsError, m.Identifier, m.SequenceNumber)
                    ((if reply then 0uy else 8uy), 0uy, kind, false, identifier, sequence)
                    "fields"

                Expect.equal bytes.[m.DataOffset ..] data "data"

            testPropertyWithConfig codecConfig "ICMPv6 echo requests and replies round-trip with their data"
            <| fun (reply: bool) (identifier: uint16) (sequence: uint16) (data: byte[]) ->
                let bytes =
                    build (8 + data.Length) (fun b ->
                        if reply then
                            Icmpv6.buildEchoReply
                                (Span b)
                                v6Source
                                v6Destination
                                identifier
                                sequence
                                (ReadOnlySpan data)
                        else
                            Icmpv6.buildEchoRequest
                                (Span b)
                                v6Source
                                v6Destination
                                identifier
                                sequence
                                (ReadOnlySpan data))

                let m = expectOk (parseV6 bytes)

                let kind =
                    if reply then
                        IcmpMessageKind.EchoReply
                    else
                        IcmpMessageKind.EchoRequest

                Expect.equal
                    (m.Type, m.Kind, m.IsError, m.Identifier, m.SequenceNumber)
                    ((if reply then 129uy else 128uy), kind, false, identifier, sequence)
                    "fields"

                Expect.equal bytes.[m.DataOffset ..] data "data"

            testPropertyWithConfig
                codecConfig
                "every ICMPv4 error type round-trips with as much of the original as fits 576 bytes"
            <| Prop.forAll (Arb.fromGen (Gen.zip v4ErrorGen originalGen)) (fun (e, original) ->
                errorRoundTrip parseV4 Icmpv4.MaxErrorMessageLength e original)

            testPropertyWithConfig
                codecConfig
                "every ICMPv6 error type round-trips with as much of the original as fits 1280 bytes"
            <| Prop.forAll (Arb.fromGen (Gen.zip v6ErrorGen originalGen)) (fun (e, original) ->
                errorRoundTrip parseV6 Icmpv6.MaxErrorMessageLength e original)

            testPropertyWithConfig codecConfig "parsing random bytes never throws"
            <| fun (bytes: byte[]) ->
                match parseV4 bytes with
                | Ok m -> expectInside bytes m
                | Error _ -> ()

                match parseV6 bytes with
                | Ok m -> expectInside bytes m
                | Error _ -> ()

            testPropertyWithConfig codecConfig "any ICMPv4 message with a correct checksum parses, whatever its type"
            <| Prop.forAll (Arb.fromGen (checkedMessageGen fixChecksumV4)) (fun bytes ->
                let m = expectOk (parseV4 bytes)
                expectInside bytes m
                Expect.equal (m.Type, m.Code) (bytes.[0], bytes.[1]) "type and code")

            testPropertyWithConfig
                codecConfig
                "any ICMPv6 message with a correct checksum parses, and types below 128 are errors"
            <| Prop.forAll (Arb.fromGen (checkedMessageGen fixChecksumV6)) (fun bytes ->
                let m = expectOk (parseV6 bytes)
                expectInside bytes m
                Expect.equal m.IsError (bytes.[0] < 128uy) "RFC 4443 §2.1")

            testPropertyWithConfig codecConfig "mutated and truncated messages never throw"
            <| fun (data: byte[]) (changes: (uint16 * byte)[]) (cut: uint16) ->
                let bytes =
                    build (8 + data.Length) (fun b -> Icmpv4.buildEchoRequest (Span b) 1us 2us (ReadOnlySpan data))

                for (i, v) in changes do
                    bytes.[int i % bytes.Length] <- v

                let bytes = Array.truncate (int cut % (bytes.Length + 1)) bytes

                match parseV4 bytes with
                | Ok m -> expectInside bytes m
                | Error _ -> ()

                match parseV6 bytes with
                | Ok m -> expectInside bytes m
                | Error _ -> ()

            test "an ICMPv4 echo request matches its hand-computed checksum" {
                // 0x0800 + 0x0000 + 0x0001 = 0x0801, complemented 0xf7fe.
                let bytes =
                    build 8 (fun b -> Icmpv4.buildEchoRequest (Span b) 0us 1us ReadOnlySpan.Empty)

                Expect.equal (toHex bytes) "0800f7fe00000001" "echo request id 0 seq 1"
            }

            test "an ICMPv6 echo request matches a checksum computed independently" {
                // fe80::1 -> fe80::2, identifier 0x1234, sequence 1, data "hi"; checksum over the
                // RFC 8200 pseudo-header (length 10, next header 58) computed separately: 0x0818.
                let bytes =
                    build 10 (fun b ->
                        Icmpv6.buildEchoRequest (Span b) v6Source v6Destination 0x1234us 1us (ReadOnlySpan "hi"B))

                Expect.equal (toHex bytes) "80000818123400016869" "echo request bytes"
            }

            test "fragmentation needed carries the next-hop MTU in bytes 6..7 (RFC 1191)" {
                let original = Array.init 28 byte

                let bytes =
                    build 36 (fun b -> Icmpv4.buildFragmentationNeeded (Span b) 1400us (ReadOnlySpan original))

                Expect.equal (toHex bytes.[0..7]).[0..3] "0304" "type 3 code 4"
                Expect.equal (toHex bytes.[4..7]) "00000578" "unused zero, then MTU 1400"
                Expect.equal (expectOk (parseV4 bytes)).Mtu 1400u "parsed MTU"
            }

            test "a port unreachable can quote the packet in place, in the same buffer" {
                // The original sits at the start of the buffer; the quote moves 8 bytes right.
                let original = Array.init 28 (fun i -> byte (i + 1))
                let buffer = Array.append original (Array.zeroCreate 8)

                let n =
                    Icmpv4.buildDestinationUnreachable
                        (Span buffer)
                        Icmpv4.UnreachableCode.Port
                        (ReadOnlySpan(buffer, 0, 28))

                Expect.equal n 36 "length"
                let m = expectOk (parseV4 buffer)
                Expect.equal (m.Kind, m.Code) (IcmpMessageKind.DestinationUnreachable, 3uy) "port unreachable"
                Expect.equal buffer.[8..] original "quoted intact"
            }

            test "a message shorter than 8 bytes is Truncated" {
                Expect.equal (parseV4 (hex "0800f7fe000000")) (Error(Truncated(8, 7))) "ICMPv4"
                Expect.equal (parseV6 (hex "80000000")) (Error(Truncated(8, 4))) "ICMPv6"
            }

            test "a wrong checksum is BadChecksum" {
                Expect.equal (parseV4 (hex "0800f7fe00000002")) (Error BadChecksum) "ICMPv4 sequence changed"

                let bytes =
                    build 10 (fun b ->
                        Icmpv6.buildEchoRequest (Span b) v6Source v6Destination 0x1234us 1us (ReadOnlySpan "hi"B))

                let elsewhere = Ipv6Address.Parse "fe80::3"

                Expect.equal
                    (Icmpv6.parse v6Source elsewhere (ReadOnlySpan bytes))
                    (Error BadChecksum)
                    "ICMPv6 checksum covers the pseudo-header"
            }

            test "unknown and uninterpreted types are carried raw, not rejected" {
                // ICMPv4 timestamp request (type 13) and redirect (type 5, an error).
                let timestamp = hex "0d00 0000 abcd 0001 00000000 00000000 00000000"
                fixChecksumV4 timestamp
                let m = expectOk (parseV4 timestamp)

                Expect.equal
                    (m.Kind, m.IsError, m.RestOfHeader, m.DataLength)
                    (IcmpMessageKind.Other, false, 0xabcd0001u, 12)
                    "timestamp"

                let redirect = hex "0501 0000 c0000201 4500001c"
                fixChecksumV4 redirect
                let r = expectOk (parseV4 redirect)
                Expect.equal (r.Kind, r.IsError, r.RestOfHeader) (IcmpMessageKind.Other, true, 0xc0000201u) "redirect"
                // ICMPv6 router solicitation (type 133).
                let solicitation = hex "8500 0000 00000000"
                fixChecksumV6 solicitation
                let s = expectOk (parseV6 solicitation)
                Expect.equal (s.Kind, s.IsError) (IcmpMessageKind.Other, false) "router solicitation"
            }

            test "an error quotes no more than the RFC limits" {
                let original = Array.create 2000 0x45uy

                let v4 =
                    build 2000 (fun b -> Icmpv4.buildTimeExceeded (Span b) 0uy (ReadOnlySpan original))

                Expect.equal v4.Length 556 "576 bytes with a 20-byte IPv4 header"

                let v6 =
                    build 2000 (fun b ->
                        Icmpv6.buildPacketTooBig (Span b) v6Source v6Destination 1280u (ReadOnlySpan original))

                Expect.equal v6.Length 1240 "1280 bytes with a 40-byte IPv6 header"
            }

            test "a buffer too small or echo data too long is an ArgumentException" {
                Expect.throwsT<ArgumentException>
                    (fun () ->
                        Icmpv4.buildEchoRequest (Span(Array.zeroCreate 9)) 1us 1us (ReadOnlySpan "ab"B)
                        |> ignore)
                    "9 bytes for 10"

                Expect.throwsT<ArgumentException>
                    (fun () ->
                        Icmpv6.buildDestinationUnreachable
                            (Span(Array.zeroCreate 40))
                            v6Source
                            v6Destination
                            0uy
                            (ReadOnlySpan(Array.zeroCreate 48))
                        |> ignore)
                    "40 bytes for 56"

                Expect.throwsT<ArgumentException>
                    (fun () ->
                        let data = Array.zeroCreate 65508

                        Icmpv4.buildEchoReply (Span(Array.zeroCreate 70000)) 1us 1us (ReadOnlySpan data)
                        |> ignore)
                    "65508 bytes of echo data over IPv4"
            }
        ]
