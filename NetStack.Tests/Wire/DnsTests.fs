/// The DNS message codec (RFC 1035 §4): hand-written bytes from the RFC's layout, compression,
/// hostile input (pointer loops, pointers past the end, counts that lie), round trips.
module NetStack.Tests.Wire.DnsTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Tests.TestUtil

let private parse (bytes: byte[]) = Dns.parse (ReadOnlySpan bytes)

// Names from letters, digits and '-', 1..4 labels of 1..20 bytes, in mixed case: the text form
// the parser returns for them is the same text.
let private genLabel =
    gen {
        let! length = Gen.choose (1, 20)
        let! chars = Gen.arrayOfLength length (Gen.elements ("abcXYZ019-" |> Seq.toList))
        return String chars
    }

let private genName =
    gen {
        let! n = Gen.choose (1, 4)
        let! labels = Gen.listOfLength n genLabel
        return String.Join(".", labels)
    }

let private genData =
    gen {
        let! kind = Gen.choose (0, 4)

        match kind with
        | 0 ->
            let! v = Gen.choose (0, Int32.MaxValue)
            return Dns.TypeA, A(Ipv4Address(uint32 v))
        | 1 ->
            let! h = Gen.choose (0, Int32.MaxValue)
            let! l = Gen.choose (0, Int32.MaxValue)
            return Dns.TypeAaaa, Aaaa(Ipv6Address(uint64 h <<< 20, uint64 l))
        | 2 ->
            let! target = genName
            return Dns.TypeCname, Cname target
        | 3 ->
            let! primary = genName
            let! mailbox = genName
            let! numbers = Gen.arrayOfLength 5 (Gen.choose (0, Int32.MaxValue))

            return
                Dns.TypeSoa,
                Soa
                    {
                        PrimaryServer = primary
                        Mailbox = mailbox
                        Serial = uint32 numbers.[0]
                        Refresh = uint32 numbers.[1]
                        Retry = uint32 numbers.[2]
                        Expire = uint32 numbers.[3]
                        Minimum = uint32 numbers.[4]
                    }
        | _ ->
            // A type the codec keeps opaque (TXT 16, MX 15 are past its types; 99 is SPF).
            let! rtype = Gen.elements [ 16us; 99us; 257us ]
            let! bytes = Gen.arrayOf (Gen.choose (0, 255) |> Gen.map byte)
            return rtype, Opaque bytes
    }

let private genRecord =
    gen {
        let! name = genName
        let! rtype, data = genData
        let! ttl = Gen.choose (0, Int32.MaxValue)

        return
            {
                Name = name
                Type = rtype
                Class = Dns.ClassIn
                Ttl = uint32 ttl
                Data = data
            }
    }

let private genMessage =
    gen {
        let! id = Gen.choose (0, 65535)
        let! flags = Gen.choose (0, 65535)

        let! questions =
            Gen.listOf (
                Gen.map2
                    (fun n t ->
                        {
                            Name = n
                            Type = uint16 t
                            Class = 1us
                        })
                    genName
                    (Gen.choose (0, 65535))
            )

        let! answers = Gen.listOf genRecord
        let! authority = Gen.listOf genRecord
        let! additional = Gen.listOf genRecord

        return
            {
                Id = uint16 id
                Flags = uint16 flags
                Questions = List.truncate 3 questions
                Answers = List.truncate 6 answers
                Authority = List.truncate 3 authority
                Additional = List.truncate 3 additional
            }
    }

// A query for www.example.com, type A, ID 0x1234, RD: the RFC 1035 §4.1 layout written out.
let private wwwQuery =
    hex
        "1234 0100 0001 0000 0000 0000
         03 777777 07 6578616d706c65 03 636f6d 00
         0001 0001"

// Its answer, compressed (RFC 1035 §4.1.4): www.example.com CNAME web.example.com (TTL 3600),
// web.example.com A 192.0.2.1 (TTL 60). The question's name starts at 12, "example.com" at 16,
// the CNAME's RDATA "web" + pointer at 45.
let private wwwAnswer =
    hex
        "1234 8180 0001 0002 0000 0000
         03 777777 07 6578616d706c65 03 636f6d 00 0001 0001
         c00c 0005 0001 00000e10 0006 03 776562 c010
         c02d 0001 0001 0000003c 0004 c0000201"

