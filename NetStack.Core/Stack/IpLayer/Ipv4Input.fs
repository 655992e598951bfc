namespace NetStack.Core.Stack

open System
open System.Buffers.Binary
open NetStack.Core.Wire
open NetStack.Core.Ip
open NetStack.Core.Tcp
// After NetStack.Core.Ip: DropReason is this namespace's (Received.fs), not reassembly's.
open NetStack.Core.Stack

/// Receiving IPv4 (RFC 791, RFC 1122 §3.2.1): whose packet it is, whose source we refuse,
/// fragments to reassembly, then the transport.
[<RequireQualifiedAccess>]
module internal Ipv4Input =

    open IpInput
    open IcmpInput

    /// The transport layer of an IPv4 datagram that is whole (never a fragment).
    let private upperV4
        (now: int64)
        (state: IpLayerState)
        (packet: ReadOnlySpan<byte>)
        (owner: byte[])
        (h: Ipv4Header)
        (broadcast: bool)
        (multicast: bool)
        (ours: Ipv4Address)
        (foreign: bool)
        (trusted: bool)
        =
        let basic =
            { nothing with
                Source = V4 h.Source
                Destination = V4 h.Destination
                ToBroadcast = broadcast
                ToMulticast = multicast
                Foreign = foreign
                Packet = at owner 0 h.TotalLength
            }

        let payload = packet.Slice(h.PayloadOffset, h.PayloadLength)

        match h.Protocol with
        | IpProtocol.Icmp ->
            icmpMessage
                now
                state
                basic
                packet
                owner
                h.PayloadOffset
                (Icmpv4.parse payload)
                false
                (broadcast || multicast)
                (V4 ours)
        | Igmp.Protocol ->
            struct (state,
                    { basic with
                        Kind = ReceivedKind.GroupMessage
                        Payload = at owner h.PayloadOffset h.PayloadLength
                    })
        | IpProtocol.Udp ->
            let parsed =
                if trusted then
                    Udp.parse payload
                else
                    Udp.parseV4 h.Source h.Destination payload

            udpDatagram state basic owner h.PayloadOffset parsed
        | IpProtocol.Tcp ->
            if broadcast || multicast then
                dropped state DropReason.TcpNotUnicast
            else
                let parsed =
                    if trusted then
                        Tcp.parse payload
                    else
                        Tcp.parseV4 h.Source h.Destination payload

                tcpSegment state basic parsed payload owner h.PayloadOffset
        | _ -> dropped state DropReason.UnknownProtocol

    /// RFC 791 §3.2: the reassembled datagram carries the first fragment's header; make it
    /// describe the whole datagram (total length, no MF, offset 0, checksum).
    let private patchReassembledV4 (d: ReassembledDatagram) =
        let packet = d.Packet
        BinaryPrimitives.WriteUInt16BigEndian(Span(packet, 2, 2), uint16 packet.Length)
        // Keep DF as the first fragment had it; clear MF and the offset.
        packet.[6] <- packet.[6] &&& 0x40uy
        packet.[7] <- 0uy
        packet.[10] <- 0uy
        packet.[11] <- 0uy
        let sum = Checksum.compute (ReadOnlySpan(packet, 0, d.HeaderLength))
        BinaryPrimitives.WriteUInt16BigEndian(Span(packet, 10, 2), sum)

    let rec receive
        (now: int64)
        (state: IpLayerState)
        (packet: ReadOnlySpan<byte>)
        (owner: byte[])
        (trusted: bool)
        (looped: bool)
        =
        match Ipv4.parse packet with
        | Error e -> dropped state (DropReason.Malformed(PacketLayer.Ipv4, e))
        | Ok h ->
            match state.Config.Address4 with
            | ValueNone -> dropped state DropReason.NotForUs
            | ValueSome configured ->
                let broadcast = isBroadcast4 state h.Destination
                let multicast = AddressClass.isMulticast4 h.Destination

                // Any-destination mode takes every unicast destination as its own: answers
                // leave from the address the packet was sent to.
                let foreign =
                    h.Destination <> configured
                    && not broadcast
                    && state.Config.AnyDestination
                    && not (AddressClass.isMulticast4 h.Destination)
                    && not (AddressClass.isUnspecified4 h.Destination)
                    && not (AddressClass.isLoopback4 h.Destination)

                // 127/8 is ours only in a packet that never left the stack (RFC 1122
                // §3.2.1.3 (g): one from the wire is dropped as not for us).
                let ours =
                    if foreign || (looped && AddressClass.isLoopback4 h.Destination) then
                        h.Destination
                    else
                        configured

                if multicast && not (isJoined4 state h.Destination) then
                    dropped state DropReason.NotJoined
                elif h.Destination <> ours && not broadcast && not multicast then
                    dropped state DropReason.NotForUs
                elif
                    // A looped packet comes from ourselves (our address or 127/8) by design.
                    not looped
                    && (AddressClass.isMulticast4 h.Source
                        || AddressClass.isLimitedBroadcast4 h.Source
                        // RFC 4541 §2.1.1: a snooping switch's querier may send from 0.0.0.0.
                        || (AddressClass.isUnspecified4 h.Source && h.Protocol <> Igmp.Protocol)
                        || AddressClass.isLoopback4 h.Source
                        || h.Source = configured
                        || h.Source = h.Destination)
                then
                    dropped state DropReason.BadSource
                elif h.IsFragment then
                    let fragment: Fragment =
                        {
                            Key = ReassemblyKey.V4(h.Source, h.Destination, h.Protocol, h.Identification)
                            Offset = h.FragmentOffset
                            MoreFragments = h.MoreFragments
                            NextHeader = h.Protocol
                            Header = packet.Slice(0, h.HeaderLength)
                            Payload = packet.Slice(h.PayloadOffset, h.PayloadLength)
                        }

                    let reassembly, result = Reassembly.add now fragment state.Reassembly

                    let state =
                        { state with
                            Reassembly = reassembly
                            ReassemblyEvicted = state.ReassemblyEvicted + evicted result.Abandoned
                        }

                    match result.Outcome with
                    | FragmentOutcome.Completed d ->
                        patchReassembledV4 d
                        receive now state (ReadOnlySpan d.Packet) d.Packet false looped
                    | FragmentOutcome.Held ->
                        struct (state,
                                { nothing with
                                    Kind = ReceivedKind.FragmentHeld
                                })
                    | FragmentOutcome.DuplicateIgnored -> dropped state DropReason.DuplicateFragment
                    | FragmentOutcome.Dropped r -> dropped state (DropReason.Fragment r)
                    | FragmentOutcome.Atomic -> upperV4 now state packet owner h broadcast multicast ours foreign false
                else
                    upperV4 now state packet owner h broadcast multicast ours foreign trusted
