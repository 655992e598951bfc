namespace NetStack.Core.Stack

open System
open System.Buffers.Binary
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
        /// The IP destination (one of ours, or the IPv4 limited broadcast).
        Destination: IpAddr
        /// True when the destination was the IPv4 limited broadcast.
        ToBroadcast: bool
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

/// The configuration of the IP layer.
type IpLayerConfig =
    {
        /// Our IPv4 address, if we have one.
        Address4: Ipv4Address voption
        /// Our IPv6 address, if we have one.
        Address6: Ipv6Address voption
        /// The link MTU (68..65535; at least 1280 when Address6 is set).
        Mtu: int
        /// ICMP errors we may send per second (RFC 4443 §2.4(f), RFC 1812 §4.3.2.8).
        IcmpErrorsPerSecond: int
        /// The largest burst of ICMP errors.
        IcmpErrorBurst: int
        /// Reassembly limits.
        Reassembly: ReassemblyConfig
    }

/// The IP layer's state: an immutable value, replaced by every call that changes it.
type IpLayerState =
    {
        /// The configuration it was made with.
        Config: IpLayerConfig
        /// Datagrams being reassembled.
        Reassembly: ReassemblyState
        /// Path MTUs learned from ICMP.
        PathMtu: PathMtuCache
        /// Rate limit of the ICMP errors we send.
        ErrorBucket: TokenBucket
        /// Datagrams in progress the reassembly caps evicted so far (a drop the caller counts).
        ReassemblyEvicted: int64
        /// IPv6 addresses that are ours besides Config.Address6 (autoconfigured ones, RFC 4862):
        /// packets to them are accepted too. Never mutated; replaced by IpLayer.withAddresses6.
        Extra6: Ipv6Address[]
    }

/// An ICMP error this host may send about a received packet.
type OutgoingError =
    /// UDP to a port nobody listens on (RFC 1122 §4.1.3.1).
    | PortUnreachable = 0
    /// A datagram whose first fragment arrived was not completed in time (RFC 792, RFC 8200 §4.5).
    | ReassemblyTimeExceeded = 1

/// What became of an ICMP error we considered sending.
type ErrorVerdict =
    /// Written: send it.
    | Sent = 0
    /// The token bucket was empty.
    | RateLimited = 1
    /// Never an error about an ICMP error (RFC 1122 §3.2.2, RFC 4443 §2.4(e)).
    | AboutIcmpError = 2
    /// Never about a fragment other than the first (RFC 1122 §3.2.2).
    | NotFirstFragment = 3
    /// Never about a packet to a multicast or broadcast address.
    | NotUnicastDestination = 4
    /// Never about a packet from an unspecified, multicast or broadcast source.
    | NotUnicastSource = 5
    /// We have no address of that family to send from.
    | NoAddress = 6
    /// The packet to quote does not parse.
    | Malformed = 7

/// How one datagram is cut for a path MTU (see IpLayer.planFragments).
[<Struct>]
type FragmentPlan =
    {
        /// Packets to write: 1 when it fits.
        Count: int
        /// True for IPv6.
        IsIpv6: bool
        /// The IPv4 plan (IPv4 only).
        V4Plan: Ipv4FragmentPlan
        /// The parsed header of the IPv4 datagram (IPv4 only).
        V4Header: Ipv4Header
        /// The IPv6 plan (IPv6 only).
        V6Plan: Ipv6FragmentPlan
    }

