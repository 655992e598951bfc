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

/// The global packages folder of this machine, where `./build.sh build` (paket restore) put every
/// package the build and the consumer projects need, the "Consumer" group of paket.dependencies
/// included: the consumer projects below restore from it as a local source, offline.
let private globalPackages () =
    match Environment.GetEnvironmentVariable "NUGET_PACKAGES" with
    | null
    | "" -> Path.Combine(Environment.GetFolderPath Environment.SpecialFolder.UserProfile, ".nuget", "packages")
    | folder -> folder

/// Writes FOLDER/nuget.config and returns its path: the packed NetStack packages are a source,
/// with the machine's package cache as a second one when `withCache`, and the packages folder is
/// private (inside `folder`), so the NetStack packages just packed never enter, nor come from,
/// the machine's cache.
let private nugetConfig (folder: string) (packages: string) (withCache: bool) =
    let config = Path.Combine(folder, "nuget.config")

    let cache =
        if withCache then
            $"""
    <add key="cache" value="{globalPackages ()}" />"""
        else
            ""

    File.WriteAllText(
        config,
        $"""<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <config>
    <add key="globalPackagesFolder" value="{Path.Combine(folder, "packages")}" />
  </config>
  <packageSources>
    <clear />
    <add key="netstack" value="{packages}" />{cache}
  </packageSources>
</configuration>
"""
    )

    config

/// The consumer apps start a stack on a TUN device of this name, 10.211.0.2 with the kernel at
/// 10.211.0.1 (addresses no other test uses), and print what they saw.
let private consumerTun = "nsconsumer0"

/// A C# console app as a new user writes it: `using System.Net.Sockets; using NetStack;` (the
/// listener type named, so a clash of names would not compile), the current logging packages
/// (Microsoft.Extensions.Logging.Console 11.0.0, which needs Logging.Abstractions 11.0.0 where
/// NetStack.Api asks for at least 10.0.0) and a newer FSharp.Core (11.0.101, NetStack.Core asks for
/// at least 10.0.115). Warnings are errors, so NU1107/NU1608/NU1605 fail the build. It pings the
/// kernel, serves one echo to a kernel socket and prints the stack's exception counters.
let private csharpConsumer =
    [
        "app.csproj",
        """<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <OutputType>Exe</OutputType>
    <TargetFramework>net10.0</TargetFramework>
    <ImplicitUsings>enable</ImplicitUsings>
    <Nullable>enable</Nullable>
    <TreatWarningsAsErrors>true</TreatWarningsAsErrors>
  </PropertyGroup>
  <ItemGroup>
    <PackageReference Include="NetStack.Api" Version="1.0.0" />
    <PackageReference Include="Microsoft.Extensions.Logging.Console" Version="11.0.0" />
    <PackageReference Include="FSharp.Core" Version="11.0.101" />
  </ItemGroup>
</Project>
"""
        "Program.cs",
        $$"""using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using NetStack;

using var loggerFactory = LoggerFactory.Create(b => b.AddSimpleConsole().SetMinimumLevel(LogLevel.Information));
await using var stack = NetworkStack.Start(new NetStackOptions
{
    TunName = "{{consumerTun}}",
    Address = IPAddress.Parse("10.211.0.2"),
    HostAddress = IPAddress.Parse("10.211.0.1"),
    Address6 = null,
    HostAddress6 = null,
    LoggerFactory = loggerFactory,
});
var reply = await stack.PingAsync(IPAddress.Parse("10.211.0.1"), TimeSpan.FromSeconds(5));
Console.WriteLine($"ping {reply.Status}");

TcpConnectionListener listener = stack.ListenTcp(7);
using var kernel = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
var connecting = kernel.ConnectAsync(new IPEndPoint(IPAddress.Parse("10.211.0.2"), 7));
await using (var connection = await listener.AcceptAsync())
{
    await connecting;
    await kernel.SendAsync("hello"u8.ToArray(), SocketFlags.None);
    var buffer = new byte[5];
    await connection.ReadExactlyAsync(buffer);
    await connection.WriteAsync(buffer);
    var back = new byte[5];
    var got = 0;
    while (got < 5)
        got += await kernel.ReceiveAsync(back.AsMemory(got), SocketFlags.None);
    Console.WriteLine($"echo {System.Text.Encoding.ASCII.GetString(back)}");
}
foreach (var name in new[] { "drop.exception", "engine.loop-error", "engine.command-error", "engine.inline-completion-error" })
    Console.WriteLine($"counter {name} {stack.Statistics[name]}");
"""
    ]

