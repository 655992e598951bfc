namespace NetStack.Core.Ip

open System
open System.Buffers.Binary
open NetStack.Core.Wire

/// Why a datagram cannot be sent as fragments.
[<Struct>]
type FragmentationError =
    /// The IPv4 datagram is larger than the MTU and has Don't Fragment set. The caller reports
    /// EMSGSIZE to a local sender, or ICMP Destination Unreachable, Fragmentation Needed (type 3
    /// code 4, with this next-hop MTU, RFC 1191) when forwarding.
    | FragmentationNeeded of mtu: int

/// How an IPv4 datagram is cut into fragments for one MTU (see Fragmentation.planIpv4).
[<Struct>]
type Ipv4FragmentPlan =
    {
        /// Number of fragments; 1 when the datagram fits and goes out as it is.
        Count: int
        /// Length of the payload being fragmented.
        PayloadLength: int
        /// MTU the plan was made for.
        Mtu: int
        /// Header length of the first fragment: all the options.
        FirstHeaderLength: int
        /// Header length of the other fragments: only the options with the copied flag.
        LaterHeaderLength: int
        /// Payload bytes in the first fragment (a multiple of 8 unless it is the only one).
        FirstPayloadLength: int
        /// Payload bytes in each later fragment but the last (a multiple of 8).
        LaterPayloadLength: int
    }

/// How an IPv6 packet is cut into fragments for one MTU (see Fragmentation.planIpv6).
[<Struct>]
type Ipv6FragmentPlan =
    {
        /// Number of fragments; 1 when the packet fits and goes out unchanged, without a
        /// Fragment header.
        Count: int
        /// Length of the original packet (40 + its Payload Length).
        PacketLength: int
        /// Length of the unfragmentable part copied into every fragment.
        UnfragmentableLength: int
        /// Offset of the Next Header byte naming the first fragmentable header; set to 44 in
        /// fragments.
        NextHeaderOffset: int
        /// The original value of that byte: the Fragment header's Next Header.
        FragmentableNextHeader: byte
        /// Length of the fragmentable part.
        FragmentableLength: int
        /// Fragmentable bytes per fragment but the last (a multiple of 8).
        FragmentDataLength: int
        /// Identification written in every Fragment header.
        Identification: uint32
    }

