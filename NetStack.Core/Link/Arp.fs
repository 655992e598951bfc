namespace NetStack.Core.Link

open System
open System.Buffers.Binary
open NetStack.Core.Wire

/// An ARP packet for IPv4 over Ethernet (RFC 826): the only hardware/protocol pair this stack speaks.
[<Struct>]
type ArpPacket =
    {
        /// 1 = request, 2 = reply (see Arp.Operation).
        Operation: uint16
        /// The sender's MAC (sha).
        SenderMac: MacAddress
        /// The sender's IPv4 address (spa); 0.0.0.0 in an ARP probe (RFC 5227 §2.1.1).
        SenderIp: Ipv4Address
        /// The target's MAC (tha): zero or ignored in a request.
        TargetMac: MacAddress
        /// The target's IPv4 address (tpa).
        TargetIp: Ipv4Address
    }

/// ARP (RFC 826) parse and build for Ethernet (hardware type 1) and IPv4 (protocol 0x0800).
module Arp =

    /// Operation codes (RFC 826 "ar$op").
    module Operation =
        /// Who has TargetIp? Tell SenderIp.
        [<Literal>]
        let Request = 1us

        /// SenderIp is at SenderMac.
        [<Literal>]
        let Reply = 2us

    /// The ARP body for Ethernet/IPv4: 8 bytes of fixed fields plus 2 × (6 + 4) addresses.
    [<Literal>]
    let PacketLength = 28

    /// Reads an ARP packet (the Ethernet payload; trailing padding is ignored). Anything but
    /// Ethernet/IPv4 with 6- and 4-byte addresses and operation 1 or 2 is refused: hostile or
    /// foreign packets are dropped, never guessed at.
    let parse (packet: ReadOnlySpan<byte>) : Result<ArpPacket, ParseError> =
        if packet.Length < PacketLength then
            Error(Truncated(PacketLength, packet.Length))
        elif BinaryPrimitives.ReadUInt16BigEndian packet <> 1us then
            Error(BadField "hardware type")
        elif BinaryPrimitives.ReadUInt16BigEndian(packet.Slice 2) <> EtherType.Ipv4 then
            Error(BadField "protocol type")
        elif packet.[4] <> 6uy || packet.[5] <> 4uy then
            Error(BadField "address length")
        else
            let operation = BinaryPrimitives.ReadUInt16BigEndian(packet.Slice 6)

            if operation <> Operation.Request && operation <> Operation.Reply then
                Error(BadField "operation")
            else
                Ok
                    {
                        Operation = operation
                        SenderMac = MacAddress.Read(packet.Slice 8)
                        SenderIp = Ipv4Address.Read(packet.Slice 14)
                        TargetMac = MacAddress.Read(packet.Slice 18)
                        TargetIp = Ipv4Address.Read(packet.Slice 24)
                    }

    /// Writes `arp` into `dst` and returns 28. Throws ArgumentException when `dst` is shorter.
    let write (arp: ArpPacket) (dst: Span<byte>) : int =
        if dst.Length < PacketLength then
            invalidArg (nameof dst) $"The destination holds {dst.Length} bytes; ARP needs 28."

        BinaryPrimitives.WriteUInt16BigEndian(dst, 1us)
        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 2, EtherType.Ipv4)
        dst.[4] <- 6uy
        dst.[5] <- 4uy
        BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 6, arp.Operation)
        arp.SenderMac.Write(dst.Slice 8)
        arp.SenderIp.Write(dst.Slice 14)
        arp.TargetMac.Write(dst.Slice 18)
        arp.TargetIp.Write(dst.Slice 24)
        PacketLength

    /// A request for `target`'s MAC.
    let request (senderMac: MacAddress) (senderIp: Ipv4Address) (target: Ipv4Address) : ArpPacket =
        {
            Operation = Operation.Request
            SenderMac = senderMac
            SenderIp = senderIp
            TargetMac = MacAddress.Zero
            TargetIp = target
        }

    /// The reply to `request` from the owner of its target address.
    let replyTo (request: ArpPacket) (ourMac: MacAddress) : ArpPacket =
        {
            Operation = Operation.Reply
            SenderMac = ourMac
            SenderIp = request.TargetIp
            TargetMac = request.SenderMac
            TargetIp = request.SenderIp
        }

    /// A gratuitous ARP announcement of `address` (RFC 5227 §3: a request with sender and target
    /// both our address), broadcast so neighbours refresh any cached mapping.
    let announcement (ourMac: MacAddress) (address: Ipv4Address) : ArpPacket =
        {
            Operation = Operation.Request
            SenderMac = ourMac
            SenderIp = address
            TargetMac = MacAddress.Zero
            TargetIp = address
        }

    /// RFC 5227 §2.4: an ARP packet from another host whose sender IP is `ours` means two hosts
    /// claim the address. A host that keeps its address whatever happens (§2.4 c; a configured
    /// address does) answers with one announcement at most every DEFEND_INTERVAL.
    let isConflict (ours: Ipv4Address) (ourMac: MacAddress) (arp: ArpPacket) =
        arp.SenderIp = ours && arp.SenderMac <> ourMac

    /// RFC 5227 §1.1 DEFEND_INTERVAL: 10 seconds between defences.
    [<Literal>]
    let DefendIntervalSeconds = 10

    /// Whether a conflict at `now` is answered with an announcement: never defended before
    /// (`lastDefence` ValueNone), or the last defence at least `interval` ago (same clock units).
    /// Otherwise the conflict is only counted and logged, so two hosts that both defend cannot
    /// flood the link, and the address is kept (no flapping).
    let shouldDefend (now: int64) (lastDefence: int64 voption) (interval: int64) : bool =
        match lastDefence with
        | ValueNone -> true
        | ValueSome last -> now - last >= interval
