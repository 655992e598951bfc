/// The "NetStack" meter, seen the way dotnet-counters and OpenTelemetry see it: through a
/// MeterListener, after traffic on an in-memory stack.
module NetStack.Tests.Diagnostics.MetricsTests

open System
open System.Collections.Concurrent
open System.Collections.Generic
open System.Diagnostics.Metrics
open System.Net
open System.Net.Sockets
open Expecto
open NetStack
open NetStack.Core.Stack
open NetStack.Core.Wire
open NetStack.Diagnostics
open NetStack.Engine

let private ours4 = Ipv4Address.Parse "10.91.0.2"
let private peer4 = Ipv4Address.Parse "10.91.0.1"
let private interfaceName = "nsmetrics0"
let private timeout = TimeSpan.FromSeconds 5.

/// Measurements of the stack under test, by "instrument|tag=value,..." (the interface tag left out).
type private Seen() =
    member val Longs = ConcurrentDictionary<string, int64>()
    member val Doubles = ConcurrentQueue<string * float>()

let private key (interfaceName: string) (instrument: Instrument) (tags: ReadOnlySpan<KeyValuePair<string, obj>>) =
    let mutable ours = false
    let parts = ResizeArray<string>()

    for i in 0 .. tags.Length - 1 do
        let t = tags.[i]

        if t.Key = NetStackMetrics.InterfaceTag then
            ours <- string t.Value = interfaceName
        else
            parts.Add $"{t.Key}={t.Value}"

    if ours then
        ValueSome(instrument.Name + "|" + String.Join(",", parts))
    else
        ValueNone

let private listen (interfaceName: string) (seen: Seen) =
    let listener = new MeterListener()

    listener.InstrumentPublished <-
        fun instrument l ->
            if instrument.Meter.Name = NetStackMetrics.MeterName then
                l.EnableMeasurementEvents instrument

    listener.SetMeasurementEventCallback<int64>(
        MeasurementCallback<int64>(fun instrument value tags _ ->
            match key interfaceName instrument tags with
            | ValueSome k -> seen.Longs.[k] <- value
            | ValueNone -> ())
    )

    listener.SetMeasurementEventCallback<int>(
        MeasurementCallback<int>(fun instrument value tags _ ->
            match key interfaceName instrument tags with
            | ValueSome k -> seen.Longs.[k] <- int64 value
            | ValueNone -> ())
    )

    listener.SetMeasurementEventCallback<float>(
        MeasurementCallback<float>(fun instrument value tags _ ->
            match key interfaceName instrument tags with
            | ValueSome k -> seen.Doubles.Enqueue((k, value))
            | ValueNone -> ())
    )

    listener.Start()
    listener

let private written (device: MemoryPacketDevice) =
    match device.WaitWritten timeout with
    | null -> failtest "the stack wrote nothing"
    | packet -> packet

