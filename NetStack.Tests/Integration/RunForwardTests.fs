/// `netstack run` outbound forwarding, end to end: kernel programs inside the namespace (python3,
/// getent, ping) talk to servers this test process starts on its own namespace's 127.0.0.1 and ::1,
/// which is the "host" loopback of `netstack run` (the gateway addresses 10.0.2.2 and fd00::2 map
/// to it). The oracles are the kernel on both sides (what the servers received, what the programs
/// inside received, hashed) and a real resolver (dnsmasq). Every run uses an egress policy that
/// allows only loopback, so that nothing can be dialled elsewhere, and prints its counters
/// (--stats), which must show no swallowed exception.
module NetStack.Tests.Integration.RunForwardTests

open System
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Sockets
open System.Security.Cryptography
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open NetStack.Tests
open NetStack.Tests.Integration.CliTests

/// The egress policy of every run here: host-side loopback only (the gateway addresses map to it).
let private loopbackOnly =
    [ "--default"; "deny"; "--allow"; "127.0.0.0/8"; "--allow"; "[::1]" ]

let private count (name: string) (counters: Map<string, int64>) =
    counters.TryFind name |> Option.defaultValue 0L

/// A TCP listener of this process on `address`, an ephemeral port.
let private listen (address: IPAddress) =
    let s = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp)
    s.Bind(IPEndPoint(address, 0))
    s.Listen 512
    s, (s.LocalEndPoint :?> IPEndPoint).Port

let private hex (hash: IncrementalHash) =
    Convert.ToHexString(hash.GetHashAndReset())

/// Accepts one connection on `listener`; sends `down` bytes of Random(seed) while reading to the
/// end of file (both ways at once); returns the peer address, the count and SHA-256 of what was
/// received and the SHA-256 of what was sent.
let private hashOne (listener: Socket) (down: int) (seed: int) =
    task {
        use! connection = listener.AcceptAsync()
        let peer = (connection.RemoteEndPoint :?> IPEndPoint).Address
        use stream = new NetworkStream(connection, ownsSocket = false)

        let sending =
            task {
                let rng = Random seed
                let buffer = Array.zeroCreate<byte>(1 <<< 20)
                use hash = IncrementalHash.CreateHash HashAlgorithmName.SHA256
                let mutable left = down

                while left > 0 do
                    let n = min left buffer.Length
                    rng.NextBytes(buffer.AsSpan(0, n))
                    hash.AppendData(buffer, 0, n)
                    do! stream.WriteAsync(ReadOnlyMemory(buffer, 0, n))
                    left <- left - n

                connection.Shutdown SocketShutdown.Send
                return hex hash
            }

        let buffer = Array.zeroCreate<byte>(1 <<< 20)
        use hash = IncrementalHash.CreateHash HashAlgorithmName.SHA256
        let mutable received = 0L
        let mutable n = 1

        while n > 0 do
            let! read = stream.ReadAsync(buffer.AsMemory())
            n <- read
            hash.AppendData(buffer, 0, n)
            received <- received + int64 n

        let! sentHash = sending
        return peer, received, hex hash, sentHash
    }

/// Inside: for each "HOST PORT" argument pair, connects, sends UP random bytes while reading to
/// the end of file, prints "HOST sent N HASH" and "HOST received N HASH"; then exits with 7.
let private hashClient (up: int) =
    $"""
import hashlib, os, socket, sys, threading
def go(host, port):
    c = socket.create_connection((host, port), timeout=30)
    sent = hashlib.sha256()
    def send():
        left = {up}
        while left:
            b = os.urandom(min(left, 1 << 20))
            sent.update(b)
            c.sendall(b)
            left -= len(b)
        c.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send)
    t.start()
    h = hashlib.sha256(); n = 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        h.update(b); n += len(b)
    t.join()
    c.close()
    print(host, "sent", {up}, sent.hexdigest().upper(), flush=True)
    print(host, "received", n, h.hexdigest().upper(), flush=True)
args = sys.argv[1:]
for i in range(0, len(args), 2):
    go(args[i], int(args[i + 1]))
sys.exit(7)
"""