/// An F# console app on the FSharp.Core its SDK brings (newer than the 10.0.115 NetStack.Core was
/// built with, as for every F# user): warnings are errors, so NU1608 fails the build. It pings the
/// kernel and prints the stack's exception counters.
let private fsharpConsumer =
    [
        "app.fsproj",
        """<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <OutputType>Exe</OutputType>
    <TargetFramework>net10.0</TargetFramework>
    <TreatWarningsAsErrors>true</TreatWarningsAsErrors>
  </PropertyGroup>
  <ItemGroup>
    <Compile Include="Program.fs" />
  </ItemGroup>
  <ItemGroup>
    <PackageReference Include="NetStack.Api" Version="1.0.0" />
  </ItemGroup>
</Project>
"""
        "Program.fs",
        $"""open System
open System.Net
open NetStack

let options =
    NetStackOptions(
        TunName = "{consumerTun}",
        Address = IPAddress.Parse "10.211.0.2",
        HostAddress = IPAddress.Parse "10.211.0.1",
        Address6 = null,
        HostAddress6 = null
    )

let run () =
    use stack = NetworkStack.Start options
    let reply = stack.PingAsync(IPAddress.Parse "10.211.0.1", TimeSpan.FromSeconds 5.).GetAwaiter().GetResult()
    printfn "ping %%O" reply.Status

    for name in [ "drop.exception"; "engine.loop-error"; "engine.command-error"; "engine.inline-completion-error" ] do
        printfn "counter %%s %%d" name stack.Statistics.[name]

run ()
"""
    ]

/// Writes `files` into a new folder, then `dotnet run` there against the packed packages
/// (nugetConfig); checks that it restored, built without warnings and ran: the ping answered,
/// the echo came back (when `echoes`) and the stack counted no exception.
let private runConsumer (echoes: bool) (files: (string * string) list) =
    let folder, cleanup = tempFolder ()
    use _ = cleanup
    let packages = packed.Value
    nugetConfig folder packages true |> ignore
    let app = Path.Combine(folder, "app")
    Directory.CreateDirectory app |> ignore

    for name, text in files do
        File.WriteAllText(Path.Combine(app, name), text)

    let code, out, err =
        ExampleAppTests.runProcess ExampleAppTests.dotnetHost [ "run" ] app [] slow

    Expect.equal code 0 $"dotnet run of the consumer app; stdout:\n{out}\nstderr:\n{err}"
    Expect.stringContains out "ping Success" $"the kernel answered the stack's ping; stdout:\n{out}"

    if echoes then
        Expect.stringContains out "echo hello" $"the echo came back; stdout:\n{out}"

    for name in TestUtil.exceptionCounters do
        Expect.stringContains out $"counter {name} 0" $"the stack counted no exception ({name})"

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

            test
                "A C# consumer restores the packages beside newer logging and FSharp.Core packages, builds without warnings and runs" {
                runConsumer true csharpConsumer
            }

            test "An F# consumer on its SDK's FSharp.Core restores, builds without warnings and runs" {
                runConsumer false fsharpConsumer
            }

            test "The library packages declare minimum versions of their dependencies, not exact ones" {
                let folder = packed.Value

                for id in [ "NetStack.Core"; "NetStack.Api"; "NetStack.AspNetCore" ] do
                    let spec = nuspec (single folder id)
                    // NuGet's exact form is version="[1.2.3]"; a bare version is a minimum.
                    Expect.isFalse (spec.Contains "version=\"[") $"{id} pins no dependency exactly:\n{spec}"
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
                let config = nugetConfig folder packages false

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
