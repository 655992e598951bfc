namespace NetStack.Core.Wire

open System
open System.Buffers.Binary
open System.Text

/// Why bytes could not be read as a DNS message (RFC 1035 §4). The parser returns these and
/// never throws: a message from the network is hostile until it has parsed.
[<Struct>]
type DnsParseError =
    /// The message ends before a field that must be there (a header, a question or record whose
    /// count says it exists: counts that lie end here).
    | MessageTruncated of needed: int * available: int
    /// A compression pointer points at or past the end of the message.
    | PointerPastEnd of pointer: int
    /// A compression pointer does not point strictly before the name (or the suffix) it is
    /// read from: the rule that makes loops impossible (RFC 1035 §4.1.4 pointers point to a
    /// prior occurrence).
    | PointerNotBackward of pointer: int
    /// More compression pointers in one name than a name of 255 bytes can need.
    | TooManyPointers
    /// A label's length byte has the reserved 01 or 10 prefix (RFC 6891 §5 retired 01).
    | ReservedLabelType of lengthByte: byte
    /// A name longer than 255 bytes on the wire (RFC 1035 §2.3.4).
    | NameTooLong of length: int
    /// RDATA whose length does not fit its type (an A record of 5 bytes, a CNAME that runs
    /// past its RDATA).
    | BadRecordData of recordType: uint16
    /// A section count above what the message could hold (each entry takes at least 5 bytes).
    | CountTooLarge of count: int

/// A DNS question (RFC 1035 §4.1.2). Names are text: labels joined by '.', without the final
/// dot; a byte that is not a printable ASCII character, a '.' or a '\' inside a label is
/// written \DDD (RFC 1035 §5.1), so every wire name has one text form.
type DnsQuestion =
    {
        /// The name asked about.
        Name: string
        /// QTYPE (1 A, 28 AAAA, 5 CNAME, 6 SOA ...).
        Type: uint16
        /// QCLASS (1 IN).
        Class: uint16
    }

/// The SOA record's fields (RFC 1035 §3.3.13); MINIMUM bounds negative caching (RFC 2308 §5).
type DnsSoa =
    {
        /// MNAME, the primary server.
        PrimaryServer: string
        /// RNAME, the responsible mailbox.
        Mailbox: string
        /// SERIAL.
        Serial: uint32
        /// REFRESH (seconds).
        Refresh: uint32
        /// RETRY (seconds).
        Retry: uint32
        /// EXPIRE (seconds).
        Expire: uint32
        /// MINIMUM: the TTL of negative answers (RFC 2308 §4).
        Minimum: uint32
    }

/// The RDATA of a resource record: the types the stub resolver reads, others kept as bytes.
type DnsRecordData =
    /// An IPv4 address (type 1).
    | A of Ipv4Address
    /// An IPv6 address (type 28, RFC 3596).
    | Aaaa of Ipv6Address
    /// The canonical name (type 5).
    | Cname of string
    /// Start of authority (type 6).
    | Soa of DnsSoa
    /// Any other type: its RDATA as received (names in it may hold compression pointers into
    /// the message they came from, so they are not rewritten).
    | Opaque of byte[]

/// A resource record (RFC 1035 §4.1.3).
type DnsRecord =
    {
        /// The owner name.
        Name: string
        /// TYPE.
        Type: uint16
        /// CLASS.
        Class: uint16
        /// TTL in seconds (RFC 2181 §8: a value with the top bit set is read as 0).
        Ttl: uint32
        /// RDATA.
        Data: DnsRecordData
    }

/// A DNS message (RFC 1035 §4.1).
type DnsMessage =
    {
        /// ID.
        Id: uint16
        /// The second header word: QR, OPCODE, AA, TC, RD, RA, Z, RCODE.
        Flags: uint16
        /// The question section.
        Questions: DnsQuestion list
        /// The answer section.
        Answers: DnsRecord list
        /// The authority section.
        Authority: DnsRecord list
        /// The additional section.
        Additional: DnsRecord list
    }