/// A UDP server of this process on `address`: answers each datagram with its bytes reversed, until
/// `stop` is cancelled; the task's result is how many it answered.
let private udpReverser (address: IPAddress) (stop: CancellationToken) =
    let socket = new Socket(address.AddressFamily, SocketType.Dgram, ProtocolType.Udp)
    socket.Bind(IPEndPoint(address, 0))
    let port = (socket.LocalEndPoint :?> IPEndPoint).Port

    let serving =
        task {
            use _ = socket
            let buffer = Array.zeroCreate<byte> 65536
            let mutable answered = 0

            try
                while true do
                    let! r =
                        socket.ReceiveFromAsync(buffer.AsMemory(), SocketFlags.None, IPEndPoint(address, 0), stop)

                    let reply = buffer[.. r.ReceivedBytes - 1] |> Array.rev

                    let! _ =
                        socket.SendToAsync(ReadOnlyMemory reply, SocketFlags.None, r.RemoteEndPoint, stop)

                    answered <- answered + 1
            with :? OperationCanceledException ->
                ()

            return answered
        }

    port, serving

/// Inside: for each "HOST PORT" argument pair, one connected UDP socket sends a datagram of each
/// size and checks that the answer is its bytes reversed: prints "HOST SIZE ok" or "HOST SIZE bad".
let private udpClient (sizes: int list) =
    let sizes = String.Join(", ", sizes)

    $"""
import os, socket, sys
args = sys.argv[1:]
for i in range(0, len(args), 2):
    host, port = args[i], int(args[i + 1])
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect((host, port))
    for size in [{sizes}]:
        d = os.urandom(size)
        s.send(d)
        r = s.recv(70000)
        print(host, size, "ok" if r == d[::-1] else "bad", flush=True)
    s.close()
"""

/// Inside: a DNS query for an A record sent by hand over TCP to HOST port 53 (argv[1], argv[2] the
/// name); prints "tcp-dns RCODE ADDRESS..." with the A records of the answer.
let private tcpDnsQuery =
    """
import socket, struct, sys
host, name = sys.argv[1], sys.argv[2]
question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
query = struct.pack("!HHHHHH", 0x4e53, 0x0100, 1, 0, 0, 0) + question
c = socket.create_connection((host, 53), timeout=5)
c.sendall(struct.pack("!H", len(query)) + query)
def read(n):
    b = b""
    while len(b) < n:
        more = c.recv(n - len(b))
        if not more:
            raise SystemExit("short answer")
        b += more
    return b
r = read(struct.unpack("!H", read(2))[0])
ident, flags, qd, an, _, _ = struct.unpack("!HHHHHH", r[:12])
assert ident == 0x4e53 and qd == 1 and r[12:12 + len(question)] == question
i = 12 + len(question)
addresses = []
for _ in range(an):
    while r[i] != 0 and r[i] < 0xc0:
        i += r[i] + 1
    i += 2 if r[i] >= 0xc0 else 1
    rtype, _, _, length = struct.unpack("!HHIH", r[i:i + 10])
    i += 10
    if rtype == 1:
        addresses.append(socket.inet_ntoa(r[i:i + length]))
    i += length
print("tcp-dns", flags & 15, *addresses, flush=True)
"""

/// Inside: N threads each connect to 10.0.2.2 (even) or fd00::2 (odd) on the given ports, wait
/// until all N are connected, then send 64 KiB + i random bytes and read the echo to the end;
/// prints "connected N" and "echoed N" (the number whose echo matched exactly).
let private concurrentClient (n: int) =
    $"""
import os, socket, sys, threading
N = {n}
p4, p6 = int(sys.argv[1]), int(sys.argv[2])
barrier = threading.Barrier(N, timeout=40)
lock = threading.Lock()
counts = {{"connected": 0, "echoed": 0}}
def one(i):
    c = socket.create_connection(("10.0.2.2", p4) if i %% 2 == 0 else ("fd00::2", p6), timeout=40)
    with lock:
        counts["connected"] += 1
    barrier.wait()
    data = os.urandom(65536 + i)
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    back = bytearray()
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        back += b
    c.close()
    if back == data:
        with lock:
            counts["echoed"] += 1
threads = [threading.Thread(target=one, args=(i,)) for i in range(N)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("connected", counts["connected"], flush=True)
print("echoed", counts["echoed"], flush=True)
"""

