/// Ethernet II, ARP and NDP codecs: known answers (frames the Linux kernel wrote on a TAP device,
/// recorded once inside a private namespace), round trips and hostile bytes.
module NetStack.Tests.LinkCodecTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Core.Link
open NetStack.Tests.TestUtil

let private any<'T> = ArbMap.defaults |> ArbMap.generate<'T>

// Frames the kernel (Linux 6.x, interface MAC 02:00:00:00:98:01, 10.98.0.1/24, fd98::1/64) wrote
// to its TAP device while resolving 10.98.0.2 and fd98::2 and answering our requests.
let private kernelArpRequest =
    "ffffffffffff 020000009801 0806 0001 0800 06 04 0001 020000009801 0a620001 000000000000 0a620002"

let private kernelArpReply =
    "020000009802 020000009801 0806 0001 0800 06 04 0002 020000009801 0a620001 020000009802 0a620002"

/// NS for fd98::2 from fd98::1 to ff02::1:ff00:2, with a source link-layer address option.
let private kernelNeighborSolicitation =
    "3333ff000002 020000009801 86dd 6000000000203aff fd980000000000000000000000000001 ff0200000000000000000001ff000002"
    + " 8700e46600000000 fd980000000000000000000000000002 0101020000009801"

/// NA for fd98::1 to fd98::2: S and O set, a target link-layer address option.
let private kernelNeighborAdvertisement =
    "020000009802 020000009801 86dd 6000000000203aff fd980000000000000000000000000001 fd980000000000000000000000000002"
    + " 880082d360000000 fd980000000000000000000000000001 0201020000009801"

/// The kernel's duplicate address detection for its link-local address: NS from ::, with a
/// nonce option (type 14, RFC 7527) this parser does not know and must skip.
let private kernelDadSolicitation =
    "3333ff009801 020000009801 86dd 6000000000203aff 00000000000000000000000000000000 ff0200000000000000000001ff009801"
    + " 8700ac7c00000000 fe80000000000000000000fffe009801 0e0101ed03e38cce"

/// RS from the kernel's link-local address to ff02::2.
let private kernelRouterSolicitation =
    "333300000002 020000009801 86dd 6000000000103aff fe80000000000000000000fffe009801 ff020000000000000000000000000002"
    + " 85004b2b00000000 0101020000009801"

let private ok result =
    match result with
    | Ok v -> v
    | Error e -> failtestf "parse failed: %A" e

/// Splits a recorded frame into its Ethernet header, IPv6 header and ICMPv6 message.
let private ndpOf (frame: byte[]) =
    let eth = ok (Ethernet.parse (ReadOnlySpan frame))
    let ip = frame.[eth.PayloadOffset ..]
    let h = ok (Ipv6.parse (ReadOnlySpan ip))
    let message = ip.[Ipv6.HeaderLength .. Ipv6.HeaderLength + h.PayloadLength - 1]
    eth, h, message

let private macGen = any<uint64> |> Gen.map MacAddress

let private v6Gen = Gen.map2 (fun h l -> Ipv6Address(h, l)) any<uint64> any<uint64>

let private unicastV6Gen = v6Gen |> Gen.filter (fun a -> not a.IsMulticast)

let private arpGen =
    gen {
        let! op = Gen.elements [ Arp.Operation.Request; Arp.Operation.Reply ]
        let! sm = macGen
        let! si = any<uint32>
        let! tm = macGen
        let! ti = any<uint32>

        return
            {
                Operation = op
                SenderMac = sm
                SenderIp = Ipv4Address si
                TargetMac = tm
                TargetIp = Ipv4Address ti
            }
    }

let private v6Source = Ipv6Address.Parse "fd98::1"

let private raTemplate =
    {
        Type = Ndp.MessageType.RouterAdvertisement
        Target = Ipv6Address.Any
        Router = false
        Solicited = false
        Override = false
        CurHopLimit = 0uy
        Managed = false
        OtherConfiguration = false
        RouterLifetime = 0us
        ReachableTime = 0u
        RetransTimer = 0u
        SourceLinkAddress = ValueNone
        TargetLinkAddress = ValueNone
        Mtu = 0u
        Prefix = ValueNone
        PrefixCount = 0
    }

let private v6Destination = Ipv6Address.Parse "fd98::2"

