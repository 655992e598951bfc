namespace NetStack.Core.Link

open System
open System.Buffers.Binary
open NetStack.Core.Wire

/// A Prefix Information option (RFC 4861 §4.6.2), as carried by router advertisements.
[<Struct>]
type PrefixInformation =
    {
        /// Leading bits of Prefix that are the prefix (0..128).
        PrefixLength: int
        /// L flag: the prefix is on-link.
        OnLink: bool
        /// A flag: the prefix may be used for stateless address autoconfiguration (RFC 4862).
        Autonomous: bool
        /// Valid lifetime in seconds (0xFFFFFFFF = infinity).
        ValidLifetime: uint32
        /// Preferred lifetime in seconds (0xFFFFFFFF = infinity).
        PreferredLifetime: uint32
        /// The prefix (bits past PrefixLength are ignored by receivers).
        Prefix: Ipv6Address
    }

/// A parsed Neighbor Discovery message (RFC 4861 §4): router solicitation and advertisement,
/// neighbor solicitation and advertisement, with the options this stack uses. Fields that the
/// message type does not carry are zero / false / ValueNone.
[<Struct>]
type NdpMessage =
    {
        /// The ICMPv6 type: 133..136 (see Ndp.MessageType).
        Type: byte
        /// NS/NA: the target address.
        Target: Ipv6Address
        /// NA: R flag, the sender is a router.
        Router: bool
        /// NA: S flag, sent in response to a solicitation.
        Solicited: bool
        /// NA: O flag, the advertised link-layer address should override a cached one.
        Override: bool
        /// RA: Cur Hop Limit (0: unspecified).
        CurHopLimit: byte
        /// RA: M flag (addresses from DHCPv6).
        Managed: bool
        /// RA: O flag (other configuration from DHCPv6).
        OtherConfiguration: bool
        /// RA: Router Lifetime in seconds (0: not a default router).
        RouterLifetime: uint16
        /// RA: Reachable Time in milliseconds (0: unspecified).
        ReachableTime: uint32
        /// RA: Retrans Timer in milliseconds (0: unspecified).
        RetransTimer: uint32
        /// The Source Link-Layer Address option, if present.
        SourceLinkAddress: MacAddress voption
        /// The Target Link-Layer Address option, if present.
        TargetLinkAddress: MacAddress voption
        /// RA: the MTU option's value, or 0 when absent.
        Mtu: uint32
        /// RA: the first Prefix Information option, if any (see PrefixCount).
        Prefix: PrefixInformation voption
        /// RA: how many Prefix Information options the message carries.
        PrefixCount: int
    }

