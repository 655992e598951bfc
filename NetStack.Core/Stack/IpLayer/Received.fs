namespace NetStack.Core.Stack

open NetStack.Core.Wire
open NetStack.Core.Ip
open NetStack.Core.Tcp

/// The layer at which a packet failed to parse, for drop accounting.
type PacketLayer =
    /// Before the family is known: the version nibble.
    | Ip = 0
    /// The IPv4 header (RFC 791).
    | Ipv4 = 1
    /// The IPv6 header or its extension headers (RFC 8200).
    | Ipv6 = 2
    /// An ICMPv4 message (RFC 792).
    | Icmpv4 = 3
    /// An ICMPv6 message (RFC 4443).
    | Icmpv6 = 4
    /// A UDP datagram (RFC 768).
    | Udp = 5
    /// A TCP segment (RFC 9293): header, options or checksum.
    | Tcp = 6

/// Why a received packet went no further. Every packet the IP layer does not turn into
/// something to act on carries one of these, so the engine can count drops by reason.
[<Struct; RequireQualifiedAccess>]
type DropReason =
    /// Not a drop (the default value of the type).
    | NotDropped
    /// A header did not parse at `layer` (checksums included: ParseError.BadChecksum).
    | Malformed of layer: PacketLayer * error: ParseError
    /// The destination is not one of our addresses (or the family has no address here).
    | NotForUs
    /// The source is multicast, broadcast, unspecified, loopback or our own address: no other
    /// host on the link sends from those (RFC 1122 §3.2.1.3, RFC 4291 §2.7); answering could
    /// loop packets back to ourselves.
    | BadSource
    /// Reassembly dropped the fragment (see NetStack.Core.Ip.DropReason).
    | Fragment of fragmentDrop: NetStack.Core.Ip.DropReason
    /// An exact copy of a fragment already held.
    | DuplicateFragment
    /// A reassembled IPv6 packet carries another Fragment header.
    | NestedFragment
    /// A transport protocol this layer does not serve.
    | UnknownProtocol
    /// IPv6 No Next Header (RFC 8200 §4.7): nothing to deliver.
    | NoNextHeader
    /// An ICMP type that needs no action here (neighbour discovery, redirects, ...).
    | UnhandledIcmp
    /// An echo request to a broadcast address (RFC 1122 §3.2.2.6 lets hosts ignore it, and
    /// answering is a smurf amplifier).
    | BroadcastEcho
    /// An ICMP error whose quoted packet is too short to say what it concerns, or was not sent
    /// from our address (RFC 5927 §4.1: only errors about our own packets are believed).
    | UnrelatedIcmpError
    /// UDP to port 0, which no socket can be bound to.
    | UdpPortZero
    /// TCP from or to port 0: no connection can use it (RFC 9293 §3.1 leaves it unassigned).
    | TcpPortZero
    /// TCP to the IPv4 limited broadcast: TCP is unicast only (RFC 1122 §4.2.3.10).
    | TcpNotUnicast
    /// To a multicast group no socket joined (RFC 1112 §7.2: a host takes only its groups').
    | NotJoined
    /// An MLD message with a hop limit other than 1 (RFC 3810 §5.1.14, §5.2.13 say drop it).
    | MldHopLimit
    /// An MLD query from a source that is not link-local (RFC 3810 §5.1.14).
    | MldNotLinkLocal

