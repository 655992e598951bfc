namespace NetStack.Core.Tcp

open System
open System.Buffers.Binary
open System.Numerics

/// The 128-bit secret behind initial sequence numbers (RFC 6528 §3). The caller draws it once
/// from a cryptographic random source when the stack starts and keeps it for the stack's life.
[<Struct>]
type IsnKey =
    {
        /// First half of the key (SipHash k0).
        K0: uint64
        /// Second half of the key (SipHash k1).
        K1: uint64
    }

/// Initial sequence numbers per RFC 6528 §3: ISN = M + F(localip, localport, remoteip,
/// remoteport, secretkey), where M is a clock ticking every 4 µs and F a keyed pseudorandom
/// function. F here is SipHash-2-4, a keyed PRF designed for short inputs: an off-path attacker
/// who does not know the key cannot predict another 4-tuple's ISN, while one 4-tuple's ISNs
/// still grow with the clock so a new incarnation does not overlap an old one's sequence space.
/// Both the key and the clock are inputs: this module reads neither a clock nor a random source.
[<RequireQualifiedAccess>]
module Isn =

    // SipHash-2-4 (Aumasson and Bernstein, 2012): two compression rounds per 8-byte word,
    // four finalisation rounds. The state is four 64-bit words passed by value.
    let inline private round (struct (v0: uint64, v1: uint64, v2: uint64, v3: uint64)) =
        let v0 = v0 + v1
        let v1 = BitOperations.RotateLeft(v1, 13) ^^^ v0
        let v0 = BitOperations.RotateLeft(v0, 32)
        let v2 = v2 + v3
        let v3 = BitOperations.RotateLeft(v3, 16) ^^^ v2
        let v0 = v0 + v3
        let v3 = BitOperations.RotateLeft(v3, 21) ^^^ v0
        let v2 = v2 + v1
        let v1 = BitOperations.RotateLeft(v1, 17) ^^^ v2
        let v2 = BitOperations.RotateLeft(v2, 32)
        struct (v0, v1, v2, v3)

    let inline private compress (struct (v0: uint64, v1: uint64, v2: uint64, v3: uint64)) (m: uint64) =
        let struct (v0, v1, v2, v3) = round (round (struct (v0, v1, v2, v3 ^^^ m)))
        struct (v0 ^^^ m, v1, v2, v3)

    /// SipHash-2-4 of `data` under the key (k0, k1), words read little-endian as the reference
    /// implementation does.
    let sipHash24 (k0: uint64) (k1: uint64) (data: ReadOnlySpan<byte>) : uint64 =
        // The constants spell "somepseudorandomlygeneratedbytes".
        let mutable state =
            struct (k0 ^^^ 0x736f6d6570736575UL,
                    k1 ^^^ 0x646f72616e646f6dUL,
                    k0 ^^^ 0x6c7967656e657261UL,
                    k1 ^^^ 0x7465646279746573UL)

        let mutable i = 0

        while i + 8 <= data.Length do
            state <- compress state (BinaryPrimitives.ReadUInt64LittleEndian(data.Slice i))
            i <- i + 8

        // The last word holds the remaining 0..7 bytes and the length modulo 256 in its top byte.
        let mutable last = uint64 (data.Length &&& 0xFF) <<< 56
        let mutable shift = 0

        while i < data.Length do
            last <- last ||| (uint64 data.[i] <<< shift)
            shift <- shift + 8
            i <- i + 1

        let struct (v0, v1, v2, v3) = compress state last

        let struct (v0, v1, v2, v3) =
            round (round (round (round (struct (v0, v1, v2 ^^^ 0xFFUL, v3)))))

        v0 ^^^ v1 ^^^ v2 ^^^ v3

    /// RFC 6528's M: a 32-bit clock that ticks every 4 microseconds (wrapping every ~4.77 h).
    let clock (nowMicros: int64) : uint32 = uint32 (nowMicros / 4L)

    /// The ISN for a connection between (localAddress, localPort) and (remoteAddress,
    /// remotePort), addresses as their 4 or 16 network-order bytes, at time `nowMicros`.
    let generate
        (key: IsnKey)
        (nowMicros: int64)
        (localAddress: ReadOnlySpan<byte>)
        (localPort: uint16)
        (remoteAddress: ReadOnlySpan<byte>)
        (remotePort: uint16)
        : SeqNum =
        if localAddress.Length <> 4 && localAddress.Length <> 16 then
            invalidArg (nameof localAddress) "An IP address has 4 or 16 bytes."

        if remoteAddress.Length <> localAddress.Length then
            invalidArg (nameof remoteAddress) "Both addresses must be of the same family."

        // One small buffer per connection set-up: off the per-segment path.
        let tuple = Array.zeroCreate<byte>(2 * localAddress.Length + 4)
        let span = Span tuple
        localAddress.CopyTo span
        BinaryPrimitives.WriteUInt16BigEndian(span.Slice localAddress.Length, localPort)
        remoteAddress.CopyTo(span.Slice(localAddress.Length + 2))
        BinaryPrimitives.WriteUInt16BigEndian(span.Slice(2 * localAddress.Length + 2), remotePort)
        let f = sipHash24 key.K0 key.K1 (ReadOnlySpan tuple)
        SeqNum(clock nowMicros + uint32 f)

    /// SipHash-2-4 of the 48-byte message w0..w5 (each word little-endian), with no buffer: the
    /// SYN-cookie MAC runs once per SYN in a flood, so it must not allocate.
    let sipHash24Words
        (k0: uint64)
        (k1: uint64)
        (w0: uint64)
        (w1: uint64)
        (w2: uint64)
        (w3: uint64)
        (w4: uint64)
        (w5: uint64)
        : uint64 =
        let state =
            struct (k0 ^^^ 0x736f6d6570736575UL,
                    k1 ^^^ 0x646f72616e646f6dUL,
                    k0 ^^^ 0x6c7967656e657261UL,
                    k1 ^^^ 0x7465646279746573UL)

        let state =
            compress (compress (compress (compress (compress (compress state w0) w1) w2) w3) w4) w5

        // 48 bytes: no tail bytes, the length in the last word's top byte.
        let struct (v0, v1, v2, v3) = compress state (48UL <<< 56)

        let struct (v0, v1, v2, v3) =
            round (round (round (round (struct (v0, v1, v2 ^^^ 0xFFUL, v3)))))

        v0 ^^^ v1 ^^^ v2 ^^^ v3

