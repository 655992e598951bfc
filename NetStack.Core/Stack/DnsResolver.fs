namespace NetStack.Core.Stack

open System
open NetStack.Core.Wire

/// What the resolver is asked: a name (lower-cased ASCII, no final dot) and A or AAAA.
[<StructuralEquality; StructuralComparison>]
type DnsKey =
    {
        /// The name, lower case (RFC 4343: the same name whatever its case).
        Name: string
        /// The QTYPE: Dns.TypeA or Dns.TypeAaaa.
        Type: uint16
    }

/// Why a resolution failed, in the terms .NET's Dns class reports (System.Net.Sockets.SocketError).
[<RequireQualifiedAccess>]
type DnsFailure =
    /// RCODE 3 NXDOMAIN: the name does not exist (SocketError.HostNotFound).
    | NameError
    /// NOERROR with no record of the type asked (RFC 2308 §2.2 NODATA; SocketError.NoData).
    | NoData
    /// Every server answered SERVFAIL, REFUSED, NOTIMP or FORMERR, or a malformed answer over
    /// TCP (SocketError.TryAgain).
    | ServerFailure
    /// No server answered within the retransmission schedule (SocketError.TryAgain).
    | TimedOut

/// The outcome of one question.
type DnsResult =
    /// The addresses of the type asked, in the answer's order, and the seconds they may be kept.
    | Addresses of addresses: IpAddr list * ttl: uint32
    /// No addresses, and why.
    | Failed of DnsFailure

/// What the resolver asks the runtime to do.
type DnsAction =
    /// Bind a UDP socket on `localPort` (from the resolver's random draw, RFC 5452 §9.2) and send
    /// `query` from it to `server`:`serverPort`; hand every datagram it receives to `datagram`.
    | SendUdp of key: DnsKey * server: IpAddr * serverPort: uint16 * localPort: uint16 * query: byte[]
    /// Close the socket on `localPort`: its query is over.
    | CloseUdp of localPort: uint16
    /// Connect over TCP to `server`:`serverPort`, write `framed` (RFC 1035 §4.2.2 framing),
    /// read one framed answer and hand it to `tcpAnswer` (or report `tcpFailed`).
    | SendTcp of key: DnsKey * server: IpAddr * serverPort: uint16 * framed: byte[]
    /// Abandon the TCP exchange of `key`.
    | CloseTcp of key: DnsKey
    /// The question has its outcome: complete every caller waiting for `key`.
    | Complete of key: DnsKey * result: DnsResult
    /// Count this event (a named counter: an ignored datagram's reason, a retransmission).
    | Count of counter: string

/// One UDP transmission of a query: answers are accepted only to these (RFC 5452 §9.1: the
/// ID, the port they were sent from and the server they were sent to).
[<Struct>]
type DnsTransmission =
    {
        /// The query ID sent.
        Id: uint16
        /// The local port sent from.
        LocalPort: uint16
        /// Index of the server sent to.
        Server: int
    }

/// An outstanding question.
type DnsQuery =
    {
        /// What is asked.
        Key: DnsKey
        /// Every UDP transmission so far; all stay valid until the query ends (an answer to
        /// the first may come after the second went out).
        Transmissions: DnsTransmission list
        /// The server being asked now.
        Server: int
        /// The round: 0 for the first pass over the servers, 1 for the second...
        Round: int
        /// Some ID while the question is asked over TCP after a truncated answer.
        TcpId: uint16 voption
        /// When the current attempt gives up.
        Deadline: int64
        /// True once a server answered with SERVFAIL/REFUSED/... (the final error then says
        /// ServerFailure rather than TimedOut).
        SawServerFailure: bool
    }

/// A cached outcome, positive or negative.
[<Struct>]
type DnsCacheEntry =
    {
        /// The outcome (a negative one: NameError or NoData).
        Result: DnsResult
        /// When it stops being valid (microseconds, the resolver's clock).
        Expires: int64
    }

