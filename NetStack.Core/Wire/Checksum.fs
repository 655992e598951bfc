/// The Internet checksum (RFC 1071): the 16-bit one's complement of the one's complement sum of
/// the data taken as big-endian 16-bit words, with the IPv4 (RFC 768/793) and IPv6 (RFC 8200
/// §8.1) pseudo-headers and incremental update (RFC 1624).
///
/// A running sum is a plain uint64 of unfolded 16-bit words: `sum` adds data to it, `fold`
/// collapses it to 16 bits, `finish` complements that into the field value. A sum may be built
/// from several pieces, but every piece except the last must have an even length.
///
/// Only the folded value is meaningful: for long inputs `sum` adds a partly folded amount that is
/// congruent modulo 0xFFFF to the plain word sum (and zero exactly when the data is all zero
/// bytes), which is all that one's complement arithmetic sees. Compare sums through `fold`.
module NetStack.Core.Wire.Checksum

open System
open System.Buffers.Binary
open System.Numerics
open System.Runtime.InteropServices

/// The obvious definition, one big-endian word at a time: the oracle the fast `sum` is tested
/// and benchmarked against. Not for production paths.
let internal sumNaive (initial: uint64) (data: ReadOnlySpan<byte>) : uint64 =
    let mutable acc = initial
    let mutable i = 0

    while i + 1 < data.Length do
        acc <- acc + ((uint64 data.[i] <<< 8) ||| uint64 data.[i + 1])
        i <- i + 2

    if i < data.Length then
        acc <- acc + (uint64 data.[i] <<< 8)

    acc

/// Scalar summing for short inputs and for the tail after the vector loop: 32-bit big-endian
/// reads (two words per add; 2^16 ≡ 1 modulo 0xFFFF, so a 32-bit word adds the same as its
/// two halves), then a last word and a last odd byte, padded with zero on the right (RFC 1071 §4.1).
let private sumScalar (initial: uint64) (data: ReadOnlySpan<byte>) : uint64 =
    let mutable acc = initial
    let mutable i = 0

    while i + 4 <= data.Length do
        acc <- acc + uint64 (BinaryPrimitives.ReadUInt32BigEndian(data.Slice i))
        i <- i + 4

    if i + 2 <= data.Length then
        acc <- acc + uint64 (BinaryPrimitives.ReadUInt16BigEndian(data.Slice i))
        i <- i + 2

    if i < data.Length then
        acc <- acc + (uint64 data.[i] <<< 8)

    acc

/// Folds a running sum to its 16-bit one's complement sum (end-around carry).
let fold (acc: uint64) : uint16 =
    let mutable s = (acc &&& 0xFFFFFFFFUL) + (acc >>> 32)
    s <- (s &&& 0xFFFFUL) + (s >>> 16)
    s <- (s &&& 0xFFFFUL) + (s >>> 16)
    s <- (s &&& 0xFFFFUL) + (s >>> 16)
    uint16 s

