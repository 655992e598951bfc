/// RFC 5227 §2.4 address conflict defence in the core: what counts as a conflict and when it is
/// answered with an announcement.
module NetStack.Tests.ArpDefenceTests

open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Link
open NetStack.Core.Wire
open NetStack.Tests.TestUtil

let private ours = Ipv4Address 0x0A6A_0102u
let private ourMac = MacAddress 0x02A6_0000_0102UL
let private other = MacAddress 0x0266_0000_0001UL
let private interval = int64 Arp.DefendIntervalSeconds * 1_000_000L

/// Feeds conflicts at the given gaps (microseconds) and returns the times that were defended.
let private defended (gaps: int64 list) =
    let mutable now = 0L
    let mutable last = ValueNone
    let times = ResizeArray()

    for gap in gaps do
        now <- now + gap

        if Arp.shouldDefend now last interval then
            last <- ValueSome now
            times.Add now

    List.ofSeq times

[<Tests>]
let tests =
    testList
        "ArpDefence"
        [
            test "a packet from another MAC with our address as sender is a conflict; ours, or another sender, is not" {
                Expect.isTrue
                    (Arp.isConflict ours ourMac (Arp.announcement other ours))
                    "another host announces our address"

                Expect.isTrue
                    (Arp.isConflict ours ourMac (Arp.request other ours (Ipv4Address 0x0A6A_0101u)))
                    "another host asks from our address"

                Expect.isFalse (Arp.isConflict ours ourMac (Arp.announcement ourMac ours)) "our own announcement"

                Expect.isFalse
                    (Arp.isConflict ours ourMac (Arp.request other (Ipv4Address 0x0A6A_0103u) ours))
                    "a request for our address"
            }

            test "the first conflict is defended, a second within DEFEND_INTERVAL is not, one after it is" {
                Expect.equal
                    (defended [ 5L; 1_000_000L; interval - 1_000_001L; 1L ])
                    [ 5L; interval + 5L ]
                    "at 5 µs and 10 s later"
            }

            testPropertyWithConfig
                codecConfig
                "defences are at least DEFEND_INTERVAL apart, and a conflict that long after the last defence is always defended"
            <| Prop.forAll (Gen.listOf (Gen.choose64 (0L, 2L * interval)) |> Arb.fromGen) (fun gaps ->
                let times = defended gaps
                let pairs = List.pairwise times
                let apart = pairs |> List.forall (fun (a, b) -> b - a >= interval)
                // Replay: every conflict at least `interval` after the last defence was defended.
                let mutable now = 0L
                let mutable last = None
                let mutable ok = true

                for gap in gaps do
                    now <- now + gap

                    match last with
                    | Some l when now - l < interval -> ()
                    | _ ->
                        ok <- ok && List.contains now times
                        last <- Some now

                apart && ok && (gaps.IsEmpty || not times.IsEmpty))
        ]