[<Tests>]
let tests =
    testList
        "Dns codec"
        [
            test "writeQuery writes the RFC 1035 layout byte for byte" {
                let buffer = Array.zeroCreate Dns.MaxQueryLength
                let n = Dns.writeQuery (Span buffer) 0x1234us "www.example.com" Dns.TypeA
                Expect.equal (toHex buffer.[.. n - 1]) (toHex wwwQuery) "query bytes"
                let n2 = Dns.writeQuery (Span buffer) 0x1234us "www.example.com." Dns.TypeA
                Expect.equal n2 n "a final dot is the same name"
            }

            test "a compressed answer parses: pointers to the question and into an RDATA" {
                match parse wwwAnswer with
                | Error e -> failtestf "parse failed: %A" e
                | Ok m ->
                    Expect.equal m.Id 0x1234us "id"
                    Expect.isTrue (Dns.isResponse m.Flags) "QR"
                    Expect.equal (Dns.rcode m.Flags) 0 "NOERROR"
                    Expect.isFalse (Dns.isTruncated m.Flags) "TC"

                    Expect.equal
                        m.Questions
                        [
                            {
                                Name = "www.example.com"
                                Type = 1us
                                Class = 1us
                            }
                        ]
                        "question"

                    Expect.equal
                        m.Answers
                        [
                            {
                                Name = "www.example.com"
                                Type = 5us
                                Class = 1us
                                Ttl = 3600u
                                Data = Cname "web.example.com"
                            }
                            {
                                Name = "web.example.com"
                                Type = 1us
                                Class = 1us
                                Ttl = 60u
                                Data = A(Ipv4Address.OfOctets(192uy, 0uy, 2uy, 1uy))
                            }
                        ]
                        "answers"
            }

            test "a pointer to itself or forward is refused (no loops)" {
                // The question's name at 12: label "a", then a pointer back to 12: a.a.a.a...
                let loop = hex "0001 0100 0001 0000 0000 0000 01 61 c00c 0001 0001"
                Expect.equal (parse loop) (Error(PointerNotBackward 12)) "a loop through the name's own start"
                let self = hex "0001 0100 0001 0000 0000 0000 c00c 0001 0001"
                Expect.equal (parse self) (Error(PointerNotBackward 12)) "a pointer to itself"
                let forward = hex "0001 0100 0001 0000 0000 0000 c00e 01 61 00 0001 0001"
                Expect.equal (parse forward) (Error(PointerNotBackward 14)) "a pointer forward"
            }

            test "a pointer past the end is refused" {
                let past = hex "0001 0100 0001 0000 0000 0000 01 61 c0ff 0001 0001"
                Expect.equal (parse past) (Error(PointerPastEnd 255)) "pointer to 255 in 22 bytes"
                let cut = hex "0001 0100 0001 0000 0000 0000 01 61 c0"
                Expect.isError (parse cut) "half a pointer"
            }

            test "labels of 64+ (the reserved 01 and 10 prefixes) and names over 255 bytes are refused" {
                let reserved = hex "0001 0100 0001 0000 0000 0000 40 61 00 0001 0001"
                Expect.equal (parse reserved) (Error(ReservedLabelType 0x40uy)) "length byte 0x40"
                let long = String('a', 63)
                let name = String.Join(".", [ long; long; long; long ])
                // 4 × 64 + 1 = 257 bytes.
                let buffer = Array.zeroCreate 400
                Expect.equal (Dns.writeName (Span buffer) name) -1 "writer refuses 257 bytes"
                Expect.isFalse (Dns.isValidName (String('a', 64))) "a 64-byte label"
                let label = Array.append [| 63uy |] (Array.create 63 (byte 'a'))

                let wire =
                    Array.concat
                        [
                            hex "0001 0100 0001 0000 0000 0000"
                            label
                            label
                            label
                            label
                            [| 0uy; 0uy; 1uy; 0uy; 1uy |]
                        ]

                Expect.equal (parse wire) (Error(NameTooLong 257)) "reader refuses 257 bytes"
            }

            test "counts that lie end in an error, not a long loop" {
                let many = hex "0001 8180 0000 ffff 0000 0000 00"
                Expect.equal (parse many) (Error(CountTooLarge 65535)) "65535 answers in 1 byte"
                // Two answers announced, one present.
                let short =
                    hex
                        "0001 8180 0000 0002 0000 0000
                         00 0001 0001 0000003c 0004 0a000001"

                Expect.isError (parse short) "second answer missing"
                // An RDATA length past the end.
                let rdata = hex "0001 8180 0000 0001 0000 0000 00 0001 0001 0000003c 0010 0a000001"
                Expect.equal (parse rdata) (Error(MessageTruncated(39, 27))) "RDLENGTH 16 with 4 bytes"
                let badA = hex "0001 8180 0000 0001 0000 0000 00 0001 0001 0000003c 0003 0a0000"
                Expect.equal (parse badA) (Error(BadRecordData 1us)) "an A record of 3 bytes"
            }

            test "names compare without ASCII case (RFC 4343)" {
                Expect.isTrue (Dns.namesEqual "WWW.Example.COM" "www.example.com") "case"
                Expect.isFalse (Dns.namesEqual "www.example.com" "www.example.org") "different"
                // A byte outside printable ASCII is escaped, so it is never folded.
                let wire = hex "0001 8180 0001 0000 0000 0000 02 c941 00 0001 0001"

                match parse wire with
                | Ok m -> Expect.equal m.Questions.Head.Name "\\201A" "escaped"
                | Error e -> failtestf "%A" e
            }

            test "a TTL with the top bit set reads as 0 (RFC 2181 §8)" {
                let wire = hex "0001 8180 0000 0001 0000 0000 00 0001 0001 80000000 0004 0a000001"

                match parse wire with
                | Ok m -> Expect.equal m.Answers.Head.Ttl 0u "ttl"
                | Error e -> failtestf "%A" e
            }

            testPropertyWithConfig codecConfig "every generated message survives toBytes then parse"
            <| Prop.forAll (Arb.fromGen genMessage) (fun m -> parse (Dns.toBytes m) = Ok m)

            testPropertyWithConfig codecConfig "random bytes never throw"
            <| fun (bytes: byte[]) ->
                parse bytes |> ignore

                for offset in 0 .. min 20 (bytes.Length - 1) do
                    Dns.readName (ReadOnlySpan bytes) offset |> ignore

            testPropertyWithConfig codecConfig "corrupted valid messages never throw"
            <| Prop.forAll
                (Arb.fromGen (Gen.zip genMessage (Gen.listOf (Gen.zip (Gen.choose (0, 10000)) (Gen.choose (0, 255))))))
                (fun (m, changes) ->
                    let bytes = Array.append wwwAnswer (Dns.toBytes m)

                    for at, value in changes do
                        bytes.[at % bytes.Length] <- byte value

                    parse bytes |> ignore
                    parse bytes.[.. (bytes.Length / 2)] |> ignore)
        ]