/// Counter names for drop reasons: "drop.LAYER.ERROR" for parse errors, "drop.REASON" else.
[<RequireQualifiedAccess>]
module DropReason =

    let private layerNames =
        [| "ip"; "ipv4"; "ipv6"; "icmpv4"; "icmpv6"; "udp"; "tcp" |]

    let private errorNames =
        [|
            "truncated"
            "bad-version"
            "bad-header-length"
            "length-beyond-buffer"
            "length-below-header"
            "bad-checksum"
            "bad-option-length"
            "bad-option-size"
            "extension-chain-too-long"
            "misplaced-extension-header"
            "bad-field"
        |]

    let private errorIndex (error: ParseError) =
        match error with
        | Truncated _ -> 0
        | BadVersion _ -> 1
        | BadHeaderLength _ -> 2
        | LengthBeyondBuffer _ -> 3
        | LengthBelowHeader _ -> 4
        | BadChecksum -> 5
        | BadOptionLength _ -> 6
        | BadOptionSize _ -> 7
        | ExtensionChainTooLong _ -> 8
        | MisplacedExtensionHeader _ -> 9
        | BadField _ -> 10

    // Built once, so naming a drop on the receive path allocates nothing.
    let private malformedNames =
        Array.init (layerNames.Length * errorNames.Length) (fun i ->
            $"drop.{layerNames.[i / errorNames.Length]}.{errorNames.[i % errorNames.Length]}")

    /// The counter name of a drop reason, e.g. "drop.ipv4.bad-checksum" or "drop.not-for-us".
    let name (reason: DropReason) : string =
        match reason with
        | DropReason.NotDropped -> "drop.none"
        | DropReason.Malformed(layer, error) ->
            let l = int layer

            if l < 0 || l >= layerNames.Length then
                "drop.malformed"
            else
                malformedNames.[l * errorNames.Length + errorIndex error]
        | DropReason.NotForUs -> "drop.not-for-us"
        | DropReason.BadSource -> "drop.bad-source"
        | DropReason.Fragment r ->
            match r with
            | NetStack.Core.Ip.DropReason.Overlap -> "drop.fragment.overlap"
            | NetStack.Core.Ip.DropReason.TooLarge -> "drop.fragment.too-large"
            | NetStack.Core.Ip.DropReason.BadLength -> "drop.fragment.bad-length"
            | NetStack.Core.Ip.DropReason.BadOffset -> "drop.fragment.bad-offset"
            | NetStack.Core.Ip.DropReason.Inconsistent -> "drop.fragment.inconsistent"
            | NetStack.Core.Ip.DropReason.TooManyFragments -> "drop.fragment.too-many"
            | NetStack.Core.Ip.DropReason.MemoryLimit -> "drop.fragment.memory-limit"
            | NetStack.Core.Ip.DropReason.KeyPoisoned -> "drop.fragment.poisoned"
        | DropReason.DuplicateFragment -> "drop.fragment.duplicate"
        | DropReason.NestedFragment -> "drop.fragment.nested"
        | DropReason.UnknownProtocol -> "drop.unknown-protocol"
        | DropReason.NoNextHeader -> "drop.no-next-header"
        | DropReason.UnhandledIcmp -> "drop.icmp.unhandled-type"
        | DropReason.BroadcastEcho -> "drop.icmp.broadcast-echo"
        | DropReason.UnrelatedIcmpError -> "drop.icmp.unrelated-error"
        | DropReason.UdpPortZero -> "drop.udp.port-zero"
        | DropReason.TcpPortZero -> "drop.tcp.port-zero"
        | DropReason.TcpNotUnicast -> "drop.tcp.not-unicast"
        | DropReason.NotJoined -> "drop.multicast.not-joined"
        | DropReason.MldHopLimit -> "drop.mld.hop-limit"
        | DropReason.MldNotLinkLocal -> "drop.mld.not-link-local"

/// What a received packet turned out to be.
type ReceivedKind =
    /// Dropped; `Received.Drop` says why.
    | Dropped = 0
    /// A fragment held until the rest of its datagram arrives.
    | FragmentHeld = 1
    /// An echo request to answer (`writeEchoReply` with `Received.Echo` and the data in Payload).
    | EchoRequest = 2
    /// An echo reply, for our pinger: `Received.Echo` says which.
    | EchoReply = 3
    /// A UDP datagram to deliver to the socket bound to `Received.Ports.Destination`.
    | UdpDatagram = 4
    /// An ICMP error about a packet we sent: `Received.Error` says what and about which packet.
    | IcmpError = 5
    /// A TCP segment with a valid checksum and options: `Received.Tcp` holds its fields,
    /// `Received.Ports` its ports.
    | TcpSegment = 6
    /// An IGMP message (IPv4) or an MLD message (ICMPv6 130, 131, 132, 143) in Payload, for the
    /// group membership (`Igmp.parse` / `Mld.parse`, then `Multicast.receive`).
    | GroupMessage = 7

/// What an ICMP error says, the same for ICMPv4 and ICMPv6.
type IcmpErrorKind =
    /// A type or code with no more specific meaning here.
    | Other = 0
    /// Network, host or address unreachable, or another unreachable code.
    | DestinationUnreachable = 1
    /// Port unreachable: nobody listens on the quoted destination port.
    | PortUnreachable = 2
    /// Protocol unreachable (ICMPv4 only).
    | ProtocolUnreachable = 3
    /// Administratively prohibited.
    | AdministrativelyProhibited = 4
    /// ICMPv4 fragmentation needed or ICMPv6 packet too big: `IcmpErrorView.ReportedMtu` says
    /// the next-hop MTU, `IcmpErrorView.PathMtu` what to believe.
    | PacketTooBig = 5
    /// TTL / hop limit or reassembly time exceeded.
    | TimeExceeded = 6
    /// Parameter problem.
    | ParameterProblem = 7