/// The IP layer as pure functions: classify received packets, build packets to send, decide on
/// ICMP errors. Time (`now`, monotonic microseconds) is always an input.
[<RequireQualifiedAccess>]
module IpLayer =

    /// Hop limit / TTL of the packets we originate (RFC 1700's recommended 64, as Linux).
    [<Literal>]
    let DefaultTtl = 64uy

    /// The largest UDP payload over IPv4: 65535 less 20 bytes of IPv4 and 8 of UDP.
    [<Literal>]
    let MaxUdpPayloadV4 = 65507

    /// The largest UDP payload over IPv6: 65535 bytes of IPv6 payload less 8 of UDP.
    [<Literal>]
    let MaxUdpPayloadV6 = 65527

    /// A configuration with the usual limits: 100 ICMP errors per second, bursts of 10.
    let config (address4: Ipv4Address voption) (address6: Ipv6Address voption) (mtu: int) : IpLayerConfig =
        {
            Address4 = address4
            Address6 = address6
            Mtu = mtu
            IcmpErrorsPerSecond = 100
            IcmpErrorBurst = 10
            Reassembly = ReassemblyConfig.Default
        }

    /// A fresh state at `now`. Throws ArgumentException for an MTU outside 68..65535, below 1280
    /// with an IPv6 address, or a negative error rate.
    let create (config: IpLayerConfig) (now: int64) : IpLayerState =
        if config.Mtu < PathMtu.MinimumIpv4 || config.Mtu > 65535 then
            invalidArg (nameof config) $"MTU {config.Mtu} is outside 68..65535."

        if config.Address6.IsSome && config.Mtu < PathMtu.MinimumIpv6 then
            invalidArg (nameof config) $"MTU {config.Mtu} is below the IPv6 minimum of 1280."

        {
            Config = config
            Reassembly = Reassembly.empty config.Reassembly
            PathMtu = PathMtu.create config.Mtu
            ErrorBucket = TokenBucket.create config.IcmpErrorsPerSecond (max 1 config.IcmpErrorBurst) now
            ReassemblyEvicted = 0L
            Extra6 = [||]
        }

    /// The state with `addresses` as our IPv6 addresses besides Config.Address6 (the caller
    /// gives a fresh array it never changes).
    let withAddresses6 (addresses: Ipv6Address[]) (state: IpLayerState) : IpLayerState =
        { state with Extra6 = addresses }

    /// True when `address` is Config.Address6 or one of the extra IPv6 addresses.
    let isLocal6 (address: Ipv6Address) (state: IpLayerState) : bool =
        state.Config.Address6 = ValueSome address || Array.contains address state.Extra6

    // Datagrams a reassembly step evicted to keep within its caps.
    let private evicted (abandoned: Abandoned list) =
        abandoned
        |> List.sumBy (fun a -> if a.Reason = AbandonReason.Evicted then 1L else 0L)

    // ---------------------------------------------------------------------------------------
    // Receive
    // ---------------------------------------------------------------------------------------

    let private nothing: Received =
        {
            Kind = ReceivedKind.Dropped
            Drop = DropReason.NotDropped
            Source = V4 Ipv4Address.Any
            Destination = V4 Ipv4Address.Any
            ToBroadcast = false
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

    let private ports (source: uint16) (destination: uint16) : PortPair =
        {
            PortPair.Source = source
            Destination = destination
        }

    let private echo (identifier: uint16) (sequence: uint16) : EchoView =
        {
            EchoView.Identifier = identifier
            Sequence = sequence
        }

    let private dropped (state: IpLayerState) (reason: DropReason) =
        struct (state, { nothing with Drop = reason })

    let private at (owner: byte[]) (offset: int) (length: int) : PayloadRef =
        {
            Array = owner
            Offset = offset
            Length = length
        }

    /// The bytes a PayloadRef names: in `input` (the packet given to receive) or in its array.
    let slice (input: ReadOnlySpan<byte>) (reference: PayloadRef) : ReadOnlySpan<byte> =
        if isNull reference.Array then
            input.Slice(reference.Offset, reference.Length)
        else
            ReadOnlySpan<byte>(reference.Array, reference.Offset, reference.Length)

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

    /// A TCP segment whose header parsed (checksum included) as `parsed`: its options are parsed
    /// too, since the engine needs the MSS of a SYN; a bad option drops the whole segment (RFC
    /// 9293 §3.1 lets a receiver treat an illegal option length as an error). Port 0 is refused
    /// in either direction. `offset` is where the segment starts in the packet.
    let private tcpSegment
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

    /// An ICMPv4 or ICMPv6 message (already parsed, checksum verified): echoes go to the
    /// responder or the pinger, errors to the flow they quote (RFC 1122 §3.2.2, RFC 4443 §2.4).
    let private icmpMessage
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

    /// A UDP datagram (already parsed, checksum verified) for delivery to a socket.
    let private udpDatagram
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

    /// The transport layer of an IPv4 datagram that is whole (never a fragment).
    let private upperV4
        (now: int64)
        (state: IpLayerState)
        (packet: ReadOnlySpan<byte>)
        (owner: byte[])
        (h: Ipv4Header)
        (broadcast: bool)
        (ours: Ipv4Address)
        (trusted: bool)
        =
        let basic =
            { nothing with
                Source = V4 h.Source
                Destination = V4 h.Destination
                ToBroadcast = broadcast
                Packet = at owner 0 h.TotalLength
            }

        let payload = packet.Slice(h.PayloadOffset, h.PayloadLength)

        match h.Protocol with
        | IpProtocol.Icmp ->
            icmpMessage now state basic packet owner h.PayloadOffset (Icmpv4.parse payload) false broadcast (V4 ours)
        | IpProtocol.Udp ->
            let parsed =
                if trusted then
                    Udp.parse payload
                else
                    Udp.parseV4 h.Source h.Destination payload

            udpDatagram state basic owner h.PayloadOffset parsed
        | IpProtocol.Tcp ->
            if broadcast then
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

    let rec private receiveV4
        (now: int64)
        (state: IpLayerState)
        (packet: ReadOnlySpan<byte>)
        (owner: byte[])
        (trusted: bool)
        =
        match Ipv4.parse packet with
        | Error e -> dropped state (DropReason.Malformed(PacketLayer.Ipv4, e))
        | Ok h ->
            match state.Config.Address4 with
            | ValueNone -> dropped state DropReason.NotForUs
            | ValueSome ours ->
                let broadcast = AddressClass.isLimitedBroadcast4 h.Destination

                if h.Destination <> ours && not broadcast then
                    dropped state DropReason.NotForUs
                elif
                    AddressClass.isMulticast4 h.Source
                    || AddressClass.isLimitedBroadcast4 h.Source
                    || AddressClass.isUnspecified4 h.Source
                    || AddressClass.isLoopback4 h.Source
                    || h.Source = ours
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
                        receiveV4 now state (ReadOnlySpan d.Packet) d.Packet false
                    | FragmentOutcome.Held ->
                        struct (state,
                                { nothing with
                                    Kind = ReceivedKind.FragmentHeld
                                })
                    | FragmentOutcome.DuplicateIgnored -> dropped state DropReason.DuplicateFragment
                    | FragmentOutcome.Dropped r -> dropped state (DropReason.Fragment r)
                    | FragmentOutcome.Atomic -> upperV4 now state packet owner h broadcast ours false
                else
                    upperV4 now state packet owner h broadcast ours trusted

    /// The transport layer of an IPv6 packet that is whole: `ext` says where it starts.
    let private upperV6
        (now: int64)
        (state: IpLayerState)
        (packet: ReadOnlySpan<byte>)
        (owner: byte[])
        (h: Ipv6Header)
        (ext: Ipv6Extensions)
        (ours: Ipv6Address)
        (trusted: bool)
        =
        let basic =
            { nothing with
                Source = V6 h.Source
                Destination = V6 h.Destination
                Packet = at owner 0 (Ipv6.HeaderLength + h.PayloadLength)
            }

        let payload = packet.Slice(ext.UpperOffset, ext.UpperLength)

        match ext.UpperProtocol with
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
                false
                (V6 ours)
        | IpProtocol.Udp ->
            let parsed =
                if trusted then
                    Udp.parse payload
                else
                    Udp.parseV6 h.Source h.Destination payload

            udpDatagram state basic owner ext.UpperOffset parsed
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

    let rec private receiveV6
        (now: int64)
        (state: IpLayerState)
        (packet: ReadOnlySpan<byte>)
        (owner: byte[])
        (reassembled: bool)
        (trusted: bool)
        =
        match Ipv6.parse packet with
        | Error e -> dropped state (DropReason.Malformed(PacketLayer.Ipv6, e))
        | Ok h ->
            match state.Config.Address6 with
            | ValueNone -> dropped state DropReason.NotForUs
            | ValueSome configured ->
                // The configured address first, so the common case costs one comparison.
                let isOurs = h.Destination = configured || Array.contains h.Destination state.Extra6

                let ours = if isOurs then h.Destination else configured

                if not isOurs then
                    dropped state DropReason.NotForUs
                elif
                    h.Source.IsMulticast
                    || AddressClass.isUnspecified6 h.Source
                    || AddressClass.isLoopback6 h.Source
                    || h.Source = configured
                    || Array.contains h.Source state.Extra6
                then
                    dropped state DropReason.BadSource
                else
                    match Ipv6.parseExtensions packet h with
                    | Error e -> dropped state (DropReason.Malformed(PacketLayer.Ipv6, e))
                    | Ok ext ->
                        match ext.Fragment with
                        | ValueNone -> upperV6 now state packet owner h ext ours trusted
                        | ValueSome _ when reassembled -> dropped state DropReason.NestedFragment
                        | ValueSome f when f.Offset = 0 && not f.MoreFragments ->
                            // RFC 6946: an atomic fragment is processed as a whole packet.
                            upperV6 now state packet owner h ext ours trusted
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
                                receiveV6 now state (ReadOnlySpan d.Packet) d.Packet true false
                            | FragmentOutcome.Held ->
                                struct (state,
                                        { nothing with
                                            Kind = ReceivedKind.FragmentHeld
                                        })
                            | FragmentOutcome.DuplicateIgnored -> dropped state DropReason.DuplicateFragment
                            | FragmentOutcome.Dropped r -> dropped state (DropReason.Fragment r)
                            | FragmentOutcome.Atomic -> upperV6 now state packet owner h ext ours false

    /// `receive` (below) for a packet whose TCP or UDP checksum the device vouches for (`trusted`): a
    /// TUN device with offloads marks packets DATA_VALID (the kernel verified the checksum) or
    /// NEEDS_CSUM (a local sender left it partial: the field holds only the pseudo-header sum,
    /// and Linux itself treats such a packet as valid on receive). The transport checksum is
    /// then not verified; the IPv4 header checksum and ICMP checksums always are, and a datagram
    /// reassembled from fragments is always verified. The packet may be longer than the MTU (a
    /// TCP super-segment from the kernel's GSO); nothing here limits a whole packet to the MTU.
    let receiveChecked
        (now: int64)
        (packet: ReadOnlySpan<byte>)
        (trusted: bool)
        (state: IpLayerState)
        : struct (IpLayerState * Received) =
        if packet.IsEmpty then
            dropped state (DropReason.Malformed(PacketLayer.Ip, Truncated(1, 0)))
        else
            match packet.[0] >>> 4 with
            | 4uy -> receiveV4 now state packet null trusted
            | 6uy -> receiveV6 now state packet null false trusted
            | v -> dropped state (DropReason.Malformed(PacketLayer.Ip, BadVersion(int v)))

    /// Classifies one packet read from the device at `now`. Never throws on any input. Allocates
    /// nothing for a whole packet; fragments are copied by reassembly. Payload references point
    /// into `packet` (Array = null) or into the reassembled datagram. Reassembly timeouts found
    /// here are not reported: call `expire` before `receive` when `nextDeadline` has passed.
    let receive (now: int64) (packet: ReadOnlySpan<byte>) (state: IpLayerState) : struct (IpLayerState * Received) =
        receiveChecked now packet false state

    /// When `expire` should next be called, if anything is being reassembled.
    let nextDeadline (state: IpLayerState) : int64 voption =
        Reassembly.nextDeadline state.Reassembly

    /// Gives up the datagrams whose reassembly time ran out by `now`. Those whose first fragment
    /// arrived deserve an ICMP time exceeded (`writeFirstFragment` then `tryWriteError`).
    let expire (now: int64) (state: IpLayerState) : struct (IpLayerState * Abandoned list) =
        let reassembly, abandoned = Reassembly.expire now state.Reassembly
        let state = { state with Reassembly = reassembly }

        if state.PathMtu.Entries.IsEmpty then
            struct (state, abandoned)
        else
            struct ({ state with
                        PathMtu = PathMtu.prune now state.PathMtu
                    },
                    abandoned)

    /// The path MTU towards `destination` at `now`.
    let pathMtu (now: int64) (destination: IpAddr) (state: IpLayerState) : int =
        PathMtu.lookup now destination state.PathMtu

    /// Records a path MTU of `mtu` towards `destination` that a TCP connection accepted from a
    /// "fragmentation needed" / "packet too big" (see `TcpEvent.PathMtuLowered`): UDP, ICMP and
    /// new TCP connections to the destination use it. Only lowers (`PathMtu.report`).
    let learnPathMtu (now: int64) (destination: IpAddr) (mtu: int) (state: IpLayerState) : IpLayerState =
        let cache = PathMtu.report now destination (int64 mtu) mtu state.PathMtu

        if obj.ReferenceEquals(cache, state.PathMtu) then
            state
        else
            { state with PathMtu = cache }

    // ---------------------------------------------------------------------------------------
    // Send
    // ---------------------------------------------------------------------------------------

    let private checkFamilies (source: IpAddr) (destination: IpAddr) =
        if source.IsIpv6 <> destination.IsIpv6 then
            invalidArg (nameof destination) $"Source {source} and destination {destination} are of different families."

    /// Writes the IP header for `payloadLength` bytes of `protocol` already at dst[20..] (IPv4)
    /// or dst[40..] (IPv6). IPv4 TCP carries Don't Fragment: TCP does path MTU discovery
    /// (RFC 1191 §3, as Linux with ip_no_pmtu_disc = 0, SYNs included), so a router on a
    /// narrower path answers "fragmentation needed" and the connection sends smaller segments
    /// (`Connection.handleIcmpInto`) instead of being fragmented. Everything else leaves it off
    /// (RFC 8085 §3.2 lets UDP datagrams be fragmented).
    let private writeIpHeader
        (source: IpAddr)
        (destination: IpAddr)
        (protocol: byte)
        (identification: uint16)
        (payloadLength: int)
        (dst: Span<byte>)
        =
        match source, destination with
        | V4 s, V4 d ->
            let header =
                { Ipv4.header s d protocol with
                    Identification = identification
                    Ttl = DefaultTtl
                    DontFragment = (protocol = IpProtocol.Tcp)
                }

            Ipv4.write header ReadOnlySpan.Empty payloadLength dst + payloadLength
        | V6 s, V6 d ->
            let header =
                { Ipv6.header s d protocol with
                    PayloadLength = payloadLength
                    HopLimit = DefaultTtl
                }

            Ipv6.write header dst + payloadLength
        | _ -> invalidArg (nameof destination) "Source and destination are of different families."

    /// The partial checksum NEEDS_CSUM asks for in a transport header: the pseudo-header sum over
    /// `length` transport bytes (`VirtioNet.partialChecksum`). Families already checked.
    let private partialSum (source: IpAddr) (destination: IpAddr) (protocol: byte) (length: int) : uint16 =
        match source, destination with
        | V4 s, V4 d -> VirtioNet.partialChecksum (Checksum.pseudoHeaderV4 s d protocol length)
        | V6 s, V6 d -> VirtioNet.partialChecksum (Checksum.pseudoHeaderV6 s d protocol length)
        | _ -> 0us

    let private headerLength (source: IpAddr) =
        if source.IsIpv6 then
            Ipv6.HeaderLength
        else
            Ipv4.MinHeaderLength

    /// Writes one whole (unfragmented, possibly larger than the MTU) IP packet carrying a UDP
    /// datagram into `dst` and returns its length; `planFragments` cuts it for the path MTU.
    /// `identification` is the IPv4 Identification (ignored for IPv6). Throws ArgumentException
    /// when the families differ, the payload exceeds 65507 (IPv4) / 65527 (IPv6) bytes or `dst`
    /// is too small.
    let writeUdp
        (source: IpAddr)
        (destination: IpAddr)
        (sourcePort: uint16)
        (destinationPort: uint16)
        (identification: uint16)
        (payload: ReadOnlySpan<byte>)
        (dst: Span<byte>)
        : int =
        checkFamilies source destination
        let limit = if source.IsIpv6 then MaxUdpPayloadV6 else MaxUdpPayloadV4

        if payload.Length > limit then
            invalidArg (nameof payload) $"A UDP payload of {payload.Length} bytes exceeds {limit}."

        let ip = headerLength source

        if dst.Length < ip + Udp.HeaderLength + payload.Length then
            invalidArg (nameof dst) $"The buffer holds {dst.Length} bytes; the packet needs more."

        let length =
            match source, destination with
            | V4 s, V4 d -> Udp.buildV4 (dst.Slice ip) s d sourcePort destinationPort payload
            | V6 s, V6 d -> Udp.buildV6 (dst.Slice ip) s d sourcePort destinationPort payload
            | _ -> 0

        writeIpHeader source destination IpProtocol.Udp identification length dst

    /// Writes the IP and UDP headers of a UDP super-datagram for a device with UDP segmentation
    /// offload (USO: a TUN device with a virtio-net header, gso UDP_L4) into `dst` and returns
    /// the packet's length, headers plus `payloadLength`. The payload is not written: the caller
    /// sends it from where it is (a gather write), and the kernel cuts it into datagrams of
    /// gso_size bytes (`VirtioNet.udpSegments`). As Linux's own udp_send_skb leaves a GSO
    /// datagram, the UDP length field covers the whole payload and the checksum field holds the
    /// partial pseudo-header sum over that length (NEEDS_CSUM, `VirtioNet.partialChecksum`); the
    /// kernel rewrites both for each datagram it cuts. Throws ArgumentException as `writeUdp`
    /// does (families, payload up to 65507 / 65527 bytes, `dst` holding the headers).
    let writeUdpSegments
        (source: IpAddr)
        (destination: IpAddr)
        (sourcePort: uint16)
        (destinationPort: uint16)
        (identification: uint16)
        (payloadLength: int)
        (dst: Span<byte>)
        : int =
        checkFamilies source destination
        let limit = if source.IsIpv6 then MaxUdpPayloadV6 else MaxUdpPayloadV4

        if payloadLength < 0 || payloadLength > limit then
            invalidArg (nameof payloadLength) $"A UDP payload of {payloadLength} bytes is outside 0..{limit}."

        let ip = headerLength source

        if dst.Length < ip + Udp.HeaderLength then
            invalidArg (nameof dst) $"The buffer holds {dst.Length} bytes; the headers need more."

        let length = Udp.HeaderLength + payloadLength
        let udp = dst.Slice ip
        BinaryPrimitives.WriteUInt16BigEndian(udp, sourcePort)
        BinaryPrimitives.WriteUInt16BigEndian(udp.Slice 2, destinationPort)
        BinaryPrimitives.WriteUInt16BigEndian(udp.Slice 4, uint16 length)

        BinaryPrimitives.WriteUInt16BigEndian(
            udp.Slice VirtioNet.UdpChecksumOffset,
            partialSum source destination IpProtocol.Udp length
        )

        writeIpHeader source destination IpProtocol.Udp identification length dst

    /// Cuts a UDP super-datagram (its IP and UDP headers as `writeUdpSegments` writes them, the
    /// payload right after) into its datagrams of `segmentSize` payload bytes, the last one
    /// shorter, as the kernel's segmentation would: ordinary packets with complete checksums, the
    /// IPv4 identifications numbered on from the super-datagram's. For a device that cannot pass
    /// the super-datagram on as it is (a TAP neighbor still being resolved: its queue holds
    /// ordinary packets). Throws ArgumentException when `packet` is not an IPv4 or IPv6 packet
    /// carrying UDP directly, or `segmentSize` is below 1.
    let cutUdpSegments (packet: ReadOnlySpan<byte>) (segmentSize: int) : byte[] list =
        if segmentSize < 1 then
            invalidArg (nameof segmentSize) $"A segment size of {segmentSize} is below 1."

        let notUdp () =
            invalidArg (nameof packet) "Not an IPv4 or IPv6 packet carrying UDP."

        let struct (source, destination, identification, udpAt) =
            match (if packet.IsEmpty then 0uy else packet.[0] >>> 4) with
            | 4uy ->
                match Ipv4.parseWith false packet with
                | Ok h when h.Protocol = IpProtocol.Udp ->
                    struct (V4 h.Source, V4 h.Destination, h.Identification, h.PayloadOffset)
                | _ -> notUdp ()
            | 6uy ->
                match Ipv6.parse packet with
                | Ok h when h.NextHeader = IpProtocol.Udp ->
                    struct (V6 h.Source, V6 h.Destination, 0us, h.PayloadOffset)
                | _ -> notUdp ()
            | _ -> notUdp ()

        if packet.Length < udpAt + Udp.HeaderLength then
            notUdp ()

        let sourcePort = BinaryPrimitives.ReadUInt16BigEndian(packet.Slice udpAt)
        let destinationPort = BinaryPrimitives.ReadUInt16BigEndian(packet.Slice(udpAt + 2))
        let payload = packet.Slice(udpAt + Udp.HeaderLength)
        // One datagram at least: an empty payload is one empty datagram.
        let count = max 1 ((payload.Length + segmentSize - 1) / segmentSize)
        let datagrams = Array.zeroCreate<byte[]> count

        for index in 0 .. count - 1 do
            let at = index * segmentSize
            let piece = payload.Slice(at, min segmentSize (payload.Length - at))

            let buffer =
                Array.zeroCreate<byte>(headerLength source + Udp.HeaderLength + piece.Length)

            writeUdp source destination sourcePort destinationPort (identification + uint16 index) piece (Span buffer)
            |> ignore

            datagrams.[index] <- buffer

        List.ofArray datagrams

    /// Where `writeTcp` puts the payload of a segment from `source` carrying `options`: after the
    /// IP header, the 20-byte TCP header and the options. A caller whose payload lives in pieces
    /// (a ring buffer) copies it there first and passes that slice to `writeTcp`, saving a copy.
    let tcpPayloadOffset (source: IpAddr) (options: TcpOptions) : int =
        headerLength source + Tcp.MinHeaderLength + Tcp.optionsLength options

    /// Writes one IP packet carrying the TCP segment `segment` from (source, sourcePort) to
    /// (destination, destinationPort) with `payload` (segment.DataLength bytes) into `dst` and
    /// returns its length. IPv4 sets Don't Fragment (path MTU discovery, RFC 1191: the engine
    /// sizes segments for the path, `Connection.handleIcmpInto`). `identification` is the IPv4
    /// Identification. Throws ArgumentException when the families differ, the payload length is
    /// not segment.DataLength, or `dst` is too small.
    let writeTcp
        (source: IpAddr)
        (destination: IpAddr)
        (sourcePort: uint16)
        (destinationPort: uint16)
        (identification: uint16)
        (segment: OutgoingSegment)
        (payload: ReadOnlySpan<byte>)
        (dst: Span<byte>)
        : int =
        checkFamilies source destination

        if payload.Length <> segment.DataLength then
            invalidArg
                (nameof payload)
                $"The payload has {payload.Length} bytes; the segment says {segment.DataLength}."

        let ip = headerLength source

        if dst.Length < tcpPayloadOffset source segment.Options + payload.Length then
            invalidArg (nameof dst) $"The buffer holds {dst.Length} bytes; the packet needs more."

        let header = segment.ToHeader(sourcePort, destinationPort)

        let length =
            match source, destination with
            | V4 s, V4 d -> Tcp.buildV4 (dst.Slice ip) s d header segment.Options payload
            | V6 s, V6 d -> Tcp.buildV6 (dst.Slice ip) s d header segment.Options payload
            | _ -> 0

        if length > 65535 - (if source.IsIpv6 then 0 else ip) then
            invalidArg (nameof payload) $"A TCP segment of {length} bytes does not fit in one IP packet."

        writeIpHeader source destination IpProtocol.Tcp identification length dst

    /// Writes one IP packet carrying a TCP super-segment for a device with TCP segmentation
    /// offload (a TUN device with a virtio-net header, gso TCPV4/TCPV6): the header of `segment`
    /// (the first of the run) with `flags` (those of the last: PSH, FIN), followed by
    /// `payloadLength` payload bytes that the caller has already put at `tcpPayloadOffset`.
    /// The TCP checksum field gets the partial value NEEDS_CSUM asks for (the pseudo-header sum
    /// over the whole TCP length, `VirtioNet.partialChecksum`); the payload is not summed here,
    /// since the kernel completes or segments the checksum. The IPv4 header checksum is complete.
    /// Returns the packet length. Throws ArgumentException when the families differ, `dst` is
    /// too small, or the packet would exceed 65535 bytes (IPv4 total length, IPv6 payload length).
    let writeTcpSegments
        (source: IpAddr)
        (destination: IpAddr)
        (sourcePort: uint16)
        (destinationPort: uint16)
        (identification: uint16)
        (segment: OutgoingSegment)
        (flags: TcpFlags)
        (payloadLength: int)
        (dst: Span<byte>)
        : int =
        checkFamilies source destination
        let ip = headerLength source

        if dst.Length < tcpPayloadOffset source segment.Options + payloadLength then
            invalidArg (nameof dst) $"The buffer holds {dst.Length} bytes; the packet needs more."

        let header =
            { segment.ToHeader(sourcePort, destinationPort) with
                Flags = flags
            }

        // Header and options only: the payload already sits right after them.
        let headerBytes =
            match source, destination with
            | V4 s, V4 d -> Tcp.buildV4 (dst.Slice ip) s d header segment.Options ReadOnlySpan.Empty
            | V6 s, V6 d -> Tcp.buildV6 (dst.Slice ip) s d header segment.Options ReadOnlySpan.Empty
            | _ -> 0

        let length = headerBytes + payloadLength

        if length > 65535 - (if source.IsIpv6 then 0 else ip) then
            invalidArg (nameof payloadLength) $"A TCP segment of {length} bytes does not fit in one IP packet."

        BinaryPrimitives.WriteUInt16BigEndian(
            dst.Slice(ip + VirtioNet.TcpChecksumOffset),
            partialSum source destination IpProtocol.Tcp length
        )

        writeIpHeader source destination IpProtocol.Tcp identification length dst

    /// Completes the TCP checksum of a packet written by `writeTcpSegments` (its field holding
    /// the partial pseudo-header sum) when the payload is sent from elsewhere (a gather write
    /// from the send ring) and no device completes the checksum: `payloadSum` is the running sum
    /// (`Checksum.sum`, `Checksum.sumAfter` for a payload in pieces) of the payload bytes, and
    /// `headerBytes` the IP and TCP headers' length (`tcpPayloadOffset`, even: TCP headers are
    /// whole 32-bit words, RFC 9293 §3.1). Sums the TCP header with the partial field and the
    /// payload sum and stores the complement, as Linux's skb_checksum_help does.
    let completeTcpChecksum (source: IpAddr) (headerBytes: int) (payloadSum: uint64) (dst: Span<byte>) : unit =
        let ip = headerLength source

        let header: ReadOnlySpan<byte> =
            Span<byte>.op_Implicit(dst.Slice(ip, headerBytes - ip))

        let acc = Checksum.sum payloadSum header

        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice(ip + VirtioNet.TcpChecksumOffset), Checksum.finish acc)

    let private writeEcho
        (reply: bool)
        (source: IpAddr)
        (destination: IpAddr)
        (identifier: uint16)
        (sequence: uint16)
        (identification: uint16)
        (data: ReadOnlySpan<byte>)
        (dst: Span<byte>)
        =
        checkFamilies source destination
        let ip = headerLength source

        if dst.Length < ip + 8 + data.Length then
            invalidArg (nameof dst) $"The buffer holds {dst.Length} bytes; the packet needs more."

        match source, destination with
        | V4 _, V4 _ ->
            let length =
                if reply then
                    Icmpv4.buildEchoReply (dst.Slice ip) identifier sequence data
                else
                    Icmpv4.buildEchoRequest (dst.Slice ip) identifier sequence data

            writeIpHeader source destination IpProtocol.Icmp identification length dst
        | V6 s, V6 d ->
            let length =
                if reply then
                    Icmpv6.buildEchoReply (dst.Slice ip) s d identifier sequence data
                else
                    Icmpv6.buildEchoRequest (dst.Slice ip) s d identifier sequence data

            writeIpHeader source destination IpProtocol.Icmpv6 identification length dst
        | _ -> 0

    /// Writes a whole echo request packet (RFC 792 / RFC 4443 §4.1) into `dst`; returns its length.
    /// Throws ArgumentException as `writeUdp` does (data up to 65507 / 65527 bytes).
    let writeEchoRequest source destination identifier sequence identification data dst : int =
        writeEcho false source destination identifier sequence identification data dst

    /// Writes a whole echo reply packet into `dst`: from `source` (the request's destination) to
    /// `destination` (its source), echoing identifier, sequence and data (RFC 792 / RFC 4443 §4.2).
    let writeEchoReply source destination identifier sequence identification data dst : int =
        writeEcho true source destination identifier sequence identification data dst

    /// Cuts a whole packet (as written by writeUdp/writeEcho...) for a path MTU. IPv4 fragments
    /// carry the packet's own Identification; IPv6 fragments get a Fragment header with
    /// `identification` (RFC 7739: the caller picks it unpredictably). Throws ArgumentException
    /// when the packet does not parse or (IPv4) has Don't Fragment set and does not fit.
    let planFragments (packet: ReadOnlySpan<byte>) (mtu: int) (identification: uint32) : FragmentPlan =
        if not packet.IsEmpty && packet.[0] >>> 4 = 6uy then
            let plan = Fragmentation.planIpv6 packet identification mtu

            {
                Count = plan.Count
                IsIpv6 = true
                V4Plan = Unchecked.defaultof<_>
                V4Header = Unchecked.defaultof<_>
                V6Plan = plan
            }
        else
            match Ipv4.parseWith false packet with
            | Error e -> invalidArg (nameof packet) $"The packet does not parse: {e}."
            | Ok h ->
                match
                    Fragmentation.planIpv4 h (packet.Slice(Ipv4.MinHeaderLength, h.OptionsLength)) h.PayloadLength mtu
                with
                | Error(FragmentationNeeded m) ->
                    invalidArg (nameof packet) $"The packet has Don't Fragment set and exceeds MTU {m}."
                | Ok plan ->
                    {
                        Count = plan.Count
                        IsIpv6 = false
                        V4Plan = plan
                        V4Header = h
                        V6Plan = Unchecked.defaultof<_>
                    }

    /// Writes packet `index` (0 ≤ index < Count) of a plan into `dst` and returns its length.
    let writeFragment (plan: FragmentPlan) (packet: ReadOnlySpan<byte>) (index: int) (dst: Span<byte>) : int =
        if plan.IsIpv6 then
            Fragmentation.writeIpv6Fragment plan.V6Plan packet index dst
        else
            let h = plan.V4Header

            Fragmentation.writeIpv4Fragment
                plan.V4Plan
                h
                (packet.Slice(Ipv4.MinHeaderLength, h.OptionsLength))
                (packet.Slice(h.PayloadOffset, h.PayloadLength))
                index
                dst

    // ---------------------------------------------------------------------------------------
    // ICMP errors we send
    // ---------------------------------------------------------------------------------------

    /// ICMPv4 types that are errors (RFC 792, RFC 1122 §3.2.2): never answered with an error.
    let private isIcmpv4Error (messageType: byte) =
        messageType = Icmpv4.MessageType.DestinationUnreachable
        || messageType = Icmpv4.MessageType.SourceQuench
        || messageType = Icmpv4.MessageType.Redirect
        || messageType = Icmpv4.MessageType.TimeExceeded
        || messageType = Icmpv4.MessageType.ParameterProblem

    /// Whether RFC 1122 §3.2.2 / RFC 4443 §2.4(e) allow an error about `original` at all.
    let private policy (state: IpLayerState) (original: ReadOnlySpan<byte>) : ErrorVerdict =
        if original.IsEmpty then
            ErrorVerdict.Malformed
        elif original.[0] >>> 4 = 4uy then
            match Ipv4.parseWith false original, state.Config.Address4 with
            | Error _, _ -> ErrorVerdict.Malformed
            | _, ValueNone -> ErrorVerdict.NoAddress
            | Ok h, ValueSome _ ->
                if
                    AddressClass.isMulticast4 h.Source
                    || AddressClass.isLimitedBroadcast4 h.Source
                    || AddressClass.isUnspecified4 h.Source
                then
                    ErrorVerdict.NotUnicastSource
                elif
                    AddressClass.isMulticast4 h.Destination
                    || AddressClass.isLimitedBroadcast4 h.Destination
                then
                    ErrorVerdict.NotUnicastDestination
                elif h.FragmentOffset <> 0 then
                    ErrorVerdict.NotFirstFragment
                elif
                    h.Protocol = IpProtocol.Icmp
                    && h.PayloadLength >= 1
                    && isIcmpv4Error original.[h.PayloadOffset]
                then
                    ErrorVerdict.AboutIcmpError
                else
                    ErrorVerdict.Sent
        else
            match Ipv6.parse original, state.Config.Address6 with
            | Error _, _ -> ErrorVerdict.Malformed
            | _, ValueNone -> ErrorVerdict.NoAddress
            | Ok h, ValueSome _ ->
                if h.Source.IsMulticast || AddressClass.isUnspecified6 h.Source then
                    ErrorVerdict.NotUnicastSource
                elif h.Destination.IsMulticast then
                    ErrorVerdict.NotUnicastDestination
                else
                    match Ipv6.parseExtensions original h with
                    | Error _ -> ErrorVerdict.Malformed
                    | Ok ext ->
                        match ext.Fragment with
                        | ValueSome f when f.Offset <> 0 -> ErrorVerdict.NotFirstFragment
                        | _ when
                            ext.UpperProtocol = IpProtocol.Icmpv6
                            && ext.UpperLength >= 1
                            && original.[ext.UpperOffset] < 128uy
                            ->
                            ErrorVerdict.AboutIcmpError
                        | _ -> ErrorVerdict.Sent

    /// Decides on and writes an ICMP error about `original` (a packet we received, IP header
    /// first) into `dst` (at least 1280 bytes): the RFC 1122 §3.2.2 / RFC 4443 §2.4(e) rules
    /// first, then the token bucket at `now`. Returns the new state (a token taken only when
    /// sent), the verdict and the length written (0 unless Sent). The error goes from our
    /// address to the original's source.
    let tryWriteError
        (now: int64)
        (error: OutgoingError)
        (original: ReadOnlySpan<byte>)
        (dst: Span<byte>)
        (state: IpLayerState)
        : struct (IpLayerState * ErrorVerdict * int) =
        match policy state original with
        | ErrorVerdict.Sent ->
            let struct (granted, bucket) = TokenBucket.tryTake now state.ErrorBucket
            let state = { state with ErrorBucket = bucket }

            if not granted then
                struct (state, ErrorVerdict.RateLimited, 0)
            elif original.[0] >>> 4 = 4uy then
                let ours = state.Config.Address4.Value
                let peer = Ipv4Address.Read(original.Slice 12)

                let length =
                    match error with
                    | OutgoingError.PortUnreachable ->
                        Icmpv4.buildDestinationUnreachable
                            (dst.Slice Ipv4.MinHeaderLength)
                            Icmpv4.UnreachableCode.Port
                            original
                    | _ ->
                        Icmpv4.buildTimeExceeded
                            (dst.Slice Ipv4.MinHeaderLength)
                            Icmpv4.TimeExceededCode.FragmentReassembly
                            original

                struct (state, ErrorVerdict.Sent, writeIpHeader (V4 ours) (V4 peer) IpProtocol.Icmp 0us length dst)
            else
                let ours = state.Config.Address6.Value
                let peer = Ipv6Address.Read(original.Slice 8)

                let length =
                    match error with
                    | OutgoingError.PortUnreachable ->
                        Icmpv6.buildDestinationUnreachable
                            (dst.Slice Ipv6.HeaderLength)
                            ours
                            peer
                            Icmpv6.UnreachableCode.Port
                            original
                    | _ ->
                        Icmpv6.buildTimeExceeded
                            (dst.Slice Ipv6.HeaderLength)
                            ours
                            peer
                            Icmpv6.TimeExceededCode.FragmentReassembly
                            original

                struct (state, ErrorVerdict.Sent, writeIpHeader (V6 ours) (V6 peer) IpProtocol.Icmpv6 0us length dst)
        | verdict -> struct (state, verdict, 0)

    /// Writes the first fragment of an abandoned datagram as it arrived, for quoting in a time
    /// exceeded: IPv4 header and payload; IPv6 unfragmentable part, the Fragment header
    /// (offset 0, M set) and payload. Returns the length. Throws ArgumentException when `dst`
    /// is too small.
    let writeFirstFragment (key: ReassemblyKey) (first: FirstFragment) (dst: Span<byte>) : int =
        let fragmentHeader =
            match key with
            | ReassemblyKey.V6 _ -> Ipv6.FragmentHeaderLength
            | ReassemblyKey.V4 _ -> 0

        let total = first.Header.Length + fragmentHeader + first.Payload.Length

        if dst.Length < total then
            invalidArg (nameof dst) $"The buffer holds {dst.Length} bytes; the fragment needs {total}."

        first.Header.AsSpan().CopyTo dst

        match key with
        | ReassemblyKey.V6(_, _, identification) ->
            Ipv6.writeFragmentHeader
                {
                    NextHeader = first.NextHeader
                    Offset = 0
                    MoreFragments = true
                    Identification = identification
                }
                (dst.Slice first.Header.Length)
            |> ignore
        | ReassemblyKey.V4 _ -> ()

        first.Payload.AsSpan().CopyTo(dst.Slice(first.Header.Length + fragmentHeader))
        total
