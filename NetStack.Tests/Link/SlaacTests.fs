/// Stateless address autoconfiguration (RFC 4862 §5.5) in the pure core: fixed scenarios with
/// time as input, and random advertisement sequences checked against the lifetime rules.
module NetStack.Tests.SlaacTests

open System
open System.Buffers.Binary
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Link
open NetStack.Core.Stack
open NetStack.Core.Wire
open NetStack.Tests.TestUtil

let private second = 1_000_000L
let private secret = Array.init 32 byte
let private mac = MacAddress 0x0200_00A6_0001UL
let private configured = Ipv6Address(0xFDA6_0001_0000_0000UL, 2UL)
let private config = Slaac.config secret mac (ValueSome configured)

let private prefixOf (n: int) =
    Ipv6Address(0xFDA6_0100_0000_0000UL + uint64 n * 0x1_0000UL, 0UL)

let private info (prefix: Ipv6Address) (valid: uint32) (preferred: uint32) =
    {
        PrefixLength = 64
        OnLink = true
        Autonomous = true
        ValidLifetime = valid
        PreferredLifetime = preferred
        Prefix = prefix
    }

/// A state whose solicitations are over, at time 0.
let private fresh () =
    Slaac.create
        { config with
            MaxRouterSolicitations = 0
        }
        0L

/// Runs tick at `now` until nothing more is due at it.
let private settle (now: int64) (state: SlaacState) =
    let mutable s = state
    let events = ResizeArray()

    while Slaac.nextDeadline s <= now do
        let next, e = Slaac.tick now s
        s <- next
        events.AddRange e

    s, List.ofSeq events

/// A prefix received at `now`, DAD run to the end.
let private assign (now: int64) (p: PrefixInformation) (state: SlaacState) =
    let s, _ = Slaac.onPrefix now p state
    let s, _ = settle now s
    settle (now + config.RetransTimer) s |> fst

let private only (state: SlaacState) =
    Expect.hasLength state.Addresses 1 "one address"
    state.Addresses.Head

let private remaining (now: int64) (a: SlaacAddress) =
    if a.ValidUntil = Slaac.Never then
        Int64.MaxValue
    else
        a.ValidUntil - now

/// A router advertisement carrying `prefixes`, as bytes after the IPv6 header.
let private advertisement (prefixes: PrefixInformation list) =
    let message =
        Array.zeroCreate<byte>(Ndp.RouterAdvertisementLength + 32 * prefixes.Length)

    message.[0] <- Ndp.MessageType.RouterAdvertisement

    prefixes
    |> List.iteri (fun i p ->
        let at = Ndp.RouterAdvertisementLength + 32 * i
        message.[at] <- Ndp.OptionType.PrefixInformation
        message.[at + 1] <- 4uy
        message.[at + 2] <- byte p.PrefixLength
        message.[at + 3] <- (if p.OnLink then 0x80uy else 0uy) ||| (if p.Autonomous then 0x40uy else 0uy)
        BinaryPrimitives.WriteUInt32BigEndian(message.AsSpan(at + 4), p.ValidLifetime)
        BinaryPrimitives.WriteUInt32BigEndian(message.AsSpan(at + 8), p.PreferredLifetime)
        p.Prefix.Write(message.AsSpan(at + 16)))

    message

/// One input of a random autoconfiguration run.
type SlaacStep =
    | Advertise of prefix: int * valid: uint32 * preferred: uint32 * autonomous: bool * length: int
    | Advance of seconds: int
    | Conflict of index: int

let private genLifetime =
    Gen.frequency
        [
            2, Gen.constant 0u
            3, Gen.choose (1, 100) |> Gen.map uint32
            2, Gen.elements [ 7199u; 7200u; 7201u; 86400u ]
            2, Gen.constant Slaac.Infinite
            2, Gen.choose (0, Int32.MaxValue) |> Gen.map uint32
        ]

