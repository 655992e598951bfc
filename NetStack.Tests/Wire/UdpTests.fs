module NetStack.Tests.UdpTests

open System
open System.Buffers.Binary
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Tests.TestUtil

let private v4Source = Ipv4Address.Parse "192.0.2.1"
let private v4Destination = Ipv4Address.Parse "192.0.2.2"
let private v6Source = Ipv6Address.Parse "2001:db8::1"
let private v6Destination = Ipv6Address.Parse "2001:db8::2"

let private buildV4 (source: Ipv4Address) (destination: Ipv4Address) sourcePort destinationPort (payload: byte[]) =
    let buffer = Array.zeroCreate (Udp.HeaderLength + payload.Length)

    let n =
        Udp.buildV4 (Span buffer) source destination sourcePort destinationPort (ReadOnlySpan payload)

    Expect.equal n buffer.Length "build returns the datagram length"
    buffer

let private buildV6 (source: Ipv6Address) (destination: Ipv6Address) sourcePort destinationPort (payload: byte[]) =
    let buffer = Array.zeroCreate (Udp.HeaderLength + payload.Length)

    let n =
        Udp.buildV6 (Span buffer) source destination sourcePort destinationPort (ReadOnlySpan payload)

    Expect.equal n buffer.Length "build returns the datagram length"
    buffer

/// Applies byte overwrites at positions taken modulo the length, then cuts the array.
let private mutate (bytes: byte[]) (changes: (uint16 * byte)[]) (cut: uint16) =
    let copy = Array.copy bytes

    if copy.Length > 0 then
        for (i, v) in changes do
            copy.[int i % copy.Length] <- v

    // Half of the cases keep the whole length; the rest cut anywhere.
    if cut % 2us = 0us then
        copy
    else
        Array.truncate (int cut % (copy.Length + 1)) copy

let private expectInside (bytes: byte[]) (h: UdpHeader) =
    Expect.isTrue
        (h.PayloadOffset >= 0
         && h.PayloadLength >= 0
         && h.PayloadOffset + h.PayloadLength <= bytes.Length)
        "the payload lies inside the input"

let private parseError (bytes: byte[]) =
    match Udp.parse (ReadOnlySpan bytes) with
    | Ok h -> failtestf "expected an error, parsed %A" h
    | Error e -> e

