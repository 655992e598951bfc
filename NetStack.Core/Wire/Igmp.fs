namespace NetStack.Core.Wire

open System
open System.Buffers.Binary

/// Which version of the group membership protocol a message belongs to (IGMPv1..v3, RFC 1112,
/// RFC 2236, RFC 3376; MLDv1/v2, RFC 2710, RFC 3810, numbered 2 and 3 here as their IGMP twins).
type GroupProtocolVersion =
    /// IGMPv1 (RFC 1112 Appendix I).
    | V1 = 1
    /// IGMPv2 (RFC 2236) or MLDv1 (RFC 2710).
    | V2 = 2
    /// IGMPv3 (RFC 3376) or MLDv2 (RFC 3810).
    | V3 = 3

/// What a membership message is.
type GroupMessageKind =
    /// A query: general (group unspecified), group-specific, or group-and-source-specific.
    | Query = 0
    /// Another host's report (IGMPv1/v2 report, MLDv1 report): it may suppress ours (RFC 2236 §3).
    | Report = 1
    /// A leave (IGMPv2 leave, MLDv1 done): for routers.
    | Leave = 2
    /// An IGMPv3 / MLDv2 report: for routers (RFC 3376 §5: hosts do not suppress on them).
    | Report3 = 3

/// A parsed IGMP or MLD message: the fields a host acts on.
[<Struct>]
type GroupMessage =
    {
        /// What it is.
        Kind: GroupMessageKind
        /// Its version (a query's by its length and code, RFC 3376 §7.1, RFC 3810 §8.1).
        Version: GroupProtocolVersion
        /// The group (IPv4 in the low 32 bits of Low for IGMP; unspecified for a general query).
        Group4: Ipv4Address
        /// The MLD group.
        Group6: Ipv6Address
        /// Queries: the maximum response delay in microseconds (decoded; IGMPv1: 10 s, RFC 2236 §4).
        MaxResponseDelay: int64
        /// IGMPv3/MLDv2 queries: the Querier's Robustness Variable (0: none given).
        Robustness: int
        /// IGMPv3/MLDv2 queries: the Querier's Query Interval in seconds (0: none given).
        QueryInterval: int
        /// IGMPv3/MLDv2 queries: how many sources it names (group-and-source-specific when > 0).
        SourceCount: int
    }

/// Group record types of IGMPv3 and MLDv2 reports (RFC 3376 §4.2.12, RFC 3810 §5.2.12).
[<RequireQualifiedAccess>]
module GroupRecordType =
    /// MODE_IS_INCLUDE: a current-state record.
    [<Literal>]
    let ModeIsInclude = 1uy

    /// MODE_IS_EXCLUDE: a current-state record; with no sources, "every source" (a member).
    [<Literal>]
    let ModeIsExclude = 2uy

    /// CHANGE_TO_INCLUDE_MODE: with no sources, the host left the group.
    [<Literal>]
    let ChangeToInclude = 3uy

    /// CHANGE_TO_EXCLUDE_MODE: with no sources, the host joined the group.
    [<Literal>]
    let ChangeToExclude = 4uy