/// A run of bytes either in the packet given to `IpLayer.receive` (Array = null) or in an array
/// the IP layer made (a reassembled datagram).
[<Struct>]
type PayloadRef =
    {
        /// The reassembled datagram holding the bytes, or null for the received packet itself.
        Array: byte[]
        /// Where the bytes start.
        Offset: int
        /// How many bytes.
        Length: int
    }

/// The source and destination ports of a UDP datagram or TCP segment.
[<Struct>]
type PortPair =
    {
        /// The sender's port.
        Source: uint16
        /// The receiver's port.
        Destination: uint16
    }

/// What tells ICMP echoes apart (RFC 792, RFC 4443 §4.1): the identifier (one per pinger) and
/// the sequence number (one per request).
[<Struct>]
type EchoView =
    {
        /// The echo identifier.
        Identifier: uint16
        /// The echo sequence number.
        Sequence: uint16
    }

/// The start of one of our packets as an ICMP error quotes it. RFC 792 guarantees the IP header
/// plus 8 bytes; RFC 4443 as much as fits. Only a quoted first fragment shows the transport
/// header.
[<Struct>]
type QuotedPacket =
    {
        /// The quoted packet's protocol (UDP, TCP, ICMP, ...; after an IPv6 Fragment header).
        Protocol: byte
        /// The quoted packet's source (one of our addresses).
        Source: IpAddr
        /// The quoted packet's destination.
        Destination: IpAddr
        /// True when the quote reaches the ports of a packet that is not ICMP (UDP, TCP).
        PortsKnown: bool
        /// The quoted ports, when `PortsKnown`.
        Ports: PortPair
        /// True when the quote is an ICMP echo request long enough to show its identifier and
        /// sequence number.
        EchoKnown: bool
        /// The quoted echo request's identifier and sequence, when `EchoKnown`.
        Echo: EchoView
        /// True when the quote is TCP and reaches the sequence number (any first-fragment quote
        /// of 8 transport bytes, which RFC 792 guarantees, does).
        SequenceKnown: bool
        /// The quoted segment's sequence number (bytes 4-7 of its header), when `SequenceKnown`.
        Sequence: uint32
    }

/// An ICMP error about one of our packets: what it says and the packet it quotes.
[<Struct>]
type IcmpErrorView =
    {
        /// What it says.
        Kind: IcmpErrorKind
        /// The raw ICMP type.
        Type: byte
        /// The raw ICMP code.
        Code: byte
        /// For PacketTooBig: the next-hop MTU the message reports (0 from old IPv4 routers).
        ReportedMtu: int64
        /// For PacketTooBig: the path MTU to believe (`PathMtu.effective`: the report clamped to
        /// the family's minimum and the link MTU, RFC 1191 §5's plateau for a zero report); 0
        /// for other kinds.
        PathMtu: int
        /// The packet of ours it is about.
        Quoted: QuotedPacket
    }

/// The typed result of receiving one packet: the common part, then one view per kind. A view
/// that does not belong to the Kind holds default values; read only the one the Kind names.
[<Struct>]
type Received =
    {
        /// What the packet is.
        Kind: ReceivedKind
        /// For Dropped: why.
        Drop: DropReason
        /// The IP source.
        Source: IpAddr
        /// The IP destination (one of ours, or the IPv4 limited broadcast; any unicast address in
        /// any-destination mode).
        Destination: IpAddr
        /// True when the destination was the IPv4 limited broadcast or our subnet's broadcast.
        ToBroadcast: bool
        /// True when the destination was a multicast group we joined (or all-systems / all-nodes).
        ToMulticast: bool
        /// True when the destination is not one of our addresses: accepted only because the layer
        /// is in any-destination mode (`IpLayerConfig.AnyDestination`), for a forwarder.
        Foreign: bool
        /// The whole IP packet (reassembled when it came in fragments, headers patched).
        Packet: PayloadRef
        /// UDP or TCP payload, echo data, or for an ICMP error the quoted packet.
        Payload: PayloadRef
        /// For UdpDatagram and TcpSegment: the ports.
        Ports: PortPair
        /// For EchoRequest and EchoReply: identifier and sequence number.
        Echo: EchoView
        /// For IcmpError: what it says and what it quotes.
        Error: IcmpErrorView
        /// For TcpSegment: the header fields and options as the TCP engine takes them.
        Tcp: Segment
    }

    /// For Dropped: the counter that names why (`DropReason.name`).
    member this.DropCounter = DropReason.name this.Drop
