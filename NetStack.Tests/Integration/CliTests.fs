/// The `netstack` command as a user sees it: help, bad arguments, and `serve`/`ping` bringing a
/// real stack up. Each test runs the built netstack.dll with `dotnet`, inside the test run's
/// private network namespace, with its own interface name and addresses.
module NetStack.Tests.Integration.CliTests

open System
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Sockets
open System.Runtime.InteropServices
open System.Text
open Expecto

/// The configuration the tests were built in (Release or Debug), to find the matching netstack.dll.
let private configuration =
    if AppContext.BaseDirectory.Contains "/Debug/" then
        "Debug"
    else
        "Release"

/// The built `netstack` command, next to the test binary in the same repository.
let netstackDll =
    lazy
        (let path =
            Path.Combine(
                NetStack.Tests.TestUtil.repoRoot.Value,
                "NetStack.Cli",
                "bin",
                configuration,
                "net10.0",
                "netstack.dll"
            )

         if not (File.Exists path) then
             failwith $"{path} not found: build the solution first (dotnet build NetStack.sln -c {configuration})"

         path)

/// Starts `PREFIX dotnet netstack.dll ARGS` (PREFIX: a wrapper such as `taskset -c 0`, or none)
/// with `environment` added to this process's, stdout and stderr redirected.
let startUnder (prefix: string list) (environment: (string * string) list) (args: string list) =
    let command = prefix @ [ "dotnet"; netstackDll.Value ] @ args
    let psi = ProcessStartInfo(List.head command)

    for a in List.tail command do
        psi.ArgumentList.Add a

    for name, value in environment do
        psi.Environment[name] <- value

    psi.RedirectStandardOutput <- true
    psi.RedirectStandardError <- true
    psi.StandardOutputEncoding <- Encoding.UTF8
    psi.StandardErrorEncoding <- Encoding.UTF8
    Process.Start psi

/// Starts `dotnet netstack.dll ARGS` with stdout and stderr redirected.
let start (args: string list) = startUnder [] [] args

/// Fails when a netstack command's standard error holds the line its commands print at exit when
/// their stack caught exceptions ("netstack ping: the stack caught exceptions: drop.exception 1",
/// StackStarter.ExceptionReport in NetStack.Cli).
let assertNoExceptionReport (stderr: string) =
    for line in stderr.Split '\n' do
        if line.Contains ": the stack caught exceptions: " then
            failtestf "the command's stack caught exceptions: %s\nstderr:\n%s" (line.Trim()) stderr

/// The counters `netstack serve` prints when it exits ("name value" lines, non-zero counters only)
/// from the rest of its standard output: the lines after the last SIGUSR1 dump ("end statistics").
let exitStatistics (stdout: string) =
    match stdout.LastIndexOf "end statistics" with
    | -1 -> NetStack.Tests.TestUtil.parseCounters stdout
    | i -> NetStack.Tests.TestUtil.parseCounters (stdout.Substring(i + "end statistics".Length))

/// Fails unless `netstack serve`'s exit output (`stdout`, the rest after its ready line) printed
/// its counters and they show no swallowed exception (TestUtil.exceptionCounters).
let assertServeCountedNoExceptions (stdout: string) =
    let counters = exitStatistics stdout
    // device.read is never 0 for a stack that served anything: its absence means no statistics.
    Expect.isTrue (counters.ContainsKey "device.read") $"serve printed its counters at exit:\n{stdout}"
    NetStack.Tests.TestUtil.assertNoExceptionsInCounters counters

/// Runs `PREFIX netstack ARGS` with `environment` added (startUnder) to the end, killing it after
/// `timeout`; returns exit code, stdout, stderr. Fails when the command's stack caught exceptions
/// (assertNoExceptionReport).
let runNetstackUnder
    (prefix: string list)
    (environment: (string * string) list)
    (timeout: TimeSpan)
    (args: string list)
    =
    use p = startUnder prefix environment args
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()

    if not (p.WaitForExit timeout) then
        p.Kill true
        p.WaitForExit()

        failtestf
            "netstack %s did not finish within %.0f s; output so far:\n%s"
            (String.Join(" ", args))
            timeout.TotalSeconds
            out.Result

    assertNoExceptionReport err.Result
    p.ExitCode, out.Result, err.Result

