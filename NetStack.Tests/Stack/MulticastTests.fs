/// Group membership in the core: the IGMP and MLD codecs (byte layouts and numbers from RFC 3376,
/// RFC 3810, RFC 2236, RFC 2710, checksums summed here), the group state machine held to its
/// Stateless model with a virtual clock, and the compatibility mode timers computed from the
/// RFCs' formula.
module NetStack.Tests.MulticastTests

open System
open System.Buffers.Binary
open System.IO
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Core.Stack
open NetStack.Tests.TestUtil

// ---------------------------------------------------------------------------------------------
// An independent checksum (RFC 1071, summed here word by word) and packet builders
// ---------------------------------------------------------------------------------------------

let private sum16 (bytes: byte[]) (initial: uint32) =
    let mutable acc = initial
    let mutable i = 0

    while i + 1 < bytes.Length do
        acc <- acc + (uint32 bytes.[i] <<< 8) + uint32 bytes.[i + 1]
        i <- i + 2

    if i < bytes.Length then
        acc <- acc + (uint32 bytes.[i] <<< 8)

    while acc > 0xFFFFu do
        acc <- (acc &&& 0xFFFFu) + (acc >>> 16)

    acc

let private checksum (bytes: byte[]) (initial: uint32) =
    uint16 (~~~(sum16 bytes initial) &&& 0xFFFFu)

let private pseudo6 (source: Ipv6Address) (destination: Ipv6Address) (length: int) =
    let bytes = Array.zeroCreate<byte> 40
    source.Write(Span(bytes, 0, 16))
    destination.Write(Span(bytes, 16, 16))
    BinaryPrimitives.WriteUInt32BigEndian(Span(bytes, 32, 4), uint32 length)
    bytes.[39] <- 58uy
    sum16 bytes 0u

/// An IGMP message: the bytes, with the checksum computed here.
let private igmp (bytes: byte[]) =
    bytes.[2] <- 0uy
    bytes.[3] <- 0uy
    BinaryPrimitives.WriteUInt16BigEndian(Span(bytes, 2, 2), checksum bytes 0u)
    bytes

/// An MLD message from `source` to `destination`, the checksum computed here.
let private mld (source: Ipv6Address) (destination: Ipv6Address) (bytes: byte[]) =
    bytes.[2] <- 0uy
    bytes.[3] <- 0uy
    BinaryPrimitives.WriteUInt16BigEndian(Span(bytes, 2, 2), checksum bytes (pseudo6 source destination bytes.Length))
    bytes

let private querier6 = Ipv6Address.Parse "fe80::1"
let private group4 (text: string) = Ipv4Address.Parse text
let private group6 (text: string) = Ipv6Address.Parse text

let private ok result =
    match result with
    | Ok(m: GroupMessage) -> m
    | Error e -> failtestf "parse failed: %A" e

/// IGMPv2 query (RFC 2236 §2): type 0x11, Max Resp Time in tenths of a second, group.
let private igmpV2Query (tenths: byte) (group: Ipv4Address) =
    let b = Array.zeroCreate<byte> 8
    b.[0] <- 0x11uy
    b.[1] <- tenths
    group.Write(Span(b, 4, 4))
    igmp b

/// IGMPv1 query (RFC 1112): code 0.
let private igmpV1Query () = igmpV2Query 0uy Ipv4Address.Any

/// IGMPv3 query (RFC 3376 §4.1): 12 bytes + sources; QRV in the low 3 bits of byte 8, QQIC byte 9.
let private igmpV3Query (code: byte) (group: Ipv4Address) (qrv: byte) (qqic: byte) (sources: Ipv4Address list) =
    let b = Array.zeroCreate<byte>(12 + 4 * sources.Length)
    b.[0] <- 0x11uy
    b.[1] <- code
    group.Write(Span(b, 4, 4))
    b.[8] <- qrv
    b.[9] <- qqic
    BinaryPrimitives.WriteUInt16BigEndian(Span(b, 10, 2), uint16 sources.Length)
    sources |> List.iteri (fun i s -> s.Write(Span(b, 12 + 4 * i, 4)))
    igmp b

/// A report of another host (IGMPv2 type 0x16, RFC 2236 §2).
let private igmpV2Report (group: Ipv4Address) =
    let b = Array.zeroCreate<byte> 8
    b.[0] <- 0x16uy
    group.Write(Span(b, 4, 4))
    igmp b

/// MLDv1 query (RFC 2710 §3): 24 bytes, Maximum Response Delay in ms.
let private mldV1Query (ms: uint16) (group: Ipv6Address) =
    let b = Array.zeroCreate<byte> 24
    b.[0] <- 130uy
    BinaryPrimitives.WriteUInt16BigEndian(Span(b, 4, 2), ms)
    group.Write(Span(b, 8, 16))
    mld querier6 Mld.AllNodes b

/// MLDv2 query (RFC 3810 §5.1): 28 bytes + sources.
let private mldV2Query (code: uint16) (group: Ipv6Address) (qrv: byte) (qqic: byte) =
    let b = Array.zeroCreate<byte> 28
    b.[0] <- 130uy
    BinaryPrimitives.WriteUInt16BigEndian(Span(b, 4, 2), code)
    group.Write(Span(b, 8, 16))
    b.[24] <- qrv
    b.[25] <- qqic
    mld querier6 Mld.AllNodes b