[<Tests>]
let tests =
    testList
        "Link codecs"
        [
            testList
                "Ethernet"
                [
                    test "the kernel's ARP request frame: broadcast, its MAC, EtherType ARP" {
                        let frame = hex kernelArpRequest
                        let eth = ok (Ethernet.parse (ReadOnlySpan frame))
                        Expect.equal eth.Destination MacAddress.Broadcast "broadcast"
                        Expect.equal (string eth.Source) "02:00:00:00:98:01" "the kernel's MAC"
                        Expect.equal eth.EtherType EtherType.Arp "ARP"
                        Expect.equal eth.VlanId -1 "untagged"
                        Expect.equal eth.PayloadOffset 14 "payload after 14 bytes"
                    }

                    test "MAC text, multicast mapping and flags" {
                        let mac = MacAddress.Parse "02:00:00:00:98:01"
                        Expect.equal (string mac) "02:00:00:00:98:01" "round trip"
                        Expect.isTrue mac.IsLocallyAdministered "U/L bit"
                        Expect.isFalse mac.IsMulticast "unicast"

                        Expect.equal
                            (string (MacAddress.OfIpv6Multicast(Ndp.solicitedNode (Ipv6Address.Parse "fd98::2"))))
                            "33:33:ff:00:00:02"
                            "RFC 2464 §7"

                        Expect.equal
                            (string (MacAddress.OfIpv4Multicast(Ipv4Address.Parse "224.129.2.3")))
                            "01:00:5e:01:02:03"
                            "RFC 1112 §6.4"

                        Expect.throws (fun () -> MacAddress.Parse "02:00:00:00:98" |> ignore) "five octets"
                        Expect.throws (fun () -> MacAddress.Parse "02:00:00:00:98:zz" |> ignore) "not hex"
                    }

                    testPropertyWithConfig codecConfig "a locally administered random MAC is unicast and local"
                    <| fun (r: uint64) ->
                        let mac = MacAddress.LocallyAdministered r
                        mac.IsLocallyAdministered && not mac.IsMulticast

                    testPropertyWithConfig codecConfig "MAC text and bytes round-trip"
                    <| Prop.forAll (Arb.fromGen macGen) (fun mac ->
                        let bytes = Array.zeroCreate 6
                        mac.Write(Span bytes)

                        MacAddress.Read(ReadOnlySpan bytes) = mac && MacAddress.Parse(string mac) = mac)

                    testPropertyWithConfig codecConfig "untagged and tagged headers round-trip"
                    <| Prop.forAll
                        (Arb.fromGen (
                            Gen.zip3 (Gen.zip macGen macGen) (Gen.choose (-1, 4095)) (Gen.choose (0x0600, 0xFFFF))
                        ))
                        (fun ((d, s), vlan, etherType) ->
                            let etherType = uint16 etherType

                            if etherType = EtherType.Vlan || etherType = EtherType.ServiceVlan then
                                true
                            else
                                let buffer = Array.zeroCreate 64

                                let n =
                                    if vlan < 0 then
                                        Ethernet.write d s etherType (Span buffer)
                                    else
                                        Ethernet.writeTagged d s vlan etherType (Span buffer)

                                let eth = ok (Ethernet.parse (ReadOnlySpan(buffer, 0, n)))

                                eth.Destination = d
                                && eth.Source = s
                                && eth.EtherType = etherType
                                && eth.VlanId = vlan
                                && eth.PayloadOffset = n)

                    test "802.1ad + 802.1Q tags are stepped over; a third tag and 802.3 lengths are refused" {
                        let qinq = hex "ffffffffffff 020000009801 88a8 0064 8100 0005 0800 45"
                        let eth = ok (Ethernet.parse (ReadOnlySpan qinq))
                        Expect.equal eth.VlanId 5 "inner VLAN id"
                        Expect.equal eth.VlanTags 2 "two tags"
                        Expect.equal eth.PayloadOffset 22 "payload after both tags"
                        let three = hex "ffffffffffff 020000009801 8100 0001 8100 0002 8100 0003 0800"
                        Expect.equal (Ethernet.parse (ReadOnlySpan three)) (Error(BadField "vlan tags")) "three tags"
                        let llc = hex "ffffffffffff 020000009801 0026 aaaa03"
                        Expect.equal (Ethernet.parse (ReadOnlySpan llc)) (Error(BadField "ethertype")) "802.3 length"
                    }

                    testPropertyWithConfig codecConfig "hostile bytes never throw and the payload lies inside"
                    <| fun (bytes: byte[]) ->
                        let bytes = if isNull bytes then [||] else bytes

                        match Ethernet.parse (ReadOnlySpan bytes) with
                        | Ok eth -> eth.PayloadOffset >= 14 && eth.PayloadOffset <= bytes.Length
                        | Error _ -> true
                ]

            testList
                "ARP"
                [
                    test "the kernel's request: who has 10.98.0.2, tell 10.98.0.1" {
                        let frame = hex kernelArpRequest
                        let arp = ok (Arp.parse (ReadOnlySpan(frame, 14, frame.Length - 14)))
                        Expect.equal arp.Operation Arp.Operation.Request "request"
                        Expect.equal (string arp.SenderIp) "10.98.0.1" "sender"
                        Expect.equal (string arp.SenderMac) "02:00:00:00:98:01" "sender MAC"
                        Expect.equal (string arp.TargetIp) "10.98.0.2" "target"
                    }

                    test "our reply to the kernel's request is what the kernel itself answers" {
                        // The kernel's reply to our request has the same shape as our reply to its
                        // request: build ours for the mirrored request and compare bytes.
                        let request =
                            Arp.request
                                (MacAddress.Parse "02:00:00:00:98:02")
                                (Ipv4Address.Parse "10.98.0.2")
                                (Ipv4Address.Parse "10.98.0.1")

                        let reply = Arp.replyTo request (MacAddress.Parse "02:00:00:00:98:01")
                        let buffer = Array.zeroCreate 42
                        let n = Ethernet.write reply.TargetMac reply.SenderMac EtherType.Arp (Span buffer)
                        let m = Arp.write reply (Span(buffer, n, 28))
                        Expect.equal (toHex buffer.[.. n + m - 1]) (toHex (hex kernelArpReply)) "byte for byte"
                    }

                    testPropertyWithConfig codecConfig "ARP packets round-trip"
                    <| Prop.forAll (Arb.fromGen arpGen) (fun arp ->
                        let buffer = Array.zeroCreate 28
                        Arp.write arp (Span buffer) |> ignore
                        Arp.parse (ReadOnlySpan buffer) = Ok arp)

                    testPropertyWithConfig
                        codecConfig
                        "hostile bytes never throw; accepted ones re-encode to themselves"
                    <| fun (bytes: byte[]) ->
                        let bytes = if isNull bytes then [||] else bytes

                        match Arp.parse (ReadOnlySpan bytes) with
                        | Ok arp ->
                            let again = Array.zeroCreate 28
                            Arp.write arp (Span again) |> ignore
                            again = bytes.[..27]
                        | Error _ -> true

                    test "foreign hardware, protocol, lengths and operations are refused" {
                        let good = (hex kernelArpRequest).[14..]

                        for (offset, value, field) in
                            [
                                1, 6uy, "hardware type"
                                2, 0x86uy, "protocol type"
                                4, 8uy, "address length"
                                7, 3uy, "operation"
                            ] do
                            let bad = Array.copy good
                            bad.[offset] <- value
                            Expect.equal (Arp.parse (ReadOnlySpan bad)) (Error(BadField field)) field

                        Expect.equal (Arp.parse (ReadOnlySpan good.[..26])) (Error(Truncated(28, 27))) "short"
                    }
                ]

            testList
                "NDP"
                [
                    test "the kernel's NS for fd98::2 with its link-layer address" {
                        let _, h, message = ndpOf (hex kernelNeighborSolicitation)
                        let m = ok (Ndp.parse h.Source h.Destination h.HopLimit (ReadOnlySpan message))
                        Expect.equal m.Type Ndp.MessageType.NeighborSolicitation "NS"
                        Expect.equal m.Target (Ipv6Address.Parse "fd98::2") "target"
                        Expect.equal m.SourceLinkAddress (ValueSome(MacAddress.Parse "02:00:00:00:98:01")) "SLLA"
                        Expect.equal h.Destination (Ndp.solicitedNode m.Target) "to the solicited-node group"
                    }

                    test "our NS and NA are byte for byte what the kernel sends" {
                        let mac = MacAddress.Parse "02:00:00:00:98:01"
                        let _, h, message = ndpOf (hex kernelNeighborSolicitation)
                        let buffer = Array.zeroCreate 64

                        let n =
                            Ndp.writeNeighborSolicitation
                                h.Source
                                h.Destination
                                (Ipv6Address.Parse "fd98::2")
                                (ValueSome mac)
                                (Span buffer)

                        Expect.equal (toHex buffer.[.. n - 1]) (toHex message) "NS"
                        let _, h, message = ndpOf (hex kernelNeighborAdvertisement)

                        let n =
                            Ndp.writeNeighborAdvertisement
                                h.Source
                                h.Destination
                                h.Source
                                false
                                true
                                true
                                (ValueSome mac)
                                (Span buffer)

                        Expect.equal (toHex buffer.[.. n - 1]) (toHex message) "NA"
                    }

                    test "the kernel's NA: solicited, override, its link-layer address" {
                        let _, h, message = ndpOf (hex kernelNeighborAdvertisement)
                        let m = ok (Ndp.parse h.Source h.Destination h.HopLimit (ReadOnlySpan message))
                        Expect.equal m.Type Ndp.MessageType.NeighborAdvertisement "NA"
                        Expect.isTrue (m.Solicited && m.Override && not m.Router) "flags S and O"
                        Expect.equal m.TargetLinkAddress (ValueSome(MacAddress.Parse "02:00:00:00:98:01")) "TLLA"
                    }

                    test "the kernel's DAD probe: from ::, a nonce option skipped, no SLLA" {
                        let _, h, message = ndpOf (hex kernelDadSolicitation)
                        let m = ok (Ndp.parse h.Source h.Destination h.HopLimit (ReadOnlySpan message))
                        Expect.equal h.Source Ipv6Address.Any "unspecified source"
                        Expect.equal m.Target (Ipv6Address.Parse "fe80::ff:fe00:9801") "its link-local address"
                        Expect.equal m.SourceLinkAddress ValueNone "no SLLA from ::"
                    }

                    test "the kernel's RS" {
                        let _, h, message = ndpOf (hex kernelRouterSolicitation)
                        let m = ok (Ndp.parse h.Source h.Destination h.HopLimit (ReadOnlySpan message))
                        Expect.equal m.Type Ndp.MessageType.RouterSolicitation "RS"
                        Expect.equal m.SourceLinkAddress (ValueSome(MacAddress.Parse "02:00:00:00:98:01")) "SLLA"
                    }

                    test "RFC 4861 §7.1 validity: hop limit, code, checksum, multicast target, SLLA from ::" {
                        let _, h, message = ndpOf (hex kernelNeighborSolicitation)

                        let parse (source: Ipv6Address) destination hop (bytes: byte[]) =
                            Ndp.parse source destination hop (ReadOnlySpan bytes)

                        Expect.equal (parse h.Source h.Destination 64uy message) (Error(BadField "hop limit")) "hop 64"
                        let code = Array.copy message
                        code.[1] <- 1uy
                        Expect.equal (parse h.Source h.Destination 255uy code) (Error(BadField "code")) "code 1"
                        let flipped = Array.copy message
                        flipped.[10] <- flipped.[10] ^^^ 1uy
                        Expect.equal (parse h.Source h.Destination 255uy flipped) (Error BadChecksum) "checksum"
                        let buffer = Array.zeroCreate 64

                        let n =
                            Ndp.writeNeighborSolicitation
                                h.Source
                                h.Destination
                                (Ipv6Address.Parse "ff02::1")
                                ValueNone
                                (Span buffer)

                        Expect.equal
                            (parse h.Source h.Destination 255uy buffer.[.. n - 1])
                            (Error(BadField "target"))
                            "multicast target"

                        let n =
                            Ndp.writeNeighborSolicitation
                                Ipv6Address.Any
                                h.Destination
                                (Ipv6Address.Parse "fd98::2")
                                (ValueSome(MacAddress 1UL))
                                (Span buffer)

                        Expect.equal
                            (parse Ipv6Address.Any h.Destination 255uy buffer.[.. n - 1])
                            (Error(BadField "source link-layer address"))
                            "SLLA from ::"

                        let zeroOption =
                            Array.append message.[..23] [| 1uy; 0uy; 0uy; 0uy; 0uy; 0uy; 0uy; 0uy |]

                        let n = zeroOption.Length
                        zeroOption.[2] <- 0uy
                        zeroOption.[3] <- 0uy

                        let sum =
                            Checksum.sum
                                (Checksum.pseudoHeaderV6 h.Source h.Destination IpProtocol.Icmpv6 n)
                                (ReadOnlySpan zeroOption)

                        Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(
                            Span(zeroOption, 2, 2),
                            Checksum.finish sum
                        )

                        Expect.equal
                            (parse h.Source h.Destination 255uy zeroOption)
                            (Error(BadOptionLength 0))
                            "an option of length 0"
                    }

                    testPropertyWithConfig codecConfig "NS and NA round-trip"
                    <| Prop.forAll
                        (Arb.fromGen (
                            Gen.zip3
                                unicastV6Gen
                                (Gen.zip3 any<bool> any<bool> any<bool>)
                                (Gen.optionOf macGen |> Gen.map ValueOption.ofOption)
                        ))
                        (fun (target, (r, s, o), mac) ->
                            let buffer = Array.zeroCreate 64

                            let n =
                                Ndp.writeNeighborSolicitation v6Source v6Destination target mac (Span buffer)

                            let ns = ok (Ndp.parse v6Source v6Destination 255uy (ReadOnlySpan(buffer, 0, n)))

                            let n =
                                Ndp.writeNeighborAdvertisement v6Source v6Destination target r s o mac (Span buffer)

                            let na = ok (Ndp.parse v6Source v6Destination 255uy (ReadOnlySpan(buffer, 0, n)))

                            ns.Target = target
                            && ns.SourceLinkAddress = mac
                            && na.Target = target
                            && na.TargetLinkAddress = mac
                            && (na.Router, na.Solicited, na.Override) = (r, s, o))

                    testPropertyWithConfig codecConfig "RA round-trips with its MTU and prefix options"
                    <| Prop.forAll
                        (Arb.fromGen (
                            gen {
                                let! hop = any<byte>
                                let! m, o = Gen.zip any<bool> any<bool>
                                let! lifetime = any<uint16>
                                let! reachable, retrans = Gen.zip any<uint32> any<uint32>
                                let! mac = macGen
                                let! mtu = any<uint32>
                                let! prefix = v6Gen
                                let! length = Gen.choose (0, 128)
                                let! l, a = Gen.zip any<bool> any<bool>
                                let! valid, preferred = Gen.zip any<uint32> any<uint32>

                                return
                                    { raTemplate with
                                        CurHopLimit = hop
                                        Managed = m
                                        OtherConfiguration = o
                                        RouterLifetime = lifetime
                                        ReachableTime = reachable
                                        RetransTimer = retrans
                                        SourceLinkAddress = ValueSome mac
                                        Mtu = mtu
                                        Prefix =
                                            ValueSome
                                                {
                                                    PrefixLength = length
                                                    OnLink = l
                                                    Autonomous = a
                                                    ValidLifetime = valid
                                                    PreferredLifetime = preferred
                                                    Prefix = prefix
                                                }
                                        PrefixCount = 1
                                    }
                            }
                        ))
                        (fun ra ->
                            let source = Ipv6Address.Parse "fe80::1"
                            let buffer = Array.zeroCreate 128
                            let n = Ndp.writeRouterAdvertisement source Ndp.AllNodes ra (Span buffer)
                            let parsed = ok (Ndp.parse source Ndp.AllNodes 255uy (ReadOnlySpan(buffer, 0, n)))
                            parsed = ra)

                    testPropertyWithConfig codecConfig "hostile ICMPv6 bytes with a valid checksum never throw"
                    <| Prop.forAll
                        (Arb.fromGen (
                            gen {
                                let! t = Gen.choose (133, 137)
                                let! length = Gen.choose (8, 120)
                                let! bytes = Gen.arrayOfLength length any<byte>
                                bytes.[0] <- byte t
                                bytes.[1] <- 0uy
                                bytes.[2] <- 0uy
                                bytes.[3] <- 0uy

                                let sum =
                                    Checksum.sum
                                        (Checksum.pseudoHeaderV6 v6Source v6Destination IpProtocol.Icmpv6 length)
                                        (ReadOnlySpan bytes)

                                Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(
                                    Span(bytes, 2, 2),
                                    Checksum.finish sum
                                )

                                return bytes
                            }
                        ))
                        (fun bytes ->
                            match Ndp.parse v6Source v6Destination 255uy (ReadOnlySpan bytes) with
                            | Ok m -> m.Type >= 133uy && m.Type <= 136uy
                            | Error _ -> true)

                    testPropertyWithConfig codecConfig "solicited-node groups keep the low 24 bits"
                    <| Prop.forAll (Arb.fromGen v6Gen) (fun a ->
                        let g = Ndp.solicitedNode a

                        Ndp.isSolicitedNode g
                        && g.IsMulticast
                        && (g.Low &&& 0xFFFFFFUL) = (a.Low &&& 0xFFFFFFUL))
                ]
        ]