[<Tests>]
let tests =
    testList
        "Udp"
        [
            testPropertyWithConfig codecConfig "build then parse over IPv4 returns the ports, length and payload"
            <| fun (src: uint32) (dst: uint32) (sourcePort: uint16) (destinationPort: uint16) (payload: byte[]) ->
                let source, destination = Ipv4Address src, Ipv4Address dst
                let bytes = buildV4 source destination sourcePort destinationPort payload

                match Udp.parseV4 source destination (ReadOnlySpan bytes) with
                | Error e -> failtestf "parse failed: %A" e
                | Ok h ->
                    Expect.equal h.SourcePort sourcePort "source port"
                    Expect.equal h.DestinationPort destinationPort "destination port"
                    Expect.equal h.Length bytes.Length "length"
                    Expect.notEqual h.Checksum 0us "a built checksum is never zero"
                    Expect.equal bytes.[h.PayloadOffset .. h.PayloadOffset + h.PayloadLength - 1] payload "payload"

            testPropertyWithConfig codecConfig "build then parse over IPv6 returns the ports, length and payload"
            <| fun
                   (s: uint64 * uint64)
                   (d: uint64 * uint64)
                   (sourcePort: uint16)
                   (destinationPort: uint16)
                   (payload: byte[]) ->
                let source, destination = Ipv6Address(fst s, snd s), Ipv6Address(fst d, snd d)
                let bytes = buildV6 source destination sourcePort destinationPort payload

                match Udp.parseV6 source destination (ReadOnlySpan bytes) with
                | Error e -> failtestf "parse failed: %A" e
                | Ok h ->
                    Expect.equal
                        (h.SourcePort, h.DestinationPort, h.Length, h.PayloadOffset, h.PayloadLength)
                        (sourcePort, destinationPort, bytes.Length, 8, payload.Length)
                        "fields"

                    Expect.equal bytes.[8..] payload "payload"

            testPropertyWithConfig codecConfig "parsing random bytes never throws and keeps offsets inside the input"
            <| fun (bytes: byte[]) ->
                match Udp.parse (ReadOnlySpan bytes) with
                | Ok h -> expectInside bytes h
                | Error _ -> ()

                Udp.parseV4 v4Source v4Destination (ReadOnlySpan bytes) |> ignore
                Udp.parseV6 v6Source v6Destination (ReadOnlySpan bytes) |> ignore

            testPropertyWithConfig
                codecConfig
                "parsing mutated and truncated datagrams never throws and keeps offsets inside the input"
            <| fun (payload: byte[]) (changes: (uint16 * byte)[]) (cut: uint16) ->
                let bytes =
                    mutate (buildV4 v4Source v4Destination 1000us 2000us payload) changes cut

                match Udp.parseV4 v4Source v4Destination (ReadOnlySpan bytes) with
                | Ok h -> expectInside bytes h
                | Error _ -> ()

                match Udp.parse (ReadOnlySpan bytes) with
                | Ok h -> expectInside bytes h
                | Error _ -> ()

            testPropertyWithConfig codecConfig "flipping any bit outside the length field fails the checksum"
            <| fun (payload: byte[]) (bit: uint16) ->
                let bytes = buildV6 v6Source v6Destination 7us 9us payload
                // A one-bit change moves the one's complement sum by ±2^k, never 0 mod 0xFFFF. (A
                // changed length field also changes what is summed, so it is left out here.)
                let i = (int bit % (bytes.Length * 8 - 16) + 48) % (bytes.Length * 8)
                bytes.[i / 8] <- bytes.[i / 8] ^^^ (1uy <<< (i % 8))
                Expect.isError (Udp.parseV6 v6Source v6Destination (ReadOnlySpan bytes)) "a flipped bit is caught"

            test "a known datagram has the checksum computed by hand" {
                // Pseudo-header c000+0201+c000+0202+0011+000a = 0x1841e; header and payload
                // 04d2+0035+000a+6162 = 0x6673; sum 0x1ea91 folds to 0xea92, complement 0x156d.
                let bytes = buildV4 v4Source v4Destination 1234us 53us "ab"B
                Expect.equal (toHex bytes) "04d20035000a156d6162" "datagram bytes"
            }

            test "a datagram shorter than its header is Truncated" {
                Expect.equal (parseError (hex "04d2 0035 00")) (Truncated(8, 5)) "five bytes"
            }

            test "a length field below 8 is LengthBelowHeader" {
                Expect.equal (parseError (hex "04d2 0035 0007 0000")) (LengthBelowHeader(7, 8)) "length 7"
            }

            test "a length field past the buffer is LengthBeyondBuffer" {
                Expect.equal (parseError (hex "04d2 0035 000b 0000 6162")) (LengthBeyondBuffer(11, 10)) "length 11"
            }

            test "bytes past the length field are not payload" {
                match Udp.parse (ReadOnlySpan(hex "04d2 0035 0009 0000 61 00 00 00")) with
                | Ok h -> Expect.equal (h.Length, h.PayloadLength) (9, 1) "one payload byte"
                | Error e -> failtestf "%A" e
            }

            test "a wrong checksum is BadChecksum" {
                let bytes = buildV4 v4Source v4Destination 1234us 53us "ab"B
                bytes.[6] <- bytes.[6] ^^^ 0x01uy

                Expect.equal
                    (Udp.parseV4 v4Source v4Destination (ReadOnlySpan bytes))
                    (Error BadChecksum)
                    "checksum off by one bit"

                let other = Ipv4Address.Parse "192.0.2.3"
                let good = buildV4 v4Source v4Destination 1234us 53us "ab"B

                Expect.equal
                    (Udp.parseV4 v4Source other (ReadOnlySpan good))
                    (Error BadChecksum)
                    "the pseudo-header covers the destination"
            }

            test "a zero checksum means none over IPv4 and is accepted" {
                let bytes = buildV4 v4Source v4Destination 1234us 53us "ab"B
                BinaryPrimitives.WriteUInt16BigEndian(Span(bytes, 6, 2), 0us)
                Expect.isOk (Udp.parseV4 v4Source v4Destination (ReadOnlySpan bytes)) "zero checksum"
            }

            test "a zero checksum over IPv6 is BadChecksum (RFC 8200 §8.1)" {
                let bytes = buildV6 v6Source v6Destination 1234us 53us "ab"B
                BinaryPrimitives.WriteUInt16BigEndian(Span(bytes, 6, 2), 0us)

                Expect.equal
                    (Udp.parseV6 v6Source v6Destination (ReadOnlySpan bytes))
                    (Error BadChecksum)
                    "zero checksum"
            }

            test "a computed checksum of zero is sent as 0xFFFF" {
                // With a two-byte payload equal to the checksum of the zero payload, the sum comes
                // to 0xFFFF and the computed checksum to zero.
                for build, accept in
                    [
                        (fun p -> buildV4 v4Source v4Destination 5us 6us p),
                        (fun (b: byte[]) -> Udp.parseV4 v4Source v4Destination (ReadOnlySpan b))
                        (fun p -> buildV6 v6Source v6Destination 5us 6us p),
                        (fun (b: byte[]) -> Udp.parseV6 v6Source v6Destination (ReadOnlySpan b))
                    ] do
                    let first = build [| 0uy; 0uy |]
                    let bytes = build first.[6..7]
                    Expect.equal bytes.[6..7] [| 0xFFuy; 0xFFuy |] "0xFFFF on the wire"
                    Expect.isOk (accept bytes) "and it verifies"
            }

            test "a payload may already sit in place in the buffer" {
                let buffer = Array.zeroCreate 12
                "wxyz"B.CopyTo(buffer, 8)

                let n =
                    Udp.buildV4 (Span buffer) v4Source v4Destination 1us 2us (ReadOnlySpan(buffer, 8, 4))

                Expect.equal n 12 "length"
                Expect.equal buffer.[8..] "wxyz"B "payload intact"
                Expect.isOk (Udp.parseV4 v4Source v4Destination (ReadOnlySpan buffer)) "verifies"
            }

            test "a buffer too small for the datagram is an ArgumentException" {
                Expect.throwsT<ArgumentException>
                    (fun () ->
                        Udp.buildV4 (Span(Array.zeroCreate 9)) v4Source v4Destination 1us 2us (ReadOnlySpan "ab"B)
                        |> ignore)
                    "9 bytes for 10"
            }

            test "a payload past the 16-bit length field is an ArgumentException" {
                Expect.throwsT<ArgumentException>
                    (fun () ->
                        let payload = Array.zeroCreate 65528
                        let buffer = Array.zeroCreate 65536

                        Udp.buildV6 (Span buffer) v6Source v6Destination 1us 2us (ReadOnlySpan payload)
                        |> ignore)
                    "65536-byte datagram"
            }
        ]