let private parse4 (bytes: byte[]) = Igmp.parse (ReadOnlySpan bytes) |> ok

let private parse6 (bytes: byte[]) =
    Mld.parse querier6 Mld.AllNodes (ReadOnlySpan bytes) |> ok

// ---------------------------------------------------------------------------------------------
// Codec properties
// ---------------------------------------------------------------------------------------------

let private any<'T> = ArbMap.defaults |> ArbMap.generate<'T>

let private multicast4Gen =
    gen {
        let! low = Gen.choose (0, 0x0FFFFFFF)
        return Ipv4Address(0xE0000000u ||| uint32 low)
    }

let private multicast6Gen =
    gen {
        let! high = any<uint64>
        let! low = any<uint64>
        return Ipv6Address(0xFF00_0000_0000_0000UL ||| (high &&& 0x00FF_FFFF_FFFF_FFFFUL), low)
    }

let private recordTypeGen = Gen.elements [ 1uy; 2uy; 3uy; 4uy ]

let private codecTests =
    testList
        "codecs"
        [
            test "IGMP queries by RFC 3376 §7.1's length rule, with Max Resp Code decoded (RFC 3376 §4.1.1)" {
                let v1 = parse4 (igmpV1Query ())
                Expect.equal v1.Version GroupProtocolVersion.V1 "8 bytes, code 0: IGMPv1"
                // RFC 2236 §4: an IGMPv1 query means 10 seconds.
                Expect.equal v1.MaxResponseDelay 10_000_000L "v1: 10 s"
                let v2 = parse4 (igmpV2Query 35uy (group4 "239.1.2.3"))
                Expect.equal v2.Version GroupProtocolVersion.V2 "8 bytes, code 35: IGMPv2"
                Expect.equal v2.MaxResponseDelay 3_500_000L "35 tenths = 3.5 s"
                Expect.equal v2.Group4 (group4 "239.1.2.3") "the group"
                // 0x8A = 1|000|1010: (0xA | 0x10) << 3 = 208 tenths = 20.8 s.
                let v3 = parse4 (igmpV3Query 0x8Auy Ipv4Address.Any 3uy 60uy [])
                Expect.equal v3.Version GroupProtocolVersion.V3 "12 bytes: IGMPv3"
                Expect.equal v3.MaxResponseDelay 20_800_000L "0x8A = 20.8 s"
                Expect.equal v3.Robustness 3 "QRV"
                Expect.equal v3.QueryInterval 60 "QQIC"
                // QQIC 0x91 = 1|001|0001: (1 | 0x10) << 4 = 272 s.
                let q = parse4 (igmpV3Query 10uy Ipv4Address.Any 2uy 0x91uy [ group4 "10.0.0.1" ])
                Expect.equal q.QueryInterval 272 "QQIC 0x91 = 272 s"
                Expect.equal q.SourceCount 1 "one source"

                let nine = igmp (Array.append (igmpV2Query 10uy Ipv4Address.Any) [| 0uy |])
                Expect.isError (Igmp.parse (ReadOnlySpan nine)) "9 bytes: neither v2 nor v3"
                let broken = igmpV2Query 10uy Ipv4Address.Any
                broken.[5] <- broken.[5] ^^^ 1uy
                Expect.equal (Igmp.parse (ReadOnlySpan broken)) (Error BadChecksum) "a bad checksum"
            }

            test "MLD queries by RFC 3810 §8.1's length rule, Maximum Response Code decoded (RFC 3810 §5.1.3)" {
                let v1 = parse6 (mldV1Query 10000us Ipv6Address.Any)
                Expect.equal v1.Version GroupProtocolVersion.V2 "24 bytes: MLDv1"
                Expect.equal v1.MaxResponseDelay 10_000_000L "10000 ms"
                // 0x8123 = 1|000|0001 0010 0011: (0x123 | 0x1000) << 3 = 35096 ms.
                let v2 = parse6 (mldV2Query 0x8123us (group6 "ff15::1") 2uy 125uy)
                Expect.equal v2.Version GroupProtocolVersion.V3 "28 bytes: MLDv2"
                Expect.equal v2.MaxResponseDelay 35_096_000L "35096 ms"
                Expect.equal v2.Group6 (group6 "ff15::1") "the group"
                Expect.equal v2.Robustness 2 "QRV"
                Expect.equal v2.QueryInterval 125 "QQIC"
                let broken = mldV1Query 1000us Ipv6Address.Any

                Expect.equal
                    (Mld.parse querier6 Mld.AllRouters (ReadOnlySpan broken))
                    (Error BadChecksum)
                    "the pseudo-header's destination counts"
            }

            testPropertyWithConfig
                codecConfig
                "IGMPv3 reports carry each group with its record type, the checksum right"
            <| Prop.forAll (Arb.fromGen (Gen.listOf (Gen.zip recordTypeGen multicast4Gen))) (fun records ->
                let records = List.truncate 100 records
                let types = records |> List.map fst |> Array.ofList
                let groups = records |> List.map snd |> Array.ofList
                let buffer = Array.zeroCreate<byte>(8 + 8 * groups.Length)
                let n = Igmp.writeV3Report types groups (Span buffer)
                Expect.equal n buffer.Length "8 + 8 per record"
                Expect.equal buffer.[0] 0x22uy "type 0x22"
                Expect.equal (checksum buffer 0u) 0us "the checksum sums to zero"

                Expect.equal
                    (int (BinaryPrimitives.ReadUInt16BigEndian(ReadOnlySpan(buffer, 6, 2))))
                    groups.Length
                    "records"

                for i in 0 .. groups.Length - 1 do
                    Expect.equal buffer.[8 + 8 * i] types.[i] "record type"
                    Expect.equal (Ipv4Address.Read(ReadOnlySpan(buffer, 12 + 8 * i, 4))) groups.[i] "group"

                Expect.equal (parse4 buffer).Kind GroupMessageKind.Report3 "parses as a v3 report")

            testPropertyWithConfig codecConfig "IGMPv1/v2 reports and leaves round-trip"
            <| Prop.forAll
                (Arb.fromGen (Gen.zip (Gen.elements [ Igmp.ReportV1; Igmp.ReportV2; Igmp.LeaveV2 ]) multicast4Gen))
                (fun (t, g) ->
                    let buffer = Array.zeroCreate<byte> 8
                    Igmp.writeV2 t g (Span buffer) |> ignore
                    Expect.equal (checksum buffer 0u) 0us "checksum"
                    let m = parse4 buffer
                    Expect.equal m.Group4 g "group"

                    Expect.equal
                        m.Kind
                        (if t = Igmp.LeaveV2 then
                             GroupMessageKind.Leave
                         else
                             GroupMessageKind.Report)
                        "kind")

            testPropertyWithConfig
                codecConfig
                "MLDv2 reports and MLDv1 reports and dones round-trip, the ICMPv6 checksum right"
            <| Prop.forAll (Arb.fromGen (Gen.zip (Gen.listOf multicast6Gen) multicast6Gen)) (fun (groups, one) ->
                let groups = List.truncate 60 groups |> Array.ofList
                let types = groups |> Array.map (fun _ -> GroupRecordType.ChangeToExclude)
                let source = Ipv6Address.Parse "fd19::2"
                let buffer = Array.zeroCreate<byte>(8 + 20 * groups.Length)
                Mld.writeV2Report source Mld.AllV2Routers types groups (Span buffer) |> ignore
                Expect.equal (checksum buffer (pseudo6 source Mld.AllV2Routers buffer.Length)) 0us "checksum"

                for i in 0 .. groups.Length - 1 do
                    Expect.equal (Ipv6Address.Read(ReadOnlySpan(buffer, 12 + 20 * i, 16))) groups.[i] "group"

                let v1 = Array.zeroCreate<byte> 24
                Mld.writeV1 Mld.ReportV1 source one one (Span v1) |> ignore
                let m = Mld.parse source one (ReadOnlySpan v1) |> ok
                Expect.equal (m.Kind, m.Group6) (GroupMessageKind.Report, one) "v1 report")

            testPropertyWithConfig codecConfig "hostile bytes never throw, as IGMP or as MLD"
            <| fun (bytes: byte[]) ->
                Igmp.parse (ReadOnlySpan bytes) |> ignore
                Mld.parse querier6 Mld.AllNodes (ReadOnlySpan bytes) |> ignore

            testPropertyWithConfig codecConfig "queries with a right checksum and a hostile body never throw"
            <| Prop.forAll (Arb.fromGen (Gen.zip (Gen.choose (0, 80)) any<int>)) (fun (length, seed) ->
                let random = Random seed
                let b = Array.zeroCreate<byte> length
                random.NextBytes b

                if length > 0 then
                    b.[0] <- (if random.Next 2 = 0 then 0x11uy else 130uy)

                if length >= 4 then
                    igmp b |> ignore
                    Igmp.parse (ReadOnlySpan b) |> ignore
                    mld querier6 Mld.AllNodes b |> ignore
                    Mld.parse querier6 Mld.AllNodes (ReadOnlySpan b) |> ignore)

            test "reports leave with TTL / hop limit 1 and a Router Alert, to 224.0.0.22 and ff02::16" {
                let report4 =
                    {
                        Ipv6 = false
                        Version = GroupProtocolVersion.V3
                        Leave = false
                        RecordTypes = [| 4uy |]
                        Groups = [| V4(group4 "239.1.2.3") |]
                    }

                let buffer = Array.zeroCreate<byte> 200
                let n = Multicast.write (V4(group4 "10.0.0.2")) report4 (Span buffer)
                Expect.equal n 40 "24 bytes of header with the option, 16 of IGMP"
                Expect.equal buffer.[0] 0x46uy "IHL 6: one option word"
                Expect.equal buffer.[8] 1uy "TTL 1"
                Expect.equal buffer.[9] 2uy "IGMP"
                Expect.equal (Ipv4Address.Read(ReadOnlySpan(buffer, 16, 4))) (group4 "224.0.0.22") "to 224.0.0.22"
                Expect.sequenceEqual buffer.[20..23] [| 0x94uy; 4uy; 0uy; 0uy |] "Router Alert (RFC 2113)"
                Expect.equal (checksum buffer.[0..23] 0u) 0us "the IPv4 header checksum"
                Expect.equal (checksum buffer.[24..39] 0u) 0us "the IGMP checksum"
                Expect.equal buffer.[24] 0x22uy "an IGMPv3 report"

                let report6 =
                    {
                        Ipv6 = true
                        Version = GroupProtocolVersion.V3
                        Leave = false
                        RecordTypes = [| 4uy |]
                        Groups = [| V6(group6 "ff15::7") |]
                    }

                let source = Ipv6Address.Parse "fd19::2"
                let n = Multicast.write (V6 source) report6 (Span buffer)
                Expect.equal n (40 + 8 + 28) "header, hop-by-hop, MLDv2 with one record"
                Expect.equal buffer.[6] 0uy "hop-by-hop first"
                Expect.equal buffer.[7] 1uy "hop limit 1"
                Expect.equal (Ipv6Address.Read(ReadOnlySpan(buffer, 24, 16))) Mld.AllV2Routers "to ff02::16"

                Expect.sequenceEqual
                    buffer.[40..47]
                    [| 58uy; 0uy; 5uy; 2uy; 0uy; 0uy; 1uy; 0uy |]
                    "Router Alert MLD (RFC 2711)"

                let message = buffer.[48 .. n - 1]
                Expect.equal message.[0] 143uy "an MLDv2 report"

                Expect.equal
                    (checksum message (pseudo6 source Mld.AllV2Routers message.Length))
                    0us
                    "the ICMPv6 checksum"
            }
        ]

