/// A small reader of classic pcap files (the libpcap format, draft-ietf-opsawg-pcap), enough to
/// feed captured IP packets to the tests: both byte orders, microsecond and nanosecond
/// timestamps, and the link types the Linux tools write for IP traffic.
///
/// The file is test input but still untrusted: every length is checked against the bytes that
/// are really there, and a malformed file gives a `PcapError`, never an exception.
module NetStack.Tests.Pcap

open System
open System.Buffers.Binary
open System.IO

/// Why a pcap file (or one of its records) could not be read.
type PcapError =
    /// The file is shorter than the 24-byte file header.
    | FileTooShort of length: int
    /// The first four bytes are none of the four classic pcap magic numbers.
    | BadMagic of magic: uint32
    /// The major version is not 2 (the only classic pcap major version).
    | UnsupportedVersion of major: int * minor: int
    /// The link type is not one this reader can strip down to IP (the whole 32-bit field).
    | UnsupportedLinkType of linkType: uint32
    /// Fewer than 16 bytes remain where record `index` (from 0) should start.
    | RecordHeaderTruncated of index: int * offset: int
    /// Record `index` claims more captured bytes than the file holds or the format allows.
    | RecordTooLong of index: int * capturedLength: int * available: int
    /// Record `index` is shorter than its link-layer header.
    | LinkHeaderTruncated of index: int * needed: int * available: int
    /// Record `index` carries something other than IPv4 or IPv6 (an EtherType, or for raw IP
    /// the version nibble).
    | NotIp of index: int * protocol: int

/// The unit of a record's sub-second timestamp field, chosen by the file's magic number.
type TimestampResolution =
    /// Magic 0xA1B2C3D4: the fraction counts microseconds.
    | Microseconds
    /// Magic 0xA1B23C4D: the fraction counts nanoseconds.
    | Nanoseconds

/// One captured packet, reduced to its IP bytes.
type PcapPacket =
    {
        /// Position in the file, from 0 (tshark's frame.number is Index + 1).
        Index: int
        /// Seconds since the Unix epoch.
        TimestampSeconds: uint32
        /// Sub-second part, in the file's `TimestampResolution`.
        TimestampFraction: uint32
        /// Bytes of the frame as it was on the wire (the record's orig_len).
        OriginalLength: int
        /// Bytes of the frame stored in the file (the record's incl_len), link header included.
        CapturedLength: int
        /// The IP packet: the record's bytes after the link-layer header. It ends where the
        /// capture ended, so it may be cut short by the snap length or carry link-layer padding
        /// after the IP packet; the IP header's own length fields say where the packet ends.
        Ip: byte[]
    }

/// A whole capture file.
type PcapFile =
    {
        /// True when the file's integers are big-endian.
        BigEndian: bool
        /// What the timestamp fractions count.
        Resolution: TimestampResolution
        /// The file header's version (2.4 for every current writer).
        Version: int * int
        /// The file header's snapshot length.
        SnapLength: uint32
        /// The link-layer type (see `LinkType`).
        LinkType: int
        /// The packets, in file order.
        Packets: PcapPacket[]
    }

/// Link-layer header types (tcpdump.org "LINKTYPE_" values) this reader accepts.
module LinkType =
    /// LINKTYPE_ETHERNET (DLT_EN10MB): a 14-byte Ethernet II header, maybe 802.1Q tags.
    [<Literal>]
    let Ethernet = 1

    /// LINKTYPE_RAW: the record starts with the IP header.
    [<Literal>]
    let Raw = 101

    /// DLT_RAW as some platforms number it in files written by old libpcaps (also raw IP).
    [<Literal>]
    let RawAlt12 = 12

    /// DLT_RAW as OpenBSD numbers it (also raw IP).
    [<Literal>]
    let RawAlt14 = 14

    /// LINKTYPE_LINUX_SLL: Linux "cooked" header v1, 16 bytes, protocol at offset 14.
    [<Literal>]
    let LinuxSll = 113

    /// LINKTYPE_LINUX_SLL2: Linux "cooked" header v2, 20 bytes, protocol at offset 0.
    [<Literal>]
    let LinuxSll2 = 276

