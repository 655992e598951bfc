/// `dotnet pack` makes proper packages: NetStack.Core, NetStack.Api and NetStack.AspNetCore with
/// their metadata, README and license, and NetStack.Cli as a .NET tool that installs from a local folder and runs.
///
/// The test run has no route out of its network namespace, so nothing here may need a registry:
/// it packs the already built Release binaries (`--no-build`) and installs the tool with a NuGet
/// configuration whose only source is the local package folder (the tool package carries all its
/// assemblies, so it has no package dependencies to fetch).
module NetStack.Tests.PackagingTests

open System
open System.IO
open System.IO.Compression
open Expecto

let private root () = TestUtil.repoRoot.Value

/// A guard against a hung `dotnet pack`/`tool install`, not a speed bound: packing publishes the
/// netstack tool (since serve runs Kestrel, with the ASP.NET Core framework's assets), and on the
/// two-core machine with other work running it took 153 s in one full run and passed 180 s in a
/// fresh-clone CI run while a memory soak held both cores. Speed is the benchmarks' business.
let private slow = TimeSpan.FromMinutes 10.

/// A fresh temporary folder, deleted by disposing the result.
let private tempFolder () =
    let dir = Directory.CreateTempSubdirectory "netstack-pack-"

    dir.FullName,
    { new IDisposable with
        member _.Dispose() =
            try
                dir.Delete true
            with _ ->
                ()
    }

/// The repository has no public address yet, and NuGet writes the `<repository>` element only
/// with a URL, so the test supplies a placeholder the way `./build.sh pack` passes
/// NETSTACK_REPOSITORY_URL.
let private repositoryUrl = "https://example.invalid/netstack.git"

/// `dotnet pack NetStack.sln -c Release --no-build -o OUTPUT`, as `./build.sh pack` runs it: one
/// MSBuild run packs every packable project (Core, Api, AspNetCore, the Cli tool), where one run per
/// project cost a busy machine ten seconds or more each. Made once, on first use, in a temporary
/// folder deleted when the test process exits; fails the test on a non-zero exit.
let private packed =
    lazy
        (let folder = Directory.CreateTempSubdirectory "netstack-pack-"

         AppDomain.CurrentDomain.ProcessExit.Add(fun _ ->
             try
                 folder.Delete true
             with _ ->
                 ())

         let code, out, err =
             ExampleAppTests.runProcess
                 ExampleAppTests.dotnetHost
                 [
                     "pack"
                     "NetStack.sln"
                     "-c"
                     "Release"
                     "--no-build"
                     "-nologo"
                     "-o"
                     folder.FullName
                     $"-p:RepositoryUrl={repositoryUrl}"
                 ]
                 (root ())
                 []
                 slow

         Expect.equal code 0 $"dotnet pack NetStack.sln; stdout:\n{out}\nstderr:\n{err}"
         folder.FullName)

/// The names of the entries of a .nupkg (a zip file), with '/' separators.
let private entries (nupkg: string) =
    use zip = ZipFile.OpenRead nupkg
    zip.Entries |> Seq.map (fun e -> e.FullName) |> Set.ofSeq

/// The text of the .nuspec inside a .nupkg.
let private nuspec (nupkg: string) =
    use zip = ZipFile.OpenRead nupkg
    let entry = zip.Entries |> Seq.find (fun e -> e.FullName.EndsWith ".nuspec")
    use reader = new StreamReader(entry.Open())
    reader.ReadToEnd()

let private single (folder: string) (prefix: string) =
    let found =
        Directory.GetFiles(folder, prefix + ".*.nupkg")
        |> Array.filter (fun f -> not (f.EndsWith ".symbols.nupkg"))
        // NetStack.Cli.* must not match NetStack.Core.*: the next character is the version's digit.
        |> Array.filter (fun f -> Char.IsDigit(Path.GetFileName(f).[prefix.Length + 1]))

    Expect.hasLength found 1 $"one {prefix} package in {folder}"
    found.[0]

let private expectLibraryMetadata (spec: string) (id: string) =
    Expect.stringContains spec $"<id>{id}</id>" "package id"
    Expect.stringContains spec "<license type=\"expression\">Apache-2.0</license>" "license expression"
    Expect.stringContains spec "<readme>README.md</readme>" "README as the package readme"
    Expect.stringContains spec $"<repository type=\"git\" url=\"{repositoryUrl}\"" "repository type and address"
    Expect.stringContains spec "<tags>" "tags"
    Expect.stringContains spec "<description>" "description"

