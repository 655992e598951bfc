/// ReachableTime randomisation (RFC 4861 §6.3.2) and the router advertisement's timer fields
/// (§6.3.4) in the core, with the random draws as inputs.
module NetStack.Tests.ReachableTimeTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Link
open NetStack.Tests.TestUtil

let private baseTime = 30_000_000L

[<Tests>]
let tests =
    testList
        "ReachableTime"
        [
            testPropertyWithConfig codecConfig "a drawn ReachableTime lies between 0.5 and 1.5 times the base"
            <| Prop.forAll
                (Gen.zip (Gen.choose64 (1L, 3_600_000_000L)) (Gen.choose (0, 999_999))
                 |> Arb.fromGen)
                (fun (b, d) ->
                    let r = ReachableTime.randomise b (float d / 1e6)
                    r >= max 1L (b / 2L) && r <= b + b / 2L)

            test "seeded draws spread over the whole range around the base" {
                let random = Random 4861

                let draws =
                    [ for _ in 1..2000 -> ReachableTime.randomise baseTime (random.NextDouble()) ]

                Expect.isLessThan (List.min draws) (baseTime * 55L / 100L) "some near 0.5x"
                Expect.isGreaterThan (List.max draws) (baseTime * 145L / 100L) "some near 1.5x"
                let mean = List.averageBy float draws
                Expect.isLessThan (abs (mean / float baseTime - 1.0)) 0.05 "within 5% of the base"
            }

            test
                "an advertisement's Reachable Time sets the base and draws again only when it changes; 0 is unspecified" {
                let s = ReachableTime.create 0L baseTime 0.5
                Expect.equal s.Current baseTime "draw 0.5 is the base"
                let s1, changed = ReachableTime.onAdvertisement 10L 0u 0.0 s
                Expect.isFalse changed "0: unspecified"
                Expect.equal s1 s "unchanged"
                let s2, changed = ReachableTime.onAdvertisement 10L 30_000u 0.0 s
                Expect.isFalse changed "the same base is not drawn again"
                Expect.equal s2 s "unchanged"
                let s3, changed = ReachableTime.onAdvertisement 10L 10_000u 0.0 s
                Expect.isTrue changed "a new base"
                Expect.equal s3.Base 10_000_000L "10 s"
                Expect.equal s3.Current 5_000_000L "drawn again (0.5x)"
                let s4, _ = ReachableTime.onAdvertisement 10L UInt32.MaxValue 0.5 s
                Expect.equal s4.Base 3_600_000_000L "capped at MAX_REACHABLE_TIME"
            }

            test "ReachableTime is drawn again after the recompute interval even with the same base" {
                let s = ReachableTime.create 0L baseTime 0.5
                let same, changed = ReachableTime.tick (ReachableTime.RecomputeInterval - 1L) 0.0 s
                Expect.isFalse changed "not yet"
                Expect.equal same s "unchanged"
                let next, changed = ReachableTime.tick ReachableTime.RecomputeInterval 0.0 s
                Expect.isTrue changed "drawn again"
                Expect.equal next.Current (baseTime / 2L) "the new draw"
                Expect.equal next.RecomputeAt (2L * ReachableTime.RecomputeInterval) "and again later"
            }

            test "Retrans Timer: 0 keeps the current value, another is taken in microseconds" {
                Expect.equal (ReachableTime.retransTimer 0u 1_000_000L) 1_000_000L "unspecified"
                Expect.equal (ReachableTime.retransTimer 700u 1_000_000L) 700_000L "700 ms"
            }

            test "a cache with new timers confirms neighbors for the new ReachableTime" {
                let cache: NeighborCache<int> = NeighborCache.create NeighborCache.defaultConfig
                let cache = NeighborCache.withTimers 5_000L 700L cache
                Expect.equal cache.Config.ReachableTime 5_000L "ReachableTime"
                Expect.equal cache.Config.RetransTimer 700L "RetransTimer"
                let cache, _ = NeighborCache.send 0L 1 [| 1uy |] cache
                Expect.equal cache.Entries.[1].Deadline 700L "solicited again after RetransTimer"

                let cache, _ =
                    NeighborCache.advertise 100L 1 (MacAddress 0x0200_0000_0001UL) true true cache

                Expect.equal cache.Entries.[1].Deadline 5_100L "REACHABLE for ReachableTime"

                Expect.throwsT<ArgumentException>
                    (fun () -> NeighborCache.withTimers 0L 700L cache |> ignore)
                    "a zero ReachableTime is refused"
            }
        ]
