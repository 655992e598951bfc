namespace NetStack.Core.Link

open System
open System.Buffers.Binary
open System.Globalization
open NetStack.Core.Wire

/// A 48-bit IEEE 802 MAC address, kept in the low 48 bits of a uint64 (first octet highest).
[<Struct; CustomEquality; CustomComparison>]
type MacAddress =
    /// The address as a number: octet 0 in bits 40..47, octet 5 in bits 0..7.
    val Value: uint64
    /// Wraps a number; bits above 48 are cleared.
    new(value: uint64) = { Value = value &&& 0xFFFF_FFFF_FFFFUL }

    /// Reads six octets in network order.
    static member Read(src: ReadOnlySpan<byte>) =
        MacAddress(
            (uint64 (BinaryPrimitives.ReadUInt16BigEndian src) <<< 32)
            ||| uint64 (BinaryPrimitives.ReadUInt32BigEndian(src.Slice 2))
        )

    /// Writes the six octets in network order.
    member this.Write(dst: Span<byte>) =
        BinaryPrimitives.WriteUInt16BigEndian(dst, uint16 (this.Value >>> 32))
        BinaryPrimitives.WriteUInt32BigEndian(dst.Slice 2, uint32 this.Value)

    /// ff:ff:ff:ff:ff:ff.
    static member Broadcast = MacAddress 0xFFFF_FFFF_FFFFUL

    /// 00:00:00:00:00:00 (ARP's "target hardware address not yet known").
    static member Zero = MacAddress 0UL

    /// The I/G bit (the lowest bit of the first octet) is set: a group address (IEEE 802 §8.2).
    member this.IsMulticast = (this.Value >>> 40) &&& 1UL = 1UL

    /// All ones.
    member this.IsBroadcast = this.Value = 0xFFFF_FFFF_FFFFUL

    /// The U/L bit (second-lowest bit of the first octet) is set: not a vendor-assigned address.
    member this.IsLocallyAdministered = (this.Value >>> 41) &&& 1UL = 1UL

    /// The MAC an IPv6 multicast address maps to: 33:33 and its last four octets (RFC 2464 §7).
    static member OfIpv6Multicast(group: Ipv6Address) =
        MacAddress(0x3333_0000_0000UL ||| (group.Low &&& 0xFFFF_FFFFUL))

    /// The MAC an IPv4 multicast address maps to: 01:00:5e and its low 23 bits (RFC 1112 §6.4).
    static member OfIpv4Multicast(group: Ipv4Address) =
        MacAddress(0x0100_5E00_0000UL ||| uint64 (group.Value &&& 0x7F_FFFFu))

    /// A random locally administered unicast address (U/L set, I/G clear), from `random`'s bytes.
    static member LocallyAdministered(random: uint64) =
        MacAddress((random &&& 0xFCFF_FFFF_FFFFUL) ||| 0x0200_0000_0000UL)

    /// Parses "aa:bb:cc:dd:ee:ff" (or with '-'); throws FormatException otherwise.
    static member Parse(text: string) =
        let fail () =
            raise (FormatException $"'{text}' is not a MAC address (six hex octets separated by ':').")

        if isNull text then
            nullArg (nameof text)

        let parts = text.Split([| ':'; '-' |])

        if parts.Length <> 6 then
            fail ()

        let mutable value = 0UL

        for part in parts do
            match Byte.TryParse(part, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture) with
            | true, b when part.Length >= 1 && part.Length <= 2 -> value <- (value <<< 8) ||| uint64 b
            | _ -> fail ()

        MacAddress value

    override this.ToString() =
        let v = this.Value
        let o i = (v >>> (40 - 8 * i)) &&& 0xFFUL
        $"{o 0:x2}:{o 1:x2}:{o 2:x2}:{o 3:x2}:{o 4:x2}:{o 5:x2}"

    override this.Equals(o) =
        match o with
        | :? MacAddress as m -> m.Value = this.Value
        | _ -> false

    override this.GetHashCode() = this.Value.GetHashCode()

    interface IEquatable<MacAddress> with
        member this.Equals(m) = m.Value = this.Value

    interface IComparable<MacAddress> with
        member this.CompareTo(m) = compare this.Value m.Value

    interface IComparable with
        member this.CompareTo(o) =
            match o with
            | :? MacAddress as m -> compare this.Value m.Value
            | _ -> invalidArg "o" "not a MacAddress"

/// EtherType values (IEEE 802.3 §3.2.6; IANA "IEEE 802 Numbers").
module EtherType =
    /// IPv4.
    [<Literal>]
    let Ipv4 = 0x0800us

    /// ARP (RFC 826).
    [<Literal>]
    let Arp = 0x0806us

    /// IPv6 (RFC 2464).
    [<Literal>]
    let Ipv6 = 0x86DDus

    /// IEEE 802.1Q customer VLAN tag.
    [<Literal>]
    let Vlan = 0x8100us

    /// IEEE 802.1ad service VLAN tag (the outer tag of Q-in-Q).
    [<Literal>]
    let ServiceVlan = 0x88A8us