// ---------------------------------------------------------------------------------------------
// The group state model as oracle
// ---------------------------------------------------------------------------------------------

let private allStates =
    [ GroupState.NonMember; GroupState.Delaying; GroupState.Idle ]

let private allTriggers =
    [
        GroupTrigger.Join
        GroupTrigger.Leave
        GroupTrigger.Query
        GroupTrigger.ReportHeard
        GroupTrigger.Retransmit
        GroupTrigger.TimerExpired
    ]

/// RFC 2236 §6's state table (Non-Member / Delaying Member / Idle Member), with RFC 3376's
/// repeated unsolicited reports as Retransmit: the edges the model must have, no more.
/// None: ignored (the state stays).
let private rfcTable =
    [
        GroupState.NonMember, GroupTrigger.Join, Some GroupState.Delaying // "join group": send report, start timer
        GroupState.NonMember, GroupTrigger.Query, None
        GroupState.NonMember, GroupTrigger.ReportHeard, None
        GroupState.Delaying, GroupTrigger.Join, None // another socket: already a member
        GroupState.Delaying, GroupTrigger.Leave, Some GroupState.NonMember // "leave group"
        GroupState.Delaying, GroupTrigger.Query, Some GroupState.Delaying // "reset timer if Max Resp Time < current"
        GroupState.Delaying, GroupTrigger.ReportHeard, Some GroupState.Idle // "report received": stop timer
        GroupState.Delaying, GroupTrigger.Retransmit, Some GroupState.Delaying // an unsolicited repetition
        GroupState.Delaying, GroupTrigger.TimerExpired, Some GroupState.Idle // "timer expired": send report
        GroupState.Idle, GroupTrigger.Join, None
        GroupState.Idle, GroupTrigger.Leave, Some GroupState.NonMember
        GroupState.Idle, GroupTrigger.Query, Some GroupState.Delaying // "query received": start timer
        GroupState.Idle, GroupTrigger.ReportHeard, None
    ]

