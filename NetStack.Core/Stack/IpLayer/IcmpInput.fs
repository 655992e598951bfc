namespace NetStack.Core.Stack

open System
open System.Buffers.Binary
open NetStack.Core.Wire
open NetStack.Core.Ip
open NetStack.Core.Tcp
// After NetStack.Core.Ip: DropReason is this namespace's (Received.fs), not reassembly's.
open NetStack.Core.Stack

/// ICMP messages we receive (RFC 792, RFC 4443): echoes for the responder and the pinger, errors
/// about our packets with what they quote (RFC 1122 §3.2.2, RFC 5927 §4.1) and the path MTU a
/// "too big" teaches (RFC 1191, RFC 8201).
module internal IcmpInput =

    open IpInput

    /// Reads what an ICMP error quotes: the original packet's protocol, addresses and, when the
    /// quote reaches them and it is the first fragment, its ports (UDP/TCP) or echo identifier and
    /// sequence (ICMP echo request). RFC 792 guarantees the IP header plus 8 bytes; RFC 4443 as
    /// much as fits. Returns ValueNone when the quote is too short to identify anything.
    let private readQuote (quote: ReadOnlySpan<byte>) : QuotedPacket voption =
        let mutable valid = false
        let mutable protocol = 0uy
        let mutable source = V4 Ipv4Address.Any
        let mutable destination = V4 Ipv4Address.Any
        let mutable transportOffset = 0
        let mutable firstFragment = true
        let mutable echoType = 0uy

        if quote.Length >= 20 && quote.[0] >>> 4 = 4uy then
            let headerLength = int (quote.[0] &&& 0x0Fuy) * 4

            if headerLength >= 20 && quote.Length >= headerLength then
                valid <- true
                protocol <- quote.[9]
                source <- V4(Ipv4Address.Read(quote.Slice 12))
                destination <- V4(Ipv4Address.Read(quote.Slice 16))
                firstFragment <- BinaryPrimitives.ReadUInt16BigEndian(quote.Slice 6) &&& 0x1FFFus = 0us
                transportOffset <- headerLength

                if protocol = IpProtocol.Icmp then
                    echoType <- Icmpv4.MessageType.EchoRequest
        elif quote.Length >= Ipv6.HeaderLength && quote.[0] >>> 4 = 6uy then
            valid <- true
            protocol <- quote.[6]
            source <- V6(Ipv6Address.Read(quote.Slice 8))
            destination <- V6(Ipv6Address.Read(quote.Slice 24))
            transportOffset <- Ipv6.HeaderLength

            // We send no extension headers but a Fragment header; step over that one only.
            if
                protocol = IpProtocol.Ipv6Fragment
                && quote.Length >= transportOffset + Ipv6.FragmentHeaderLength
            then
                firstFragment <- BinaryPrimitives.ReadUInt16BigEndian(quote.Slice(transportOffset + 2)) >>> 3 = 0us
                protocol <- quote.[transportOffset]
                transportOffset <- transportOffset + Ipv6.FragmentHeaderLength

            if protocol = IpProtocol.Icmpv6 then
                echoType <- Icmpv6.MessageType.EchoRequest

        if not valid then
            ValueNone
        else
            let transport = quote.Slice transportOffset
            let isIcmp = echoType <> 0uy

            // Ports sit in the first 4 bytes of UDP and TCP; an echo's identifier and sequence
            // in bytes 4..7 of the ICMP header. Only the first fragment has them.
            let portsKnown = firstFragment && not isIcmp && transport.Length >= 4

            let echoKnown =
                firstFragment && isIcmp && transport.Length >= 8 && transport.[0] = echoType

            let sequenceKnown =
                firstFragment && protocol = IpProtocol.Tcp && transport.Length >= 8

            ValueSome
                {
                    QuotedPacket.Protocol = protocol
                    Source = source
                    Destination = destination
                    PortsKnown = portsKnown
                    Ports =
                        (if portsKnown then
                             ports
                                 (BinaryPrimitives.ReadUInt16BigEndian transport)
                                 (BinaryPrimitives.ReadUInt16BigEndian(transport.Slice 2))
                         else
                             Unchecked.defaultof<PortPair>)
                    EchoKnown = echoKnown
                    Echo =
                        (if echoKnown then
                             echo
                                 (BinaryPrimitives.ReadUInt16BigEndian(transport.Slice 4))
                                 (BinaryPrimitives.ReadUInt16BigEndian(transport.Slice 6))
                         else
                             Unchecked.defaultof<EchoView>)
                    SequenceKnown = sequenceKnown
                    Sequence =
                        (if sequenceKnown then
                             BinaryPrimitives.ReadUInt32BigEndian(transport.Slice 4)
                         else
                             0u)
                }

    /// The length of the quoted original as its own header states it (for the RFC 1191 plateau guess).
    let private quotedLength (quote: ReadOnlySpan<byte>) =
        if quote.Length >= 4 && quote.[0] >>> 4 = 4uy then
            int (BinaryPrimitives.ReadUInt16BigEndian(quote.Slice 2))
        elif quote.Length >= 6 then
            Ipv6.HeaderLength + int (BinaryPrimitives.ReadUInt16BigEndian(quote.Slice 4))
        else
            0

    /// An ICMP error (already parsed as `message` at `icmpOffset` in the packet) about one of our
    /// packets: read the quote, check it names our address, learn a path MTU from a too-big.
    let private icmpError
        (now: int64)
        (state: IpLayerState)
        (basic: Received)
        (packet: ReadOnlySpan<byte>)
        (owner: byte[])
        (icmpOffset: int)
        (message: IcmpMessage)
        (kind: IcmpErrorKind)
        (ours: IpAddr)
        =
        let quoteOffset = icmpOffset + message.DataOffset
        let quote = packet.Slice(quoteOffset, message.DataLength)

        match readQuote quote with
        | ValueSome quoted when quoted.Source = ours ->
            let reported = int64 message.Mtu

            let error =
                {
                    IcmpErrorView.Kind = kind
                    Type = message.Type
                    Code = message.Code
                    ReportedMtu = reported
                    PathMtu =
                        (if kind = IcmpErrorKind.PacketTooBig then
                             PathMtu.effective
                                 quoted.Destination.IsIpv6
                                 reported
                                 (quotedLength quote)
                                 state.PathMtu.LinkMtu
                         else
                             0)
                    Quoted = quoted
                }

            let r =
                { basic with
                    Kind = ReceivedKind.IcmpError
                    Payload = at owner quoteOffset message.DataLength
                    Error = error
                }

            // A "too big" about TCP is believed only once the connection it quotes has checked
            // its sequence number (RFC 5927 §4.1, as Linux updates the route's MTU from
            // tcp_v4_mtu_reduced): the caller reports it with `learnPathMtu` then.
            if kind = IcmpErrorKind.PacketTooBig && quoted.Protocol <> IpProtocol.Tcp then
                let cache =
                    PathMtu.report now quoted.Destination reported (quotedLength quote) state.PathMtu

                struct ({ state with PathMtu = cache }, r)
            else
                struct (state, r)
        | _ -> dropped state DropReason.UnrelatedIcmpError

    /// ICMPv4 error kind from type and code (RFC 792, RFC 1812 §5.2.7.1).
    let private kindV4 (message: IcmpMessage) =
        match message.Type with
        | Icmpv4.MessageType.DestinationUnreachable ->
            match message.Code with
            | Icmpv4.UnreachableCode.Port -> IcmpErrorKind.PortUnreachable
            | Icmpv4.UnreachableCode.Protocol -> IcmpErrorKind.ProtocolUnreachable
            | Icmpv4.UnreachableCode.FragmentationNeeded -> IcmpErrorKind.PacketTooBig
            // 9, 10: network/host administratively prohibited (RFC 1122); 13: RFC 1812.
            | 9uy
            | 10uy
            | Icmpv4.UnreachableCode.AdministrativelyProhibited -> IcmpErrorKind.AdministrativelyProhibited
            | _ -> IcmpErrorKind.DestinationUnreachable
        | Icmpv4.MessageType.TimeExceeded -> IcmpErrorKind.TimeExceeded
        | Icmpv4.MessageType.ParameterProblem -> IcmpErrorKind.ParameterProblem
        | _ -> IcmpErrorKind.Other

    /// ICMPv6 error kind from type and code (RFC 4443 §3).
    let private kindV6 (message: IcmpMessage) =
        match message.Type with
        | Icmpv6.MessageType.DestinationUnreachable ->
            match message.Code with
            | Icmpv6.UnreachableCode.Port -> IcmpErrorKind.PortUnreachable
            | Icmpv6.UnreachableCode.AdministrativelyProhibited -> IcmpErrorKind.AdministrativelyProhibited
            | _ -> IcmpErrorKind.DestinationUnreachable
        | Icmpv6.MessageType.PacketTooBig -> IcmpErrorKind.PacketTooBig
        | Icmpv6.MessageType.TimeExceeded -> IcmpErrorKind.TimeExceeded
        | Icmpv6.MessageType.ParameterProblem -> IcmpErrorKind.ParameterProblem
        | _ -> IcmpErrorKind.Other

    /// An ICMPv4 or ICMPv6 message (already parsed, checksum verified): echoes go to the
    /// responder or the pinger, errors to the flow they quote (RFC 1122 §3.2.2, RFC 4443 §2.4).
    let icmpMessage
        (now: int64)
        (state: IpLayerState)
        (basic: Received)
        (packet: ReadOnlySpan<byte>)
        (owner: byte[])
        (offset: int)
        (parsed: Result<IcmpMessage, ParseError>)
        (ipv6: bool)
        (broadcast: bool)
        (ours: IpAddr)
        =
        match parsed with
        | Error e -> dropped state (DropReason.Malformed((if ipv6 then PacketLayer.Icmpv6 else PacketLayer.Icmpv4), e))
        | Ok m when m.Kind = IcmpMessageKind.EchoRequest || m.Kind = IcmpMessageKind.EchoReply ->
            if broadcast then
                dropped state DropReason.BroadcastEcho
            else
                struct (state,
                        { basic with
                            Kind =
                                (if m.Kind = IcmpMessageKind.EchoRequest then
                                     ReceivedKind.EchoRequest
                                 else
                                     ReceivedKind.EchoReply)
                            Payload = at owner (offset + m.DataOffset) m.DataLength
                            Echo = echo m.Identifier m.SequenceNumber
                        })
        | Ok m when m.IsError ->
            let kind = if ipv6 then kindV6 m else kindV4 m

            if kind <> IcmpErrorKind.Other then
                icmpError now state basic packet owner offset m kind ours
            else
                dropped state DropReason.UnhandledIcmp
        | Ok _ -> dropped state DropReason.UnhandledIcmp
