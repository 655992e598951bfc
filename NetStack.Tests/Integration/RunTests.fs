/// `netstack run -- COMMAND`: the command in new namespaces whose network is the stack. Each test
/// runs the built netstack.dll inside the test run's private network namespace, which is then
/// the "host" of `netstack run`: nothing can leave the machine. The kernel (ip, ping, python3
/// sockets inside; .NET sockets on the test namespace's loopback outside) is the oracle; every
/// run prints its counters (--stats) and they must show no swallowed exception.
module NetStack.Tests.Integration.RunTests

open System
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Sockets
open System.Security.Cryptography
open System.Text
open System.Threading.Tasks
open Expecto
open NetStack.Tests
open NetStack.Tests.Integration.CliTests

let timeout = TimeSpan.FromSeconds 60.

/// The counters `netstack run --stats` printed on standard error (between "statistics" and
/// "end statistics"); fails when there are none.
let statistics (stderr: string) =
    let lines = stderr.Split '\n' |> Array.map _.TrimEnd('\r')

    match Array.tryFindIndexBack ((=) "statistics") lines, Array.tryFindIndexBack ((=) "end statistics") lines with
    | Some first, Some last when first < last ->
        TestUtil.parseCounters (String.Join("\n", lines[first + 1 .. last - 1]))
    | _ -> failtestf "netstack run printed no statistics; stderr:\n%s" stderr

/// Checks what every run must show at exit: the counters, no swallowed exception, and no TUN
/// descriptor or socket left open in netstack run itself.
let checkExit (stderr: string) =
    let counters = statistics stderr
    Expect.isTrue (counters.ContainsKey "process.fd.open") $"the descriptor count was printed:\n{stderr}"
    TestUtil.assertNoExceptionsInCounters counters
    Expect.isFalse (counters.ContainsKey "process.fd.tun") $"no TUN descriptor left open:\n{stderr}"
    Expect.isFalse (counters.ContainsKey "process.fd.socket") $"no socket left open:\n{stderr}"
    counters

/// Runs `netstack run --stats ARGS` to its end; returns exit code, stdout, stderr, counters.
let run (args: string list) =
    let code, out, err = runNetstack timeout ("run" :: "--stats" :: args)
    code, out, err, checkExit err

/// Starts `netstack run --stats ARGS` and reads its standard output up to a line "ready" that
/// the command prints; returns the process and the rest of its standard output (a task).
let startReady (args: string list) =
    let p = start ("run" :: "--stats" :: args)
    let err = p.StandardError.ReadToEndAsync()
    let seen = StringBuilder()
    let deadline = DateTime.UtcNow + timeout
    let mutable ready = false

    while not ready do
        let line = p.StandardOutput.ReadLineAsync()

        if not (line.Wait(max TimeSpan.Zero (deadline - DateTime.UtcNow))) then
            p.Kill true
            failtestf "no 'ready' within %.0f s; stdout:\n%s\nstderr:\n%s" timeout.TotalSeconds (string seen) err.Result

        match line.Result with
        | null ->
            failtestf
                "exited before 'ready' (exit %d); stdout:\n%s\nstderr:\n%s"
                (p.WaitForExit()
                 p.ExitCode)
                (string seen)
                err.Result
        | "ready" -> ready <- true
        | l -> seen.AppendLine l |> ignore

    p, p.StandardOutput.ReadToEndAsync(), err

/// Waits for a started run to exit; returns exit code, stdout, stderr, counters.
let finish (p: Process) (out: Task<string>) (err: Task<string>) =
    if not (p.WaitForExit timeout) then
        p.Kill true
        failtestf "netstack run did not exit; stdout:\n%s" out.Result

    assertNoExceptionReport err.Result
    p.ExitCode, out.Result, err.Result, checkExit err.Result

[<Runtime.InteropServices.DllImport("libc", SetLastError = true)>]
extern int private kill(int pid, int signal)

let sha256 (bytes: byte[]) =
    Convert.ToHexString(SHA256.HashData bytes)

