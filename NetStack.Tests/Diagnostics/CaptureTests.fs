/// Packet capture: the pcap bytes `PcapWriter` writes (known answers, and read back with the
/// tests' own pcap reader), the capture decorator on an in-memory stack, and `netstack serve
/// --pcap` read by tshark after a real curl.
module NetStack.Tests.Diagnostics.CaptureTests

open System
open System.Diagnostics
open System.IO
open System.Net
open System.Text
open System.Threading.Tasks
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack
open NetStack.Core.Stack
open NetStack.Core.Wire
open NetStack.Diagnostics
open NetStack.Engine
open NetStack.Tests

let private readBack (bytes: byte[]) =
    match Pcap.read bytes with
    | Ok file -> file
    | Error e -> failtestf "the capture does not read back: %A" e

/// A packet as the reader requires it for raw IP: the version nibble says 4 or 6.
let private ipLike (version: byte) (body: byte[]) =
    Array.append [| (version <<< 4) ||| 5uy |] body

let private genPacket: Gen<byte[]> =
    gen {
        let! version = Gen.elements [ 4uy; 6uy ]
        let! body = Gen.arrayOf (Gen.choose (0, 255) |> Gen.map byte)
        return ipLike version body
    }

// 1970 .. 2106 in microseconds: every timestamp the 32-bit seconds field holds.
let private genTimestamp =
    Gen.choose64 (0L, int64 UInt32.MaxValue * 1_000_000L + 999_999L)
    |> Gen.map (fun micros -> DateTimeOffset.UnixEpoch.AddTicks(micros * 10L))

let private writerUnitTests =
    testList
        "PcapWriter"
        [
            test "the file header is the 24 little-endian bytes of pcap 2.4, snap length and LINKTYPE_RAW" {
                use memory = new MemoryStream()
                using (new PcapWriter(memory, leaveOpen = true)) ignore

                Expect.equal
                    (TestUtil.toHex (memory.ToArray()))
                    ("d4c3b2a1" + "0200" + "0400" + "00000000" + "00000000" + "ffff0000" + "65000000")
                    "magic a1b2c3d4, version 2.4, zone 0, sigfigs 0, snaplen 65535, link type 101"
            }

            test "a record is seconds, microseconds, captured and original length, then the bytes" {
                use memory = new MemoryStream()

                using (new PcapWriter(memory, leaveOpen = true)) (fun w ->
                    // 2009-02-13 23:31:30.123456 UTC is 1234567890 s (0x499602d2) and 123456 µs (0x1e240).
                    let at = DateTimeOffset(2009, 2, 13, 23, 31, 30, TimeSpan.Zero).AddTicks 1234560L
                    w.Write(at, ReadOnlySpan [| 0x45uy; 0xAAuy |]))

                Expect.equal
                    (TestUtil.toHex (memory.ToArray().[24..]))
                    ("d2029649" + "40e20100" + "02000000" + "02000000" + "45aa")
                    "the record header and the packet"
            }

            test "a packet longer than the snap length is cut to it and keeps its original length" {
                use memory = new MemoryStream()

                using (new PcapWriter(memory, snapLength = 40, leaveOpen = true)) (fun w ->
                    w.Write(ipLike 4uy (Array.create 99 7uy)))

                let file = readBack (memory.ToArray())
                Expect.equal file.SnapLength 40u "the snap length is in the header"
                Expect.equal file.Packets.[0].CapturedLength 40 "40 bytes kept"
                Expect.equal file.Packets.[0].OriginalLength 100 "the original length"
            }

            test "out-of-range arguments and use after dispose throw" {
                use memory = new MemoryStream()
                Expect.throwsT<ArgumentOutOfRangeException> (fun () -> new PcapWriter(memory, 0) |> ignore) "snap 0"

                Expect.throwsT<ArgumentOutOfRangeException>
                    (fun () -> new PcapWriter(memory, 262145) |> ignore)
                    "snap above libpcap's limit"

                use readOnly = new MemoryStream([| 1uy |], false)
                Expect.throwsT<ArgumentException> (fun () -> new PcapWriter(readOnly) |> ignore) "a read-only stream"
                let w = new PcapWriter(memory, leaveOpen = true)

                Expect.throwsT<ArgumentOutOfRangeException>
                    (fun () -> w.Write(DateTimeOffset(1969, 12, 31, 0, 0, 0, TimeSpan.Zero), ReadOnlySpan [| 0x45uy |]))
                    "before 1970"

                Expect.throwsT<ArgumentOutOfRangeException>
                    (fun () -> w.Write(DateTimeOffset(2107, 1, 1, 0, 0, 0, TimeSpan.Zero), ReadOnlySpan [| 0x45uy |]))
                    "after 2106"

                w.Dispose()
                w.Dispose()
                Expect.throwsT<ObjectDisposedException> (fun () -> w.Write(ReadOnlySpan [| 0x45uy |])) "after dispose"
                Expect.isTrue memory.CanWrite "leaveOpen leaves the stream open"
            }

            test "disposing closes the stream unless leaveOpen" {
                let memory = new MemoryStream()
                (new PcapWriter(memory)).Dispose()
                Expect.isFalse memory.CanWrite "the stream is closed"
            }

            testPropertyWithConfig TestUtil.heavyConfig "every packet written reads back with its bytes and timestamp"
            <| Prop.forAll (Arb.fromGen (Gen.listOf (Gen.zip genTimestamp genPacket))) (fun records ->
                use memory = new MemoryStream()

                using (new PcapWriter(memory, leaveOpen = true)) (fun w ->
                    for at, packet in records do
                        w.Write(at, ReadOnlySpan packet))

                let file = readBack (memory.ToArray())
                Expect.equal file.LinkType Pcap.LinkType.Raw "raw IP"
                Expect.equal file.Resolution Pcap.Microseconds "microseconds"
                Expect.equal file.Packets.Length records.Length "one record per packet"

                for (at, packet), read in Seq.zip records file.Packets do
                    let micros = (at - DateTimeOffset.UnixEpoch).Ticks / 10L
                    Expect.equal read.Ip packet "the bytes"
                    Expect.equal (int64 read.TimestampSeconds) (micros / 1_000_000L) "the seconds"
                    Expect.equal (int64 read.TimestampFraction) (micros % 1_000_000L) "the microseconds"
                    Expect.equal read.OriginalLength packet.Length "the original length")

            test "records written from several threads at once never interleave" {
                use memory = new MemoryStream()
                let perThread = 2000

                using (new PcapWriter(memory, leaveOpen = true)) (fun w ->
                    Parallel.For(
                        0,
                        4,
                        fun t ->
                            for i in 0 .. perThread - 1 do
                                // Thread t writes packets of length 20 + t, all bytes t.
                                w.Write(ipLike 4uy (Array.create (19 + t) (byte t)))
                    )
                    |> ignore

                    Expect.equal w.PacketCount (int64 (4 * perThread)) "PacketCount")

                let file = readBack (memory.ToArray())
                Expect.equal file.Packets.Length (4 * perThread) "every record"

                for p in file.Packets do
                    let t = p.Ip.Length - 20
                    Expect.isTrue (Array.forall ((=) (byte t)) p.Ip.[1..]) "each record is one whole packet"
            }
        ]

