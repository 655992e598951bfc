module NetStack.Tests.ReassemblyTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Core.Ip

/// A fragment held in plain arrays, so lists and generators can carry it (`Fragment` is a ref struct).
type Frag =
    {
        FKey: ReassemblyKey
        FOffset: int
        FMore: bool
        FNextHeader: byte
        FHeader: byte[]
        FPayload: byte[]
    }

let frag key offset more nextHeader header payload =
    {
        FKey = key
        FOffset = offset
        FMore = more
        FNextHeader = nextHeader
        FHeader = header
        FPayload = payload
    }

/// Feeds one `Frag` to the state.
let add (now: int64) (f: Frag) (state: ReassemblyState) =
    Reassembly.add
        now
        {
            Fragment.Key = f.FKey
            Offset = f.FOffset
            MoreFragments = f.FMore
            NextHeader = f.FNextHeader
            Header = ReadOnlySpan f.FHeader
            Payload = ReadOnlySpan f.FPayload
        }
        state

let private expectAudit state =
    match Reassembly.audit state with
    | None -> ()
    | Some problem -> failtest problem

let private randomBytes (seed: int) (length: int) =
    let bytes = Array.zeroCreate<byte> length
    Random(seed).NextBytes bytes
    bytes

let private v4Key (id: uint16) =
    ReassemblyKey.V4(Ipv4Address.OfOctets(192uy, 0uy, 2uy, 1uy), Ipv4Address.OfOctets(192uy, 0uy, 2uy, 2uy), 17uy, id)

let private v6Key (id: uint32) =
    ReassemblyKey.V6(Ipv6Address.Parse "2001:db8::1", Ipv6Address.Parse "2001:db8::2", id)

let private isV4 key =
    match key with
    | ReassemblyKey.V4 _ -> true
    | ReassemblyKey.V6 _ -> false

/// Header bytes that count against the 65535-byte limit (IPv4 total length includes the whole
/// header; IPv6 payload length excludes the 40-byte fixed header).
let private overheadOf key (headerLength: int) =
    if isV4 key then headerLength else headerLength - 40

let private timeoutOf key =
    if isV4 key then
        ReassemblyConfig.Default.Ipv4Timeout
    else
        ReassemblyConfig.Default.Ipv6Timeout

let private any<'T> = ArbMap.defaults |> ArbMap.generate<'T>

let private genKey =
    Gen.oneof
        [
            gen {
                let! s = any<uint32>
                let! d = any<uint32>
                let! p = any<byte>
                let! id = any<uint16>
                return ReassemblyKey.V4(Ipv4Address s, Ipv4Address d, p, id)
            }
            gen {
                let! sh = any<uint64>
                let! sl = any<uint64>
                let! dh = any<uint64>
                let! dl = any<uint64>
                let! id = any<uint32>
                return ReassemblyKey.V6(Ipv6Address(sh, sl), Ipv6Address(dh, dl), id)
            }
        ]

/// A header of a plausible length for the key's family: IPv4 20..60 bytes in 4-byte steps,
/// IPv6 40 bytes plus 0..4 eight-byte extension headers.
let private genHeader key =
    gen {
        let! words = Gen.choose (0, if isV4 key then 10 else 4)
        let! seed = any<int>
        let length = if isV4 key then 20 + 4 * words else 40 + 8 * words
        return randomBytes seed length
    }

/// One datagram cut into 8-aligned fragments, and an order to deliver them in.
type Scenario =
    {
        Key: ReassemblyKey
        Header: byte[]
        NextHeader: byte
        Payload: byte[]
        /// In datagram order; the first has offset 0, only the last has MoreFragments false.
        Fragments: Frag[]
        /// A permutation of the fragment indexes.
        Order: int[]
    }

    override this.ToString() =
        let cuts = this.Fragments |> Array.map (fun f -> $"{f.FOffset}+{f.FPayload.Length}")
        $"{this.Key} header {this.Header.Length} payload {this.Payload.Length} fragments %A{cuts} order %A{this.Order}"