/// DNS messages (RFC 1035 §4): parse with compression, build queries and (for tests and
/// servers) whole messages without compression. Case-insensitive name comparison (RFC 4343).
[<RequireQualifiedAccess>]
module Dns =

    /// The header: ID, flags, four counts (RFC 1035 §4.1.1).
    [<Literal>]
    let HeaderLength = 12

    /// The server port (RFC 1035 §4.2).
    [<Literal>]
    let Port = 53

    /// The largest UDP message without EDNS0 (RFC 1035 §4.2.1); a longer answer comes with TC
    /// set and is asked again over TCP.
    [<Literal>]
    let MaxUdpLength = 512

    /// The longest name on the wire, length bytes and the root's zero included (RFC 1035 §2.3.4).
    [<Literal>]
    let MaxNameLength = 255

    /// The longest label (RFC 1035 §2.3.4).
    [<Literal>]
    let MaxLabelLength = 63

    /// TYPE A.
    [<Literal>]
    let TypeA = 1us

    /// TYPE CNAME.
    [<Literal>]
    let TypeCname = 5us

    /// TYPE SOA.
    [<Literal>]
    let TypeSoa = 6us

    /// TYPE AAAA (RFC 3596).
    [<Literal>]
    let TypeAaaa = 28us

    /// CLASS IN.
    [<Literal>]
    let ClassIn = 1us

    /// RCODE 0: no error.
    [<Literal>]
    let RcodeNoError = 0

    /// RCODE 1: format error.
    [<Literal>]
    let RcodeFormatError = 1

    /// RCODE 2: server failure.
    [<Literal>]
    let RcodeServerFailure = 2

    /// RCODE 3: name error (NXDOMAIN).
    [<Literal>]
    let RcodeNameError = 3

    /// RCODE 4: not implemented.
    [<Literal>]
    let RcodeNotImplemented = 4

    /// RCODE 5: refused.
    [<Literal>]
    let RcodeRefused = 5

    /// QR: the message is a response.
    let isResponse (flags: uint16) = flags &&& 0x8000us <> 0us

    /// OPCODE (0 is a standard query).
    let opcode (flags: uint16) = int (flags >>> 11) &&& 0xF

    /// TC: the message was truncated to fit the transport (RFC 1035 §4.1.1).
    let isTruncated (flags: uint16) = flags &&& 0x0200us <> 0us

    /// RCODE (the four low bits; the extended bits of EDNS0 are not used here).
    let rcode (flags: uint16) = int (flags &&& 0xFus)

    /// The flags of a standard query with recursion desired (RD = 1).
    [<Literal>]
    let QueryFlags = 0x0100us

    // ------------------------------------------------------------------------------------------
    // Names
    // ------------------------------------------------------------------------------------------

    /// True when two names are the same name: ASCII letters compare without case (RFC 4343 §3),
    /// every other byte exactly (escaped bytes are digits in the text form, so OrdinalIgnoreCase
    /// folds nothing else).
    let namesEqual (a: string) (b: string) =
        String.Equals(a, b, StringComparison.OrdinalIgnoreCase)

    let private appendLabel (text: StringBuilder) (label: ReadOnlySpan<byte>) =
        if text.Length > 0 then
            text.Append '.' |> ignore

        for b in label do
            if b > 0x20uy && b < 0x7Fuy && b <> byte '.' && b <> byte '\\' then
                text.Append(char b) |> ignore
            else
                text.Append('\\').Append((int b).ToString("D3")) |> ignore

    /// Reads the name at `offset` of `message`, following compression pointers (RFC 1035
    /// §4.1.4). Each pointer must point before the start of the labels it continues (so a
    /// chain cannot loop), at most 127 pointers, and the name at most 255 bytes. Returns the
    /// name and the offset after it (after its first pointer when compressed).
    let readName (message: ReadOnlySpan<byte>) (offset: int) : Result<struct (string * int), DnsParseError> =
        let text = StringBuilder()
        let mutable at = offset
        let mutable limit = offset
        let mutable next = -1
        let mutable wire = 1
        let mutable hops = 0
        let mutable result = ValueNone

        while result.IsNone do
            if at >= message.Length then
                result <- ValueSome(Error(MessageTruncated(at + 1, message.Length)))
            else
                let length = message.[at]

                match length &&& 0xC0uy with
                | 0uy when length = 0uy ->
                    if next < 0 then
                        next <- at + 1

                    result <- ValueSome(Ok(struct (text.ToString(), next)))
                | 0uy ->
                    let n = int length
                    wire <- wire + n + 1

                    if wire > MaxNameLength then
                        result <- ValueSome(Error(NameTooLong wire))
                    elif at + 1 + n > message.Length then
                        result <- ValueSome(Error(MessageTruncated(at + 1 + n, message.Length)))
                    else
                        appendLabel text (message.Slice(at + 1, n))
                        at <- at + 1 + n
                | 0xC0uy ->
                    if at + 2 > message.Length then
                        result <- ValueSome(Error(MessageTruncated(at + 2, message.Length)))
                    else
                        let pointer =
                            int (BinaryPrimitives.ReadUInt16BigEndian(message.Slice at) &&& 0x3FFFus)

                        hops <- hops + 1

                        if next < 0 then
                            next <- at + 2

                        if pointer >= message.Length then
                            result <- ValueSome(Error(PointerPastEnd pointer))
                        elif pointer >= limit then
                            result <- ValueSome(Error(PointerNotBackward pointer))
                        elif hops > 127 then
                            result <- ValueSome(Error TooManyPointers)
                        else
                            limit <- pointer
                            at <- pointer
                | _ -> result <- ValueSome(Error(ReservedLabelType length))

        result.Value

    /// The wire length of a name's text form (labels with their length bytes, the root's zero),
    /// or None when the text is not a name: an empty label, a label over 63 bytes, a bad escape,
    /// a non-ASCII character, more than 255 bytes. A final dot is allowed; "" and "." are the root.
    let private labelsOf (name: string) : byte[] list option =
        let name =
            if name.EndsWith '.' && name <> "." then
                name.Substring(0, name.Length - 1)
            else
                name

        if name = "" || name = "." then
            Some []
        else
            let labels = ResizeArray<byte[]>()
            let current = ResizeArray<byte>()
            let mutable ok = true
            let mutable i = 0

            let finish () =
                if current.Count = 0 || current.Count > MaxLabelLength then
                    ok <- false
                else
                    labels.Add(current.ToArray())
                    current.Clear()

            while ok && i < name.Length do
                let c = name.[i]

                if c = '.' then
                    finish ()
                    i <- i + 1
                elif c = '\\' then
                    if
                        i + 3 < name.Length
                        && Char.IsAsciiDigit name.[i + 1]
                        && Char.IsAsciiDigit name.[i + 2]
                        && Char.IsAsciiDigit name.[i + 3]
                    then
                        let value = int (name.Substring(i + 1, 3))

                        if value > 255 then
                            ok <- false
                        else
                            current.Add(byte value)
                            i <- i + 4
                    elif
                        i + 1 < name.Length
                        && not (Char.IsAsciiDigit name.[i + 1])
                        && name.[i + 1] < '\u007f'
                    then
                        current.Add(byte name.[i + 1])
                        i <- i + 2
                    else
                        ok <- false
                elif c > ' ' && c < '\u007f' then
                    current.Add(byte c)
                    i <- i + 1
                else
                    ok <- false

            if ok then
                finish ()

            let wire = (labels |> Seq.sumBy (fun l -> l.Length + 1)) + 1

            if ok && wire <= MaxNameLength then
                Some(List.ofSeq labels)
            else
                None

    /// True when `name` is a valid name in text form (see `writeName`).
    let isValidName (name: string) =
        not (isNull name) && (labelsOf name).IsSome

    /// Writes `name` uncompressed at the start of `buffer`; the bytes written, or -1 when the
    /// text is not a valid name or the buffer is too small.
    let writeName (buffer: Span<byte>) (name: string) : int =
        match labelsOf name with
        | None -> -1
        | Some labels ->
            let length = (labels |> List.sumBy (fun l -> l.Length + 1)) + 1

            if length > buffer.Length then
                -1
            else
                let mutable at = 0

                for label in labels do
                    buffer.[at] <- byte label.Length
                    label.AsSpan().CopyTo(buffer.Slice(at + 1))
                    at <- at + 1 + label.Length

                buffer.[at] <- 0uy
                at + 1

    // ------------------------------------------------------------------------------------------
    // Parsing
    // ------------------------------------------------------------------------------------------

    /// Reads the header's ID and flags, or None when fewer than 12 bytes arrived.
    let tryReadHeader (message: ReadOnlySpan<byte>) : struct (uint16 * uint16) voption =
        if message.Length < HeaderLength then
            ValueNone
        else
            ValueSome(
                struct (BinaryPrimitives.ReadUInt16BigEndian message,
                        BinaryPrimitives.ReadUInt16BigEndian(message.Slice 2))
            )

    let private readQuestion (message: ReadOnlySpan<byte>) (offset: int) =
        match readName message offset with
        | Error e -> Error e
        | Ok(struct (name, at)) ->
            if at + 4 > message.Length then
                Error(MessageTruncated(at + 4, message.Length))
            else
                Ok(
                    struct ({
                                Name = name
                                Type = BinaryPrimitives.ReadUInt16BigEndian(message.Slice at)
                                Class = BinaryPrimitives.ReadUInt16BigEndian(message.Slice(at + 2))
                            },
                            at + 4)
                )

    let private readU32 (span: ReadOnlySpan<byte>) (at: int) =
        BinaryPrimitives.ReadUInt32BigEndian(span.Slice at)

    // A name inside RDATA [start, finish): it may point anywhere before it, but must end inside.
    let private readRdataName (message: ReadOnlySpan<byte>) (at: int) (finish: int) (rtype: uint16) =
        match readName (message.Slice(0, finish)) at with
        | Ok(struct (name, next)) -> Ok(struct (name, next))
        | Error(MessageTruncated _) -> Error(BadRecordData rtype)
        | Error e -> Error e

    let private readData (message: ReadOnlySpan<byte>) (rtype: uint16) (start: int) (length: int) =
        let finish = start + length

        match rtype with
        | TypeA ->
            if length <> 4 then
                Error(BadRecordData rtype)
            else
                Ok(A(Ipv4Address.Read(message.Slice start)))
        | TypeAaaa ->
            if length <> 16 then
                Error(BadRecordData rtype)
            else
                Ok(Aaaa(Ipv6Address.Read(message.Slice start)))
        | TypeCname ->
            match readRdataName message start finish rtype with
            | Error e -> Error e
            | Ok(struct (name, next)) ->
                if next <> finish then
                    Error(BadRecordData rtype)
                else
                    Ok(Cname name)
        | TypeSoa ->
            match readRdataName message start finish rtype with
            | Error e -> Error e
            | Ok(struct (primary, next)) ->
                match readRdataName message next finish rtype with
                | Error e -> Error e
                | Ok(struct (mailbox, next)) ->
                    if next + 20 <> finish then
                        Error(BadRecordData rtype)
                    else
                        Ok(
                            Soa
                                {
                                    PrimaryServer = primary
                                    Mailbox = mailbox
                                    Serial = readU32 message next
                                    Refresh = readU32 message (next + 4)
                                    Retry = readU32 message (next + 8)
                                    Expire = readU32 message (next + 12)
                                    Minimum = readU32 message (next + 16)
                                }
                        )
        | _ -> Ok(Opaque(message.Slice(start, length).ToArray()))

    let private readRecord (message: ReadOnlySpan<byte>) (offset: int) =
        match readName message offset with
        | Error e -> Error e
        | Ok(struct (name, at)) ->
            if at + 10 > message.Length then
                Error(MessageTruncated(at + 10, message.Length))
            else
                let rtype = BinaryPrimitives.ReadUInt16BigEndian(message.Slice at)
                let rclass = BinaryPrimitives.ReadUInt16BigEndian(message.Slice(at + 2))
                let ttl = readU32 message (at + 4)
                // RFC 2181 §8: a TTL with the most significant bit set is treated as zero.
                let ttl = if ttl > 0x7FFFFFFFu then 0u else ttl
                let length = int (BinaryPrimitives.ReadUInt16BigEndian(message.Slice(at + 8)))
                let start = at + 10

                if start + length > message.Length then
                    Error(MessageTruncated(start + length, message.Length))
                else
                    match readData message rtype start length with
                    | Error e -> Error e
                    | Ok data ->
                        Ok(
                            struct ({
                                        Name = name
                                        Type = rtype
                                        Class = rclass
                                        Ttl = ttl
                                        Data = data
                                    },
                                    start + length)
                        )

    /// Parses a whole message. Every count is checked against the bytes (a question takes at
    /// least 5 bytes, a record 11), so counts that lie end in `CountTooLarge` or
    /// `MessageTruncated`, not in a long loop. Bytes after the last record are ignored.
    let parse (message: ReadOnlySpan<byte>) : Result<DnsMessage, DnsParseError> =
        if message.Length < HeaderLength then
            Error(MessageTruncated(HeaderLength, message.Length))
        else
            let qd = int (BinaryPrimitives.ReadUInt16BigEndian(message.Slice 4))
            let an = int (BinaryPrimitives.ReadUInt16BigEndian(message.Slice 6))
            let ns = int (BinaryPrimitives.ReadUInt16BigEndian(message.Slice 8))
            let ar = int (BinaryPrimitives.ReadUInt16BigEndian(message.Slice 10))
            let room = message.Length - HeaderLength

            if qd * 5 > room then
                Error(CountTooLarge qd)
            elif (an + ns + ar) * 11 > room then
                Error(CountTooLarge(an + ns + ar))
            else
                let mutable at = HeaderLength
                let mutable error = ValueNone
                let questions = ResizeArray<DnsQuestion>()
                let records = ResizeArray<DnsRecord>()
                let mutable i = 0

                while error.IsNone && i < qd do
                    match readQuestion message at with
                    | Ok(struct (q, next)) ->
                        questions.Add q
                        at <- next
                    | Error e -> error <- ValueSome e

                    i <- i + 1

                i <- 0

                while error.IsNone && i < an + ns + ar do
                    match readRecord message at with
                    | Ok(struct (r, next)) ->
                        records.Add r
                        at <- next
                    | Error e -> error <- ValueSome e

                    i <- i + 1

                match error with
                | ValueSome e -> Error e
                | ValueNone ->
                    let all = List.ofSeq records

                    Ok
                        {
                            Id = BinaryPrimitives.ReadUInt16BigEndian message
                            Flags = BinaryPrimitives.ReadUInt16BigEndian(message.Slice 2)
                            Questions = List.ofSeq questions
                            Answers = List.take an all
                            Authority = all |> List.skip an |> List.take ns
                            Additional = List.skip (an + ns) all
                        }

    // ------------------------------------------------------------------------------------------
    // Building
    // ------------------------------------------------------------------------------------------

    /// Writes a standard query (OPCODE 0, RD = 1, one question of class IN, no EDNS0 record)
    /// into `buffer`; the bytes written, or -1 when the name is not valid or the buffer is
    /// too small (12 + 255 + 4 bytes always suffice).
    let writeQuery (buffer: Span<byte>) (id: uint16) (name: string) (qtype: uint16) : int =
        if buffer.Length < HeaderLength + 5 then
            -1
        else
            let n = writeName (buffer.Slice HeaderLength) name

            if n < 0 || HeaderLength + n + 4 > buffer.Length then
                -1
            else
                BinaryPrimitives.WriteUInt16BigEndian(buffer, id)
                BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice 2, QueryFlags)
                BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice 4, 1us)
                buffer.Slice(6, 6).Clear()
                let at = HeaderLength + n
                BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice at, qtype)
                BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice(at + 2), ClassIn)
                at + 4

    /// The longest query `writeQuery` writes.
    [<Literal>]
    let MaxQueryLength = HeaderLength + MaxNameLength + 4

    let private nameBytes (name: string) =
        let buffer = Array.zeroCreate<byte> MaxNameLength
        let n = writeName (Span buffer) name

        if n < 0 then
            invalidArg (nameof name) $"'{name}' is not a valid DNS name."

        buffer.AsSpan(0, n).ToArray()

    let private dataBytes (data: DnsRecordData) =
        match data with
        | A a ->
            let b = Array.zeroCreate 4
            a.Write(Span b)
            b
        | Aaaa a ->
            let b = Array.zeroCreate 16
            a.Write(Span b)
            b
        | Cname name -> nameBytes name
        | Soa soa ->
            let fixedPart = Array.zeroCreate 20

            [ soa.Serial; soa.Refresh; soa.Retry; soa.Expire; soa.Minimum ]
            |> List.iteri (fun i v -> BinaryPrimitives.WriteUInt32BigEndian(fixedPart.AsSpan(4 * i), v))

            Array.concat [ nameBytes soa.PrimaryServer; nameBytes soa.Mailbox; fixedPart ]
        | Opaque bytes -> bytes

    /// The message as bytes, names uncompressed (for tests and the test servers; the resolver
    /// only writes queries). Throws ArgumentException for an invalid name or an RDATA over
    /// 65535 bytes: the caller builds the message, it does not come from the network.
    let toBytes (message: DnsMessage) : byte[] =
        let out = ResizeArray<byte>()

        let u16 (v: uint16) =
            out.Add(byte (v >>> 8))
            out.Add(byte v)

        u16 message.Id
        u16 message.Flags

        for c in
            [
                message.Questions.Length
                message.Answers.Length
                message.Authority.Length
                message.Additional.Length
            ] do
            u16 (uint16 c)

        for q in message.Questions do
            out.AddRange(nameBytes q.Name)
            u16 q.Type
            u16 q.Class

        for r in message.Answers @ message.Authority @ message.Additional do
            out.AddRange(nameBytes r.Name)
            u16 r.Type
            u16 r.Class
            u16 (uint16 (r.Ttl >>> 16))
            u16 (uint16 r.Ttl)
            let data = dataBytes r.Data

            if data.Length > 65535 then
                invalidArg (nameof message) "An RDATA is longer than 65535 bytes."

            u16 (uint16 data.Length)
            out.AddRange data

        out.ToArray()

    /// TCP framing (RFC 1035 §4.2.2, RFC 7766 §8): the message after a two-byte length.
    let frameForTcp (message: ReadOnlySpan<byte>) : byte[] =
        let framed = Array.zeroCreate (message.Length + 2)
        BinaryPrimitives.WriteUInt16BigEndian(framed.AsSpan(), uint16 message.Length)
        message.CopyTo(framed.AsSpan 2)
        framed

    /// The length a TCP frame announces in its first two bytes.
    let tcpFrameLength (prefix: ReadOnlySpan<byte>) : int =
        int (BinaryPrimitives.ReadUInt16BigEndian prefix)