/// The resolver's fixed settings: the servers and the numbers of its retransmission policy.
type DnsResolverSettings =
    {
        /// The servers, asked in order (address and port, normally 53).
        Servers: (IpAddr * uint16) array
        /// The first round's timeout per server (µs); each further round doubles it. 2 s, as
        /// the RFC 1536 §1 advice of "2-5 s" and the timeout glibc divides per server.
        Timeout: int64
        /// Rounds over the server list (resolv.conf's `attempts`, default 2).
        Attempts: int
        /// Time for a whole TCP exchange after a truncated answer (µs).
        TcpTimeout: int64
        /// At most this many cache entries; the one expiring first makes room.
        MaxCacheEntries: int
        /// At most this many questions outstanding at once (more fail at once with TimedOut).
        MaxOutstanding: int
        /// Positive TTLs are capped at this (seconds): 1 day, unbound's cache-max-ttl.
        MaxTtl: uint32
        /// Negative TTLs are capped at this (seconds): 3 hours, RFC 2308 §5's upper bound.
        MaxNegativeTtl: uint32
        /// CNAMEs followed inside one answer (RFC 1034 §3.6.2 chains; a bound against loops).
        MaxCnameChain: int
    }

/// The whole resolver: settings, cache, outstanding questions. A value; the functions of
/// DnsResolver return the next one with the actions to take.
type DnsResolverState =
    {
        /// The fixed settings.
        Settings: DnsResolverSettings
        /// Cached outcomes by question.
        Cache: Map<DnsKey, DnsCacheEntry>
        /// Outstanding questions.
        Queries: Map<DnsKey, DnsQuery>
        /// Which question each local UDP port serves.
        Ports: Map<uint16, DnsKey>
    }