/// EtherType values (IEEE 802 numbers) that matter here.
module EtherType =
    /// IPv4.
    [<Literal>]
    let Ipv4 = 0x0800

    /// IPv6.
    [<Literal>]
    let Ipv6 = 0x86DD

    /// IEEE 802.1Q customer VLAN tag.
    [<Literal>]
    let Vlan = 0x8100

    /// IEEE 802.1ad service VLAN tag (QinQ outer tag).
    [<Literal>]
    let ServiceVlan = 0x88A8

    /// The pre-standard QinQ tag some switches used.
    [<Literal>]
    let LegacyQinQ = 0x9100

// File header (24 bytes): magic, version major/minor (2+2), thiszone, sigfigs (unused by every
// writer today), snaplen, link type. Record header (16 bytes): ts_sec, ts_frac, incl_len, orig_len.
[<Literal>]
let private FileHeaderLength = 24

[<Literal>]
let private RecordHeaderLength = 16

// libpcap refuses records longer than its largest snap length (256 KiB, MAXIMUM_SNAPLEN);
// a larger incl_len means a corrupt or hostile file, not a real capture.
[<Literal>]
let private MaxRecordLength = 262144

[<Literal>]
let private MicrosecondMagic = 0xA1B2C3D4u

[<Literal>]
let private NanosecondMagic = 0xA1B23C4Du

let private readU16 bigEndian (data: ReadOnlySpan<byte>) =
    if bigEndian then
        BinaryPrimitives.ReadUInt16BigEndian data
    else
        BinaryPrimitives.ReadUInt16LittleEndian data

let private readU32 bigEndian (data: ReadOnlySpan<byte>) =
    if bigEndian then
        BinaryPrimitives.ReadUInt32BigEndian data
    else
        BinaryPrimitives.ReadUInt32LittleEndian data

let private isIpEtherType etherType =
    etherType = EtherType.Ipv4 || etherType = EtherType.Ipv6

// A fixed-length link header with an EtherType at a known offset (the Linux cooked headers).
let private fixedHeader (index: int) (etherTypeAt: int) (headerLength: int) (frame: ReadOnlySpan<byte>) =
    if frame.Length < headerLength then
        Error(LinkHeaderTruncated(index, headerLength, frame.Length))
    else
        let etherType = int (BinaryPrimitives.ReadUInt16BigEndian(frame.Slice etherTypeAt))

        if isIpEtherType etherType then
            Ok headerLength
        else
            Error(NotIp(index, etherType))

/// Where the IP packet starts in one frame of the given link type, or why there is none.
/// Link-layer headers are always big-endian, whatever the file's byte order.
let ipOffset (linkType: int) (index: int) (frame: ReadOnlySpan<byte>) : Result<int, PcapError> =
    match linkType with
    | LinkType.Raw
    | LinkType.RawAlt12
    | LinkType.RawAlt14 ->
        if frame.Length < 1 then
            Error(LinkHeaderTruncated(index, 1, 0))
        else
            let version = int (frame.[0] >>> 4)

            if version = 4 || version = 6 then
                Ok 0
            else
                Error(NotIp(index, version))
    | LinkType.Ethernet ->
        // Destination and source MAC (6 + 6), then the EtherType. Each 802.1Q/802.1ad tag
        // inserts 4 bytes (its TPID sits where the EtherType was, then the 2-byte tag control),
        // and tags may stack (QinQ); the loop is bounded because every tag consumes 4 bytes.
        let mutable typeAt = 12
        let mutable result = ValueNone

        while result.IsNone do
            if frame.Length < typeAt + 2 then
                result <- ValueSome(Error(LinkHeaderTruncated(index, typeAt + 2, frame.Length)))
            else
                let etherType = int (BinaryPrimitives.ReadUInt16BigEndian(frame.Slice typeAt))

                if
                    etherType = EtherType.Vlan
                    || etherType = EtherType.ServiceVlan
                    || etherType = EtherType.LegacyQinQ
                then
                    typeAt <- typeAt + 4
                elif isIpEtherType etherType then
                    result <- ValueSome(Ok(typeAt + 2))
                else
                    result <- ValueSome(Error(NotIp(index, etherType)))

        result.Value
    | LinkType.LinuxSll ->
        // Packet type (2), ARPHRD type (2), address length (2), address (8), protocol (2).
        fixedHeader index 14 16 frame
    | LinkType.LinuxSll2 ->
        // Protocol (2), reserved (2), interface index (4), ARPHRD type (2), packet type (1),
        // address length (1), address (8).
        fixedHeader index 0 20 frame
    | other -> Error(UnsupportedLinkType(uint32 other))

