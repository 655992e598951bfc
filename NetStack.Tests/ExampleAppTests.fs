/// Runs the C# example app (examples/EchoAndHttp) as a user would, inside the test run's private
/// network namespace: it brings a stack up on its own TUN device (10.93.0.0/24, fd93::/64), echoes
/// over TCP to a kernel socket and fetches a page from a kernel-side server with HttpClient.
module NetStack.Tests.ExampleAppTests

open System
open System.Diagnostics
open System.IO
open Expecto

/// The dotnet host running the tests (`dotnet NetStack.Tests.dll`), else the one on PATH.
let dotnetHost =
    match Environment.ProcessPath with
    | null -> "dotnet"
    | path when Path.GetFileNameWithoutExtension path = "dotnet" -> path
    | _ -> "dotnet"

/// Runs `file args` in `directory` with the given extra environment and returns exit code,
/// standard output and standard error; kills it and fails the test after `timeout`.
let runProcess
    (file: string)
    (args: string list)
    (directory: string)
    (env: (string * string) list)
    (timeout: TimeSpan)
    =
    let info = ProcessStartInfo(file, WorkingDirectory = directory)

    for a in args do
        info.ArgumentList.Add a

    info.RedirectStandardOutput <- true
    info.RedirectStandardError <- true
    info.Environment.["DOTNET_CLI_TELEMETRY_OPTOUT"] <- "1"
    info.Environment.["DOTNET_NOLOGO"] <- "1"
    info.Environment.["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] <- "1"

    for name, value in env do
        info.Environment.[name] <- value

    use proc = Process.Start info
    // Read both pipes at once so a full one never blocks the child.
    let stdout = proc.StandardOutput.ReadToEndAsync()
    let stderr = proc.StandardError.ReadToEndAsync()

    if not (proc.WaitForExit timeout) then
        proc.Kill true
        proc.WaitForExit()

        failtestf
            "%s %s did not finish within %O; output so far:\n%s"
            file
            (String.Join(" ", args))
            timeout
            stdout.Result

    proc.WaitForExit()
    proc.ExitCode, stdout.Result, stderr.Result

let private exampleDll =
    Path.Combine(TestUtil.repoRoot.Value, "examples", "EchoAndHttp", "bin", "Release", "net10.0", "EchoAndHttp.dll")

[<Tests>]
let tests =
    testSequenced
    <| testList
        "ExampleApp"
        [
            test "the EchoAndHttp example echoes over TCP, fetches a page through HttpClient and exits 0" {
                Expect.isTrue (File.Exists exampleDll) $"the example is built ({exampleDll})"

                let code, out, err =
                    runProcess dotnetHost [ exampleDll ] TestUtil.repoRoot.Value [] (TimeSpan.FromSeconds 90.)

                Expect.equal code 0 $"exit code; stdout:\n{out}\nstderr:\n{err}"
                Expect.stringContains out "stack up: netstack on nsexample" "the stack came up on its TUN device"
                Expect.stringContains out "echo server accepted 10.93.0.1:" "the stack accepted the kernel's connection"

                Expect.stringContains
                    out
                    "kernel client got its 38 bytes back: \"hello through a userspace TCP/IP stack\""
                    "the echo came back"

                Expect.stringContains
                    out
                    "kernel web server got \"GET / HTTP/1.1\" from 10.93.0.2:"
                    "the request came from the stack's address"

                Expect.stringContains
                    out
                    "HttpClient through NetStack fetched 56 bytes: <h1>served by the kernel, fetched through NetStack</h1>"
                    "the page arrived"

                Expect.stringContains out "example finished" "the closing line"
                Expect.equal err "" "nothing on standard error"
                // The counters it prints ("name value", non-zero ones only) show no swallowed exception.
                let statistics = out.Substring(out.IndexOf "statistics:")
                let counters = TestUtil.parseCounters statistics
                Expect.isTrue (counters.ContainsKey "device.read") $"the example printed its counters:\n{out}"
                TestUtil.assertNoExceptionsInCounters counters
            }

            test
                "the ForwardProxy example forwards a connection to 198.51.100.7:80 to its loopback echo service and exits 0" {
                let dll =
                    Path.Combine(
                        TestUtil.repoRoot.Value,
                        "examples",
                        "ForwardProxy",
                        "bin",
                        "Release",
                        "net10.0",
                        "ForwardProxy.dll"
                    )

                Expect.isTrue (File.Exists dll) $"the example is built ({dll})"

                let code, out, err =
                    runProcess dotnetHost [ dll ] TestUtil.repoRoot.Value [] (TimeSpan.FromSeconds 90.)

                Expect.equal code 0 $"exit code; stdout:\n{out}\nstderr:\n{err}"
                Expect.stringContains out "forwarding 10.94.0.1:" "the request came from the kernel's address"

                Expect.stringContains
                    out
                    "-> 198.51.100.7:80 to 127.0.0.1:"
                    "to the original destination, spliced to loopback"

                Expect.stringContains out "client got back \"hello through a forwarder\"" "the echo came back"
                Expect.equal err "" "nothing on standard error"
                let counters = TestUtil.parseCounters (out.Substring(out.IndexOf "statistics:"))
                Expect.equal counters["tcp.forward.accepted"] 1L "one forwarded connection"
                TestUtil.assertNoExceptionsInCounters counters
            }

            test
                "the DnsHttpClient example resolves through its kernel-side DNS server and fetches by name, and exits 0" {
                let dll =
                    Path.Combine(
                        TestUtil.repoRoot.Value,
                        "examples",
                        "DnsHttpClient",
                        "bin",
                        "Release",
                        "net10.0",
                        "DnsHttpClient.dll"
                    )

                Expect.isTrue (File.Exists dll) $"the example is built ({dll})"

                let code, out, err =
                    runProcess dotnetHost [ dll ] TestUtil.repoRoot.Value [] (TimeSpan.FromSeconds 90.)

                Expect.equal code 0 $"exit code; stdout:\n{out}\nstderr:\n{err}"

                Expect.stringContains
                    out
                    "kernel DNS server asked www.example.test type 28 from 10.132.0.2:"
                    "AAAA asked over the stack's UDP"

                Expect.stringContains out "kernel DNS server asked www.example.test type 1 from 10.132.0.2:" "A asked"
                Expect.stringContains out "www.example.test is fd32::1, 10.132.0.1" "both, in RFC 6724 order"
                Expect.stringContains out "nothere.example.test: HostNotFound" "NXDOMAIN"

                Expect.stringContains
                    out
                    "kernel web server got \"GET / HTTP/1.1\" (Host: www.example.test:8094) from [fd32::2]:"
                    "HttpClient connected by name, over IPv6 (Happy Eyeballs' first choice)"

                Expect.stringContains out "fetched http://www.example.test:8094/: hello by name" "the page"
                Expect.equal err "" "nothing on standard error"
                let counters = TestUtil.parseCounters (out.Substring(out.IndexOf "statistics:"))

                Expect.equal
                    counters["dns.answered"]
                    4L
                    "AAAA and A for each name; the HttpClient's lookups came from the cache"

                TestUtil.assertNoExceptionsInCounters counters
            }
        ]
