namespace NetStack.Core.Stack

open System
open System.Buffers.Binary
open NetStack.Core.Wire
open NetStack.Core.Ip
open NetStack.Core.Tcp
// After NetStack.Core.Ip: DropReason is this namespace's (Received.fs), not reassembly's.
open NetStack.Core.Stack

/// Receiving IPv6 (RFC 8200, RFC 4291): whose packet it is, whose source we refuse, extension
/// headers, fragments to reassembly (RFC 6946 atomic fragments whole), then the transport.
[<RequireQualifiedAccess>]
module internal Ipv6Input =

    open IpInput
    open IcmpInput

    /// The transport layer of an IPv6 packet that is whole: `ext` says where it starts.
    let private upperV6
        (now: int64)
        (state: IpLayerState)
        (packet: ReadOnlySpan<byte>)
        (owner: byte[])
        (h: Ipv6Header)
        (ext: Ipv6Extensions)
        (ours: Ipv6Address)
        (foreign: bool)
        (trusted: bool)
        =
        let basic =
            { nothing with
                Source = V6 h.Source
                Destination = V6 h.Destination
                ToMulticast = h.Destination.IsMulticast
                Foreign = foreign
                Packet = at owner 0 (Ipv6.HeaderLength + h.PayloadLength)
            }

        let payload = packet.Slice(ext.UpperOffset, ext.UpperLength)

        match ext.UpperProtocol with
        | IpProtocol.Icmpv6 when not payload.IsEmpty && Mld.isMld payload.[0] ->
            // RFC 3810 §5.1.14, §5.2.13: hop limit 1; queries only from link-local sources.
            if h.HopLimit <> 1uy then
                dropped state DropReason.MldHopLimit
            elif payload.[0] = Mld.Query && (h.Source.High >>> 54) <> 0x3FAUL then
                dropped state DropReason.MldNotLinkLocal
            else
                struct (state,
                        { basic with
                            Kind = ReceivedKind.GroupMessage
                            Payload = at owner ext.UpperOffset ext.UpperLength
                        })
        | IpProtocol.Icmpv6 ->
            icmpMessage
                now
                state
                basic
                packet
                owner
                ext.UpperOffset
                (Icmpv6.parse h.Source h.Destination payload)
                true
                h.Destination.IsMulticast
                (V6 ours)
        | IpProtocol.Udp ->
            let parsed =
                if trusted then
                    Udp.parse payload
                else
                    Udp.parseV6 h.Source h.Destination payload

            udpDatagram state basic owner ext.UpperOffset parsed
        | IpProtocol.Tcp when h.Destination.IsMulticast -> dropped state DropReason.TcpNotUnicast
        | IpProtocol.Tcp ->
            let parsed =
                if trusted then
                    Tcp.parse payload
                else
                    Tcp.parseV6 h.Source h.Destination payload

            tcpSegment state basic parsed payload owner ext.UpperOffset
        | IpProtocol.Ipv6NoNextHeader -> dropped state DropReason.NoNextHeader
        | _ -> dropped state DropReason.UnknownProtocol

    /// RFC 8200 §4.5 reassembly: the unfragmentable part gets the new Payload Length, and the
    /// Next Header that named the Fragment header names the first fragmentable header instead.
    let private patchReassembledV6 (d: ReassembledDatagram) =
        let packet = d.Packet
        BinaryPrimitives.WriteUInt16BigEndian(Span(packet, 4, 2), uint16 (packet.Length - Ipv6.HeaderLength))
        // The unfragmentable part was walked when its fragment arrived; walk it again to find
        // the last Next Header field in it.
        let mutable naming = 6
        let mutable position = Ipv6.HeaderLength

        while position + 1 < d.HeaderLength do
            naming <- position
            position <- position + (int packet.[position + 1] + 1) * 8

        packet.[naming] <- d.NextHeader

    let rec receive
        (now: int64)
        (state: IpLayerState)
        (packet: ReadOnlySpan<byte>)
        (owner: byte[])
        (reassembled: bool)
        (trusted: bool)
        (looped: bool)
        =
        match Ipv6.parse packet with
        | Error e -> dropped state (DropReason.Malformed(PacketLayer.Ipv6, e))
        | Ok h ->
            let configured = state.Config.Address6

            if configured.IsNone && state.Extra6.Length = 0 then
                dropped state DropReason.NotForUs
            else
                // The configured address first, so the common case costs one comparison.
                // ::1 is ours only in a packet that never left the stack (RFC 4291 §2.5.3).
                let isOurs =
                    (configured.IsSome && h.Destination = configured.Value)
                    || Array.contains h.Destination state.Extra6
                    || (looped && AddressClass.isLoopback6 h.Destination)

                let multicast = h.Destination.IsMulticast

                // Any-destination mode takes every unicast destination as its own (marked
                // Foreign by upperV6).
                let foreign =
                    not isOurs
                    && state.Config.AnyDestination
                    && not h.Destination.IsMulticast
                    && not (AddressClass.isUnspecified6 h.Destination)
                    && not (AddressClass.isLoopback6 h.Destination)

                if multicast && not (isJoined6 state h.Destination) then
                    dropped state DropReason.NotJoined
                elif not isOurs && not foreign && not multicast then
                    dropped state DropReason.NotForUs
                elif
                    // A looped packet comes from ourselves (our address or ::1) by design.
                    not looped
                    && (h.Source.IsMulticast
                        || AddressClass.isUnspecified6 h.Source
                        || AddressClass.isLoopback6 h.Source
                        || (configured.IsSome && h.Source = configured.Value)
                        || h.Source = h.Destination
                        || Array.contains h.Source state.Extra6)
                then
                    dropped state DropReason.BadSource
                else
                    // The local address of a group's datagram (ICMP answers, errors): the
                    // configured one, else any of ours.
                    let ours =
                        if not multicast then h.Destination
                        elif configured.IsSome then configured.Value
                        elif state.Extra6.Length > 0 then state.Extra6.[0]
                        else h.Destination

                    match Ipv6.parseExtensions packet h with
                    | Error e -> dropped state (DropReason.Malformed(PacketLayer.Ipv6, e))
                    | Ok ext ->
                        match ext.Fragment with
                        | ValueNone -> upperV6 now state packet owner h ext ours foreign trusted
                        | ValueSome _ when reassembled -> dropped state DropReason.NestedFragment
                        | ValueSome f when f.Offset = 0 && not f.MoreFragments ->
                            // RFC 6946: an atomic fragment is processed as a whole packet.
                            upperV6 now state packet owner h ext ours foreign trusted
                        | ValueSome f ->
                            let fragment: Fragment =
                                {
                                    Key = ReassemblyKey.V6(h.Source, h.Destination, f.Identification)
                                    Offset = f.Offset
                                    MoreFragments = f.MoreFragments
                                    NextHeader = f.NextHeader
                                    Header = packet.Slice(0, ext.UnfragmentableLength)
                                    Payload = packet.Slice(ext.UpperOffset, ext.UpperLength)
                                }

                            let reassembly, result = Reassembly.add now fragment state.Reassembly

                            let state =
                                { state with
                                    Reassembly = reassembly
                                    ReassemblyEvicted = state.ReassemblyEvicted + evicted result.Abandoned
                                }

                            match result.Outcome with
                            | FragmentOutcome.Completed d ->
                                patchReassembledV6 d
                                receive now state (ReadOnlySpan d.Packet) d.Packet true false looped
                            | FragmentOutcome.Held ->
                                struct (state,
                                        { nothing with
                                            Kind = ReceivedKind.FragmentHeld
                                        })
                            | FragmentOutcome.DuplicateIgnored -> dropped state DropReason.DuplicateFragment
                            | FragmentOutcome.Dropped r -> dropped state (DropReason.Fragment r)
                            | FragmentOutcome.Atomic -> upperV6 now state packet owner h ext ours foreign false
