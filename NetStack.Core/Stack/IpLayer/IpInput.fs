namespace NetStack.Core.Stack

open System
open System.Buffers.Binary
open NetStack.Core.Wire
open NetStack.Core.Ip
open NetStack.Core.Tcp
// After NetStack.Core.Ip: DropReason is this namespace's (Received.fs), not reassembly's.
open NetStack.Core.Stack

/// What the IPv4 and IPv6 receive paths share: making a `Received`, and the UDP and TCP checks
/// before delivery (port 0, TCP options).
module internal IpInput =

    /// Datagrams a reassembly step evicted to keep within its caps.
    let evicted (abandoned: Abandoned list) =
        abandoned
        |> List.sumBy (fun a -> if a.Reason = AbandonReason.Evicted then 1L else 0L)

    /// A result with every field at its default: what each path fills in from.
    let nothing: Received =
        {
            Kind = ReceivedKind.Dropped
            Drop = DropReason.NotDropped
            Source = V4 Ipv4Address.Any
            Destination = V4 Ipv4Address.Any
            ToBroadcast = false
            ToMulticast = false
            Foreign = false
            Packet = Unchecked.defaultof<PayloadRef>
            Payload = Unchecked.defaultof<PayloadRef>
            Ports = Unchecked.defaultof<PortPair>
            Echo = Unchecked.defaultof<EchoView>
            Error =
                {
                    IcmpErrorView.Kind = IcmpErrorKind.Other
                    Type = 0uy
                    Code = 0uy
                    ReportedMtu = 0L
                    PathMtu = 0
                    Quoted =
                        {
                            QuotedPacket.Protocol = 0uy
                            Source = V4 Ipv4Address.Any
                            Destination = V4 Ipv4Address.Any
                            PortsKnown = false
                            Ports = Unchecked.defaultof<PortPair>
                            EchoKnown = false
                            Echo = Unchecked.defaultof<EchoView>
                            SequenceKnown = false
                            Sequence = 0u
                        }
                }
            Tcp = Unchecked.defaultof<Segment>
        }

    /// True for the limited broadcast or our prefix's broadcast (not for /31 and /32, whose
    /// addresses are all hosts, RFC 3021).
    let isBroadcast4 (state: IpLayerState) (address: Ipv4Address) =
        let mask = state.Config.Mask4

        address.Value = UInt32.MaxValue
        || (mask <> 0u
            && mask < 0xFFFF_FFFEu
            && (match state.Config.Address4 with
                | ValueSome ours -> address.Value = (ours.Value ||| ~~~mask)
                | ValueNone -> false))

    /// True for a group the layer takes: all-systems 224.0.0.1 or a joined one.
    let isJoined4 (state: IpLayerState) (address: Ipv4Address) =
        address.Value = 0xE000_0001u || Array.contains address state.Groups4

    /// True for a group the layer takes: all-nodes ff02::1 or a joined one.
    let isJoined6 (state: IpLayerState) (address: Ipv6Address) =
        (address.High = 0xFF02_0000_0000_0000UL && address.Low = 1UL)
        || Array.contains address state.Groups6

    /// The Ports view.
    let ports (source: uint16) (destination: uint16) : PortPair =
        {
            PortPair.Source = source
            Destination = destination
        }

    /// The Echo view.
    let echo (identifier: uint16) (sequence: uint16) : EchoView =
        {
            EchoView.Identifier = identifier
            Sequence = sequence
        }

    /// The state unchanged and a Dropped result saying why.
    let dropped (state: IpLayerState) (reason: DropReason) =
        struct (state, { nothing with Drop = reason })

    /// Bytes at `offset` in `owner` (null: the received packet itself).
    let at (owner: byte[]) (offset: int) (length: int) : PayloadRef =
        {
            Array = owner
            Offset = offset
            Length = length
        }

    /// The body of `IpLayer.slice` (documented there).
    let slice (input: ReadOnlySpan<byte>) (reference: PayloadRef) : ReadOnlySpan<byte> =
        if isNull reference.Array then
            input.Slice(reference.Offset, reference.Length)
        else
            ReadOnlySpan<byte>(reference.Array, reference.Offset, reference.Length)

    /// A TCP segment whose header parsed (checksum included) as `parsed`: its options are parsed
    /// too, since the engine needs the MSS of a SYN; a bad option drops the whole segment (RFC
    /// 9293 §3.1 lets a receiver treat an illegal option length as an error). Port 0 is refused
    /// in either direction. `offset` is where the segment starts in the packet.
    let tcpSegment
        (state: IpLayerState)
        (basic: Received)
        (parsed: Result<TcpHeader, ParseError>)
        (segment: ReadOnlySpan<byte>)
        (owner: byte[])
        (offset: int)
        =
        match parsed with
        | Error e -> dropped state (DropReason.Malformed(PacketLayer.Tcp, e))
        | Ok t when t.DestinationPort = 0us || t.SourcePort = 0us -> dropped state DropReason.TcpPortZero
        | Ok t ->
            match Tcp.parseOptions (segment.Slice(t.OptionsOffset, t.OptionsLength)) with
            | Error e -> dropped state (DropReason.Malformed(PacketLayer.Tcp, e))
            | Ok options ->
                struct (state,
                        { basic with
                            Kind = ReceivedKind.TcpSegment
                            Payload = at owner (offset + t.PayloadOffset) t.PayloadLength
                            Ports = ports t.SourcePort t.DestinationPort
                            Tcp = Segment.OfHeader(t, options)
                        })

    /// A UDP datagram (already parsed, checksum verified) for delivery to a socket.
    let udpDatagram
        (state: IpLayerState)
        (basic: Received)
        (owner: byte[])
        (offset: int)
        (parsed: Result<UdpHeader, ParseError>)
        =
        match parsed with
        | Error e -> dropped state (DropReason.Malformed(PacketLayer.Udp, e))
        | Ok u when u.DestinationPort = 0us -> dropped state DropReason.UdpPortZero
        | Ok u ->
            struct (state,
                    { basic with
                        Kind = ReceivedKind.UdpDatagram
                        Payload = at owner (offset + u.PayloadOffset) u.PayloadLength
                        Ports = ports u.SourcePort u.DestinationPort
                    })
