namespace NetStack.Core.Link

open System
open System.Buffers.Binary
open System.Security.Cryptography
open NetStack.Core.Wire

/// Where one autoconfigured address is in its life (RFC 4862 §2 terms).
type SlaacAddressState =
    /// Duplicate address detection is still running: the address is not ours yet (§5.4).
    | Tentative = 0
    /// Ours and usable for new communication.
    | Preferred = 1
    /// Ours, still accepted, but not chosen as the source of new communication (§5.5.4).
    | Deprecated = 2

/// One address formed from a router's prefix (RFC 4862 §5.5.3 d).
[<Struct>]
type SlaacAddress =
    {
        /// The address: the /64 prefix and an RFC 7217 interface identifier.
        Address: Ipv6Address
        /// The prefix it was formed from (its low 64 bits are zero).
        Prefix: Ipv6Address
        /// Tentative, preferred or deprecated.
        State: SlaacAddressState
        /// The prefix's L flag in the last option that formed or updated it: on-link (RFC 4861 §6.3.4).
        OnLink: bool
        /// When it becomes deprecated (Int64.MaxValue: never).
        PreferredUntil: int64
        /// When it is removed (Int64.MaxValue: never).
        ValidUntil: int64
        /// The RFC 7217 DAD_Counter the interface identifier was made with.
        DadCounter: int
        /// Tentative: duplicate address detection probes still to send.
        ProbesLeft: int
        /// Tentative: when the next probe goes out, or DAD ends.
        DadDeadline: int64
    }

/// The settings of stateless address autoconfiguration. Times are in the caller's clock units
/// per second (`TicksPerSecond`); the stack uses microseconds.
type SlaacConfig =
    {
        /// The secret key of RFC 7217 §5 (at least 16 bytes recommended); the same secret, MAC and
        /// prefix always give the same address.
        Secret: byte[]
        /// The interface's MAC: RFC 7217's Net_Iface.
        Mac: MacAddress
        /// An address never formed (the stack's configured IPv6 address).
        Configured: Ipv6Address voption
        /// Addresses (one per prefix) at most: prefixes past it are ignored, so a flood of router
        /// advertisements cannot grow the list.
        MaxAddresses: int
        /// Neighbor solicitations per duplicate address detection (DupAddrDetectTransmits; 0: none).
        DadTransmits: int
        /// Time between DAD probes, and after the last one (RetransTimer).
        RetransTimer: int64
        /// New identifiers tried after DAD failures (RFC 7217 IDGEN_RETRIES, 3).
        IdGenRetries: int
        /// Router solicitations sent at start (RFC 4861 MAX_RTR_SOLICITATIONS, 3; 0: none).
        MaxRouterSolicitations: int
        /// Time between router solicitations (RTR_SOLICITATION_INTERVAL, 4 s).
        RouterSolicitationInterval: int64
        /// Clock units per second: how lifetimes in seconds convert.
        TicksPerSecond: int64
        /// Whether router advertisements' prefixes form addresses (and router solicitations go
        /// out at start): autoconfiguration proper. Off, only the link-local address is formed.
        Prefixes: bool
    }

/// What an autoconfiguration step asks the caller to do or to count.
type SlaacEvent =
    /// Send a router solicitation (RFC 4861 §6.3.7).
    | SolicitRouters
    /// A new tentative address: DAD starts.
    | Formed of formed: Ipv6Address
    /// Send a DAD neighbor solicitation for this tentative address (RFC 4862 §5.4.2).
    | Probe of probe: Ipv6Address
    /// DAD passed: the address is ours.
    | Assigned of assigned: Ipv6Address
    /// The preferred lifetime ran out.
    | Deprecated of deprecated: Ipv6Address
    /// The valid lifetime ran out: the address is gone.
    | Removed of removed: Ipv6Address
    /// DAD found the tentative address in use: it is dropped (§5.4.5).
    | Duplicate of duplicate: Ipv6Address
    /// A prefix option refreshed an address's lifetimes.
    | Refreshed of refreshed: Ipv6Address
    /// The §5.5.3 e "two hours" rule kept a shorter valid lifetime than the option asked for.
    | TwoHourRule of kept: Ipv6Address
    /// A prefix option that forms nothing; the reason is a counter name suffix.
    | Ignored of reason: string

