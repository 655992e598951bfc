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