/// A sans-I/O DNS stub resolver (RFC 1035, RFC 2308 negative caching, RFC 5452 answer checks,
/// RFC 7766 TCP after truncation). Time (`now`, microseconds) and randomness (`seed`, 64 bits
/// from a cryptographic generator per call, expanded here with SplitMix64 into IDs and ports)
/// are arguments; the runtime does the I/O the returned actions ask for.
[<RequireQualifiedAccess>]
module DnsResolver =

    /// The defaults: 2 s first timeout doubling per round, 2 rounds (glibc's RES_DFLRETRY),
    /// 5 s for a TCP exchange (glibc's RES_TIMEOUT), 512 cache entries, 256 outstanding.
    let defaultSettings (servers: (IpAddr * uint16) array) =
        {
            Servers = servers
            Timeout = 2_000_000L
            Attempts = 2
            TcpTimeout = 5_000_000L
            MaxCacheEntries = 512
            MaxOutstanding = 256
            MaxTtl = 86400u
            MaxNegativeTtl = 10800u
            MaxCnameChain = 8
        }

    /// A resolver with nothing cached or outstanding.
    let create (settings: DnsResolverSettings) =
        {
            Settings = settings
            Cache = Map.empty
            Queries = Map.empty
            Ports = Map.empty
        }

    /// The first port of the range queries are sent from (RFC 6335 §6 dynamic ports; RFC 5452
    /// §9.2 wants as many bits of port randomness as the range gives: 14 here, plus 16 of ID).
    [<Literal>]
    let FirstPort = 49152

    /// Normalizes a name to its key form: ASCII lower case, no final dot.
    let keyName (name: string) =
        let trimmed =
            if name.EndsWith '.' then
                name.Substring(0, name.Length - 1)
            else
                name

        trimmed.ToLowerInvariant()

    // SplitMix64: a deterministic expansion of the caller's seed into draws.
    type private Draws(seed: uint64) =
        let mutable state = seed

        member _.Next() : uint64 =
            state <- state + 0x9E3779B97F4A7C15UL
            let z = (state ^^^ (state >>> 30)) * 0xBF58476D1CE4E5B9UL
            let z = (z ^^^ (z >>> 27)) * 0x94D049BB133111EBUL
            z ^^^ (z >>> 31)

    /// The earliest deadline of any outstanding question, or Int64.MaxValue.
    let nextDeadline (state: DnsResolverState) : int64 =
        state.Queries |> Map.fold (fun m _ q -> min m q.Deadline) Int64.MaxValue

    let private seconds (micros: int64) = uint32 (max 0L (micros / 1_000_000L))

    // A result as seen at `now` from a cache entry: the TTL is what remains.
    let private fromCache (now: int64) (entry: DnsCacheEntry) =
        match entry.Result with
        | Addresses(addresses, _) -> Addresses(addresses, seconds (entry.Expires - now))
        | failed -> failed

    // Stores a result for ttl seconds (nothing for 0), making room when the cache is full: first
    // the expired entries go, then the one expiring first.
    let private store (now: int64) (key: DnsKey) (result: DnsResult) (ttl: uint32) (state: DnsResolverState) =
        if ttl = 0u || state.Settings.MaxCacheEntries < 1 then
            state
        else
            let mutable cache = state.Cache

            if not (cache.ContainsKey key) && cache.Count >= state.Settings.MaxCacheEntries then
                cache <- cache |> Map.filter (fun _ e -> e.Expires > now)

                if cache.Count >= state.Settings.MaxCacheEntries then
                    let victim = cache |> Seq.minBy (fun kv -> kv.Value.Expires)
                    cache <- cache.Remove victim.Key

            let entry =
                {
                    Result = result
                    Expires = now + int64 ttl * 1_000_000L
                }

            { state with
                Cache = cache.Add(key, entry)
            }

    // The timeout of round `round`: Timeout, doubled per round.
    let private timeoutOf (settings: DnsResolverSettings) (round: int) = settings.Timeout <<< min round 16

    // Sends the query for `q` to its current server over UDP from a fresh ID and port.
    let private transmit
        (now: int64)
        (draws: Draws)
        (actions: ResizeArray<DnsAction>)
        (q: DnsQuery)
        (state: DnsResolverState)
        =
        let mutable port = 0us
        let mutable tries = 0

        // A port no other transmission of ours holds (bounded: 16384 ports, at most a few
        // hundred in use).
        while port = 0us && tries < 64 do
            let candidate = uint16 (FirstPort + int (draws.Next() % 16384UL))

            if not (state.Ports.ContainsKey candidate) then
                port <- candidate

            tries <- tries + 1

        let id = uint16 (draws.Next() &&& 0xFFFFUL)
        let buffer = Array.zeroCreate<byte> Dns.MaxQueryLength
        let length = Dns.writeQuery (Span buffer) id q.Key.Name q.Key.Type
        let server, serverPort = state.Settings.Servers.[q.Server]
        actions.Add(SendUdp(q.Key, server, serverPort, port, buffer.AsSpan(0, length).ToArray()))

        let q =
            { q with
                Transmissions =
                    {
                        Id = id
                        LocalPort = port
                        Server = q.Server
                    }
                    :: q.Transmissions
                TcpId = ValueNone
                Deadline = now + timeoutOf state.Settings q.Round
            }

        { state with
            Queries = state.Queries.Add(q.Key, q)
            Ports = state.Ports.Add(port, q.Key)
        }

    // The question is over: close its sockets, cache the result, complete the callers.
    let private finish
        (now: int64)
        (actions: ResizeArray<DnsAction>)
        (q: DnsQuery)
        (result: DnsResult)
        (ttl: uint32)
        (state: DnsResolverState)
        =
        let mutable ports = state.Ports

        for t in q.Transmissions do
            actions.Add(CloseUdp t.LocalPort)
            ports <- ports.Remove t.LocalPort

        if q.TcpId.IsSome then
            actions.Add(CloseTcp q.Key)

        actions.Add(Complete(q.Key, result))

        let state =
            { state with
                Queries = state.Queries.Remove q.Key
                Ports = ports
            }

        store now q.Key result ttl state

    // The current attempt is over without an answer (timeout, server failure, TCP failure):
    // the next server, or the next round from the first server, or the end.
    let private advance
        (now: int64)
        (draws: Draws)
        (actions: ResizeArray<DnsAction>)
        (q: DnsQuery)
        (state: DnsResolverState)
        =
        if q.TcpId.IsSome then
            actions.Add(CloseTcp q.Key)

        let servers = state.Settings.Servers.Length

        let next, round =
            if q.Server + 1 < servers then
                q.Server + 1, q.Round
            else
                0, q.Round + 1

        if round >= state.Settings.Attempts then
            let failure =
                if q.SawServerFailure then
                    DnsFailure.ServerFailure
                else
                    DnsFailure.TimedOut

            finish now actions { q with TcpId = ValueNone } (Failed failure) 0u state
        else
            actions.Add(Count "dns.retransmitted")

            transmit
                now
                draws
                actions
                { q with
                    Server = next
                    Round = round
                    TcpId = ValueNone
                }
                state

    /// Asks `name` (already checked by `Dns.isValidName`) for `qtype`. A cached, unexpired
    /// outcome completes at once; a question already outstanding is shared (nothing new is
    /// sent: the runtime adds its caller to those waiting); otherwise the query goes to the
    /// first server. Without servers the question fails with TimedOut (the runtime reports that
    /// case itself before asking).
    let resolve (now: int64) (seed: uint64) (name: string) (qtype: uint16) (state: DnsResolverState) =
        let actions = ResizeArray<DnsAction>()
        let key = { Name = keyName name; Type = qtype }

        let state =
            match state.Cache.TryFind key with
            | Some entry when entry.Expires > now ->
                actions.Add(Count "dns.cache.hit")
                actions.Add(Complete(key, fromCache now entry))
                state
            | cached ->
                let state =
                    if cached.IsSome then
                        { state with
                            Cache = state.Cache.Remove key
                        }
                    else
                        state

                if state.Queries.ContainsKey key then
                    actions.Add(Count "dns.query.shared")
                    state
                elif
                    state.Settings.Servers.Length = 0
                    || state.Queries.Count >= state.Settings.MaxOutstanding
                then
                    actions.Add(Complete(key, Failed DnsFailure.TimedOut))
                    state
                else
                    actions.Add(Count "dns.query.sent")

                    let q =
                        {
                            Key = key
                            Transmissions = []
                            Server = 0
                            Round = 0
                            TcpId = ValueNone
                            Deadline = now
                            SawServerFailure = false
                        }

                    transmit now (Draws seed) actions q state

        struct (state, List.ofSeq actions)

    // The TTL of a negative answer (RFC 2308 §5): the SOA's MINIMUM or its own TTL, whichever
    // is less, capped; without an SOA in the authority section, not cached (§5: SHOULD NOT).
    let private negativeTtl (settings: DnsResolverSettings) (message: DnsMessage) =
        message.Authority
        |> List.tryPick (fun r ->
            match r.Data with
            | Soa soa when r.Type = Dns.TypeSoa -> Some(min (min soa.Minimum r.Ttl) settings.MaxNegativeTtl)
            | _ -> None)
        |> Option.defaultValue 0u

    /// What an answer to `key` says: ValueSome (result, ttl) for a final answer (addresses,
    /// NXDOMAIN, NODATA), ValueNone for server trouble (another server should be asked).
    /// CNAMEs are followed inside the answer from the name asked (RFC 1034 §3.6.2, at most
    /// MaxCnameChain); the TTL is the least of the records used, capped.
    let interpret
        (settings: DnsResolverSettings)
        (key: DnsKey)
        (message: DnsMessage)
        : struct (DnsResult * uint32) voption =
        match Dns.rcode message.Flags with
        | Dns.RcodeNameError -> ValueSome(struct (Failed DnsFailure.NameError, negativeTtl settings message))
        | Dns.RcodeNoError ->
            let mutable current = key.Name
            let mutable ttl = settings.MaxTtl
            let mutable hops = 0
            let mutable found = []
            let mutable chasing = true

            while chasing do
                let owned =
                    message.Answers
                    |> List.filter (fun r -> Dns.namesEqual r.Name current && r.Class = Dns.ClassIn)

                let addresses =
                    owned
                    |> List.choose (fun r ->
                        match r.Data with
                        | A a when key.Type = Dns.TypeA -> Some(V4 a, r.Ttl)
                        | Aaaa a when key.Type = Dns.TypeAaaa -> Some(V6 a, r.Ttl)
                        | _ -> None)

                if not addresses.IsEmpty then
                    found <- addresses |> List.map fst
                    ttl <- addresses |> List.fold (fun m (_, t) -> min m t) ttl
                    chasing <- false
                else
                    match
                        owned
                        |> List.tryPick (fun r ->
                            match r.Data with
                            | Cname target -> Some(target, r.Ttl)
                            | _ -> None)
                    with
                    | Some(target, t) when hops < settings.MaxCnameChain ->
                        current <- target
                        ttl <- min ttl t
                        hops <- hops + 1
                    | _ -> chasing <- false

            if found.IsEmpty then
                ValueSome(struct (Failed DnsFailure.NoData, negativeTtl settings message))
            else
                ValueSome(struct (Addresses(found, ttl), ttl))
        | _ -> ValueNone

    // The checks every answer passes (RFC 5452 §9.1): a response, a standard query, exactly
    // the question asked (name without case, type, class). None: passes; Some counter: ignored.
    let private checkAnswer (key: DnsKey) (message: DnsMessage) =
        if not (Dns.isResponse message.Flags) || Dns.opcode message.Flags <> 0 then
            Some "dns.drop.not-response"
        else
            match message.Questions with
            | [ q ] when Dns.namesEqual q.Name key.Name && q.Type = key.Type && q.Class = Dns.ClassIn -> None
            | _ -> Some "dns.drop.wrong-question"

    // An answer that passed the checks, over UDP (udp = true) or TCP.
    let private answered
        (now: int64)
        (draws: Draws)
        (actions: ResizeArray<DnsAction>)
        (q: DnsQuery)
        (message: DnsMessage)
        (udp: bool)
        (state: DnsResolverState)
        =
        if udp && Dns.isTruncated message.Flags then
            // RFC 7766 §5 (and RFC 1035 §4.2.1): the full answer is asked over TCP, from the
            // same server, with a fresh ID.
            actions.Add(Count "dns.truncated")
            let id = uint16 (draws.Next() &&& 0xFFFFUL)
            let buffer = Array.zeroCreate<byte> Dns.MaxQueryLength
            let length = Dns.writeQuery (Span buffer) id q.Key.Name q.Key.Type
            let server, serverPort = state.Settings.Servers.[q.Server]
            actions.Add(SendTcp(q.Key, server, serverPort, Dns.frameForTcp (ReadOnlySpan(buffer, 0, length))))

            let q =
                { q with
                    TcpId = ValueSome id
                    Deadline = now + state.Settings.TcpTimeout
                }

            { state with
                Queries = state.Queries.Add(q.Key, q)
            }
        else
            match interpret state.Settings q.Key message with
            | ValueSome(struct (result, ttl)) ->
                actions.Add(Count "dns.answered")
                finish now actions q result ttl state
            | ValueNone ->
                actions.Add(Count "dns.server-failure")
                advance now draws actions { q with SawServerFailure = true } state

    /// A datagram arrived on `localPort` from `source`:`sourcePort`. It is taken only if it
    /// answers a transmission sent from that port to that server with that ID, for the same
    /// question (RFC 5452 §9.1); anything else is ignored and counted.
    let datagram
        (now: int64)
        (seed: uint64)
        (localPort: uint16)
        (source: IpAddr)
        (sourcePort: uint16)
        (bytes: ReadOnlySpan<byte>)
        (state: DnsResolverState)
        =
        let actions = ResizeArray<DnsAction>()

        let drop (counter: string) =
            actions.Add(Count counter)
            state

        let state =
            match state.Ports.TryFind localPort |> Option.bind state.Queries.TryFind with
            | None -> drop "dns.drop.no-query"
            | Some q ->
                match q.Transmissions |> List.tryFind (fun t -> t.LocalPort = localPort) with
                | None -> drop "dns.drop.no-query"
                | Some t ->
                    let server, serverPort = state.Settings.Servers.[t.Server]

                    if source <> server || sourcePort <> serverPort then
                        drop "dns.drop.wrong-source"
                    else
                        match Dns.tryReadHeader bytes with
                        | ValueNone -> drop "dns.drop.malformed"
                        | ValueSome(struct (id, _)) when id <> t.Id -> drop "dns.drop.wrong-id"
                        | ValueSome _ ->
                            match Dns.parse bytes with
                            | Error _ -> drop "dns.drop.malformed"
                            | Ok message ->
                                match checkAnswer q.Key message with
                                | Some counter -> drop counter
                                | None ->
                                    if q.TcpId.IsSome then
                                        // Already asking over TCP: a late UDP answer is truncated too.
                                        drop "dns.drop.late"
                                    else
                                        answered now (Draws seed) actions q message true state

        struct (state, List.ofSeq actions)

    /// The answer read over TCP for `key` (without the two-byte length). A malformed or
    /// mismatched answer counts as a failed attempt: the next server is asked.
    let tcpAnswer (now: int64) (seed: uint64) (key: DnsKey) (bytes: ReadOnlySpan<byte>) (state: DnsResolverState) =
        let actions = ResizeArray<DnsAction>()

        let state =
            match state.Queries.TryFind key with
            | Some q when q.TcpId.IsSome ->
                let fail counter =
                    actions.Add(Count counter)
                    advance now (Draws seed) actions { q with SawServerFailure = true } state

                match Dns.parse bytes with
                | Error _ -> fail "dns.drop.malformed"
                | Ok message when message.Id <> q.TcpId.Value -> fail "dns.drop.wrong-id"
                | Ok message ->
                    match checkAnswer q.Key message with
                    | Some counter -> fail counter
                    | None -> answered now (Draws seed) actions q message false state
            | _ ->
                actions.Add(Count "dns.drop.no-query")
                state

        struct (state, List.ofSeq actions)

    /// The TCP exchange for `key` failed (refused, reset, closed early): the next server.
    let tcpFailed (now: int64) (seed: uint64) (key: DnsKey) (state: DnsResolverState) =
        let actions = ResizeArray<DnsAction>()

        let state =
            match state.Queries.TryFind key with
            | Some q when q.TcpId.IsSome ->
                actions.Add(Count "dns.tcp.failed")
                advance now (Draws seed) actions q state
            | _ -> state

        struct (state, List.ofSeq actions)

    /// A UDP transmission could not be sent (its port was taken, the send failed): the attempt
    /// ends at once, as if it had timed out.
    let udpFailed (now: int64) (seed: uint64) (localPort: uint16) (state: DnsResolverState) =
        let actions = ResizeArray<DnsAction>()

        let state =
            match state.Ports.TryFind localPort |> Option.bind state.Queries.TryFind with
            | Some q when q.TcpId.IsNone && (List.head q.Transmissions).LocalPort = localPort ->
                actions.Add(Count "dns.udp.failed")
                advance now (Draws seed) actions q state
            | _ -> state

        struct (state, List.ofSeq actions)

    /// The timers: every question whose attempt timed out moves on (next server, next round,
    /// or TimedOut). Expired cache entries are left to be replaced on use or eviction.
    let timer (now: int64) (seed: uint64) (state: DnsResolverState) =
        let actions = ResizeArray<DnsAction>()
        let draws = Draws seed
        let mutable state = state

        for q in state.Queries.Values |> Seq.filter (fun q -> q.Deadline <= now) |> List.ofSeq do
            actions.Add(Count(if q.TcpId.IsSome then "dns.tcp.timeout" else "dns.timeout"))
            state <- advance now draws actions q state

        struct (state, List.ofSeq actions)

