/// The sans-I/O stub resolver with a virtual clock: the retransmission schedule (2 s doubling, 2
/// rounds over the servers), RFC 5452 checks, TC → TCP (RFC 7766), caching with TTLs, RFC 2308
/// negative caching with the SOA minimum, the bounded cache; RFC 6724 order and RFC 8305
/// interleaving. Answers are built here from the RFC's layout with the test's own numbers.
module NetStack.Tests.Stack.DnsResolverTests

open System
open Expecto
open NetStack.Core.Wire
open NetStack.Core.Stack

let private s1 = V4(Ipv4Address.Parse "10.0.0.53")
let private s2 = V4(Ipv4Address.Parse "10.0.0.54")
let private second = 1_000_000L

let private fresh () =
    DnsResolver.create (DnsResolver.defaultSettings [| s1, 53us; s2, 53us |])

let private sends (actions: DnsAction list) =
    actions
    |> List.choose (fun a ->
        match a with
        | SendUdp(_, server, port, local, query) -> Some(server, port, local, query)
        | _ -> None)

let private completions (actions: DnsAction list) =
    actions
    |> List.choose (fun a ->
        match a with
        | Complete(key, result) -> Some(key, result)
        | _ -> None)

let private counted (name: string) (actions: DnsAction list) = actions |> List.contains (Count name)

let private queryOf (bytes: byte[]) =
    match Dns.parse (ReadOnlySpan bytes) with
    | Ok m -> m
    | Error e -> failtestf "our query does not parse: %A" e

let private a (text: string) = V4(Ipv4Address.Parse text)

let private record name ttl data =
    {
        Name = name
        Type =
            (match data with
             | A _ -> 1us
             | Aaaa _ -> 28us
             | Cname _ -> 5us
             | Soa _ -> 6us
             | Opaque _ -> 16us)
        Class = 1us
        Ttl = ttl
        Data = data
    }

let private soa ttl minimum =
    record
        "example.test"
        ttl
        (Soa
            {
                PrimaryServer = "ns.example.test"
                Mailbox = "admin.example.test"
                Serial = 1u
                Refresh = 3600u
                Retry = 600u
                Expire = 86400u
                Minimum = minimum
            })

// A response to `query` (its ID and question), flags QR RD RA + extra, with the sections given.
let private answer (query: byte[]) (extraFlags: uint16) (answers: DnsRecord list) (authority: DnsRecord list) =
    let q = queryOf query

    Dns.toBytes
        { q with
            Flags = 0x8180us ||| extraFlags
            Answers = answers
            Authority = authority
        }

let private deliver now (server, port, local, bytes: byte[]) state =
    DnsResolver.datagram now 7UL local server port (ReadOnlySpan bytes) state

// `bytes` (a message) with its question replaced.
let private withQuestion (bytes: byte[]) (name: string) (qtype: uint16) =
    let m = queryOf bytes

    Dns.toBytes
        { m with
            Questions =
                [
                    {
                        Name = name
                        Type = qtype
                        Class = 1us
                    }
                ]
        }

let private addresses (r: DnsResult) =
    match r with
    | Addresses(list, _) -> list
    | Failed f -> failtestf "failed: %A" f


// The question's state as the resolver holds it, in the model's terms.
let private stateOf (key: DnsKey) (state: DnsResolverState) =
    match state.Queries.TryFind key with
    | None -> DnsQueryState.Absent
    | Some q when q.TcpId.IsSome -> DnsQueryState.Tcp
    | Some _ -> DnsQueryState.Udp

