namespace NetStack.Core.Stack

open System
open System.Runtime.CompilerServices
open NetStack.Core.Wire
open NetStack.Core.Ip
open NetStack.Core.Tcp
// After NetStack.Core.Ip: DropReason is this namespace's (Received.fs), not reassembly's.
open NetStack.Core.Stack

/// The IP layer as pure functions: classify received packets, build packets to send, decide on
/// ICMP errors. Time (`now`, monotonic microseconds) is always an input. This module is the
/// public entry; the rules live by concern beside it: Ipv4Input.fs and Ipv6Input.fs (receiving
/// each family), IcmpInput.fs (echoes and the errors we receive), IpInput.fs (what both share,
/// the UDP and TCP checks), IpOutput.fs (the packets we build), IcmpErrors.fs (the errors we
/// send), Received.fs (what receiving yields).
[<RequireQualifiedAccess>]
module IpLayer =

    /// Hop limit / TTL of the packets we originate (RFC 1700's recommended 64, as Linux).
    [<Literal>]
    let DefaultTtl = IpOutput.DefaultTtl

    /// The largest UDP payload over IPv4: 65535 less 20 bytes of IPv4 and 8 of UDP.
    [<Literal>]
    let MaxUdpPayloadV4 = IpOutput.MaxUdpPayloadV4

    /// The largest UDP payload over IPv6: 65535 bytes of IPv6 payload less 8 of UDP.
    [<Literal>]
    let MaxUdpPayloadV6 = IpOutput.MaxUdpPayloadV6

    /// A configuration with the usual limits: 100 ICMP errors per second, bursts of 10.
    let config (address4: Ipv4Address voption) (address6: Ipv6Address voption) (mtu: int) : IpLayerConfig =
        {
            Address4 = address4
            Address6 = address6
            Mtu = mtu
            IcmpErrorsPerSecond = 100
            IcmpErrorBurst = 10
            Reassembly = ReassemblyConfig.Default
            AnyDestination = false
            Mask4 = 0u
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
            Groups4 = [||]
            Groups6 = [||]
        }

    /// The state with `addresses` as our IPv6 addresses besides Config.Address6 (the caller
    /// gives a fresh array it never changes).
    let withAddresses6 (addresses: Ipv6Address[]) (state: IpLayerState) : IpLayerState =
        { state with Extra6 = addresses }

    /// The state with `groups` as the multicast groups joined (the caller gives a fresh array
    /// it never changes): packets to them are accepted, to other groups dropped
    /// (`drop.multicast.not-joined`).
    let withGroups (groups: IpAddr[]) (state: IpLayerState) : IpLayerState =
        { state with
            Groups4 =
                groups
                |> Array.choose (fun g ->
                    match g with
                    | V4 a -> Some a
                    | V6 _ -> None)
            Groups6 =
                groups
                |> Array.choose (fun g ->
                    match g with
                    | V6 a -> Some a
                    | V4 _ -> None)
        }

    /// True when `address` is the IPv4 limited broadcast or the broadcast address of our prefix
    /// (Config.Mask4, not for /31 and /32): sending there needs EnableBroadcast.
    let isBroadcast4 (address: Ipv4Address) (state: IpLayerState) : bool = IpInput.isBroadcast4 state address

    /// The state with `address` as our IPv4 address, in a prefix of `prefixLength` bits (DHCP's
    /// lease, RFC 2131; ValueNone while unbound): packets to another address are no longer ours,
    /// and the prefix's broadcast address is the one taken as a broadcast.
    let withAddress4 (address: Ipv4Address voption) (prefixLength: int) (state: IpLayerState) : IpLayerState =
        let mask =
            if address.IsNone || prefixLength <= 0 then 0u
            elif prefixLength >= 32 then UInt32.MaxValue
            else UInt32.MaxValue <<< (32 - prefixLength)

        { state with
            Config =
                { state.Config with
                    Address4 = address
                    Mask4 = mask
                }
        }

    /// True when `address` is Config.Address6 or one of the extra IPv6 addresses.
    let isLocal6 (address: Ipv6Address) (state: IpLayerState) : bool =
        state.Config.Address6 = ValueSome address || Array.contains address state.Extra6

    // ---------------------------------------------------------------------------------------
    // Receive (Ipv4Input.fs, Ipv6Input.fs, IcmpInput.fs, IpInput.fs)
    // ---------------------------------------------------------------------------------------

    /// The bytes a PayloadRef names: in `input` (the packet given to receive) or in its array.
    [<MethodImpl(MethodImplOptions.AggressiveInlining)>]
    let slice (input: ReadOnlySpan<byte>) (reference: PayloadRef) : ReadOnlySpan<byte> = IpInput.slice input reference

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
            IpInput.dropped state (DropReason.Malformed(PacketLayer.Ip, Truncated(1, 0)))
        else
            match packet.[0] >>> 4 with
            | 4uy -> Ipv4Input.receive now state packet null trusted false
            | 6uy -> Ipv6Input.receive now state packet null false trusted false
            | v -> IpInput.dropped state (DropReason.Malformed(PacketLayer.Ip, BadVersion(int v)))

    let private isLoopedDestination4 (destination: Ipv4Address) (state: IpLayerState) =
        AddressClass.isLoopback4 destination
        || (state.Config.Address4.IsSome && destination = state.Config.Address4.Value)

    let private isLoopedDestination6 (destination: Ipv6Address) (state: IpLayerState) =
        AddressClass.isLoopback6 destination
        || (state.Config.Address6.IsSome && destination = state.Config.Address6.Value)
        || Array.contains destination state.Extra6

    /// Whether a multicast datagram we send to `group` also comes back to us: a group we joined
    /// (IP_MULTICAST_LOOP, RFC 1112 §6.1: delivered to the sending host's own members too).
    let loopsBackMulticast (group: IpAddr) (state: IpLayerState) : bool =
        match group with
        | V4 a -> AddressClass.isMulticast4 a && IpInput.isJoined4 state a
        | V6 a -> a.IsMulticast && IpInput.isJoined6 state a

    /// Whether a packet to `destination` stays in the stack (see `loopsBack`).
    let isLoopedDestination (destination: IpAddr) (state: IpLayerState) : bool =
        match destination with
        | V4 a -> isLoopedDestination4 a state
        | V6 a -> isLoopedDestination6 a state

    /// Whether a packet we are about to send (`packet`: at least its IP header) stays in the
    /// stack: it is for one of our own addresses or for the loopback network (127/8, ::1;
    /// RFC 1122 §3.2.1.3 (g), RFC 4291 §2.5.3), so it goes back to `receiveLooped`, never to
    /// the device.
    let loopsBack (packet: ReadOnlySpan<byte>) (state: IpLayerState) : bool =
        if packet.Length >= 20 && packet.[0] >>> 4 = 4uy then
            isLoopedDestination4 (Ipv4Address.Read(packet.Slice 16)) state
        elif packet.Length >= 40 && packet.[0] >>> 4 = 6uy then
            isLoopedDestination6 (Ipv6Address.Read(packet.Slice 24)) state
        else
            false

    /// The source of new communication with a destination that stays in the stack: the
    /// destination itself when it is one of our addresses, 127.0.0.1 for the rest of 127/8
    /// and ::1 for ::1 (RFC 6724 rule 1, the same address; Linux's loopback device holds only
    /// 127.0.0.1/8 and ::1). ValueNone: the destination is not ours.
    let loopedSource (destination: IpAddr) (state: IpLayerState) : IpAddr voption =
        match destination with
        | V4 a when AddressClass.isLoopback4 a -> ValueSome(V4(Ipv4Address 0x7F00_0001u))
        | V6 a when AddressClass.isLoopback6 a -> ValueSome destination
        | _ when isLoopedDestination destination state -> ValueSome destination
        | _ -> ValueNone

    /// `receive` for a packet the stack sent to itself (`loopsBack`): the loopback addresses are
    /// ours, our own addresses are valid sources, and the transport checksum, which we wrote (or
    /// left partial for an offload), is trusted as Linux's loopback device does.
    let receiveLooped
        (now: int64)
        (packet: ReadOnlySpan<byte>)
        (state: IpLayerState)
        : struct (IpLayerState * Received) =
        if packet.IsEmpty then
            IpInput.dropped state (DropReason.Malformed(PacketLayer.Ip, Truncated(1, 0)))
        else
            match packet.[0] >>> 4 with
            | 4uy -> Ipv4Input.receive now state packet null true true
            | 6uy -> Ipv6Input.receive now state packet null false true true
            | v -> IpInput.dropped state (DropReason.Malformed(PacketLayer.Ip, BadVersion(int v)))

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

    /// Whether a UDP datagram of `payloadLength` bytes to `destination` may be sent at `now` by a
    /// socket with `settings`: false only for IPv4 with Don't Fragment set when the datagram
    /// exceeds the path MTU (it could not be fragmented; Linux's send fails with EMSGSIZE then,
    /// IP_PMTUDISC_DO). IPv6 never fragments on the path, and we fragment at the source.
    let udpFits
        (now: int64)
        (settings: IpHeaderSettings)
        (destination: IpAddr)
        (payloadLength: int)
        (state: IpLayerState)
        : bool =
        destination.IsIpv6
        || not settings.DontFragment
        || Ipv4.MinHeaderLength + Udp.HeaderLength + payloadLength
           <= PathMtu.lookup now destination state.PathMtu

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
    // Send (IpOutput.fs)
    // ---------------------------------------------------------------------------------------

    /// Writes one whole (unfragmented, possibly larger than the MTU) IP packet carrying a UDP
    /// datagram into `dst` and returns its length; `planFragments` cuts it for the path MTU.
    /// `identification` is the IPv4 Identification (ignored for IPv6). Throws ArgumentException
    /// when the families differ, the payload exceeds 65507 (IPv4) / 65527 (IPv6) bytes or `dst`
    /// is too small.
    [<MethodImpl(MethodImplOptions.AggressiveInlining)>]
    let writeUdp
        (source: IpAddr)
        (destination: IpAddr)
        (sourcePort: uint16)
        (destinationPort: uint16)
        (identification: uint16)
        (payload: ReadOnlySpan<byte>)
        (dst: Span<byte>)
        : int =
        IpOutput.writeUdp
            IpHeaderSettings.Default
            source
            destination
            sourcePort
            destinationPort
            identification
            payload
            dst

    /// `writeUdp` with the sending socket's header settings (TTL / hop limit, DSCP, Don't
    /// Fragment) instead of the defaults.
    [<MethodImpl(MethodImplOptions.AggressiveInlining)>]
    let writeUdpWith
        (settings: IpHeaderSettings)
        (source: IpAddr)
        (destination: IpAddr)
        (sourcePort: uint16)
        (destinationPort: uint16)
        (identification: uint16)
        (payload: ReadOnlySpan<byte>)
        (dst: Span<byte>)
        : int =
        IpOutput.writeUdp settings source destination sourcePort destinationPort identification payload dst

    /// Writes the IP and UDP headers of a UDP super-datagram for a device with UDP segmentation
    /// offload (USO: a TUN device with a virtio-net header, gso UDP_L4) into `dst` and returns
    /// the packet's length, headers plus `payloadLength`. The payload is not written: the caller
    /// sends it from where it is (a gather write), and the kernel cuts it into datagrams of
    /// gso_size bytes (`VirtioNet.udpSegments`). As Linux's own udp_send_skb leaves a GSO
    /// datagram, the UDP length field covers the whole payload and the checksum field holds the
    /// partial pseudo-header sum over that length (NEEDS_CSUM, `VirtioNet.partialChecksum`); the
    /// kernel rewrites both for each datagram it cuts. Throws ArgumentException as `writeUdp`
    /// does (families, payload up to 65507 / 65527 bytes, `dst` holding the headers).
    [<MethodImpl(MethodImplOptions.AggressiveInlining)>]
    let writeUdpSegments
        (source: IpAddr)
        (destination: IpAddr)
        (sourcePort: uint16)
        (destinationPort: uint16)
        (identification: uint16)
        (payloadLength: int)
        (dst: Span<byte>)
        : int =
        IpOutput.writeUdpSegments
            IpHeaderSettings.Default
            source
            destination
            sourcePort
            destinationPort
            identification
            payloadLength
            dst

    /// `writeUdpSegments` with the sending socket's header settings; the kernel copies them into
    /// every datagram it cuts.
    [<MethodImpl(MethodImplOptions.AggressiveInlining)>]
    let writeUdpSegmentsWith
        (settings: IpHeaderSettings)
        (source: IpAddr)
        (destination: IpAddr)
        (sourcePort: uint16)
        (destinationPort: uint16)
        (identification: uint16)
        (payloadLength: int)
        (dst: Span<byte>)
        : int =
        IpOutput.writeUdpSegments
            settings
            source
            destination
            sourcePort
            destinationPort
            identification
            payloadLength
            dst

    /// Cuts a UDP super-datagram (its IP and UDP headers as `writeUdpSegments` writes them, the
    /// payload right after) into its datagrams of `segmentSize` payload bytes, the last one
    /// shorter, as the kernel's segmentation would: ordinary packets with complete checksums, the
    /// IPv4 identifications numbered on from the super-datagram's. For a device that cannot pass
    /// the super-datagram on as it is (a TAP neighbor still being resolved: its queue holds
    /// ordinary packets). Throws ArgumentException when `packet` is not an IPv4 or IPv6 packet
    /// carrying UDP directly, or `segmentSize` is below 1.
    let cutUdpSegments (packet: ReadOnlySpan<byte>) (segmentSize: int) : byte[] list =
        IpOutput.cutUdpSegments packet segmentSize

    /// Where `writeTcp` puts the payload of a segment from `source` carrying `options`: after the
    /// IP header, the 20-byte TCP header and the options. A caller whose payload lives in pieces
    /// (a ring buffer) copies it there first and passes that slice to `writeTcp`, saving a copy.
    [<MethodImpl(MethodImplOptions.AggressiveInlining)>]
    let tcpPayloadOffset (source: IpAddr) (options: TcpOptions) : int =
        IpOutput.tcpPayloadOffset source options

    /// Writes one IP packet carrying the TCP segment `segment` from (source, sourcePort) to
    /// (destination, destinationPort) with `payload` (segment.DataLength bytes) into `dst` and
    /// returns its length. IPv4 sets Don't Fragment (path MTU discovery, RFC 1191: the engine
    /// sizes segments for the path, `Connection.handleIcmpInto`). `identification` is the IPv4
    /// Identification. Throws ArgumentException when the families differ, the payload length is
    /// not segment.DataLength, or `dst` is too small.
    [<MethodImpl(MethodImplOptions.AggressiveInlining)>]
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
        IpOutput.writeTcp
            IpHeaderSettings.Tcp
            source
            destination
            sourcePort
            destinationPort
            identification
            segment
            payload
            dst

    /// `writeTcp` with the connection's header settings (`TcpConfig.IpHeader`, or the group's
    /// `TcpGroup.Header`) instead of TCP's defaults.
    [<MethodImpl(MethodImplOptions.AggressiveInlining)>]
    let writeTcpWith
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
        IpOutput.writeTcp settings source destination sourcePort destinationPort identification segment payload dst

    /// Writes one IP packet carrying a TCP super-segment for a device with TCP segmentation
    /// offload (a TUN device with a virtio-net header, gso TCPV4/TCPV6): the header of `segment`
    /// (the first of the run) with `flags` (those of the last: PSH, FIN), followed by
    /// `payloadLength` payload bytes that the caller has already put at `tcpPayloadOffset`.
    /// The TCP checksum field gets the partial value NEEDS_CSUM asks for (the pseudo-header sum
    /// over the whole TCP length, `VirtioNet.partialChecksum`); the payload is not summed here,
    /// since the kernel completes or segments the checksum. The IPv4 header checksum is complete.
    /// Returns the packet length. Throws ArgumentException when the families differ, `dst` is
    /// too small, or the packet would exceed 65535 bytes (IPv4 total length, IPv6 payload length).
    [<MethodImpl(MethodImplOptions.AggressiveInlining)>]
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
        IpOutput.writeTcpSegments
            IpHeaderSettings.Tcp
            source
            destination
            sourcePort
            destinationPort
            identification
            segment
            flags
            payloadLength
            dst

    /// `writeTcpSegments` with the connection's header settings; the kernel copies them into
    /// every segment it cuts.
    [<MethodImpl(MethodImplOptions.AggressiveInlining)>]
    let writeTcpSegmentsWith
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
        IpOutput.writeTcpSegments
            settings
            source
            destination
            sourcePort
            destinationPort
            identification
            segment
            flags
            payloadLength
            dst

    /// Completes the TCP checksum of a packet written by `writeTcpSegments` (its field holding
    /// the partial pseudo-header sum) when the payload is sent from elsewhere (a gather write
    /// from the send ring) and no device completes the checksum: `payloadSum` is the running sum
    /// (`Checksum.sum`, `Checksum.sumAfter` for a payload in pieces) of the payload bytes, and
    /// `headerBytes` the IP and TCP headers' length (`tcpPayloadOffset`, even: TCP headers are
    /// whole 32-bit words, RFC 9293 §3.1). Sums the TCP header with the partial field and the
    /// payload sum and stores the complement, as Linux's skb_checksum_help does.
    [<MethodImpl(MethodImplOptions.AggressiveInlining)>]
    let completeTcpChecksum (source: IpAddr) (headerBytes: int) (payloadSum: uint64) (dst: Span<byte>) : unit =
        IpOutput.completeTcpChecksum source headerBytes payloadSum dst

    /// Sets the TTL (IPv4, the header checksum updated, RFC 1624) or hop limit (IPv6) of a
    /// packet written here: for a multicast datagram, whose TTL is the socket's multicast TTL
    /// (1 unless asked otherwise, RFC 1112 §6.1) rather than DefaultTtl. Throws
    /// ArgumentException when `packet` is not an IPv4 or IPv6 header.
    let setHopLimit (hopLimit: byte) (packet: Span<byte>) : unit =
        if packet.Length >= 20 && packet.[0] >>> 4 = 4uy then
            let oldWord = uint16 packet.[8] <<< 8 ||| uint16 packet.[9]
            packet.[8] <- hopLimit
            let newWord = uint16 packet.[8] <<< 8 ||| uint16 packet.[9]

            let oldSum =
                System.Buffers.Binary.BinaryPrimitives.ReadUInt16BigEndian(Span<byte>.op_Implicit(packet.Slice 10))

            System.Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(
                packet.Slice 10,
                Checksum.update oldSum oldWord newWord
            )
        elif packet.Length >= 40 && packet.[0] >>> 4 = 6uy then
            packet.[7] <- hopLimit
        else
            invalidArg (nameof packet) "Not an IPv4 or IPv6 packet."

    /// Writes a whole echo request packet (RFC 792 / RFC 4443 §4.1) into `dst`; returns its length.
    /// Throws ArgumentException as `writeUdp` does (data up to 65507 / 65527 bytes).
    let writeEchoRequest source destination identifier sequence identification data dst : int =
        IpOutput.writeEchoRequest source destination identifier sequence identification data dst

    /// Writes a whole echo reply packet into `dst`: from `source` (the request's destination) to
    /// `destination` (its source), echoing identifier, sequence and data (RFC 792 / RFC 4443 §4.2).
    let writeEchoReply source destination identifier sequence identification data dst : int =
        IpOutput.writeEchoReply source destination identifier sequence identification data dst

    /// Cuts a whole packet (as written by writeUdp/writeEcho...) for a path MTU. IPv4 fragments
    /// carry the packet's own Identification; IPv6 fragments get a Fragment header with
    /// `identification` (RFC 7739: the caller picks it unpredictably). Throws ArgumentException
    /// when the packet does not parse or (IPv4) has Don't Fragment set and does not fit.
    let planFragments (packet: ReadOnlySpan<byte>) (mtu: int) (identification: uint32) : FragmentPlan =
        IpOutput.planFragments packet mtu identification

    /// Writes packet `index` (0 ≤ index < Count) of a plan into `dst` and returns its length.
    [<MethodImpl(MethodImplOptions.AggressiveInlining)>]
    let writeFragment (plan: FragmentPlan) (packet: ReadOnlySpan<byte>) (index: int) (dst: Span<byte>) : int =
        IpOutput.writeFragment plan packet index dst

    // ---------------------------------------------------------------------------------------
    // ICMP errors we send (IcmpErrors.fs)
    // ---------------------------------------------------------------------------------------

    /// Decides on and writes an ICMP error about `original` (a packet we received, IP header
    /// first) into `dst` (at least 1280 bytes): the RFC 1122 §3.2.2 / RFC 4443 §2.4(e) rules
    /// first, then the token bucket at `now`. Returns the new state (a token taken only when
    /// sent), the verdict and the length written (0 unless Sent). The error goes from our
    /// address to the original's source; a port unreachable in any-destination mode from the
    /// original's destination, the host it was for.
    let tryWriteError
        (now: int64)
        (error: OutgoingError)
        (original: ReadOnlySpan<byte>)
        (dst: Span<byte>)
        (state: IpLayerState)
        : struct (IpLayerState * ErrorVerdict * int) =
        IcmpErrors.tryWriteError now error original dst state

    /// Writes the first fragment of an abandoned datagram as it arrived, for quoting in a time
    /// exceeded: IPv4 header and payload; IPv6 unfragmentable part, the Fragment header
    /// (offset 0, M set) and payload. Returns the length. Throws ArgumentException when `dst`
    /// is too small.
    let writeFirstFragment (key: ReassemblyKey) (first: FirstFragment) (dst: Span<byte>) : int =
        IcmpErrors.writeFirstFragment key first dst