type private Action =
    | JoinA of int
    | LeaveA of int
    | SpecificQuery of int * int
    | GeneralQuery of int
    | HeardReport of int
    | Advance of int

let private actionGen =
    Gen.frequency
        [
            3, Gen.map JoinA (Gen.choose (0, 2))
            2, Gen.map LeaveA (Gen.choose (0, 2))
            2, Gen.map SpecificQuery (Gen.zip (Gen.choose (0, 2)) (Gen.choose (1, 100)))
            1, Gen.map GeneralQuery (Gen.choose (1, 100))
            2, Gen.map HeardReport (Gen.choose (0, 2))
            4, Gen.map Advance (Gen.choose (0, 4000))
        ]

/// Runs `actions` against Multicast with a virtual clock, classifying each input into group
/// triggers by the RFC (the test's own count of users, reports due and the querier's presence),
/// and checks every state change against the model. Returns the (state, trigger) pairs seen.
/// `v2`: an IGMPv2 querier is present from the start (compatibility mode, RFC 3376 §7.2.1).
let private runAgainstModel (seed: int) (v2: bool) (actions: Action list) =
    let groups =
        [| V4(group4 "239.9.0.1"); V4(group4 "239.9.0.2"); V4(group4 "239.9.0.3") |]

    let users = Array.zeroCreate<int> 3
    let due = Array.zeroCreate<int> 3
    let seen = Collections.Generic.HashSet<GroupState * GroupTrigger>()
    let mutable state = Multicast.create false (uint64 seed)
    let mutable now = 1_000_000L
    // RFC 3376 §8.12 with the defaults: 2 × 125 s + 10 s.
    let olderTimeout = 2L * 125_000_000L + 10_000_000L
    let mutable v2Until = 0L

    let query (bytes: byte[]) =
        let m = parse4 bytes

        if m.Version = GroupProtocolVersion.V2 then
            v2Until <- now + olderTimeout

        state <- Multicast.receive now m state

    let check (index: int) (before: GroupState) (trigger: GroupTrigger voption) =
        let after = Multicast.stateOf groups.[index] state

        match trigger with
        | ValueSome t ->
            seen.Add((before, t)) |> ignore

            Expect.isTrue
                (GroupModel.allows before t after)
                $"seed {seed}: {groups.[index]} {before} --{t}--> {after} is not in the model"
        | ValueNone -> Expect.equal after before $"seed {seed}: {groups.[index]} changed without a trigger"

    if v2 then
        query (igmpV2Query 100uy Ipv4Address.Any)

    for action in actions do
        let befores = groups |> Array.map (fun g -> Multicast.stateOf g state)
        let triggers = Array.create 3 ValueNone
        let inV2 () = now < v2Until

        match action with
        | JoinA i ->
            if users.[i] = 0 then
                due.[i] <- 2 // Robustness unsolicited reports (RFC 3376 §5.1)

            users.[i] <- users.[i] + 1
            state <- Multicast.join now groups.[i] state
            triggers.[i] <- ValueSome GroupTrigger.Join
        | LeaveA i ->
            if users.[i] > 0 then
                users.[i] <- users.[i] - 1
                state <- Multicast.leave now groups.[i] state

                if users.[i] = 0 then
                    due.[i] <- 0
                    triggers.[i] <- ValueSome GroupTrigger.Leave
        | SpecificQuery(i, tenths) ->
            let g =
                match groups.[i] with
                | V4 a -> a
                | V6 _ -> Ipv4Address.Any

            if v2 then
                query (igmpV2Query (byte tenths) g)
            else
                query (igmpV3Query (byte tenths) g 0uy 0uy [])

            if users.[i] > 0 && due.[i] = 0 then
                due.[i] <- 1

            triggers.[i] <- ValueSome GroupTrigger.Query
        | GeneralQuery tenths ->
            // Only an IGMPv2 general query starts per-group timers (RFC 2236 §3).
            if v2 then
                query (igmpV2Query (byte tenths) Ipv4Address.Any)

                for i in 0..2 do
                    if users.[i] > 0 && due.[i] = 0 then
                        due.[i] <- 1

                    triggers.[i] <- ValueSome GroupTrigger.Query
        | HeardReport i ->
            let g =
                match groups.[i] with
                | V4 a -> a
                | V6 _ -> Ipv4Address.Any

            let suppressing = inV2 ()
            state <- Multicast.receive now (parse4 (igmpV2Report g)) state

            // RFC 3376 §5: an IGMPv3 host does not suppress; in v2 mode it does (RFC 2236 §3).
            if suppressing then
                if users.[i] > 0 then
                    due.[i] <- 0

                triggers.[i] <- ValueSome GroupTrigger.ReportHeard
        | Advance ms ->
            now <- now + int64 ms * 1000L
            let struct (next, reports) = Multicast.tick now state
            state <- next

            for report in reports do
                if not report.Leave then
                    report.Groups
                    |> Array.iteri (fun r g ->
                        let isLeaveRecord =
                            report.Version = GroupProtocolVersion.V3
                            && report.RecordTypes.[r] = GroupRecordType.ChangeToInclude

                        if not isLeaveRecord then
                            let i = Array.findIndex (fun x -> x = g) groups

                            triggers.[i] <-
                                ValueSome(
                                    if due.[i] > 1 then
                                        GroupTrigger.Retransmit
                                    else
                                        GroupTrigger.TimerExpired
                                )

                            due.[i] <- max 0 (due.[i] - 1))

        for i in 0..2 do
            check i befores.[i] triggers.[i]

    seen

