/// Runs one scenario on both subjects and compares what they did.
///
/// The network of test n (names end in n and the process id; addresses 10.172.x.y):
///
/// ```
///   kernel subject ns cfNkPID            peer ns cfNpPID                     test namespace
///   10.172.1.2 on cfkN ──── veth ──── cfvN 10.172.1.1
///                                       lo 10.172.0.1 (the peer), 10.172.0.3 (another peer)
///                                     cftN 10.172.2.1 ── TUN ── NetStack 10.172.2.2 (its fd is here)
///                                       10.172.9.0/24 unreachable (ICMP host unreachable)
///                                       10.172.8.0/24 blackhole (silence)
/// ```
///
/// The peer is the kernel of the peer namespace: the same address (10.172.0.1) for both
/// subjects, one hop away over each subject's own link, where tcpdump watches the wire.
module NetStack.Tests.Conformance.Harness

open System
open System.Collections.Concurrent
open System.IO
open System.Net
open System.Net.Sockets
open System.Text.RegularExpressions
open System.Threading
open Expecto
open NetStack
open NetStack.Tests
open NetStack.Tests.Conformance.Subject

/// The peer's address, the same for both subjects.
let peerAddress = IPAddress.Parse "10.172.0.1"

/// A second address of the peer's host (another peer for UDP filtering).
let otherPeerAddress = IPAddress.Parse "10.172.0.3"

/// A destination the peer's router answers with ICMP host unreachable.
let unreachableAddress = IPAddress.Parse "10.172.9.9"

/// A destination whose packets the peer's router drops silently.
let silentAddress = IPAddress.Parse "10.172.8.8"

/// One packet tcpdump saw on the subject's link.
type Packet =
    {
        /// Sent by the subject (else by the peer).
        FromSubject: bool
        /// The DSCP (the TOS byte's upper six bits).
        Dscp: int
        /// The TTL.
        Ttl: int
        /// Don't Fragment.
        Df: bool
        /// A fragment (More Fragments or a non-zero offset).
        Fragment: bool
        /// TCP, UDP, ICMP ...
        Protocol: string
        /// The TCP flags as tcpdump prints them ("S", "S.", "F.", "R", "R.", "P." ...); "" for others.
        TcpFlags: string
        /// The rest of tcpdump's line (ports, lengths, window).
        Info: string
    }

/// What a scenario works with: the subject, the peer's side and the log.
type Env =
    {
        /// The subject under test.
        Subject: ISubject
        /// Its log.
        Log: Log
        /// The peer's namespace, where the peer's sockets are made.
        PeerNs: string
        /// Where this subject's capture goes.
        CaptureFile: string
    }

    /// Logs `name: outcome`.
    member env.Record (name: string) (outcome: string) = env.Log.Add $"{name}: {outcome}"

    /// Runs an asynchronous call as step `name`; logs its outcome (`show` for its value) and
    /// returns the value when it succeeded.
    member env.Await (name: string) (show: 'T -> string) (call: unit -> Threading.Tasks.Task<'T>) =
        let started =
            try
                Ok(call ())
            with e ->
                Error e

        match started with
        | Error e ->
            env.Record name (describe e)
            None
        | Ok task ->
            env.Record name (outcomeWithin stepTimeout show task)

            if task.IsCompletedSuccessfully then
                Some task.Result
            else
                None

    /// Runs a synchronous call as step `name`; logs its outcome and returns the value when it
    /// succeeded.
    member env.Do (name: string) (show: 'T -> string) (call: unit -> 'T) =
        let mutable value = None

        env.Record
            name
            (outcomeOf show (fun () ->
                let v = call ()
                value <- Some v
                v))

        value

    /// A kernel socket of the peer.
    member env.PeerSocket(kind: SocketType) =
        KernelSubject.socketIn env.PeerNs AddressFamily.InterNetwork kind

    /// The peer's endpoint at `port`.
    member _.PeerAt(port: int) = IPEndPoint(peerAddress, port)

    /// The subject's endpoint at `port`.
    member env.SubjectAt(port: int) = IPEndPoint(env.Subject.Address, port)

