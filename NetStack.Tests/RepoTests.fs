/// Checks on the repository itself: the promises the README and the build make.
module NetStack.Tests.RepoTests

open System
open System.IO
open System.Text.RegularExpressions
open Expecto
open FsCheck.FSharp

let private read rel =
    File.ReadAllText(Path.Combine(TestUtil.repoRoot.Value, rel))

let private netNamespace (pid: string) =
    (FileInfo $"/proc/{pid}/ns/net").LinkTarget

/// Runs one test silently and returns its failure message; fails when it did not fail.
let private failureOf (t: Test) =
    match Impl.evalTestsSilent t |> Async.RunSynchronously with
    | [ _, summary ] ->
        match summary.result with
        | Impl.TestResult.Failed message -> message
        | other -> failtestf "the property was meant to fail: %A" other
    | results -> failtestf "one result expected: %A" results

/// A property that is false for four inputs in five: it fails on one of its first cases.
let private falseProperty (config: FsCheckConfig) =
    testPropertyWithConfig config "below 1000"
    <| Prop.forAll (Arb.fromGen (Gen.choose (0, 5000))) (fun n -> n < 1000)

[<Tests>]
let tests =
    testList
        "Repository"
        [
            test "paket files and NuGet configs name no package registry" {
                let urlLike = Regex(@"https?://|nuget\.org|api\.nuget", RegexOptions.IgnoreCase)

                for file in
                    [
                        "paket.dependencies"
                        "paket.lock"
                        "nuget.config"
                        "NuGet.config"
                        "NuGet.Config"
                    ] do
                    let path = Path.Combine(TestUtil.repoRoot.Value, file)

                    if File.Exists path then
                        Expect.isFalse
                            (urlLike.IsMatch(File.ReadAllText path))
                            $"{file} must not contain a registry address"

                Expect.stringContains
                    (read "paket.lock")
                    "remote: %NETSTACK_NUGET_SOURCE%"
                    "paket.lock keeps the placeholder"
            }

            test "CI runs exactly the README's test command, once, and a failure fails CI" {
                let readme = read "README.md"
                let ci = read ".ci/run"
                let command = Regex.Match(readme, @"^(\./build\.sh test)\b", RegexOptions.Multiline)
                Expect.isTrue command.Success "README shows the test command"

                let call =
                    Regex(@"^" + Regex.Escape command.Groups.[1].Value + @"\s*$", RegexOptions.Multiline)

                Expect.isTrue (call.IsMatch ci) ".ci/run calls it verbatim, on a line of its own"
                // No second run after a failure (a retry would let a flaky test pass CI).
                let runs = Regex.Matches(ci, @"^[^#\n]*\./build\.sh test", RegexOptions.Multiline)
                Expect.equal runs.Count 1 ".ci/run runs the suite once"
                Expect.stringContains ci "set -euo pipefail" "and stops at the first failing command"
            }

            test
                "a failing FsCheck property prints its replay seed with the suite's configurations, and the seed replays the same counterexample" {
                let seedLine = Regex(@"etestPropertyWithConfig \((\d+)UL, (\d+)UL, Some (\d+)\)")

                let parameters = Regex(@"Parameters:\s*(\d+)")

                for name, config in
                    [
                        "codecConfig", TestUtil.codecConfig
                        "heavyConfig", TestUtil.heavyConfig
                        "defaultConfig (testProperty)", FsCheckConfig.defaultConfig
                    ] do
                    let message = failureOf (falseProperty config)
                    let seed = seedLine.Match message
                    Expect.isTrue seed.Success $"{name}: the failure names its replay seed:\n{message}"
                    let counterexample = parameters.Match message
                    Expect.isTrue counterexample.Success $"{name}: and its counterexample:\n{message}"

                    let replay =
                        { config with
                            replay =
                                Some(
                                    UInt64.Parse seed.Groups.[1].Value,
                                    UInt64.Parse seed.Groups.[2].Value,
                                    Some(int seed.Groups.[3].Value)
                                )
                        }

                    let again = failureOf (falseProperty replay)

                    Expect.equal
                        (parameters.Match(again).Groups.[1].Value)
                        counterexample.Groups.[1].Value
                        $"{name}: the seed replays the counterexample"
            }

            test "randomness in the tests is seeded or a property's (whose failure prints its seed)" {
                // Unseeded generators would make a failure that cannot be replayed.
                let unseeded =
                    Regex(@"Gen\.sample\s|Gen\.generate\b|\bRandom\s*\(\s*\)|Random\.Shared|Check\.(Quick|One|Verbose)")

                let tests = Path.Combine(TestUtil.repoRoot.Value, "NetStack.Tests")

                let found =
                    [
                        for file in Directory.EnumerateFiles(tests, "*.fs", SearchOption.AllDirectories) do
                            if not (file.Contains "/bin/" || file.Contains "/obj/") then
                                for i, line in File.ReadAllLines file |> Array.indexed do
                                    let code = line.Split("//").[0]

                                    if unseeded.IsMatch code && not (file.EndsWith "RepoTests.fs") then
                                        yield $"{Path.GetRelativePath(tests, file)}:{i + 1}: {line.Trim()}"
                    ]

                Expect.isEmpty found "unseeded randomness"
            }

            test "the suite runs in a network namespace of its own" {
                let stat = File.ReadAllText "/proc/self/stat"
                // Field 4 of /proc/self/stat is the parent pid; the command name (field 2) may hold spaces.
                let afterName = stat.Substring(stat.LastIndexOf ')' + 2).Split ' '
                let parent = afterName.[1]
                Expect.isTrue (Isolation.isIsolated ()) "the runner marked this process as isolated"

                Expect.notEqual
                    (netNamespace "self")
                    (netNamespace parent)
                    "a different net namespace than the launcher"
            }
        ]