/// Fragmentation on send: IPv4 (RFC 791 §2.3, §3.2) and IPv6 (RFC 8200 §4.5). Plans are
/// computed once per datagram; fragment i is then written straight into a caller's buffer.
module Fragmentation =

    /// Every IPv4 module must forward a 68-byte datagram unfragmented (RFC 791 §3.2):
    /// a 60-byte header plus one 8-byte fragment block.
    [<Literal>]
    let MinimumIpv4Mtu = 68

    let private roundDownTo8 (n: int) = n &&& ~~~7

    /// Plans the IPv4 fragments of a datagram with this header, these options (the bytes that
    /// follow the fixed header, as given to Ipv4.write) and `payloadLength` bytes of payload,
    /// for a link of `mtu` bytes. The header may itself be a fragment (forwarding): offsets are
    /// then added to its offset and the last piece keeps its More Fragments flag.
    /// Error FragmentationNeeded when the datagram does not fit and Don't Fragment is set.
    /// Throws ArgumentException for an MTU below 68, malformed options or a datagram that
    /// would end past 65535 bytes.
    let planIpv4
        (header: Ipv4Header)
        (options: ReadOnlySpan<byte>)
        (payloadLength: int)
        (mtu: int)
        : Result<Ipv4FragmentPlan, FragmentationError> =
        if mtu < MinimumIpv4Mtu then
            invalidArg (nameof mtu) $"MTU {mtu} is below the IPv4 minimum of 68."

        if options.Length > Ipv4.MaxOptionsLength || Ipv4.findBadOption options >= 0 then
            invalidArg (nameof options) "The options are longer than 40 bytes or malformed."

        let firstHeaderLength = Ipv4.headerLengthFor options.Length

        if
            payloadLength < 0
            || header.FragmentOffset + firstHeaderLength + payloadLength > 0xFFFF
        then
            invalidArg (nameof payloadLength) $"Payload length {payloadLength} ends the datagram past 65535 bytes."

        if firstHeaderLength + payloadLength <= mtu then
            Ok
                {
                    Count = 1
                    PayloadLength = payloadLength
                    Mtu = mtu
                    FirstHeaderLength = firstHeaderLength
                    LaterHeaderLength = firstHeaderLength
                    FirstPayloadLength = payloadLength
                    LaterPayloadLength = 0
                }
        elif header.DontFragment then
            Error(FragmentationNeeded mtu)
        else
            // Only options with the copied flag go into the later fragments, so their header
            // may be shorter. Count them without writing: copiedOptions needs a destination,
            // so measure by walking here.
            let mutable copied = 0
            let mutable i = 0

            while i < options.Length && options.[i] <> Ipv4.OptionEndOfList do
                if options.[i] = Ipv4.OptionNoOperation then
                    i <- i + 1
                else
                    let length = int options.[i + 1]

                    if options.[i] &&& Ipv4.OptionCopiedFlag <> 0uy then
                        copied <- copied + length

                    i <- i + length

            let laterHeaderLength = Ipv4.headerLengthFor copied
            // Every fragment but the last carries a multiple of 8 bytes: the offset field counts
            // 8-byte units. The MTU floor of 68 leaves at least 8 bytes after a 60-byte header.
            let firstPayload = roundDownTo8 (mtu - firstHeaderLength)
            let laterPayload = roundDownTo8 (mtu - laterHeaderLength)
            let rest = payloadLength - firstPayload

            Ok
                {
                    Count = 1 + (rest + laterPayload - 1) / laterPayload
                    PayloadLength = payloadLength
                    Mtu = mtu
                    FirstHeaderLength = firstHeaderLength
                    LaterHeaderLength = laterHeaderLength
                    FirstPayloadLength = firstPayload
                    LaterPayloadLength = laterPayload
                }

    /// Where fragment `index` of a plan starts in the payload and how many bytes it carries.
    let ipv4FragmentRange (plan: Ipv4FragmentPlan) (index: int) : struct (int * int) =
        if index < 0 || index >= plan.Count then
            invalidArg (nameof index) $"Fragment {index} of {plan.Count}."

        if index = 0 then
            struct (0, min plan.FirstPayloadLength plan.PayloadLength)
        else
            let start = plan.FirstPayloadLength + (index - 1) * plan.LaterPayloadLength
            struct (start, min plan.LaterPayloadLength (plan.PayloadLength - start))

    /// Writes fragment `index` of `plan` (header, options, its slice of `payload`) into `dst`
    /// and returns its length. The first fragment carries all the options, the others only
    /// the copied ones; MF is set on all but the last, which keeps the original MF; offsets
    /// count from the original header's offset; each header checksum is filled in. With
    /// Count = 1 this writes the datagram itself. Throws ArgumentException when `dst` is too
    /// small, `index` is out of range or `payload` is not the planned length.
    let writeIpv4Fragment
        (plan: Ipv4FragmentPlan)
        (header: Ipv4Header)
        (options: ReadOnlySpan<byte>)
        (payload: ReadOnlySpan<byte>)
        (index: int)
        (dst: Span<byte>)
        : int =
        if payload.Length <> plan.PayloadLength then
            invalidArg
                (nameof payload)
                $"The payload has {payload.Length} bytes; the plan was made for {plan.PayloadLength}."

        let struct (start, length) = ipv4FragmentRange plan index
        let last = index = plan.Count - 1

        let fragmentHeader =
            { header with
                FragmentOffset = header.FragmentOffset + start
                MoreFragments = header.MoreFragments || not last
            }

        let headerLength =
            if index = 0 then
                plan.FirstHeaderLength
            else
                plan.LaterHeaderLength

        if dst.Length < headerLength + length then
            invalidArg
                (nameof dst)
                $"The destination holds {dst.Length} bytes; fragment {index} needs {headerLength + length}."

        if index = 0 then
            Ipv4.write fragmentHeader options length dst |> ignore
        else
            let optionsArea =
                dst.Slice(Ipv4.MinHeaderLength, headerLength - Ipv4.MinHeaderLength)

            let copied = Ipv4.copiedOptions options (dst.Slice Ipv4.MinHeaderLength)
            optionsArea.Slice(copied).Clear()
            Ipv4.writeFixedPart fragmentHeader headerLength length dst

        payload.Slice(start, length).CopyTo(dst.Slice headerLength)
        headerLength + length

    /// Plans the IPv6 fragments of `packet` (a whole packet as it would be sent on a large
    /// enough link, without a Fragment header) for a link of `mtu` bytes, with the
    /// `identification` the caller chose for it (RFC 7739: unpredictable per destination).
    /// RFC 8200 §4.5: every fragment repeats the unfragmentable part (the fixed header,
    /// Hop-by-Hop, Routing), then a Fragment header, then a slice of the fragmentable part
    /// (the rest), a multiple of 8 bytes in all but the last. Throws ArgumentException when the
    /// MTU is below 1280, the packet does not parse, already has a Fragment header, or has an
    /// unfragmentable part too long to leave room for 8 bytes of data.
    let planIpv6 (packet: ReadOnlySpan<byte>) (identification: uint32) (mtu: int) : Ipv6FragmentPlan =
        if mtu < Ipv6.MinimumMtu then
            invalidArg (nameof mtu) $"MTU {mtu} is below the IPv6 minimum of 1280."

        let parsed =
            match Ipv6.parse packet with
            | Error e -> invalidArg (nameof packet) $"The packet does not parse: {e}."
            | Ok header ->
                match Ipv6.parseExtensions packet header with
                | Error e -> invalidArg (nameof packet) $"The extension headers do not parse: {e}."
                | Ok ext when ext.Fragment.IsSome -> invalidArg (nameof packet) "The packet is already a fragment."
                | Ok ext -> struct (header, ext)

        let struct (header, ext) = parsed
        let packetLength = Ipv6.HeaderLength + header.PayloadLength
        let unfragmentable = ext.UnfragmentableLength
        let fragmentable = packetLength - unfragmentable

        let dataPerFragment =
            roundDownTo8 (mtu - unfragmentable - Ipv6.FragmentHeaderLength)

        let count =
            if packetLength <= mtu then
                1
            elif dataPerFragment < 8 then
                invalidArg
                    (nameof packet)
                    $"An unfragmentable part of {unfragmentable} bytes leaves no room in MTU {mtu}."
            else
                (fragmentable + dataPerFragment - 1) / dataPerFragment

        {
            Count = count
            PacketLength = packetLength
            UnfragmentableLength = unfragmentable
            NextHeaderOffset = ext.UnfragmentableNextHeaderOffset
            FragmentableNextHeader = packet.[ext.UnfragmentableNextHeaderOffset]
            FragmentableLength = fragmentable
            FragmentDataLength = dataPerFragment
            Identification = identification
        }

    /// Writes fragment `index` of `plan` for `packet` (the one the plan was made from) into
    /// `dst` and returns its length: the unfragmentable part with Payload Length rewritten and
    /// its last Next Header set to 44, a Fragment header (offset, M on all but the last, the
    /// plan's identification), then the fragment's data. With Count = 1 this copies the packet.
    /// Throws ArgumentException when `dst` is too small or `index` is out of range.
    let writeIpv6Fragment (plan: Ipv6FragmentPlan) (packet: ReadOnlySpan<byte>) (index: int) (dst: Span<byte>) : int =
        if index < 0 || index >= plan.Count then
            invalidArg (nameof index) $"Fragment {index} of {plan.Count}."

        if packet.Length < plan.PacketLength then
            invalidArg (nameof packet) "The packet is shorter than the one the plan was made for."

        if plan.Count = 1 then
            if dst.Length < plan.PacketLength then
                invalidArg
                    (nameof dst)
                    $"The destination holds {dst.Length} bytes; the packet needs {plan.PacketLength}."

            packet.Slice(0, plan.PacketLength).CopyTo dst
            plan.PacketLength
        else
            let start = index * plan.FragmentDataLength
            let length = min plan.FragmentDataLength (plan.FragmentableLength - start)
            let dataOffset = plan.UnfragmentableLength + Ipv6.FragmentHeaderLength
            let total = dataOffset + length

            if dst.Length < total then
                invalidArg (nameof dst) $"The destination holds {dst.Length} bytes; fragment {index} needs {total}."

            packet.Slice(0, plan.UnfragmentableLength).CopyTo dst
            BinaryPrimitives.WriteUInt16BigEndian(dst.Slice 4, uint16 (total - Ipv6.HeaderLength))
            dst.[plan.NextHeaderOffset] <- IpProtocol.Ipv6Fragment

            Ipv6.writeFragmentHeader
                {
                    NextHeader = plan.FragmentableNextHeader
                    Offset = start
                    MoreFragments = index < plan.Count - 1
                    Identification = plan.Identification
                }
                (dst.Slice plan.UnfragmentableLength)
            |> ignore

            packet.Slice(plan.UnfragmentableLength + start, length).CopyTo(dst.Slice dataOffset)
            total
