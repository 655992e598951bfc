/// `netstack demo` and `netstack bench` end to end: each makes its own nested network namespace
/// inside the test run's, brings a stack up and checks it against the kernel.
module NetStack.Tests.Integration.DemoTests

open System
open Expecto

/// The report lines the demo must print, one per step, each beginning with ✓.
let private expectedSteps =
    [
        "stack up on "
        "kernel pings the stack over IPv4: 3/3 replies"
        "kernel pings the stack over IPv6: 3/3 replies"
        "UDP over IPv4, kernel socket ↔ stack socket: 64 B"
        "UDP over IPv6, kernel socket ↔ stack socket: 64 B"
        "UDP over IPv4, 6000-byte datagram, fragmented both ways: 6000 B"
        "UDP over IPv6, 6000-byte datagram, fragmented both ways: 6000 B"
        "stack pings the kernel over IPv4: 3/3 replies"
        "stack pings the kernel over IPv6: 3/3 replies"
        "TCP over IPv4, kernel client ↔ stack echo server: connected in"
        "TCP over IPv6, kernel client ↔ stack echo server: connected in"
        "HTTP over IPv4, curl on the kernel → stack HTTP server: GET / answered the status page"
        "HTTP over IPv6, curl on the kernel → stack HTTP server: GET / answered the status page"
        "HTTP over IPv4, stack HttpClient → kernel HTTP server (python3 -m http.server): GET http://10.77.0.1:8000/hello.txt"
        "HTTP over IPv6, stack HttpClient → kernel HTTP server (python3 -m http.server): GET http://[fd77::1]:8000/hello.txt"
    ]

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Demo"
        [
            test "netstack demo runs every step, reports each with ✓ and exits 0" {
                let code, out, err = CliTests.runNetstack (TimeSpan.FromSeconds 180.) [ "demo" ]
                Expect.equal code 0 $"exit code; stdout:\n{out}\nstderr:\n{err}"

                for step in expectedSteps do
                    Expect.stringContains out $"✓ {step}" $"report line for '{step}'"

                Expect.isFalse (out.Contains "✗") "no step failed"
                Expect.stringContains out "demo passed" "closing line"
            }

            test "netstack bench prints every case for the stack and the kernel with their ratio and writes the chart" {
                // Small sizes: this checks that every row is measured, not how fast anything is. The
                // bulk transfers must still outlast the kernel's processor-time accounting, which
                // counts 10 ms ticks (USER_HZ): 16 MiB took the kernel column about 11 ms, one
                // tick or none, and its processor time per GB read 0 (a CI run failed on it);
                // 256 MiB takes it about 15 ticks.
                let dir = IO.Directory.CreateTempSubdirectory "netstack-bench"

                try
                    let svg = IO.Path.Combine(dir.FullName, "bench.svg")

                    let code, out, err =
                        CliTests.runNetstack
                            (TimeSpan.FromSeconds 240.)
                            [
                                "bench"
                                "--seconds"
                                "1"
                                "--tcp-mib"
                                "256"
                                "--conn-clients"
                                "1"
                                "--svg"
                                svg
                            ]

                    Expect.equal code 0 $"exit code; stdout:\n{out}\nstderr:\n{err}"
                    let lines = out.Split('\n')

                    // A label, then the padding before the first column.
                    let rowsNamed (row: string) =
                        lines |> Array.filter (fun l -> l.StartsWith(row + "  "))

                    for row in
                        [
                            "UDP round trip p50"
                            "UDP round trip p99"
                            "datagrams/s (32 in flight)"
                            "TCP ping-pong p50"
                            "TCP ping-pong p99"
                            "TCP ping-pong p50, X client"
                            "TCP ping-pong p99, X client"
                            "TCP connections/s, client closes"
                            "TCP connections/s, server closes"
                            "TCP bulk kernel → X"
                            "TCP bulk X → kernel"
                            "  iperf3, same veth"
                            "  iperf3 -R, same veth"
                            "allocated/packet kernel → X"
                            "allocated/packet X → kernel"
                            "UDP X → kernel (40/send)"
                        ] do
                        let found = rowsNamed row
                        Expect.equal found.Length 1 $"one '{row}' row"
                        Expect.isFalse (found.[0].Contains "n/a") $"every column of '{row}' is measured: {found.[0]}"

                    // Processor time for both columns in every case: after each udp, rr, conn,
                    // bulk and usend figure.
                    for row, count in
                        [
                            "  CPU per round trip", 3
                            "  CPU per datagram", 1
                            "  CPU per datagram received", 1
                            "  CPU per connection", 2
                            "  CPU per GB", 2
                        ] do
                        let found = rowsNamed row
                        Expect.equal found.Length count $"{count} '{row}' rows"

                        for line in found do
                            Expect.isFalse (line.Contains "n/a") $"both columns measured: {line}"

                    // The lwIP column (liblwip-dev and gcc, installed by .ci/run) is measured.
                    let bulkIn = (rowsNamed "TCP bulk kernel → X").[0]
                    Expect.equal (bulkIn.Split("Gbit/s").Length - 1) 3 $"stack, kernel and lwIP figures: {bulkIn}"
                    Expect.isFalse (out.Contains "lwIP column skipped") "the lwIP column ran"

                    // No short connection failed, in either column or either close order.
                    for line in rowsNamed "  failed connections" do
                        let fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries)
                        Expect.equal fields.[2..] [| "0"; "0" |] $"no failed connection: {line}"

                    Expect.equal (rowsNamed "  failed connections").Length 2 "a failed-connections row per close order"

                    let chart = IO.File.ReadAllText svg
                    Expect.stringStarts chart "<svg" "an SVG"
                    // One bar (a rect besides the background) per case and processor-time figure.
                    let bars = chart.Split("<rect").Length - 2
                    Expect.equal bars 19 $"bars in the chart:\n{chart}"
                    Expect.stringContains chart "kernel = 1.0" "the line at 1.0"
                finally
                    dir.Delete true
            }

            test "netstack bench --soak runs the mixed load, samples memory and writes the CSV and SVG" {
                // A quarter of a minute with small loads: this checks that every load runs without a
                // failure and every sample is written, not how memory behaves over time.
                let dir = IO.Directory.CreateTempSubdirectory "netstack-soak"

                try
                    let csv = IO.Path.Combine(dir.FullName, "soak.csv")
                    let svg = IO.Path.Combine(dir.FullName, "soak.svg")

                    let code, out, err =
                        CliTests.runNetstack
                            (TimeSpan.FromSeconds 120.)
                            [
                                "bench"
                                "--soak"
                                "0.25"
                                "--soak-interval"
                                "5"
                                "--http-connections"
                                "4"
                                "--echo-connections"
                                "2"
                                "--udp-rate"
                                "200"
                                "--soak-csv"
                                csv
                                "--soak-svg"
                                svg
                            ]

                    Expect.equal code 0 $"exit code; stdout:\n{out}\nstderr:\n{err}"

                    Expect.stringContains
                        out
                        "drop.exception 0, engine.loop-error 0, engine.command-error 0, engine.inline-completion-error 0,"
                        "the stack counted no exception"

                    Expect.stringContains out "client: echo: " "the echo load reports"
                    Expect.stringContains out "client: udp: " "the UDP load reports"
                    Expect.isTrue (out.Contains "wrk: " || out.Contains "client: http: ") "the HTTP load reports"
                    Expect.stringContains out "slope" "the slopes are printed"

                    let rows = IO.File.ReadAllLines csv
                    let header = rows.[0].Split ','
                    let column (name: string) = Array.IndexOf(header, name)
                    // Samples at 5, 10 and 15 s.
                    Expect.equal rows.Length 4 $"a header and three samples:\n{String.Join('\n', rows)}"

                    for row in rows.[1..] do
                        let f = row.Split ','
                        let number (name: string) = float f.[column name]
                        // Two readings of one quantity: /proc/self/status's VmRSS and the sum over
                        // /proc/self/smaps's mappings, taken a few milliseconds apart.
                        let kinds =
                            [ "gc"; "malloc"; "code"; "stacks"; "files"; "other" ]
                            |> List.sumBy (fun k -> number $"resident_{k}_bytes")

                        let rss = number "rss_bytes"
                        Expect.isLessThan (abs (kinds - rss)) (rss * 0.05) $"the kinds add up to the RSS: {row}"
                        Expect.isGreaterThan (number "resident_gc_bytes") 0.0 "memory in the GC's range"
                        // 4 HTTP and 2 echo connections stay open through the run.
                        Expect.isGreaterThanOrEqual (number "tcp_connections") 6.0 $"the persistent connections: {row}"

                    Expect.stringStarts (IO.File.ReadAllText svg) "<svg" "an SVG"
                finally
                    dir.Delete true
            }

            test
                "netstack bench on one processor runs its measuring processes with the runtime's tier-up delay of a multiprocessor, unless the variable is set" {
                // taskset: the runtime sees one processor (sched_getaffinity), as in a one-CPU container.
                let bench (environment: (string * string) list) =
                    let code, out, err =
                        CliTests.runNetstackUnder
                            [ "taskset"; "-c"; "0" ]
                            environment
                            (TimeSpan.FromSeconds 120.0)
                            [ "bench"; "--cases"; "udp"; "--seconds"; "1" ]

                    Expect.equal code 0 $"exit code; stdout:\n{out}\nstderr:\n{err}"
                    out, err

                // The header is printed by the measuring process: what it shows is what it got.
                let out, err = bench []

                Expect.stringContains
                    out
                    "one processor, DOTNET_TC_DelaySingleProcMultiplier=1"
                    "the measuring process got the multiplier 1"

                Expect.stringContains
                    err
                    "DOTNET_TC_DelaySingleProcMultiplier=1 for the measuring processes"
                    "and the bench said so"

                let out, err = bench [ "DOTNET_TC_DelaySingleProcMultiplier", "10" ]

                Expect.stringContains
                    out
                    "one processor, DOTNET_TC_DelaySingleProcMultiplier=10"
                    "a value the user set stands"

                Expect.isFalse (err.Contains "for the measuring processes") "and nothing is announced"
            }

            test "netstack bench --cases bulk at MTU 65000 prints only the bulk rows" {
                let code, out, err =
                    CliTests.runNetstack
                        (TimeSpan.FromSeconds 120.)
                        [ "bench"; "--cases"; "bulk"; "--tcp-mib"; "16"; "--mtu"; "65000" ]

                Expect.equal code 0 $"exit code; stdout:\n{out}\nstderr:\n{err}"
                Expect.stringContains out "MTU 65000" "the header names the MTU"

                let lines = out.Split('\n')

                for row in [ "TCP bulk kernel → X"; "TCP bulk X → kernel"; "allocated/packet X → kernel" ] do
                    let line = lines |> Array.tryFind (fun l -> l.StartsWith row)
                    Expect.isSome line $"a '{row}' row"
                    Expect.isFalse (line.Value.Contains "n/a") $"every column of '{row}' is measured: {line.Value}"

                for row in [ "UDP round trip p50"; "TCP ping-pong p50"; "TCP connections/s" ] do
                    Expect.isFalse (lines |> Array.exists (fun l -> l.StartsWith row)) $"no '{row}' row"
            }
        ]