/// Runs `netstack ARGS` to the end (killing it after `timeout`); returns exit code, stdout, stderr.
/// Fails when the command's stack caught exceptions (assertNoExceptionReport).
let runNetstack (timeout: TimeSpan) (args: string list) = runNetstackUnder [] [] timeout args

let private quick = TimeSpan.FromSeconds 30.

[<DllImport("libc", SetLastError = true)>]
extern int private kill(int pid, int signal)

/// SIGTERM on Linux.
let private SIGTERM = 15

/// SIGUSR1 on Linux.
let private SIGUSR1 = 10

/// Stops a running `netstack serve` with SIGTERM: it must exit with 0 within 20 s and print
/// counters that show no swallowed exception. `stdout` reads the rest of its standard output
/// (started by the caller, who may have read lines before); returns that rest.
let terminateWith (p: Process) (stdout: Threading.Tasks.Task<string>) =
    Expect.equal (kill (p.Id, SIGTERM)) 0 "SIGTERM sent"
    let stderr = p.StandardError.ReadToEndAsync()

    if not (p.WaitForExit(TimeSpan.FromSeconds 20.)) then
        p.Kill true
        failtest "serve did not exit within 20 s of SIGTERM"

    Expect.equal p.ExitCode 0 $"exit code after SIGTERM; stderr: {stderr.Result}"
    assertServeCountedNoExceptions stdout.Result
    stdout.Result

/// terminateWith, reading the rest of standard output from here.
let terminate (p: Process) =
    terminateWith p (p.StandardOutput.ReadToEndAsync()) |> ignore

/// True while `ip link show NAME` finds the interface in this namespace. (/sys/class/net would
/// show the namespace that mounted sysfs, not ours.)
let interfaceExists (name: string) =
    fst (NetStack.Tests.Isolation.run "ip" [ "link"; "show"; "dev"; name ]) = 0

/// Reads stdout lines until one starts with `ready`; fails after `timeout`.
let waitForReady (p: Process) (timeout: TimeSpan) =
    let deadline = DateTime.UtcNow + timeout
    let mutable ready = None
    let seen = StringBuilder()

    while ready.IsNone do
        let line = p.StandardOutput.ReadLineAsync()
        let left = deadline - DateTime.UtcNow

        if left <= TimeSpan.Zero || not (line.Wait left) then
            p.Kill true

            failtestf
                "no 'ready' line within %.0f s; stdout:\n%s\nstderr:\n%s"
                timeout.TotalSeconds
                (string seen)
                (p.StandardError.ReadToEnd())

        match line.Result with
        | null ->
            failtestf
                "netstack exited before 'ready'; stdout:\n%s\nstderr:\n%s"
                (string seen)
                (p.StandardError.ReadToEnd())
        | l when l.StartsWith "ready" -> ready <- Some l
        | l -> seen.AppendLine l |> ignore

    ready.Value

let private commands = [ "serve"; "ping"; "get"; "demo"; "bench" ]

/// Commands without the interface options (they name their interface otherwise).
let private otherCommands = [ "run" ]