// ---- The capture on a running stack ----------------------------------------------------------

let private ours4 = Ipv4Address.Parse "10.90.0.2"
let private peer4 = Ipv4Address.Parse "10.90.0.1"

let private echoRequest () =
    let buffer = Array.zeroCreate<byte> 200

    let n =
        IpLayer.writeEchoRequest
            (V4 peer4)
            (V4 ours4)
            0x1234us
            1us
            7us
            (ReadOnlySpan(Encoding.ASCII.GetBytes "ping"))
            (Span buffer)

    buffer.[.. n - 1]

let private stackTests =
    testList
        "capture on a stack"
        [
            test "NetStackOptions.CapturePath records the packet read and the reply written, in order" {
                let path =
                    Path.Combine(Path.GetTempPath(), $"netstack-capture-{Guid.NewGuid():N}.pcap")

                try
                    let device = new MemoryPacketDevice(1500)

                    let options =
                        NetStackOptions(
                            Address = ours4.ToIPAddress(),
                            HostAddress = peer4.ToIPAddress(),
                            Address6 = null,
                            CapturePath = path
                        )

                    let request = echoRequest ()

                    let reply =
                        using (NetworkStack.Start(options, device)) (fun stack ->
                            device.Inject(ReadOnlySpan request)

                            let reply =
                                match device.WaitWritten(TimeSpan.FromSeconds 5.) with
                                | null -> failtest "the stack did not answer the echo request"
                                | packet -> packet

                            TestUtil.assertNoExceptions stack
                            reply)

                    match Pcap.readFile path with
                    | Error e -> failtestf "the capture does not read back: %A" e
                    | Ok file ->
                        Expect.equal file.Packets.Length 2 "the request and the reply"
                        Expect.equal file.Packets.[0].Ip request "first the packet the stack read, byte for byte"
                        Expect.equal file.Packets.[1].Ip reply "then the packet it wrote, byte for byte"
                finally
                    File.Delete path
            }

            test "an empty capture path is refused" {
                Expect.throwsT<ArgumentException>
                    (fun () ->
                        NetworkStack.Start(NetStackOptions(CapturePath = ""), new MemoryPacketDevice())
                        |> ignore)
                    "empty path"
            }
        ]