let private modelTests =
    testList
        "group model"
        [
            test "docs/multicast-group-states.dot is the model's DOT export" {
                let path = Path.Combine(repoRoot.Value, "docs", "multicast-group-states.dot")
                let normalise (s: string) = s.Replace("\r\n", "\n").Trim()
                let current = normalise (GroupModel.dot ())

                let committed =
                    if File.Exists path then
                        normalise (File.ReadAllText path)
                    else
                        ""

                if committed <> current then
                    File.WriteAllText(path + ".actual", current + "\n")

                Expect.equal committed current $"{path} differs from GroupModel.dot (); see {path}.actual"
            }

            test "the model is RFC 2236 §6's table, edge for edge" {
                for state in allStates do
                    for trigger in allTriggers do
                        let expected = rfcTable |> List.tryFind (fun (s, t, _) -> s = state && t = trigger)

                        match expected with
                        | Some(_, _, Some target) ->
                            Expect.equal (GroupModel.target state trigger) (ValueSome target) $"{state} {trigger}"
                        | Some(_, _, None) ->
                            Expect.isTrue (GroupModel.isIgnored state trigger) $"{state} ignores {trigger}"
                        | None ->
                            Expect.isFalse
                                ((GroupModel.target state trigger).IsSome || GroupModel.isIgnored state trigger)
                                $"{state} has no {trigger}"
            }

            test "random joins, leaves, queries, reports and timers follow the model, every edge exercised" {
                let seen = Collections.Generic.HashSet<GroupState * GroupTrigger>()

                let samples =
                    Gen.sampleWithSeed (Rnd 3376UL) 50 200 (Gen.listOfLength 120 actionGen)

                samples
                |> Array.iteri (fun i actions ->
                    for pair in runAgainstModel i (i % 2 = 0) actions do
                        seen.Add pair |> ignore)

                for state, trigger, _ in rfcTable do
                    Expect.isTrue (seen.Contains((state, trigger))) $"the edge {state} --{trigger}--> was exercised"
            }
        ]