// ---- The wire ---------------------------------------------------------------------------------

let private header =
    Regex @"IP \(tos 0x([0-9a-f]+)(,[A-Za-z0-9()-]+)?, ttl (\d+), id \d+, offset (\d+), flags \[([^\]]*)\], proto (\w+)"

let private body = Regex @"^\s+(\S+) > (\S+): (.*)$"
let private tcpFlags = Regex @"Flags \[([^\]]*)\]"

/// The IPv4 packets of `file` (tcpdump -v), with who sent each.
let readPackets (subject: IPAddress) (file: string) =
    let _, output = Isolation.run "tcpdump" [ "-n"; "-v"; "-r"; file; "ip" ]
    let lines = output.Split('\n')
    let own = subject.ToString()

    [
        for i in 0 .. lines.Length - 2 do
            let h = header.Match lines.[i]
            let b = body.Match lines.[i + 1]

            if h.Success && b.Success then
                let source = b.Groups.[1].Value
                let flags = h.Groups.[5].Value
                let info = b.Groups.[3].Value
                let tcp = tcpFlags.Match info

                {
                    FromSubject = source = own || source.StartsWith(own + ".")
                    Dscp = Convert.ToInt32(h.Groups.[1].Value, 16) >>> 2
                    Ttl = int h.Groups.[3].Value
                    Df = flags.Contains "DF"
                    Fragment = flags.Contains "+" || h.Groups.[4].Value <> "0"
                    Protocol = h.Groups.[6].Value
                    TcpFlags = if tcp.Success then tcp.Groups.[1].Value else ""
                    Info = info
                }
    ]

/// Runs `f` while tcpdump watches the subject's link; once it is done, waits until the capture
/// holds a packet matching the BPF `awaited` (one the scenario knows must be there) and returns
/// the packets.
let captureWhile (env: Env) (awaited: string) (f: unit -> unit) =
    let tcpdump =
        Capture.start [ "ip"; "netns"; "exec"; env.PeerNs ] env.Subject.PeerSideDevice env.CaptureFile

    try
        f ()
        Capture.awaitPackets env.CaptureFile awaited
    finally
        Capture.stop tcpdump

    readPackets env.Subject.Address env.CaptureFile