/// The TCP server inside: accepts `count` connections one after the other; on each, sends
/// SENDBYTES random bytes while reading to the end of file (both ways at once), then prints
/// "sent N HASH" and "received N HASH" and closes.
let private tcpServer (port: int) (count: int) (sendBytes: int) =
    $"""
import hashlib, os, socket, sys, threading
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", {port}))
s.listen()
print("ready", flush=True)
for _ in range({count}):
    c, peer = s.accept()
    data = os.urandom({sendBytes})
    t = threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR)))
    t.start()
    h = hashlib.sha256(); n = 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        h.update(b); n += len(b)
    t.join()
    c.close()
    print("peer", peer[0], flush=True)
    print("sent", len(data), hashlib.sha256(data).hexdigest().upper(), flush=True)
    print("received", n, h.hexdigest().upper(), flush=True)
"""

/// Connects to `target`, sends `bytes` and reads to the end at the same time; returns what came back.
let private exchange (target: IPEndPoint) (bytes: byte[]) =
    task {
        use client = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp)
        do! client.ConnectAsync target
        use stream = new NetworkStream(client, ownsSocket = false)

        let sending =
            task {
                do! stream.WriteAsync(ReadOnlyMemory bytes)
                client.Shutdown SocketShutdown.Send
            }

        use received = new MemoryStream()
        do! stream.CopyToAsync received
        do! sending
        return received.ToArray()
    }

let lineValue (prefix: string) (out: string) =
    out.Split '\n'
    |> Array.map _.Trim()
    |> Array.filter _.StartsWith(prefix + " ")
    |> Array.map (fun l -> l.Substring(prefix.Length + 1))
    |> List.ofArray

/// The descriptors a process started the way the tests start netstack sees ("ls /proc/self/fd",
/// less the one ls itself opens for the directory).
let private plainDescriptors () =
    let psi = ProcessStartInfo "sh"
    psi.ArgumentList.Add "-c"
    psi.ArgumentList.Add "ls /proc/$$/fd"
    psi.RedirectStandardOutput <- true
    psi.RedirectStandardError <- true
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEnd()
    p.WaitForExit()

    out.Split('\n', StringSplitOptions.RemoveEmptyEntries)
    |> Array.map _.Trim()
    |> Set.ofArray

