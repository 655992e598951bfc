/// The egress policy of `netstack run` (NetStack.Core.Forward.EgressPolicy). The oracle is a model
/// written here: rules kept as byte arrays, matched by comparing the first LENGTH bits one by one,
/// first match wins; the rule strings the parser reads are written by the test too.
module NetStack.Tests.Forward.EgressPolicyTests

open System
open System.Net
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Core.Stack
open NetStack.Core.Forward

/// A rule as the test keeps it: None for "*", else the network's bytes (4 or 16) and length.
type private ModelRule =
    {
        Allow: bool
        Network: (byte[] * int) option
        Ports: (int * int) option
    }

// The first `length` bits of a and b are equal.
let private samePrefix (a: byte[]) (b: byte[]) (length: int) =
    a.Length = b.Length
    && Seq.forall
        (fun bit -> ((a[bit / 8] >>> (7 - bit % 8)) &&& 1uy) = ((b[bit / 8] >>> (7 - bit % 8)) &&& 1uy))
        (seq { 0 .. length - 1 })

// ::ffff:a.b.c.d is decided as a.b.c.d (the module's documented rule).
let private unmap (address: byte[]) =
    if
        address.Length = 16
        && Array.forall ((=) 0uy) address[0..9]
        && address[10] = 0xFFuy
        && address[11] = 0xFFuy
    then
        address[12..15]
    else
        address

let private modelDecide (rules: ModelRule list) (defaultAllow: bool) (address: byte[]) (port: int) =
    let address = unmap address

    rules
    |> List.tryFind (fun r ->
        (match r.Ports with
         | None -> true
         | Some(a, b) -> port >= a && port <= b)
        && (match r.Network with
            | None -> true
            | Some(network, length) -> samePrefix network address length))
    |> Option.map _.Allow
    |> Option.defaultValue defaultAllow

// The rule string, written by the test: IPv4 dotted, IPv6 as IPAddress prints it (bracketed when ports follow).
let private ruleText (r: ModelRule) =
    let ports =
        match r.Ports with
        | None -> ""
        | Some(a, b) when a = b -> $":{a}"
        | Some(a, b) -> $":{a}-{b}"

    let target =
        match r.Network with
        | None -> "*"
        | Some(network, length) when network.Length = 4 -> $"{IPAddress network}/{length}"
        | Some(network, length) when ports = "" -> $"{IPAddress network}/{length}"
        | Some(network, length) -> $"[{IPAddress network}/{length}]"

    $"""{(if r.Allow then "allow" else "deny")} {target}{ports}"""

// Zeroes the bits past `length`.
let private masked (bytes: byte[]) (length: int) =
    bytes
    |> Array.mapi (fun i b ->
        let keep = Math.Clamp(length - i * 8, 0, 8)
        if keep = 0 then 0uy else b &&& byte (0xFF <<< (8 - keep)))

// A few base addresses, so that random rules and destinations often share prefixes.
let private bases4 =
    [|
        [| 10uy; 0uy; 2uy; 3uy |]
        [| 192uy; 168uy; 1uy; 77uy |]
        [| 127uy; 0uy; 0uy; 1uy |]
        [| 8uy; 8uy; 4uy; 4uy |]
    |]

let private bases6 =
    [| "fd00::3"; "2001:db8::1"; "::1"; "2001:db8:ffff::8000:1" |]
    |> Array.map (fun t -> IPAddress.Parse(t).GetAddressBytes())

let private flipSomeBits (bytes: byte[]) =
    Gen.listOf (Gen.choose (0, bytes.Length * 8 - 1))
    |> Gen.map (fun flips ->
        let copy = Array.copy bytes

        for bit in flips |> List.truncate 3 do
            copy[bit / 8] <- copy[bit / 8] ^^^ byte (0x80 >>> (bit % 8))

        copy)