/// A random datagram of up to `maxLength` payload bytes (capped by the 65535-byte limit) cut at
/// random 8-aligned points; `minFragments` 2 forces at least one cut.
let private genScenario (key: Gen<ReassemblyKey>) (maxLength: int) (minFragments: int) =
    gen {
        let! key = key
        let! header = genHeader key
        let! nextHeader = any<byte>

        let limit =
            min maxLength (Reassembly.MaxDatagramLength - overheadOf key header.Length)

        let lowest = if minFragments >= 2 then 9 else 0

        let! length =
            Gen.frequency [ 4, Gen.choose (lowest, min limit 3000); 1, Gen.choose (lowest, limit) ]

        let! seed = any<int>
        let payload = randomBytes seed length
        let slots = max 1 ((length - 1) / 8)
        let! cutCount = Gen.choose ((if minFragments >= 2 then 1 else 0), 40)
        let! cuts = Gen.listOfLength cutCount (Gen.choose (1, slots))

        let cuts =
            if length <= 8 then
                []
            else
                cuts
                |> List.map ((*) 8)
                |> List.filter (fun c -> c < length)
                |> List.distinct
                |> List.sort

        let bounds = Array.ofList ((0 :: cuts) @ [ length ])
        let! otherNextHeaders = Gen.arrayOfLength bounds.Length any<byte>

        let fragments =
            Array.init (bounds.Length - 1) (fun i ->
                let a, b = bounds[i], bounds[i + 1]

                frag
                    key
                    a
                    (b < length)
                    (if i = 0 then nextHeader else otherNextHeaders[i]) // RFC 8200: the first one counts
                    (if i = 0 then header else [||])
                    payload[a .. b - 1])

        let! order = Gen.shuffle [| 0 .. fragments.Length - 1 |]

        return
            {
                Key = key
                Header = header
                NextHeader = nextHeader
                Payload = payload
                Fragments = fragments
                Order = order
            }
    }

/// The packet a complete reassembly must produce: header then payload.
let private expectedPacket (s: Scenario) = Array.append s.Header s.Payload

/// Any scenario, with (position, pick) seeds for duplicates.
let private arbScenarioWithDuplicates =
    Arb.fromGen (
        gen {
            let! s = genScenario genKey Reassembly.MaxDatagramLength 1
            let! dups = Gen.listOf (Gen.zip (any<int>) (any<int>))
            return s, dups
        }
    )

/// Delivers a scenario with duplicates of already delivered fragments slipped in before the
/// last new one; `dups` are (position, pick) seeds.
let private deliveryWithDuplicates (s: Scenario) (dups: (int * int) list) =
    let k = s.Order.Length

    [|
        for j in 0 .. k - 1 do
            yield s.Order[j], false

            if j < k - 1 then
                for (p, pick) in dups do
                    if abs (p % (k - 1)) = j then
                        yield s.Order[abs (pick % (j + 1))], true
    |]

let private run (state: ReassemblyState) (start: int64) (frags: Frag seq) =
    let mutable state = state
    let mutable now = start
    let results = ResizeArray()

    for f in frags do
        let s, r = add now f state
        expectAudit s
        state <- s
        results.Add r
        now <- now + 1000L

    state, List.ofSeq results

let private isPoisonDrop r =
    r.Outcome = FragmentOutcome.Dropped DropReason.KeyPoisoned