/// Inside, as root of the namespace: hostile traffic to random addresses the policy denies, then
/// one ordinary TCP request and one UDP datagram to the host through the gateway (argv[1] the TCP
/// port, argv[2] the UDP port). Prints what it sent and the namespace kernel's TCP OutSegs.
let private hostile =
    """
import errno, os, random, select, socket, struct, sys, time
print("ready", flush=True)
rng = random.Random(18)
def a4():
    return f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}"
def pace(i):
    if i % 100 == 99:
        time.sleep(0.002)
def checksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
# 1. A connect storm: 1000 non-blocking IPv4 connects and 200 IPv6 ones to random addresses and ports.
storm = []
for i in range(1200):
    v6 = i >= 1000
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect((f"2001:db8::{rng.randrange(1, 65535):x}" if v6 else a4(), rng.randrange(1, 65536)))
    except BlockingIOError:
        pass
    storm.append(s)
    pace(i)
# 2. A SYN flood from spoofed sources (raw IPv4 packets, right checksums).
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
spoofed = 1000
for i in range(spoofed):
    src = socket.inet_aton(f"203.0.113.{rng.randrange(1, 255)}")
    dst = socket.inet_aton(a4())
    tcp = struct.pack("!HHIIBBHHH", rng.randrange(1024, 65536), rng.randrange(1, 65536), rng.getrandbits(32), 0, 5 << 4, 2, 65535, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", checksum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i, 0, 64, 6, 0, src, dst)
    raw.sendto(ip + tcp, (socket.inet_ntoa(dst), 0))
    pace(i)
# 3. UDP to thousands of ports of random addresses.
u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for i in range(3000):
    if i % 5 == 4:
        u6.sendto(b"x" * 20, (f"2001:db8::{rng.randrange(1, 65535):x}", rng.randrange(1, 65536)))
    else:
        u4.sendto(b"x" * 20, (a4(), rng.randrange(1, 65536)))
    pace(i)
# 4. Pings to random addresses.
icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
for i in range(500):
    m = struct.pack("!BBHHH", 8, 0, 0, 0x4e53, i) + b"hostile"
    icmp.sendto(m[:2] + struct.pack("!H", checksum(m)) + m[4:], (a4(), 0))
    pace(i)
# The storm's connects fail (ICMP prohibited, rate-limited) or are still retrying: none may connect.
time.sleep(2)
connected = 0
for s in storm:
    try:
        s.getpeername()
        connected += 1
    except OSError:
        pass
    s.close()
print("storm connected", connected, flush=True)
# Then ordinary traffic to the host: is the forwarder still serving?
c = socket.create_connection(("10.0.2.2", int(sys.argv[1])), timeout=10)
c.sendall(b"still there?")
c.shutdown(socket.SHUT_WR)
print("tcp reply", c.recv(100).decode(), flush=True)
c.close()
u4.settimeout(5)
u4.sendto(b"and udp?", ("10.0.2.2", int(sys.argv[2])))
print("udp reply", u4.recvfrom(100)[0].decode(), flush=True)
snmp = open("/proc/net/snmp").read().split("\n")
names, values = [l.split() for l in snmp if l.startswith("Tcp:")]
print("tcp out-segs", values[names.index("OutSegs")], flush=True)
print("tcp retrans-segs", values[names.index("RetransSegs")], flush=True)
print("spoofed", spoofed, flush=True)
"""

/// Peak resident memory of process `pid` in KiB (VmHWM of /proc/PID/status).
let private peakResidentKiB (pid: int) =
    File.ReadAllLines $"/proc/{pid}/status"
    |> Array.pick (fun l ->
        if l.StartsWith "VmHWM:" then
            Some(int64 (l.Substring(6).Trim().Split(' ')[0]))
        else
            None)