let private addressGen =
    gen {
        let! v6 = Gen.elements [ false; true ]
        let! b = Gen.elements (if v6 then bases6 else bases4)
        let! bytes = Gen.oneof [ Gen.constant b; flipSomeBits b ]
        // Sometimes an IPv4-mapped IPv6 address.
        let! mapped = Gen.frequency [ 4, Gen.constant false; 1, Gen.constant true ]

        return
            if not v6 && mapped then
                Array.append (Array.append (Array.zeroCreate 10) [| 0xFFuy; 0xFFuy |]) bytes
            else
                bytes
    }

let private portGen =
    Gen.oneof [ Gen.elements [ 0; 22; 53; 80; 443; 65535 ]; Gen.choose (0, 65535) ]

let private ruleGen =
    gen {
        let! allow = Gen.elements [ false; true ]
        let! any = Gen.frequency [ 1, Gen.constant true; 6, Gen.constant false ]
        let! address = addressGen
        let address = unmap address
        let! length = Gen.choose (0, address.Length * 8)

        let! ports =
            Gen.oneof
                [
                    Gen.constant None
                    portGen |> Gen.map (fun p -> Some(p, p))
                    Gen.two portGen |> Gen.map (fun (a, b) -> Some(min a b, max a b))
                ]

        return
            {
                Allow = allow
                Network = if any then None else Some(masked address length, length)
                Ports = ports
            }
    }

let private toIpAddr (bytes: byte[]) =
    if bytes.Length = 4 then
        V4(Ipv4Address.Read(ReadOnlySpan bytes))
    else
        V6(Ipv6Address.Read(ReadOnlySpan bytes))

let private parseOk (text: string) =
    match EgressPolicy.parseRule text with
    | Ok r -> r
    | Error e -> failtestf "'%s' did not parse: %s" text e

let private parseError (text: string) =
    match EgressPolicy.parseRule text with
    | Ok r -> failtestf "'%s' parsed as %A" text r
    | Error e -> e

// Characters hostile input is made of: the syntax's own, digits, and things that break parsers.
let private hostileChar =
    Gen.elements (
        List.ofSeq "0123456789abcdefx:./-[]*% \t\n\u0000\u00ff\u0661+,;ÿ🙂"
        @ [ 'A'; 'F' ]
    )

let rec private mutate (steps: int) (text: string) =
    if steps = 0 then
        Gen.constant text
    else
        gen {
            let! position = Gen.choose (0, text.Length)
            let! c = hostileChar
            let! kind = Gen.choose (0, 2)

            let next =
                match kind with
                | 0 -> text.Insert(position, string c)
                | 1 when position < text.Length -> text.Remove(position, 1)
                | _ when position < text.Length -> text.Remove(position, 1).Insert(position, string c)
                | _ -> text + string c

            return! mutate (steps - 1) next
        }

let private config =
    { FsCheckConfig.defaultConfig with
        maxTest = 1000
    }