/// IGMP (IP protocol 2): queries and reports of versions 1-3 (RFC 1112, RFC 2236, RFC 3376).
[<RequireQualifiedAccess>]
module Igmp =

    /// The IP protocol number.
    [<Literal>]
    let Protocol = 2uy

    /// Membership query (all versions).
    [<Literal>]
    let Query = 0x11uy

    /// IGMPv1 membership report.
    [<Literal>]
    let ReportV1 = 0x12uy

    /// IGMPv2 membership report.
    [<Literal>]
    let ReportV2 = 0x16uy

    /// IGMPv2 leave group.
    [<Literal>]
    let LeaveV2 = 0x17uy

    /// IGMPv3 membership report.
    [<Literal>]
    let ReportV3 = 0x22uy

    /// 224.0.0.1: all systems on this subnet (every host is a member, never reported).
    let AllSystems = Ipv4Address.OfOctets(224uy, 0uy, 0uy, 1uy)

    /// 224.0.0.2: all routers (IGMPv2 leaves go there, RFC 2236 §3).
    let AllRouters = Ipv4Address.OfOctets(224uy, 0uy, 0uy, 2uy)

    /// 224.0.0.22: IGMPv3-capable routers (v3 reports go there, RFC 3376 §4.2.14).
    let AllV3Routers = Ipv4Address.OfOctets(224uy, 0uy, 0uy, 22uy)

    /// RFC 3376 §4.1.1 / §4.1.7: a Max Resp Code or QQIC below 128 is the value itself; otherwise
    /// a floating-point value |1|exp(3)|mant(4)|: (mant | 0x10) << (exp + 3).
    let decodeCode (code: byte) : int =
        if code < 128uy then
            int code
        else
            let exp = int (code >>> 4) &&& 7
            let mant = int code &&& 0xF
            (mant ||| 0x10) <<< (exp + 3)

    /// Reads an IGMP message (the IP payload) and verifies its checksum (RFC 1112: the one's
    /// complement sum of the whole message). Never throws.
    let parse (message: ReadOnlySpan<byte>) : Result<GroupMessage, ParseError> =
        if message.Length < 8 then
            Error(Truncated(8, message.Length))
        elif not (Checksum.verify 0UL message) then
            Error BadChecksum
        else
            let group = Ipv4Address.Read(message.Slice 4)

            let basic =
                {
                    Kind = GroupMessageKind.Query
                    Version = GroupProtocolVersion.V3
                    Group4 = group
                    Group6 = Ipv6Address.Any
                    MaxResponseDelay = 0L
                    Robustness = 0
                    QueryInterval = 0
                    SourceCount = 0
                }

            match message.[0] with
            | Query ->
                // RFC 3376 §7.1: 8 bytes and code 0: v1; 8 bytes: v2; 12 or more: v3; else ignored.
                if message.Length = 8 then
                    if message.[1] = 0uy then
                        Ok
                            { basic with
                                Version = GroupProtocolVersion.V1
                                MaxResponseDelay = 10_000_000L
                            }
                    else
                        Ok
                            { basic with
                                Version = GroupProtocolVersion.V2
                                MaxResponseDelay = int64 message.[1] * 100_000L
                            }
                elif message.Length < 12 then
                    Error(BadField "igmp query length")
                else
                    let sources = int (BinaryPrimitives.ReadUInt16BigEndian(message.Slice 10))

                    if message.Length < 12 + 4 * sources then
                        Error(Truncated(12 + 4 * sources, message.Length))
                    else
                        Ok
                            { basic with
                                MaxResponseDelay = int64 (decodeCode message.[1]) * 100_000L
                                Robustness = int (message.[8] &&& 7uy)
                                QueryInterval = decodeCode message.[9]
                                SourceCount = sources
                            }
            | ReportV1 ->
                Ok
                    { basic with
                        Kind = GroupMessageKind.Report
                        Version = GroupProtocolVersion.V1
                    }
            | ReportV2 ->
                Ok
                    { basic with
                        Kind = GroupMessageKind.Report
                        Version = GroupProtocolVersion.V2
                    }
            | LeaveV2 ->
                Ok
                    { basic with
                        Kind = GroupMessageKind.Leave
                        Version = GroupProtocolVersion.V2
                    }
            | ReportV3 ->
                Ok
                    { basic with
                        Kind = GroupMessageKind.Report3
                        Group4 = Ipv4Address.Any
                    }
            | t -> Error(BadField $"igmp type {t}")

    /// Writes an 8-byte IGMPv1/v2 message (`messageType`: ReportV1, ReportV2 or LeaveV2) about
    /// `group` into `dst`; returns 8. Throws ArgumentException when `dst` is shorter.
    let writeV2 (messageType: byte) (group: Ipv4Address) (dst: Span<byte>) : int =
        if dst.Length < 8 then
            invalidArg (nameof dst) "An IGMPv2 message needs 8 bytes."

        dst.[0] <- messageType
        dst.[1] <- 0uy
        dst.[2] <- 0uy
        dst.[3] <- 0uy
        group.Write(dst.Slice 4)
        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 2, Checksum.compute (Span<byte>.op_Implicit(dst.Slice(0, 8))))
        8

    /// Writes an IGMPv3 report (RFC 3376 §4.2) with one source-less record per group, of the
    /// given record types, into `dst`; returns its length (8 + 8 per record). Throws
    /// ArgumentException when the arrays differ in length or `dst` is too short.
    let writeV3Report (recordTypes: byte[]) (groups: Ipv4Address[]) (dst: Span<byte>) : int =
        if recordTypes.Length <> groups.Length then
            invalidArg (nameof groups) "One record type per group."

        let length = 8 + 8 * groups.Length

        if dst.Length < length then
            invalidArg (nameof dst) $"The report needs {length} bytes."

        dst.Slice(0, length).Clear()
        dst.[0] <- ReportV3
        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 6, uint16 groups.Length)

        for i in 0 .. groups.Length - 1 do
            let record = dst.Slice(8 + 8 * i)
            record.[0] <- recordTypes.[i]
            groups.[i].Write(record.Slice 4)

        BinaryPrimitives.WriteUInt16BigEndian(
            dst.Slice 2,
            Checksum.compute (Span<byte>.op_Implicit(dst.Slice(0, length)))
        )

        length