/// `propertyFor config name <| Prop.forAll arb <| fun x -> ...` reads like the spec it is.
let private propertyFor config name (forAll: ('a -> unit) -> Property) (body: 'a -> unit) =
    testPropertyWithConfig config name (forAll body)

let private properties =
    testList
        "properties"
        [
            propertyFor
                TestUtil.heavyConfig
                "a datagram cut into random fragments, delivered in random order with duplicates, comes back exactly once and intact"
            <| Prop.forAll arbScenarioWithDuplicates
            <| fun (s, dups) ->
                let delivery = deliveryWithDuplicates s dups

                let state, results =
                    run
                        (Reassembly.empty ReassemblyConfig.Default)
                        0L
                        (delivery |> Seq.map (fun (i, _) -> s.Fragments[i]))

                if s.Fragments.Length = 1 then
                    Expect.equal (results |> List.map _.Outcome) [ FragmentOutcome.Atomic ] "a lone fragment is atomic"
                else
                    let last = List.last results
                    let before = results |> List.take (results.Length - 1)

                    match last.Outcome with
                    | FragmentOutcome.Completed d ->
                        Expect.equal d.Packet (expectedPacket s) "header then payload"
                        Expect.equal d.HeaderLength s.Header.Length "header length"
                        Expect.equal d.NextHeader s.NextHeader "next header from the first fragment"
                        Expect.equal d.Key s.Key "key"
                    | other -> failtestf "last fragment gave %A" other

                    for (r, (_, isDup)) in Seq.zip before delivery do
                        let expected =
                            if isDup then
                                FragmentOutcome.DuplicateIgnored
                            else
                                FragmentOutcome.Held

                        Expect.equal r.Outcome expected "earlier fragments are held, duplicates ignored"

                Expect.isTrue (results |> List.forall (fun r -> r.Abandoned.IsEmpty)) "nothing abandoned"
                Expect.equal (Reassembly.count state) 0 "nothing left in progress"
                Expect.equal (Reassembly.bytesHeld state) 0L "no bytes held"

            propertyFor
                TestUtil.heavyConfig
                "a fragment that overlaps a held one without duplicating it drops the datagram with Overlap and poisons the key"
            <| Prop.forAll (
                Arb.fromGen (
                    gen {
                        let! s = genScenario genKey 8000 2
                        let! delivered = Gen.choose (1, s.Fragments.Length - 1)
                        let! victim = Gen.choose (0, delivered - 1)
                        let! a = any<int>
                        let! b = any<int>
                        return s, delivered, victim, a, b
                    }
                )
            )
            <| fun (s, delivered, victim, a, b) ->
                let f = s.Fragments[s.Order[victim]]
                let n = s.Payload.Length

                let bad =
                    if f.FMore then
                        // Somewhere inside f, 8-aligned, at least 8 bytes, not past the end.
                        let o = f.FOffset + 8 * abs (a % (f.FPayload.Length / 8))
                        let len = 8 * (1 + abs (b % ((n - o) / 8)))
                        let data = s.Payload[o .. o + len - 1]
                        data[0] <- data[0] ^^^ 0xFFuy
                        frag s.Key o true 0uy (if o = 0 then s.Header else [||]) data
                    else
                        let data = Array.copy f.FPayload
                        data[0] <- data[0] ^^^ 0xFFuy
                        { f with FPayload = data }

                let first = s.Order[.. delivered - 1] |> Seq.map (fun i -> s.Fragments[i])
                let state, results = run (Reassembly.empty ReassemblyConfig.Default) 0L first
                Expect.isTrue (results |> List.forall (fun r -> r.Outcome = FragmentOutcome.Held)) "held so far"
                let state, r = add 100_000L bad state
                expectAudit state
                Expect.equal r.Outcome (FragmentOutcome.Dropped DropReason.Overlap) "overlap"
                Expect.equal (Reassembly.bytesHeld state) 0L "bytes released"
                Expect.equal (Reassembly.count state) 1 "the key is remembered"
                let rest = s.Order[delivered..] |> Seq.map (fun i -> s.Fragments[i])
                let state, results = run state 200_000L rest
                Expect.isTrue (results |> List.forall isPoisonDrop) "later fragments are dropped"
                let deadline = timeoutOf s.Key
                Expect.equal (Reassembly.nextDeadline state) (ValueSome deadline) "poisoned until the deadline"
                let state, gone = Reassembly.expire deadline state
                Expect.isEmpty gone "a poisoned key expires silently"
                Expect.equal (Reassembly.count state) 0 "forgotten"

            propertyFor
                TestUtil.codecConfig
                "a lone fragment is held when it fits in 65535 bytes and dropped with TooLarge when it does not"
            <| Prop.forAll (
                Arb.fromGen (
                    gen {
                        let! key = genKey
                        let! header = genHeader key
                        let! slot = Gen.frequency [ 1, Gen.choose (0, 8191); 3, Gen.choose (7900, 8191) ]
                        let! more = any<bool>
                        let! length = Gen.choose (1, 1200)
                        let length = if more then 8 * length else length
                        return key, header, 8 * slot, more, length
                    }
                )
            )
            <| fun (key, header, offset, more, length) ->
                let f =
                    frag key offset more 6uy (if offset = 0 then header else [||]) (Array.zeroCreate length)

                let state, r = add 0L f (Reassembly.empty ReassemblyConfig.Default)
                expectAudit state

                let overhead =
                    if offset = 0 then overheadOf key header.Length
                    elif isV4 key then 20
                    else 0

                if offset = 0 && not more then
                    Expect.equal r.Outcome FragmentOutcome.Atomic "atomic"
                elif offset + length + overhead > 65535 then
                    Expect.equal r.Outcome (FragmentOutcome.Dropped DropReason.TooLarge) "too large"

                    Expect.equal
                        (Reassembly.count state, Reassembly.bytesHeld state)
                        (1, 0L)
                        "key poisoned, nothing held"
                else
                    Expect.equal r.Outcome FragmentOutcome.Held "held"

            propertyFor
                TestUtil.heavyConfig
                "a datagram missing a fragment never completes and times out at its deadline, with the first fragment when it came"
            <| Prop.forAll (
                Arb.fromGen (
                    gen {
                        let! s = genScenario genKey 8000 2
                        let! missing = Gen.choose (0, s.Fragments.Length - 1)
                        let! start = Gen.choose (0, Int32.MaxValue)
                        return s, missing, 1000L * int64 start
                    }
                )
            )
            <| fun (s, missing, start) ->
                let delivered =
                    s.Order
                    |> Seq.filter (fun i -> i <> missing)
                    |> Seq.map (fun i -> s.Fragments[i])

                let state, results = run (Reassembly.empty ReassemblyConfig.Default) start delivered
                Expect.isTrue (results |> List.forall (fun r -> r.Outcome = FragmentOutcome.Held)) "all held"
                let deadline = start + timeoutOf s.Key
                Expect.equal (Reassembly.nextDeadline state) (ValueSome deadline) "deadline from the first arrival"
                let early, none = Reassembly.expire (deadline - 1L) state
                Expect.isEmpty none "not yet"
                Expect.equal (Reassembly.count early) 1 "still in progress"
                let state, gone = Reassembly.expire deadline state

                let expectedFirst =
                    if missing = 0 then
                        ValueNone
                    else
                        ValueSome
                            {
                                FirstFragment.Header = s.Header
                                Payload = s.Fragments[0].FPayload
                                NextHeader = s.NextHeader
                            }

                Expect.equal
                    gone
                    [
                        {
                            Abandoned.Key = s.Key
                            Reason = AbandonReason.TimedOut
                            FirstFragment = expectedFirst
                        }
                    ]
                    "timed out once, with the first fragment iff it was held"

                Expect.equal (Reassembly.count state, Reassembly.bytesHeld state) (0, 0L) "empty"
                Expect.equal (Reassembly.nextDeadline state) ValueNone "no deadline left"

            propertyFor
                TestUtil.heavyConfig
                "memory and datagram caps hold after every add of interleaved datagrams, and completions stay intact"
            <| Prop.forAll (
                Arb.fromGen (
                    gen {
                        let! count = Gen.choose (2, 6)

                        let! scenarios =
                            Gen.arrayOfLength count (genScenario (Gen.constant (v4Key 0us)) 3000 1)

                        // Distinct keys, both families.
                        let scenarios =
                            scenarios
                            |> Array.mapi (fun i s ->
                                let key = if i % 2 = 0 then v4Key (uint16 i) else v6Key (uint32 i)

                                { s with
                                    Key = key
                                    Fragments = s.Fragments |> Array.map (fun f -> { f with FKey = key })
                                })

                        let! interleaving =
                            scenarios
                            |> Array.mapi (fun i s -> Array.replicate s.Fragments.Length i)
                            |> Array.concat
                            |> Gen.shuffle

                        let! maxBytes = Gen.choose (64, 20000)
                        let! maxDatagrams = Gen.choose (1, 6)
                        return scenarios, interleaving, int64 maxBytes, maxDatagrams
                    }
                )
            )
            <| fun (scenarios, interleaving, maxBytes, maxDatagrams) ->
                let config =
                    { ReassemblyConfig.Default with
                        MaxBytes = maxBytes
                        MaxDatagrams = maxDatagrams
                    }

                let next = Array.zeroCreate scenarios.Length
                let completed = Array.zeroCreate scenarios.Length
                let mutable state = Reassembly.empty config
                let mutable now = 0L

                for i in interleaving do
                    let s = scenarios[i]
                    let f = s.Fragments[s.Order[next[i]]]
                    next[i] <- next[i] + 1
                    let st, r = add now f state
                    now <- now + 10L
                    expectAudit st
                    Expect.isLessThanOrEqual (Reassembly.bytesHeld st) maxBytes "memory cap"
                    Expect.isLessThanOrEqual (Reassembly.count st) maxDatagrams "datagram cap"

                    for a in r.Abandoned do
                        Expect.equal a.Reason AbandonReason.Evicted "only evictions at these times"
                        Expect.notEqual a.Key s.Key "never the fragment's own datagram"

                    match r.Outcome with
                    | FragmentOutcome.Completed d ->
                        Expect.equal d.Packet (expectedPacket s) "intact"
                        completed[i] <- completed[i] + 1
                    | _ -> ()

                    state <- st

                Expect.isTrue (completed |> Array.forall (fun c -> c <= 1)) "at most once"

            propertyFor
                TestUtil.heavyConfig
                "random garbage descriptors and expiries never throw and keep the bookkeeping sound"
            <| Prop.forAll (
                Arb.fromGen (
                    let genFrag =
                        gen {
                            let! id = Gen.choose (0, 3)
                            let key = if id % 2 = 0 then v4Key (uint16 id) else v6Key (uint32 id)

                            let! offset =
                                Gen.oneof
                                    [
                                        any<int>
                                        Gen.choose (-16, 70000)
                                        Gen.map ((*) 8) (Gen.choose (0, 20))
                                        Gen.map ((*) 8) (Gen.choose (8180, 8191))
                                    ]

                            let! more = any<bool>
                            let! headerLength = Gen.choose (0, 90)
                            let! length = Gen.oneof [ Gen.choose (0, 70); Gen.map ((*) 8) (Gen.choose (0, 8)) ]
                            let! fill = Gen.choose (0, 2) // few distinct byte values, so duplicates happen
                            let! nextHeader = any<byte>

                            return
                                Choice1Of2(
                                    frag
                                        key
                                        offset
                                        more
                                        nextHeader
                                        (Array.zeroCreate headerLength)
                                        (Array.create length (byte fill))
                                )
                        }

                    let genStep =
                        gen {
                            let! step = Gen.frequency [ 8, genFrag; 1, Gen.constant (Choice2Of2()) ]
                            let! dt = Gen.frequency [ 8, Gen.choose (0, 1000); 1, Gen.choose (0, 70_000_000) ]
                            return step, int64 dt
                        }

                    gen {
                        let! steps = Gen.listOf genStep
                        let! small = any<bool>
                        return steps, small
                    }
                )
            )
            <| fun (steps, small) ->
                let config =
                    if small then
                        { ReassemblyConfig.Default with
                            MaxBytes = 1500L
                            MaxDatagrams = 3
                            MaxFragmentsPerDatagram = 6
                        }
                    else
                        ReassemblyConfig.Default

                let mutable state = Reassembly.empty config
                let mutable now = 0L

                for step, dt in steps do
                    now <- now + dt

                    match step with
                    | Choice1Of2 f ->
                        let st, r = add now f state

                        match r.Outcome with
                        | FragmentOutcome.Completed d ->
                            Expect.isGreaterThanOrEqual d.HeaderLength 0 "header length"
                            Expect.isLessThanOrEqual d.PayloadLength 65535 "payload bounded"
                        | _ -> ()

                        state <- st
                    | Choice2Of2() ->
                        let st, _ = Reassembly.expire now state
                        state <- st

                    expectAudit state
        ]

/// A 20-byte IPv4 header (RFC 791 layout) for 192.0.2.1 -> 192.0.2.2, UDP, identification 0x1234.
let private ipv4Header =
    TestUtil.hex "45 00 00 1c 12 34 20 00 40 11 00 00 c0 00 02 01 c0 00 02 02"

let private key1234 = v4Key 0x1234us

let private fresh () =
    Reassembly.empty ReassemblyConfig.Default

let private outcomeOf (_, r: AddResult) = r.Outcome

/// Feeds fragments at one microsecond apart, returning the final state and every outcome.
let private feed (state: ReassemblyState) (frags: Frag list) =
    let state, results = run state 0L frags
    state, results |> List.map _.Outcome

let private bytes (text: string) = Text.Encoding.ASCII.GetBytes text

let private examples =
    testList
        "examples"
        [
            testCase "two IPv4 fragments, last first, give back header and payload"
            <| fun () ->
                let a = frag key1234 0 true 17uy ipv4Header (bytes "abcdefgh")
                let b = frag key1234 8 false 17uy [||] (bytes "ijk")
                let _, outcomes = feed (fresh ()) [ b; a ]

                match outcomes with
                | [ FragmentOutcome.Held; FragmentOutcome.Completed d ] ->
                    Expect.equal
                        (TestUtil.toHex d.Packet)
                        (TestUtil.toHex ipv4Header + "6162636465666768696a6b")
                        "packet"

                    Expect.equal d.HeaderLength 20 "header length"
                    Expect.equal d.PayloadLength 11 "payload length"
                    Expect.equal d.NextHeader 17uy "protocol"
                | other -> failtestf "%A" other

            testCase "an offset-0 fragment without more fragments is atomic and leaves the state untouched (RFC 6946)"
            <| fun () ->
                let state = fresh ()
                let held, _ = add 0L (frag key1234 8 true 17uy [||] (bytes "12345678")) state
                let after, r = add 1L (frag key1234 0 false 17uy ipv4Header (bytes "whole")) held
                Expect.equal r.Outcome FragmentOutcome.Atomic "atomic"
                Expect.isTrue (obj.ReferenceEquals(after, held)) "same state"

            testCase "IPv6 takes the next header from the first fragment (RFC 8200 §4.5)"
            <| fun () ->
                let key = v6Key 7u
                let header = Array.zeroCreate 40
                let a = frag key 0 true 17uy header (Array.create 8 1uy)
                let b = frag key 8 false 6uy [||] (Array.create 3 2uy)

                match feed (fresh ()) [ b; a ] with
                | _, [ _; FragmentOutcome.Completed d ] ->
                    Expect.equal d.NextHeader 17uy "first fragment's"
                    Expect.equal d.Packet.Length 51 "40 + 11"
                | _, other -> failtestf "%A" other

            testCase "a last fragment of zero bytes completes a datagram that ends on an 8-byte boundary"
            <| fun () ->
                let a = frag key1234 0 true 17uy ipv4Header (bytes "abcdefgh")
                let b = frag key1234 8 false 17uy [||] [||]

                match feed (fresh ()) [ a; b ] with
                | _, [ FragmentOutcome.Held; FragmentOutcome.Completed d ] -> Expect.equal d.PayloadLength 8 "8 bytes"
                | _, other -> failtestf "%A" other

            testCase "an exact duplicate is ignored"
            <| fun () ->
                let a = frag key1234 8 true 17uy [||] (bytes "abcdefgh")

                let state, outcomes = feed (fresh ()) [ a; a ]
                Expect.equal outcomes [ FragmentOutcome.Held; FragmentOutcome.DuplicateIgnored ] "outcomes"
                Expect.equal (Reassembly.bytesHeld state) (int64 (8 + Reassembly.FragmentOverhead)) "held once"

            testCase
                "same range with other bytes is an overlap, and the rest of the datagram is then dropped (RFC 5722)"
            <| fun () ->
                let a = frag key1234 8 true 17uy [||] (bytes "abcdefgh")
                let a' = frag key1234 8 true 17uy [||] (bytes "abcdefgX")
                let first = frag key1234 0 true 17uy ipv4Header (bytes "01234567")
                let last = frag key1234 16 false 17uy [||] (bytes "z")
                let _, outcomes = feed (fresh ()) [ a; a'; first; last ]

                Expect.equal
                    outcomes
                    [
                        FragmentOutcome.Held
                        FragmentOutcome.Dropped DropReason.Overlap
                        FragmentOutcome.Dropped DropReason.KeyPoisoned
                        FragmentOutcome.Dropped DropReason.KeyPoisoned
                    ]
                    "outcomes"

            testCase "a partial overlap drops with Overlap"
            <| fun () ->
                let a = frag key1234 8 true 17uy [||] (Array.zeroCreate 16)
                let b = frag key1234 16 true 17uy [||] (Array.zeroCreate 16)
                let _, outcomes = feed (fresh ()) [ a; b ]
                Expect.equal outcomes [ FragmentOutcome.Held; FragmentOutcome.Dropped DropReason.Overlap ] "outcomes"

            testCase
                "more fragments with a length that is not a multiple of 8, or empty, is BadLength and changes nothing"
            <| fun () ->
                let state = fresh ()
                let s1, r1 = add 0L (frag key1234 8 true 17uy [||] (Array.zeroCreate 12)) state
                let s2, r2 = add 0L (frag key1234 8 true 17uy [||] [||]) s1
                Expect.equal r1.Outcome (FragmentOutcome.Dropped DropReason.BadLength) "12 bytes"
                Expect.equal r2.Outcome (FragmentOutcome.Dropped DropReason.BadLength) "0 bytes"
                Expect.equal (Reassembly.count s2) 0 "nothing remembered"

            testCase "an offset that is negative or not 8-aligned is BadOffset"
            <| fun () ->
                Expect.equal
                    (outcomeOf (add 0L (frag key1234 4 true 17uy [||] (Array.zeroCreate 8)) (fresh ())))
                    (FragmentOutcome.Dropped DropReason.BadOffset)
                    "4"

                Expect.equal
                    (outcomeOf (add 0L (frag key1234 -8 true 17uy [||] (Array.zeroCreate 8)) (fresh ())))
                    (FragmentOutcome.Dropped DropReason.BadOffset)
                    "-8"

            testCase "two last fragments that disagree are Inconsistent"
            <| fun () ->
                let a = frag key1234 16 false 17uy [||] (bytes "end")
                let b = frag key1234 24 false 17uy [||] (bytes "end")
                let _, outcomes = feed (fresh ()) [ a; b ]

                Expect.equal
                    outcomes
                    [ FragmentOutcome.Held; FragmentOutcome.Dropped DropReason.Inconsistent ]
                    "outcomes"

            testCase "data beyond a known end is Inconsistent, and so is an end below held data"
            <| fun () ->
                let last = frag key1234 16 false 17uy [||] (bytes "end")
                let beyond = frag key1234 24 true 17uy [||] (Array.zeroCreate 8)
                let _, outcomes = feed (fresh ()) [ last; beyond ]
                Expect.equal outcomes [ FragmentOutcome.Held; FragmentOutcome.Dropped DropReason.Inconsistent ] "beyond"
                let high = frag key1234 32 true 17uy [||] (Array.zeroCreate 8)
                let _, outcomes = feed (fresh ()) [ high; last ]
                Expect.equal outcomes [ FragmentOutcome.Held; FragmentOutcome.Dropped DropReason.Inconsistent ] "below"

            testCase "the same bytes once with and once without more fragments are Inconsistent"
            <| fun () ->
                let a = frag key1234 8 true 17uy [||] (bytes "abcdefgh")
                let a' = frag key1234 8 false 17uy [||] (bytes "abcdefgh")
                let _, outcomes = feed (fresh ()) [ a; a' ]

                Expect.equal
                    outcomes
                    [ FragmentOutcome.Held; FragmentOutcome.Dropped DropReason.Inconsistent ]
                    "outcomes"

            testCase "ping of death: offset 65528 with 8 bytes exceeds the IPv4 total length"
            <| fun () ->
                let f = frag key1234 65528 false 1uy [||] (Array.zeroCreate 8)
                Expect.equal (outcomeOf (add 0L f (fresh ()))) (FragmentOutcome.Dropped DropReason.TooLarge) "too large"

            testCase "IPv6 allows a fragmentable part up to 65535 bytes, one byte more is TooLarge"
            <| fun () ->
                let key = v6Key 1u
                let fits = frag key 65528 false 6uy [||] (Array.zeroCreate 7)
                let over = frag key 65528 false 6uy [||] (Array.zeroCreate 8)
                Expect.equal (outcomeOf (add 0L fits (fresh ()))) FragmentOutcome.Held "65535 fits"
                Expect.equal (outcomeOf (add 0L over (fresh ()))) (FragmentOutcome.Dropped DropReason.TooLarge) "65536"

            testCase "a first fragment whose header pushes the datagram past 65535 bytes is TooLarge"
            <| fun () ->
                let last = frag key1234 65504 false 17uy [||] (Array.zeroCreate 10) // 65514 + 20 fits
                let first = frag key1234 0 true 17uy (Array.zeroCreate 24) (Array.zeroCreate 8) // 65514 + 24 does not
                let _, outcomes = feed (fresh ()) [ last; first ]
                Expect.equal outcomes [ FragmentOutcome.Held; FragmentOutcome.Dropped DropReason.TooLarge ] "outcomes"

            testCase "more fragments than the cap drop the datagram with TooManyFragments"
            <| fun () ->
                let config =
                    { ReassemblyConfig.Default with
                        MaxFragmentsPerDatagram = 2
                    }

                let frags =
                    [ for i in 1..3 -> frag key1234 (16 * i) true 17uy [||] (Array.zeroCreate 8) ]

                let state, outcomes = feed (Reassembly.empty config) frags

                Expect.equal
                    outcomes
                    [
                        FragmentOutcome.Held
                        FragmentOutcome.Held
                        FragmentOutcome.Dropped DropReason.TooManyFragments
                    ]
                    "outcomes"

                Expect.equal (Reassembly.bytesHeld state) 0L "released"

            testCase "a datagram that alone exceeds the memory cap is dropped with MemoryLimit"
            <| fun () ->
                let config =
                    { ReassemblyConfig.Default with
                        MaxBytes = 200L
                    }

                let frags =
                    [
                        frag key1234 8 true 17uy [||] (Array.zeroCreate 64)
                        frag key1234 72 true 17uy [||] (Array.zeroCreate 64)
                    ]

                let state, outcomes = feed (Reassembly.empty config) frags

                Expect.equal
                    outcomes
                    [ FragmentOutcome.Held; FragmentOutcome.Dropped DropReason.MemoryLimit ]
                    "outcomes"

                Expect.equal (Reassembly.bytesHeld state, Reassembly.count state) (0L, 1) "poisoned, nothing held"

            testCase "the memory cap evicts the oldest other datagram, reported with its first fragment"
            <| fun () ->
                let config =
                    { ReassemblyConfig.Default with
                        MaxBytes = 300L
                    }

                let old = frag key1234 0 true 17uy ipv4Header (Array.zeroCreate 64)
                let young = frag (v4Key 2us) 8 true 17uy [||] (Array.zeroCreate 120)
                let state, _ = add 0L old (Reassembly.empty config)
                let state, r = add 1L young state
                Expect.equal r.Outcome FragmentOutcome.Held "held"

                Expect.equal
                    r.Abandoned
                    [
                        {
                            Abandoned.Key = key1234
                            Reason = AbandonReason.Evicted
                            FirstFragment =
                                ValueSome
                                    {
                                        FirstFragment.Header = ipv4Header
                                        Payload = Array.zeroCreate 64
                                        NextHeader = 17uy
                                    }
                        }
                    ]
                    "old evicted"

                Expect.equal (Reassembly.bytesHeld state) (int64 (120 + Reassembly.FragmentOverhead)) "young held"

            testCase "the datagram cap evicts the oldest datagram"
            <| fun () ->
                let config =
                    { ReassemblyConfig.Default with
                        MaxDatagrams = 2
                    }

                let f id =
                    frag (v4Key id) 8 true 17uy [||] (Array.zeroCreate 8)

                let state, results = run (Reassembly.empty config) 0L [ f 1us; f 2us; f 3us ]
                let last = List.last results

                Expect.equal
                    (last.Abandoned |> List.map (fun a -> a.Key, a.Reason, a.FirstFragment))
                    [ v4Key 1us, AbandonReason.Evicted, ValueNone ]
                    "1 evicted"

                Expect.equal (Reassembly.count state) 2 "two left"

            testCase "default timeouts are 30 s for IPv4 and 60 s for IPv6"
            <| fun () ->
                let state, _ =
                    add 5L (frag key1234 8 true 17uy [||] (Array.zeroCreate 8)) (fresh ())

                Expect.equal (Reassembly.nextDeadline state) (ValueSome 30_000_005L) "IPv4"

                let state, _ =
                    add 5L (frag (v6Key 1u) 8 true 17uy [||] (Array.zeroCreate 8)) (fresh ())

                Expect.equal (Reassembly.nextDeadline state) (ValueSome 60_000_005L) "IPv6"

            testCase
                "a fragment arriving after its datagram's deadline starts afresh, and the old one is reported timed out"
            <| fun () ->
                let a = frag key1234 0 true 17uy ipv4Header (bytes "abcdefgh")
                let b = frag key1234 8 false 17uy [||] (bytes "ijk")
                let state, _ = add 0L a (fresh ())
                let state, r = add 30_000_000L b state
                Expect.equal r.Outcome FragmentOutcome.Held "held, not completed"
                Expect.equal (r.Abandoned |> List.map (fun x -> x.Reason)) [ AbandonReason.TimedOut ] "timed out"
                Expect.equal (Reassembly.nextDeadline state) (ValueSome 60_000_000L) "new deadline"

            testCase "a fragment arriving after completion starts a new datagram"
            <| fun () ->
                let a = frag key1234 0 true 17uy ipv4Header (bytes "abcdefgh")
                let b = frag key1234 8 false 17uy [||] (bytes "ijk")

                match feed (fresh ()) [ a; b; b ] with
                | state, [ FragmentOutcome.Held; FragmentOutcome.Completed _; FragmentOutcome.Held ] ->
                    Expect.equal (Reassembly.count state) 1 "one in progress"
                | _, other -> failtestf "%A" other

            testCase "empty rejects limits below 1"
            <| fun () ->
                Expect.throwsT<ArgumentException>
                    (fun () ->
                        Reassembly.empty
                            { ReassemblyConfig.Default with
                                MaxBytes = 0L
                            }
                        |> ignore)
                    "MaxBytes"

                Expect.throwsT<ArgumentException>
                    (fun () ->
                        Reassembly.empty
                            { ReassemblyConfig.Default with
                                Ipv6Timeout = -1L
                            }
                        |> ignore)
                    "timeout"
        ]

[<Tests>]
let tests = testList "Reassembly" [ properties; examples ]