/// Neighbor Discovery for IPv6 (RFC 4861): validity checks of §6.1 and §7.1, parse and build.
/// Messages are ICMPv6, so the checksum covers the IPv6 pseudo-header.
module Ndp =

    /// ND message types (RFC 4861 §4).
    module MessageType =
        /// Router solicitation (§4.1).
        [<Literal>]
        let RouterSolicitation = 133uy

        /// Router advertisement (§4.2).
        [<Literal>]
        let RouterAdvertisement = 134uy

        /// Neighbor solicitation (§4.3).
        [<Literal>]
        let NeighborSolicitation = 135uy

        /// Neighbor advertisement (§4.4).
        [<Literal>]
        let NeighborAdvertisement = 136uy

        /// Redirect (§4.5): recognised so it is not mistaken for an unknown type, not acted on.
        [<Literal>]
        let Redirect = 137uy

    /// ND option types (RFC 4861 §4.6).
    module OptionType =
        /// Source link-layer address.
        [<Literal>]
        let SourceLinkAddress = 1uy

        /// Target link-layer address.
        [<Literal>]
        let TargetLinkAddress = 2uy

        /// Prefix information.
        [<Literal>]
        let PrefixInformation = 3uy

        /// MTU.
        [<Literal>]
        let Mtu = 5uy

        /// Recursive DNS Server (RFC 8106 §5.1).
        [<Literal>]
        let RecursiveDnsServer = 25uy

    /// Every ND message must arrive with hop limit 255: proof it was not forwarded by a router
    /// (§6.1.1, §6.1.2, §7.1.1, §7.1.2), and every ND message we send carries it.
    [<Literal>]
    let HopLimit = 255uy

    /// RS: the ICMPv6 header (8 bytes, reserved).
    [<Literal>]
    let RouterSolicitationLength = 8

    /// RA: header plus hop limit, flags, lifetime, reachable time, retrans timer.
    [<Literal>]
    let RouterAdvertisementLength = 16

    /// NS/NA: header plus the 16-byte target.
    [<Literal>]
    let NeighborMessageLength = 24

    /// A link-layer address option for Ethernet: type, length 1, six octets (RFC 2464 §6).
    [<Literal>]
    let LinkAddressOptionLength = 8

    /// ff02::1, all nodes on the link.
    let AllNodes = Ipv6Address(0xFF02_0000_0000_0000UL, 1UL)

    /// ff02::2, all routers on the link.
    let AllRouters = Ipv6Address(0xFF02_0000_0000_0000UL, 2UL)

    /// The solicited-node multicast address of `address`: ff02::1:ff00:0/104 plus its last 24
    /// bits (RFC 4291 §2.7.1). Neighbor solicitations for `address` are sent there.
    let solicitedNode (address: Ipv6Address) =
        Ipv6Address(0xFF02_0000_0000_0000UL, 0x0000_0001_FF00_0000UL ||| (address.Low &&& 0xFF_FFFFUL))

    /// True for fe80::/10.
    let isLinkLocal (address: Ipv6Address) = (address.High >>> 54) = 0x3FAUL

    /// True for ff02::1:ffXX:XXXX.
    let isSolicitedNode (address: Ipv6Address) =
        address.High = 0xFF02_0000_0000_0000UL
        && (address.Low &&& 0xFFFF_FFFF_FF00_0000UL) = 0x0000_0001_FF00_0000UL

    let private empty (messageType: byte) =
        {
            Type = messageType
            Target = Ipv6Address.Any
            Router = false
            Solicited = false
            Override = false
            CurHopLimit = 0uy
            Managed = false
            OtherConfiguration = false
            RouterLifetime = 0us
            ReachableTime = 0u
            RetransTimer = 0u
            SourceLinkAddress = ValueNone
            TargetLinkAddress = ValueNone
            Mtu = 0u
            Prefix = ValueNone
            PrefixCount = 0
        }

    /// Walks the options from `offset`: every option's length must be non-zero and inside the
    /// message (§6.1/§7.1 "all included options have a length that is greater than zero").
    /// Unknown options are skipped (§4.6: "silently ignore"); link-layer options of another
    /// length than Ethernet's are an error.
    let private readOptions (message: ReadOnlySpan<byte>) (offset: int) (parsed: NdpMessage) =
        let mutable m = parsed
        let mutable at = offset
        let mutable error = ValueNone

        while error.IsNone && at < message.Length do
            if message.Length - at < 2 then
                error <- ValueSome(BadOptionLength(at - offset))
            else
                let kind = message.[at]
                let length = int message.[at + 1] * 8

                if length = 0 || at + length > message.Length then
                    error <- ValueSome(BadOptionLength(at - offset))
                else
                    match kind with
                    | OptionType.SourceLinkAddress
                    | OptionType.TargetLinkAddress when length <> LinkAddressOptionLength ->
                        error <- ValueSome(BadOptionSize(int kind, length))
                    | OptionType.SourceLinkAddress ->
                        m <-
                            { m with
                                SourceLinkAddress = ValueSome(MacAddress.Read(message.Slice(at + 2)))
                            }
                    | OptionType.TargetLinkAddress ->
                        m <-
                            { m with
                                TargetLinkAddress = ValueSome(MacAddress.Read(message.Slice(at + 2)))
                            }
                    | OptionType.Mtu when length <> 8 -> error <- ValueSome(BadOptionSize(int kind, length))
                    | OptionType.Mtu ->
                        m <-
                            { m with
                                Mtu = BinaryPrimitives.ReadUInt32BigEndian(message.Slice(at + 4))
                            }
                    | OptionType.PrefixInformation when length <> 32 ->
                        error <- ValueSome(BadOptionSize(int kind, length))
                    | OptionType.PrefixInformation ->
                        let prefixLength = int message.[at + 2]

                        if prefixLength > 128 then
                            error <- ValueSome(BadField "prefix length")
                        else
                            let flags = message.[at + 3]

                            let info =
                                {
                                    PrefixLength = prefixLength
                                    OnLink = flags &&& 0x80uy <> 0uy
                                    Autonomous = flags &&& 0x40uy <> 0uy
                                    ValidLifetime = BinaryPrimitives.ReadUInt32BigEndian(message.Slice(at + 4))
                                    PreferredLifetime = BinaryPrimitives.ReadUInt32BigEndian(message.Slice(at + 8))
                                    Prefix = Ipv6Address.Read(message.Slice(at + 16))
                                }

                            m <-
                                { m with
                                    Prefix = (if m.PrefixCount = 0 then ValueSome info else m.Prefix)
                                    PrefixCount = m.PrefixCount + 1
                                }
                    | _ -> ()

                    at <- at + length

        match error with
        | ValueSome e -> Error e
        | ValueNone -> Ok m

    /// Parses and validates an ND message: `message` is the whole ICMPv6 message (the IPv6
    /// payload), `source`, `destination` and `hopLimit` come from its IPv6 header. The checks are
    /// those of RFC 4861 §6.1.1 (RS), §6.1.2 (RA), §7.1.1 (NS) and §7.1.2 (NA): hop limit 255,
    /// valid checksum, code 0, the minimum length, non-zero option lengths, a unicast target,
    /// no source link-layer address from the unspecified address (which may only solicit a
    /// solicited-node group), a link-local RA source, no S flag on a multicast NA. Any other
    /// ICMPv6 type is BadField "type".
    let parse
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (hopLimit: byte)
        (message: ReadOnlySpan<byte>)
        : Result<NdpMessage, ParseError> =
        if message.Length < 8 then
            Error(Truncated(8, message.Length))
        else
            let messageType = message.[0]

            let minimum =
                match messageType with
                | MessageType.RouterSolicitation -> RouterSolicitationLength
                | MessageType.RouterAdvertisement -> RouterAdvertisementLength
                | MessageType.NeighborSolicitation
                | MessageType.NeighborAdvertisement -> NeighborMessageLength
                | _ -> -1

            if minimum < 0 then
                Error(BadField "type")
            elif message.Length < minimum then
                Error(Truncated(minimum, message.Length))
            elif hopLimit <> HopLimit then
                Error(BadField "hop limit")
            elif message.[1] <> 0uy then
                Error(BadField "code")
            elif
                not (
                    Checksum.verify
                        (Checksum.pseudoHeaderV6 source destination IpProtocol.Icmpv6 message.Length)
                        message
                )
            then
                Error BadChecksum
            else
                let unspecified = source = Ipv6Address.Any
                let basic = empty messageType

                let withFields =
                    match messageType with
                    | MessageType.RouterAdvertisement ->
                        let flags = message.[5]

                        { basic with
                            CurHopLimit = message.[4]
                            Managed = flags &&& 0x80uy <> 0uy
                            OtherConfiguration = flags &&& 0x40uy <> 0uy
                            RouterLifetime = BinaryPrimitives.ReadUInt16BigEndian(message.Slice 6)
                            ReachableTime = BinaryPrimitives.ReadUInt32BigEndian(message.Slice 8)
                            RetransTimer = BinaryPrimitives.ReadUInt32BigEndian(message.Slice 12)
                        }
                    | MessageType.NeighborSolicitation ->
                        { basic with
                            Target = Ipv6Address.Read(message.Slice 8)
                        }
                    | MessageType.NeighborAdvertisement ->
                        let flags = message.[4]

                        { basic with
                            Target = Ipv6Address.Read(message.Slice 8)
                            Router = flags &&& 0x80uy <> 0uy
                            Solicited = flags &&& 0x40uy <> 0uy
                            Override = flags &&& 0x20uy <> 0uy
                        }
                    | _ -> basic

                match readOptions message minimum withFields with
                | Error e -> Error e
                | Ok m ->
                    match messageType with
                    | MessageType.NeighborSolicitation
                    | MessageType.NeighborAdvertisement when m.Target.IsMulticast -> Error(BadField "target")
                    | MessageType.NeighborSolicitation when unspecified && not (isSolicitedNode destination) ->
                        Error(BadField "destination")
                    | MessageType.NeighborSolicitation
                    | MessageType.RouterSolicitation when unspecified && m.SourceLinkAddress.IsSome ->
                        Error(BadField "source link-layer address")
                    | MessageType.NeighborAdvertisement when destination.IsMulticast && m.Solicited ->
                        Error(BadField "solicited flag")
                    | MessageType.RouterAdvertisement when not (isLinkLocal source) -> Error(BadField "source")
                    | _ -> Ok m

    /// Every Prefix Information option of a router advertisement (the whole ICMPv6 message, one
    /// `parse` accepted), in order, at most `limit` of them: `parse` keeps only the first, and
    /// autoconfiguration (RFC 4862 §5.5.3) needs each. Options past the limit are not read, so a
    /// hostile advertisement cannot make the caller do unbounded work.
    let prefixes (message: ReadOnlySpan<byte>) (limit: int) : PrefixInformation[] =
        let found = ResizeArray<PrefixInformation>()
        let mutable at = RouterAdvertisementLength

        while found.Count < limit && at + 2 <= message.Length do
            let length = int message.[at + 1] * 8

            if length = 0 || at + length > message.Length then
                at <- message.Length
            else
                if
                    message.[at] = OptionType.PrefixInformation
                    && length = 32
                    && message.[at + 2] <= 128uy
                then
                    let flags = message.[at + 3]

                    found.Add
                        {
                            PrefixLength = int message.[at + 2]
                            OnLink = flags &&& 0x80uy <> 0uy
                            Autonomous = flags &&& 0x40uy <> 0uy
                            ValidLifetime = BinaryPrimitives.ReadUInt32BigEndian(message.Slice(at + 4))
                            PreferredLifetime = BinaryPrimitives.ReadUInt32BigEndian(message.Slice(at + 8))
                            Prefix = Ipv6Address.Read(message.Slice(at + 16))
                        }

                at <- at + length

        found.ToArray()

    /// The servers of every Recursive DNS Server option of a router advertisement (RFC 8106
    /// §5.1: type 25, length 1 + 2 N in units of 8 octets, 2 reserved octets, the lifetime in
    /// seconds, N addresses), in order, with their option's lifetime; at most `limit` servers.
    /// Options of another length (below 3, or even: §5.3.1 "silently ignored") are skipped.
    let recursiveDnsServers (message: ReadOnlySpan<byte>) (limit: int) : struct (Ipv6Address * uint32)[] =
        let found = ResizeArray<struct (Ipv6Address * uint32)>()
        let mutable at = RouterAdvertisementLength

        while found.Count < limit && at + 2 <= message.Length do
            let units = int message.[at + 1]
            let length = units * 8

            if length = 0 || at + length > message.Length then
                at <- message.Length
            else
                if message.[at] = OptionType.RecursiveDnsServer && units >= 3 && units % 2 = 1 then
                    let lifetime = BinaryPrimitives.ReadUInt32BigEndian(message.Slice(at + 4))
                    let mutable i = 0

                    while i < (units - 1) / 2 && found.Count < limit do
                        found.Add(struct (Ipv6Address.Read(message.Slice(at + 8 + 16 * i)), lifetime))
                        i <- i + 1

                at <- at + length

        found.ToArray()

    let private writeLinkOption (kind: byte) (mac: MacAddress) (dst: Span<byte>) =
        dst.[0] <- kind
        dst.[1] <- 1uy
        mac.Write(dst.Slice 2)
        LinkAddressOptionLength

    let private finish (source: Ipv6Address) (destination: Ipv6Address) (dst: Span<byte>) (length: int) =
        dst.[1] <- 0uy
        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 2, 0us)
        let written: ReadOnlySpan<byte> = Span<byte>.op_Implicit(dst.Slice(0, length))

        let sum =
            Checksum.sum (Checksum.pseudoHeaderV6 source destination IpProtocol.Icmpv6 length) written

        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 2, Checksum.finish sum)
        length

    let private check (dst: Span<byte>) (length: int) =
        if dst.Length < length then
            invalidArg (nameof dst) $"The destination holds {dst.Length} bytes; the ND message needs {length}."

    /// Writes a neighbor solicitation for `target` (§4.3) with its checksum and returns its
    /// length: 24, plus 8 with a source link-layer address (which must be absent when `source`
    /// is the unspecified address, as in duplicate address detection).
    let writeNeighborSolicitation
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (target: Ipv6Address)
        (sourceLinkAddress: MacAddress voption)
        (dst: Span<byte>)
        : int =
        let length =
            NeighborMessageLength
            + (if sourceLinkAddress.IsSome then
                   LinkAddressOptionLength
               else
                   0)

        check dst length
        dst.[0] <- MessageType.NeighborSolicitation
        BinaryPrimitives.WriteUInt32BigEndian(dst.Slice 4, 0u)
        target.Write(dst.Slice 8)

        match sourceLinkAddress with
        | ValueSome mac ->
            writeLinkOption OptionType.SourceLinkAddress mac (dst.Slice NeighborMessageLength)
            |> ignore
        | ValueNone -> ()

        finish source destination dst length

    /// Writes a neighbor advertisement for `target` (§4.4) with the R, S and O flags, optionally a
    /// target link-layer address, and its checksum; returns its length (24 or 32).
    let writeNeighborAdvertisement
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (target: Ipv6Address)
        (router: bool)
        (solicited: bool)
        (override': bool)
        (targetLinkAddress: MacAddress voption)
        (dst: Span<byte>)
        : int =
        let length =
            NeighborMessageLength
            + (if targetLinkAddress.IsSome then
                   LinkAddressOptionLength
               else
                   0)

        check dst length
        dst.[0] <- MessageType.NeighborAdvertisement

        let flags =
            (if router then 0x80u else 0u)
            ||| (if solicited then 0x40u else 0u)
            ||| (if override' then 0x20u else 0u)

        BinaryPrimitives.WriteUInt32BigEndian(dst.Slice 4, flags <<< 24)
        target.Write(dst.Slice 8)

        match targetLinkAddress with
        | ValueSome mac ->
            writeLinkOption OptionType.TargetLinkAddress mac (dst.Slice NeighborMessageLength)
            |> ignore
        | ValueNone -> ()

        finish source destination dst length

    /// Writes a router solicitation (§4.1), with a source link-layer address unless `source` is
    /// unspecified; returns its length (8 or 16).
    let writeRouterSolicitation
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (sourceLinkAddress: MacAddress voption)
        (dst: Span<byte>)
        : int =
        let length =
            RouterSolicitationLength
            + (if sourceLinkAddress.IsSome then
                   LinkAddressOptionLength
               else
                   0)

        check dst length
        dst.[0] <- MessageType.RouterSolicitation
        BinaryPrimitives.WriteUInt32BigEndian(dst.Slice 4, 0u)

        match sourceLinkAddress with
        | ValueSome mac ->
            writeLinkOption OptionType.SourceLinkAddress mac (dst.Slice RouterSolicitationLength)
            |> ignore
        | ValueNone -> ()

        finish source destination dst length

    /// Writes a router advertisement (§4.2) from `message`'s RA fields with its source link-layer
    /// address, MTU (when non-zero) and first prefix options; returns its length. For tests and
    /// simulations: this stack is a host and never advertises itself.
    let writeRouterAdvertisement
        (source: Ipv6Address)
        (destination: Ipv6Address)
        (message: NdpMessage)
        (dst: Span<byte>)
        =
        let length =
            RouterAdvertisementLength
            + (if message.SourceLinkAddress.IsSome then
                   LinkAddressOptionLength
               else
                   0)
            + (if message.Mtu <> 0u then 8 else 0)
            + (if message.Prefix.IsSome then 32 else 0)

        check dst length
        dst.[0] <- MessageType.RouterAdvertisement
        dst.[4] <- message.CurHopLimit

        dst.[5] <-
            (if message.Managed then 0x80uy else 0uy)
            ||| (if message.OtherConfiguration then 0x40uy else 0uy)

        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 6, message.RouterLifetime)
        BinaryPrimitives.WriteUInt32BigEndian(dst.Slice 8, message.ReachableTime)
        BinaryPrimitives.WriteUInt32BigEndian(dst.Slice 12, message.RetransTimer)
        let mutable at = RouterAdvertisementLength

        match message.SourceLinkAddress with
        | ValueSome mac -> at <- at + writeLinkOption OptionType.SourceLinkAddress mac (dst.Slice at)
        | ValueNone -> ()

        if message.Mtu <> 0u then
            dst.[at] <- OptionType.Mtu
            dst.[at + 1] <- 1uy
            BinaryPrimitives.WriteUInt16BigEndian(dst.Slice(at + 2), 0us)
            BinaryPrimitives.WriteUInt32BigEndian(dst.Slice(at + 4), message.Mtu)
            at <- at + 8

        match message.Prefix with
        | ValueSome p ->
            if p.PrefixLength < 0 || p.PrefixLength > 128 then
                invalidArg (nameof message) $"Prefix length {p.PrefixLength} is outside 0..128."

            dst.[at] <- OptionType.PrefixInformation
            dst.[at + 1] <- 4uy
            dst.[at + 2] <- byte p.PrefixLength

            dst.[at + 3] <- (if p.OnLink then 0x80uy else 0uy) ||| (if p.Autonomous then 0x40uy else 0uy)

            BinaryPrimitives.WriteUInt32BigEndian(dst.Slice(at + 4), p.ValidLifetime)
            BinaryPrimitives.WriteUInt32BigEndian(dst.Slice(at + 8), p.PreferredLifetime)
            BinaryPrimitives.WriteUInt32BigEndian(dst.Slice(at + 12), 0u)
            p.Prefix.Write(dst.Slice(at + 16))
        | ValueNone -> ()

        finish source destination dst length