/// Combining the A and AAAA outcomes of one name, as getaddrinfo does for AF_UNSPEC.
[<RequireQualifiedAccess>]
module DnsOutcome =

    /// Addresses if either family has some; else NameError if either says the name does not
    /// exist; else ServerFailure or TimedOut if either could not be answered (the caller may
    /// try again); else NoData.
    let combine (results: DnsResult list) : DnsResult =
        let addresses =
            results
            |> List.choose (fun r ->
                match r with
                | Addresses(a, ttl) -> Some(a, ttl)
                | Failed _ -> None)

        if not addresses.IsEmpty then
            Addresses(addresses |> List.collect fst, addresses |> List.map snd |> List.min)
        else
            let failures =
                results
                |> List.choose (fun r ->
                    match r with
                    | Failed f -> Some f
                    | Addresses _ -> None)

            if failures |> List.contains DnsFailure.NameError then
                Failed DnsFailure.NameError
            elif failures |> List.contains DnsFailure.ServerFailure then
                Failed DnsFailure.ServerFailure
            elif failures |> List.contains DnsFailure.TimedOut then
                Failed DnsFailure.TimedOut
            else
                Failed DnsFailure.NoData

/// Happy Eyeballs version 2 (RFC 8305): the numbers and the address order; the runtime races
/// the connection attempts by them.
[<RequireQualifiedAccess>]
module HappyEyeballs =

    /// RFC 8305 §3: after an A answer, wait this long for the AAAA answer before connecting
    /// (recommended 50 ms).
    [<Literal>]
    let ResolutionDelayMicroseconds = 50_000L

    /// RFC 8305 §5: start the next attempt this long after the previous one unless it failed
    /// earlier (recommended 250 ms; at least 100 ms, §5's minimum).
    [<Literal>]
    let ConnectionAttemptDelayMicroseconds = 250_000L

    /// RFC 8305 §4: addresses already in RFC 6724 order, interleaved by family starting with
    /// the family of the first (First Address Family Count 1).
    let interleave (ordered: IpAddr list) : IpAddr list =
        match ordered with
        | [] -> []
        | first :: _ ->
            let preferred, other = ordered |> List.partition (fun a -> a.IsIpv6 = first.IsIpv6)

            let rec merge a b =
                match a, b with
                | x :: xs, y :: ys -> x :: y :: merge xs ys
                | [], rest
                | rest, [] -> rest

            merge preferred other

