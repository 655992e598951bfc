namespace NetStack.Core.Link

open System
open System.Buffers.Binary
open System.Text
open NetStack.Core.Wire

/// DHCP message types (RFC 2132 §9.6, option 53).
type DhcpMessageType =
    | Discover = 1uy
    | Offer = 2uy
    | Request = 3uy
    | Decline = 4uy
    | Ack = 5uy
    | Nak = 6uy
    | Release = 7uy
    | Inform = 8uy

/// One classless static route (RFC 3442, option 121): a destination prefix and its router
/// (0.0.0.0: the destination is on the link).
[<Struct>]
type ClasslessRoute =
    {
        Destination: Ipv4Address
        PrefixLength: int
        Router: Ipv4Address
    }

/// A DHCP message (RFC 2131 §2: the BOOTP header of RFC 951 with the options of RFC 2132 after
/// the magic cookie). Only the options a client uses are kept; others are skipped. An absent
/// option is ValueNone, or an empty array / null.
type DhcpMessage =
    {
        /// 1 BOOTREQUEST (client to server), 2 BOOTREPLY.
        Op: byte
        /// The transaction id the client chose.
        Xid: uint32
        /// Seconds since the client began acquiring or renewing.
        Secs: uint16
        /// The BROADCAST flag (RFC 2131 §2, Figure 2).
        Broadcast: bool
        /// ciaddr: the client's address, only when it is BOUND, RENEWING or REBINDING.
        ClientAddress: Ipv4Address
        /// yiaddr: the address the server offers or confirms.
        YourAddress: Ipv4Address
        /// siaddr: the next server (BOOTP; not used).
        NextServer: Ipv4Address
        /// giaddr: the relay agent.
        RelayAddress: Ipv4Address
        /// chaddr: the client's MAC (htype 1, hlen 6).
        ClientMac: MacAddress
        /// Option 53.
        MessageType: DhcpMessageType
        /// Option 1.
        SubnetMask: Ipv4Address voption
        /// Option 3, in order of preference.
        Routers: Ipv4Address[]
        /// Option 6, in order of preference.
        DnsServers: Ipv4Address[]
        /// Option 12 (ASCII), or null.
        HostName: string
        /// Option 26: the interface MTU (68 at least, RFC 2132 §5.1).
        Mtu: int voption
        /// Option 50.
        RequestedAddress: Ipv4Address voption
        /// Option 51, seconds (0xFFFFFFFF: infinite).
        LeaseTime: uint32 voption
        /// Option 54.
        ServerId: Ipv4Address voption
        /// Option 55: the option codes asked for.
        ParameterRequests: byte[]
        /// Option 58, seconds.
        RenewalTime: uint32 voption
        /// Option 59, seconds.
        RebindingTime: uint32 voption
        /// Option 61 (its type byte first), or empty.
        ClientId: byte[]
        /// Option 121.
        ClasslessRoutes: ClasslessRoute[]
    }

