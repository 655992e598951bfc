/// The DHCPv4 client (RFC 2131) in the core: the message codec (RFC 2132, RFC 3442's own
/// examples), the state graph (docs/dhcp-client-states.dot, pinned to RFC 2131 Figure 5 written
/// here) and the client driven by a virtual clock and a scripted server, each input classified
/// by the test and checked against DhcpModel as an independent oracle, with the RFC 2131 §4.1
/// retransmission, §4.4.5 T1/T2 and RFC 5227 probe timings computed here.
module NetStack.Tests.DhcpTests

open System
open System.IO
open Expecto
open FsCheck
open FsCheck.FSharp
open Microsoft.FSharp.Reflection
open NetStack.Core.Wire
open NetStack.Core.Link
open NetStack.Tests.TestUtil

let private casesOf<'T> () =
    FSharpType.GetUnionCases typeof<'T>
    |> Array.map (fun c -> FSharpValue.MakeUnion(c, [||]) :?> 'T)
    |> List.ofArray

let private allStates = casesOf<DhcpState>()
let private allTriggers = casesOf<DhcpTrigger>()

let private normalise (text: string) =
    text.Replace("\r\n", "\n").TrimEnd('\n')

let private ip (text: string) = Ipv4Address.Parse text
let private mac = MacAddress.Parse "02:a7:00:00:00:02"

// ------------------------------------------------------------------------------------------
// Codec
// ------------------------------------------------------------------------------------------

/// RFC 3442 §"Description": the destination descriptors of its table, each with router 10.0.0.1.
let private rfc3442Examples =
    [
        "0.0.0.0", 0, "00"
        "10.0.0.0", 8, "08 0a"
        "10.0.0.0", 24, "18 0a 00 00"
        "10.17.0.0", 16, "10 0a 11"
        "10.27.129.0", 24, "18 0a 1b 81"
        "10.229.0.128", 25, "19 0a e5 00 80"
        "10.198.122.47", 32, "20 0a c6 7a 2f"
    ]

let private genAddress =
    Gen.choose (0, Int32.MaxValue) |> Gen.map (fun n -> Ipv4Address(uint32 n * 2u))

let private genRoute =
    gen {
        let! width = Gen.choose (0, 32)
        let! d = genAddress
        let! r = genAddress

        return
            {
                Destination = Ipv4Address(d.Value &&& Route.mask4 width)
                PrefixLength = width
                Router = r
            }
    }

let private genOptional g =
    Gen.oneof [ Gen.constant ValueNone; g |> Gen.map ValueSome ]

let private genMessage =
    gen {
        let! op = Gen.elements [ 1uy; 2uy ]
        let! kind = Gen.choose (1, 8)
        let! xid = Gen.choose (0, Int32.MaxValue) |> Gen.map (fun n -> uint32 n * 3u)
        let! secs = Gen.choose (0, 65535)
        let! broadcast = Gen.elements [ true; false ]
        let! a = Gen.arrayOfLength 4 genAddress
        let! macValue = Gen.choose (0, Int32.MaxValue)
        let! mask = genOptional genAddress

        let! routers =
            Gen.choose (0, 3) |> Gen.bind (fun n -> Gen.arrayOfLength n genAddress)

        let! dns = Gen.choose (0, 3) |> Gen.bind (fun n -> Gen.arrayOfLength n genAddress)
        let! host = Gen.elements [ null; "h"; "netstack-test" ]
        let! mtu = genOptional (Gen.choose (68, 65535))
        let! requested = genOptional genAddress

        let! times =
            Gen.arrayOfLength 3 (genOptional (Gen.choose (0, Int32.MaxValue) |> Gen.map uint32))

        let! server = genOptional genAddress

        let! prl =
            Gen.choose (0, 12)
            |> Gen.bind (fun n -> Gen.arrayOfLength n (Gen.choose (1, 254) |> Gen.map byte))

        let! cid = Gen.elements [ [||]; [| 1uy; 2uy; 3uy |] ]
        let! routes = Gen.choose (0, 4) |> Gen.bind (fun n -> Gen.arrayOfLength n genRoute)

        return
            { DhcpMessage.empty op (LanguagePrimitives.EnumOfValue(byte kind)) xid (MacAddress(uint64 macValue <<< 8)) with
                Secs = uint16 secs
                Broadcast = broadcast
                ClientAddress = a.[0]
                YourAddress = a.[1]
                NextServer = a.[2]
                RelayAddress = a.[3]
                SubnetMask = mask
                Routers = routers
                DnsServers = dns
                HostName = host
                Mtu = mtu
                RequestedAddress = requested
                LeaseTime = times.[0]
                RenewalTime = times.[1]
                RebindingTime = times.[2]
                ServerId = server
                ParameterRequests = prl
                ClientId = cid
                ClasslessRoutes = routes
            }
    }

let private bytesOf (m: DhcpMessage) =
    let buffer = Array.zeroCreate (DhcpMessage.length m)
    let n = DhcpMessage.write m (Span buffer)
    Array.sub buffer 0 n

// A minimal DHCPOFFER written byte by byte from RFC 2131 §2 and RFC 2132 (not by the codec).
let private handOffer =
    hex (
        "02 01 06 00 12345678 0003 8000 00000000 0a6b0132 00000000 00000000"
        + " 02a700000002 00000000000000000000"
        + String.replicate 192 "00"
        + " 63825363"
        + " 35 01 02" // message type OFFER
        + " 36 04 0a6b0101" // server id
        + " 33 04 00000078" // lease 120 s
        + " 01 04 ffffff00" // mask
        + " 03 04 0a6b0101" // router
        + " 06 08 0a6b0135 0a6b0136" // DNS
        + " 1a 02 05dc" // MTU 1500
        + " 79 0d 18 0a1b81 0a6b0101 00 0a6b01fe" // 10.27.129.0/24 via .1; default via .254
        + " 00 00" // pad
        + " ff"
    )

let private codecTests =
    testList
        "codec"
        [
            test "a DHCPOFFER written by hand from RFC 2131 §2 and RFC 2132 parses field by field" {
                match DhcpMessage.parse (ReadOnlySpan handOffer) with
                | Error e -> failtestf "%A" e
                | Ok m ->
                    Expect.equal m.Op 2uy "BOOTREPLY"
                    Expect.equal m.Xid 0x12345678u "xid"
                    Expect.equal m.Secs 3us "secs"
                    Expect.isTrue m.Broadcast "broadcast flag"
                    Expect.equal m.YourAddress (ip "10.107.1.50") "yiaddr"
                    Expect.equal m.ClientMac mac "chaddr"
                    Expect.equal m.MessageType DhcpMessageType.Offer "type"
                    Expect.equal m.ServerId (ValueSome(ip "10.107.1.1")) "server id"
                    Expect.equal m.LeaseTime (ValueSome 120u) "lease"
                    Expect.equal m.SubnetMask (ValueSome(ip "255.255.255.0")) "mask"
                    Expect.equal m.Routers [| ip "10.107.1.1" |] "router"
                    Expect.equal m.DnsServers [| ip "10.107.1.53"; ip "10.107.1.54" |] "DNS"
                    Expect.equal m.Mtu (ValueSome 1500) "MTU"

                    Expect.equal
                        m.ClasslessRoutes
                        [|
                            {
                                Destination = ip "10.27.129.0"
                                PrefixLength = 24
                                Router = ip "10.107.1.1"
                            }
                            {
                                Destination = ip "0.0.0.0"
                                PrefixLength = 0
                                Router = ip "10.107.1.254"
                            }
                        |]
                        "classless routes"
            }

            test "RFC 3442's examples: each destination descriptor parses to its subnet and is written back the same" {
                for subnet, width, descriptor in rfc3442Examples do
                    let bytes = hex (descriptor + " 0a000001")

                    let expected =
                        {
                            Destination = ip subnet
                            PrefixLength = width
                            Router = ip "10.0.0.1"
                        }

                    match DhcpMessage.parseClasslessRoutes (ReadOnlySpan bytes) with
                    | Ok routes -> Expect.equal routes [| expected |] $"{subnet}/{width}"
                    | Error e -> failtestf "%s/%d: %A" subnet width e

                    let m =
                        { DhcpMessage.empty 2uy DhcpMessageType.Ack 1u mac with
                            ClasslessRoutes = [| expected |]
                        }

                    let written = bytesOf m
                    // Option 121 follows the message type (53 01 05) at the start of the options.
                    let option = Array.sub written (DhcpMessage.OptionsOffset + 3) (2 + bytes.Length)
                    Expect.equal option (Array.append [| 121uy; byte bytes.Length |] bytes) $"{subnet}/{width} written"
            }

            test "hostile options: past the end, wrong sizes, bad routes, bad cookie, no type, foreign hardware" {
                let valid = handOffer

                let mutate (at: int) (value: byte) =
                    let b = Array.copy valid
                    b.[at] <- value
                    b

                let o = DhcpMessage.OptionsOffset

                let check name (bytes: byte[]) (expected: ParseError) =
                    match DhcpMessage.parse (ReadOnlySpan bytes) with
                    | Error e -> Expect.equal e expected name
                    | Ok _ -> failtestf "%s: parsed" name

                check "a truncated header" (Array.sub valid 0 100) (Truncated(241, 100))
                check "a foreign cookie" (mutate 236 0x64uy) (BadField "magic cookie")
                check "hardware type 6" (mutate 1 6uy) (BadField "hardware type")
                check "op 3" (mutate 0 3uy) (BadField "op")
                check "the server id with 5 bytes" (mutate (o + 4) 5uy) (BadOptionSize(54, 5))
                check "a message type of 9" (mutate (o + 2) 9uy) (BadOptionSize(53, 1))

                check
                    "an option past the end"
                    (Array.append (Array.sub valid 0 (o + 3)) [| 6uy; 200uy; 1uy |])
                    (BadOptionLength 3)
                // The route option's first width (offset of "18" in option 121) set to 33.
                let routesAt = Array.IndexOf(valid, 0x79uy, o) + 2
                check "a route width of 33" (mutate routesAt 33uy) (BadField "classless route width")
                // A host bit set past the width: 10.27.129.0/24 with the width made 20.
                check
                    "a destination with bits past its width"
                    (mutate routesAt 20uy)
                    (BadField "classless route destination")

                check
                    "no message type"
                    (mutate (o + 0) 0uy
                     |> fun b ->
                         (b.[o + 1] <- 0uy
                          b.[o + 2] <- 0uy
                          b))
                    (BadField "message type")
            }

            testPropertyWithConfig codecConfig "messages round-trip through write and parse"
            <| Prop.forAll (Arb.fromGen genMessage) (fun m ->
                match DhcpMessage.parse (ReadOnlySpan(bytesOf m)) with
                | Ok back -> back = m
                | Error e -> failwithf "%A" e)

            testPropertyWithConfig codecConfig "written messages are at least 300 bytes (RFC 1542 §3.1.1)"
            <| Prop.forAll (Arb.fromGen genMessage) (fun m -> (bytesOf m).Length >= 300)

            testPropertyWithConfig codecConfig "hostile bytes never throw"
            <| Prop.forAll
                (Arb.fromGen (
                    Gen.choose (0, 600)
                    |> Gen.bind (fun n -> Gen.arrayOfLength n (Gen.choose (0, 255) |> Gen.map byte))
                ))
                (fun bytes ->
                    // With the fixed part made plausible, so the options parser sees the noise too.
                    let plausible = Array.copy bytes

                    if plausible.Length >= 240 then
                        plausible.[0] <- 2uy
                        plausible.[1] <- 1uy
                        plausible.[2] <- 6uy
                        plausible.[236] <- 0x63uy
                        plausible.[237] <- 0x82uy
                        plausible.[238] <- 0x53uy
                        plausible.[239] <- 0x63uy

                    DhcpMessage.parse (ReadOnlySpan bytes) |> ignore
                    DhcpMessage.parse (ReadOnlySpan plausible) |> ignore
                    true)

            testPropertyWithConfig codecConfig "a valid message with any byte changed or cut short never throws"
            <| Prop.forAll
                (Arb.fromGen (Gen.zip3 genMessage (Gen.choose (0, 1000)) (Gen.choose (0, 255))))
                (fun (m, at, value) ->
                    let bytes = bytesOf m
                    let changed = Array.copy bytes
                    changed.[at % changed.Length] <- byte value
                    DhcpMessage.parse (ReadOnlySpan changed) |> ignore
                    DhcpMessage.parse (ReadOnlySpan(bytes, 0, at % bytes.Length)) |> ignore
                    true)
        ]

// ------------------------------------------------------------------------------------------
// The state graph
// ------------------------------------------------------------------------------------------

/// RFC 2131 Figure 5 (with §3.1.5's DECLINE, §3.2's INIT-REBOOT and RFC 5227's probe written out
/// as PROBING): every transition, and nothing else.
let private rfcEdges =
    [
        DhcpState.Init, DhcpTrigger.Start, DhcpState.Selecting // -/Send DHCPDISCOVER
        DhcpState.Selecting, DhcpTrigger.Offer, DhcpState.Requesting // Select offer/send DHCPREQUEST
        DhcpState.Selecting, DhcpTrigger.RetransmitTimeout, DhcpState.Selecting
        DhcpState.Requesting, DhcpTrigger.Ack, DhcpState.Probing // DHCPACK: check the address
        DhcpState.Requesting, DhcpTrigger.Nak, DhcpState.Init
        DhcpState.Requesting, DhcpTrigger.RetransmitTimeout, DhcpState.Requesting
        DhcpState.Requesting, DhcpTrigger.GiveUp, DhcpState.Init
        DhcpState.InitReboot, DhcpTrigger.Start, DhcpState.Rebooting // -/Send DHCPREQUEST
        DhcpState.Rebooting, DhcpTrigger.Ack, DhcpState.Probing
        DhcpState.Rebooting, DhcpTrigger.Nak, DhcpState.Init
        DhcpState.Rebooting, DhcpTrigger.RetransmitTimeout, DhcpState.Rebooting
        DhcpState.Rebooting, DhcpTrigger.GiveUp, DhcpState.Init
        DhcpState.Probing, DhcpTrigger.ProbeTimeout, DhcpState.Probing
        DhcpState.Probing, DhcpTrigger.ProbeDone, DhcpState.Bound // record lease, set timers T1, T2
        DhcpState.Probing, DhcpTrigger.Conflict, DhcpState.Init // DHCPACK (not acceptable)/Send DHCPDECLINE
        DhcpState.Bound, DhcpTrigger.Announce, DhcpState.Bound
        DhcpState.Bound, DhcpTrigger.RenewalTimeout, DhcpState.Renewing // T1 expires/Send DHCPREQUEST to leasing server
        DhcpState.Renewing, DhcpTrigger.Ack, DhcpState.Bound
        DhcpState.Renewing, DhcpTrigger.Nak, DhcpState.Init // DHCPNAK/Halt network
        DhcpState.Renewing, DhcpTrigger.RetransmitTimeout, DhcpState.Renewing
        DhcpState.Renewing, DhcpTrigger.RebindingTimeout, DhcpState.Rebinding // T2 expires/Broadcast DHCPREQUEST
        DhcpState.Rebinding, DhcpTrigger.Ack, DhcpState.Bound
        DhcpState.Rebinding, DhcpTrigger.Nak, DhcpState.Init
        DhcpState.Rebinding, DhcpTrigger.RetransmitTimeout, DhcpState.Rebinding
        DhcpState.Rebinding, DhcpTrigger.LeaseExpired, DhcpState.Init // Lease expired/Halt network
    ]

let private modelEdges () =
    [
        for s in allStates do
            for t in allTriggers do
                match DhcpModel.target s t with
                | ValueSome target -> s, t, target
                | ValueNone -> ()
    ]

let private modelTests =
    testList
        "model"
        [
            test "docs/dhcp-client-states.dot is the model's DOT export" {
                let path = Path.Combine(repoRoot.Value, "docs", "dhcp-client-states.dot")
                let current = normalise (DhcpModel.dot ())

                let committed =
                    if File.Exists path then
                        normalise (File.ReadAllText path)
                    else
                        ""

                if committed <> current then
                    File.WriteAllText(path + ".actual", current + "\n")

                Expect.equal committed current $"{path} differs from DhcpModel.dot (); see {path}.actual"
            }

            test "the model's transitions are RFC 2131 Figure 5's, as written in this test" {
                Expect.equal (Set.ofList (modelEdges ())) (Set.ofList rfcEdges) "edges"
            }

            test "the lookup tables agree with firing a Stateless machine, for every state and trigger" {
                for state in allStates do
                    for trigger in allTriggers do
                        let machine = DhcpModel.configure state

                        let permitted =
                            (DhcpModel.target state trigger).IsSome || DhcpModel.isIgnored state trigger

                        Expect.equal (machine.CanFire trigger) permitted $"{state} {trigger}"

                        if (DhcpModel.target state trigger).IsSome then
                            machine.Fire trigger
                            Expect.equal (ValueSome machine.State) (DhcpModel.target state trigger) $"{state} {trigger}"
            }
        ]

// ------------------------------------------------------------------------------------------
// The client against the model, on a virtual clock
// ------------------------------------------------------------------------------------------

let private server = ip "10.0.0.1"
let private offered = ip "10.0.0.50"
let private previous = ip "10.0.0.77"
let private leaseSeconds = 600u
let private second = 1_000_000L

type private Input =
    | Timer
    | OfferIn
    | AckIn
    | NakIn
    | Stale
    | ConflictIn

/// What the test tracks of the client by itself (never reading the client's own fields).
type private Tracker =
    {
        mutable Expected: DhcpState
        mutable Xid: uint32
        mutable SentInState: int
        mutable ProbesSent: int
        mutable AnnouncePending: bool
        mutable RequestSentAt: int64
        mutable LeaseStart: int64
        mutable Edges: Set<DhcpState * DhcpTrigger * DhcpState>
    }

let private reply (kind: DhcpMessageType) (xid: uint32) =
    { DhcpMessage.empty 2uy kind xid mac with
        YourAddress =
            if kind = DhcpMessageType.Nak then
                Ipv4Address.Any
            else
                offered
        ServerId = ValueSome server
        LeaseTime =
            if kind = DhcpMessageType.Nak then
                ValueNone
            else
                ValueSome leaseSeconds
        SubnetMask = ValueSome(ip "255.255.255.0")
        Routers = [| server |]
    }

let private sent (actions: DhcpAction list) =
    actions
    |> List.choose (fun a ->
        match a with
        | DhcpAction.Broadcast m -> Some(m, None)
        | DhcpAction.Unicast(m, to') -> Some(m, Some to')
        | _ -> None)

/// RFC 2131 §4.1: the k-th transmission waits 4·2^(k-1) s, at most 64 s, ±1 s.
let private retransmitBounds (k: int) =
    let b = int64 (min 64 (4 <<< min (k - 1) 4)) * second
    b - second, b + second

/// Runs one walk of `steps` inputs; returns the edges exercised.
let private walk (seed: int) (steps: int) : Set<DhcpState * DhcpTrigger * DhcpState> =
    let random = Random seed
    let reboot = seed % 3 = 0

    let settings =
        { Dhcp.settings mac with
            PreviousAddress = if reboot then ValueSome previous else ValueNone
        }

    let mutable now = 1_000L * second
    let mutable c = Dhcp.create settings (uint64 seed) now

    let t =
        {
            Expected = if reboot then DhcpState.InitReboot else DhcpState.Init
            Xid = 0u
            SentInState = 0
            ProbesSent = 0
            AnnouncePending = false
            RequestSentAt = 0L
            LeaseStart = 0L
            Edges = Set.empty
        }

    Expect.isLessThanOrEqual
        (Dhcp.nextDeadline c - now)
        settings.InitialDelayMax
        "the first message within the initial delay"

    for step in 1..steps do
        let state = t.Expected

        let input =
            let r = random.NextDouble()

            match state with
            | DhcpState.Selecting ->
                if r < 0.6 then OfferIn
                elif r < 0.9 then Timer
                else Stale
            | DhcpState.Requesting
            | DhcpState.Rebooting ->
                if r < 0.5 then AckIn
                elif r < 0.6 then NakIn
                elif r < 0.95 then Timer
                else Stale
            | DhcpState.Probing ->
                if r < 0.15 then ConflictIn
                elif r < 0.95 then Timer
                else AckIn
            | DhcpState.Renewing
            | DhcpState.Rebinding ->
                if r < 0.12 then AckIn
                elif r < 0.17 then NakIn
                elif r < 0.95 then Timer
                else Stale
            | _ ->
                if r < 0.9 then Timer
                elif r < 0.95 then ConflictIn
                else OfferIn

        // The test's own classification of the input.
        let trigger, result =
            match input with
            | Timer ->
                now <- Dhcp.nextDeadline c

                let trigger =
                    match state with
                    | DhcpState.Init
                    | DhcpState.InitReboot -> Some DhcpTrigger.Start
                    | DhcpState.Selecting -> Some DhcpTrigger.RetransmitTimeout
                    | DhcpState.Requesting
                    | DhcpState.Rebooting ->
                        Some(
                            if t.SentInState >= settings.MaxRequests then
                                DhcpTrigger.GiveUp
                            else
                                DhcpTrigger.RetransmitTimeout
                        )
                    | DhcpState.Probing ->
                        Some(
                            if t.ProbesSent >= 3 then
                                DhcpTrigger.ProbeDone
                            else
                                DhcpTrigger.ProbeTimeout
                        )
                    | DhcpState.Bound ->
                        Some(
                            if t.AnnouncePending then
                                DhcpTrigger.Announce
                            else
                                DhcpTrigger.RenewalTimeout
                        )
                    | DhcpState.Renewing ->
                        // T2 = 0.875 × lease from the lease's start (RFC 2131 §4.4.5).
                        Some(
                            if now >= t.LeaseStart + int64 leaseSeconds * second * 7L / 8L then
                                DhcpTrigger.RebindingTimeout
                            else
                                DhcpTrigger.RetransmitTimeout
                        )
                    | DhcpState.Rebinding ->
                        Some(
                            if now >= t.LeaseStart + int64 leaseSeconds * second then
                                DhcpTrigger.LeaseExpired
                            else
                                DhcpTrigger.RetransmitTimeout
                        )

                trigger, Dhcp.tick now c
            | OfferIn ->
                now <- now + 1_000L
                Some DhcpTrigger.Offer, Dhcp.receive now (reply DhcpMessageType.Offer t.Xid) c
            | AckIn ->
                now <- now + 1_000L
                Some DhcpTrigger.Ack, Dhcp.receive now (reply DhcpMessageType.Ack t.Xid) c
            | NakIn ->
                now <- now + 1_000L
                Some DhcpTrigger.Nak, Dhcp.receive now (reply DhcpMessageType.Nak t.Xid) c
            | Stale ->
                now <- now + 1_000L
                None, Dhcp.receive now (reply DhcpMessageType.Ack (t.Xid + 1u)) c
            | ConflictIn ->
                now <- now + 1_000L

                (if state = DhcpState.Probing then
                     Some DhcpTrigger.Conflict
                 else
                     None),
                Dhcp.conflict now c

        let next, actions = result
        c <- next

        let expected =
            match trigger with
            | None -> state
            | Some trigger ->
                match DhcpModel.target state trigger with
                | ValueSome target ->
                    t.Edges <- t.Edges.Add(state, trigger, target)
                    target
                | ValueNone ->
                    Expect.isTrue (DhcpModel.isIgnored state trigger) $"step {step}: the model has {trigger} in {state}"
                    state

        Expect.equal c.State expected $"seed {seed} step {step}: {input} ({trigger}) in {state}"

        // What the test checks of the actions, by the RFCs.
        let messages = sent actions

        for m, unicast in messages do
            t.Xid <- m.Xid

            match m.MessageType with
            | DhcpMessageType.Request ->
                t.RequestSentAt <- now

                match expected with
                | DhcpState.Requesting ->
                    Expect.equal m.RequestedAddress (ValueSome offered) "SELECTING's REQUEST names the offer"
                    Expect.equal m.ServerId (ValueSome server) "and its server"
                    Expect.equal m.ClientAddress Ipv4Address.Any "without ciaddr"
                | DhcpState.Rebooting ->
                    Expect.equal m.RequestedAddress (ValueSome previous) "INIT-REBOOT asks for the previous address"
                    Expect.equal m.ServerId ValueNone "without a server id"
                | DhcpState.Renewing ->
                    Expect.equal unicast (Some server) "RENEWING unicasts to the server"
                    Expect.equal m.ClientAddress offered "with ciaddr"
                    Expect.equal m.RequestedAddress ValueNone "without requested address"
                | DhcpState.Rebinding ->
                    Expect.equal unicast None "REBINDING broadcasts"
                    Expect.equal m.ClientAddress offered "with ciaddr"
                | s -> failtestf "a REQUEST in %A" s
            | DhcpMessageType.Decline ->
                Expect.equal m.RequestedAddress (ValueSome offered) "DECLINE names the address"
                Expect.equal m.ServerId (ValueSome server) "and the server"

                Expect.equal
                    (Dhcp.nextDeadline c - now)
                    (10L * second)
                    "then 10 s before INIT sends again (RFC 2131 §3.1.5)"
            | DhcpMessageType.Discover -> Expect.equal expected DhcpState.Selecting "DISCOVER in SELECTING"
            | other -> failtestf "the client sent %A" other

        // Retransmission timing (RFC 2131 §4.1, §4.4.5).
        if expected <> state then
            t.SentInState <- 0

        t.SentInState <- t.SentInState + messages.Length

        match expected with
        | DhcpState.Selecting
        | DhcpState.Requesting
        | DhcpState.Rebooting when messages.Length > 0 ->
            let low, high = retransmitBounds t.SentInState
            let wait = Dhcp.nextDeadline c - now

            Expect.isTrue
                (wait >= low && wait <= high)
                $"retransmission {t.SentInState} waits {wait} µs, not in [{low}, {high}]"
        | DhcpState.Renewing when messages.Length > 0 ->
            let t2 = t.LeaseStart + int64 leaseSeconds * second * 7L / 8L

            Expect.equal
                (Dhcp.nextDeadline c)
                (min t2 (now + max (60L * second) ((t2 - now) / 2L)))
                "RENEWING waits half the time to T2, at least 60 s"
        | DhcpState.Rebinding when messages.Length > 0 ->
            let expiry = t.LeaseStart + int64 leaseSeconds * second

            Expect.equal
                (Dhcp.nextDeadline c)
                (min expiry (now + max (60L * second) ((expiry - now) / 2L)))
                "REBINDING waits half the time to expiry, at least 60 s"
        | _ -> ()

        // Probes (RFC 5227 §2.1.1) and binding.
        let probes =
            actions |> List.filter (fun a -> a = DhcpAction.Probe offered) |> List.length

        if expected = DhcpState.Probing && state <> DhcpState.Probing then
            t.ProbesSent <- 0
            Expect.isLessThanOrEqual (Dhcp.nextDeadline c - now) Dhcp.ProbeWait "the first probe within PROBE_WAIT"

        if probes > 0 then
            t.ProbesSent <- t.ProbesSent + probes
            let wait = Dhcp.nextDeadline c - now

            if t.ProbesSent < 3 then
                Expect.isTrue (wait >= second && wait <= 2L * second) "probes PROBE_MIN..PROBE_MAX apart"
            else
                Expect.equal wait (2L * second) "ANNOUNCE_WAIT after the last probe"

        for a in actions do
            match a with
            | DhcpAction.Bind lease ->
                // The lease counts from the REQUEST (RFC 2131 §4.4.1); T1 = 0.5, T2 = 0.875 (§4.4.5).
                t.LeaseStart <- t.RequestSentAt
                let l = int64 leaseSeconds * second
                Expect.equal lease.Address offered "the offered address"
                Expect.equal lease.PrefixLength 24 "from the mask"
                Expect.equal lease.RenewAt (t.RequestSentAt + l / 2L) "T1 = 0.5 lease"
                Expect.equal lease.RebindAt (t.RequestSentAt + l * 7L / 8L) "T2 = 0.875 lease"
                Expect.equal lease.ExpiresAt (t.RequestSentAt + l) "expiry"

                if state = DhcpState.Probing then
                    Expect.contains actions (DhcpAction.Announce offered) "an announcement at once (RFC 5227 §2.3)"
                    t.AnnouncePending <- true
            | DhcpAction.Announce _ when state = DhcpState.Bound -> t.AnnouncePending <- false
            | DhcpAction.Unbind ->
                Expect.isTrue
                    (state = DhcpState.Renewing || state = DhcpState.Rebinding)
                    "the address is dropped only when it was held"
            | _ -> ()

        t.Expected <- expected

    t.Edges

let private clientTests =
    testList
        "client"
        [
            test
                "random walks against a scripted server follow the model, with RFC 2131 and RFC 5227 timings, and exercise every edge" {
                let mutable edges = Set.empty

                for seed in 1..120 do
                    edges <- Set.union edges (walk seed 300)

                let missing = Set.difference (Set.ofList (modelEdges ())) edges
                Expect.isEmpty missing "every edge of the model exercised"
            }

            test "an ACK in SELECTING, an OFFER with another xid and a conflict outside PROBING change nothing" {
                let now = 0L

                let c =
                    Dhcp.create
                        { Dhcp.settings mac with
                            InitialDelayMax = 0L
                        }
                        7UL
                        now

                let c, actions = Dhcp.tick now c
                let xid = (fst (List.head (sent actions))).Xid
                Expect.equal c.State DhcpState.Selecting "selecting"
                let c1, _ = Dhcp.receive 1L (reply DhcpMessageType.Ack xid) c
                Expect.equal c1 c "an ACK while selecting"
                let c2, _ = Dhcp.receive 1L (reply DhcpMessageType.Offer (xid ^^^ 1u)) c
                Expect.equal c2 c "another xid"
                let c3, _ = Dhcp.conflict 1L c
                Expect.equal c3 c "a conflict"
            }

            test "T1 and T2 from options 58 and 59 when T1 < T2 < lease, else the defaults" {
                let ack t1 t2 =
                    { reply DhcpMessageType.Ack 1u with
                        LeaseTime = ValueSome 120u
                        RenewalTime = t1
                        RebindingTime = t2
                    }

                let lease m = (Dhcp.leaseOf m 0L).Value
                let given = lease (ack (ValueSome 10u) (ValueSome 20u))

                Expect.equal
                    (given.RenewAt, given.RebindAt, given.ExpiresAt)
                    (10L * second, 20L * second, 120L * second)
                    "given"

                let wrong = lease (ack (ValueSome 30u) (ValueSome 20u))
                Expect.equal (wrong.RenewAt, wrong.RebindAt) (60L * second, 105L * second) "0.5 and 0.875 of 120 s"
            }
        ]

// ------------------------------------------------------------------------------------------
// Through the interface: frames in and out
// ------------------------------------------------------------------------------------------

/// Records what the interface asks for.
type private Recorder() =
    member val Frames = ResizeArray<MacAddress * uint16 * byte[]>()
    member val Events = ResizeArray<LinkEvent>()
    member val Counts = Collections.Generic.Dictionary<string, int>()

    member this.Take() =
        let all = List.ofSeq this.Frames
        this.Frames.Clear()
        all

    interface ILinkSink with
        member this.Transmit(destination, etherType, payload: ReadOnlySpan<byte>) =
            this.Frames.Add((destination, etherType, payload.ToArray()))

        member this.Count counter =
            this.Counts.[counter] <-
                (match this.Counts.TryGetValue counter with
                 | true, n -> n + 1
                 | _ -> 1)

        member this.Event e = this.Events.Add e

let private frame (destination: MacAddress) (source: MacAddress) (etherType: uint16) (payload: byte[]) =
    let bytes = Array.zeroCreate (14 + payload.Length)
    Ethernet.write destination source etherType (Span bytes) |> ignore
    payload.CopyTo(bytes, 14)
    bytes

let private serverMac = MacAddress.Parse "02:a7:00:00:00:01"

/// A server's reply as IPv4/UDP 67 → 68 (RFC 2131 §4.1: to yiaddr at chaddr), built by hand.
let private serverFrame (m: DhcpMessage) =
    let body = bytesOf m
    let packet = Array.zeroCreate (28 + body.Length)

    let udp =
        Udp.buildV4 (Span(packet, 20, packet.Length - 20)) server m.YourAddress 67us 68us (ReadOnlySpan body)

    Ipv4.write (Ipv4.header server m.YourAddress IpProtocol.Udp) ReadOnlySpan.Empty udp (Span packet)
    |> ignore

    frame mac serverMac EtherType.Ipv4 packet

/// The DHCP message in a frame the client sent: IPv4 from `source`, UDP 68 → 67, read by offsets.
let private clientMessage (source: Ipv4Address) (destination: Ipv4Address) (etherType: uint16, payload: byte[]) =
    Expect.equal etherType EtherType.Ipv4 "IPv4"
    Expect.equal (Ipv4Address.Read(ReadOnlySpan(payload, 12, 4))) source "IPv4 source"
    Expect.equal (Ipv4Address.Read(ReadOnlySpan(payload, 16, 4))) destination "IPv4 destination"
    Expect.equal payload.[9] 17uy "UDP"
    Expect.equal (Buffers.Binary.BinaryPrimitives.ReadUInt16BigEndian(ReadOnlySpan(payload, 20, 2))) 68us "from port 68"
    Expect.equal (Buffers.Binary.BinaryPrimitives.ReadUInt16BigEndian(ReadOnlySpan(payload, 22, 2))) 67us "to port 67"
    Expect.isTrue (Checksum.verify 0UL (ReadOnlySpan(payload, 0, 20))) "the IPv4 header checksum"

    match DhcpMessage.parse (ReadOnlySpan(payload, 28, payload.Length - 28)) with
    | Ok m -> m
    | Error e -> failtestf "%A" e

/// A router advertisement from fe80::1 with one RDNSS option (RFC 8106 §5.1) for `servers`
/// with `lifetime`, written byte by byte (RFC 4861 §4.2), its checksum computed here.
let private rdnssAdvertisement (lifetime: uint32) (servers: Ipv6Address list) =
    let option = 8 + 16 * servers.Length
    let icmp = Array.zeroCreate (16 + option)
    icmp.[0] <- 134uy
    icmp.[4] <- 64uy
    icmp.[16] <- 25uy
    icmp.[17] <- byte (option / 8)
    Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(Span(icmp, 20, 4), lifetime)
    servers |> List.iteri (fun i a -> a.Write(Span(icmp, 24 + 16 * i, 16)))
    let source = Ipv6Address.Parse "fe80::1"

    let sum =
        Checksum.sum (Checksum.pseudoHeaderV6 source Ndp.AllNodes 58uy icmp.Length) (ReadOnlySpan icmp)

    Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(Span(icmp, 2, 2), Checksum.finish sum)

    let header =
        { Ipv6.header source Ndp.AllNodes IpProtocol.Icmpv6 with
            PayloadLength = icmp.Length
            HopLimit = 255uy
        }

    let packet = Array.zeroCreate (40 + icmp.Length)
    Ipv6.write header (Span packet) |> ignore
    icmp.CopyTo(packet, 40)
    frame (MacAddress.OfIpv6Multicast Ndp.AllNodes) serverMac EtherType.Ipv6 packet

let private interfaceTests =
    testList
        "interface"
        [
            test "DISCOVER, OFFER, REQUEST, ACK, probes, a conflicting ARP reply and the DECLINE, as frames" {
                let settings =
                    InterfaceSettings(Mac = mac, Dhcp = true, DhcpInitialDelayMax = 0L, DadTransmits = 0, Seed = 3UL)

                let sink = Recorder()
                let mutable s = Interface.create settings 0L
                let mutable now = Interface.nextDeadline s
                Interface.handleTimer now &s sink
                let broadcast = Ipv4Address UInt32.MaxValue

                let discover =
                    match sink.Take() with
                    | [ to', etherType, payload ] ->
                        Expect.equal to' MacAddress.Broadcast "to ff:ff:ff:ff:ff:ff"
                        clientMessage Ipv4Address.Any broadcast (etherType, payload)
                    | frames -> failtestf "one DISCOVER, not %A" frames

                Expect.equal discover.MessageType DhcpMessageType.Discover "DISCOVER"
                Expect.equal discover.ClientMac mac "chaddr"

                Expect.equal
                    discover.ClientId
                    (Array.append
                        [| 1uy |]
                        (let b = Array.zeroCreate 6 in
                         mac.Write(Span b)
                         b))
                    "client id: type 1 and the MAC"

                // The OFFER goes to the offered address (not ours yet) at our MAC.
                now <- now + 1000L

                let offer =
                    { reply DhcpMessageType.Offer discover.Xid with
                        Xid = discover.Xid
                    }

                let v = Interface.receive now (ReadOnlySpan(serverFrame offer)) &s sink
                Expect.isFalse v.Deliver "taken by the client"

                let request =
                    match sink.Take() with
                    | [ _, etherType, payload ] -> clientMessage Ipv4Address.Any broadcast (etherType, payload)
                    | frames -> failtestf "one REQUEST, not %A" frames

                Expect.equal request.MessageType DhcpMessageType.Request "REQUEST"
                Expect.equal request.RequestedAddress (ValueSome offered) "for the offer"
                Expect.equal request.ServerId (ValueSome server) "to its server"

                now <- now + 1000L

                Interface.receive now (ReadOnlySpan(serverFrame (reply DhcpMessageType.Ack request.Xid))) &s sink
                |> ignore

                Expect.isEmpty (sink.Take()) "nothing yet: PROBE_WAIT"

                // The first probe: ARP, sender 0.0.0.0, target the address (RFC 5227 §2.1.1).
                now <- Interface.nextDeadline s
                Interface.handleTimer now &s sink

                match sink.Take() with
                | [ to', etherType, payload ] ->
                    Expect.equal (to', etherType) (MacAddress.Broadcast, EtherType.Arp) "a broadcast ARP"

                    match Arp.parse (ReadOnlySpan payload) with
                    | Ok arp ->
                        Expect.equal arp.SenderIp Ipv4Address.Any "sender 0.0.0.0"
                        Expect.equal arp.TargetIp offered "target the offered address"
                        Expect.equal arp.SenderMac mac "our MAC"
                    | Error e -> failtestf "%A" e
                | frames -> failtestf "one probe, not %A" frames

                // Another host answers for it: DECLINE, broadcast.
                let answer =
                    {
                        Operation = Arp.Operation.Reply
                        SenderMac = MacAddress.Parse "02:a7:00:00:00:99"
                        SenderIp = offered
                        TargetMac = mac
                        TargetIp = Ipv4Address.Any
                    }

                let body = Array.zeroCreate 28
                Arp.write answer (Span body) |> ignore

                Interface.receive (now + 1000L) (ReadOnlySpan(frame mac answer.SenderMac EtherType.Arp body)) &s sink
                |> ignore

                let decline =
                    match sink.Take() with
                    | [ _, etherType, payload ] -> clientMessage Ipv4Address.Any broadcast (etherType, payload)
                    | frames -> failtestf "one DECLINE, not %A" frames

                Expect.equal decline.MessageType DhcpMessageType.Decline "DECLINE"
                Expect.equal decline.RequestedAddress (ValueSome offered) "the address"
                Expect.equal s.Config.Address4 ValueNone "no address"
            }

            test "a bound lease: the address answers ARP, packets to it go up, classless routes choose the router" {
                let settings =
                    InterfaceSettings(Mac = mac, Dhcp = true, DhcpInitialDelayMax = 0L, DadTransmits = 0, Seed = 5UL)

                let sink = Recorder()
                let mutable s = Interface.create settings 0L
                let mutable now = 0L

                let run () =
                    now <- max now (Interface.nextDeadline s)
                    Interface.handleTimer now &s sink

                run ()

                let xid () =
                    let _, _, p = sink.Frames.[sink.Frames.Count - 1]
                    DhcpMessage.parse (ReadOnlySpan(p, 28, p.Length - 28)) |> Result.map _.Xid

                let offer = reply DhcpMessageType.Offer (Result.defaultValue 0u (xid ()))
                Interface.receive now (ReadOnlySpan(serverFrame offer)) &s sink |> ignore

                let ack =
                    { reply DhcpMessageType.Ack (Result.defaultValue 0u (xid ())) with
                        // RFC 3442: 192.0.2.0/24 via 10.0.0.9; everything else via 10.0.0.1 (option 3 ignored).
                        ClasslessRoutes =
                            [|
                                {
                                    Destination = ip "192.0.2.0"
                                    PrefixLength = 24
                                    Router = ip "10.0.0.9"
                                }
                                {
                                    Destination = Ipv4Address.Any
                                    PrefixLength = 0
                                    Router = ip "10.0.0.1"
                                }
                            |]
                        Routers = [| ip "10.0.0.254" |]
                    }

                Interface.receive now (ReadOnlySpan(serverFrame ack)) &s sink |> ignore

                for _ in 1..4 do
                    run ()

                Expect.equal s.Config.Address4 (ValueSome offered) "bound"

                Expect.exists
                    sink.Events
                    (fun e -> e.Kind = LinkEventKind.LeaseChanged && e.Address4 = offered)
                    "LeaseChanged"

                sink.Take() |> ignore

                // An ARP request for the address is answered.
                let request = Arp.request serverMac server offered
                let body = Array.zeroCreate 28
                Arp.write request (Span body) |> ignore

                Interface.receive now (ReadOnlySpan(frame MacAddress.Broadcast serverMac EtherType.Arp body)) &s sink
                |> ignore

                Expect.exists
                    (sink.Take())
                    (fun (to', etherType, p) ->
                        to' = serverMac
                        && etherType = EtherType.Arp
                        && Ipv4Address.Read(ReadOnlySpan(p, 14, 4)) = offered)
                    "an ARP reply"

                // An IPv4 packet to the address goes up.
                let packet = Array.zeroCreate 28

                Ipv4.write (Ipv4.header server offered IpProtocol.Udp) ReadOnlySpan.Empty 8 (Span packet)
                |> ignore

                let v =
                    Interface.receive now (ReadOnlySpan(frame mac serverMac EtherType.Ipv4 packet)) &s sink

                Expect.isTrue v.Deliver "delivered"

                // 192.0.2.7 goes by 10.0.0.9 (resolved first: an ARP request for it); 198.51.100.1
                // by 10.0.0.1, whose MAC the server's ARP request taught, not by option 3's router.
                let send (destination: string) =
                    let packet = Array.zeroCreate 20

                    Ipv4.write (Ipv4.header offered (ip destination) IpProtocol.Udp) ReadOnlySpan.Empty 0 (Span packet)
                    |> ignore

                    Interface.queue now packet &s sink
                    sink.Take() |> List.last

                match send "192.0.2.7" with
                | _, etherType, p when etherType = EtherType.Arp ->
                    Expect.equal (Ipv4Address.Read(ReadOnlySpan(p, 24, 4))) (ip "10.0.0.9") "the /24 route's router"
                | other -> failtestf "an ARP request, not %A" other

                match send "198.51.100.1" with
                | to', etherType, _ -> Expect.equal (to', etherType) (serverMac, EtherType.Ipv4) "to 10.0.0.1's MAC"
            }

            test "RDNSS (RFC 8106): servers kept in the router's order for their lifetime, removed by a lifetime of 0" {
                let settings =
                    InterfaceSettings(
                        Mac = mac,
                        HasAddress6 = true,
                        Address6 = Ipv6Address.Parse "fda7::2",
                        DadTransmits = 0,
                        Seed = 9UL
                    )

                let sink = Recorder()
                let mutable s = Interface.create settings 0L
                let a = Ipv6Address.Parse "fda7::53"
                let b = Ipv6Address.Parse "fda7::54"

                Interface.receive 0L (ReadOnlySpan(rdnssAdvertisement 600u [ a; b ])) &s sink
                |> ignore

                Expect.equal (Interface.dnsServers6 s) [| a; b |] "both, in order"
                Expect.exists sink.Events (fun e -> e.Kind = LinkEventKind.DnsServersChanged) "DnsServersChanged"
                Interface.handleTimer 0L &s sink // the start
                Expect.equal (Interface.nextDeadline s) (600L * second) "a timer at the lifetime's end"
                Interface.handleTimer (600L * second - 1L) &s sink
                Expect.equal (Interface.dnsServers6 s).Length 2 "kept until then"
                Interface.handleTimer (600L * second) &s sink
                Expect.isEmpty (Interface.dnsServers6 s) "gone after 600 s"

                Interface.receive 1L (ReadOnlySpan(rdnssAdvertisement UInt32.MaxValue [ a ])) &s sink
                |> ignore

                Expect.equal (Interface.dnsServers6 s) [| a |] "an infinite lifetime"

                Interface.receive 2L (ReadOnlySpan(rdnssAdvertisement 0u [ a ])) &s sink
                |> ignore

                Expect.isEmpty (Interface.dnsServers6 s) "lifetime 0 removes it"
            }
        ]

[<Tests>]
let tests =
    testList "DHCP client" [ codecTests; modelTests; clientTests; interfaceTests ]