// Random walks over one question, two servers: the test picks an input, classifies it itself
// (which trigger it is, from its own bookkeeping of the resolver's transmissions, deadlines and the cache), asks the
// model where the question goes, and compares with the resolver. Returns the edges it took.
let private walk (seed: int) =
    let random = Random seed
    let key = { Name = "q.test"; Type = 1us }
    let mutable state = fresh ()
    let mutable now = 0L
    let mutable transmission = 0
    let mutable sentAt = 0L
    let mutable cachedUntil = Int64.MinValue
    let mutable lastUdp: (IpAddr * uint16 * uint16 * byte[]) option = None
    let mutable lastTcp: byte[] option = None
    let mutable closedPort = 50000us
    let taken = Collections.Generic.HashSet<DnsQueryState * DnsQueryTrigger>()

    let remember (actions: DnsAction list) =
        for a in actions do
            match a with
            | SendUdp(_, server, port, local, query) -> lastUdp <- Some(server, port, local, query)
            | SendTcp(_, _, _, framed) -> lastTcp <- Some framed.[2..]
            | CloseUdp port -> closedPort <- port
            | _ -> ()

    for _ in 1..60 do
        let before = stateOf key state
        let udp = before = DnsQueryState.Udp
        let tcp = before = DnsQueryState.Tcp
        // The deadline by the documented policy: 2 s doubling per round of two servers, 5 s over TCP.
        let deadline =
            sentAt
            + (if tcp then
                   5L * second
               else
                   (2L * second) <<< (transmission / 2))

        let lastTransmission = transmission = 3

        let input =
            match random.Next 7 with
            | 0 ->
                let trigger =
                    if before <> DnsQueryState.Absent then
                        DnsQueryTrigger.SharedAsk
                    elif now < cachedUntil then
                        DnsQueryTrigger.CacheHit
                    else
                        DnsQueryTrigger.Ask

                Some(trigger, (fun s -> DnsResolver.resolve now 1UL "Q.test" 1us s))
            | 1 ->
                // A wrong ID to the latest port while asking, else to a port already closed.
                match lastUdp with
                | Some(server, port, local, query) when before <> DnsQueryState.Absent ->
                    let bytes = answer query 0us [] []
                    bytes.[0] <- bytes.[0] ^^^ 0x5Auy
                    Some(DnsQueryTrigger.Mismatch, deliver now (server, port, local, bytes))
                | _ ->
                    Some(
                        DnsQueryTrigger.Mismatch,
                        deliver
                            now
                            (s1,
                             53us,
                             closedPort,
                             answer
                                 (Dns.toBytes
                                     {
                                         Id = 1us
                                         Flags = 0us
                                         Questions =
                                             [
                                                 {
                                                     Name = "q.test"
                                                     Type = 1us
                                                     Class = 1us
                                                 }
                                             ]
                                         Answers = []
                                         Authority = []
                                         Additional = []
                                     })
                                 0us
                                 []
                                 [])
                    )
            | 2 when udp || tcp ->
                let (server, port, local, query) = lastUdp.Value
                Some(DnsQueryTrigger.Truncated, deliver now (server, port, local, answer query 0x0200us [] []))
            | 3 when udp ->
                let (server, port, local, query) = lastUdp.Value

                let reply =
                    answer query 0us [ record "q.test" 1u (A(Ipv4Address.Parse "192.0.2.1")) ] []

                Some(DnsQueryTrigger.Answer, deliver now (server, port, local, reply))
            | 3 when tcp ->
                let reply =
                    answer lastTcp.Value 0us [ record "q.test" 1u (A(Ipv4Address.Parse "192.0.2.1")) ] []

                Some(DnsQueryTrigger.Answer, (fun s -> DnsResolver.tcpAnswer now 1UL key (ReadOnlySpan reply) s))
            | 4 when udp ->
                let (server, port, local, query) = lastUdp.Value

                let trigger =
                    if lastTransmission then
                        DnsQueryTrigger.GiveUp
                    else
                        DnsQueryTrigger.Retry

                Some(trigger, deliver now (server, port, local, answer query 2us [] []))
            | 4 when tcp ->
                let trigger =
                    if lastTransmission then
                        DnsQueryTrigger.GiveUp
                    else
                        DnsQueryTrigger.Retry

                Some(trigger, (fun s -> DnsResolver.tcpFailed now 1UL key s))
            | 5 when udp || tcp ->
                now <- deadline

                let trigger =
                    if lastTransmission then
                        DnsQueryTrigger.GiveUp
                    else
                        DnsQueryTrigger.Retry

                Some(trigger, (fun s -> DnsResolver.timer now 1UL s))
            | _ ->
                // Time passes, short of any deadline: nothing happens to the question.
                now <-
                    now
                    + (if udp || tcp then
                           min (second / 2L) (deadline - now - 1L)
                       else
                           second / 2L)

                let struct (next, actions) = DnsResolver.timer now 1UL state
                Expect.equal (stateOf key next) before "no deadline passed"
                remember actions
                state <- next
                None

        match input with
        | None -> ()
        | Some(trigger, step) ->
            let expected =
                match DnsQueryModel.after before trigger with
                | ValueSome t -> t
                | ValueNone -> failtestf "seed %d: the model has no %A in %A" seed trigger before

            let struct (next, actions) = step state
            let actual = stateOf key next
            Expect.equal actual expected $"seed {seed}: {before} --{trigger}--> (model) vs resolver"
            taken.Add((before, trigger)) |> ignore
            remember actions

            match trigger with
            | DnsQueryTrigger.Ask ->
                transmission <- 0
                sentAt <- now
            | DnsQueryTrigger.Retry ->
                transmission <- transmission + 1
                sentAt <- now
            | DnsQueryTrigger.Truncated when before = DnsQueryState.Udp -> sentAt <- now
            | DnsQueryTrigger.Answer -> cachedUntil <- now + second
            | _ -> ()

            state <- next

    taken

