namespace NetStack.Core.Wire

open System
open System.Buffers.Binary

/// The flags byte of a virtio-net header (virtio spec 1.x §5.1.6, linux/virtio_net.h).
[<Flags>]
type VirtioNetFlags =
    /// No flag: the packet's checksums are complete (or were not looked at).
    | None = 0uy
    /// VIRTIO_NET_HDR_F_NEEDS_CSUM: the transport checksum is partial. The field at
    /// ChecksumStart + ChecksumOffset holds only the folded pseudo-header sum; whoever delivers the
    /// packet sums the bytes from ChecksumStart to the end into it (the Linux CHECKSUM_PARTIAL).
    | NeedsChecksum = 1uy
    /// VIRTIO_NET_HDR_F_DATA_VALID: the sender already verified the transport checksum
    /// (the Linux CHECKSUM_UNNECESSARY).
    | DataValid = 2uy

/// The gso_type byte of a virtio-net header: which segmentation the packet still needs.
type VirtioGsoType =
    /// VIRTIO_NET_HDR_GSO_NONE: an ordinary packet.
    | None = 0uy
    /// VIRTIO_NET_HDR_GSO_TCPV4: a TCP/IPv4 super-segment, cut into GsoSize-byte payloads.
    | TcpV4 = 1uy
    /// VIRTIO_NET_HDR_GSO_UDP: UDP fragmentation offload (UFO), long gone from Linux; refused.
    | Udp = 3uy
    /// VIRTIO_NET_HDR_GSO_TCPV6: a TCP/IPv6 super-segment.
    | TcpV6 = 4uy
    /// VIRTIO_NET_HDR_GSO_UDP_L4: UDP segmentation (USO), one datagram per GsoSize payload bytes.
    | UdpL4 = 5uy
    /// VIRTIO_NET_HDR_GSO_ECN (a bit, or'ed into the type): the TCP segments carry ECN's CWR.
    | Ecn = 0x80uy

/// A virtio-net header (`struct virtio_net_hdr`, 10 bytes), the metadata a Linux TUN device
/// opened with IFF_VNET_HDR puts in front of every packet in both directions. Offsets are from
/// the start of the IP packet (a TUN device has no link-layer header).
[<Struct>]
type VirtioNetHeader =
    {
        /// flags: NEEDS_CSUM, DATA_VALID.
        Flags: VirtioNetFlags
        /// gso_type, the ECN bit included.
        GsoType: VirtioGsoType
        /// hdr_len: bytes of headers (IP + transport) in front of the payload; a hint for the
        /// kernel, which copies that much into the packet's linear part.
        HeaderLength: uint16
        /// gso_size: the payload bytes of each segment (all but the last, which may be shorter).
        GsoSize: uint16
        /// csum_start: where the checksummed range starts (the transport header).
        ChecksumStart: uint16
        /// csum_offset: where the checksum field is, from ChecksumStart (16 for TCP, 6 for UDP).
        ChecksumOffset: uint16
    }

    /// The header of an ordinary packet: no offload at all.
    static member None =
        {
            Flags = VirtioNetFlags.None
            GsoType = VirtioGsoType.None
            HeaderLength = 0us
            GsoSize = 0us
            ChecksumStart = 0us
            ChecksumOffset = 0us
        }

    /// True when the transport checksum is partial (NEEDS_CSUM).
    member this.NeedsChecksum =
        this.Flags &&& VirtioNetFlags.NeedsChecksum = VirtioNetFlags.NeedsChecksum

    /// True when the sender vouches for the transport checksum (DATA_VALID).
    member this.DataValid =
        this.Flags &&& VirtioNetFlags.DataValid = VirtioNetFlags.DataValid

    /// The segmentation type without the ECN bit.
    member this.Segmentation: VirtioGsoType = this.GsoType &&& ~~~VirtioGsoType.Ecn

    /// True when the packet is a super-segment (any gso_type but NONE).
    member this.IsSegmented = this.Segmentation <> VirtioGsoType.None

    /// True when the receiver need not verify the transport checksum: either the sender
    /// verified it (DATA_VALID) or it is partial because the packet never left this machine
    /// (NEEDS_CSUM; Linux treats CHECKSUM_PARTIAL on receive the same way).
    member this.TransportChecksumTrusted =
        this.Flags &&& (VirtioNetFlags.NeedsChecksum ||| VirtioNetFlags.DataValid)
        <> VirtioNetFlags.None