/// RFC 6724 §6 destination address ordering, for the rules that apply to a host with at most
/// one source address per family: rule 1 (avoid unusable destinations: a family without a
/// source goes last), rule 2 (prefer matching scope), rule 6 (prefer higher precedence, the
/// §2.1 default policy table, with §10.6's ULA row: a destination in the /48 of our own ULA
/// source gets precedence 45), rule 8 (prefer smaller scope), and otherwise the order given
/// (rule 10). Rules 3, 4, 5, 7 and 9 need deprecated addresses, home addresses, labels of
/// several sources or native-vs-tunnel knowledge the stack does not have.
[<RequireQualifiedAccess>]
module DestinationOrder =

    // Scope (RFC 6724 §3.1, RFC 4007): 2 link-local, 5 site-local, 14 global.
    let scope (address: IpAddr) =
        match address with
        | V4 a ->
            let v = a.Value
            // 127/8 and 169.254/16 are link-local scope for this purpose (RFC 6724 §3.2).
            if v >>> 24 = 127u || v >>> 16 = 0xA9FEu then 2 else 14
        | V6 a ->
            if a.High = 0UL && a.Low = 1UL then 2
            elif a.IsMulticast then int ((a.High >>> 48) &&& 0xFUL)
            elif (a.High >>> 54) = 0x3FAUL then 2 // fe80::/10
            elif (a.High >>> 54) = 0x3FBUL then 5 // fec0::/10
            else 14

    /// The default policy table's precedence (RFC 6724 §2.1), IPv4 as ::ffff:0:0/96, and the
    /// §10.6 ULA row for the source's own /48.
    let precedence (source6: Ipv6Address voption) (address: IpAddr) =
        match address with
        | V4 _ -> 35
        | V6 a ->
            let ula = (a.High >>> 57) = 0x7EUL // fc00::/7

            if a.High = 0UL && a.Low = 1UL then
                50
            elif
                ula
                && (match source6 with
                    | ValueSome s -> (s.High >>> 16) = (a.High >>> 16)
                    | ValueNone -> false)
            then
                45
            elif a.High >>> 48 = 0x2002UL then
                30
            elif a.High >>> 32 = 0x20010000UL then
                5
            elif ula then
                3
            elif a.High = 0UL && a.Low >>> 32 = 0UL then
                1 // ::/96
            elif (a.High >>> 54) = 0x3FBUL || a.High >>> 48 = 0x3FFEUL then
                1
            elif a.High = 0UL && a.Low >>> 32 = 0xFFFFUL then
                35
            else
                40

    /// `addresses` in RFC 6724 order for a host whose sources are `source4` and `source6`.
    let order (source4: Ipv4Address voption) (source6: Ipv6Address voption) (addresses: IpAddr list) =
        let sourceOf (d: IpAddr) =
            match d with
            | V4 _ -> source4 |> ValueOption.map V4
            | V6 _ -> source6 |> ValueOption.map V6

        addresses
        |> List.mapi (fun i d ->
            let source = sourceOf d
            let usable = source.IsSome

            let matching =
                match source with
                | ValueSome s -> scope s = scope d
                | ValueNone -> false

            // Sort keys, smaller first: rule 1, 2, 6 (higher first), 8, then the given order.
            (struct ((if usable then 0 else 1), (if matching then 0 else 1), -(precedence source6 d), scope d, i), d))
        |> List.sortBy fst
        |> List.map snd