// ---- netstack serve --pcap, read by tshark ---------------------------------------------------

let private waitForReady (p: Process) =
    let deadline = DateTime.UtcNow + TimeSpan.FromSeconds 30.
    let mutable ready = false

    while not ready do
        let line = p.StandardOutput.ReadLineAsync()
        let left = deadline - DateTime.UtcNow

        if left <= TimeSpan.Zero || not (line.Wait left) then
            p.Kill true
            failtest "serve printed no 'ready' line within 30 s"

        match line.Result with
        | null -> failtestf "serve exited before 'ready': %s" (p.StandardError.ReadToEnd())
        | l -> ready <- l.StartsWith "ready"

/// Runs tshark with the arguments; returns its stdout (stderr holds tshark's notes, such as
/// running as root).
let private tshark (args: string list) =
    let psi = ProcessStartInfo "tshark"

    for a in args do
        psi.ArgumentList.Add a

    psi.RedirectStandardOutput <- true
    psi.RedirectStandardError <- true
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    p.WaitForExit()
    Expect.equal p.ExitCode 0 $"tshark {String.Join(' ', args)}: {err.Result}"
    out.Result

let private cliTests =
    testList
        "serve --pcap"
        [
            test "tshark reads the capture of serve --http --pcap: the TCP handshake, then curl's GET" {
                let path =
                    Path.Combine(Path.GetTempPath(), $"netstack-serve-{Guid.NewGuid():N}.pcap")

                try
                    use p =
                        Integration.CliTests.start
                            [
                                "serve"
                                "--tun"
                                "nspcap0"
                                "--ip"
                                "10.90.0.2"
                                "--host-ip"
                                "10.90.0.1"
                                "--ip6"
                                "fd90::2"
                                "--host-ip6"
                                "fd90::1"
                                "--http"
                                "80"
                                "--pcap"
                                path
                            ]

                    waitForReady p

                    let code, page =
                        Isolation.run "curl" [ "-sS"; "--max-time"; "10"; "http://10.90.0.2/hello" ]

                    Expect.equal code 0 $"curl: {page}"
                    // Exit 0 on SIGTERM, with counters that show no swallowed exception.
                    Integration.CliTests.terminate p

                    // One line per TCP packet: source, destination, flags, HTTP method and URI.
                    let lines =
                        tshark
                            [
                                "-r"
                                path
                                "-Y"
                                "tcp.port == 80"
                                "-T"
                                "fields"
                                "-E"
                                "separator=/t"
                                "-e"
                                "ip.src"
                                "-e"
                                "ip.dst"
                                "-e"
                                "tcp.flags"
                                "-e"
                                "http.request.method"
                                "-e"
                                "http.request.uri"
                            ]
                        |> fun out -> out.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                        |> Array.map (fun l -> l.Split '\t')

                    let flags (l: string[]) = Convert.ToInt32(l.[2], 16)
                    Expect.isGreaterThanOrEqual lines.Length 4 "at least the handshake and the request"
                    let syn, synAck, ack = lines.[0], lines.[1], lines.[2]
                    Expect.equal (syn.[0], syn.[1], flags syn) ("10.90.0.1", "10.90.0.2", 0x002) "SYN from the kernel"

                    Expect.equal
                        (synAck.[0], synAck.[1], flags synAck)
                        ("10.90.0.2", "10.90.0.1", 0x012)
                        "SYN-ACK from the stack"

                    Expect.equal (ack.[0], flags ack &&& 0x017) ("10.90.0.1", 0x010) "the ACK that completes it"

                    let get = lines |> Array.tryFind (fun l -> l.Length >= 5 && l.[3] = "GET")

                    match get with
                    | None ->
                        failtestf
                            "no HTTP GET in the capture:\n%s"
                            (String.Join('\n', lines |> Array.map (String.concat " ")))
                    | Some l -> Expect.equal l.[4] "/hello" "the request's URI"

                    Expect.isTrue
                        (lines |> Array.exists (fun l -> l.[0] = "10.90.0.2" && flags l &&& 0x001 <> 0))
                        "the stack's FIN is captured too"
                finally
                    File.Delete path
            }
        ]

/// Every capture test.
[<Tests>]
let tests = testList "Capture" [ writerUnitTests; stackTests; cliTests ]
