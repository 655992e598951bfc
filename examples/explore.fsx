// A first look at NetStack.Core's wire layer: parse a TCP SYN, then build a UDP packet.
//
// Run it from the repository root after `./build.sh build`:
//
//     dotnet fsi examples/explore.fsx                  # the Linux SYN below
//     dotnet fsi examples/explore.fsx 4500003c...      # any IPv4/TCP packet, as hex
//
// The parsers read a ReadOnlySpan<byte> and return Result<Header, ParseError>: bytes from the
// network are never trusted, so they never throw. The builders write into a Span<byte> you
// provide and return the number of bytes written.

// The path is relative to this script, so it works from any working directory.
#r "../NetStack.Core/bin/Release/net10.0/NetStack.Core.dll"

open System
open NetStack.Core.Wire

/// The SYN a Linux 6.x kernel sent from 10.0.0.1:46164 to 10.0.0.2:8000 (the first frame of
/// NetStack.Tests/Golden/tcp-ipv4.pcap): a 20-byte IPv4 header, then TCP with 20 bytes of options.
let linuxSyn =
    "4500003cd989400040064d300a0000010a000002"
    + "b4541f40c9a41fe000000000a002faf051af0000"
    + "020405b40402080a4a17e029000000000103030a"

/// The packet to read: the first argument if there is one, else the SYN above.
let packetHex =
    match fsi.CommandLineArgs |> Array.tail with
    | [| hex |] -> hex
    | _ -> linuxSyn

/// The names of the control bits that are set, e.g. "SYN ACK".
let flagNames (flags: TcpFlags) =
    [
        TcpFlags.Fin, "FIN"
        TcpFlags.Syn, "SYN"
        TcpFlags.Rst, "RST"
        TcpFlags.Psh, "PSH"
        TcpFlags.Ack, "ACK"
        TcpFlags.Urg, "URG"
        TcpFlags.Ece, "ECE"
        TcpFlags.Cwr, "CWR"
    ]
    |> List.filter (fun (bit, _) -> flags.HasFlag bit)
    |> List.map snd
    |> String.concat " "

/// Prints the TCP options the parser understood.
let printOptions (options: TcpOptions) =
    match options.MaximumSegmentSize with
    | ValueSome mss -> printfn "  option MSS %d" mss
    | ValueNone -> ()

    if options.SackPermitted then
        printfn "  option SACK permitted"

    match options.Timestamps with
    | ValueSome ts -> printfn "  option timestamps TSval %d TSecr %d" ts.Value ts.EchoReply
    | ValueNone -> ()

    match options.WindowScale with
    | ValueSome shift -> printfn "  option window scale %d (window × %d)" shift (1 <<< int shift)
    | ValueNone -> ()

    for i in 0 .. options.SackBlockCount - 1 do
        let block = options.GetSackBlock i
        printfn "  option SACK block %d..%d" block.Left block.Right

/// Parses an IPv4 packet carrying TCP and prints its headers. Spans cannot live in top-level
/// values of a script, so they are made here, inside a function.
let explore (packet: byte[]) =
    match Ipv4.parse (ReadOnlySpan packet) with
    | Error e -> printfn "not an IPv4 packet: %A" e
    | Ok ip ->
        printfn "IPv4 %O -> %O" ip.Source ip.Destination

        printfn
            "  header length %d, total length %d, TTL %d, protocol %d"
            ip.HeaderLength
            ip.TotalLength
            ip.Ttl
            ip.Protocol

        printfn
            "  identification 0x%04x, DF %b, MF %b, fragment offset %d"
            ip.Identification
            ip.DontFragment
            ip.MoreFragments
            ip.FragmentOffset

        printfn "  header checksum 0x%04x (verified)" ip.HeaderChecksum

        if ip.Protocol <> IpProtocol.Tcp then
            printfn "not TCP: protocol %d" ip.Protocol
        else
            // The TCP segment is the IP payload; its checksum covers the IPv4 pseudo-header.
            let segment = ReadOnlySpan(packet, ip.PayloadOffset, ip.PayloadLength)

            match Tcp.parseV4 ip.Source ip.Destination segment with
            | Error e -> printfn "bad TCP segment: %A" e
            | Ok tcp ->
                printfn "TCP port %d -> %d" tcp.SourcePort tcp.DestinationPort
                printfn "  flags %s" (flagNames tcp.Flags)
                printfn "  sequence %d, acknowledgment %d" tcp.SequenceNumber tcp.AcknowledgmentNumber
                printfn "  header length %d, window %d, payload %d bytes" tcp.HeaderLength tcp.Window tcp.PayloadLength
                printfn "  checksum 0x%04x (verified)" tcp.Checksum

                match Tcp.parseOptions (segment.Slice(tcp.OptionsOffset, tcp.OptionsLength)) with
                | Error e -> printfn "  bad options: %A" e
                | Ok options -> printOptions options

/// Builds 10.0.0.1:5000 -> 10.0.0.2:7000 carrying "hello" as one IPv4 packet: the UDP datagram
/// is written after the room left for the IP header, then the header in front of it.
let buildUdp () =
    let source = Ipv4Address.Parse "10.0.0.1"
    let destination = Ipv4Address.Parse "10.0.0.2"
    let payload = "hello"B

    let packet =
        Array.zeroCreate<byte>(Ipv4.MinHeaderLength + Udp.HeaderLength + payload.Length)

    let udpLength =
        Udp.buildV4
            (Span(packet, Ipv4.MinHeaderLength, packet.Length - Ipv4.MinHeaderLength))
            source
            destination
            5000us
            7000us
            (ReadOnlySpan payload)

    let header =
        { Ipv4.header source destination IpProtocol.Udp with
            Identification = 0x1234us
            DontFragment = true
        }

    let headerLength = Ipv4.write header ReadOnlySpan.Empty udpLength (Span packet)
    packet.[.. headerLength + udpLength - 1]

explore (Convert.FromHexString packetHex)
printfn ""
let udp = buildUdp ()
printfn "UDP 10.0.0.1:5000 -> 10.0.0.2:7000 \"hello\", %d bytes:" udp.Length
printfn "%s" (Convert.ToHexString(udp).ToLowerInvariant())