[<Tests>]
let tests =
    testList
        "EgressPolicy"
        [
            testPropertyWithConfig
                config
                "the first matching rule decides, else the default (a bitwise model written in the test)"
            <| Prop.forAll
                (Arb.fromGen (
                    Gen.zip3
                        (Gen.listOf ruleGen |> Gen.map (List.truncate 8))
                        (Gen.elements [ false; true ])
                        (Gen.listOfLength 20 (Gen.zip addressGen portGen))
                ))
                (fun (rules, defaultAllow, destinations) ->
                    let policy =
                        {
                            Rules = rules |> List.map (ruleText >> parseOk)
                            Default = if defaultAllow then Allow else Deny
                        }

                    for address, port in destinations do
                        let expected = modelDecide rules defaultAllow address port
                        let actual = EgressPolicy.decide policy (toIpAddr address) port

                        if actual <> expected then
                            failtestf
                                "%s port %d: decide says %b, the model %b; rules:\n%s"
                                (IPAddress address |> string)
                                port
                                actual
                                expected
                                (rules |> List.map ruleText |> String.concat "\n")

                    true)

            testPropertyWithConfig config "portless decisions take only the rules for every port"
            <| Prop.forAll
                (Arb.fromGen (
                    Gen.zip3 (Gen.listOf ruleGen |> Gen.map (List.truncate 8)) (Gen.elements [ false; true ]) addressGen
                ))
                (fun (rules, defaultAllow, address) ->
                    let policy =
                        {
                            Rules = rules |> List.map (ruleText >> parseOk)
                            Default = if defaultAllow then Allow else Deny
                        }

                    let everyPort =
                        rules |> List.filter (fun r -> r.Ports.IsNone || r.Ports = Some(0, 65535))

                    EgressPolicy.decidePortless policy (toIpAddr address) =
                        modelDecide everyPort defaultAllow address 0)

            testPropertyWithConfig config "a rule written back by format parses to the same rule"
            <| Prop.forAll (Arb.fromGen ruleGen) (fun rule ->
                let parsed = parseOk (ruleText rule)
                EgressPolicy.parseRule (EgressPolicy.format parsed) = Ok parsed)

            testPropertyWithConfig config "hostile strings give Ok or the documented Error, never an exception"
            <| Prop.forAll
                (Arb.fromGen (
                    Gen.oneof
                        [
                            Gen.zip ruleGen (Gen.choose (1, 4))
                            |> Gen.bind (fun (r, n) -> mutate n (ruleText r))
                            Gen.listOf hostileChar |> Gen.map (List.truncate 300 >> Array.ofList >> String)
                        ]
                ))
                (fun text ->
                    match EgressPolicy.parseRule text with
                    | Ok _ -> true
                    | Error message -> not (String.IsNullOrWhiteSpace message))

            test "examples the syntax documents parse as written" {
                Expect.equal
                    (parseOk "allow 10.0.0.0/8:80-90")
                    {
                        Action = Allow
                        Addresses = Prefix4(0x0A000000u, 8)
                        PortFirst = 80
                        PortLast = 90
                    }
                    "IPv4 prefix with a port range"

                Expect.equal (parseOk "deny *:25").Addresses AnyAddress "any address"
                Expect.equal (parseOk "deny *:25").PortFirst 25 "one port"

                Expect.equal
                    (parseOk "allow [fd00::/8]:53").Addresses
                    (Prefix6(0xFD00000000000000UL, 0UL, 8))
                    "IPv6 in brackets"

                Expect.equal (parseOk "allow ::1").Addresses (Prefix6(0UL, 1UL, 128)) "a bare IPv6 address is a /128"

                Expect.equal
                    (parseOk "allow 127.0.0.1").Addresses
                    (Prefix4(0x7F000001u, 32))
                    "a bare IPv4 address is a /32"
            }

            test "malformed rules are refused with a message that says why" {
                Expect.stringContains (parseError "allow 10.0.0.1/8") "bits set past the prefix" "host bits"
                Expect.stringContains (parseError "allow 10.0.0.0/8:90-80") "empty" "reversed range"
                Expect.stringContains (parseError "allow 10.0.0.0/33") "above 32" "IPv4 length"
                Expect.stringContains (parseError "allow [fd00::/8:53") "'['" "unclosed bracket"
                Expect.stringContains (parseError "allow 10.0.0.0:70000") "above 65535" "port"
                Expect.stringContains (parseError "permit 10.0.0.0") "not an action" "action"
                Expect.stringContains (parseError "allow 1.2.3") "not an IPv4 address" "three octets"
                Expect.stringContains (parseError "allow 0x7f.0.0.1") "not an IPv4 address" "hex octet"
                Expect.stringContains (parseError "allow fe80::1%eth0") "not an IPv6 address" "zone"
                Expect.stringContains (parseError "allow  10.0.0.0") "not a rule" "two spaces"
            }

            test "an IPv4-mapped IPv6 destination is decided as its IPv4 address" {
                let policy =
                    {
                        Rules = [ parseOk "deny 10.0.0.0/8" ]
                        Default = Allow
                    }

                Expect.isFalse
                    (EgressPolicy.decide policy (toIpAddr (IPAddress.Parse("::ffff:10.1.2.3").GetAddressBytes())) 80)
                    "mapped"

                Expect.isTrue
                    (EgressPolicy.decide policy (toIpAddr (IPAddress.Parse("::10.1.2.3").GetAddressBytes())) 80)
                    "compatible, not mapped"
            }
        ]