/// SYN cookies (RFC 4987 §3.6): when a listener's half-open queue is full, the SYN,ACK's ISN
/// carries everything the listener would have kept, so no state is held until the peer's ACK
/// proves it saw our SYN,ACK. Layout of the 32-bit cookie:
///
///   bits 31..27  a time counter (one tick per `PeriodMicros`), modulo 32: the cookie's age
///   bits 26..24  the peer's MSS, as an index into `MssTable`
///   bits 23..0   a MAC: SipHash-2-4 under a secret key over the 4-tuple, the peer's ISN, the
///                full counter and the MSS index, truncated to 24 bits
///
/// A cookie is valid for the counter it was made with and the one after (64 to 128 s). Only the
/// MSS survives: window scaling, SACK-permitted and timestamps that the SYN offered are not
/// encoded (this stack keeps no timestamps to hide them in), so a connection set up by cookie
/// runs without them, as RFC 4987 §3.6 notes. An off-path attacker must guess 24 MAC bits to
/// complete a connection with a forged ACK.
[<RequireQualifiedAccess>]
module SynCookie =

    /// The MSS values a cookie can carry (3 bits): common path MSSs, the largest at or below the
    /// peer's MSS is used (536, the IPv4 minimum, when it announced less).
    let MssTable = [| 536; 1024; 1220; 1300; 1360; 1400; 1440; 1460 |]

    /// One tick of the cookie clock: 64 seconds, in microseconds.
    [<Literal>]
    let PeriodMicros = 64_000_000L

    /// The cookie clock at `nowMicros`.
    let counter (nowMicros: int64) : uint32 = uint32 (nowMicros / PeriodMicros)

    /// The index into `MssTable` of the largest entry not above `mss` (0 below 536).
    let mssIndex (mss: int) : int =
        let mutable i = MssTable.Length - 1

        while i > 0 && MssTable.[i] > mss do
            i <- i - 1

        i

    // An address of 4 or 16 bytes as two words (an IPv4 address zero-extended).
    let private words (address: ReadOnlySpan<byte>) =
        if address.Length = 16 then
            struct (BinaryPrimitives.ReadUInt64LittleEndian address,
                    BinaryPrimitives.ReadUInt64LittleEndian(address.Slice 8))
        elif address.Length = 4 then
            struct (uint64 (BinaryPrimitives.ReadUInt32LittleEndian address), 0UL)
        else
            invalidArg (nameof address) "An IP address has 4 or 16 bytes."

    let private mac
        (key: IsnKey)
        (localAddress: ReadOnlySpan<byte>)
        (localPort: uint16)
        (remoteAddress: ReadOnlySpan<byte>)
        (remotePort: uint16)
        (peerIsn: SeqNum)
        (count: uint32)
        (index: int)
        =
        if remoteAddress.Length <> localAddress.Length then
            invalidArg (nameof remoteAddress) "Both addresses must be of the same family."

        let struct (l0, l1) = words localAddress
        let struct (r0, r1) = words remoteAddress

        let ports =
            (uint64 localPort <<< 48)
            ||| (uint64 remotePort <<< 32)
            ||| uint64 peerIsn.Value

        let extra = (uint64 count <<< 8) ||| uint64 index
        uint32 (Isn.sipHash24Words key.K0 key.K1 l0 l1 r0 r1 ports extra) &&& 0xFFFFFFu

    /// The cookie (our ISS for the SYN,ACK) for a SYN with ISN `peerIsn` and MSS `peerMss` from
    /// (remoteAddress, remotePort) to (localAddress, localPort), addresses as 4 or 16 bytes.
    let make
        (key: IsnKey)
        (nowMicros: int64)
        (localAddress: ReadOnlySpan<byte>)
        (localPort: uint16)
        (remoteAddress: ReadOnlySpan<byte>)
        (remotePort: uint16)
        (peerIsn: SeqNum)
        (peerMss: int)
        : SeqNum =
        let count = counter nowMicros
        let index = mssIndex peerMss
        let m = mac key localAddress localPort remoteAddress remotePort peerIsn count index
        SeqNum(((count &&& 31u) <<< 27) ||| (uint32 index <<< 24) ||| m)

    /// Checks the cookie `iss` (the peer's ACK number minus one) of a connection whose peer ISN
    /// is `peerIsn` (the ACK's sequence number minus one). Returns the MSS it carries when the
    /// MAC matches for the current or the previous counter, ValueNone otherwise.
    let check
        (key: IsnKey)
        (nowMicros: int64)
        (localAddress: ReadOnlySpan<byte>)
        (localPort: uint16)
        (remoteAddress: ReadOnlySpan<byte>)
        (remotePort: uint16)
        (peerIsn: SeqNum)
        (iss: SeqNum)
        : int voption =
        let now = counter nowMicros
        let age = (now - (iss.Value >>> 27)) &&& 31u

        if age > 1u || age > now then
            ValueNone
        else
            let count = now - age
            let index = int ((iss.Value >>> 24) &&& 7u)
            let m = mac key localAddress localPort remoteAddress remotePort peerIsn count index

            if m = (iss.Value &&& 0xFFFFFFu) then
                ValueSome MssTable.[index]
            else
                ValueNone
