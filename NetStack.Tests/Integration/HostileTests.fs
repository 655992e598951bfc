/// Hostile input against a running stack on a TUN device, inside the test runner's private
/// network namespace. Each case crafts packets (written into the engine with InjectPacket, or sent
/// from the kernel side through a raw socket by Integration/Hostile.py), then checks that the
/// stack counted and dropped (or answered) them, that its managed memory stayed bounded, and that
/// a kernel client's established echo connection kept working throughout.
/// Interfaces ns96hN, subnets 10.96.(20+N).0/24 and fd96:(20+N)::/64.
module NetStack.Tests.Integration.HostileTests

open System
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Sockets
open System.Text.Json
open System.Threading
open System.Threading.Tasks
open Expecto
open NetStack
open NetStack.Tests

/// Test n's options: interface ns96hN, 10.96.(20+n).2 (stack) / .1 (kernel), fd96:(20+n)::2 / ::1,
/// with `invalidAckInterval` as TcpInvalidAckInterval.
let optionsOf (n: int) (invalidAckInterval: TimeSpan) =
    NetStackOptions(
        TcpInvalidAckInterval = invalidAckInterval,
        TunName = $"ns96h{n}",
        Address = IPAddress.Parse $"10.96.{20 + n}.2",
        HostAddress = IPAddress.Parse $"10.96.{20 + n}.1",
        Address6 = IPAddress.Parse $"fd96:{20 + n}::2",
        HostAddress6 = IPAddress.Parse $"fd96:{20 + n}::1",
        TcpLinger = TimeSpan.FromSeconds 1.0
    )

/// Test n's options (the default TcpInvalidAckInterval).
let optionsFor (n: int) =
    optionsOf n (NetStackOptions().TcpInvalidAckInterval)

// ------------------------------------------------------------------------------------------
// Crafting packets
// ------------------------------------------------------------------------------------------

/// The Internet checksum (RFC 1071) of `data`, starting from the partial sum `initial`.
let private checksumFrom (initial: uint32) (data: byte[]) =
    let mutable sum = initial
    let mutable i = 0

    while i + 1 < data.Length do
        sum <- sum + ((uint32 data.[i] <<< 8) ||| uint32 data.[i + 1])
        i <- i + 2

    if i < data.Length then
        sum <- sum + (uint32 data.[i] <<< 8)

    while sum > 0xFFFFu do
        sum <- (sum &&& 0xFFFFu) + (sum >>> 16)

    uint16 (~~~sum &&& 0xFFFFu)

let private put16 (b: byte[]) (at: int) (v: int) =
    b.[at] <- byte (v >>> 8)
    b.[at + 1] <- byte v

let private put32 (b: byte[]) (at: int) (v: uint32) =
    put16 b at (int (v >>> 16))
    put16 b (at + 2) (int (v &&& 0xFFFFu))

/// An IPv4 packet (IHL 5, TTL 64) with a correct header checksum and total length.
let ipv4 (src: IPAddress) (dst: IPAddress) (protocol: byte) (id: int) (fragment: int) (payload: byte[]) =
    let p = Array.zeroCreate<byte>(20 + payload.Length)
    p.[0] <- 0x45uy
    put16 p 2 p.Length
    put16 p 4 id
    put16 p 6 fragment
    p.[8] <- 64uy
    p.[9] <- protocol
    src.GetAddressBytes().CopyTo(p, 12)
    dst.GetAddressBytes().CopyTo(p, 16)
    put16 p 10 (int (checksumFrom 0u p.[0..19]))
    payload.CopyTo(p, 20)
    p

/// Recomputes an IPv4 header checksum after a test changed header fields.
let private fixIpv4Checksum (p: byte[]) =
    let ihl = int (p.[0] &&& 15uy) * 4
    put16 p 10 0
    put16 p 10 (int (checksumFrom 0u p.[0 .. ihl - 1]))
    p

/// The IPv4 pseudo-header sum for a transport checksum.
let private pseudo (src: IPAddress) (dst: IPAddress) (protocol: byte) (length: int) =
    let b = Array.zeroCreate<byte> 12
    src.GetAddressBytes().CopyTo(b, 0)
    dst.GetAddressBytes().CopyTo(b, 4)
    b.[9] <- protocol
    put16 b 10 length
    let mutable sum = 0u

    for i in 0..2..10 do
        sum <- sum + ((uint32 b.[i] <<< 8) ||| uint32 b.[i + 1])

    sum

