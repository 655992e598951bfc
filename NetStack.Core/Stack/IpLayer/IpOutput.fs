namespace NetStack.Core.Stack

open System
open System.Buffers.Binary
open NetStack.Core.Wire
open NetStack.Core.Ip
open NetStack.Core.Tcp

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

/// Building the packets we send: IP headers, UDP (USO super-datagrams included), TCP (TSO
/// super-segments and partial checksums included), echoes, and fragments for a path MTU. The
/// public entry points are `IpLayer.writeUdp`, `IpLayer.writeTcp`, ... (IpLayer.fs).
[<RequireQualifiedAccess>]
module internal IpOutput =

    /// Hop limit / TTL of the packets we originate (RFC 1700's recommended 64, as Linux).
    [<Literal>]
    let DefaultTtl = 64uy

    /// The largest UDP payload over IPv4: 65535 less 20 bytes of IPv4 and 8 of UDP.
    [<Literal>]
    let MaxUdpPayloadV4 = 65507

    /// The largest UDP payload over IPv6: 65535 bytes of IPv6 payload less 8 of UDP.
    [<Literal>]
    let MaxUdpPayloadV6 = 65527

    let private checkFamilies (source: IpAddr) (destination: IpAddr) =
        if source.IsIpv6 <> destination.IsIpv6 then
            invalidArg (nameof destination) $"Source {source} and destination {destination} are of different families."

    /// Writes the IP header for `payloadLength` bytes of `protocol` already at dst[20..] (IPv4)
    /// or dst[40..] (IPv6), with the sending socket's TTL / hop limit, DSCP and Don't Fragment
    /// (`settings`; the ECN bits are always Not-ECT). TCP's default sets Don't Fragment: TCP
    /// does path MTU discovery (RFC 1191 §3, as Linux with ip_no_pmtu_disc = 0, SYNs included),
    /// so a router on a narrower path answers "fragmentation needed" and the connection sends
    /// smaller segments (`Connection.handleIcmpInto`) instead of being fragmented. Everything
    /// else leaves it off by default (RFC 8085 §3.2 lets UDP datagrams be fragmented).
    let writeIpHeader
        (settings: IpHeaderSettings)
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
                    Ttl = settings.Ttl
                    Dscp = settings.Dscp
                    DontFragment = settings.DontFragment
                }

            Ipv4.write header ReadOnlySpan.Empty payloadLength dst + payloadLength
        | V6 s, V6 d ->
            let header =
                { Ipv6.header s d protocol with
                    PayloadLength = payloadLength
                    HopLimit = settings.Ttl
                    TrafficClass = settings.TypeOfService &&& 0xFCuy
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

    /// The body of `IpLayer.writeUdp` (documented there).
    let writeUdp
        (settings: IpHeaderSettings)
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

        writeIpHeader settings source destination IpProtocol.Udp identification length dst

    /// The body of `IpLayer.writeUdpSegments` (documented there).
    let writeUdpSegments
        (settings: IpHeaderSettings)
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

        writeIpHeader settings source destination IpProtocol.Udp identification length dst

    /// The body of `IpLayer.cutUdpSegments` (documented there).
    let cutUdpSegments (packet: ReadOnlySpan<byte>) (segmentSize: int) : byte[] list =
        if segmentSize < 1 then
            invalidArg (nameof segmentSize) $"A segment size of {segmentSize} is below 1."

        let notUdp () =
            invalidArg (nameof packet) "Not an IPv4 or IPv6 packet carrying UDP."

        // The datagrams keep the super-datagram's TTL, DSCP and Don't Fragment (its socket's).
        let struct (source, destination, identification, udpAt, settings) =
            match (if packet.IsEmpty then 0uy else packet.[0] >>> 4) with
            | 4uy ->
                match Ipv4.parseWith false packet with
                | Ok h when h.Protocol = IpProtocol.Udp ->
                    struct (V4 h.Source,
                            V4 h.Destination,
                            h.Identification,
                            h.PayloadOffset,
                            {
                                Ttl = h.Ttl
                                TypeOfService = h.Dscp <<< 2
                                DontFragment = h.DontFragment
                            })
                | _ -> notUdp ()
            | 6uy ->
                match Ipv6.parse packet with
                | Ok h when h.NextHeader = IpProtocol.Udp ->
                    struct (V6 h.Source,
                            V6 h.Destination,
                            0us,
                            h.PayloadOffset,
                            {
                                Ttl = h.HopLimit
                                TypeOfService = h.TrafficClass
                                DontFragment = false
                            })
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

            writeUdp
                settings
                source
                destination
                sourcePort
                destinationPort
                (identification + uint16 index)
                piece
                (Span buffer)
            |> ignore

            datagrams.[index] <- buffer

        List.ofArray datagrams

    /// The body of `IpLayer.tcpPayloadOffset` (documented there).
    let tcpPayloadOffset (source: IpAddr) (options: TcpOptions) : int =
        headerLength source + Tcp.MinHeaderLength + Tcp.optionsLength options

    /// The body of `IpLayer.writeTcp` (documented there).
    let writeTcp
        (settings: IpHeaderSettings)
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

        writeIpHeader settings source destination IpProtocol.Tcp identification length dst

    /// The body of `IpLayer.writeTcpSegments` (documented there).
    let writeTcpSegments
        (settings: IpHeaderSettings)
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

        writeIpHeader settings source destination IpProtocol.Tcp identification length dst

    /// The body of `IpLayer.completeTcpChecksum` (documented there).
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

            writeIpHeader IpHeaderSettings.Default source destination IpProtocol.Icmp identification length dst
        | V6 s, V6 d ->
            let length =
                if reply then
                    Icmpv6.buildEchoReply (dst.Slice ip) s d identifier sequence data
                else
                    Icmpv6.buildEchoRequest (dst.Slice ip) s d identifier sequence data

            writeIpHeader IpHeaderSettings.Default source destination IpProtocol.Icmpv6 identification length dst
        | _ -> 0

    /// The body of `IpLayer.writeEchoRequest` (documented there).
    let writeEchoRequest source destination identifier sequence identification data dst : int =
        writeEcho false source destination identifier sequence identification data dst

    /// The body of `IpLayer.writeEchoReply` (documented there).
    let writeEchoReply source destination identifier sequence identification data dst : int =
        writeEcho true source destination identifier sequence identification data dst

    /// The body of `IpLayer.planFragments` (documented there).
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

    /// The body of `IpLayer.writeFragment` (documented there).
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
