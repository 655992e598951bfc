/// Checks on the repository itself: the promises the README and the build make.
module NetStack.Tests.RepoTests

open System
open System.IO
open System.Text.RegularExpressions
open Expecto

let private read rel =
    File.ReadAllText(Path.Combine(TestUtil.repoRoot.Value, rel))

let private netNamespace (pid: string) =
    (FileInfo $"/proc/{pid}/ns/net").LinkTarget

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