let private genStep =
    Gen.frequency
        [
            5,
            gen {
                let! prefix = Gen.choose (0, 40)
                let! valid = genLifetime
                let! preferred = genLifetime
                let! autonomous = Gen.frequency [ 9, Gen.constant true; 1, Gen.constant false ]
                let! length = Gen.frequency [ 9, Gen.constant 64; 1, Gen.elements [ 48; 80; 128 ] ]
                return Advertise(prefix, valid, preferred, autonomous, length)
            }
            3, Gen.choose (0, 9000) |> Gen.map Advance
            1, Gen.choose (0, 20) |> Gen.map Conflict
        ]

let private arbSteps = Gen.listOf genStep |> Arb.fromGen

/// Runs `steps`, checking after each one the rules every state must keep.
let private run (steps: SlaacStep list) =
    let config =
        { config with
            MaxAddresses = 8
            DadTransmits = 2
        }

    let mutable state = Slaac.create config 0L
    let mutable now = 0L

    for step in steps do
        let before = state

        match step with
        | Advertise(n, valid, preferred, autonomous, length) ->
            let p =
                { info (prefixOf n) valid preferred with
                    Autonomous = autonomous
                    PrefixLength = length
                }

            let next, _ = Slaac.onPrefix now p state
            state <- next

            match
                before.Addresses |> List.tryFind (fun a -> a.Prefix = prefixOf n),
                next.Addresses |> List.tryFind (fun a -> a.Prefix = prefixOf n)
            with
            | Some old, Some updated ->
                let received =
                    if valid = Slaac.Infinite then
                        Slaac.Never
                    else
                        now + int64 valid * second

                // Never longer than the advertisements allow.
                if updated.ValidUntil > max old.ValidUntil received then
                    failwithf "valid lifetime extended past the advertisement: %A -> %A" old updated
                // §5.5.3 e: never cut below two hours, nor below what was left when that was less.
                let floor = min old.ValidUntil (now + Slaac.TwoHoursSeconds * second)

                if updated.ValidUntil < floor then
                    failwithf "valid lifetime cut below the two-hour rule: %A -> %A at %d" old updated now
            | None, Some formed ->
                if valid = 0u || not autonomous || length <> 64 || preferred > valid then
                    failwithf "an address from an option that forms none: %A" formed
            | _ -> ()
        | Advance seconds ->
            now <- now + int64 seconds * second
            let next, _ = settle now state
            state <- next

            for a in state.Addresses do
                if a.ValidUntil <= now then
                    failwithf "an expired address is kept: %A at %d" a now

                if a.State = SlaacAddressState.Preferred && a.PreferredUntil <= now then
                    failwithf "a preferred address past its preferred lifetime: %A at %d" a now
        | Conflict i ->
            if not state.Addresses.IsEmpty then
                let a = state.Addresses.[i % state.Addresses.Length]
                let next, _ = Slaac.duplicate now a.Address state
                state <- next

        let addresses = state.Addresses |> List.map (fun a -> a.Address)
        let prefixes = state.Addresses |> List.map (fun a -> a.Prefix)

        if List.distinct addresses <> addresses || List.distinct prefixes <> prefixes then
            failwithf "a duplicate address or prefix: %A" state.Addresses

        if state.Addresses.Length > config.MaxAddresses then
            failwithf "%d addresses, more than the bound" state.Addresses.Length

        for a in state.Addresses do
            if a.PreferredUntil > a.ValidUntil then
                failwithf "preferred past valid: %A" a

            if a.Address = configured || Slaac.prefix64 a.Address <> a.Prefix then
                failwithf "a bad address: %A" a

    true