/// MLD (ICMPv6 types 130, 131, 132, 143): queries and reports of MLDv1 (RFC 2710) and MLDv2
/// (RFC 3810).
[<RequireQualifiedAccess>]
module Mld =

    /// Multicast listener query (both versions).
    [<Literal>]
    let Query = 130uy

    /// MLDv1 report.
    [<Literal>]
    let ReportV1 = 131uy

    /// MLDv1 done.
    [<Literal>]
    let Done = 132uy

    /// MLDv2 report.
    [<Literal>]
    let ReportV2 = 143uy

    /// True for the four MLD message types.
    let isMld (messageType: byte) =
        messageType = Query
        || messageType = ReportV1
        || messageType = Done
        || messageType = ReportV2

    /// ff02::1, all nodes (never reported, RFC 3810 §6).
    let AllNodes = Ipv6Address(0xFF02_0000_0000_0000UL, 1UL)

    /// ff02::2, all routers (MLDv1 done messages go there, RFC 2710 §4).
    let AllRouters = Ipv6Address(0xFF02_0000_0000_0000UL, 2UL)

    /// ff02::16, all MLDv2-capable routers (MLDv2 reports go there, RFC 3810 §5.2.14).
    let AllV2Routers = Ipv6Address(0xFF02_0000_0000_0000UL, 0x16UL)

    /// RFC 3810 §5.1.3: a Maximum Response Code below 32768 is milliseconds; otherwise
    /// |1|exp(3)|mant(12)|: (mant | 0x1000) << (exp + 3).
    let decodeMaxResponseCode (code: uint16) : int =
        if code < 32768us then
            int code
        else
            let exp = int (code >>> 12) &&& 7
            let mant = int code &&& 0xFFF
            (mant ||| 0x1000) <<< (exp + 3)

    /// Reads an MLD message (the ICMPv6 message) sent from `source` to `destination`,
    /// verifying the ICMPv6 checksum. Never throws.
    let parse
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (message: ReadOnlySpan<byte>)
        : Result<GroupMessage, ParseError> =
        if message.Length < 8 then
            Error(Truncated(8, message.Length))
        elif
            not (Checksum.verify (Checksum.pseudoHeaderV6 source destination IpProtocol.Icmpv6 message.Length) message)
        then
            Error BadChecksum
        else
            let basic =
                {
                    Kind = GroupMessageKind.Query
                    Version = GroupProtocolVersion.V3
                    Group4 = Ipv4Address.Any
                    Group6 = Ipv6Address.Any
                    MaxResponseDelay = 0L
                    Robustness = 0
                    QueryInterval = 0
                    SourceCount = 0
                }

            let v1 kind (length: int) (group: Ipv6Address) =
                if length < 24 then
                    Error(Truncated(24, length))
                else
                    Ok
                        { basic with
                            Kind = kind
                            Version = GroupProtocolVersion.V2
                            Group6 = group
                        }

            let v1Group =
                if message.Length >= 24 then
                    Ipv6Address.Read(message.Slice 8)
                else
                    Ipv6Address.Any

            match message.[0] with
            | Query ->
                // RFC 3810 §8.1: 24 bytes: MLDv1; 28 or more: MLDv2; else ignored.
                if message.Length < 24 then
                    Error(Truncated(24, message.Length))
                else
                    let delay =
                        int64 (decodeMaxResponseCode (BinaryPrimitives.ReadUInt16BigEndian(message.Slice 4)))
                        * 1000L

                    let group = Ipv6Address.Read(message.Slice 8)

                    if message.Length = 24 then
                        Ok
                            { basic with
                                Version = GroupProtocolVersion.V2
                                Group6 = group
                                MaxResponseDelay = delay
                            }
                    elif message.Length < 28 then
                        Error(BadField "mld query length")
                    else
                        let sources = int (BinaryPrimitives.ReadUInt16BigEndian(message.Slice 26))

                        if message.Length < 28 + 16 * sources then
                            Error(Truncated(28 + 16 * sources, message.Length))
                        else
                            Ok
                                { basic with
                                    Group6 = group
                                    MaxResponseDelay = delay
                                    Robustness = int (message.[24] &&& 7uy)
                                    QueryInterval = Igmp.decodeCode message.[25]
                                    SourceCount = sources
                                }
            | ReportV1 -> v1 GroupMessageKind.Report message.Length v1Group
            | Done -> v1 GroupMessageKind.Leave message.Length v1Group
            | ReportV2 ->
                Ok
                    { basic with
                        Kind = GroupMessageKind.Report3
                    }
            | t -> Error(BadField $"mld type {t}")

    let private checksum (source: Ipv6Address) (destination: Ipv6Address) (message: Span<byte>) =
        let sum =
            Checksum.sum
                (Checksum.pseudoHeaderV6 source destination IpProtocol.Icmpv6 message.Length)
                (Span<byte>.op_Implicit message)

        BinaryPrimitives.WriteUInt16BigEndian(message.Slice 2, Checksum.finish sum)

    /// Writes a 24-byte MLDv1 report or done (`messageType`) about `group` from `source` to
    /// `destination` into `dst`; returns 24. Throws ArgumentException when `dst` is shorter.
    let writeV1
        (messageType: byte)
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (group: Ipv6Address)
        (dst: Span<byte>)
        : int =
        if dst.Length < 24 then
            invalidArg (nameof dst) "An MLDv1 message needs 24 bytes."

        dst.Slice(0, 24).Clear()
        dst.[0] <- messageType
        group.Write(dst.Slice 8)
        checksum source destination (dst.Slice(0, 24))
        24

    /// Writes an MLDv2 report (RFC 3810 §5.2) from `source` to `destination` with one
    /// source-less record per group into `dst`; returns its length (8 + 20 per record).
    /// Throws ArgumentException when the arrays differ in length or `dst` is too short.
    let writeV2Report
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (recordTypes: byte[])
        (groups: Ipv6Address[])
        (dst: Span<byte>)
        : int =
        if recordTypes.Length <> groups.Length then
            invalidArg (nameof groups) "One record type per group."

        let length = 8 + 20 * groups.Length

        if dst.Length < length then
            invalidArg (nameof dst) $"The report needs {length} bytes."

        dst.Slice(0, length).Clear()
        dst.[0] <- ReportV2
        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 6, uint16 groups.Length)

        for i in 0 .. groups.Length - 1 do
            let record = dst.Slice(8 + 20 * i)
            record.[0] <- recordTypes.[i]
            groups.[i].Write(record.Slice 4)

        checksum source destination (dst.Slice(0, length))
        length
