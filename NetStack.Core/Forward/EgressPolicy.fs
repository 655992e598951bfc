namespace NetStack.Core.Forward

open System
open System.Globalization
open System.Net
open System.Net.Sockets
open NetStack.Core.Wire
open NetStack.Core.Stack

/// What a rule, or the policy's default, says about a destination.
type EgressAction =
    /// The flow may be forwarded.
    | Allow
    /// The flow is refused.
    | Deny

/// The destination addresses a rule covers.
[<Struct>]
type EgressAddresses =
    /// Every address of both families ("*").
    | AnyAddress
    /// An IPv4 prefix: the network as a number (first octet high) and its length, 0..32.
    | Prefix4 of network: uint32 * length4: int
    /// An IPv6 prefix: the network's two halves and its length, 0..128.
    | Prefix6 of high: uint64 * low: uint64 * length6: int

/// One rule: an action for a set of destination addresses and a range of destination ports.
type EgressRule =
    {
        /// What a match means.
        Action: EgressAction
        /// The destination addresses matched.
        Addresses: EgressAddresses
        /// The first destination port matched (0..65535).
        PortFirst: int
        /// The last destination port matched (PortFirst..65535); 0..65535 is every port.
        PortLast: int
    }

/// An egress policy: the rules in order (the first that matches decides) and the action when none does.
type EgressPolicy =
    {
        /// The rules, first match wins.
        Rules: EgressRule list
        /// The action when no rule matches.
        Default: EgressAction
    }