[<Tests>]
let tests =
    testList
        "Slaac"
        [
            test "a /64 prefix with the A flag forms a tentative address that DAD makes preferred" {
                let p = info (prefixOf 1) 600u 300u
                let s, events = Slaac.onPrefix 0L p (fresh ())
                let a = only s
                Expect.equal a.State SlaacAddressState.Tentative "tentative first"
                Expect.equal events [ Formed a.Address ] "formed"
                Expect.equal a.Prefix (prefixOf 1) "the prefix"
                Expect.equal (Slaac.prefix64 a.Address) (prefixOf 1) "inside the prefix"

                Expect.equal a.Address.Low (Slaac.interfaceId secret mac (prefixOf 1) 0) "the RFC 7217 identifier"

                Expect.isEmpty (Slaac.assigned s) "not ours while tentative"
                let s, events = Slaac.tick 0L s
                Expect.equal events [ Probe a.Address ] "one DAD probe"
                let s, events = Slaac.tick (config.RetransTimer - 1L) s
                Expect.isEmpty events "nothing before RetransTimer"
                let s, events = Slaac.tick config.RetransTimer s
                Expect.equal events [ Assigned a.Address ] "assigned after RetransTimer"
                Expect.equal (only s).State SlaacAddressState.Preferred "preferred"
                Expect.equal (Slaac.assigned s) [| a.Address |] "ours"
            }

            test "the same secret, MAC and prefix give the same address; another secret or prefix another" {
                let a = Slaac.interfaceId secret mac (prefixOf 1) 0
                Expect.equal (Slaac.interfaceId (Array.copy secret) mac (prefixOf 1) 0) a "stable"
                Expect.notEqual (Slaac.interfaceId (Array.create 32 7uy) mac (prefixOf 1) 0) a "secret"
                Expect.notEqual (Slaac.interfaceId secret mac (prefixOf 2) 0) a "prefix"
                Expect.notEqual (Slaac.interfaceId secret mac (prefixOf 1) 1) a "DAD counter"
            }

            test "options that form nothing: no A flag, link-local, preferred above valid, not /64, zero lifetime" {
                let cases =
                    [
                        { info (prefixOf 1) 600u 300u with
                            Autonomous = false
                        },
                        "not-autonomous"
                        info (Ipv6Address(0xFE80_0000_0000_0000UL, 0UL)) 600u 300u, "link-local"
                        info (prefixOf 1) 300u 600u, "preferred-above-valid"
                        { info (prefixOf 1) 600u 300u with
                            PrefixLength = 48
                        },
                        "prefix-length"
                        info (prefixOf 1) 0u 0u, "zero-lifetime"
                    ]

                for p, reason in cases do
                    let s, events = Slaac.onPrefix 0L p (fresh ())
                    Expect.isEmpty s.Addresses reason
                    Expect.equal events [ Ignored reason ] reason
            }

            test "deprecated after the preferred lifetime, removed after the valid lifetime" {
                let s = assign 0L (info (prefixOf 1) 20u 10u) (fresh ())
                let a = only s
                let s, events = settle (10L * second) s
                Expect.equal events [ Deprecated a.Address ] "deprecated at 10 s"
                Expect.equal (only s).State SlaacAddressState.Deprecated "deprecated"
                Expect.equal (Slaac.assigned s) [| a.Address |] "still accepted"
                let s, events = settle (20L * second) s
                Expect.equal events [ Removed a.Address ] "removed at 20 s"
                Expect.isEmpty s.Addresses "gone"
                Expect.equal (Slaac.nextDeadline s) Slaac.Never "nothing left to do"
            }

            test "the two-hour rule: an advertisement cannot cut a long valid lifetime below two hours" {
                let s = assign 0L (info (prefixOf 1) 86400u 86400u) (fresh ())
                let now = 100L * second
                let s, events = Slaac.onPrefix now (info (prefixOf 1) 0u 0u) s
                Expect.equal (remaining now (only s)) (7200L * second) "two hours left"
                Expect.contains events (TwoHourRule (only s).Address) "counted"
                // With two hours or less left, a shorter lifetime is ignored...
                let s, _ = Slaac.onPrefix now (info (prefixOf 1) 60u 0u) s
                Expect.equal (remaining now (only s)) (7200L * second) "still two hours"
                // ...a longer one (or more than two hours) is taken, and the preferred lifetime is reset.
                let s, _ = Slaac.onPrefix now (info (prefixOf 1) 7300u 7300u) s
                Expect.equal (remaining now (only s)) (7300L * second) "extended"
                let s, _ = Slaac.onPrefix now (info (prefixOf 1) Slaac.Infinite Slaac.Infinite) s
                Expect.equal (only s).ValidUntil Slaac.Never "infinite"
                Expect.equal (only s).PreferredUntil Slaac.Never "infinite"
            }

            test "with a short lifetime left, an advertisement of zero is ignored and the address expires on its own" {
                let s = assign 0L (info (prefixOf 1) 30u 30u) (fresh ())
                let s, events = Slaac.onPrefix (5L * second) (info (prefixOf 1) 0u 0u) s
                Expect.equal (only s).PreferredUntil (5L * second) "preferred lifetime reset to 0"
                Expect.contains events (Deprecated (only s).Address) "deprecated at once"
                Expect.equal (only s).State SlaacAddressState.Deprecated "deprecated"
                Expect.equal (only s).ValidUntil (30L * second) "valid lifetime unchanged"
                let s, _ = settle (30L * second) s
                Expect.isEmpty s.Addresses "removed at 30 s"
            }

            test "a deprecated address becomes preferred again when its preferred lifetime is renewed" {
                let s = assign 0L (info (prefixOf 1) 600u 10u) (fresh ())
                let s, _ = settle (10L * second) s
                Expect.equal (only s).State SlaacAddressState.Deprecated "deprecated"
                let s, _ = Slaac.onPrefix (11L * second) (info (prefixOf 1) 600u 100u) s
                Expect.equal (only s).State SlaacAddressState.Preferred "preferred again"
            }

            test "DAD failure: a new identifier with the next DAD counter, up to IDGEN_RETRIES, then none" {
                let s, _ = Slaac.onPrefix 0L (info (prefixOf 1) 600u 600u) (fresh ())
                let first = (only s).Address
                let s, events = Slaac.duplicate 0L first s
                let second' = (only s).Address
                Expect.notEqual second' first "another address"
                Expect.equal events [ Duplicate first; Formed second' ] "events"
                Expect.equal (only s).DadCounter 1 "DAD counter 1"
                Expect.equal (only s).State SlaacAddressState.Tentative "DAD again"
                let mutable s = s

                for _ in 1..3 do
                    s <- fst (Slaac.duplicate 0L (only s).Address s)

                Expect.isEmpty s.Addresses "given up after 3 retries"
            }

            test "a conflict on an assigned address changes nothing (it is defended)" {
                let s = assign 0L (info (prefixOf 1) 600u 600u) (fresh ())
                let s2, events = Slaac.duplicate 0L (only s).Address s
                Expect.equal s2 s "unchanged"
                Expect.isEmpty events "no events"
            }

            test "router solicitations: three, four seconds apart, ended by an advertisement with a router lifetime" {
                let s = Slaac.create config 500_000L
                Expect.equal (Slaac.nextDeadline s) 500_000L "after the initial delay"
                let s, events = Slaac.tick 500_000L s
                Expect.equal events [ SolicitRouters ] "first"
                Expect.equal (Slaac.nextDeadline s) 4_500_000L "4 s later"
                let s, _ = Slaac.tick 4_500_000L s
                let s, events = Slaac.tick 8_500_000L s
                Expect.equal events [ SolicitRouters ] "third"
                Expect.equal (Slaac.nextDeadline s) Slaac.Never "no fourth"
                let s = Slaac.create config 0L
                let s, _ = Slaac.onRouterAdvertisement 0L 0us [] s
                Expect.equal s.SolicitationsLeft 3 "a router lifetime of 0 does not end them"
                let s, _ = Slaac.onRouterAdvertisement 0L 1800us [] s
                Expect.equal (Slaac.nextDeadline s) Slaac.Never "ended"
            }

            test "at most MaxAddresses prefixes are taken" {
                let mutable s = fresh ()

                for n in 0..99 do
                    s <- fst (Slaac.onPrefix 0L (info (prefixOf n) 600u 600u) s)

                Expect.hasLength s.Addresses config.MaxAddresses "bounded"
                let _, events = Slaac.onPrefix 0L (info (prefixOf 200) 600u 600u) s
                Expect.equal events [ Ignored "full" ] "counted"
            }

            test
                "source selection: the configured address unless an autoconfigured prefix matches longer; never a deprecated one" {
                let s = assign 0L (info (prefixOf 1) 600u 10u) (fresh ())
                let a = only s
                let inPrefix = Ipv6Address((prefixOf 1).High, 5UL)
                let elsewhere = Ipv6Address(0xFDA6_0001_0000_0000UL, 1UL)

                Expect.equal
                    (Slaac.selectSource (ValueSome configured) 64 inPrefix s.Addresses)
                    (ValueSome a.Address)
                    "the SLAAC address"

                Expect.equal
                    (Slaac.selectSource (ValueSome configured) 64 elsewhere s.Addresses)
                    (ValueSome configured)
                    "the configured one"

                let far = Ipv6Address(0x2001_0db8_0000_0000UL, 1UL)

                Expect.equal
                    (Slaac.selectSource (ValueSome configured) 64 far s.Addresses)
                    (ValueSome configured)
                    "a tie goes to the configured one"

                let s, _ = settle (10L * second) s

                Expect.equal
                    (Slaac.selectSource (ValueSome configured) 64 inPrefix s.Addresses)
                    (ValueSome configured)
                    "not a deprecated one"
            }

            test "Ndp.prefixes reads every prefix option of an advertisement, up to the limit" {
                let ps = [ for n in 0..4 -> info (prefixOf n) 600u (uint32 n) ]
                let message = advertisement ps
                Expect.equal (List.ofArray (Ndp.prefixes (ReadOnlySpan message) 10)) ps "all five"
                Expect.hasLength (Ndp.prefixes (ReadOnlySpan message) 2) 2 "two at most"
            }

            test "the IP layer accepts packets to its extra IPv6 addresses and no others" {
                let extra = Ipv6Address((prefixOf 1).High, 9UL)
                let peer = Ipv6Address(0xFDA6_0001_0000_0000UL, 1UL)

                let state = IpLayer.create (IpLayer.config ValueNone (ValueSome configured) 1500) 0L

                let buffer = Array.zeroCreate<byte> 2048

                let kindOf (state: IpLayerState) (destination: Ipv6Address) =
                    let n =
                        IpLayer.writeEchoRequest
                            (V6 peer)
                            (V6 destination)
                            1us
                            1us
                            0us
                            (ReadOnlySpan [| 1uy |])
                            (Span buffer)

                    let struct (_, r) = IpLayer.receive 0L (ReadOnlySpan(buffer, 0, n)) state
                    r.Kind, r.Destination

                Expect.equal (fst (kindOf state extra)) ReceivedKind.Dropped "not ours yet"
                let state = IpLayer.withAddresses6 [| extra |] state
                Expect.equal (kindOf state extra) (ReceivedKind.EchoRequest, V6 extra) "ours, answered from it"
                Expect.equal (fst (kindOf state configured)) ReceivedKind.EchoRequest "the configured one still"
                Expect.isTrue (IpLayer.isLocal6 extra state) "isLocal6"
            }

            test
                "the link-local address is fe80::/64 with the RFC 7217 identifier, tested by DAD, then preferred forever" {
                // RFC 7217 §5 with Network_ID empty: the first 64 bits of
                // SHA-256(Prefix | Net_Iface | DAD_Counter | secret_key), computed here.
                let expected (counter: byte) =
                    let input =
                        Array.concat
                            [
                                [| 0xFEuy; 0x80uy; 0uy; 0uy; 0uy; 0uy; 0uy; 0uy |]
                                [| 0x02uy; 0x00uy; 0x00uy; 0xA6uy; 0x00uy; 0x01uy |]
                                [| counter |]
                                secret
                            ]

                    let hash = Security.Cryptography.SHA256.HashData input
                    Ipv6Address(0xFE80_0000_0000_0000UL, BinaryPrimitives.ReadUInt64BigEndian(ReadOnlySpan(hash, 0, 8)))

                let s, events = Slaac.formLinkLocal 0L (fresh ())
                let a = only s
                Expect.equal a.Address (expected 0uy) "fe80:: and the identifier"
                Expect.equal a.State SlaacAddressState.Tentative "tentative during DAD (RFC 4862 §5.4)"
                Expect.equal events [ Formed a.Address ] "formed"
                Expect.equal (Slaac.linkLocal s) ValueNone "not ours while tentative"
                let again, none = Slaac.formLinkLocal 5L s
                Expect.equal (again, none) (s, []) "formed once"

                let s, events = settle 0L s
                Expect.equal events [ Probe a.Address ] "one probe"
                let s, events = settle config.RetransTimer s
                Expect.equal events [ Assigned a.Address ] "assigned after RetransTimer"
                Expect.equal (Slaac.linkLocal s) (ValueSome a.Address) "ours"
                let a = only s

                Expect.equal
                    (a.State, a.PreferredUntil, a.ValidUntil)
                    (SlaacAddressState.Preferred, Slaac.Never, Slaac.Never)
                    "forever"

                // Another node's DAD probe for it while tentative: the next DAD_Counter (RFC 7217 §6).
                let t, _ = Slaac.formLinkLocal 0L (fresh ())
                let t, events = Slaac.duplicate 0L (expected 0uy) t
                Expect.equal events [ Duplicate(expected 0uy); Formed(expected 1uy) ] "a new identifier"

                // Router advertisements never form a second link-local address (RFC 4862 §5.5.3 b).
                let t, events =
                    Slaac.onPrefix 0L (info (Ipv6Address(0xFE80_0000_0000_0000UL, 0UL)) 600u 600u) t

                Expect.equal events [ Ignored "link-local" ] "ignored"
                Expect.equal (only t).Address (expected 1uy) "one link-local address"
            }

            test
                "without autoconfiguration only the link-local address forms: no router solicitations, prefixes ignored" {
                let s = Slaac.create { config with Prefixes = false } 0L
                Expect.equal (Slaac.nextDeadline s) Slaac.Never "no solicitation due"
                let s, events = Slaac.onPrefix 0L (info (prefixOf 1) 600u 600u) s
                Expect.equal events [ Ignored "off" ] "a prefix forms nothing"
                Expect.isEmpty s.Addresses "none"
            }

            test "source selection prefers the destination's scope (RFC 6724 rule 2), then the longest match" {
                let s, _ = Slaac.formLinkLocal 0L (fresh ())
                let s, _ = settle config.RetransTimer (fst (settle 0L s))
                let ll = (only s).Address
                let s = assign 0L (info (prefixOf 1) 600u 600u) s
                let global' = (s.Addresses |> List.find (fun a -> a.Prefix = prefixOf 1)).Address
                let peerLl = Ipv6Address(0xFE80_0000_0000_0000UL, 7UL)
                let far = Ipv6Address(0x2001_0db8_0000_0000UL, 1UL)

                Expect.equal
                    (Slaac.selectSource (ValueSome configured) 64 peerLl s.Addresses)
                    (ValueSome ll)
                    "link-local for link-local"

                Expect.equal
                    (Slaac.selectSource (ValueSome configured) 64 far s.Addresses)
                    (ValueSome configured)
                    "never link-local for a global one"

                Expect.equal
                    (Slaac.selectSource ValueNone 64 far s.Addresses)
                    (ValueSome global')
                    "without a configured address, the global one"

                let onlyLl =
                    { s with
                        Addresses = s.Addresses |> List.filter (fun a -> a.Address = ll)
                    }

                Expect.equal
                    (Slaac.selectSource ValueNone 64 far onlyLl.Addresses)
                    (ValueSome ll)
                    "the link-local one when it is all there is"

                Expect.equal (Slaac.selectSource ValueNone 64 far []) ValueNone "no address"
            }

            testPropertyWithConfig
                { codecConfig with maxTest = 300 }
                "random advertisements, time and conflicts never extend lifetimes past what advertisements allow, keep the two-hour rule, duplicate nothing and stay bounded"
            <| Prop.forAll arbSteps run
        ]