/// Bad command lines, each with a fragment of the one line it must print.
let private badArguments =
    [
        [ "frobnicate" ], "netstack: Unrecognized command or argument 'frobnicate'"
        [ "serve"; "--frob" ], "netstack serve: Unrecognized command or argument '--frob'"
        [ "serve"; "--ip" ], "argument missing for option: '--ip'"
        [ "serve"; "--host-ip6" ], "argument missing for option: '--host-ip6'"
        [ "serve"; "--ip"; "10.0.0" ], "'10.0.0' is not an IPv4 address"
        [ "serve"; "--host-ip"; "fd00::1" ], "'fd00::1' is not an IPv4 address"
        [ "serve"; "--ip6"; "10.0.0.1" ], "'10.0.0.1' is not an IPv6 address"
        [ "serve"; "--ip6"; "fd00:::1" ], "'fd00:::1' is not an IPv6 address"
        [ "serve"; "--udp-echo"; "0" ], "'0' is not a port"
        [ "serve"; "--udp-echo"; "65536" ], "'65536' is not a port"
        [ "serve"; "--udp-echo"; "echo" ], "'echo' is not a port"
        [ "serve"; "--mtu"; "1279" ], "'1279' is not an MTU"
        [ "serve"; "--mtu"; "65536" ], "'65536' is not an MTU"
        [ "serve"; "--mtu=big" ], "'big' is not an MTU"
        [ "serve"; "--tun"; "a-name-longer-than-15" ], "is not an interface name"
        [ "serve"; "--ip"; "10.9.0.1"; "--host-ip"; "10.9.0.1" ], "--ip and --host-ip are both 10.9.0.1"
        [ "ping" ], "missing HOST"
        [ "ping"; "10.77.0.1"; "10.77.0.3" ], "netstack ping: Unrecognized command or argument '10.77.0.3'"
        [ "ping"; "not an address" ], "'not an address' is not an IP address or a host name"
        [ "ping"; "10.77.0.1"; "--dns"; "resolver" ], "'resolver' is not an IPv4 or IPv6 address"
        [ "ping"; "10.77.0.1"; "-c" ], "argument missing for option: '-c'"
        [ "ping"; "10.77.0.1"; "-s"; "70000" ], "'70000' is not an echo data size"
        [ "ping"; "10.77.0.1"; "--mtu"; "9" ], "'9' is not an MTU"
        [ "ping"; "fd77::1"; "--ip6"; "none" ], "the stack has no --ip6 address"
        [ "demo"; "--frob" ], "netstack demo: Unrecognized command or argument '--frob'"
        [ "demo"; "--ip"; "300.1.1.1" ], "'300.1.1.1' is not an IPv4 address"
        [ "serve"; "--echo"; "0" ], "'0' is not a port"
        [ "serve"; "--http"; "80"; "--discard"; "80" ], "TCP port 80 given twice"
        [ "serve"; "--http"; "8080"; "--h2c"; "8080" ], "TCP port 8080 given twice"
        [ "serve"; "--h2c"; "0" ], "'0' is not a port"
        [ "get" ], "missing URL"
        [ "get"; "ftp://10.77.0.1/" ], "is not an http:// URL"
        [ "get"; "http://10.77.0.1/"; "--dns"; "10.0.0" ], "'10.0.0' is not an IPv4 or IPv6 address"
        [ "get"; "http://[fd77::1]/"; "--ip6"; "none" ], "the stack has no --ip6 address"
        [ "bench"; "--seconds"; "0" ], "'0' is not a number of seconds"
        [ "bench"; "--udp-echo"; "7" ], "netstack bench: Unrecognized command or argument '--udp-echo'"
        [ "bench"; "--cases"; "udp,tcp" ], "'udp,tcp' is not a list of udp,rr,conn,bulk"
        [ "bench"; "--conn-clients"; "0" ], "'0' is not a number of threads"
        [ "bench"; "--bulk-flows"; "65" ], "'65' is not a number of flows"
        [ "bench"; "--bulk-runs"; "0" ], "'0' is not a number of runs"
        [ "bench"; "--soak"; "0" ], "'0' is not a number of minutes"
        [ "bench"; "--soak"; "1"; "--soak-load"; "http,tcp" ], "'http,tcp' is not a list of http,echo,udp"
        [ "bench"; "--soak"; "1"; "--udp-rate"; "0" ], "'0' is not a number of datagrams per second"
        [ "bench"; "--soak"; "1"; "--soak-interval"; "0.5" ], "'0.5' is not a number of seconds"
        [ "serve"; "--loss"; "101%" ], "'101%' is not a percentage"
        [ "serve"; "--dup"; "-1%" ], "'-1%' is not a percentage"
        [ "ping"; "10.77.0.1"; "--reorder"; "lots" ], "'lots' is not a percentage"
        [ "get"; "http://10.77.0.1/"; "--corrupt" ], "argument missing for option: '--corrupt'"
        [ "demo"; "--delay"; "11s" ], "'11s' is not a delay"
        [ "serve"; "--delay"; "2 ms" ], "'2 ms' is not a delay"
        [ "bench"; "--rate"; "10G" ], "'10G' is not a rate"
        [ "serve"; "--rate"; "999" ], "'999' is not a rate"
        [ "serve"; "--seed"; "-3" ], "'-3' is not a seed"
        [ "run" ], "Required argument 'COMMAND' missing"
        [ "run"; "-p"; "tcp:0:80"; "--"; "true" ], "'0' is not a port"
        [ "run"; "-p"; "sctp:80:80"; "--"; "true" ], "'sctp' is not a protocol"
        [ "run"; "-p"; "80:80"; "-p"; "udp:80:81"; "-p"; "80:82"; "--"; "true" ], "tcp host port 80 given twice"
        [ "run"; "-p"; "tcp:[::1:80:80"; "--"; "true" ], "an IPv6 host address goes in brackets"
        [ "run"; "--allow"; "10.0.0.1/8"; "--"; "true" ], "bits set past the prefix length"
        [ "run"; "--deny"; "10.0.0.0/8:90-80"; "--"; "true" ], "port range 90-80 is empty"
        [ "run"; "--default"; "maybe"; "--"; "true" ], "'maybe' is not allow or deny"
        [ "run"; "--address"; "10.0.2.100"; "--"; "true" ], "has no prefix length"
        [ "run"; "--address"; "none"; "--address6"; "none"; "--"; "true" ], "the namespace needs at least one"
        [ "run"; "--gateway"; "10.0.3.1"; "--"; "true" ], "is not in the namespace's prefix 10.0.2.100/24"
        [ "run"; "--mtu"; "1000"; "--"; "true" ], "'1000' is not an MTU"
        [ "run"; "--interface"; "a/b"; "--"; "true" ], "is not an interface name"
    ]

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Cli"
        [
            // Help and bad arguments start no stack and touch no interface: they run as one group
            // beside the unit tests instead of in the sequenced phase.
            testSequencedGroup "Cli arguments"
            <| testList
                "help"
                [
                    test "netstack --help describes every command and exits 0" {
                        let code, out, err = runNetstack quick [ "--help" ]
                        Expect.equal code 0 $"exit code; stderr: {err}"

                        for c in commands @ otherCommands do
                            Expect.stringContains out c $"netstack --help names {c}"
                    }

                    // The checks every CLI run goes through must fail when a command's stack did
                    // swallow an exception: on the report line the commands print at exit, and on
                    // the counters `serve` prints.
                    test "the exception checks fail on a report line and on printed exception counters" {
                        Expect.throwsC
                            (fun () ->
                                assertNoExceptionReport
                                    "netstack ping: the stack caught exceptions: engine.loop-error 2\n")
                            (fun e -> Expect.stringContains e.Message "engine.loop-error 2" "names the counter")

                        assertNoExceptionReport "netstack ping: cannot bring the stack up: no permission\n"

                        Expect.throwsC
                            (fun () ->
                                assertServeCountedNoExceptions "device.read 12\ndrop.exception 1\nudp.received 3\n")
                            (fun e -> Expect.stringContains e.Message "drop.exception 1" "names the counter")

                        Expect.throwsT<AssertException>
                            (fun () -> assertServeCountedNoExceptions "ready\n")
                            "no counters printed at all fails too"

                        assertServeCountedNoExceptions "device.read 12\nudp.received 3\n"
                    }

                    test "netstack completes commands and options through the [suggest] directive" {
                        let code, out, err = runNetstack quick [ "[suggest:12]"; "netstack ser" ]
                        Expect.equal code 0 $"exit code; stderr: {err}"
                        Expect.equal (out.Trim()) "serve" "the one command starting with ser"

                        let code, out, err = runNetstack quick [ "[suggest:19]"; "netstack serve --ho" ]
                        Expect.equal code 0 $"exit code; stderr: {err}"

                        Expect.equal
                            (out.Split('\n', StringSplitOptions.RemoveEmptyEntries) |> Array.map _.Trim())
                            [| "--host-ip"; "--host-ip6" |]
                            "serve's options starting with --ho"
                    }

                    for c in otherCommands do
                        test $"netstack {c} --help prints its usage and exits 0" {
                            let code, out, err = runNetstack quick [ c; "--help" ]
                            Expect.equal code 0 $"exit code; stderr: {err}"
                            Expect.stringContains out $"Usage:\n  netstack {c}" "the usage line names the command"
                        }

                    for c in commands do
                        test $"netstack {c} --help prints its usage and exits 0" {
                            let code, out, err = runNetstack quick [ c; "--help" ]
                            Expect.equal code 0 $"exit code; stderr: {err}"
                            Expect.stringContains out $"Usage:\n  netstack {c}" "the usage line names the command"

                            Expect.stringContains out "--tun <NAME>" "the interface options are described"
                        }
                ]

            testSequencedGroup "Cli arguments"
            <| testList
                "bad arguments"
                [
                    for args, message in badArguments do
                        test $"""netstack {String.Join(" ", args)} prints one line and exits 2""" {
                            let code, out, err = runNetstack quick args
                            Expect.equal code 2 $"exit code; stdout: {out}; stderr: {err}"
                            let lines = err.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                            Expect.equal lines.Length 1 $"exactly one line on stderr: {err}"
                            Expect.stringContains lines.[0] message "the line says what is wrong"
                            Expect.stringEnds lines.[0] " --help')" "and points to the command's help"
                            Expect.equal out "" "nothing on stdout"
                        }
                ]

            test "serve prints ready, echoes UDP, and on SIGTERM removes its interface and exits 0" {
                let name = "nsclitest0"

                use p =
                    start
                        [
                            "serve"
                            "--tun"
                            name
                            "--ip"
                            "10.79.0.2"
                            "--host-ip"
                            "10.79.0.1"
                            "--ip6"
                            "fd79::2"
                            "--host-ip6"
                            "fd79::1"
                            "--udp-echo"
                            "7007"
                        ]

                let ready = waitForReady p (TimeSpan.FromSeconds 30.)
                Expect.stringContains ready name "the ready line names the interface"
                Expect.stringContains ready "10.79.0.2" "the ready line gives the IPv4 address"
                Expect.stringContains ready "fd79::2" "the ready line gives the IPv6 address"
                Expect.isTrue (interfaceExists name) "the interface exists while serving"

                // The UDP echo answers a kernel socket.
                use client =
                    new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                client.ReceiveTimeout <- 5000
                client.Connect(IPEndPoint(IPAddress.Parse "10.79.0.2", 7007))
                let sent = Encoding.ASCII.GetBytes "hello, netstack"
                client.Send sent |> ignore
                let buffer: byte array = Array.zeroCreate 100
                let n = client.Receive buffer
                Expect.equal buffer.[.. n - 1] sent "the datagram comes back unchanged"

                let stdoutRest = terminateWith p (p.StandardOutput.ReadToEndAsync())
                Expect.isFalse (interfaceExists name) "the interface is gone"
                Expect.equal (exitStatistics stdoutRest).["udp.received"] 1L "the statistics are printed"
            }

            test "serve --unsafe-inline-completions echoes TCP and UDP, its loop running the services' continuations" {
                use p =
                    start
                        [
                            "serve"
                            "--tun"
                            "nsclitest93"
                            "--ip"
                            "10.93.0.2"
                            "--host-ip"
                            "10.93.0.1"
                            "--ip6"
                            "none"
                            "--udp-echo"
                            "7"
                            "--echo"
                            "7"
                            "--unsafe-inline-completions"
                        ]

                waitForReady p (TimeSpan.FromSeconds 30.) |> ignore
                let target = IPEndPoint(IPAddress.Parse "10.93.0.2", 7)

                use udp = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)
                udp.ReceiveTimeout <- 5000
                udp.Connect target
                let buffer: byte array = Array.zeroCreate 70000

                for i in 1..100 do
                    let sent = Encoding.ASCII.GetBytes $"datagram {i}"
                    udp.Send sent |> ignore
                    let n = udp.Receive buffer
                    Expect.equal buffer.[.. n - 1] sent $"datagram {i} comes back unchanged"

                use tcp =
                    new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                tcp.ReceiveTimeout <- 5000
                tcp.Connect target
                let data = Array.init 300000 (fun i -> byte (i * 7 + i / 256))

                let sender =
                    Threading.Tasks.Task.Run(fun () ->
                        tcp.Send data |> ignore
                        tcp.Shutdown SocketShutdown.Send)

                use back = new IO.MemoryStream()
                let mutable n = tcp.Receive buffer

                while n > 0 do
                    back.Write(buffer, 0, n)
                    n <- tcp.Receive buffer

                sender.Wait()
                Expect.isTrue (back.ToArray() = data) "the TCP echo sent every byte back, in order, and closed"

                let counters = exitStatistics (terminateWith p (p.StandardOutput.ReadToEndAsync()))

                Expect.isGreaterThan
                    (counters.TryFind "engine.inline-completions" |> Option.defaultValue 0L)
                    0L
                    "the loop ran completions itself"
            }

            test "serve with faults echoes UDP through them, prints its counters on SIGUSR1 and keeps serving" {
                let name = "nsclitest92"

                use p =
                    start
                        [
                            "serve"
                            "--tun"
                            name
                            "--ip"
                            "10.92.0.2"
                            "--host-ip"
                            "10.92.0.1"
                            "--ip6"
                            "none"
                            "--udp-echo"
                            "7"
                            "--loss"
                            "30%"
                            "--corrupt=1%"
                            "--delay"
                            "1ms"
                            "--seed"
                            "5"
                        ]

                waitForReady p (TimeSpan.FromSeconds 30.) |> ignore

                use client =
                    new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                client.ReceiveTimeout <- 200
                client.Connect(IPEndPoint(IPAddress.Parse "10.92.0.2", 7))
                let buffer: byte array = Array.zeroCreate 100

                // 20 echoes, each retried until it comes back through 30% loss each way.
                let echo (i: int) =
                    let sent = Encoding.ASCII.GetBytes $"echo {i}"
                    let mutable back = false
                    let mutable attempts = 0

                    while not back && attempts < 40 do
                        attempts <- attempts + 1
                        client.Send sent |> ignore

                        try
                            let n = client.Receive buffer
                            back <- buffer.[.. n - 1] = sent
                        with :? SocketException ->
                            ()

                    Expect.isTrue back $"echo {i} came back"

                for i in 1..20 do
                    echo i

                Expect.equal (kill (p.Id, SIGUSR1)) 0 "SIGUSR1 sent"
                let counters = ResizeArray<string>()
                let mutable inside = false
                let mutable finished = false

                while not finished do
                    let line = p.StandardOutput.ReadLineAsync()

                    if not (line.Wait(TimeSpan.FromSeconds 20.)) || isNull line.Result then
                        p.Kill true
                        failtestf "no counters after SIGUSR1; got:\n%s" (String.Join("\n", counters))

                    match line.Result with
                    | "statistics" -> inside <- true
                    | "end statistics" -> finished <- inside
                    | l when inside -> counters.Add l
                    | _ -> ()

                Expect.exists
                    counters
                    (fun l -> l.StartsWith "faults.in.drop " || l.StartsWith "faults.out.drop ")
                    "the fault counters are printed"

                Expect.exists counters (fun l -> l.StartsWith "udp.received ") "the stack's counters are printed"

                // The process's memory comes with them: the resident set as the kernel reports it
                // (read here from /proc a moment later, so equal up to what changed meanwhile), and
                // the GC's figures (a heap lives inside the memory the GC committed; both are 0
                // until the first collection, which a quiet serve may not have had yet).
                let value (name: string) =
                    counters
                    |> Seq.tryFind (fun l -> l.StartsWith(name + " "))
                    |> Option.map (fun l -> int64 (l.Substring(name.Length + 1)))
                    |> Option.defaultWith (fun () -> failtestf "no %s line in:\n%s" name (String.Join("\n", counters)))

                let vmRss =
                    IO.File.ReadAllLines $"/proc/{p.Id}/status"
                    |> Array.find (fun l -> l.StartsWith "VmRSS:")
                    |> fun l -> int64 (l.Split(' ', StringSplitOptions.RemoveEmptyEntries).[1]) * 1024L

                let rss = value "process.rss"
                Expect.isGreaterThan rss (vmRss * 4L / 5L) $"process.rss {rss} is the VmRSS read just after ({vmRss})"
                Expect.isLessThan rss (vmRss * 5L / 4L) $"process.rss {rss} is the VmRSS read just after ({vmRss})"
                Expect.isGreaterThan (value "gc.allocated") 0L "gc.allocated"
                Expect.isGreaterThanOrEqual (value "gc.committed") (value "gc.heap") "the heap lies in committed memory"
                Expect.isFalse p.HasExited "serve goes on after SIGUSR1"
                echo 21
                terminate p
            }

            test "serve --echo --discard --http serves kernel TCP clients and curl, then exits 0 on SIGTERM" {
                let name = "nsclitest3"

                use p =
                    start
                        [
                            "serve"
                            "--tun"
                            name
                            "--ip"
                            "10.82.0.2"
                            "--host-ip"
                            "10.82.0.1"
                            "--ip6"
                            "fd82::2"
                            "--host-ip6"
                            "fd82::1"
                            "--echo"
                            "7"
                            "--discard"
                            "9"
                            "--http"
                            "80"
                        ]

                let ready = waitForReady p (TimeSpan.FromSeconds 30.)
                Expect.stringContains ready "http 80" "the ready line lists the services"

                // TCP echo: what goes in comes back, then FIN after ours.
                use echo =
                    new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                echo.ReceiveTimeout <- 10000
                echo.Connect(IPEndPoint(IPAddress.Parse "10.82.0.2", 7))
                let sent = Array.init 100000 (fun i -> byte (i * 7))
                echo.Send sent |> ignore
                echo.Shutdown SocketShutdown.Send
                let received = ResizeArray<byte>()
                let buffer = Array.zeroCreate<byte> 65536
                let mutable n = echo.Receive buffer

                while n > 0 do
                    received.AddRange(buffer.[.. n - 1])
                    n <- echo.Receive buffer

                Expect.equal (received.ToArray()) sent "the echo returns every byte, then closes"

                // Discard: reads to the end, then closes.
                use discard =
                    new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp)

                discard.ReceiveTimeout <- 10000
                discard.Connect(IPEndPoint(IPAddress.Parse "fd82::2", 9))
                discard.Send(Array.zeroCreate<byte> 50000) |> ignore
                discard.Shutdown SocketShutdown.Send
                Expect.equal (discard.Receive buffer) 0 "discard sends nothing and closes after our FIN"

                // HTTP with curl, both families.
                for host in [ "10.82.0.2"; "[fd82::2]" ] do
                    let code, page =
                        NetStack.Tests.Isolation.run "curl" [ "-sS"; "--max-time"; "10"; $"http://{host}/" ]

                    Expect.equal code 0 $"curl / over {host}: {page}"
                    Expect.stringStarts page "NetStack" "the status page"

                    let code, out =
                        NetStack.Tests.Isolation.run
                            "curl"
                            [
                                "-sS"
                                "--max-time"
                                "10"
                                "-w"
                                "\n%{http_code}"
                                $"http://{host}/bytes/100000"
                            ]

                    Expect.equal code 0 $"curl /bytes over {host}"
                    let body = out.Substring(0, out.LastIndexOf '\n')
                    Expect.equal body.Length 100000 "N bytes"
                    Expect.equal body.[..25] "abcdefghijklmnopqrstuvwxyz" "the pattern"
                    Expect.stringEnds out "\n200" "status 200"

                let code, out =
                    NetStack.Tests.Isolation.run
                        "curl"
                        [ "-s"; "-o"; "/dev/null"; "-w"; "%{http_code}"; "http://10.82.0.2/nope" ]

                Expect.equal out "404" $"an unknown path is 404 (curl exit {code})"

                terminate p
                Expect.isFalse (interfaceExists name) "the interface is gone"
            }

            test "get fetches a file from a kernel-side python3 http.server through the stack" {
                let directory = Directory.CreateTempSubdirectory "netstack-get-"

                try
                    File.WriteAllText(Path.Combine(directory.FullName, "hello.txt"), "hello over netstack\n")

                    // The server binds the kernel side's address once the interface exists; bind
                    // to :: instead so it is listening before the stack comes up.
                    let psi =
                        ProcessStartInfo(
                            "python3",
                            [
                                "-m"
                                "http.server"
                                "--bind"
                                "::"
                                "--directory"
                                directory.FullName
                                "8083"
                            ]
                        )

                    psi.RedirectStandardOutput <- true
                    psi.RedirectStandardError <- true
                    use server = Process.Start psi

                    try
                        let deadline = DateTime.UtcNow.AddSeconds 5.

                        let rec waitListening () =
                            use probe =
                                new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                            try
                                probe.Connect(IPEndPoint(IPAddress.Loopback, 8083))
                            with :? SocketException when DateTime.UtcNow < deadline ->
                                Threading.Thread.Sleep 50
                                waitListening ()

                        waitListening ()

                        for url in [ "http://10.86.0.1:8083/hello.txt"; "http://[fd86::1]:8083/hello.txt" ] do
                            let code, out, err =
                                runNetstack
                                    (TimeSpan.FromSeconds 60.)
                                    [
                                        "get"
                                        url
                                        "--tun"
                                        "nsclitest6"
                                        "--ip"
                                        "10.86.0.2"
                                        "--host-ip"
                                        "10.86.0.1"
                                        "--ip6"
                                        "fd86::2"
                                        "--host-ip6"
                                        "fd86::1"
                                    ]

                            Expect.equal code 0 $"exit code for {url}; stderr: {err}"
                            Expect.equal out "hello over netstack\n" "the body on stdout"

                        let code, _, err =
                            runNetstack
                                (TimeSpan.FromSeconds 60.)
                                [
                                    "get"
                                    "http://10.86.0.1:8083/missing"
                                    "--tun"
                                    "nsclitest6"
                                    "--ip"
                                    "10.86.0.2"
                                    "--host-ip"
                                    "10.86.0.1"
                                    "--ip6"
                                    "none"
                                ]

                        Expect.equal code 1 "a 404 exits 1"
                        Expect.stringContains err "404" "and says so"
                    finally
                        server.Kill true
                        server.WaitForExit()
                finally
                    directory.Delete true
            }

            test "ping from the stack to the kernel side gets replies and exits 0" {
                let code, out, err =
                    runNetstack
                        (TimeSpan.FromSeconds 60.)
                        [
                            "ping"
                            "10.80.0.1"
                            "-c"
                            "2"
                            "-i"
                            "0.2"
                            "--tun"
                            "nsclitest1"
                            "--ip"
                            "10.80.0.2"
                            "--host-ip"
                            "10.80.0.1"
                            "--ip6"
                            "none"
                        ]

                Expect.equal code 0 $"exit code; stdout: {out}; stderr: {err}"
                Expect.stringContains out "2 packets transmitted, 2 received" "summary line"
                Expect.stringContains out "bytes from 10.80.0.1: icmp_seq=1" "a reply line"
                Expect.isFalse (interfaceExists "nsclitest1") "the interface is gone afterwards"
            }

            test "ping to an address nobody answers exits 1" {
                let code, out, err =
                    runNetstack
                        (TimeSpan.FromSeconds 60.)
                        [
                            "ping"
                            "10.81.0.3"
                            "-c"
                            "1"
                            "-W"
                            "0.5"
                            "--tun"
                            "nsclitest2"
                            "--ip"
                            "10.81.0.2"
                            "--host-ip"
                            "10.81.0.1"
                            "--ip6"
                            "none"
                        ]

                Expect.equal code 1 $"exit code; stdout: {out}; stderr: {err}"
                Expect.stringContains out "1 packets transmitted, 0 received" "summary line"
            }
        ]