/// A TCP segment with a correct checksum over the IPv4 pseudo-header.
let tcp
    (src: IPAddress)
    (dst: IPAddress)
    (sport: int)
    (dport: int)
    (seq: uint32)
    (ack: uint32)
    (flags: byte)
    (options: byte[])
    (data: byte[])
    =
    let header = 20 + options.Length
    let s = Array.zeroCreate<byte>(header + data.Length)
    put16 s 0 sport
    put16 s 2 dport
    put32 s 4 seq
    put32 s 8 ack
    s.[12] <- byte ((header / 4) <<< 4)
    s.[13] <- flags
    put16 s 14 65535
    options.CopyTo(s, 20)
    data.CopyTo(s, header)
    put16 s 16 (int (checksumFrom (pseudo src dst 6uy s.Length) s))
    s

/// A UDP datagram with a correct checksum.
let private udp (src: IPAddress) (dst: IPAddress) (sport: int) (dport: int) (data: byte[]) =
    let d = Array.zeroCreate<byte>(8 + data.Length)
    put16 d 0 sport
    put16 d 2 dport
    put16 d 4 d.Length
    data.CopyTo(d, 8)
    let c = checksumFrom (pseudo src dst 17uy d.Length) d
    put16 d 6 (if c = 0us then 0xFFFF else int c)
    d

/// An ICMP message (type, code, four bytes of rest-of-header, body) with a correct checksum.
let private icmp (kind: byte) (code: byte) (rest: uint32) (body: byte[]) =
    let m = Array.zeroCreate<byte>(8 + body.Length)
    m.[0] <- kind
    m.[1] <- code
    put32 m 4 rest
    body.CopyTo(m, 8)
    put16 m 2 (int (checksumFrom 0u m))
    m

[<Literal>]
let private Fin = 1uy

[<Literal>]
let private Syn = 2uy

[<Literal>]
let private Rst = 4uy

[<Literal>]
let private Ack = 16uy

/// The MSS option (1460).
let private mss = [| 2uy; 4uy; 5uy; 0xB4uy |]

// ------------------------------------------------------------------------------------------
// The harness: a stack, an echo listener, an established kernel client
// ------------------------------------------------------------------------------------------

let private timeout = TimeSpan.FromSeconds 20.0

/// Accepts and echoes every connection until the listener goes away.
let echoServer (listener: TcpConnectionListener) =
    TestUtil.echoServer listener CancellationToken.None

/// Sends `data` on a connected kernel socket and reads as many bytes back.
let echoOnce (client: Socket) (data: byte[]) =
    client.ReceiveTimeout <- 10_000
    client.Send data |> ignore
    let back = Array.zeroCreate<byte> data.Length
    let mutable got = 0

    while got < back.Length do
        let n = client.Receive(back, got, back.Length - got, SocketFlags.None)

        if n = 0 then
            failtest "the echo connection ended"

        got <- got + n

    back

/// What a case gets to work with.
type private Case =
    {
        Stack: NetworkStack
        /// The stack's IPv4 address.
        Ours: IPAddress
        /// The kernel side's IPv4 address.
        Kernel: IPAddress
        /// The kernel client's port of the established echo connection (to port 7).
        ClientPort: int
        /// Writes a crafted packet into the stack's engine.
        Inject: byte[] -> unit
    }

/// The sum of every counter whose name starts with `prefix`.
let counted (stack: NetworkStack) (prefix: string) =
    stack.Statistics.Snapshot()
    |> Seq.filter (fun kv -> kv.Key.StartsWith(prefix, StringComparison.Ordinal))
    |> Seq.sumBy (fun kv -> kv.Value)

/// Waits up to 5 s for counters under `prefix` to reach `atLeast` more than `before`.
let waitCounted (stack: NetworkStack) (prefix: string) (before: int64) (atLeast: int64) =
    let clock = Stopwatch.StartNew()

    while counted stack prefix - before < atLeast
          && clock.Elapsed < TimeSpan.FromSeconds 5.0 do
        Thread.Sleep 20

    counted stack prefix - before