/// Reads a whole classic pcap file from memory.
let read (data: byte[]) : Result<PcapFile, PcapError> =
    if isNull data || data.Length < FileHeaderLength then
        Error(FileTooShort(if isNull data then 0 else data.Length))
    else
        let span = ReadOnlySpan data
        let magicLe = BinaryPrimitives.ReadUInt32LittleEndian span
        let magicBe = BinaryPrimitives.ReadUInt32BigEndian span

        let format =
            if magicLe = MicrosecondMagic then
                Some(false, Microseconds)
            elif magicLe = NanosecondMagic then
                Some(false, Nanoseconds)
            elif magicBe = MicrosecondMagic then
                Some(true, Microseconds)
            elif magicBe = NanosecondMagic then
                Some(true, Nanoseconds)
            else
                None

        match format with
        | None -> Error(BadMagic magicBe)
        | Some(bigEndian, resolution) ->
            let major = int (readU16 bigEndian (span.Slice 4))
            let minor = int (readU16 bigEndian (span.Slice 6))
            let snapLength = readU32 bigEndian (span.Slice 16)
            let linkField = readU32 bigEndian (span.Slice 20)

            if major <> 2 then
                Error(UnsupportedVersion(major, minor))
            // The upper 16 bits may carry an FCS length and flags (draft-ietf-opsawg-pcap §4);
            // frames with a trailing FCS are not what this reader expects, so refuse them.
            elif linkField > 0xFFFFu then
                Error(UnsupportedLinkType linkField)
            else
                let linkType = int linkField

                match linkType with
                | LinkType.Raw
                | LinkType.RawAlt12
                | LinkType.RawAlt14
                | LinkType.Ethernet
                | LinkType.LinuxSll
                | LinkType.LinuxSll2 ->
                    let packets = ResizeArray<PcapPacket>()
                    let mutable offset = FileHeaderLength
                    let mutable error = None

                    while error.IsNone && offset < data.Length do
                        let index = packets.Count

                        if data.Length - offset < RecordHeaderLength then
                            error <- Some(RecordHeaderTruncated(index, offset))
                        else
                            let header = ReadOnlySpan(data, offset, RecordHeaderLength)
                            let seconds = readU32 bigEndian header
                            let fraction = readU32 bigEndian (header.Slice 4)
                            let captured = readU32 bigEndian (header.Slice 8)
                            let original = readU32 bigEndian (header.Slice 12)
                            let available = data.Length - offset - RecordHeaderLength

                            if captured > uint32 MaxRecordLength || int captured > available then
                                error <-
                                    Some(RecordTooLong(index, int (min captured (uint32 Int32.MaxValue)), available))
                            else
                                let frameStart = offset + RecordHeaderLength
                                let frame = ReadOnlySpan(data, frameStart, int captured)

                                match ipOffset linkType index frame with
                                | Error e -> error <- Some e
                                | Ok ipAt ->
                                    packets.Add
                                        {
                                            Index = index
                                            TimestampSeconds = seconds
                                            TimestampFraction = fraction
                                            OriginalLength = int (min original (uint32 Int32.MaxValue))
                                            CapturedLength = int captured
                                            Ip = frame.Slice(ipAt).ToArray()
                                        }

                                    offset <- frameStart + int captured

                    match error with
                    | Some e -> Error e
                    | None ->
                        Ok
                            {
                                BigEndian = bigEndian
                                Resolution = resolution
                                Version = (major, minor)
                                SnapLength = snapLength
                                LinkType = linkType
                                Packets = packets.ToArray()
                            }
                | _ -> Error(UnsupportedLinkType linkField)

/// Reads a classic pcap file from disk (I/O errors still raise: a missing file is a test bug).
let readFile (path: string) : Result<PcapFile, PcapError> = read (File.ReadAllBytes path)
