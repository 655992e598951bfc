/// Runs examples/explore.fsx and examples/tour.fsx the way the README tells a newcomer to, and
/// checks what they print, so the examples cannot rot as the Wire and socket APIs change.
module NetStack.Tests.ExampleTests

open System
open System.Diagnostics
open System.IO
open Expecto

/// The dotnet host running this test when it was started as `dotnet NetStack.Tests.dll`, else
/// the one on PATH.
let private dotnetHost =
    match Environment.ProcessPath with
    | null -> "dotnet"
    | path when Path.GetFileNameWithoutExtension path = "dotnet" -> path
    | _ -> "dotnet"

/// fsi compiles the script first: seconds on a busy two-core machine, so allow plenty.
let private timeout = TimeSpan.FromMinutes 3.0

/// Runs `dotnet fsi --quiet --tailcalls- SCRIPT ARGS` from the repository root (no `tail.` calls:
/// see docs/tailcall-span-repro.fsx) and returns its standard output; fails the calling test on
/// a non-zero exit, anything on standard error or a timeout.
let private runScript (script: string) (args: string list) : string =
    let info = ProcessStartInfo(dotnetHost, WorkingDirectory = TestUtil.repoRoot.Value)

    for a in [ "fsi"; "--quiet"; "--tailcalls-"; script ] @ args do
        info.ArgumentList.Add a

    info.RedirectStandardOutput <- true
    info.RedirectStandardError <- true
    info.Environment.["DOTNET_CLI_TELEMETRY_OPTOUT"] <- "1"
    info.Environment.["DOTNET_NOLOGO"] <- "1"
    use proc = Process.Start info
    // Read both streams concurrently so neither pipe fills up and blocks the script.
    let stdout = proc.StandardOutput.ReadToEndAsync()
    let stderr = proc.StandardError.ReadToEndAsync()

    if not (proc.WaitForExit timeout) then
        proc.Kill true
        failtestf "%s did not finish within %O" script timeout

    proc.WaitForExit()
    Expect.equal proc.ExitCode 0 $"{script} exit code; stderr:\n{stderr.Result}"
    Expect.equal (stderr.Result.Trim()) "" $"{script} writes nothing to standard error"
    stdout.Result

let private runExample (args: string list) = runScript "examples/explore.fsx" args

/// Fails unless `output` has a line that contains `expected`, after trimming.
let private expectLine (output: string) (expected: string) =
    let lines = output.Split('\n') |> Array.map (fun l -> l.Trim())

    if not (lines |> Array.exists (fun l -> l.Contains(expected: string))) then
        failtestf "the script printed no line with %A; it printed:\n%s" expected output

/// The UDP packet the script builds (10.0.0.1:5000 -> 10.0.0.2:7000, "hello", id 0x1234, DF,
/// TTL 64), computed by hand. IPv4 checksum: 4500+0021+1234+4000+4011+0a00+0001+0a00+0002 =
/// 0xeb69, complement 0x1496. UDP checksum: pseudo-header 0a00+0001+0a00+0002+0011+000d =
/// 0x1421, header 1388+1b58+000d = 0x2eed, data 6865+6c6c+6f00 = 0x143d1 -> 0x43d2; in all
/// 0x86e0, complement 0x791f.
let private expectedUdpHex =
    "45000021 12344000 40111496 0a000001 0a000002"
    + "13881b58 000d791f"
    + "68656c6c6f"
    |> String.filter (fun c -> c <> ' ')

/// A test of the explore script: it starts no stack, so the two run as one group beside the unit
/// tests instead of in the sequenced phase.
let private explore (name: string) (body: unit -> unit) =
    testSequencedGroup "Example explore" (testCase name body)

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Example"
        [
            explore "the explore script parses its Linux SYN field by field and prints the UDP packet it builds"
            <| fun () ->
                let output = runExample []
                let line = expectLine output
                line "IPv4 10.0.0.1 -> 10.0.0.2"
                line "header length 20, total length 60, TTL 64, protocol 6"
                line "identification 0xd989, DF true, MF false, fragment offset 0"
                line "header checksum 0x4d30 (verified)"
                line "TCP port 46164 -> 8000"
                line "flags SYN"
                line "sequence 3382976480, acknowledgment 0"
                line "header length 40, window 64240, payload 0 bytes"
                line "checksum 0x51af (verified)"
                line "option MSS 1460"
                line "option SACK permitted"
                line "option timestamps TSval 1243078697 TSecr 0"
                line "option window scale 10"
                line "UDP 10.0.0.1:5000 -> 10.0.0.2:7000"
                line expectedUdpHex

            explore "the explore script reads a packet given as hex on its command line"
            <| fun () ->
                // The kernel's SYN-ACK from the same capture (tcp-ipv4.pcap, frame 2).
                let synAck =
                    "4500003c00004000400626ba0a0000020a000001"
                    + "1f40b4547ffb9d8dc9a41fe1a012fe88d7830000"
                    + "020405b40402080a115547a44a17e0290103030a"

                let output = runExample [ synAck ]
                let line = expectLine output
                line "IPv4 10.0.0.2 -> 10.0.0.1"
                line "TCP port 8000 -> 46164"
                line "flags SYN ACK"
                line "sequence 2147196301, acknowledgment 3382976481"
                line "option timestamps TSval 290801572 TSecr 1243078697"

            // The test runner is inside its own network namespace, so the script may make its TUN
            // device (ns97tour, 10.97.30.0/24, fd97:30::/64) as the README's unshare command lets it.
            testCase "the F# tour script brings a stack up and talks TCP both ways, UDP and ping with the kernel"
            <| fun () ->
                let output = runScript "examples/tour.fsx" []
                let line = expectLine output
                line "stack up on ns97tour: 10.97.30.2 and fd97:30::2"
                line "TCP echo from the stack: hello over TCP"
                line "to 10.97.30.1:"
                line ": hello from the kernel"
                line "UDP answer from the stack: PING OVER UDP"
                line "ping 10.97.30.1 from the stack: Success"
                line "TCP connections established: 2"
                // TestUtil.exceptionCounters, all 0: the stack swallowed no exception.
                line "exceptions the stack caught: drop.exception 0, engine.loop-error 0, engine.command-error 0"
        ]