/// Runs `unshare --net sh -c SETUP; exec dotnet netstack.dll run --stats ARGS` (a fresh network
/// namespace of its own as netstack run's host); returns exit code, stdout, stderr, counters.
let private runInFreshNamespace (setup: string) (args: string list) =
    let psi = ProcessStartInfo "unshare"

    for a in
        [
            "--net"
            "--"
            "sh"
            "-c"
            setup + " && exec \"$0\" \"$@\""
            "dotnet"
            netstackDll.Value
            "run"
            "--stats"
        ]
        @ args do
        psi.ArgumentList.Add a

    psi.RedirectStandardOutput <- true
    psi.RedirectStandardError <- true
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()

    if not (p.WaitForExit RunTests.timeout) then
        p.Kill true
        failtestf "netstack run did not finish; stdout:\n%s" out.Result

    assertNoExceptionReport err.Result
    p.ExitCode, out.Result, err.Result, RunTests.checkExit err.Result

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Run forwarding"
        [
            test
                "TCP from inside to the host's 127.0.0.1 and ::1 through the gateways: 100 MB each way at once, SHA-256 exact; the exit status passes through" {
                let size = 100_000_000
                let listener4, port4 = listen IPAddress.Loopback
                let listener6, port6 = listen IPAddress.IPv6Loopback
                use _ = listener4
                use _ = listener6
                let server4 = hashOne listener4 size 4
                let server6 = hashOne listener6 size 6

                let code, out, err, counters =
                    RunTests.run (
                        loopbackOnly
                        @ [
                            "--"
                            "python3"
                            "-c"
                            hashClient size
                            "10.0.2.2"
                            string port4
                            "fd00::2"
                            string port6
                        ]
                    )

                Expect.equal code 7 $"python's exit status passed through; stdout:\n{out}\nstderr:\n{err}"

                for host, server in [ "10.0.2.2", server4; "fd00::2", server6 ] do
                    let peer, received, receivedHash, sentHash =
                        TestUtil.waitWithin RunTests.timeout server

                    Expect.isTrue (IPAddress.IsLoopback peer) $"the host server's peer is on loopback ({peer})"
                    Expect.equal received (int64 size) $"bytes the host received over {host}"

                    Expect.equal
                        (RunTests.lineValue $"{host} sent" out)
                        [ $"{size} {receivedHash}" ]
                        $"what the host received over {host}"

                    Expect.equal
                        (RunTests.lineValue $"{host} received" out)
                        [ $"{size} {sentHash}" ]
                        $"what the namespace received over {host}"

                Expect.equal (count "forward.tcp.dialled" counters) 2L "two connections dialled"
                Expect.equal (count "forward.tcp.connected" counters) 2L "two spliced"
                Expect.equal (count "forward.tcp.reset" counters) 0L "no reset"
            }

            test
                "UDP from inside to kernel servers on 127.0.0.1 and ::1 at MTU 1500: datagrams of 1 byte to 64 KiB (fragmented both ways) and their answers" {
                use stop = new CancellationTokenSource()
                let port4, server4 = udpReverser IPAddress.Loopback stop.Token
                let port6, server6 = udpReverser IPAddress.IPv6Loopback stop.Token
                let sizes = [ 1; 100; 1472; 1473; 4000; 9000; 30000; 65507 ]

                let code, out, err, counters =
                    RunTests.run (
                        loopbackOnly
                        @ [
                            "--mtu"
                            "1500"
                            "--"
                            "python3"
                            "-c"
                            udpClient sizes
                            "10.0.2.2"
                            string port4
                            "fd00::2"
                            string port6
                        ]
                    )

                stop.Cancel()
                Expect.equal code 0 $"stdout:\n{out}\nstderr:\n{err}"

                for host in [ "10.0.2.2"; "fd00::2" ] do
                    for size in sizes do
                        Expect.equal (RunTests.lineValue $"{host} {size}" out) [ "ok" ] $"{size} bytes over {host}"

                Expect.equal (TestUtil.waitWithin RunTests.timeout server4) sizes.Length "the IPv4 server answered each"
                Expect.equal (TestUtil.waitWithin RunTests.timeout server6) sizes.Length "the IPv6 server answered each"
                Expect.equal (count "forward.udp.dialled" counters) 2L "a flow per client socket"
                Expect.isGreaterThan (count "ip.fragment.held" counters) 0L "fragments from inside reassembled"
                Expect.isGreaterThan (count "ip.fragments.sent" counters) 0L "answers fragmented to the MTU"
            }

            test
                "DNS through the forwarded resolver: dnsmasq on the host's 127.0.0.1 answers getent inside (UDP), getent with use-vc and a hand-made query to fd00::3 (TCP)" {
                // A free port for dnsmasq (UDP and TCP), in this test run's own namespace.
                let port =
                    use probe =
                        new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                    probe.Bind(IPEndPoint(IPAddress.Loopback, 0))
                    (probe.LocalEndPoint :?> IPEndPoint).Port

                let dnsmasq =
                    let psi = ProcessStartInfo "dnsmasq"

                    for a in
                        [
                            "--keep-in-foreground"
                            "--no-resolv"
                            "--no-hosts"
                            "-C"
                            "/dev/null"
                            "--pid-file"
                            "--bind-interfaces"
                            "--listen-address=127.0.0.1"
                            $"--port={port}"
                            "--address=/example.test/192.0.2.55"
                            "--host-record=name.example.test,192.0.2.77,2001:db8::77"
                            "--log-queries"
                            "--log-facility=-"
                        ] do
                        psi.ArgumentList.Add a

                    psi.RedirectStandardOutput <- true
                    psi.RedirectStandardError <- true

                    try
                        Process.Start psi
                    with :? ComponentModel.Win32Exception as e ->
                        failtestf "cannot run dnsmasq (package dnsmasq-base): %s" e.Message

                use _ = dnsmasq
                let dnsLog = dnsmasq.StandardError.ReadToEndAsync()
                dnsmasq.StandardOutput.ReadToEndAsync() |> ignore

                let result =
                    try
                        // dnsmasq is up once its TCP port takes connections.
                        let deadline = DateTime.UtcNow.AddSeconds 10.
                        let mutable up = false

                        while not up do
                            use probe =
                                new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                            try
                                probe.Connect(IPEndPoint(IPAddress.Loopback, port))
                                up <- true
                            with :? SocketException when DateTime.UtcNow < deadline && not dnsmasq.HasExited ->
                                Thread.Sleep 50

                        RunTests.run (
                            loopbackOnly
                            @ [
                                "--dns-upstream"
                                $"127.0.0.1:{port}"
                                "--"
                                "sh"
                                "-c"
                                "getent ahostsv4 name.example.test | head -n 1; getent ahostsv6 name.example.test | head -n 1; "
                                + "getent hosts other.example.test; RES_OPTIONS=use-vc getent ahostsv4 vc.example.test | head -n 1; "
                                + "python3 -c \"$0\" fd00::3 name.example.test; "
                                // The DNS address is no host: another port there is refused,
                                // nothing is dialled for it, and a ping gets the stack's answer.
                                + "python3 -c 'import socket\ntry:\n socket.create_connection((\"10.0.2.3\", 80), timeout=10)\n print(\"dns-port-80 connected\")\nexcept ConnectionRefusedError:\n print(\"dns-port-80 refused\")'; "
                                + "ping -c 1 -W 5 10.0.2.3 >/dev/null && echo dns-ping replied"
                                tcpDnsQuery
                            ]
                        )
                    finally
                        dnsmasq.Kill()
                        dnsmasq.WaitForExit()

                let code, out, err, counters = result
                Expect.equal code 0 $"stdout:\n{out}\nstderr:\n{err}\ndnsmasq:\n{dnsLog.Result}"

                let lines =
                    out.Split('\n', StringSplitOptions.RemoveEmptyEntries) |> Array.map _.Trim()

                let fields (line: string) =
                    line.Split(' ', StringSplitOptions.RemoveEmptyEntries)

                Expect.equal (fields lines[0]) [| "192.0.2.77"; "STREAM"; "name.example.test" |] "A over UDP"
                Expect.equal (fields lines[1]) [| "2001:db8::77"; "STREAM"; "name.example.test" |] "AAAA over UDP"
                Expect.equal (fields lines[2]) [| "192.0.2.55"; "other.example.test" |] "the wildcard record"
                Expect.equal (fields lines[3]) [| "192.0.2.55"; "STREAM"; "vc.example.test" |] "A over TCP (use-vc)"
                Expect.equal lines[4] "tcp-dns 0 192.0.2.77" "a hand-made query over TCP to fd00::3"
                Expect.stringContains dnsLog.Result "query[A] vc.example.test from 127.0.0.1" "dnsmasq answered"
                Expect.equal lines[5] "dns-port-80 refused" "port 80 of the DNS address: a RST"
                Expect.equal lines[6] "dns-ping replied" "the DNS address answers a ping"
                Expect.equal (count "forward.tcp.no-upstream" counters) 1L "port 80 there: no host to dial"

                Expect.equal
                    (count "forward.tcp.dialled" counters)
                    2L
                    "the two TCP queries, each a connection to dnsmasq"

                Expect.isGreaterThanOrEqual (count "forward.udp.dialled" counters) 3L "the UDP queries"

                Expect.equal
                    (count "forward.tcp.denied" counters + count "forward.udp.denied" counters)
                    0L
                    "nothing denied"
            }

            test
                "a RST passes through: the host server resets, the program inside, still reading, gets ECONNRESET rather than a hang" {
                let listener, port = listen IPAddress.Loopback
                use _ = listener

                // The host server takes one connection, reads its first byte, answers one byte
                // and resets it (linger 0: close sends a RST, RFC 9293 §3.10.5 ABORT).
                let server =
                    task {
                        use! c = listener.AcceptAsync()
                        let one = Array.zeroCreate<byte> 1
                        let! _ = c.ReceiveAsync(one.AsMemory())
                        let! _ = c.SendAsync(ReadOnlyMemory [| 33uy |])
                        c.LingerState <- LingerOption(true, 0)
                        c.Close()
                    }

                // Inside: connect, send, read the answer, then keep reading: a RST must end it
                // with ECONNRESET, not a clean end of file, and not a hang.
                let client =
                    """
import socket, sys
s = socket.create_connection(("10.0.2.2", int(sys.argv[1])), timeout=20)
s.sendall(b"x")
print("answer", s.recv(1)[0], flush=True)
try:
    while True:
        if not s.recv(65536):
            print("outcome eof", flush=True)
            break
except ConnectionResetError:
    print("outcome reset", flush=True)
except socket.timeout:
    print("outcome timeout", flush=True)
"""

                let code, out, err, counters =
                    RunTests.run (loopbackOnly @ [ "--"; "python3"; "-c"; client; string port ])

                Expect.isTrue (server.Wait RunTests.timeout) "the server finished"
                Expect.equal code 0 $"stdout:\n{out}\nstderr:\n{err}"
                Expect.equal (RunTests.lineValue "answer" out) [ "33" ] "the byte before the reset"
                Expect.equal (RunTests.lineValue "outcome" out) [ "reset" ] "the RST reached the program inside"
                Expect.equal (count "forward.tcp.reset" counters) 1L "counted"
            }

            test "200 concurrent TCP connections from inside to host servers (IPv4 and IPv6), each echoed exactly" {
                let n = 200
                let listener4, port4 = listen IPAddress.Loopback
                let listener6, port6 = listen IPAddress.IPv6Loopback
                use _ = listener4
                use _ = listener6
                use stop = new CancellationTokenSource()
                let mutable accepted = 0

                let echo (listener: Socket) =
                    task {
                        try
                            while true do
                                let! c = listener.AcceptAsync stop.Token
                                Interlocked.Increment &accepted |> ignore

                                let _ =
                                    task {
                                        use c = c
                                        use s = new NetworkStream(c, ownsSocket = false)
                                        do! s.CopyToAsync s
                                        c.Shutdown SocketShutdown.Send
                                    }

                                ()
                        with :? OperationCanceledException ->
                            ()
                    }

                let servers = [ echo listener4; echo listener6 ]

                let code, out, err, counters =
                    RunTests.run (
                        loopbackOnly
                        @ [ "--"; "python3"; "-c"; concurrentClient n; string port4; string port6 ]
                    )

                stop.Cancel()

                Expect.isTrue (Task.WhenAll(servers).Wait RunTests.timeout) "the servers stopped"

                Expect.equal code 0 $"stdout:\n{out}\nstderr:\n{err}"
                Expect.equal (RunTests.lineValue "connected" out) [ string n ] "all connected at once"
                Expect.equal (RunTests.lineValue "echoed" out) [ string n ] "every echo exact"
                Expect.equal accepted n "the host servers accepted each"
                Expect.equal (count "forward.tcp.dialled" counters) (int64 n) "dialled"
                Expect.equal (count "forward.tcp.connected" counters) (int64 n) "spliced"
                Expect.equal (count "forward.tcp.reset" counters) 0L "no reset"
            }

            test
                "hostile traffic from inside (connect storm, spoofed SYN flood, UDP and pings to random addresses) under a loopback-only policy: nothing else dialled, bounded, the forwarder still serves" {
                let listener, tcpPort = listen IPAddress.Loopback
                use _ = listener
                use stop = new CancellationTokenSource()
                let udpPort, udpServer = udpReverser IPAddress.Loopback stop.Token
                let pid = TaskCompletionSource<int>()

                // The ordinary request after the flood: the answer carries netstack run's peak memory.
                let server =
                    task {
                        use! c = listener.AcceptAsync()
                        use s = new NetworkStream(c, ownsSocket = false)
                        use request = new MemoryStream()
                        do! s.CopyToAsync request
                        let! pid = pid.Task
                        let peak = peakResidentKiB pid
                        let reply = Encoding.ASCII.GetString(Array.rev (request.ToArray()))
                        do! s.WriteAsync(ReadOnlyMemory(Encoding.ASCII.GetBytes reply))
                        c.Shutdown SocketShutdown.Send
                        return peak
                    }

                let p, out, err =
                    RunTests.startReady (
                        loopbackOnly
                        @ [ "--"; "python3"; "-c"; hostile; string tcpPort; string udpPort ]
                    )

                pid.SetResult p.Id
                let code, out, err, counters = RunTests.finish p out err
                stop.Cancel()
                Expect.equal code 0 $"stdout:\n{out}\nstderr:\n{err}"
                let peakKiB = TestUtil.waitWithin RunTests.timeout server
                Expect.equal (TestUtil.waitWithin RunTests.timeout udpServer) 1 "one datagram reached the host"
                Expect.equal (RunTests.lineValue "tcp reply" out) [ "?ereht llits" ] "TCP still forwarded"
                Expect.equal (RunTests.lineValue "udp reply" out) [ "?pdu dna" ] "UDP still forwarded"
                Expect.equal (RunTests.lineValue "storm connected" out) [ "0" ] "no storm connect succeeded"

                // Nothing but the two loopback flows was dialled, and no ping sent; the test
                // namespace has no route but loopback, so an escape would also show as unreachable.
                Expect.equal (count "forward.tcp.dialled" counters) 1L "one TCP connection dialled"
                Expect.equal (count "forward.udp.dialled" counters) 1L "one UDP flow dialled"
                Expect.equal (count "forward.echo.sent" counters) 0L "no ping sent"

                for name in
                    [
                        "forward.tcp.unreachable"
                        "forward.udp.unreachable"
                        "forward.echo.unreachable"
                    ] do
                    Expect.equal (count name counters) 0L name

                for name in [ "forward.tcp.denied"; "forward.udp.denied"; "forward.echo.denied" ] do
                    Expect.isGreaterThan (count name counters) 0L name

                // Every TCP request was decided: dropped as spoofed (its source is not the
                // namespace's address), denied, or the one dialled.
                Expect.equal
                    (count "tcp.forward.requested" counters)
                    (count "forward.tcp.spoofed-source" counters
                     + count "forward.tcp.denied" counters
                     + count "forward.tcp.dialled" counters)
                    "each request decided"

                // The spoofed SYNs are the only ones from foreign sources: at most that many (the
                // TUN queue may drop some in the burst), and some arrived.
                let spoofedSent = RunTests.lineValue "spoofed" out |> List.exactlyOne |> int64
                Expect.isGreaterThan (count "forward.tcp.spoofed-source" counters) 0L "spoofed SYNs seen"

                Expect.isLessThanOrEqual
                    (count "forward.tcp.spoofed-source" counters)
                    spoofedSent
                    "no more spoofed requests than spoofed SYNs"

                // Bounded by what the namespace sent: at most one request per SYN.
                let outSegs = RunTests.lineValue "tcp out-segs" out |> List.exactlyOne |> int64

                let retransSegs =
                    RunTests.lineValue "tcp retrans-segs" out |> List.exactlyOne |> int64

                let spoofed = RunTests.lineValue "spoofed" out |> List.exactlyOne |> int64

                Expect.isLessThanOrEqual
                    (count "tcp.forward.requested" counters)
                    (outSegs + retransSegs + spoofed)
                    $"requests ≤ SYNs sent (kernel OutSegs + RetransSegs + spoofed); stdout:\n{out}\nstderr:\n{err}"

                Expect.isLessThanOrEqual (count "udp.forward.flow-opened" counters) 3001L "UDP flows ≤ datagrams sent"

                // Refused flows leave the table at once (the one open flow may end with the stack,
                // uncounted).
                Expect.isGreaterThanOrEqual
                    (count "udp.forward.flow-closed" counters)
                    (count "forward.udp.denied" counters)
                    "every refused UDP flow closed"

                // Each flow's one small datagram reached it, even those refused at once.
                Expect.equal
                    (count "udp.forward.delivered" counters)
                    (count "udp.forward.flow-opened" counters)
                    "each flow's first datagram delivered"

                Expect.equal (count "udp.forward.drop.queue-full" counters) 0L "no flow queue overflowed"

                Expect.isLessThanOrEqual (count "icmp.echo.forwarded" counters) 500L "echo requests ≤ pings sent"
                // The process: the runtime and stack start at about 70 MB here; the caps (pending
                // requests, flows, echo queue) allow a few MB of state on top.
                Expect.isLessThan peakKiB (256L * 1024L) $"netstack run's peak resident memory ({peakKiB} KiB)"
            }

            test
                "ping through an unprivileged ICMP socket on the host (an allowed address on the host's lo), and without ping_group_range no reply" {
                let setup (range: string) =
                    "ip link set lo up && ip addr add 192.0.2.200/32 dev lo && "
                    + $"sysctl -q -w net.ipv4.ping_group_range='{range}'"

                let args =
                    loopbackOnly
                    @ [
                        "--allow"
                        "192.0.2.200/32"
                        "--"
                        "sh"
                        "-c"
                        "ping -c 3 -i 0.2 -W 2 192.0.2.200; echo status $?"
                    ]

                // Group 0 only: netstack run's own group, and the one group mapped when the tests run
                // unprivileged (a user namespace where a wider range would not be valid).
                let code, out, err, counters = runInFreshNamespace (setup "0 0") args
                Expect.equal code 0 $"stdout:\n{out}\nstderr:\n{err}"
                Expect.stringContains out "3 packets transmitted, 3 received" "replies from the host"
                Expect.equal (RunTests.lineValue "status" out) [ "0" ] "ping's status"
                Expect.equal (count "forward.echo.sent" counters) 3L "three sent on the host"
                Expect.equal (count "forward.echo.replied" counters) 3L "three replies"

                let code, out, err, counters = runInFreshNamespace (setup "1 0") args
                Expect.equal code 0 $"stdout:\n{out}\nstderr:\n{err}"
                Expect.stringContains out "3 packets transmitted, 0 received" "no reply"
                Expect.equal (RunTests.lineValue "status" out) [ "1" ] "ping's status"
                Expect.equal (count "forward.echo.no-ping-socket" counters) 3L "no ping socket, counted"
                Expect.equal (count "forward.echo.sent" counters) 0L "nothing sent"
            }
        ]
