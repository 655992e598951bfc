namespace NetStack.Core.Stack

open System
open System.Buffers.Binary
open NetStack.Core.Wire
open NetStack.Core.Ip
open NetStack.Core.Tcp

/// An ICMP error this host may send about a received packet.
type OutgoingError =
    /// UDP to a port nobody listens on (RFC 1122 §4.1.3.1).
    | PortUnreachable = 0
    /// A datagram whose first fragment arrived was not completed in time (RFC 792, RFC 8200 §4.5).
    | ReassemblyTimeExceeded = 1
    /// A forwarder could not reach the destination host (ICMPv4 host unreachable, ICMPv6
    /// address unreachable; RFC 1812 §5.2.7.1, RFC 4443 §3.1).
    | HostUnreachable = 2
    /// A forwarder has no route to the destination network (ICMPv4 network unreachable, ICMPv6
    /// no route to destination).
    | NetworkUnreachable = 3
    /// A forwarder's policy refuses the destination (ICMPv4 code 13, RFC 1812 §5.2.7.1; ICMPv6
    /// code 1, RFC 4443 §3.1).
    | AdministrativelyProhibited = 4

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

/// The ICMP errors we send about packets we received: whether RFC 1122 §3.2.2 and RFC 4443
/// §2.4(e) allow one at all, the rate limit, and the quote of an abandoned fragment. The public
/// entry points are `IpLayer.tryWriteError` and `IpLayer.writeFirstFragment` (IpLayer.fs).
[<RequireQualifiedAccess>]
module internal IcmpErrors =

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
            match Ipv6.parse original with
            | Error _ -> ErrorVerdict.Malformed
            | _ when state.Config.Address6.IsNone && state.Extra6.Length = 0 -> ErrorVerdict.NoAddress
            | Ok h ->
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

    let private unreachableCode4 (error: OutgoingError) =
        match error with
        | OutgoingError.HostUnreachable -> Icmpv4.UnreachableCode.Host
        | OutgoingError.NetworkUnreachable -> Icmpv4.UnreachableCode.Network
        | OutgoingError.AdministrativelyProhibited -> Icmpv4.UnreachableCode.AdministrativelyProhibited
        | _ -> Icmpv4.UnreachableCode.Port

    let private unreachableCode6 (error: OutgoingError) =
        match error with
        | OutgoingError.HostUnreachable -> Icmpv6.UnreachableCode.Address
        | OutgoingError.NetworkUnreachable -> Icmpv6.UnreachableCode.NoRoute
        | OutgoingError.AdministrativelyProhibited -> Icmpv6.UnreachableCode.AdministrativelyProhibited
        | _ -> Icmpv6.UnreachableCode.Port

    // Who sends the error. A port unreachable comes from the host the datagram was for, so in
    // any-destination mode from the address it was sent to (the kernel that sent it matches the
    // quote, but a traceroute or a user reads the source); every other error from our own
    // address, as a router's (RFC 1812 §4.3.2.4: an address of the router).
    let private errorSource4 (state: IpLayerState) (error: OutgoingError) (destination: Ipv4Address) =
        if
            error = OutgoingError.PortUnreachable
            && state.Config.AnyDestination
            && not (AddressClass.isLimitedBroadcast4 destination)
            && not (AddressClass.isMulticast4 destination)
        then
            destination
        else
            state.Config.Address4.Value

    let private errorSource6 (state: IpLayerState) (error: OutgoingError) (destination: Ipv6Address) =
        if
            error = OutgoingError.PortUnreachable
            && state.Config.AnyDestination
            && not destination.IsMulticast
        then
            destination
        else
            match state.Config.Address6 with
            | ValueSome configured -> configured
            | ValueNone ->
                // No configured address (a link that gave us only a link-local or
                // autoconfigured one): the one the datagram was sent to, if it is ours (RFC 4443
                // §2.2 (a)), else the first of ours.
                if Array.contains destination state.Extra6 then
                    destination
                else
                    state.Extra6.[0]

    /// The body of `IpLayer.tryWriteError` (documented there).
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
                let peer = Ipv4Address.Read(original.Slice 12)
                let destination = Ipv4Address.Read(original.Slice 16)
                let body = dst.Slice Ipv4.MinHeaderLength

                let length =
                    match error with
                    | OutgoingError.ReassemblyTimeExceeded ->
                        Icmpv4.buildTimeExceeded body Icmpv4.TimeExceededCode.FragmentReassembly original
                    | _ -> Icmpv4.buildDestinationUnreachable body (unreachableCode4 error) original

                let source = errorSource4 state error destination

                struct (state,
                        ErrorVerdict.Sent,
                        IpOutput.writeIpHeader
                            IpHeaderSettings.Default
                            (V4 source)
                            (V4 peer)
                            IpProtocol.Icmp
                            0us
                            length
                            dst)
            else
                let peer = Ipv6Address.Read(original.Slice 8)
                let destination = Ipv6Address.Read(original.Slice 24)
                let source = errorSource6 state error destination
                let body = dst.Slice Ipv6.HeaderLength

                let length =
                    match error with
                    | OutgoingError.ReassemblyTimeExceeded ->
                        Icmpv6.buildTimeExceeded body source peer Icmpv6.TimeExceededCode.FragmentReassembly original
                    | _ -> Icmpv6.buildDestinationUnreachable body source peer (unreachableCode6 error) original

                struct (state,
                        ErrorVerdict.Sent,
                        IpOutput.writeIpHeader
                            IpHeaderSettings.Default
                            (V6 source)
                            (V6 peer)
                            IpProtocol.Icmpv6
                            0us
                            length
                            dst)
        | verdict -> struct (state, verdict, 0)

    /// The body of `IpLayer.writeFirstFragment` (documented there).
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