/// Adds `data`, taken as big-endian 16-bit words (an odd last byte padded with zero), to `initial`.
///
/// Long inputs go through System.Numerics.Vector: the bytes are read as native-order 32-bit lanes
/// (unaligned loads, so any start address works) and widened into 64-bit accumulators, which
/// cannot overflow for any span (at most 2^29 lanes of less than 2^32 each per accumulator lane).
/// Summing in native order and swapping the folded result is exact: the one's complement sum is
/// byte-order independent (RFC 1071 §2(B)). Every vector is a whole number of 16-bit words, so
/// the scalar tail keeps the word alignment of the data.
let sum (initial: uint64) (data: ReadOnlySpan<byte>) : uint64 =
    // Below two vectors the setup and horizontal sum cost more than they save.
    if not Vector.IsHardwareAccelerated || data.Length < 2 * Vector<byte>.Count then
        sumScalar initial data
    else
        let lanes = MemoryMarshal.Cast<byte, Vector<uint32>>(data)
        // Four independent accumulators so consecutive adds do not wait on each other.
        let mutable acc0 = Vector<uint64>.Zero
        let mutable acc1 = Vector<uint64>.Zero
        let mutable acc2 = Vector<uint64>.Zero
        let mutable acc3 = Vector<uint64>.Zero
        let mutable i = 0

        while i + 2 <= lanes.Length do
            let a = lanes.[i]
            let b = lanes.[i + 1]
            acc0 <- acc0 + Vector.WidenLower a
            acc1 <- acc1 + Vector.WidenUpper a
            acc2 <- acc2 + Vector.WidenLower b
            acc3 <- acc3 + Vector.WidenUpper b
            i <- i + 2

        if i < lanes.Length then
            let a = lanes.[i]
            acc0 <- acc0 + Vector.WidenLower a
            acc1 <- acc1 + Vector.WidenUpper a
            i <- i + 1

        let native = fold (Vector.Sum((acc0 + acc1) + (acc2 + acc3)))

        let bigEndian =
            if BitConverter.IsLittleEndian then
                BinaryPrimitives.ReverseEndianness native
            else
                native

        sumScalar (initial + uint64 bigEndian) (data.Slice(i * Vector<byte>.Count))

/// Adds `data` to a running sum when it follows `precedingLength` bytes already summed, so a sum
/// can be built from pieces of any length (a payload that wraps around a ring buffer). After an
/// even number of bytes this is `sum`. After an odd number, `sum` has padded the last byte on the
/// right, so `data` starts in the low byte of a word: its bytes sit one place off their words, and
/// the one's complement sum of byte-swapped words is the byte-swapped sum (RFC 1071 §2(B)).
let sumAfter (initial: uint64) (precedingLength: int) (data: ReadOnlySpan<byte>) : uint64 =
    if precedingLength &&& 1 = 0 then
        sum initial data
    else
        initial + uint64 (BinaryPrimitives.ReverseEndianness(fold (sum 0UL data)))

/// The checksum field value for a running sum: the complement of its fold.
let finish (acc: uint64) : uint16 = ~~~(fold acc)

/// The Internet checksum of `data`.
let compute (data: ReadOnlySpan<byte>) : uint16 = finish (sum 0UL data)

/// True when `data` (a header or segment with its checksum field in place) sums to 0xFFFF.
let verify (initial: uint64) (data: ReadOnlySpan<byte>) : bool = fold (sum initial data) = 0xFFFFus

/// The running sum of the IPv4 pseudo-header (source, destination, zero, protocol, length).
let pseudoHeaderV4 (src: Ipv4Address) (dst: Ipv4Address) (protocol: byte) (length: int) : uint64 =
    uint64 (src.Value >>> 16)
    + uint64 (src.Value &&& 0xFFFFu)
    + uint64 (dst.Value >>> 16)
    + uint64 (dst.Value &&& 0xFFFFu)
    + uint64 protocol
    + uint64 (uint16 length)

/// The running sum of the IPv6 pseudo-header (RFC 8200 §8.1: source, destination,
/// 32-bit upper-layer length, three zero bytes, next header).
let pseudoHeaderV6 (src: Ipv6Address) (dst: Ipv6Address) (nextHeader: byte) (length: int) : uint64 =
    let words (v: uint64) =
        (v >>> 48)
        + ((v >>> 32) &&& 0xFFFFUL)
        + ((v >>> 16) &&& 0xFFFFUL)
        + (v &&& 0xFFFFUL)

    words src.High
    + words src.Low
    + words dst.High
    + words dst.Low
    + (uint64 (uint32 length) >>> 16)
    + (uint64 (uint32 length) &&& 0xFFFFUL)
    + uint64 nextHeader

/// RFC 1624 eqn. 3: the new checksum field after one 16-bit word of the covered data changes
/// from `oldWord` to `newWord`: HC' = ~(~HC + ~m + m').
let update (oldChecksum: uint16) (oldWord: uint16) (newWord: uint16) : uint16 =
    finish (uint64 (~~~oldChecksum) + uint64 (~~~oldWord) + uint64 newWord)