[<Tests>]
let tests =
    // Packing touches no network: its own group runs beside the unit tests (one MSBuild process
    // while the unit tests use the other core) instead of in the sequenced phase.
    testSequencedGroup "Packaging"
    <| testList
        "Packaging"
        [
            test "NetStack.Core and NetStack.Api pack with license, README, tags and their dependencies" {
                let folder = packed.Value

                let core = single folder "NetStack.Core"
                let coreSpec = nuspec core
                expectLibraryMetadata coreSpec "NetStack.Core"

                Expect.stringContains
                    coreSpec
                    "id=\"FSharp.Core\""
                    "Core depends on FSharp.Core (from paket.references)"

                Expect.stringContains coreSpec "id=\"Stateless\"" "Core depends on Stateless"
                let coreFiles = entries core
                Expect.contains coreFiles "README.md" "README packed"
                Expect.contains coreFiles "lib/net10.0/NetStack.Core.dll" "the assembly"
                Expect.contains coreFiles "lib/net10.0/NetStack.Core.xml" "the XML docs"

                let api = single folder "NetStack.Api"
                let apiSpec = nuspec api
                expectLibraryMetadata apiSpec "NetStack.Api"
                Expect.stringContains apiSpec "id=\"NetStack.Core\"" "Api depends on the Core package"
                let apiFiles = entries api
                Expect.contains apiFiles "README.md" "README packed"
                Expect.contains apiFiles "lib/net10.0/NetStack.Api.dll" "the assembly"
                Expect.contains apiFiles "lib/net10.0/NetStack.Api.xml" "the XML docs"
            }

            test
                "NetStack.AspNetCore packs with its metadata, a dependency on NetStack.Api and the ASP.NET Core framework reference" {
                let folder = packed.Value
                let web = single folder "NetStack.AspNetCore"
                let spec = nuspec web
                expectLibraryMetadata spec "NetStack.AspNetCore"
                Expect.stringContains spec "id=\"NetStack.Api\"" "depends on the Api package"

                Expect.stringContains
                    spec
                    "<frameworkReference name=\"Microsoft.AspNetCore.App\""
                    "references the ASP.NET Core shared framework"

                let files = entries web
                Expect.contains files "README.md" "README packed"
                Expect.contains files "lib/net10.0/NetStack.AspNetCore.dll" "the assembly"
                Expect.contains files "lib/net10.0/NetStack.AspNetCore.xml" "the XML docs"
            }

            test "NetStack.Cli packs as a .NET tool that installs from a local folder and runs netstack --help" {
                let folder, cleanup = tempFolder ()
                use _ = cleanup
                let packages = packed.Value

                let tool = single packages "NetStack.Cli"
                let files = entries tool
                Expect.contains files "tools/net10.0/any/netstack.dll" "the command's assembly"
                Expect.contains files "tools/net10.0/any/DotnetToolSettings.xml" "the tool settings"
                Expect.contains files "tools/net10.0/any/NetStack.Core.dll" "the tool carries its dependencies"

                Expect.contains
                    files
                    "tools/net10.0/any/NetStack.AspNetCore.dll"
                    "and the Kestrel transport that serve --http runs on"

                // The ASP.NET Core shared framework is a framework of the tool, resolved by the host
                // at start-up (the --help run below proves it resolves).
                let runtimeConfig =
                    use zip = ZipFile.OpenRead tool

                    use reader =
                        new StreamReader(zip.GetEntry("tools/net10.0/any/netstack.runtimeconfig.json").Open())

                    reader.ReadToEnd()

                Expect.stringContains
                    runtimeConfig
                    "\"Microsoft.AspNetCore.App\""
                    "the tool runs on the ASP.NET Core framework"

                Expect.stringContains (nuspec tool) "<packageType name=\"DotnetTool\"" "a tool package"

                // Only the local folder as a source: nothing is looked up on the network.
                let config = Path.Combine(folder, "nuget.config")

                File.WriteAllText(
                    config,
                    $"""<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <clear />
    <add key="local" value="{packages}" />
  </packageSources>
</configuration>
"""
                )

                let toolPath = Path.Combine(folder, "tool")

                let code, out, err =
                    ExampleAppTests.runProcess
                        ExampleAppTests.dotnetHost
                        [
                            "tool"
                            "install"
                            "NetStack.Cli"
                            "--tool-path"
                            toolPath
                            "--configfile"
                            config
                        ]
                        folder
                        []
                        slow

                Expect.equal code 0 $"dotnet tool install; stdout:\n{out}\nstderr:\n{err}"

                // The shim is an apphost: tell it where the runtime is, as `dotnet tool install`
                // users have it on PATH or in DOTNET_ROOT.
                let dotnetRoot =
                    match Path.GetDirectoryName ExampleAppTests.dotnetHost with
                    | null
                    | "" ->
                        Environment.GetEnvironmentVariable "DOTNET_ROOT"
                        |> Option.ofObj
                        |> Option.defaultValue ""
                    | dir -> dir

                let code, out, err =
                    ExampleAppTests.runProcess
                        (Path.Combine(toolPath, "netstack"))
                        [ "--help" ]
                        folder
                        [ "DOTNET_ROOT", dotnetRoot ]
                        slow

                Expect.equal code 0 $"netstack --help; stderr:\n{err}"
                Expect.stringContains out "demo" "the help lists the commands"
            }
        ]
