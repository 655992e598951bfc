/// Runs the whole test process inside a private network namespace.
///
/// A thread-level unshare(CLONE_NEWNET) is not enough in .NET: thread-pool threads would stay in
/// the host's namespace. So the entry point re-executes itself under `unshare --net` (as root) or
/// `unshare --user --map-root-user --net` (unprivileged), marks the child with an environment
/// variable, and brings `lo` up inside. No test can then reach or change the host's interfaces.
module NetStack.Tests.Isolation

open System
open System.Diagnostics
open System.IO

/// Set in the child process that runs inside the private namespace.
[<Literal>]
let MarkerVariable = "NETSTACK_TEST_NETNS"

/// True when this process was started inside the namespace made for the tests.
let isIsolated () =
    Environment.GetEnvironmentVariable MarkerVariable = "1"

let private isRoot () =
    try
        File.ReadAllLines "/proc/self/status"
        |> Array.tryFind (fun l -> l.StartsWith "Uid:")
        |> Option.map (fun l -> l.Split([| '\t'; ' ' |], StringSplitOptions.RemoveEmptyEntries).[1] = "0")
        |> Option.defaultValue false
    with _ ->
        false

/// Runs a command and returns (exit code, stdout + stderr).
let run (file: string) (args: string list) =
    let psi = ProcessStartInfo(file)

    for a in args do
        psi.ArgumentList.Add a

    psi.RedirectStandardOutput <- true
    psi.RedirectStandardError <- true
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    p.WaitForExit()
    p.ExitCode, out.Result + err.Result

/// Re-executes the current process inside a new network namespace and returns its exit code.
let private reexec (argv: string[]) =
    let self = Environment.ProcessPath

    let selfArgs =
        // Under `dotnet NetStack.Tests.dll` the process is the host; pass the assembly along.
        if Path.GetFileNameWithoutExtension self = "dotnet" then
            Environment.GetCommandLineArgs().[0] :: List.ofArray argv
        else
            List.ofArray argv

    let unshareArgs =
        if isRoot () then
            [ "--net" ]
        else
            [ "--user"; "--map-root-user"; "--net" ]

    let psi = ProcessStartInfo "unshare"

    for a in unshareArgs @ [ "--"; self ] @ selfArgs do
        psi.ArgumentList.Add a

    psi.Environment.[MarkerVariable] <- "1"
    use p = Process.Start psi
    p.WaitForExit()
    p.ExitCode

/// Makes sure the tests run isolated: returns Some exit code when this process only launched
/// the isolated child, None when the tests should run here (already inside the namespace).
let ensureIsolated (argv: string[]) =
    if isIsolated () then
        match run "ip" [ "link"; "set"; "lo"; "up" ] with
        | 0, _ -> None
        | code, out ->
            eprintfn "could not bring lo up inside the test namespace (exit %d): %s" code out
            Some 1
    else
        Some(reexec argv)