/// Runs `body` against test n's stack with an established kernel echo connection; afterwards the
/// connection must still echo, and managed memory must not have grown by more than `heapBound`.
let private hostileWith (options: NetStackOptions) (heapBound: int64) (body: Case -> unit) =
    use stack = NetworkStack.Start options

    try
        use listener = stack.ListenTcp(7)
        let server = echoServer listener
        let options = stack.Options

        use client =
            new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

        client.Connect(IPEndPoint(options.Address, 7))
        let hello = Array.init 1000 byte
        Expect.equal (echoOnce client hello) hello "the echo works before the attack"
        let heapBefore = GC.GetTotalMemory true

        body
            {
                Stack = stack
                Ours = options.Address
                Kernel = options.HostAddress
                ClientPort = (client.LocalEndPoint :?> IPEndPoint).Port
                Inject = fun p -> stack.InjectPacket(ReadOnlySpan p)
            }

        // The engine handles injected packets in order; an echo after them has seen them all.
        let after = Array.init 3000 (fun i -> byte (i * 7))
        Expect.equal (echoOnce client after) after "the established connection still echoes after the attack"
        let growth = GC.GetTotalMemory true - heapBefore

        Expect.isLessThan growth heapBound $"managed memory grew by {growth} bytes, within {heapBound}"

        listener.Dispose()
        Expect.isTrue (server.Wait timeout) "the echo server ended"
        TestUtil.assertNoExceptions stack
    with e ->
        failtestf "%s\nstatistics:\n%O" (e.ToString()) stack.Statistics

/// `hostileWith` on test n's default options.
let private hostile (n: int) (heapBound: int64) (body: Case -> unit) =
    hostileWith (optionsFor n) heapBound body

/// Injects each packet and expects counters under `prefix` to grow by their number.
let private dropsAll (c: Case) (prefix: string) (packets: byte[] list) =
    let before = counted c.Stack prefix

    for p in packets do
        c.Inject p

    let moved = waitCounted c.Stack prefix before (int64 packets.Length)
    Expect.equal moved (int64 packets.Length) $"every packet counted under {prefix}"

/// Where the build put Hostile.py.
let scriptPath () =
    Path.Combine(AppContext.BaseDirectory, "Integration", "Hostile.py")

/// Runs Hostile.py with `args`; returns its exit code and output.
let hostilePy (args: string list) =
    Isolation.run "python3" (scriptPath () :: args)

let private mb = 1024L * 1024L

