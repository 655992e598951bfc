module NetStack.Bench.TransportBench

open System
open BenchmarkDotNet.Attributes
open NetStack.Core.Wire

/// Parse and build of the transport headers: UDP, TCP with a full option set, ICMP echo.
/// Parsing must allocate nothing; building writes into a preallocated buffer.
[<MemoryDiagnoser>]
type TransportBench() =
    let source = Ipv4Address.Parse "10.0.0.1"
    let destination = Ipv4Address.Parse "10.0.0.2"
    let payload = Array.init 1024 byte
    let buffer = Array.zeroCreate<byte> 2048

    // A data segment as Linux sends it under loss: timestamps and three SACK blocks (40 bytes).
    let tcpOptions =
        { TcpOptions.None with
            Timestamps = ValueSome { Value = 123456u; EchoReply = 654321u }
            SackBlockCount = 3
            Sack0 = { Left = 1000u; Right = 2000u }
            Sack1 = { Left = 3000u; Right = 4000u }
            Sack2 = { Left = 5000u; Right = 6000u }
        }

    let tcpHeader =
        TcpHeader.Create(40000us, 80us, 0x01020304u, 0x0a0b0c0du, TcpFlags.Ack ||| TcpFlags.Psh, 64240us)

    let udp =
        let b = Array.zeroCreate (8 + payload.Length)

        Udp.buildV4 (Span b) source destination 5353us 53us (ReadOnlySpan payload)
        |> ignore

        b

    let tcp =
        let b = Array.zeroCreate (60 + payload.Length)

        let n =
            Tcp.buildV4 (Span b) source destination tcpHeader tcpOptions (ReadOnlySpan payload)

        b.[.. n - 1]

    let echo =
        let b = Array.zeroCreate (8 + 56)

        Icmpv4.buildEchoRequest (Span b) 1us 1us (ReadOnlySpan(payload, 0, 56))
        |> ignore

        b

    /// UDP header parse with the IPv4 checksum over 1 KiB of payload.
    [<Benchmark>]
    member _.ParseUdp() =
        match Udp.parseV4 source destination (ReadOnlySpan udp) with
        | Ok h -> h.PayloadLength
        | Error _ -> -1

    /// UDP build (copy of 1 KiB and checksum).
    [<Benchmark>]
    member _.BuildUdp() =
        Udp.buildV4 (Span buffer) source destination 5353us 53us (ReadOnlySpan payload)

    /// TCP header parse with checksum, then its 40 bytes of options.
    [<Benchmark>]
    member _.ParseTcpWithOptions() =
        match Tcp.parseV4 source destination (ReadOnlySpan tcp) with
        | Ok h ->
            match Tcp.parseOptions (ReadOnlySpan(tcp, h.OptionsOffset, h.OptionsLength)) with
            | Ok o -> o.SackBlockCount
            | Error _ -> -2
        | Error _ -> -1

    /// TCP build: header, timestamps and three SACK blocks, 1 KiB payload, checksum.
    [<Benchmark>]
    member _.BuildTcpWithOptions() =
        Tcp.buildV4 (Span buffer) source destination tcpHeader tcpOptions (ReadOnlySpan payload)

    /// ICMPv4 echo request parse (56 bytes of data, as ping sends).
    [<Benchmark>]
    member _.ParseIcmpEcho() =
        match Icmpv4.parse (ReadOnlySpan echo) with
        | Ok m -> int m.SequenceNumber
        | Error _ -> -1

    /// ICMPv4 echo reply build.
    [<Benchmark>]
    member _.BuildIcmpEcho() =
        Icmpv4.buildEchoReply (Span buffer) 1us 1us (ReadOnlySpan(payload, 0, 56))
