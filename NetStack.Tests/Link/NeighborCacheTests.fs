/// The neighbor cache: the Stateless model of one entry's states (committed as DOT), fixed
/// scenarios of RFC 4861 §7.3, and random event sequences checked against the model and bounds.
module NetStack.Tests.NeighborCacheTests

open System
open System.IO
open Expecto
open FsCheck
open FsCheck.FSharp
open Microsoft.FSharp.Reflection
open NetStack.Core.Link
open NetStack.Tests.TestUtil

let private casesOf<'T> () =
    FSharpType.GetUnionCases typeof<'T>
    |> Array.map (fun c -> FSharpValue.MakeUnion(c, [||]) :?> 'T)
    |> List.ofArray

let private allStates = casesOf<NeighborState>()
let private allTriggers = casesOf<NeighborTrigger>()

let private normalise (text: string) =
    text.Replace("\r\n", "\n").TrimEnd('\n')

/// Small timers (microseconds) so scenarios read easily.
let private config =
    { NeighborCache.defaultConfig with
        ReachableTime = 30_000L
        RetransTimer = 1_000L
        DelayFirstProbeTime = 5_000L
        StaleLifetime = 60_000L
        MaxEntries = 4
        MaxQueuedPerEntry = 3
        MaxQueuedBytes = 1000
    }

let private macA = MacAddress 0x0200_0000_0001UL
let private macB = MacAddress 0x0200_0000_0002UL

/// A packet that names itself: its first four bytes are its id.
let private packet (id: int) (size: int) =
    let p = Array.zeroCreate (max 4 size)
    BitConverter.TryWriteBytes(Span p, id) |> ignore
    p

let private idOf (p: byte[]) = BitConverter.ToInt32(p, 0)

/// One input to the cache.
type CacheStep =
    | SendTo of address: int * size: int
    | Advertise of address: int * mac: int * solicited: bool * override': bool
    | Learn of address: int * mac: int * create: bool
    | Advance of micros: int64

let private genStep =
    let address = Gen.choose (0, 7)
    let mac = Gen.choose (1, 3)

    Gen.frequency
        [
            6, Gen.map2 (fun a s -> SendTo(a, s)) address (Gen.choose (4, 300))
            3,
            Gen.map4
                (fun a m s o -> Advertise(a, m, s, o))
                address
                mac
                (ArbMap.defaults |> ArbMap.generate<bool>)
                (ArbMap.defaults |> ArbMap.generate<bool>)
            2, Gen.map3 (fun a m c -> Learn(a, m, c)) address mac (ArbMap.defaults |> ArbMap.generate<bool>)
            4,
            Gen.frequency
                [
                    3, Gen.choose64 (1L, 2_000L)
                    2, Gen.choose64 (1L, 10_000L)
                    1, Gen.choose64 (1L, 100_000L)
                ]
            |> Gen.map Advance
        ]

let private expectBounded (cache: NeighborCache<int>) =
    Expect.isLessThanOrEqual cache.Entries.Count cache.Config.MaxEntries "entries bounded"

    let queued = cache.Entries |> Seq.sumBy (fun kv -> kv.Value.QueuedBytes)
    Expect.equal cache.QueuedBytes queued "the byte count is the sum of the queues"
    Expect.isLessThanOrEqual queued cache.Config.MaxQueuedBytes "queued bytes bounded"

    let earliest =
        if cache.Entries.IsEmpty then
            Int64.MaxValue
        else
            cache.Entries |> Seq.map (fun kv -> kv.Value.Deadline) |> Seq.min

    Expect.equal cache.NextDeadline earliest "NextDeadline is the earliest deadline"

    for KeyValue(address, e) in cache.Entries do
        Expect.notEqual e.State NeighborState.Absent $"{address}: no Absent entries stored"
        Expect.isLessThanOrEqual e.Queue.Length cache.Config.MaxQueuedPerEntry $"{address}: queue bounded"
        Expect.equal (e.Queue |> List.sumBy Array.length) e.QueuedBytes $"{address}: queue bytes"

        if e.State <> NeighborState.Incomplete then
            Expect.isEmpty e.Queue $"{address}: only INCOMPLETE entries hold packets"

/// Every address whose state changed moved along an edge the model has for one of `triggers`
/// (eviction allowed for others when `evict`).
let private expectOnModel
    (before: NeighborCache<int>)
    (after: NeighborCache<int>)
    (subject: int voption)
    (triggers: NeighborTrigger list)
    (evict: bool)
    =
    for address in 0..7 do
        let s0 = NeighborCache.state address before
        let s1 = NeighborCache.state address after

        // An unchanged state is what the RFC asks for several events (the same link-layer
        // address again, a solicitation not for us, a full cache refusing a stranger); every
        // change must be an edge of the model.
        if s0 <> s1 then
            if ValueSome address = subject || subject.IsNone then
                Expect.isTrue
                    (triggers |> List.exists (fun t -> NeighborModel.allows s0 t s1))
                    $"{address}: {s0} -> {s1} on one of %A{triggers}"
            else
                Expect.isTrue
                    (evict && NeighborModel.allows s0 NeighborTrigger.Evict s1)
                    $"{address}: {s0} -> {s1} only by eviction"

let private timerTriggers =
    [
        NeighborTrigger.RetransmitTimeout
        NeighborTrigger.GiveUp
        NeighborTrigger.ReachableTimeout
        NeighborTrigger.DelayTimeout
        NeighborTrigger.Forget
    ]

/// Runs steps, checking bounds and the model after each; returns the packets transmitted,
/// dropped and still queued (by id).
let private run (steps: CacheStep list) =
    let mutable cache: NeighborCache<int> = NeighborCache.create config
    let mutable now = 0L
    let mutable nextId = 0
    let sent = ResizeArray<int>()
    let transmitted = ResizeArray<int>()
    let dropped = ResizeArray<int>()

    let take (actions: NeighborAction<int> list) =
        for a in actions do
            match a with
            | Transmit(_, p) -> transmitted.Add(idOf p)
            | Dropped(p, _) -> dropped.Add(idOf p)
            | Solicit _ -> ()

    for step in steps do
        let before = cache

        match step with
        | SendTo(address, size) ->
            let p = packet nextId size
            sent.Add nextId
            nextId <- nextId + 1
            let c, actions = NeighborCache.send now address p cache
            take actions
            cache <- c
            expectOnModel before cache (ValueSome address) [ NeighborTrigger.Send ] true
        | Advertise(address, mac, solicited, override') ->
            let c, actions =
                NeighborCache.advertise now address (MacAddress(uint64 mac)) solicited override' cache

            take actions
            cache <- c

            expectOnModel
                before
                cache
                (ValueSome address)
                [
                    NeighborTrigger.SolicitedConfirmation
                    NeighborTrigger.UnsolicitedAdvertisement
                ]
                false
        | Learn(address, mac, create) ->
            let c, actions =
                NeighborCache.learn now address (MacAddress(uint64 mac)) create cache

            take actions
            cache <- c
            expectOnModel before cache (ValueSome address) [ NeighborTrigger.LearnAddress ] true
        | Advance micros ->
            // Timers fire in deadline order: step to each deadline in turn, never past one.
            let target = now + micros

            while cache.NextDeadline <= target do
                now <- max now cache.NextDeadline
                let before = cache
                let c, actions = NeighborCache.tick now cache
                take actions
                cache <- c
                expectOnModel before cache ValueNone timerTriggers false
                Expect.isGreaterThan cache.NextDeadline now "every due timer fired"

            now <- target

        expectBounded cache

    let queued =
        [
            for KeyValue(_, e) in cache.Entries do
                for p in e.Queue do
                    idOf p
        ]

    List.ofSeq sent, List.ofSeq transmitted, List.ofSeq dropped, queued

[<Tests>]
let tests =
    testList
        "Neighbor cache"
        [
            test "docs/neighbor-states.dot is the model's DOT export" {
                let path = Path.Combine(repoRoot.Value, "docs", "neighbor-states.dot")
                let current = normalise (NeighborModel.dot ())

                let committed =
                    if File.Exists path then
                        normalise (File.ReadAllText path)
                    else
                        ""

                if committed <> current then
                    File.WriteAllText(path + ".actual", current + "\n")

                Expect.equal committed current $"{path} differs from NeighborModel.dot (); see {path}.actual"
            }

            test "the lookup tables agree with firing a Stateless machine, for every state and trigger" {
                for state in allStates do
                    for trigger in allTriggers do
                        let machine = NeighborModel.configure state

                        Expect.equal
                            (machine.CanFire trigger)
                            (NeighborModel.isPermitted state trigger)
                            $"{state} {trigger}"

                        if machine.CanFire trigger then
                            machine.Fire trigger

                            let expected =
                                match NeighborModel.target state trigger with
                                | ValueSome t -> t
                                | ValueNone -> state

                            Expect.equal machine.State expected $"{state} --{trigger}-->"
            }

            test "resolution: a first packet waits, the solicited advertisement releases it, REACHABLE" {
                let cache: NeighborCache<int> = NeighborCache.create config
                let cache, actions = NeighborCache.send 0L 1 (packet 1 100) cache
                Expect.equal actions [ Solicit(1, ValueNone) ] "a multicast solicitation"
                Expect.equal (NeighborCache.state 1 cache) NeighborState.Incomplete "INCOMPLETE"
                let cache, actions = NeighborCache.send 10L 1 (packet 2 100) cache
                Expect.isEmpty actions "the second packet waits too"
                Expect.equal (NeighborCache.tryResolve 1 cache) ValueNone "not resolved yet"
                let cache, actions = NeighborCache.advertise 500L 1 macA true true cache

                Expect.equal
                    (actions
                     |> List.map (fun a ->
                         match a with
                         | Transmit(m, p) -> m, idOf p
                         | _ -> failtest "only transmits"))
                    [ macA, 1; macA, 2 ]
                    "both released in order"

                Expect.equal (NeighborCache.state 1 cache) NeighborState.Reachable "REACHABLE"
                Expect.equal (NeighborCache.tryResolve 1 cache) (ValueSome macA) "the fast path now answers"
                Expect.equal cache.QueuedBytes 0 "nothing queued"
            }

            test "REACHABLE -> STALE -> DELAY -> PROBE -> unicast probes -> deleted (RFC 4861 §7.3.3)" {
                let cache: NeighborCache<int> = NeighborCache.create config
                let cache, _ = NeighborCache.send 0L 1 (packet 1 10) cache
                let cache, _ = NeighborCache.advertise 0L 1 macA true false cache
                let cache, _ = NeighborCache.tick 29_999L cache
                Expect.equal (NeighborCache.state 1 cache) NeighborState.Reachable "still REACHABLE"
                let cache, _ = NeighborCache.tick 30_000L cache
                Expect.equal (NeighborCache.state 1 cache) NeighborState.Stale "STALE after ReachableTime"
                Expect.equal (NeighborCache.tryResolve 1 cache) ValueNone "STALE goes through send"
                let cache, actions = NeighborCache.send 31_000L 1 (packet 2 10) cache

                Expect.equal
                    (actions
                     |> List.map (function
                         | Transmit(m, _) -> m
                         | _ -> MacAddress.Zero))
                    [ macA ]
                    "sent at once"

                Expect.equal (NeighborCache.state 1 cache) NeighborState.Delay "DELAY"
                let cache, actions = NeighborCache.tick 36_000L cache
                Expect.equal actions [ Solicit(1, ValueSome macA) ] "a unicast probe"
                Expect.equal (NeighborCache.state 1 cache) NeighborState.Probe "PROBE"
                let cache, a2 = NeighborCache.tick 37_000L cache
                let cache, a3 = NeighborCache.tick 38_000L cache
                Expect.equal (a2 @ a3) [ Solicit(1, ValueSome macA); Solicit(1, ValueSome macA) ] "two more"
                let cache, a4 = NeighborCache.tick 39_000L cache
                Expect.isEmpty a4 "no fourth probe (MAX_UNICAST_SOLICIT = 3)"
                Expect.equal (NeighborCache.state 1 cache) NeighborState.Absent "deleted"
            }

            test "a probe answered in time returns the entry to REACHABLE" {
                let cache: NeighborCache<int> = NeighborCache.create config
                let cache, _ = NeighborCache.learn 0L 1 macA true cache
                Expect.equal (NeighborCache.state 1 cache) NeighborState.Stale "learned STALE"
                let cache, _ = NeighborCache.send 1L 1 (packet 1 10) cache
                let cache, _ = NeighborCache.tick 5_001L cache
                Expect.equal (NeighborCache.state 1 cache) NeighborState.Probe "PROBE"
                let cache, _ = NeighborCache.advertise 5_500L 1 macA true false cache
                Expect.equal (NeighborCache.state 1 cache) NeighborState.Reachable "REACHABLE again"
            }

            test "unanswered resolution gives up after MAX_MULTICAST_SOLICIT and drops the queue" {
                let cache: NeighborCache<int> = NeighborCache.create config
                let cache, _ = NeighborCache.send 0L 1 (packet 1 10) cache
                let cache, _ = NeighborCache.send 0L 1 (packet 2 10) cache
                let cache, a1 = NeighborCache.tick 1_000L cache
                let cache, a2 = NeighborCache.tick 2_000L cache
                Expect.equal (a1 @ a2) [ Solicit(1, ValueNone); Solicit(1, ValueNone) ] "retransmitted twice"
                let cache, a3 = NeighborCache.tick 3_000L cache

                Expect.equal
                    (a3
                     |> List.map (function
                         | Dropped(p, r) -> idOf p, r
                         | _ -> -1, NeighborDropReason.QueueFull))
                    [ 1, NeighborDropReason.Unresolved; 2, NeighborDropReason.Unresolved ]
                    "both dropped as unresolved"

                Expect.equal (NeighborCache.state 1 cache) NeighborState.Absent "deleted"
                Expect.equal cache.QueuedBytes 0 "no bytes left"
            }

            test
                "a full queue drops its oldest packet; an advertisement with another MAC and no O flag only makes REACHABLE STALE" {
                let cache: NeighborCache<int> = NeighborCache.create config
                let mutable c = cache

                for i in 1..4 do
                    let next, actions = NeighborCache.send 0L 1 (packet i 10) c
                    c <- next

                    if i = 4 then
                        Expect.equal
                            (actions
                             |> List.map (function
                                 | Dropped(p, r) -> idOf p, r
                                 | _ -> -1, NeighborDropReason.CacheFull))
                            [ 1, NeighborDropReason.QueueFull ]
                            "the oldest made room"

                let cache, _ = NeighborCache.advertise 0L 1 macA true false c
                let cache, actions = NeighborCache.advertise 1L 1 macB false false cache
                Expect.isEmpty actions "nothing to send"
                Expect.equal (NeighborCache.state 1 cache) NeighborState.Stale "STALE"
                Expect.equal cache.Entries.[1].Mac macA "the cached address is kept"
                let cache, _ = NeighborCache.advertise 2L 1 macB true true cache
                Expect.equal cache.Entries.[1].Mac macB "an override replaces it"
            }

            test "a flood of strangers keeps the cache bounded; busy entries are never evicted" {
                let mutable cache: NeighborCache<int> = NeighborCache.create config
                let cache0, _ = NeighborCache.send 0L 1000 (packet 1 10) cache
                cache <- cache0
                let random = Random 7

                for i in 0..9999 do
                    let address = random.Next()

                    let c, _ =
                        NeighborCache.learn (int64 i) address (MacAddress(uint64 address)) true cache

                    cache <- c
                    Expect.isLessThanOrEqual cache.Entries.Count config.MaxEntries "bounded"

                Expect.equal (NeighborCache.state 1000 cache) NeighborState.Incomplete "the resolving entry stayed"

                for i in 0..9999 do
                    let c, _ = NeighborCache.send 0L (random.Next()) (packet i 10) cache
                    cache <- c

                Expect.isLessThanOrEqual cache.Entries.Count config.MaxEntries "bounded under sends too"
                Expect.isLessThanOrEqual cache.QueuedBytes config.MaxQueuedBytes "queued bytes bounded"
            }

            testPropertyWithConfig
                heavyConfig
                "random events: every change is a model edge, timers fire in order, bounds hold, each packet leaves once"
            <| Prop.forAll (Arb.fromGen (Gen.listOf genStep)) (fun steps ->
                let sent, transmitted, dropped, queued = run steps
                let accounted = transmitted @ dropped @ queued
                Expect.equal (List.sort accounted) sent "every packet transmitted, dropped or still queued, once")

            testPropertyWithConfig codecConfig "invalid configurations are refused"
            <| fun (which: bool) ->
                let bad =
                    if which then
                        { config with RetransTimer = 0L }
                    else
                        { config with MaxEntries = 0 }

                Expect.throwsT<ArgumentException>
                    (fun () -> (NeighborCache.create bad: NeighborCache<int>) |> ignore)
                    "refused"
        ]