/// Encode and decode DHCP messages (RFC 2131, RFC 2132, RFC 3442). Option overload (52) and
/// long options split over several instances (RFC 3396) are not supported: the `file` and
/// `sname` fields are never read as options, and a repeated option counts once, the last time.
[<RequireQualifiedAccess>]
module DhcpMessage =

    /// The client's UDP port.
    [<Literal>]
    let ClientPort = 68us

    /// The server's UDP port.
    [<Literal>]
    let ServerPort = 67us

    /// The fixed BOOTP header: op .. file.
    [<Literal>]
    let FixedLength = 236

    /// RFC 2131 §3: 99.130.83.99.
    [<Literal>]
    let MagicCookie = 0x63825363u

    /// Where the options start: after the header and the cookie.
    [<Literal>]
    let OptionsOffset = 240

    /// RFC 951 / RFC 1542 §3.1.1: BOOTP messages are at least 300 bytes (relays may drop shorter).
    [<Literal>]
    let MinimumLength = 300

    /// Option codes (RFC 2132, RFC 3442).
    module Code =
        [<Literal>]
        let Pad = 0uy

        [<Literal>]
        let SubnetMask = 1uy

        [<Literal>]
        let Router = 3uy

        [<Literal>]
        let Dns = 6uy

        [<Literal>]
        let HostName = 12uy

        [<Literal>]
        let Mtu = 26uy

        [<Literal>]
        let RequestedAddress = 50uy

        [<Literal>]
        let LeaseTime = 51uy

        [<Literal>]
        let Overload = 52uy

        [<Literal>]
        let MessageType = 53uy

        [<Literal>]
        let ServerId = 54uy

        [<Literal>]
        let ParameterRequests = 55uy

        [<Literal>]
        let RenewalTime = 58uy

        [<Literal>]
        let RebindingTime = 59uy

        [<Literal>]
        let ClientId = 61uy

        [<Literal>]
        let ClasslessRoutes = 121uy

        [<Literal>]
        let End = 255uy

    /// A message with every option absent.
    let empty (op: byte) (messageType: DhcpMessageType) (xid: uint32) (mac: MacAddress) : DhcpMessage =
        {
            Op = op
            Xid = xid
            Secs = 0us
            Broadcast = false
            ClientAddress = Ipv4Address.Any
            YourAddress = Ipv4Address.Any
            NextServer = Ipv4Address.Any
            RelayAddress = Ipv4Address.Any
            ClientMac = mac
            MessageType = messageType
            SubnetMask = ValueNone
            Routers = [||]
            DnsServers = [||]
            HostName = null
            Mtu = ValueNone
            RequestedAddress = ValueNone
            LeaseTime = ValueNone
            ServerId = ValueNone
            ParameterRequests = [||]
            RenewalTime = ValueNone
            RebindingTime = ValueNone
            ClientId = [||]
            ClasslessRoutes = [||]
        }

    let private addresses (data: ReadOnlySpan<byte>) =
        let result = Array.zeroCreate (data.Length / 4)

        for i in 0 .. result.Length - 1 do
            result.[i] <- Ipv4Address.Read(data.Slice(4 * i))

        result

    /// RFC 3442 §3: each route is a width (0..32), the significant octets of the destination
    /// (ceil(width / 8)), then four octets of router. Any other layout is an error.
    let parseClasslessRoutes (data: ReadOnlySpan<byte>) : Result<ClasslessRoute[], ParseError> =
        let routes = ResizeArray()
        let mutable i = 0
        let mutable error = ValueNone

        while error.IsNone && i < data.Length do
            let width = int data.[i]

            if width > 32 then
                error <- ValueSome(BadField "classless route width")
            else
                let significant = (width + 7) / 8

                if i + 1 + significant + 4 > data.Length then
                    error <- ValueSome(BadField "classless route length")
                else
                    let mutable destination = 0u

                    for k in 0 .. significant - 1 do
                        destination <- destination ||| (uint32 data.[i + 1 + k] <<< (24 - 8 * k))

                    let router = Ipv4Address.Read(data.Slice(i + 1 + significant))

                    // The bits past the width must be zero (§3: "the significant portion").
                    if destination &&& ~~~(Route.mask4 width) <> 0u then
                        error <- ValueSome(BadField "classless route destination")
                    else
                        routes.Add
                            {
                                Destination = Ipv4Address destination
                                PrefixLength = width
                                Router = router
                            }

                        i <- i + 1 + significant + 4

        match error with
        | ValueSome e -> Error e
        | ValueNone -> Ok(routes.ToArray())

    /// Reads a DHCP message (the UDP payload). Errors: shorter than the header and cookie, a
    /// hardware type or length other than Ethernet's, another cookie, an option running past the
    /// end, an option of a size its code forbids, a bad route encoding, no message type (plain
    /// BOOTP). Never throws.
    let parse (data: ReadOnlySpan<byte>) : Result<DhcpMessage, ParseError> =
        if data.Length < OptionsOffset + 1 then
            Error(Truncated(OptionsOffset + 1, data.Length))
        elif data.[0] <> 1uy && data.[0] <> 2uy then
            Error(BadField "op")
        elif data.[1] <> 1uy || data.[2] <> 6uy then
            Error(BadField "hardware type")
        elif BinaryPrimitives.ReadUInt32BigEndian(data.Slice FixedLength) <> MagicCookie then
            Error(BadField "magic cookie")
        else
            let mutable m =
                { empty
                      data.[0]
                      (LanguagePrimitives.EnumOfValue 0uy)
                      (BinaryPrimitives.ReadUInt32BigEndian(data.Slice 4))
                      (MacAddress.Read(data.Slice 28)) with
                    Secs = BinaryPrimitives.ReadUInt16BigEndian(data.Slice 8)
                    Broadcast = data.[10] &&& 0x80uy <> 0uy
                    ClientAddress = Ipv4Address.Read(data.Slice 12)
                    YourAddress = Ipv4Address.Read(data.Slice 16)
                    NextServer = Ipv4Address.Read(data.Slice 20)
                    RelayAddress = Ipv4Address.Read(data.Slice 24)
                }

            let mutable error = ValueNone
            let mutable i = OptionsOffset
            let mutable ended = false

            while error.IsNone && not ended && i < data.Length do
                let code = data.[i]

                if code = Code.Pad then
                    i <- i + 1
                elif code = Code.End then
                    ended <- true
                elif i + 1 >= data.Length || i + 2 + int data.[i + 1] > data.Length then
                    error <- ValueSome(BadOptionLength(i - OptionsOffset))
                else
                    let length = int data.[i + 1]
                    let body = data.Slice(i + 2, length)

                    let size (ok: bool) =
                        if ok then
                            ()
                        else
                            error <- ValueSome(BadOptionSize(int code, length))

                    let addressList = length >= 4 && length % 4 = 0

                    match code with
                    | Code.SubnetMask ->
                        size (length = 4)

                        if length = 4 then
                            m <-
                                { m with
                                    SubnetMask = ValueSome(Ipv4Address.Read body)
                                }
                    | Code.Router ->
                        size addressList

                        if addressList then
                            m <- { m with Routers = addresses body }
                    | Code.Dns ->
                        size addressList

                        if addressList then
                            m <- { m with DnsServers = addresses body }
                    | Code.HostName ->
                        size (length >= 1)

                        m <-
                            { m with
                                HostName = Encoding.ASCII.GetString body
                            }
                    | Code.Mtu ->
                        let ok = length = 2 && BinaryPrimitives.ReadUInt16BigEndian body >= 68us
                        size ok

                        if ok then
                            m <-
                                { m with
                                    Mtu = ValueSome(int (BinaryPrimitives.ReadUInt16BigEndian body))
                                }
                    | Code.RequestedAddress
                    | Code.ServerId ->
                        size (length = 4)

                        if length = 4 then
                            let a = ValueSome(Ipv4Address.Read body)

                            m <-
                                if code = Code.ServerId then
                                    { m with ServerId = a }
                                else
                                    { m with RequestedAddress = a }
                    | Code.LeaseTime
                    | Code.RenewalTime
                    | Code.RebindingTime ->
                        size (length = 4)

                        if length = 4 then
                            let t = ValueSome(BinaryPrimitives.ReadUInt32BigEndian body)

                            m <-
                                match code with
                                | Code.LeaseTime -> { m with LeaseTime = t }
                                | Code.RenewalTime -> { m with RenewalTime = t }
                                | _ -> { m with RebindingTime = t }
                    | Code.MessageType ->
                        let ok = length = 1 && body.[0] >= 1uy && body.[0] <= 8uy
                        size ok

                        if ok then
                            m <-
                                { m with
                                    MessageType = LanguagePrimitives.EnumOfValue body.[0]
                                }
                    | Code.ParameterRequests ->
                        size (length >= 1)

                        m <-
                            { m with
                                ParameterRequests = body.ToArray()
                            }
                    | Code.ClientId ->
                        size (length >= 2)
                        m <- { m with ClientId = body.ToArray() }
                    | Code.ClasslessRoutes ->
                        size (length >= 5)

                        if length >= 5 then
                            match parseClasslessRoutes body with
                            | Ok routes -> m <- { m with ClasslessRoutes = routes }
                            | Error e -> error <- ValueSome e
                    | _ -> () // not ours (option overload 52 included: not supported)

                    i <- i + 2 + length

            match error with
            | ValueSome e -> Error e
            | ValueNone when m.MessageType = LanguagePrimitives.EnumOfValue 0uy -> Error(BadField "message type")
            | ValueNone -> Ok m

    /// The bytes `write` needs for `m`.
    let length (m: DhcpMessage) : int =
        let optional (present: bool) (n: int) = if present then 2 + n else 0

        let routes =
            m.ClasslessRoutes |> Array.sumBy (fun r -> 1 + (r.PrefixLength + 7) / 8 + 4)

        let options =
            3 // message type
            + optional m.SubnetMask.IsSome 4
            + optional (m.Routers.Length > 0) (4 * m.Routers.Length)
            + optional (m.DnsServers.Length > 0) (4 * m.DnsServers.Length)
            + optional (not (String.IsNullOrEmpty m.HostName)) (if isNull m.HostName then 0 else m.HostName.Length)
            + optional m.Mtu.IsSome 2
            + optional m.RequestedAddress.IsSome 4
            + optional m.LeaseTime.IsSome 4
            + optional m.ServerId.IsSome 4
            + optional (m.ParameterRequests.Length > 0) m.ParameterRequests.Length
            + optional m.RenewalTime.IsSome 4
            + optional m.RebindingTime.IsSome 4
            + optional (m.ClientId.Length > 0) m.ClientId.Length
            + optional (m.ClasslessRoutes.Length > 0) routes
            + 1 // end

        max MinimumLength (OptionsOffset + options)

    /// Writes `m` into `dst` (zeroed first) and returns its length: the header, the cookie, the
    /// present options, END, and zero padding up to 300 bytes. Throws ArgumentException when
    /// `dst` is too short or an option does not fit its 255-byte length (RFC 3396 splitting is
    /// not done).
    let write (m: DhcpMessage) (dst: Span<byte>) : int =
        let total = length m

        if dst.Length < total then
            invalidArg (nameof dst) $"The buffer holds {dst.Length} bytes; the message needs {total}."

        let d = dst.Slice(0, total)
        d.Clear()
        d.[0] <- m.Op
        d.[1] <- 1uy
        d.[2] <- 6uy
        BinaryPrimitives.WriteUInt32BigEndian(d.Slice 4, m.Xid)
        BinaryPrimitives.WriteUInt16BigEndian(d.Slice 8, m.Secs)

        if m.Broadcast then
            d.[10] <- 0x80uy

        m.ClientAddress.Write(d.Slice 12)
        m.YourAddress.Write(d.Slice 16)
        m.NextServer.Write(d.Slice 20)
        m.RelayAddress.Write(d.Slice 24)
        m.ClientMac.Write(d.Slice 28)
        BinaryPrimitives.WriteUInt32BigEndian(d.Slice FixedLength, MagicCookie)
        // The options are laid out in an array first (closures cannot hold a span), then copied.
        let o = Array.zeroCreate<byte>(total - OptionsOffset)
        let mutable i = 0

        let header (code: byte) (n: int) =
            if n > 255 then
                invalidArg (nameof m) $"Option {code} has {n} bytes; one option holds 255."

            o.[i] <- code
            o.[i + 1] <- byte n
            i <- i + 2

        let address (a: Ipv4Address) =
            a.Write(Span(o, i, 4))
            i <- i + 4

        let seconds (code: byte) (t: uint32 voption) =
            match t with
            | ValueSome t ->
                header code 4
                BinaryPrimitives.WriteUInt32BigEndian(Span(o, i, 4), t)
                i <- i + 4
            | ValueNone -> ()

        let bytes (code: byte) (b: byte[]) =
            if b.Length > 0 then
                header code b.Length
                b.CopyTo(o, i)
                i <- i + b.Length

        header Code.MessageType 1
        o.[i] <- byte m.MessageType
        i <- i + 1

        match m.SubnetMask with
        | ValueSome mask ->
            header Code.SubnetMask 4
            address mask
        | ValueNone -> ()

        if m.Routers.Length > 0 then
            header Code.Router (4 * m.Routers.Length)
            Array.iter address m.Routers

        if m.DnsServers.Length > 0 then
            header Code.Dns (4 * m.DnsServers.Length)
            Array.iter address m.DnsServers

        if not (String.IsNullOrEmpty m.HostName) then
            bytes Code.HostName (Encoding.ASCII.GetBytes m.HostName)

        match m.Mtu with
        | ValueSome mtu ->
            header Code.Mtu 2
            BinaryPrimitives.WriteUInt16BigEndian(Span(o, i, 4), uint16 mtu)
            i <- i + 2
        | ValueNone -> ()

        match m.RequestedAddress with
        | ValueSome a ->
            header Code.RequestedAddress 4
            address a
        | ValueNone -> ()

        seconds Code.LeaseTime m.LeaseTime

        match m.ServerId with
        | ValueSome a ->
            header Code.ServerId 4
            address a
        | ValueNone -> ()

        bytes Code.ParameterRequests m.ParameterRequests
        seconds Code.RenewalTime m.RenewalTime
        seconds Code.RebindingTime m.RebindingTime
        bytes Code.ClientId m.ClientId

        if m.ClasslessRoutes.Length > 0 then
            let n = m.ClasslessRoutes |> Array.sumBy (fun r -> 1 + (r.PrefixLength + 7) / 8 + 4)

            header Code.ClasslessRoutes n

            for r in m.ClasslessRoutes do
                let significant = (r.PrefixLength + 7) / 8
                o.[i] <- byte r.PrefixLength

                for k in 0 .. significant - 1 do
                    o.[i + 1 + k] <- byte (r.Destination.Value >>> (24 - 8 * k))

                r.Router.Write(Span(o, i + 1 + significant, 4))
                i <- i + 1 + significant + 4

        o.[i] <- Code.End
        ReadOnlySpan(o).CopyTo(d.Slice OptionsOffset)
        total