// ---------------------------------------------------------------------------------------------
// Compatibility mode and timers
// ---------------------------------------------------------------------------------------------

/// The message type of each report as written on the wire: the byte after the IPv4 header
/// (IGMP) or after the IPv6 header and its 8-byte hop-by-hop header (MLD).
let private reportTypes (source: IpAddr) (reports: GroupReport list) =
    reports
    |> List.map (fun r ->
        let buffer = Array.zeroCreate<byte> 1500
        Multicast.write source r (Span buffer) |> ignore

        if r.Ipv6 then
            buffer.[48]
        else
            buffer.[int (buffer.[0] &&& 0xFuy) * 4])

let private compatibilityTests =
    testList
        "compatibility"
        [
            test
                "an IGMPv2 query makes the host an IGMPv2 host for Robustness × Query Interval + Query Response Interval (RFC 3376 §7.2.1, §8.12)" {
                let t0 = 5_000_000L

                let s =
                    Multicast.create false 7UL
                    |> Multicast.receive t0 (parse4 (igmpV2Query 100uy Ipv4Address.Any))
                // Defaults: Robustness 2, Query Interval 125 s, Query Response Interval 10 s.
                let timeout = 2L * 125_000_000L + 10_000_000L
                Expect.equal (Multicast.mode (t0 + timeout - 1L) s) GroupProtocolVersion.V2 "v2 until the timeout"
                Expect.equal (Multicast.mode (t0 + timeout) s) GroupProtocolVersion.V3 "v3 after it"

                // A join in v2 mode: IGMPv2 reports (type 0x16) to the group.
                let s = Multicast.join (t0 + 1L) (V4(group4 "239.1.1.1")) s
                let struct (_, reports) = Multicast.tick (t0 + 1L) s
                Expect.equal (reportTypes (V4(group4 "10.0.0.2")) reports) [ 0x16uy ] "one IGMPv2 report"
                Expect.equal reports.Head.Destination (V4(group4 "239.1.1.1")) "to the group (RFC 2236 §3)"
            }

            test "a version 3 query's QRV, QQIC and Max Resp Time set the timeout of a later IGMPv1 querier" {
                // QRV 3, QQIC 60 s, Max Resp Code 50 = 5 s: 3 × 60 s + 5 s = 185 s.
                let s =
                    Multicast.create false 9UL
                    |> Multicast.receive 0L (parse4 (igmpV3Query 50uy Ipv4Address.Any 3uy 60uy []))
                    |> Multicast.receive 1_000_000L (parse4 (igmpV1Query ()))

                Expect.equal (Multicast.olderQuerierTimeout s) 185_000_000L "3 × 60 s + 5 s"
                Expect.equal (Multicast.mode (1_000_000L + 185_000_000L - 1L) s) GroupProtocolVersion.V1 "v1"
                Expect.equal (Multicast.mode (1_000_000L + 185_000_000L) s) GroupProtocolVersion.V3 "v3 again"
                // Robustness 3: a join's report goes three times.
                let mutable s = Multicast.join 2_000_000L (V4(group4 "239.1.1.2")) s
                let mutable now = 2_000_000L
                let mutable count = 0

                while Multicast.nextDeadline s < Int64.MaxValue do
                    now <- max now (Multicast.nextDeadline s)
                    let struct (next, reports) = Multicast.tick now s
                    // (The v3 query's general answer, due meanwhile, lapses in v1 mode.)
                    for t in reportTypes (V4(group4 "10.0.0.2")) reports do
                        Expect.equal t 0x12uy "IGMPv1 reports"

                    count <- count + reports.Length
                    s <- next

                Expect.equal count 3 "Robustness 3: three unsolicited reports"
                // IGMPv1 has no leave message.
                let s = Multicast.leave now (V4(group4 "239.1.1.2")) s
                let struct (_, reports) = Multicast.tick now s
                Expect.isEmpty reports "no leave in IGMPv1 mode"
            }

            test
                "an MLDv1 query makes the host an MLDv1 host; MLDv2 joins report CHANGE_TO_EXCLUDE Robustness times within 1 s" {
                let group = V6(group6 "ff15::9")
                let mutable s = Multicast.join 0L group (Multicast.create true 11UL)
                let mutable times = []

                while Multicast.nextDeadline s < Int64.MaxValue do
                    let at = Multicast.nextDeadline s
                    let struct (next, reports) = Multicast.tick at s
                    Expect.equal reports.Head.RecordTypes [| GroupRecordType.ChangeToExclude |] "CHANGE_TO_EXCLUDE {}"
                    times <- times @ [ at ]
                    s <- next

                Expect.equal times.Length 2 "Robustness 2"
                Expect.equal times.Head 0L "the first at once"
                // RFC 3810 §9.11: Unsolicited Report Interval 1 s.
                Expect.isLessThanOrEqual times.[1] 1_000_000L "the repetition within 1 s"

                let s =
                    Multicast.receive 5_000_000L (parse6 (mldV1Query 1000us (group6 "ff15::9"))) s

                let timeout = 2L * 125_000_000L + 10_000_000L
                Expect.equal (Multicast.mode (5_000_000L + timeout - 1L) s) GroupProtocolVersion.V2 "MLDv1"
                Expect.equal (Multicast.mode (5_000_000L + timeout) s) GroupProtocolVersion.V3 "MLDv2 after"
                // The answer within the 1000 ms asked for, as an MLDv1 report (type 131).
                let deadline = Multicast.nextDeadline s
                Expect.isLessThanOrEqual deadline 6_000_000L "within Maximum Response Delay"
                let struct (s, reports) = Multicast.tick deadline s
                Expect.equal (reportTypes (V6(group6 "fd19::2")) reports) [ 131uy ] "an MLDv1 report"
                // Leaving in MLDv1 mode: one done (type 132) to ff02::2.
                let s = Multicast.leave deadline group s
                let struct (_, reports) = Multicast.tick deadline s
                Expect.equal (reportTypes (V6(group6 "fd19::2")) reports) [ 132uy ] "an MLDv1 done"
                Expect.equal reports.Head.Destination (V6 Mld.AllRouters) "to ff02::2"
            }

            test "a version 3 general query is answered once, within Max Resp Time, with every group MODE_IS_EXCLUDE" {
                let a = V4(group4 "239.2.0.1")
                let b = V4(group4 "239.2.0.2")

                let mutable s =
                    Multicast.create false 13UL |> Multicast.join 0L a |> Multicast.join 0L b
                // Let the joins' reports go.
                while Multicast.nextDeadline s < Int64.MaxValue do
                    let struct (next, _) = Multicast.tick (Multicast.nextDeadline s) s
                    s <- next

                let t = 10_000_000L
                // Max Resp Code 20 = 2 s.
                s <- Multicast.receive t (parse4 (igmpV3Query 20uy Ipv4Address.Any 0uy 0uy [])) s
                let deadline = Multicast.nextDeadline s
                Expect.isTrue (deadline >= t && deadline <= t + 2_000_000L) "within 2 s"
                Expect.equal (Multicast.stateOf a s) GroupState.Idle "a general v3 query starts no group timer"
                let struct (s, reports) = Multicast.tick deadline s
                Expect.equal reports.Length 1 "one report"
                Expect.equal (Set.ofArray reports.Head.Groups) (Set.ofList [ a; b ]) "both groups"

                Expect.isTrue
                    (reports.Head.RecordTypes |> Array.forall ((=) GroupRecordType.ModeIsExclude))
                    "MODE_IS_EXCLUDE"

                Expect.equal (Multicast.nextDeadline s) Int64.MaxValue "nothing more"
            }

            test
                "many groups' records are split into reports that fit the minimum MTU (RFC 3376 §4.2.16, RFC 3810 §5.2.15)" {
                for ipv6, limit in [ false, 576; true, 1280 ] do
                    let groups =
                        [
                            for i in 1..150 ->
                                if ipv6 then
                                    V6(Ipv6Address(0xFF15_0000_0000_0000UL, uint64 i))
                                else
                                    V4(Ipv4Address(0xEF010000u + uint32 i))
                        ]

                    let s =
                        groups
                        |> List.fold (fun s g -> Multicast.join 0L g s) (Multicast.create ipv6 17UL)

                    let struct (_, reports) = Multicast.tick 0L s
                    let source = if ipv6 then V6(group6 "fd19::2") else V4(group4 "10.0.0.2")

                    let sizes =
                        reports
                        |> List.map (fun r -> Multicast.write source r (Span(Array.zeroCreate<byte> 65536)))

                    Expect.isGreaterThan reports.Length 1 "more than one report"
                    Expect.isTrue (sizes |> List.forall (fun n -> n <= limit)) $"each within {limit} bytes: %A{sizes}"

                    Expect.equal
                        (reports |> List.collect (fun r -> List.ofArray r.Groups) |> Set.ofList)
                        (Set.ofList groups)
                        "every group once"
            }

            test "224.0.0.1 and ff02::1 are joined without reports; unicast addresses are refused" {
                let s = Multicast.create false 1UL |> Multicast.join 0L (V4 Igmp.AllSystems)
                Expect.equal (Multicast.nextDeadline s) Int64.MaxValue "no report for all-systems"
                Expect.equal (Multicast.stateOf (V4 Igmp.AllSystems) s) GroupState.Idle "a member"

                Expect.throwsT<ArgumentException>
                    (fun () -> Multicast.join 0L (V4(group4 "10.0.0.1")) s |> ignore)
                    "not multicast"
            }
        ]