/// The autoconfiguration state: the addresses and the router solicitation schedule.
type SlaacState =
    {
        /// The settings.
        Config: SlaacConfig
        /// The addresses, one per prefix, oldest first.
        Addresses: SlaacAddress list
        /// Router solicitations still to send.
        SolicitationsLeft: int
        /// When the next one goes out.
        NextSolicitation: int64
    }

/// Stateless address autoconfiguration (RFC 4862 §5.5) as pure functions: a router
/// advertisement's prefixes in, addresses with lifetimes out; time is an input, DAD probes and
/// router solicitations are events for the caller to send.
///
/// Interface identifiers are RFC 7217 stable-privacy ones, not modified EUI-64: RFC 8064
/// recommends them, they do not reveal the MAC or let a host be followed across networks, and
/// their DAD_Counter gives a fresh identifier after a DAD failure, which EUI-64 cannot.
[<RequireQualifiedAccess>]
module Slaac =

    /// No deadline.
    [<Literal>]
    let Never = Int64.MaxValue

    /// The infinite lifetime of a prefix option (RFC 4861 §4.6.2).
    [<Literal>]
    let Infinite = 0xFFFF_FFFFu

    /// RFC 4862 §5.5.3 e: an unauthenticated advertisement may shorten a valid lifetime to no
    /// less than two hours, so a forged one cannot take an address away at once.
    [<Literal>]
    let TwoHoursSeconds = 7200L

    /// A configuration with RFC 4861/4862/7217 defaults: 16 addresses, one DAD probe, 1 s
    /// RetransTimer, 3 identifier retries, 3 router solicitations 4 s apart, microseconds.
    let config (secret: byte[]) (mac: MacAddress) (configured: Ipv6Address voption) : SlaacConfig =
        {
            Secret = secret
            Mac = mac
            Configured = configured
            MaxAddresses = 16
            DadTransmits = 1
            RetransTimer = 1_000_000L
            IdGenRetries = 3
            MaxRouterSolicitations = 3
            RouterSolicitationInterval = 4_000_000L
            TicksPerSecond = 1_000_000L
            Prefixes = true
        }

    /// The /64 prefix of `address` (its low 64 bits cleared).
    let prefix64 (address: Ipv6Address) = Ipv6Address(address.High, 0UL)

    /// The link-local prefix fe80::/64 (RFC 4291 §2.5.6; RFC 4862 §5.3 forms the link-local
    /// address from it).
    let LinkLocalPrefix = Ipv6Address(0xFE80_0000_0000_0000UL, 0UL)

    /// A fresh state whose first router solicitation goes out at `firstSolicitation` (RFC 4861
    /// §6.3.7: after a random delay of up to MAX_RTR_SOLICITATION_DELAY, 1 s, the caller draws).
    let create (config: SlaacConfig) (firstSolicitation: int64) : SlaacState =
        if config.MaxAddresses < 0 || config.DadTransmits < 0 || config.IdGenRetries < 0 then
            invalidArg (nameof config) "Bounds and counts cannot be negative."

        {
            Config = config
            Addresses = []
            SolicitationsLeft = if config.Prefixes then config.MaxRouterSolicitations else 0
            NextSolicitation =
                if config.Prefixes && config.MaxRouterSolicitations > 0 then
                    firstSolicitation
                else
                    Never
        }


    // RFC 5453 reserved interface identifiers: the subnet-router anycast (all zero), the
    // reserved subnet anycast range fdff:ffff:ffff:ff80..ff (RFC 2526) and the proxy mobile
    // range 0200:5eff:fe00:5213 and 0200:5eff:fe00:0000..ffff (RFC 5453 §3).
    let private reserved (iid: uint64) =
        iid = 0UL
        || iid >= 0xFDFF_FFFF_FFFF_FF80UL
        || (iid &&& 0xFFFF_FFFF_FFFF_0000UL) = 0x0200_5EFF_FE00_0000UL

    /// The RFC 7217 §5 interface identifier: the first 64 bits of SHA-256 over Prefix, Net_Iface
    /// (the MAC), DAD_Counter and the secret key. (Network_ID is optional and not used.)
    let interfaceId (secret: byte[]) (mac: MacAddress) (prefix: Ipv6Address) (dadCounter: int) : uint64 =
        let input = Array.zeroCreate<byte>(8 + 6 + 1 + secret.Length)
        BinaryPrimitives.WriteUInt64BigEndian(input.AsSpan(0, 8), prefix.High)
        mac.Write(input.AsSpan(8, 6))
        input.[14] <- byte dadCounter
        secret.CopyTo(input, 15)
        BinaryPrimitives.ReadUInt64BigEndian(ReadOnlySpan(SHA256.HashData input, 0, 8))

    /// The address for `prefix` at DAD_Counter `counter` or the next counter that gives an
    /// identifier neither reserved nor equal to the configured address; ValueNone past the retries.
    let private form (config: SlaacConfig) (prefix: Ipv6Address) (counter: int) =
        let mutable c = counter
        let mutable found = ValueNone

        while found.IsNone && c <= config.IdGenRetries do
            let iid = interfaceId config.Secret config.Mac prefix c
            let address = Ipv6Address(prefix.High, iid)

            if reserved iid || config.Configured = ValueSome address then
                c <- c + 1
            else
                found <- ValueSome(struct (address, c))

        found

    // A lifetime in seconds from `now`, in clock units (Never for infinity), saturating.
    let private until (config: SlaacConfig) (now: int64) (seconds: uint32) =
        if seconds = Infinite then
            Never
        else
            let span = int64 seconds * config.TicksPerSecond

            if now > Never - span then Never else now + span

    // The state an assigned address has at `now`.
    let private settled (now: int64) (a: SlaacAddress) =
        if now >= a.PreferredUntil then
            SlaacAddressState.Deprecated
        else
            SlaacAddressState.Preferred

    let private begin' (config: SlaacConfig) (now: int64) (a: SlaacAddress) =
        if config.DadTransmits = 0 then
            { a with State = settled now a }, Assigned a.Address
        else
            { a with
                State = SlaacAddressState.Tentative
                ProbesLeft = config.DadTransmits
                DadDeadline = now
            },
            Formed a.Address

    /// Forms the link-local address at `now` (RFC 4862 §5.3): fe80::/64 and an RFC 7217
    /// identifier, valid and preferred forever, tentative while its duplicate address detection
    /// runs (§5.4: like every unicast address, a link-local one is tested before use; a
    /// duplicate gets the next DAD_Counter, RFC 7217 §6). Once formed it is kept; a second call
    /// changes nothing.
    let formLinkLocal (now: int64) (state: SlaacState) : SlaacState * SlaacEvent list =
        if state.Addresses |> List.exists (fun a -> a.Prefix = LinkLocalPrefix) then
            state, []
        else
            match form state.Config LinkLocalPrefix 0 with
            | ValueNone -> state, [ Ignored "no-identifier" ]
            | ValueSome(struct (address, counter)) ->
                let a, event =
                    begin'
                        state.Config
                        now
                        {
                            Address = address
                            Prefix = LinkLocalPrefix
                            State = SlaacAddressState.Tentative
                            OnLink = true
                            PreferredUntil = Never
                            ValidUntil = Never
                            DadCounter = counter
                            ProbesLeft = 0
                            DadDeadline = Never
                        }

                // First in the list: the address every other one is formed after (§5.3, §5.4).
                { state with
                    Addresses = a :: state.Addresses
                },
                [ event ]

    /// The link-local address among `addresses` once it is ours (preferred: it never deprecates).
    let linkLocalIn (addresses: SlaacAddress seq) : Ipv6Address voption =
        match
            addresses
            |> Seq.tryFind (fun a -> a.Prefix = LinkLocalPrefix && a.State <> SlaacAddressState.Tentative)
        with
        | Some a -> ValueSome a.Address
        | None -> ValueNone

    /// The link-local address once it is ours.
    let linkLocal (state: SlaacState) : Ipv6Address voption = linkLocalIn state.Addresses

    /// Processes one Prefix Information option received at `now` (RFC 4862 §5.5.3 a–e).
    let onPrefix (now: int64) (p: PrefixInformation) (state: SlaacState) : SlaacState * SlaacEvent list =
        let config = state.Config

        if not config.Prefixes then
            state, [ Ignored "off" ]
        elif not p.Autonomous then
            state, [ Ignored "not-autonomous" ] // a)
        elif Ndp.isLinkLocal p.Prefix then
            state, [ Ignored "link-local" ] // b)
        elif p.PreferredLifetime > p.ValidLifetime then
            state, [ Ignored "preferred-above-valid" ] // c)
        elif p.PrefixLength <> 64 then
            // d) the prefix and Ethernet's 64-bit interface identifier must make 128 bits.
            state, [ Ignored "prefix-length" ]
        elif p.Prefix.IsMulticast then
            state, [ Ignored "multicast" ]
        else
            let prefix = prefix64 p.Prefix

            match state.Addresses |> List.tryFind (fun a -> a.Prefix = prefix) with
            | None when p.ValidLifetime = 0u -> state, [ Ignored "zero-lifetime" ]
            | None when
                (state.Addresses |> List.filter (fun a -> a.Prefix <> LinkLocalPrefix)).Length
                >= config.MaxAddresses
                ->
                state, [ Ignored "full" ]
            | None ->
                match form config prefix 0 with
                | ValueNone -> state, [ Ignored "no-identifier" ]
                | ValueSome(struct (address, counter)) ->
                    let valid = until config now p.ValidLifetime

                    let a =
                        {
                            Address = address
                            Prefix = prefix
                            State = SlaacAddressState.Tentative
                            OnLink = p.OnLink
                            PreferredUntil = min valid (until config now p.PreferredLifetime)
                            ValidUntil = valid
                            DadCounter = counter
                            ProbesLeft = 0
                            DadDeadline = Never
                        }

                    let a, event = begin' config now a

                    { state with
                        Addresses = state.Addresses @ [ a ]
                    },
                    [ event ]
            | Some a ->
                // e) the preferred lifetime is reset; the valid lifetime only as the two-hour
                // rule allows: longer than two hours or longer than what remains is taken; else,
                // with at most two hours left, the option's valid lifetime is ignored; otherwise
                // the address keeps two hours.
                let twoHours = TwoHoursSeconds * config.TicksPerSecond
                let received = until config now p.ValidLifetime

                let remaining = if a.ValidUntil = Never then Never else a.ValidUntil - now

                let receivedSpan = if received = Never then Never else received - now

                let valid, clamped =
                    if receivedSpan > twoHours || receivedSpan > remaining then
                        received, false
                    elif remaining <= twoHours then
                        a.ValidUntil, true
                    else
                        now + twoHours, true

                let preferred = min valid (until config now p.PreferredLifetime)

                let updated =
                    { a with
                        ValidUntil = valid
                        PreferredUntil = preferred
                        OnLink = a.OnLink || p.OnLink
                    }

                let updated =
                    if updated.State = SlaacAddressState.Tentative then
                        updated
                    else
                        { updated with
                            State = settled now updated
                        }

                let events =
                    [
                        Refreshed a.Address
                        if clamped then
                            TwoHourRule a.Address
                        if
                            a.State = SlaacAddressState.Preferred
                            && updated.State = SlaacAddressState.Deprecated
                        then
                            Deprecated a.Address
                    ]

                { state with
                    Addresses = state.Addresses |> List.map (fun x -> if x.Prefix = prefix then updated else x)
                },
                events

    /// Processes a router advertisement received at `now`: its router lifetime (a non-zero one
    /// ends the router solicitations, RFC 4861 §6.3.7) and each of its prefix options in order.
    let onRouterAdvertisement
        (now: int64)
        (routerLifetime: uint16)
        (prefixes: PrefixInformation seq)
        (state: SlaacState)
        : SlaacState * SlaacEvent list =
        let state =
            if routerLifetime > 0us then
                { state with
                    SolicitationsLeft = 0
                    NextSolicitation = Never
                }
            else
                state

        let mutable s = state
        let events = ResizeArray()

        for p in prefixes do
            let next, e = onPrefix now p s
            s <- next
            events.AddRange e

        s, List.ofSeq events

    /// Duplicate address detection found `address` in use (a DAD probe or an advertisement for
    /// it from another node, RFC 4862 §5.4.3/§5.4.4). A tentative address is dropped and, within
    /// the RFC 7217 §6 retries, replaced by a new tentative one with the next DAD_Counter. An
    /// assigned address is left alone (the caller defends it); so is an unknown one.
    let duplicate (now: int64) (address: Ipv6Address) (state: SlaacState) : SlaacState * SlaacEvent list =
        match
            state.Addresses
            |> List.tryFind (fun a -> a.Address = address && a.State = SlaacAddressState.Tentative)
        with
        | None -> state, []
        | Some a ->
            let others = state.Addresses |> List.filter (fun x -> x.Prefix <> a.Prefix)

            match form state.Config a.Prefix (a.DadCounter + 1) with
            | ValueSome(struct (next, counter)) ->
                let b, event =
                    begin'
                        state.Config
                        now
                        { a with
                            Address = next
                            DadCounter = counter
                        }

                { state with
                    Addresses = others @ [ b ]
                },
                [ Duplicate address; event ]
            | ValueNone -> { state with Addresses = others }, [ Duplicate address ]

    /// Runs the timers due at `now`: router solicitations, DAD probes and their end, deprecation
    /// at the preferred lifetime and removal at the valid lifetime.
    let tick (now: int64) (state: SlaacState) : SlaacState * SlaacEvent list =
        let events = ResizeArray()

        let state =
            if state.SolicitationsLeft > 0 && state.NextSolicitation <= now then
                events.Add SolicitRouters
                let left = state.SolicitationsLeft - 1

                { state with
                    SolicitationsLeft = left
                    NextSolicitation =
                        if left > 0 then
                            now + state.Config.RouterSolicitationInterval
                        else
                            Never
                }
            else
                state

        let addresses =
            state.Addresses
            |> List.choose (fun a ->
                if a.ValidUntil <= now then
                    events.Add(Removed a.Address)
                    None
                elif a.State = SlaacAddressState.Tentative then
                    if a.DadDeadline > now then
                        Some a
                    elif a.ProbesLeft > 0 then
                        events.Add(Probe a.Address)

                        Some
                            { a with
                                ProbesLeft = a.ProbesLeft - 1
                                DadDeadline = now + state.Config.RetransTimer
                            }
                    else
                        events.Add(Assigned a.Address)

                        Some
                            { a with
                                State = settled now a
                                DadDeadline = Never
                            }
                elif a.State = SlaacAddressState.Preferred && a.PreferredUntil <= now then
                    events.Add(Deprecated a.Address)

                    Some
                        { a with
                            State = SlaacAddressState.Deprecated
                        }
                else
                    Some a)

        { state with Addresses = addresses }, List.ofSeq events

    /// When `tick` next has something to do (Never: nothing).
    let nextDeadline (state: SlaacState) : int64 =
        let mutable next =
            if state.SolicitationsLeft > 0 then
                state.NextSolicitation
            else
                Never

        for a in state.Addresses do
            next <- min next a.ValidUntil

            match a.State with
            | SlaacAddressState.Tentative -> next <- min next a.DadDeadline
            | SlaacAddressState.Preferred -> next <- min next a.PreferredUntil
            | _ -> ()

        next

    /// The addresses that are ours (preferred or deprecated): packets to them are accepted.
    let assigned (state: SlaacState) : Ipv6Address[] =
        state.Addresses
        |> List.filter (fun a -> a.State <> SlaacAddressState.Tentative)
        |> List.map (fun a -> a.Address)
        |> Array.ofList

    /// The number of leading bits `a` and `b` share (0..128).
    let commonPrefixLength (a: Ipv6Address) (b: Ipv6Address) : int =
        let high = a.High ^^^ b.High

        if high <> 0UL then
            Numerics.BitOperations.LeadingZeroCount high
        else
            64 + Numerics.BitOperations.LeadingZeroCount(a.Low ^^^ b.Low)

    /// The source address for a new communication with `destination` (RFC 6724 §5, rules 2, 3
    /// and 8): among `configured` (with its prefix length) and the preferred autoconfigured
    /// addresses, one whose scope matches the destination's (a link-local source for a
    /// link-local destination, any other for the rest; rule 2), then the longest prefix shared
    /// with the destination, counted up to each candidate's prefix length (rule 8). Deprecated
    /// and tentative addresses are never chosen (rule 3); ties go to `configured`. ValueNone:
    /// no address at all.
    let selectSource
        (configured: Ipv6Address voption)
        (configuredPrefixLength: int)
        (destination: Ipv6Address)
        (addresses: SlaacAddress seq)
        : Ipv6Address voption =
        let linkScope = Ndp.isLinkLocal destination
        // Higher is better: the scope match first, then the shared prefix (0..128).
        let score (candidate: Ipv6Address) (prefixLength: int) =
            (if Ndp.isLinkLocal candidate = linkScope then 256 else 0)
            + min prefixLength (commonPrefixLength candidate destination)

        let mutable best = configured

        let mutable bestScore =
            match configured with
            | ValueSome c -> score c configuredPrefixLength
            | ValueNone -> -1

        for a in addresses do
            if a.State = SlaacAddressState.Preferred then
                let candidate = score a.Address 64

                if candidate > bestScore then
                    best <- ValueSome a.Address
                    bestScore <- candidate

        best