[<Tests>]
let tests =
    testList
        "Dns resolver"
        [
            test "a question goes to the first server from a port in 49152..65535 as a standard query with RD" {
                let struct (state, actions) =
                    DnsResolver.resolve 0L 1UL "WWW.Example.TEST" Dns.TypeA (fresh ())

                match sends actions with
                | [ server, port, local, query ] ->
                    Expect.equal (server, port) (s1, 53us) "first server"
                    Expect.isGreaterThanOrEqual (int local) 49152 "port range"
                    let m = queryOf query
                    Expect.equal m.Flags 0x0100us "RD only"

                    Expect.equal
                        m.Questions
                        [
                            {
                                Name = "www.example.test"
                                Type = 1us
                                Class = 1us
                            }
                        ]
                        "question, lower-cased"
                | other -> failtestf "expected one send, got %A" other

                Expect.equal (DnsResolver.nextDeadline state) (2L * second) "first timeout 2 s"
            }

            test "retransmission: 2 s to server 1, 2 s to server 2, 4 s to each in round 2, then TimedOut at 12 s" {
                let struct (state, first) = DnsResolver.resolve 0L 1UL "a.test" Dns.TypeA (fresh ())
                let mutable state = state
                let mutable log = [ 0L, sends first |> List.map (fun (s, _, _, _) -> s) ]
                let mutable result = None
                let mutable now = 0L

                // Tick every 100 ms up to 13 s; note when sends and the completion happen.
                while now <= 13L * second do
                    let struct (next, actions) = DnsResolver.timer now (uint64 now) state
                    state <- next

                    match sends actions with
                    | [] -> ()
                    | s -> log <- log @ [ now, s |> List.map (fun (s, _, _, _) -> s) ]

                    match completions actions with
                    | [ _, r ] -> result <- Some(now, r)
                    | _ -> ()

                    now <- now + second / 10L

                Expect.equal
                    log
                    [ 0L, [ s1 ]; 2L * second, [ s2 ]; 4L * second, [ s1 ]; 8L * second, [ s2 ] ]
                    "schedule"

                Expect.equal result (Some(12L * second, Failed DnsFailure.TimedOut)) "gives up after 2+2+4+4 s"
                Expect.isTrue state.Queries.IsEmpty "nothing outstanding"
                Expect.isTrue state.Ports.IsEmpty "every port released"
            }

            test "every transmission has its own port and ID; a late answer to the first is still taken" {
                let struct (state, first) =
                    DnsResolver.resolve 0L 11UL "a.test" Dns.TypeA (fresh ())

                let struct (state, retry) = DnsResolver.timer (2L * second) 12UL state
                let (_, _, port1, query1) = (sends first).Head
                let (_, _, port2, query2) = (sends retry).Head
                Expect.notEqual port1 port2 "ports"
                Expect.notEqual ((queryOf query1).Id) ((queryOf query2).Id) "IDs (for these seeds)"

                let reply =
                    answer query1 0us [ record "a.test" 60u (A(Ipv4Address.Parse "192.0.2.1")) ] []

                let struct (state, actions) = deliver (3L * second) (s1, 53us, port1, reply) state

                Expect.equal
                    (completions actions |> List.map snd |> List.map addresses)
                    [ [ a "192.0.2.1" ] ]
                    "answered"

                Expect.containsAll actions [ CloseUdp port1; CloseUdp port2 ] "both sockets closed"
                Expect.isTrue state.Ports.IsEmpty "ports released"
            }

            test "RFC 5452: wrong ID, wrong question, wrong source address or port are ignored and counted" {
                let struct (state, first) = DnsResolver.resolve 0L 3UL "a.test" Dns.TypeA (fresh ())
                let (_, _, port, query) = (sends first).Head

                let good =
                    answer query 0us [ record "a.test" 60u (A(Ipv4Address.Parse "192.0.2.1")) ] []

                let wrongId = Array.copy good
                wrongId.[0] <- wrongId.[0] ^^^ 0xFFuy

                let wrongQuestion = withQuestion good "b.test" 1us

                let wrongType = withQuestion good "a.test" 28us

                let query = Array.copy good
                query.[2] <- query.[2] &&& 0x7Fuy // QR cleared

                let cases =
                    [
                        (s1, 53us, port, wrongId), "dns.drop.wrong-id"
                        (s1, 53us, port, wrongQuestion), "dns.drop.wrong-question"
                        (s1, 53us, port, wrongType), "dns.drop.wrong-question"
                        (s2, 53us, port, good), "dns.drop.wrong-source"
                        (s1, 5353us, port, good), "dns.drop.wrong-source"
                        (s1, 53us, port, query), "dns.drop.not-response"
                        (s1, 53us, port, good.[..20]), "dns.drop.malformed"
                        (s1, 53us, (if port = 65535us then 65534us else port + 1us), good), "dns.drop.no-query"
                    ]

                let mutable state = state

                for input, counter in cases do
                    let struct (next, actions) = deliver second input state
                    Expect.equal actions [ Count counter ] $"{counter}: ignored and counted"
                    Expect.equal next state "state unchanged"
                    state <- next

                // Case does not matter (RFC 4343): the question in upper case is taken.
                let upper = withQuestion good "A.TEST" 1us

                let struct (_, actions) = deliver second (s1, 53us, port, upper) state
                Expect.equal (completions actions).Length 1 "taken"
            }

            test "TC=1: the question goes to the same server over TCP with a fresh ID; the TCP answer completes it" {
                let struct (state, first) =
                    DnsResolver.resolve 0L 5UL "big.test" Dns.TypeA (fresh ())

                let (_, _, port, query) = (sends first).Head

                let struct (state, actions) =
                    deliver second (s1, 53us, port, answer query 0x0200us [] []) state

                Expect.isTrue (counted "dns.truncated" actions) "counted"

                let framed =
                    actions
                    |> List.pick (fun a ->
                        match a with
                        | SendTcp(_, server, 53us, framed) when server = s1 -> Some framed
                        | _ -> None)

                // RFC 1035 §4.2.2: a two-byte length, then the message.
                Expect.equal (int framed.[0] * 256 + int framed.[1]) (framed.Length - 2) "length prefix"
                let tcpQuery = framed.[2..]
                Expect.equal (DnsResolver.nextDeadline state) (6L * second) "5 s for the TCP exchange"

                let many =
                    [
                        for i in 1..40 -> record "big.test" 300u (A(Ipv4Address.OfOctets(192uy, 0uy, 2uy, byte i)))
                    ]

                // An answer with the UDP query's ID over TCP is refused (a fresh ID was used).
                if (queryOf tcpQuery).Id <> (queryOf query).Id then
                    let wrong = answer query 0us many []

                    let struct (s, acts) =
                        DnsResolver.tcpAnswer second 1UL { Name = "big.test"; Type = 1us } (ReadOnlySpan wrong) state

                    Expect.isTrue (counted "dns.drop.wrong-id" acts) "wrong id over TCP"
                    Expect.equal (sends acts |> List.map (fun (s, _, _, _) -> s)) [ s2 ] "next server"
                    ignore s

                let reply = answer tcpQuery 0us many []

                let struct (state, actions) =
                    DnsResolver.tcpAnswer second 1UL { Name = "big.test"; Type = 1us } (ReadOnlySpan reply) state

                Expect.equal
                    (completions actions |> List.map snd |> List.map addresses |> List.head).Length
                    40
                    "40 addresses"

                Expect.contains actions (CloseTcp { Name = "big.test"; Type = 1us }) "TCP closed"
                Expect.isTrue state.Queries.IsEmpty "done"
            }

            test "the cache answers until the TTL runs out, with the TTL that remains" {
                let struct (state, first) = DnsResolver.resolve 0L 1UL "a.test" Dns.TypeA (fresh ())
                let (_, _, port, query) = (sends first).Head

                let reply =
                    answer query 0us [ record "a.test" 30u (A(Ipv4Address.Parse "192.0.2.1")) ] []

                let struct (state, _) = deliver second (s1, 53us, port, reply) state
                // Stored at 1 s for 30 s.
                let struct (_, hit) =
                    DnsResolver.resolve (21L * second) 2UL "A.test." Dns.TypeA state

                Expect.isEmpty (sends hit) "no query"
                Expect.equal (completions hit |> List.map snd) [ Addresses([ a "192.0.2.1" ], 10u) ] "10 s left"

                let struct (_, expired) =
                    DnsResolver.resolve (31L * second) 2UL "a.test" Dns.TypeA state

                Expect.equal (sends expired).Length 1 "asked again at expiry"
            }

            test "NXDOMAIN and NODATA are cached for min(SOA TTL, MINIMUM) (RFC 2308 §5); without an SOA not at all" {
                let run name rcode authority =
                    let struct (state, first) = DnsResolver.resolve 0L 1UL name Dns.TypeA (fresh ())
                    let (_, _, port, query) = (sends first).Head

                    let struct (state, actions) =
                        deliver 0L (s1, 53us, port, answer query rcode [] authority) state

                    (completions actions |> List.head |> snd), state

                let nx, state = run "nx.test" 3us [ soa 3600u 60u ]
                Expect.equal nx (Failed DnsFailure.NameError) "NXDOMAIN"

                let struct (_, at59) =
                    DnsResolver.resolve (59L * second) 1UL "nx.test" Dns.TypeA state

                Expect.equal (completions at59 |> List.map snd) [ Failed DnsFailure.NameError ] "cached at 59 s"

                let struct (_, at60) =
                    DnsResolver.resolve (60L * second) 1UL "nx.test" Dns.TypeA state

                Expect.equal (sends at60).Length 1 "asked again at 60 s"

                let nodata, state = run "nodata.test" 0us [ soa 20u 600u ]
                Expect.equal nodata (Failed DnsFailure.NoData) "NODATA"

                let struct (_, at19) =
                    DnsResolver.resolve (19L * second) 1UL "nodata.test" Dns.TypeA state

                Expect.equal
                    (completions at19 |> List.map snd)
                    [ Failed DnsFailure.NoData ]
                    "the SOA's own TTL (20 s) bounds it"

                let struct (_, at20) =
                    DnsResolver.resolve (20L * second) 1UL "nodata.test" Dns.TypeA state

                Expect.equal (sends at20).Length 1 "asked again at 20 s"

                let _, state = run "nosoa.test" 3us []
                Expect.isFalse (state.Cache.ContainsKey { Name = "nosoa.test"; Type = 1us }) "not cached"
            }

            test "the cache holds MaxCacheEntries; the entry expiring first makes room" {
                let settings =
                    { DnsResolver.defaultSettings [| s1, 53us |] with
                        MaxCacheEntries = 3
                    }

                let mutable state = DnsResolver.create settings

                for name, ttl in [ "a", 50u; "b", 10u; "c", 40u; "d", 30u; "e", 20u ] do
                    let struct (s, first) = DnsResolver.resolve 0L 1UL name Dns.TypeA state
                    let (_, _, port, query) = (sends first).Head

                    let struct (s, _) =
                        deliver
                            0L
                            (s1, 53us, port, answer query 0us [ record name ttl (A(Ipv4Address.Parse "192.0.2.9")) ] [])
                            s

                    state <- s

                // a, b, c fill it; d evicts b (10 s); e evicts d (30 s, the first of a 50, c 40, d 30).
                Expect.equal
                    (state.Cache |> Map.toList |> List.map (fun (k, _) -> k.Name))
                    [ "a"; "c"; "e" ]
                    "evictions"
            }

            test "concurrent identical questions share one query" {
                let struct (state, first) = DnsResolver.resolve 0L 1UL "a.test" Dns.TypeA (fresh ())
                let struct (_, again) = DnsResolver.resolve 0L 2UL "A.TEST" Dns.TypeA state
                Expect.equal (sends first).Length 1 "one query"
                Expect.equal again [ Count "dns.query.shared" ] "shared"
            }

            test "CNAME chains are followed inside the answer; a loop ends in NODATA" {
                let settings = DnsResolver.defaultSettings [| s1, 53us |]
                let key = { Name = "www.test"; Type = 1us }

                let chain =
                    {
                        Id = 1us
                        Flags = 0x8180us
                        Questions = []
                        Answers =
                            [
                                record "web.test" 100u (A(Ipv4Address.Parse "192.0.2.7"))
                                record "WWW.test" 300u (Cname "edge.test")
                                record "edge.test" 50u (Cname "web.test")
                            ]
                        Authority = []
                        Additional = []
                    }

                Expect.equal
                    (DnsResolver.interpret settings key chain)
                    (ValueSome(struct (Addresses([ a "192.0.2.7" ], 50u), 50u)))
                    "two CNAMEs, least TTL"

                let loop =
                    { chain with
                        Answers =
                            [
                                record "www.test" 300u (Cname "edge.test")
                                record "edge.test" 300u (Cname "www.test")
                            ]
                    }

                Expect.equal
                    (DnsResolver.interpret settings key loop)
                    (ValueSome(struct (Failed DnsFailure.NoData, 0u)))
                    "loop"
            }

            test "SERVFAIL moves to the next server at once; SERVFAIL from all, every round, is ServerFailure" {
                let struct (state0, actions0) =
                    DnsResolver.resolve 0L 1UL "a.test" Dns.TypeA (fresh ())

                let mutable state = state0
                let mutable actions = actions0
                let mutable servers = []
                let mutable result = None

                while result.IsNone do
                    let (server, port, local, query) = (sends actions).Head
                    servers <- servers @ [ server ]

                    let struct (s, acts) =
                        deliver second (server, port, local, answer query 2us [] []) state

                    state <- s
                    actions <- acts
                    result <- completions acts |> List.tryHead

                Expect.equal servers [ s1; s2; s1; s2 ] "each server, both rounds"
                Expect.equal (result |> Option.map snd) (Some(Failed DnsFailure.ServerFailure)) "ServerFailure"
            }

            test "RFC 6724: IPv6 in our ULA /48 before IPv4, IPv4 before other ULA, unusable families last" {
                let src4 = ValueSome(Ipv4Address.Parse "10.0.0.2")
                let src6 = ValueSome(Ipv6Address.Parse "fd77::2")
                let v6 (t: string) = V6(Ipv6Address.Parse t)

                let input =
                    [ a "192.0.2.1"; v6 "fd99::1"; v6 "fd77::1"; v6 "2001:db8::1"; v6 "fe80::1" ]
                // Rule 2 puts fe80::1 (link scope, our sources global) after the matching scopes;
                // rule 6: fd77::/48 45 (§10.6), 2001:db8::1 40, IPv4 35, fd99::1 3.
                Expect.equal
                    (DestinationOrder.order src4 src6 input)
                    [ v6 "fd77::1"; v6 "2001:db8::1"; a "192.0.2.1"; v6 "fd99::1"; v6 "fe80::1" ]
                    "order"

                Expect.equal
                    (DestinationOrder.order src4 ValueNone [ v6 "2001:db8::1"; a "192.0.2.1" ])
                    [ a "192.0.2.1"; v6 "2001:db8::1" ]
                    "rule 1: no IPv6 source"

                Expect.equal
                    (HappyEyeballs.interleave [ v6 "fd77::1"; v6 "fd77::3"; a "192.0.2.1"; a "192.0.2.2" ])
                    [ v6 "fd77::1"; a "192.0.2.1"; v6 "fd77::3"; a "192.0.2.2" ]
                    "RFC 8305 §4 interleaving"
            }

            test "random walks follow the DnsQueryModel (the test classifies each input), every edge exercised" {
                let taken = Collections.Generic.HashSet<DnsQueryState * DnsQueryTrigger>()

                for seed in 1..300 do
                    taken.UnionWith(walk seed)

                let missing =
                    DnsQueryModel.edges () |> List.filter (fun e -> not (taken.Contains e))

                Expect.isEmpty missing "edges never exercised"
            }

            test "docs/dns-query-states.dot is the model's DOT export" {
                let normalise (s: string) = s.Replace("\r\n", "\n").Trim()

                let path =
                    IO.Path.Combine(NetStack.Tests.TestUtil.repoRoot.Value, "docs", "dns-query-states.dot")

                let current = normalise (DnsQueryModel.dot ())

                let committed =
                    if IO.File.Exists path then
                        normalise (IO.File.ReadAllText path)
                    else
                        ""

                if committed <> current then
                    IO.File.WriteAllText(path + ".actual", current + "\n")

                Expect.equal committed current $"{path} differs from the model; see {path}.actual"
            }

            test "A and AAAA outcomes combine as getaddrinfo's" {
                Expect.equal
                    (DnsOutcome.combine [ Failed DnsFailure.NoData; Addresses([ a "192.0.2.1" ], 5u) ])
                    (Addresses([ a "192.0.2.1" ], 5u))
                    "addresses win"

                Expect.equal
                    (DnsOutcome.combine [ Failed DnsFailure.TimedOut; Failed DnsFailure.NameError ])
                    (Failed DnsFailure.NameError)
                    "NXDOMAIN"

                Expect.equal
                    (DnsOutcome.combine [ Failed DnsFailure.NoData; Failed DnsFailure.TimedOut ])
                    (Failed DnsFailure.TimedOut)
                    "try again"

                Expect.equal
                    (DnsOutcome.combine [ Failed DnsFailure.NoData; Failed DnsFailure.NoData ])
                    (Failed DnsFailure.NoData)
                    "no data"
            }
        ]