/// Parsing and deciding egress policies: which destinations a program in a sandbox may reach
/// through the forwarders. Pure: no I/O, no exceptions for any input string.
///
/// Rule syntax (after the action, `allow` or `deny`): TARGET[:PORTS], where TARGET is
/// - `*`: every address of both families;
/// - an IPv4 address with an optional prefix length, `10.0.0.0/8` (four decimal octets);
/// - an IPv6 address with an optional prefix length, `fd00::/8`, in brackets when ports follow:
///   `[fd00::/8]:53`;
/// and PORTS is one port `53` or an inclusive range `1000-2000` (0..65535; none: every port).
/// A prefix's address must have no bits set past its length (`10.0.0.1/8` is refused as a
/// probable typo). IPv4-mapped IPv6 destinations (::ffff:a.b.c.d) are decided as the IPv4
/// address they carry, since a dual-stack host socket would reach exactly that address.
module EgressPolicy =
    /// The policy that allows everything (no rules, default allow).
    let allowAll = { Rules = []; Default = Allow }

    /// Parses `allow` or `deny`.
    let parseAction (text: string) =
        match text with
        | "allow" -> Ok Allow
        | "deny" -> Ok Deny
        | null -> Error "an action is missing: give 'allow' or 'deny'"
        | other -> Error $"'{other}' is not an action: give 'allow' or 'deny'"

    let private isDigits (text: string) =
        text.Length > 0 && text |> Seq.forall (fun c -> c >= '0' && c <= '9')

    // A decimal number of at most `maxDigits` digits up to `max`, no sign, no spaces.
    let private parseNumber (what: string) (text: string) (maxDigits: int) (max: int) =
        if not (isDigits text) || text.Length > maxDigits then
            Error $"'{text}' is not a {what}"
        else
            let n = Int32.Parse(text, NumberStyles.None, CultureInfo.InvariantCulture)

            if n > max then Error $"{what} {n} is above {max}" else Ok n

    let private parsePorts (text: string) =
        let port s = parseNumber "port" s 5 65535

        match text.Split '-' with
        | [| one |] -> port one |> Result.map (fun p -> p, p)
        | [| first; last |] ->
            match port first, port last with
            | Ok a, Ok b when a <= b -> Ok(a, b)
            | Ok a, Ok b -> Error $"port range {a}-{b} is empty (the first port is above the last)"
            | Error e, _
            | _, Error e -> Error e
        | _ -> Error $"'{text}' is not a port or a range FIRST-LAST"

    // Four decimal octets, nothing else (IPAddress.Parse also takes "1", "0x7f.1" and "010.1.1.1").
    let private parseIpv4 (text: string) =
        let parts = text.Split '.'

        if parts.Length <> 4 then
            Error $"'{text}' is not an IPv4 address (four decimal octets)"
        else
            let octets = parts |> Array.map (fun p -> parseNumber "octet" p 3 255)

            match
                octets
                |> Array.tryPick (function
                    | Error e -> Some e
                    | Ok _ -> None)
            with
            | Some _ -> Error $"'{text}' is not an IPv4 address (four decimal octets)"
            | None ->
                let value =
                    octets
                    |> Array.fold
                        (fun acc o ->
                            match o with
                            | Ok o -> (acc <<< 8) ||| uint32 o
                            | Error _ -> acc)
                        0u

                Ok value

    let private parseIpv6 (text: string) =
        // No zone (fe80::1%eth0): a policy names global destinations, and '%' would be ambiguous.
        match IPAddress.TryParse(text: string) with
        | true, address when
            address.AddressFamily = AddressFamily.InterNetworkV6
            && text.Contains ':'
            && not (text.Contains '%')
            ->
            let bytes = address.GetAddressBytes()

            let half (offset: int) =
                Seq.fold (fun acc i -> (acc <<< 8) ||| uint64 bytes[offset + i]) 0UL (seq { 0..7 })

            Ok(half 0, half 8)
        | _ -> Error $"'{text}' is not an IPv6 address"

    let private maskOf4 (length: int) =
        if length = 0 then 0u else UInt32.MaxValue <<< (32 - length)

    let private maskOf64 (length: int) =
        if length <= 0 then 0UL
        elif length >= 64 then UInt64.MaxValue
        else UInt64.MaxValue <<< (64 - length)

    // ADDRESS[/LENGTH] of either family.
    let private parsePrefix (text: string) =
        let address, length =
            match text.IndexOf '/' with
            | -1 -> text, None
            | i -> text.Substring(0, i), Some(text.Substring(i + 1))

        if address.Contains ':' then
            match parseIpv6 address with
            | Error e -> Error e
            | Ok(high, low) ->
                let length =
                    match length with
                    | None -> Ok 128
                    | Some l -> parseNumber "IPv6 prefix length" l 3 128

                match length with
                | Error e -> Error e
                | Ok l when (high &&& ~~~(maskOf64 l)) <> 0UL || (low &&& ~~~(maskOf64 (l - 64))) <> 0UL ->
                    Error $"{text} has bits set past the prefix length: give the network address"
                | Ok l -> Ok(Prefix6(high, low, l))
        else
            match parseIpv4 address with
            | Error e -> Error e
            | Ok value ->
                let length =
                    match length with
                    | None -> Ok 32
                    | Some l -> parseNumber "IPv4 prefix length" l 2 32

                match length with
                | Error e -> Error e
                | Ok l when (value &&& ~~~(maskOf4 l)) <> 0u ->
                    Error $"{text} has bits set past the prefix length: give the network address"
                | Ok l -> Ok(Prefix4(value, l))

    /// Parses the part of a rule after its action: TARGET[:PORTS] (see the module's summary).
    /// Never throws: every malformed input is an Error with a message naming what is wrong.
    let parseTarget (action: EgressAction) (text: string) : Result<EgressRule, string> =
        let rule addresses (first, last) =
            {
                Action = action
                Addresses = addresses
                PortFirst = first
                PortLast = last
            }

        let withPorts (addresses: Result<EgressAddresses, string>) (ports: string option) =
            match addresses with
            | Error e -> Error e
            | Ok a ->
                match ports with
                | None -> Ok(rule a (0, 65535))
                | Some p -> parsePorts p |> Result.map (rule a)

        if isNull text || text.Length = 0 then
            Error "the rule names no destination: give *, an address or a prefix, e.g. 10.0.0.0/8:443"
        elif text.Length > 200 then
            Error "the rule is too long to be a destination"
        elif text |> Seq.exists Char.IsWhiteSpace then
            Error $"'{text}' contains whitespace"
        elif text = "*" then
            withPorts (Ok AnyAddress) None
        elif text.StartsWith "*:" then
            withPorts (Ok AnyAddress) (Some(text.Substring 2))
        elif text.StartsWith "[" then
            match text.IndexOf ']' with
            | -1 -> Error $"'{text}' opens '[' without closing it"
            | close ->
                let inside = text.Substring(1, close - 1)
                let rest = text.Substring(close + 1)

                if not (inside.Contains ':') then
                    Error $"'{text}': brackets are for IPv6 addresses"
                elif rest = "" then
                    withPorts (parsePrefix inside) None
                elif rest.StartsWith ":" then
                    withPorts (parsePrefix inside) (Some(rest.Substring 1))
                else
                    Error $"'{text}': after ']' only ':PORTS' may follow"
        elif text.Contains ':' then
            // An IPv6 address or prefix without ports; "10.0.0.0/8:80" has one ':' after a '.'.
            if
                text.Contains '.'
                && text.IndexOf ':' = text.LastIndexOf ':'
                && text.IndexOf '.' < text.IndexOf ':'
            then
                let i = text.IndexOf ':'
                withPorts (parsePrefix (text.Substring(0, i))) (Some(text.Substring(i + 1)))
            else
                withPorts (parsePrefix text) None
        else
            withPorts (parsePrefix text) None

    /// Parses a whole rule, `allow TARGET[:PORTS]` or `deny TARGET[:PORTS]` (one space).
    let parseRule (text: string) : Result<EgressRule, string> =
        if isNull text then
            Error "the rule is empty"
        else
            match text.Split ' ' with
            | [| action; target |] -> parseAction action |> Result.bind (fun a -> parseTarget a target)
            | _ -> Error $"'{text}' is not a rule: write 'allow TARGET[:PORTS]' or 'deny TARGET[:PORTS]'"

    /// The rule written back in the syntax parseRule reads (IPv6 in its shortest form).
    let format (rule: EgressRule) =
        let action =
            match rule.Action with
            | Allow -> "allow"
            | Deny -> "deny"

        let ports =
            if rule.PortFirst = 0 && rule.PortLast = 65535 then
                ""
            elif rule.PortFirst = rule.PortLast then
                $":{rule.PortFirst}"
            else
                $":{rule.PortFirst}-{rule.PortLast}"

        let target =
            match rule.Addresses with
            | AnyAddress -> "*"
            | Prefix4(network, length) ->
                let o shift = (network >>> shift) &&& 0xFFu
                $"{o 24}.{o 16}.{o 8}.{o 0}/{length}"
            | Prefix6(high, low, length) ->
                let address = Ipv6Address(high, low).ToIPAddress()

                if ports = "" then
                    $"{address}/{length}"
                else
                    $"[{address}/{length}]"

        $"{action} {target}{ports}"

    // ::ffff:a.b.c.d carries an IPv4 address (RFC 4291 §2.5.5.2).
    let private unmapped (address: IpAddr) =
        match address with
        | V6 a when a.High = 0UL && (a.Low >>> 32) = 0xFFFFUL -> V4(Ipv4Address(uint32 (a.Low &&& 0xFFFFFFFFUL)))
        | other -> other

    let private covers (addresses: EgressAddresses) (address: IpAddr) =
        match addresses, address with
        | AnyAddress, _ -> true
        | Prefix4(network, length), V4 a -> (a.Value &&& maskOf4 length) = network
        | Prefix6(high, low, length), V6 a ->
            (a.High &&& maskOf64 length) = high && (a.Low &&& maskOf64 (length - 64)) = low
        | _ -> false

    /// The action for a flow to `address`, `port`: the first rule covering both decides,
    /// else the default.
    let action (policy: EgressPolicy) (address: IpAddr) (port: int) =
        let address = unmapped address

        policy.Rules
        |> List.tryFind (fun r -> port >= r.PortFirst && port <= r.PortLast && covers r.Addresses address)
        |> Option.map _.Action
        |> Option.defaultValue policy.Default

    /// True when a flow to `address`, `port` may be forwarded.
    let decide (policy: EgressPolicy) (address: IpAddr) (port: int) = action policy address port = Allow

    /// True when portless traffic (ICMP echo) to `address` may be forwarded: only rules for
    /// every port (no PORTS given) take part.
    let decidePortless (policy: EgressPolicy) (address: IpAddr) =
        let address = unmapped address

        policy.Rules
        |> List.tryFind (fun r -> r.PortFirst = 0 && r.PortLast = 65535 && covers r.Addresses address)
        |> Option.map _.Action
        |> Option.defaultValue policy.Default
        |> (=) Allow