// ---------------------------------------------------------------------------------------------
// The IP layer's receive filter
// ---------------------------------------------------------------------------------------------

let private ours4 = Ipv4Address.Parse "10.0.0.2"
let private ours6 = Ipv6Address.Parse "fd00::2"

let private layer () =
    let config =
        IpLayerSettings(Address4 = ours4, Address6 = ours6, PrefixLength4 = Nullable 24).ToConfig()

    IpLayer.create config 0L
    |> IpLayer.withGroups [| V4(group4 "239.1.2.3"); V6(group6 "ff15::3") |]

let private udp (source: IpAddr) (destination: IpAddr) =
    let buffer = Array.zeroCreate<byte> 200

    let n =
        IpLayer.writeUdp source destination 5us 6us 1us (ReadOnlySpan [| 1uy |]) (Span buffer)

    buffer.[.. n - 1]

/// An IPv4 packet of `protocol` carrying `payload` (20-byte header; checksum by the codec).
let private ipv4 (source: Ipv4Address) (destination: Ipv4Address) (protocol: byte) (payload: byte[]) =
    let buffer = Array.zeroCreate<byte>(20 + payload.Length)

    Ipv4.write
        { Ipv4.header source destination protocol with
            Ttl = 1uy
        }
        ReadOnlySpan.Empty
        payload.Length
        (Span buffer)
    |> ignore

    payload.CopyTo(buffer, 20)
    buffer