/// Why the unprivileged path cannot be tried here, or None.
let private unprivilegedUnavailable () =
    let read path =
        try
            Some((File.ReadAllText path).Trim())
        with _ ->
            None

    let dotnet = Environment.ProcessPath

    if read "/proc/sys/user/max_user_namespaces" = Some "0" then
        Some "user namespaces are disabled (user.max_user_namespaces = 0)"
    elif
        fst (Isolation.run "id" [ "-u" ]) <> 0
        || (snd (Isolation.run "id" [ "-u" ])).Trim() <> "0"
    then
        Some "the tests do not run as root, so they cannot make a private /dev/net/tun for another user"
    else
        let code, out =
            Isolation.run
                "setpriv"
                [
                    "--reuid=65534"
                    "--regid=65534"
                    "--clear-groups"
                    "env"
                    "HOME=/tmp"
                    "DOTNET_CLI_HOME=/tmp"
                    dotnet
                    netstackDll.Value
                    "--help"
                ]

        if code <> 0 then
            Some $"user 65534 cannot run '{dotnet} {netstackDll.Value}' (exit {code}): {out.Trim()}"
        else
            None

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Run"
        [
            test "COMMAND's exit status passes through: 0, 3, killed by SIGKILL (128+9), not found (127)" {
                let code, _, _, _ = run [ "--"; "true" ]
                Expect.equal code 0 "true"
                let code, _, _, _ = run [ "--"; "sh"; "-c"; "exit 3" ]
                Expect.equal code 3 "exit 3"
                let code, _, _, _ = run [ "--"; "sh"; "-c"; "kill -KILL $$" ]
                Expect.equal code 137 "SIGKILL"
                let code, _, err, _ = run [ "--"; "no-such-command-netstack-test" ]
                Expect.equal code 127 "not found"
                Expect.stringContains err "cannot run 'no-such-command-netstack-test'" "the reason"
            }

            test "a namespace that cannot be set up exits 125 with the reason" {
                // 'lo' exists in every new network namespace: the TUN device cannot take the name.
                let code, _, err = runNetstack timeout [ "run"; "--interface"; "lo"; "--"; "true" ]
                Expect.equal code 125 $"exit status; stderr:\n{err}"
                Expect.stringContains err "netstack run: cannot set up the namespace" "the reason"
                Expect.stringContains err "'lo'" "names the interface"
            }

            test "SIGTERM to netstack run reaches COMMAND, whose status comes back" {
                let p, out, err =
                    startReady
                        [
                            "--"
                            "sh"
                            "-c"
                            "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done"
                        ]

                Expect.equal (kill (p.Id, 15)) 0 "SIGTERM sent"
                let code, _, _, _ = finish p out err
                Expect.equal code 42 "the trap's status"
            }

            test
                "inside: the addresses, the MTU, default routes via the stack, resolv.conf; the host's resolv.conf untouched" {
                let hostResolv = File.ReadAllBytes "/etc/resolv.conf"

                let code, out, err, _ =
                    run
                        [
                            "--"
                            "sh"
                            "-c"
                            "ip -o -4 addr show dev tun0; ip -o -6 addr show dev tun0 scope global; ip -o link show dev tun0; "
                            + "ip -4 route show default; ip -6 route show default; cat /etc/resolv.conf; ip -o link show | wc -l"
                        ]

                Expect.equal code 0 $"stderr:\n{err}"
                Expect.stringContains out "inet 10.0.2.100/24" "IPv4 address"
                Expect.stringContains out "inet6 fd00::100/64" "IPv6 address"
                Expect.stringContains out "mtu 65520" "MTU"
                Expect.stringContains out "default via 10.0.2.2 dev tun0" "IPv4 default route"
                Expect.stringContains out "default via fd00::2 dev tun0" "IPv6 default route"
                Expect.stringContains out "nameserver 10.0.2.3\nnameserver fd00::3\n" "resolv.conf"
                Expect.equal (out.Trim().Split('\n') |> Array.last |> _.Trim()) "2" "lo and tun0 only"
                Expect.equal (File.ReadAllBytes "/etc/resolv.conf") hostResolv "the host's resolv.conf"
            }

            test "options: another name, IPv4 only, MTU 1500, no offloads, no resolv.conf; the gateway answers ping" {
                let hostResolv = File.ReadAllText "/etc/resolv.conf"

                let code, out, err, counters =
                    run
                        [
                            "--interface"
                            "sandbox7"
                            "--address"
                            "192.168.7.5/24"
                            "--gateway"
                            "192.168.7.1"
                            "--address6"
                            "none"
                            "--mtu"
                            "1500"
                            "--no-offloads"
                            "--no-resolv-conf"
                            "--"
                            "sh"
                            "-c"
                            "ip -o addr show dev sandbox7 scope global; ip -o link show dev sandbox7; ip route show default; "
                            + "cat /etc/resolv.conf; ping -c 2 -i 0.2 -W 2 192.168.7.1 >/dev/null && echo pinged"
                        ]

                Expect.equal code 0 $"stderr:\n{err}"
                Expect.stringContains out "inet 192.168.7.5/24" "address"
                Expect.isFalse (out.Contains "inet6") "no global IPv6 address"
                Expect.stringContains out "mtu 1500" "MTU"
                Expect.stringContains out "default via 192.168.7.1 dev sandbox7" "default route"
                Expect.stringContains out hostResolv "the host's resolv.conf seen inside"
                Expect.stringContains out "pinged" "ping"
                Expect.equal (counters.TryFind "icmp.echo.replied") (Some 2L) "the stack answered both"
            }

            test "ping of the gateway from inside, IPv4 and IPv6" {
                let code, out, err, counters =
                    run
                        [
                            "--"
                            "sh"
                            "-c"
                            "ping -c 3 -i 0.2 -W 2 10.0.2.2 && ping -c 3 -i 0.2 -W 2 fd00::2"
                        ]

                Expect.equal code 0 $"stdout:\n{out}\nstderr:\n{err}"
                Expect.stringContains out "3 received" "IPv4"
                Expect.equal (counters.TryFind "icmp.echo.replied") (Some 6L) "six replies"
            }

            test
                "-p tcp: a kernel server inside reached from the host's loopback, 4 MB each way SHA-256 exact, IPv4 and IPv6" {
                let up = 4_000_000
                let down = 3_000_000

                let p, out, err =
                    startReady
                        [
                            "-p"
                            "tcp:127.0.0.1:18080:9000"
                            "-p"
                            "18081:9000"
                            "--"
                            "python3"
                            "-c"
                            tcpServer 9000 2 down
                        ]

                let results =
                    [
                        IPEndPoint(IPAddress.Loopback, 18080)
                        IPEndPoint(IPAddress.IPv6Loopback, 18081)
                    ]
                    |> List.mapi (fun i target ->
                        let bytes = Array.zeroCreate<byte> up
                        Random(i).NextBytes bytes
                        let back = TestUtil.waitWithin timeout (exchange target bytes)
                        sha256 bytes, back)

                let code, out, _, counters = finish p out err
                Expect.equal code 0 $"the server's exit status; stdout:\n{out}"
                let sent = lineValue "sent" out
                let received = lineValue "received" out

                for i, (upHash, back) in List.indexed results do
                    Expect.equal received[i] $"{up} {upHash}" $"connection {i}: what the namespace received"
                    Expect.equal $"{back.Length} {sha256 back}" sent[i] $"connection {i}: what the host received"

                Expect.equal
                    (lineValue "peer" out)
                    [ "::ffff:10.0.2.2"; "::ffff:10.0.2.2" ]
                    "the connections come from the gateway"

                Expect.equal (counters.TryFind "publish.tcp.spliced") (Some 2L) "two splices"
                Expect.isNone (counters.TryFind "publish.tcp.reset") "no reset"
            }

            test "-p udp: datagrams from two host sources reach a kernel server inside and its replies come back" {
                let server =
                    """
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 9001))
print("ready", flush=True)
while True:
    d, a = u.recvfrom(70000)
    if d == b"quit":
        break
    u.sendto(d[::-1], a)
"""

                let p, out, err =
                    startReady [ "-p"; "udp:18082:9001"; "--"; "python3"; "-c"; server ]

                let sizes = [ 1; 100; 1472; 9000; 60000 ]

                for source in [ IPAddress.Loopback; IPAddress.IPv6Loopback ] do
                    use client = new Socket(source.AddressFamily, SocketType.Dgram, ProtocolType.Udp)
                    client.ReceiveTimeout <- 5000
                    client.Connect(IPEndPoint(source, 18082))
                    let rng = Random 7

                    for size in sizes do
                        let datagram = Array.zeroCreate<byte> size
                        rng.NextBytes datagram
                        client.Send datagram |> ignore
                        let reply = Array.zeroCreate<byte> 65536
                        let n = client.Receive reply
                        Expect.equal reply[.. n - 1] (Array.rev datagram) $"{size}-byte datagram from {source}"

                use quit = new UdpClient()

                quit.Send(Encoding.ASCII.GetBytes "quit", 4, IPEndPoint(IPAddress.Loopback, 18082))
                |> ignore

                let code, _, _, counters = finish p out err
                Expect.equal code 0 "the server's exit status"

                Expect.equal
                    (counters.TryFind "publish.udp.flows")
                    (Some 3L)
                    "a flow per source (two clients and the quit)"

                Expect.isNone (counters.TryFind "publish.udp.dropped") "nothing dropped"
            }

            test "-p tcp: a connection the namespace refuses is reset on the host side" {
                // Nothing listens on 9003 inside: the namespace's kernel answers the stack's SYN with a RST.
                let p, out, err =
                    startReady
                        [
                            "-p"
                            "tcp:127.0.0.1:18084:9003"
                            "--"
                            "sh"
                            "-c"
                            "echo ready; exec sleep 30"
                        ]

                use client =
                    new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                client.ReceiveTimeout <- 10000
                client.Connect(IPEndPoint(IPAddress.Loopback, 18084))

                let error =
                    try
                        let n = client.Receive(Array.zeroCreate<byte> 16)
                        failtestf "read %d bytes instead of a reset" n
                    with :? SocketException as e ->
                        e.SocketErrorCode

                Expect.equal error SocketError.ConnectionReset "the host client sees a reset"
                Expect.equal (kill (p.Id, 15)) 0 "SIGTERM sent"
                let code, _, _, counters = finish p out err
                Expect.equal code 143 "sleep killed by the SIGTERM passed on"
                Expect.equal (counters.TryFind "publish.tcp.refused") (Some 1L) "counted as refused"
                Expect.isNone (counters.TryFind "publish.tcp.spliced") "nothing spliced"
            }

            test
                "nothing left behind: COMMAND sees no extra descriptor; the namespace, helper and host ports are gone after exit" {
                let code, out, err, _ =
                    run
                        [
                            "-p"
                            "tcp:127.0.0.1:18083:9002"
                            "--"
                            "sh"
                            "-c"
                            "readlink /proc/$$/ns/net; ls /proc/$$/fd"
                        ]

                Expect.equal code 0 $"stderr:\n{err}"

                let lines =
                    out.Split('\n', StringSplitOptions.RemoveEmptyEntries) |> Array.map _.Trim()

                let netns = lines[0]
                Expect.stringStarts netns "net:[" "the namespace's identity"

                Expect.equal
                    (Set.ofArray lines[1..])
                    (plainDescriptors ())
                    "the same descriptors as a command started directly"

                let stillThere =
                    Directory.GetDirectories "/proc"
                    |> Array.filter (fun d -> Char.IsDigit(Path.GetFileName d, 0))
                    |> Array.filter (fun d ->
                        try
                            FileInfo(Path.Combine(d, "ns", "net")).LinkTarget = netns
                            || File.ReadAllText(Path.Combine(d, "cmdline")).Contains "__run-namespace"
                        with _ ->
                            false)

                Expect.isEmpty stillThere "no process in the namespace or running the helper"

                use probe =
                    new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                let refused =
                    try
                        probe.Connect(IPEndPoint(IPAddress.Loopback, 18083))
                        false
                    with :? SocketException as e ->
                        e.SocketErrorCode = SocketError.ConnectionRefused

                Expect.isTrue refused "the host port is closed"
            }

            test "unprivileged: a user other than root runs a command with the stack's network (user namespace)" {
                match unprivilegedUnavailable () with
                | Some reason -> skiptestf "unprivileged path not testable here: %s" reason
                | None ->
                    // A private /dev/net/tun open to everyone, in a mount namespace of its own, so
                    // the host's device node stays as it is.
                    let script =
                        "mount -t tmpfs -o mode=755 tmpfs /dev/net && mknod -m 666 /dev/net/tun c 10 200 && "
                        + "exec setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/tmp DOTNET_CLI_HOME=/tmp \"$0\" \"$@\""

                    let args =
                        [
                            "--mount"
                            "--"
                            "sh"
                            "-c"
                            script
                            Environment.ProcessPath
                            netstackDll.Value
                            "run"
                            "--stats"
                            "--"
                        ]
                        @ [
                            "sh"
                            "-c"
                            "id -u; ip -o -4 addr show dev tun0; ping -c 1 -W 2 10.0.2.2 >/dev/null && echo pinged; exit 4"
                        ]

                    let psi = ProcessStartInfo "unshare"

                    for a in args do
                        psi.ArgumentList.Add a

                    psi.RedirectStandardOutput <- true
                    psi.RedirectStandardError <- true
                    use p = Process.Start psi
                    let out = p.StandardOutput.ReadToEndAsync()
                    let err = p.StandardError.ReadToEndAsync()

                    if not (p.WaitForExit timeout) then
                        p.Kill true
                        failtest "the unprivileged run did not finish"

                    assertNoExceptionReport err.Result
                    checkExit err.Result |> ignore
                    Expect.equal p.ExitCode 4 $"exit status; stderr:\n{err.Result}"
                    let lines = out.Result.Split '\n'
                    Expect.equal (lines[0].Trim()) "0" "root inside the user namespace"
                    Expect.stringContains out.Result "inet 10.0.2.100/24" "address"
                    Expect.stringContains out.Result "pinged" "ping of the gateway"
            }
        ]