/// Runs Hostile.py `command` (blind, burst) against the echo on port 7 of `stack`: its JSON
/// line, and readers of its numbers and flags.
let private againstEcho (command: string) (stack: NetworkStack) =
    let o = stack.Options

    let code, output =
        hostilePy [ command; stack.InterfaceName; string o.HostAddress; string o.Address; "7" ]

    Expect.equal code 0 $"Hostile.py {command} ran: {output}"
    let line = output.Split('\n') |> Array.find (fun l -> l.StartsWith "{")
    let result = JsonDocument.Parse(line).RootElement

    line,
    (fun (name: string) -> result.GetProperty(name).GetInt32()),
    (fun (name: string) -> result.GetProperty(name).GetBoolean())

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Hostile input"
        [
            test "truncated and lying IPv4 headers (IHL, total length, version) are counted and dropped" {
                hostile 1 (4L * mb) (fun c ->
                    let good = ipv4 c.Kernel c.Ours 17uy 1 0 (udp c.Kernel c.Ours 1000 9 [| 1uy |])
                    let ihl3 = fixIpv4Checksum (Array.copy good)
                    ihl3.[0] <- 0x43uy
                    let ihl15 = Array.copy good
                    ihl15.[0] <- 0x4Fuy
                    let longer = Array.copy good
                    put16 longer 2 400
                    let shorter = Array.copy good
                    put16 shorter 2 12

                    dropsAll
                        c
                        "drop.ipv4."
                        [
                            good.[0..11]
                            fixIpv4Checksum ihl3
                            ihl15
                            fixIpv4Checksum longer
                            fixIpv4Checksum shorter
                        ]

                    dropsAll c "drop.ip." [ [| 0x75uy; 0uy; 0uy; 20uy |]; [||] ])
            }

            test "lying IPv6 headers (payload length, truncation) are counted and dropped" {
                hostile 2 (4L * mb) (fun c ->
                    let src = c.Stack.Options.HostAddress6.GetAddressBytes()
                    let dst = c.Stack.Options.Address6.GetAddressBytes()
                    let p = Array.zeroCreate<byte> 48
                    p.[0] <- 0x60uy
                    put16 p 4 400
                    p.[6] <- 17uy
                    p.[7] <- 64uy
                    src.CopyTo(p, 8)
                    dst.CopyTo(p, 24)
                    dropsAll c "drop.ipv6." [ p; p.[0..30] ])
            }

            test "bad checksums at every layer (IPv4, TCP, UDP, ICMP) are counted and dropped" {
                hostile 3 (4L * mb) (fun c ->
                    let badIp = ipv4 c.Kernel c.Ours 17uy 2 0 (udp c.Kernel c.Ours 1000 9 [| 1uy |])
                    badIp.[10] <- badIp.[10] ^^^ 0xFFuy
                    dropsAll c "drop.ipv4.bad-checksum" [ badIp ]
                    let segment = tcp c.Kernel c.Ours c.ClientPort 7 1u 1u Ack [||] [| 65uy |]
                    segment.[16] <- segment.[16] ^^^ 0x55uy
                    dropsAll c "drop.tcp.bad-checksum" [ ipv4 c.Kernel c.Ours 6uy 3 0 segment ]
                    let datagram = udp c.Kernel c.Ours 1000 9 [| 1uy; 2uy |]
                    datagram.[6] <- datagram.[6] ^^^ 0x55uy
                    dropsAll c "drop.udp.bad-checksum" [ ipv4 c.Kernel c.Ours 17uy 4 0 datagram ]
                    let echo = icmp 8uy 0uy 0x12340001u [| 1uy; 2uy; 3uy |]
                    echo.[2] <- echo.[2] ^^^ 0x55uy
                    dropsAll c "drop.icmpv4.bad-checksum" [ ipv4 c.Kernel c.Ours 1uy 5 0 echo ])
            }

            test "lying TCP data offsets and option lengths, and lying UDP lengths, are counted and dropped" {
                hostile 4 (4L * mb) (fun c ->
                    let withTcp (f: byte[] -> unit) =
                        let s = tcp c.Kernel c.Ours c.ClientPort 7 1u 1u Ack [| 1uy; 1uy; 1uy; 1uy |] [||]
                        f s
                        put16 s 16 0
                        put16 s 16 (int (checksumFrom (pseudo c.Kernel c.Ours 6uy s.Length) s))
                        ipv4 c.Kernel c.Ours 6uy 6 0 s

                    let withUdp (f: byte[] -> unit) =
                        let d = udp c.Kernel c.Ours 1000 9 [| 1uy; 2uy; 3uy; 4uy |]
                        f d
                        put16 d 6 0
                        ipv4 c.Kernel c.Ours 17uy 7 0 d

                    dropsAll
                        c
                        "drop.tcp."
                        [
                            withTcp (fun s -> s.[12] <- 0x40uy) // data offset 4 words: inside the fixed header
                            withTcp (fun s -> s.[12] <- 0xF0uy) // 60 bytes of header in a 24-byte segment
                            withTcp (fun s ->
                                s.[20] <- 2uy
                                s.[21] <- 0uy) // MSS option of length 0
                            withTcp (fun s ->
                                s.[20] <- 8uy
                                s.[21] <- 40uy) // an option running past the header
                            ipv4 c.Kernel c.Ours 6uy 8 0 [| 0uy; 1uy; 0uy |] // shorter than a TCP header
                        ]

                    dropsAll
                        c
                        "drop.udp."
                        [
                            withUdp (fun d -> put16 d 4 200) // longer than the datagram
                            withUdp (fun d -> put16 d 4 4) // shorter than the UDP header
                        ])
            }

            test
                "teardrop (overlapping fragments), tiny and never-completed fragments are dropped; out-of-order ones reassemble" {
                hostile 5 (8L * mb) (fun c ->
                    let ping = icmp 8uy 0uy 0x4242_0001u (Array.init 1000 byte)
                    // In reverse order: the datagram completes and is answered.
                    let piece (offset: int) (length: int) (more: bool) =
                        ipv4
                            c.Kernel
                            c.Ours
                            1uy
                            77
                            ((offset / 8) ||| (if more then 0x2000 else 0))
                            ping.[offset .. offset + length - 1]

                    let replied = c.Stack.Statistics.["icmp.echo.replied"]

                    for p in [ piece 800 (ping.Length - 800) false; piece 400 400 true; piece 0 400 true ] do
                        c.Inject p

                    Expect.equal
                        (waitCounted c.Stack "icmp.echo.replied" replied 1L)
                        1L
                        "out-of-order fragments reassembled and answered"
                    // Teardrop: the second fragment starts inside the first.
                    let overlapBefore = counted c.Stack "drop.fragment."
                    c.Inject(ipv4 c.Kernel c.Ours 1uy 78 0x2000 ping.[0..399])
                    c.Inject(ipv4 c.Kernel c.Ours 1uy 78 (200 / 8) ping.[200..]) // overlaps bytes 200..399

                    Expect.isGreaterThan
                        (waitCounted c.Stack "drop.fragment." overlapBefore 1L)
                        0L
                        "the overlap is counted"
                    // Tiny: 8-byte fragments of a TCP segment (too short to hold its header).
                    let segment = tcp c.Kernel c.Ours c.ClientPort 7 1u 1u Ack [||] [||]
                    let held = c.Stack.Statistics.["ip.fragment.held"]
                    c.Inject(ipv4 c.Kernel c.Ours 6uy 79 0x2000 segment.[0..7])
                    c.Inject(ipv4 c.Kernel c.Ours 6uy 79 0x2001 segment.[8..15])

                    Expect.equal
                        (waitCounted c.Stack "ip.fragment.held" held 2L)
                        2L
                        "tiny fragments are held, never delivered alone")
            }

            test
                "a flood of never-completed fragments stays within the reassembly memory cap; over-65535 datagrams are refused" {
                // A 1 MiB cap: the flood below would hold 8.4 MB without it.
                let options =
                    NetStackOptions(
                        TunName = "ns96h6",
                        Address = IPAddress.Parse "10.96.26.2",
                        HostAddress = IPAddress.Parse "10.96.26.1",
                        Address6 = IPAddress.Parse "fd96:26::2",
                        HostAddress6 = IPAddress.Parse "fd96:26::1",
                        ReassemblyMaxBytes = mb,
                        ReassemblyMaxDatagrams = 10_000
                    )

                hostileWith options (3L * mb) (fun c ->
                    let body = Array.zeroCreate<byte> 1400
                    let before = counted c.Stack "drop.fragment."
                    // 6,000 first fragments of distinct datagrams: 8.4 MB, eight times the cap.
                    for id in 1..6000 do
                        c.Inject(ipv4 c.Kernel c.Ours 17uy id 0x2000 body)

                    let tooLarge = c.Stack.Statistics.["drop.fragment.too-large"]
                    // Offset 65,528 plus 100 bytes: past the largest IPv4 datagram.
                    c.Inject(ipv4 c.Kernel c.Ours 17uy 9000 (65528 / 8) body.[0..99])

                    Expect.equal
                        (waitCounted c.Stack "drop.fragment.too-large" tooLarge 1L)
                        1L
                        "a datagram over 65535 bytes is refused"

                    let evicted = c.Stack.Statistics.["ip.reassembly.evicted"]
                    // 1 MiB holds about 700 of them; the rest were evicted, oldest first, and counted.
                    Expect.isGreaterThan evicted 5000L "datagrams evicted by the memory cap are counted"
                    let held = c.Stack.Statistics.["ip.fragment.held"]
                    let drops = counted c.Stack "drop.fragment." - before
                    printfn $"fragment flood: {held} held, {evicted} evicted, {drops} dropped")
            }

            test "SYN+FIN and SYN+RST are dropped without an answer; LAND (source = destination) is dropped" {
                hostile 7 (4L * mb) (fun c ->
                    let rst = c.Stack.Statistics.["tcp.rst.sent"]
                    let passive = c.Stack.Statistics.["tcp.passive-open"]

                    dropsAll
                        c
                        "tcp.drop.illegal-flags"
                        [
                            ipv4 c.Kernel c.Ours 6uy 10 0 (tcp c.Kernel c.Ours 40000 7 1000u 0u (Syn ||| Fin) mss [||])
                            ipv4 c.Kernel c.Ours 6uy 11 0 (tcp c.Kernel c.Ours 40001 7 1000u 0u (Syn ||| Rst) mss [||])
                            ipv4
                                c.Kernel
                                c.Ours
                                6uy
                                12
                                0
                                (tcp c.Kernel c.Ours c.ClientPort 7 1000u 0u (Syn ||| Fin) mss [||])
                        ]

                    dropsAll
                        c
                        "drop.bad-source"
                        [ ipv4 c.Ours c.Ours 6uy 13 0 (tcp c.Ours c.Ours 7 7 1000u 0u Syn mss [||]) ]

                    Expect.equal c.Stack.Statistics.["tcp.rst.sent"] rst "no RST answered any of them"
                    Expect.equal c.Stack.Statistics.["tcp.passive-open"] passive "no connection was opened")
            }

            test "ICMP errors quoting connections that do not exist are counted and change nothing" {
                hostile 8 (4L * mb) (fun c ->
                    // What the stack might have sent: a TCP segment from port 7 to a port nobody uses.
                    let quoteFor (dport: int) =
                        (ipv4 c.Ours c.Kernel 6uy 99 0 (tcp c.Ours c.Kernel 7 dport 5u 6u Ack [||] [||])).[0..27]

                    dropsAll
                        c
                        "icmp.error.no-socket"
                        [
                            ipv4 c.Kernel c.Ours 1uy 20 0 (icmp 3uy 3uy 0u (quoteFor 1))
                            ipv4 c.Kernel c.Ours 1uy 21 0 (icmp 3uy 1uy 0u (quoteFor 2))
                            ipv4 c.Kernel c.Ours 1uy 22 0 (icmp 11uy 0uy 0u (quoteFor 3))
                        ]
                    // A port unreachable quoting the live connection, but a sequence number that is
                    // not in flight (nothing is, between echoes): a blind guess, ignored and
                    // counted (RFC 5927 §4.1); the connection lives on.
                    dropsAll
                        c
                        "tcp.icmp.out-of-window"
                        [ ipv4 c.Kernel c.Ours 1uy 23 0 (icmp 3uy 3uy 0u (quoteFor c.ClientPort)) ])
            }

            test
                "blind RST, SYN and data with wrong numbers draw challenge ACKs (RFC 5961) and never reach the application" {
                // Every kind in turn, 0.4 s apart: without the rate limit (RFC 5961 §7, next test).
                use stack = NetworkStack.Start(optionsOf 9 TimeSpan.Zero)
                use listener = stack.ListenTcp(7)
                let server = echoServer listener
                let line, number, flag = againstEcho "blind" stack
                Expect.isTrue (flag "echo-before") "the echo worked before"

                Expect.equal (number "rst-in-window-challenge-acks") 1 $"an in-window RST drew a challenge ACK: {line}"

                Expect.equal (number "rst-out-of-window-answers") 0 $"an out-of-window RST drew nothing: {line}"
                Expect.equal (number "syn-challenge-acks") 1 $"a SYN drew a challenge ACK: {line}"
                Expect.equal (number "old-data-acks") 1 $"old data drew an ACK: {line}"
                Expect.equal (number "future-ack-acks") 1 $"an ACK of unsent data drew an ACK: {line}"

                Expect.equal (number "old-ack-acks") 1 $"an ACK far below SND.UNA drew a challenge ACK: {line}"

                Expect.equal (number "future-data-acks") 1 $"data beyond the window drew an ACK: {line}"
                Expect.isTrue (flag "timestamps") $"the connection uses timestamps (RFC 7323): {line}"

                Expect.equal
                    (number "no-timestamp-data-answers")
                    0
                    $"in-window data without a timestamp is dropped unanswered (RFC 7323 §3.2): {line}"

                Expect.isTrue (flag "echo-after") $"the connection still echoes, without the injected bytes: {line}"
                Expect.equal stack.Statistics.["tcp.reset-received"] 0L "no RST was believed"
                listener.Dispose()
                Expect.isTrue (server.Wait timeout) "the echo server ended"
                TestUtil.assertNoExceptions stack
            }

            test
                "challenge ACKs are rate limited: a burst of blind RSTs draws one, old data is answered each time (RFC 5961 §7)" {
                use stack = NetworkStack.Start(optionsFor 10)
                use listener = stack.ListenTcp(7)
                let server = echoServer listener
                let line, number, flag = againstEcho "burst" stack
                Expect.equal (number "rst-burst-acks") 1 $"50 in-window RSTs at once: one challenge ACK: {line}"
                Expect.equal (number "old-data-burst-acks") 20 $"20 old data segments: 20 ACKs: {line}"
                Expect.equal (number "rst-later-acks") 1 $"a RST 0.6 s later: a challenge ACK again: {line}"
                Expect.isTrue (flag "echo-after") $"the connection still echoes: {line}"
                Expect.equal stack.Statistics.["tcp.ack.rate-limited"] 49L "the 49 held-back challenge ACKs counted"
                Expect.equal stack.Statistics.["tcp.reset-received"] 0L "no RST was believed"
                listener.Dispose()
                Expect.isTrue (server.Wait timeout) "the echo server ended"
                TestUtil.assertNoExceptions stack
            }
        ]
