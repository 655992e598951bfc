module NetStack.Bench.IpBench

open System
open BenchmarkDotNet.Attributes
open NetStack.Core.Wire

/// Parsing and writing IPv4 and IPv6 headers. Parsing must report 0 B allocated.
[<MemoryDiagnoser>]
type IpHeaders() =
    let v4Header =
        { Ipv4.header (Ipv4Address.Parse "192.168.0.1") (Ipv4Address.Parse "192.168.0.199") IpProtocol.Udp with
            Identification = 0x1234us
            DontFragment = true
        }

    let v4Options = [| 0x94uy; 4uy; 0uy; 0uy |] // Router Alert (RFC 2113)

    let v6Header =
        { Ipv6.header (Ipv6Address.Parse "2001:db8::1") (Ipv6Address.Parse "2001:db8::2") IpProtocol.Tcp with
            FlowLabel = 0x12345u
            PayloadLength = 1440
        }

    let v4Packet = Array.zeroCreate<byte> 1500
    let v6Packet = Array.zeroCreate<byte> 1500
    let output = Array.zeroCreate<byte> 64

    do
        Ipv4.write v4Header (ReadOnlySpan v4Options) 1476 (Span v4Packet) |> ignore
        Ipv6.write v6Header (Span v6Packet) |> ignore

    /// Ipv4.parse of a 1500-byte datagram with one option, checksum verified.
    [<Benchmark>]
    member _.ParseIpv4() =
        match Ipv4.parse (ReadOnlySpan v4Packet) with
        | Ok h -> h.PayloadLength
        | Error _ -> -1

    /// Ipv6.parse plus the extension-header walk of a 1500-byte packet.
    [<Benchmark>]
    member _.ParseIpv6() =
        match Ipv6.parse (ReadOnlySpan v6Packet) with
        | Ok h ->
            match Ipv6.parseExtensions (ReadOnlySpan v6Packet) h with
            | Ok x -> x.UpperLength
            | Error _ -> -2
        | Error _ -> -1

    /// Ipv4.write of a 24-byte header, checksum included.
    [<Benchmark>]
    member _.WriteIpv4() =
        Ipv4.write v4Header (ReadOnlySpan v4Options) 1476 (Span output)

    /// Ipv6.write of the 40-byte fixed header.
    [<Benchmark>]
    member _.WriteIpv6() = Ipv6.write v6Header (Span output)