/// A parsed Ethernet II frame header. Offsets are relative to the parsed span.
[<Struct>]
type EthernetFrame =
    {
        /// Destination MAC.
        Destination: MacAddress
        /// Source MAC.
        Source: MacAddress
        /// The EtherType of the payload, after any VLAN tags.
        EtherType: uint16
        /// The VLAN identifier (12 bits) of the innermost 802.1Q tag, or -1 for an untagged frame.
        VlanId: int
        /// How many VLAN tags were stepped over (0, 1 or 2).
        VlanTags: int
        /// Where the payload starts: 14 plus 4 per tag.
        PayloadOffset: int
    }

/// Ethernet II framing (IEEE 802.3 §3.2 with the DIX EtherType interpretation; RFC 894/2464 for IP).
module Ethernet =

    /// Destination, source and EtherType.
    [<Literal>]
    let HeaderLength = 14

    /// One IEEE 802.1Q tag: TPID 0x8100 and a 16-bit TCI.
    [<Literal>]
    let VlanTagLength = 4

    /// At most two tags (802.1ad outer, 802.1Q inner) are stepped over; deeper stacks are refused.
    [<Literal>]
    let MaxVlanTags = 2

    /// Reads the header of a frame (without the FCS, which TAP devices do not carry). A value
    /// below 0x0600 in the type field is an IEEE 802.3 length (LLC frames), which this stack does
    /// not speak: BadField "ethertype". VLAN tags are stepped over and the innermost VLAN id kept.
    let parse (frame: ReadOnlySpan<byte>) : Result<EthernetFrame, ParseError> =
        if frame.Length < HeaderLength then
            Error(Truncated(HeaderLength, frame.Length))
        else
            let mutable offset = 12
            let mutable etherType = BinaryPrimitives.ReadUInt16BigEndian(frame.Slice offset)
            let mutable vlan = -1
            let mutable tags = 0
            let mutable error = ValueNone

            while error.IsNone
                  && (etherType = EtherType.Vlan || etherType = EtherType.ServiceVlan) do
                if tags = MaxVlanTags then
                    error <- ValueSome(BadField "vlan tags")
                elif frame.Length < offset + 2 + VlanTagLength then
                    error <- ValueSome(Truncated(offset + 2 + VlanTagLength, frame.Length))
                else
                    vlan <- int (BinaryPrimitives.ReadUInt16BigEndian(frame.Slice(offset + 2)) &&& 0x0FFFus)
                    offset <- offset + VlanTagLength
                    etherType <- BinaryPrimitives.ReadUInt16BigEndian(frame.Slice offset)
                    tags <- tags + 1

            match error with
            | ValueSome e -> Error e
            | ValueNone when etherType < 0x0600us -> Error(BadField "ethertype")
            | ValueNone ->
                Ok
                    {
                        Destination = MacAddress.Read frame
                        Source = MacAddress.Read(frame.Slice 6)
                        EtherType = etherType
                        VlanId = vlan
                        VlanTags = tags
                        PayloadOffset = offset + 2
                    }

    /// Writes an untagged header into `dst` and returns 14. Throws ArgumentException when `dst`
    /// is shorter.
    let write (destination: MacAddress) (source: MacAddress) (etherType: uint16) (dst: Span<byte>) : int =
        if dst.Length < HeaderLength then
            invalidArg (nameof dst) $"The destination holds {dst.Length} bytes; the header needs 14."

        destination.Write dst
        source.Write(dst.Slice 6)
        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 12, etherType)
        HeaderLength

    /// Writes a header with one 802.1Q tag (priority 0, the given 12-bit VLAN id) and returns 18.
    /// Throws ArgumentException when `dst` is shorter or the id is outside 0..4095.
    let writeTagged
        (destination: MacAddress)
        (source: MacAddress)
        (vlanId: int)
        (etherType: uint16)
        (dst: Span<byte>)
        : int =
        if vlanId < 0 || vlanId > 0xFFF then
            invalidArg (nameof vlanId) $"VLAN id {vlanId} is outside 0..4095."

        if dst.Length < HeaderLength + VlanTagLength then
            invalidArg (nameof dst) $"The destination holds {dst.Length} bytes; the tagged header needs 18."

        destination.Write dst
        source.Write(dst.Slice 6)
        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 12, EtherType.Vlan)
        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 14, uint16 vlanId)
        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 16, etherType)
        HeaderLength + VlanTagLength