/// An IPv6 packet carrying the ICMPv6 message `payload` with `hopLimit`.
let private ipv6 (source: Ipv6Address) (destination: Ipv6Address) (hopLimit: byte) (payload: byte[]) =
    let buffer = Array.zeroCreate<byte>(40 + payload.Length)

    Ipv6.write
        { Ipv6.header source destination 58uy with
            PayloadLength = payload.Length
            HopLimit = hopLimit
        }
        (Span buffer)
    |> ignore

    payload.CopyTo(buffer, 40)
    buffer

let private receive (packet: byte[]) =
    let struct (_, r) = IpLayer.receive 0L (ReadOnlySpan packet) (layer ())
    r

let private filterTests =
    testList
        "receive filter"
        [
            test "joined groups, all-systems, all-nodes and the broadcasts are taken; other groups are dropped" {
                let peer4 = V4(Ipv4Address.Parse "10.0.0.1")
                let peer6 = V6(Ipv6Address.Parse "fd00::1")

                for destination, kind, multicast, broadcast in
                    [
                        V4(group4 "239.1.2.3"), ReceivedKind.UdpDatagram, true, false
                        V4(group4 "224.0.0.1"), ReceivedKind.UdpDatagram, true, false
                        V4(group4 "239.1.2.4"), ReceivedKind.Dropped, false, false
                        V4(group4 "10.0.0.255"), ReceivedKind.UdpDatagram, false, true
                        V4(group4 "255.255.255.255"), ReceivedKind.UdpDatagram, false, true
                    ] do
                    let r = receive (udp peer4 destination)
                    Expect.equal r.Kind kind $"{destination}"

                    if kind = ReceivedKind.UdpDatagram then
                        Expect.equal (r.ToMulticast, r.ToBroadcast) (multicast, broadcast) $"{destination}"
                    else
                        Expect.equal r.Drop DropReason.NotJoined $"{destination}"

                for destination, kind in
                    [
                        V6(group6 "ff15::3"), ReceivedKind.UdpDatagram
                        V6(group6 "ff02::1"), ReceivedKind.UdpDatagram
                        V6(group6 "ff15::4"), ReceivedKind.Dropped
                    ] do
                    Expect.equal (receive (udp peer6 destination)).Kind kind $"{destination}"
            }

            test
                "IGMP comes up as a group message, also from 0.0.0.0 (a snooping querier); other protocols from 0.0.0.0 do not" {
                let query = igmpV2Query 10uy Ipv4Address.Any
                let r = receive (ipv4 Ipv4Address.Any Igmp.AllSystems 2uy query)
                Expect.equal r.Kind ReceivedKind.GroupMessage "IGMP from 0.0.0.0"
                Expect.equal r.Payload.Length 8 "the IGMP message"
                let r = receive (udp (V4 Ipv4Address.Any) (V4 Igmp.AllSystems))
                Expect.equal r.Drop DropReason.BadSource "UDP from 0.0.0.0"
            }

            test "MLD needs hop limit 1, and queries a link-local source (RFC 3810 §5.1.14, §5.2.13)" {
                let query = mldV1Query 1000us Ipv6Address.Any

                Expect.equal
                    (receive (ipv6 querier6 Mld.AllNodes 1uy query)).Kind
                    ReceivedKind.GroupMessage
                    "a valid query"

                Expect.equal
                    (receive (ipv6 querier6 Mld.AllNodes 255uy query)).Drop
                    DropReason.MldHopLimit
                    "hop limit 255"

                let globalSource = Ipv6Address.Parse "fd00::1"
                let fromGlobal = mld globalSource Mld.AllNodes (Array.copy query)

                Expect.equal
                    (receive (ipv6 globalSource Mld.AllNodes 1uy fromGlobal)).Drop
                    DropReason.MldNotLinkLocal
                    "a global source"
            }
        ]

[<Tests>]
let tests =
    testList "Multicast core" [ codecTests; modelTests; compatibilityTests; filterTests ]