/// Every test of the metrics.
[<Tests>]
let tests =
    testList
        "Metrics"
        [
            test "a MeterListener sees packets, bytes, drops by reason, TCP counts and the ping RTT" {
                let seen = Seen()
                use listener = listen interfaceName seen
                let device = new MemoryPacketDevice(1500)

                let options =
                    NetStackOptions(Address = ours4.ToIPAddress(), HostAddress = peer4.ToIPAddress(), Address6 = null)

                use stack = NetworkStack.Start(options, device, interfaceName)
                let buffer = Array.zeroCreate<byte> 1500

                // An echo request in, its reply out.
                let request =
                    IpLayer.writeEchoRequest
                        (V4 peer4)
                        (V4 ours4)
                        7us
                        1us
                        1us
                        (ReadOnlySpan(Array.zeroCreate 40))
                        (Span buffer)

                device.Inject(ReadOnlySpan(buffer, 0, request))
                let reply = written device

                // A packet the stack drops: an IPv4 header whose checksum is wrong.
                let bad =
                    IpLayer.writeEchoRequest
                        (V4 peer4)
                        (V4 ours4)
                        7us
                        2us
                        2us
                        (ReadOnlySpan(Array.zeroCreate 8))
                        (Span buffer)

                buffer.[10] <- buffer.[10] ^^^ 0xFFuy
                device.Inject(ReadOnlySpan(buffer, 0, bad))

                // A ping out, answered.
                let ping = stack.PingAsync(peer4.ToIPAddress(), timeout, 16)
                let echo = written device

                let struct (_, r) =
                    IpLayer.receive
                        1L
                        (ReadOnlySpan echo)
                        (IpLayer.create (IpLayer.config (ValueSome peer4) ValueNone 65535) 0L)

                let data = (IpLayer.slice (ReadOnlySpan echo) r.Payload).ToArray()

                let answer =
                    IpLayer.writeEchoReply
                        (V4 peer4)
                        (V4 ours4)
                        r.Echo.Identifier
                        r.Echo.Sequence
                        3us
                        (ReadOnlySpan data)
                        (Span buffer)

                device.Inject(ReadOnlySpan(buffer, 0, answer))
                Expect.equal ping.Result.Status Net.NetworkInformation.IPStatus.Success "the ping is answered"

                listener.RecordObservableInstruments()

                let value name =
                    match seen.Longs.TryGetValue name with
                    | true, v -> v
                    | _ -> failtestf "no measurement %s; seen: %A" name (List.ofSeq seen.Longs.Keys)

                Expect.equal (value "netstack.packets|direction=received") 3L "request, bad packet, ping reply"
                Expect.equal (value "netstack.packets|direction=sent") 2L "echo reply, ping request"

                Expect.equal
                    (value "netstack.bytes|direction=received")
                    (int64 (request + bad + answer))
                    "the bytes of the three packets read"

                Expect.equal
                    (value "netstack.bytes|direction=sent")
                    (int64 (reply.Length + echo.Length))
                    "the bytes of the two packets written"

                Expect.equal (value "netstack.drops|reason=ipv4.bad-checksum") 1L "the drop, by reason"

                Expect.equal (stack.Statistics.["drop.ipv4.bad-checksum"]) 1L "the same count as the statistics"

                Expect.equal (value "netstack.tcp.connections|") 0L "no TCP connection"
                Expect.equal (value "netstack.tcp.retransmission_timeouts|") 0L "no retransmission"

                match List.ofSeq seen.Doubles with
                | [ (name, ms) ] ->
                    Expect.equal name "netstack.ping.rtt|" "the RTT histogram"
                    Expect.isTrue (ms >= 0.0 && ms < 5000.0) $"a plausible RTT: {ms} ms"
                    Expect.floatClose Accuracy.high ms ping.Result.RoundtripTime.TotalMilliseconds "the ping's own RTT"
                | other -> failtestf "one RTT expected, got %A" other

                NetStack.Tests.TestUtil.assertNoExceptions stack
            }

            test "the connection gauge counts a kernel client's TCP connection to a stack on a TUN device" {
                let seen = Seen()
                use listener = listen "nsmetrics1" seen

                let options =
                    NetStackOptions(
                        TunName = "nsmetrics1",
                        Address = IPAddress.Parse "10.91.1.2",
                        HostAddress = IPAddress.Parse "10.91.1.1",
                        Address6 = IPAddress.Parse "fd91::2",
                        HostAddress6 = IPAddress.Parse "fd91::1"
                    )

                use stack = NetworkStack.Start options
                use tcpListener = stack.ListenTcp 80
                let accepted = tcpListener.AcceptAsync().AsTask()

                use client =
                    new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                client.Connect(IPEndPoint(IPAddress.Parse "10.91.1.2", 80))
                Expect.isTrue (accepted.Wait timeout) "accepted"
                use connection = accepted.Result
                // A byte each way: the stack's data is ACKed, so its RTT estimator has a sample.
                client.Send [| 1uy |] |> ignore
                Expect.equal (connection.ReadAsync(Memory(Array.zeroCreate<byte> 1)).AsTask().Wait timeout) true "read"
                connection.WriteAsync(ReadOnlyMemory [| 2uy |]).AsTask().Wait timeout |> ignore
                Expect.equal (client.Receive(Array.zeroCreate<byte> 1)) 1 "echoed"
                listener.RecordObservableInstruments()
                Expect.equal seen.Longs.["netstack.tcp.connections|"] 1L "one connection"
                // The client's reset releases the connection, which records its smoothed RTT.
                client.LingerState <- LingerOption(true, 0)
                client.Close()
                let deadline = DateTime.UtcNow.AddSeconds 5.0

                while not (seen.Doubles |> Seq.exists (fun (k, _) -> k.StartsWith "netstack.tcp.rtt"))
                      && DateTime.UtcNow < deadline do
                    Threading.Thread.Sleep 10

                let rtts =
                    seen.Doubles
                    |> Seq.filter (fun (k, _) -> k.StartsWith "netstack.tcp.rtt")
                    |> Seq.map snd
                    |> Seq.toList

                Expect.isNonEmpty rtts "a TCP RTT was recorded"
                Expect.all rtts (fun ms -> ms > 0.0 && ms < 5000.0) "RTTs in milliseconds, positive"

                Expect.isGreaterThanOrEqual
                    seen.Longs.["netstack.packets|direction=received"]
                    2L
                    "at least the SYN and the ACK"

                Expect.isGreaterThanOrEqual seen.Longs.["netstack.packets|direction=sent"] 1L "at least the SYN-ACK"
                NetStack.Tests.TestUtil.assertNoExceptions stack
            }
        ]