/// A set of values for the log: "64" or "0,64".
let showSet (values: seq<'T>) =
    String.Join(",", values |> Seq.distinct |> Seq.sort |> Seq.map string)

// ---- The network ------------------------------------------------------------------------------

let private run (args: string list) =
    let code, output = Isolation.run "ip" args
    Expect.equal code 0 $"ip %A{args}:\n{output}"

let private ipIn (ns: string) (args: string list) = run ([ "-n"; ns ] @ args)

let private sysctlIn (ns: string) (settings: string list) =
    let code, output =
        Isolation.run "ip" ([ "netns"; "exec"; ns; "sysctl"; "-qw" ] @ settings)

    Expect.equal code 0 $"sysctl %A{settings} in {ns}:\n{output}"

/// The NetStack subject's options: the stack on TUN cftN, IPv4 only.
let stackOptions (n: int) =
    NetStackOptions(
        TunName = $"cft{n}",
        Address = IPAddress.Parse "10.172.2.2",
        HostAddress = IPAddress.Parse "10.172.2.1",
        Address6 = null,
        HostAddress6 = null,
        LinkLocalAddress = false,
        TcpLinger = TimeSpan.FromSeconds 2.0
    )

/// The two logs of one scenario: (kernel, netstack).
type Runs = { Kernel: Log; NetStack: Log }

/// Named namespaces live in /run/netns, which outlives a test process that was killed (its
/// `finally` never ran): once per run, delete this suite's namespaces (cfNpPID, cfNkPID) whose
/// process no longer exists.
let private sweepStale =
    lazy
        (let code, names = Isolation.run "ip" [ "netns"; "list" ]

         if code = 0 then
             for line in names.Split('\n', StringSplitOptions.RemoveEmptyEntries) do
                 let name = line.Split(' ').[0]
                 let m = Text.RegularExpressions.Regex.Match(name, "^cf[0-9]+[pk]([0-9]+)$")

                 if m.Success && not (Directory.Exists $"/proc/{m.Groups.[1].Value}") then
                     Isolation.run "ip" [ "netns"; "del"; name ] |> ignore)

/// Builds test n's network, runs `scenario` on the kernel subject and then on NetStack, and tears
/// the network down; checks that the stack counted no exception.
let runBoth (n: int) (scenario: Env -> unit) =
    sweepStale.Force()
    let pid = Environment.ProcessId
    let peer, kernelNs = $"cf{n}p{pid}", $"cf{n}k{pid}"
    let tun, vethPeer, vethKernel = $"cft{n}", $"cfv{n}", $"cfk{n}"

    let captureBase =
        Path.Combine(Path.GetTempPath(), $"netstack-conformance-{pid}-{n}")

    let options = stackOptions n
    let stack = NetworkStack.Start options
    let mutable made = []

    try
        try
            for ns in [ peer; kernelNs ] do
                run [ "netns"; "add"; ns ]
                made <- ns :: made
                ipIn ns [ "link"; "set"; "lo"; "up" ]

            sysctlIn
                peer
                [
                    "net.ipv4.ip_forward=1"
                    "net.ipv4.icmp_ratelimit=0"
                    "net.ipv4.conf.all.rp_filter=0"
                ]

            ipIn peer [ "addr"; "add"; "10.172.0.1/32"; "dev"; "lo" ]
            ipIn peer [ "addr"; "add"; "10.172.0.3/32"; "dev"; "lo" ]
            ipIn peer [ "route"; "add"; "unreachable"; "10.172.9.0/24" ]
            ipIn peer [ "route"; "add"; "blackhole"; "10.172.8.0/24" ]
            // The kernel subject's link.
            ipIn
                peer
                [
                    "link"
                    "add"
                    vethPeer
                    "type"
                    "veth"
                    "peer"
                    "name"
                    vethKernel
                    "netns"
                    kernelNs
                ]

            ipIn peer [ "addr"; "add"; "10.172.1.1/24"; "dev"; vethPeer ]
            ipIn peer [ "link"; "set"; vethPeer; "up" ]
            ipIn kernelNs [ "addr"; "add"; "10.172.1.2/24"; "dev"; vethKernel ]
            ipIn kernelNs [ "link"; "set"; vethKernel; "up" ]
            ipIn kernelNs [ "route"; "add"; "default"; "via"; "10.172.1.1" ]
            // NetStack's link: the TUN moves to the peer's namespace (the stack keeps its fd).
            run [ "link"; "set"; "dev"; tun; "netns"; peer ]
            ipIn peer [ "addr"; "add"; "10.172.2.1"; "peer"; "10.172.2.2"; "dev"; tun ]
            ipIn peer [ "link"; "set"; tun; "up" ]

            let envFor subject =
                {
                    Subject = subject
                    Log = Log subject.Name
                    PeerNs = peer
                    CaptureFile = $"{captureBase}-{subject.Name}.pcap"
                }

            let kernel =
                envFor (KernelSubject.create kernelNs (IPAddress.Parse "10.172.1.2") vethPeer)

            scenario kernel

            let netstack = envFor (NetStackSubject.create stack options.Address tun)

            scenario netstack
            stack.Dispose()
            // After Dispose: the loop has stopped, so the counters are final.
            TestUtil.assertNoExceptions stack

            {
                Kernel = kernel.Log
                NetStack = netstack.Log
            }
        with e ->
            failtestf "%s\nstatistics:\n%O" (e.ToString()) stack.Statistics
    finally
        stack.Dispose()

        for ns in made do
            Isolation.run "ip" [ "netns"; "del"; ns ] |> ignore

        for name in [ "kernel"; "netstack" ] do
            File.Delete $"{captureBase}-{name}.pcap"

// ---- The comparison ---------------------------------------------------------------------------

/// A difference from the kernel kept on purpose: at step `Step`, where the kernel's outcome is
/// `Kernel`, NetStack's is `NetStack`, for `Reason`. Each is listed in docs/conformance.md under
/// its Id.
type Difference =
    {
        /// The name docs/conformance.md lists it under.
        Id: string
        /// The step it applies to.
        Step: string
        /// The kernel's outcome there.
        Kernel: string
        /// NetStack's outcome there.
        NetStack: string
        /// Why.
        Reason: string
    }

let private split (line: string) =
    match line.IndexOf ": " with
    | -1 -> line, ""
    | i -> line.[.. i - 1], line.[i + 2 ..]

/// The lines of both logs side by side, each marked "=" (equal), "~ Id" (a listed difference) or
/// "X" (a mismatch); and whether they all match.
let compare (differences: Difference list) (kernel: string list) (netstack: string list) =
    let count = max kernel.Length netstack.Length

    let at (l: string list) i =
        if i < l.Length then l.[i] else "(nothing)"

    let width = 2 + (kernel |> List.fold (fun w l -> max w l.Length) 6)

    let rows =
        [
            for i in 0 .. count - 1 do
                let k, s = at kernel i, at netstack i
                let kStep, kOutcome = split k
                let sStep, sOutcome = split s

                let mark =
                    if k = s then
                        Ok "="
                    else
                        match
                            differences
                            |> List.tryFind (fun d ->
                                d.Step = kStep && kStep = sStep && d.Kernel = kOutcome && d.NetStack = sOutcome)
                        with
                        | Some d -> Ok $"~ {d.Id}"
                        | None -> Error "X"

                mark, k.PadRight width + s
        ]

    let text =
        function
        | Ok m
        | Error m -> m

    let markWidth = 1 + (rows |> List.fold (fun w (m, _) -> max w (text m).Length) 1)

    let table =
        String.Join(
            "\n",
            ("".PadRight markWidth + "kernel".PadRight width + "netstack")
            :: [ for mark, row in rows -> (text mark).PadRight markWidth + row ]
        )

    table, rows |> List.forall (fun (m, _) -> Result.isOk m)

/// The outcome of every step of every scenario run so far, by subject ("kernel", "netstack"),
/// scenario number and step: "kernel 7: read" → outcome (the README's error table is checked
/// against them).
let outcomes = ConcurrentDictionary<string, string>()

/// A conformance test: scenario `name` on network n, both subjects; the logs must match but for
/// `differences`. `pending` (a reason) marks a scenario whose NetStack side waits for a feature:
/// both sides still run and the kernel's outcomes are recorded, but the test is reported as
/// skipped with the reason (docs/conformance.md lists it as pending).
let scenarioWith (pending: string option) (differences: Difference list) (n: int) (name: string) (body: Env -> unit) =
    test name {
        let runs = runBoth n body

        for log in [ runs.Kernel; runs.NetStack ] do
            for line in log.Lines do
                let step, outcome = split line
                outcomes.[$"{log.Subject} {n}: {step}"] <- outcome

        let table, same = compare differences runs.Kernel.Lines runs.NetStack.Lines
        printfn "conformance: %s\n%s\n" name table

        match pending with
        | Some reason -> skiptestf "pending: %s\n%s" reason table
        | None -> Expect.isTrue same $"NetStack's log differs from the kernel's ({name}):\n{table}"
    }

/// A conformance test whose logs must be equal.
let scenario n name body = scenarioWith None [] n name body