/// The virtio-net header codec and the checksum work that goes with it.
///
/// Byte order: virtio 1.x headers are little-endian; the legacy header is in the host's order,
/// which on the little-endian machines .NET runs Linux on (x86_64, arm64) is the same. The TUN
/// driver (drivers/net/tun.c, tun_is_little_endian) uses little-endian when the host is, or when
/// TUNSETVNETLE is set, which the device layer does on a big-endian host.
[<RequireQualifiedAccess>]
module VirtioNet =

    /// sizeof(struct virtio_net_hdr): the header a TUN device uses unless TUNSETVNETHDRSZ says more.
    [<Literal>]
    let HeaderLength = 10

    /// The offset of the checksum field in a TCP header (RFC 9293 §3.1).
    [<Literal>]
    let TcpChecksumOffset = 16

    /// The offset of the checksum field in a UDP header (RFC 768).
    [<Literal>]
    let UdpChecksumOffset = 6

    let private knownFlags = VirtioNetFlags.NeedsChecksum ||| VirtioNetFlags.DataValid

    /// Reads a header from the first 10 bytes of `src`. Refuses what the kernel's
    /// virtio_net_hdr_to_skb refuses without looking at the packet: an unknown gso_type, GSO
    /// with gso_size 0, UFO (GSO_UDP), and the ECN bit on anything but TCP. Unknown flag bits
    /// (RSC_INFO and later ones) are refused too: their meaning would change the fields.
    let parse (src: ReadOnlySpan<byte>) : Result<VirtioNetHeader, ParseError> =
        if src.Length < HeaderLength then
            Error(Truncated(HeaderLength, src.Length))
        else
            let flags = LanguagePrimitives.EnumOfValue<byte, VirtioNetFlags> src.[0]
            let gso = LanguagePrimitives.EnumOfValue<byte, VirtioGsoType> src.[1]
            let kind = gso &&& ~~~VirtioGsoType.Ecn
            let gsoSize = BinaryPrimitives.ReadUInt16LittleEndian(src.Slice 4)

            if flags &&& ~~~knownFlags <> VirtioNetFlags.None then
                Error(BadField "flags")
            elif
                kind <> VirtioGsoType.None
                && kind <> VirtioGsoType.TcpV4
                && kind <> VirtioGsoType.TcpV6
                && kind <> VirtioGsoType.UdpL4
            then
                Error(BadField "gso_type")
            elif
                gso &&& VirtioGsoType.Ecn = VirtioGsoType.Ecn
                && kind <> VirtioGsoType.TcpV4
                && kind <> VirtioGsoType.TcpV6
            then
                Error(BadField "gso_type")
            elif kind <> VirtioGsoType.None && gsoSize = 0us then
                Error(BadField "gso_size")
            else
                Ok
                    {
                        Flags = flags
                        GsoType = gso
                        HeaderLength = BinaryPrimitives.ReadUInt16LittleEndian(src.Slice 2)
                        GsoSize = gsoSize
                        ChecksumStart = BinaryPrimitives.ReadUInt16LittleEndian(src.Slice 6)
                        ChecksumOffset = BinaryPrimitives.ReadUInt16LittleEndian(src.Slice 8)
                    }

    /// Writes `header` into the first 10 bytes of `dst` and returns 10. Throws ArgumentException
    /// when `dst` is shorter.
    let write (header: VirtioNetHeader) (dst: Span<byte>) : int =
        if dst.Length < HeaderLength then
            invalidArg (nameof dst) $"A virtio-net header needs {HeaderLength} bytes; the buffer has {dst.Length}."

        dst.[0] <- byte header.Flags
        dst.[1] <- byte header.GsoType
        BinaryPrimitives.WriteUInt16LittleEndian(dst.Slice 2, header.HeaderLength)
        BinaryPrimitives.WriteUInt16LittleEndian(dst.Slice 4, header.GsoSize)
        BinaryPrimitives.WriteUInt16LittleEndian(dst.Slice 6, header.ChecksumStart)
        BinaryPrimitives.WriteUInt16LittleEndian(dst.Slice 8, header.ChecksumOffset)
        HeaderLength

    /// The header for a TCP super-segment whose IP header is `ipHeaderLength` bytes and TCP
    /// header (options included) `tcpHeaderLength` bytes, to be cut into `segmentSize`-byte
    /// payloads: GSO TCPV4/TCPV6, NEEDS_CSUM over the TCP segment. The TCP checksum field must
    /// then hold the pseudo-header sum (see `partialChecksum`). A `segmentSize` of 0 gives a
    /// plain checksum-offloaded packet (gso NONE).
    let tcpSegments (ipv6: bool) (ipHeaderLength: int) (tcpHeaderLength: int) (segmentSize: int) : VirtioNetHeader =
        {
            Flags = VirtioNetFlags.NeedsChecksum
            GsoType =
                (if segmentSize = 0 then VirtioGsoType.None
                 elif ipv6 then VirtioGsoType.TcpV6
                 else VirtioGsoType.TcpV4)
            HeaderLength = uint16 (ipHeaderLength + tcpHeaderLength)
            GsoSize = uint16 segmentSize
            ChecksumStart = uint16 ipHeaderLength
            ChecksumOffset = uint16 TcpChecksumOffset
        }

    /// The header for UDP datagrams sent as one super-datagram (USO, gso UDP_L4): each
    /// `segmentSize` payload bytes become one datagram with its own UDP header.
    let udpSegments (ipHeaderLength: int) (segmentSize: int) : VirtioNetHeader =
        {
            Flags = VirtioNetFlags.NeedsChecksum
            GsoType = VirtioGsoType.UdpL4
            HeaderLength = uint16 (ipHeaderLength + Udp.HeaderLength)
            GsoSize = uint16 segmentSize
            ChecksumStart = uint16 ipHeaderLength
            ChecksumOffset = uint16 UdpChecksumOffset
        }

    /// Moves the offsets of `header` by `delta` bytes, for a link-layer header in front of the
    /// IP packet: a TAP device's virtio-net header counts csum_start and hdr_len from the start
    /// of the Ethernet frame (14 bytes, 18 with an 802.1Q tag), the engine's from the IP header
    /// (linux/virtio_net.h, virtio_net_hdr_from_skb adds the VLAN tag's 4 bytes too). Writing a
    /// frame shifts by +n, reading one by -n. csum_start moves only with NEEDS_CSUM (it means
    /// nothing without), hdr_len only when set (0 means "no hint"). ValueNone when a moved offset
    /// leaves 0..65535: a partial checksum that would start inside the link-layer header.
    let shift (delta: int) (header: VirtioNetHeader) : VirtioNetHeader voption =
        let start =
            if header.NeedsChecksum then
                int header.ChecksumStart + delta
            else
                int header.ChecksumStart

        let headers =
            if header.HeaderLength = 0us then
                0
            else
                int header.HeaderLength + delta

        if start < 0 || start > 0xFFFF || headers < 0 || headers > 0xFFFF then
            ValueNone
        else
            ValueSome
                { header with
                    ChecksumStart = uint16 start
                    HeaderLength = uint16 headers
                }

    /// The value a partial (NEEDS_CSUM) checksum field holds: the folded pseudo-header sum,
    /// not complemented (Linux: `~tcp_v4_check(len, saddr, daddr, 0)`). The deliverer adds the
    /// bytes after it and complements; `pseudoHeader` is Checksum.pseudoHeaderV4/V6 of the whole
    /// transport length.
    let partialChecksum (pseudoHeader: uint64) : uint16 = Checksum.fold pseudoHeader

    /// Completes a NEEDS_CSUM checksum in place, as Linux's skb_checksum_help does: sums
    /// `packet` from ChecksumStart to the end (the partial field included) and stores the
    /// complement in the field. Returns false, changing nothing, when the header is not
    /// NEEDS_CSUM or its offsets do not fit the packet.
    let completeChecksum (header: VirtioNetHeader) (packet: Span<byte>) : bool =
        let start = int header.ChecksumStart
        let field = start + int header.ChecksumOffset

        if not header.NeedsChecksum || field + 2 > packet.Length then
            false
        else
            let covered: ReadOnlySpan<byte> = Span<byte>.op_Implicit(packet.Slice start)
            let sum = Checksum.sum 0UL covered
            let mutable value = Checksum.finish sum
            // RFC 768: a UDP checksum that computes to zero is sent as all ones (zero means none).
            if value = 0us && header.ChecksumOffset = uint16 UdpChecksumOffset then
                value <- 0xFFFFus

            BinaryPrimitives.WriteUInt16BigEndian(packet.Slice field, value)
            true
