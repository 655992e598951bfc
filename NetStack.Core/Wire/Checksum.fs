/// The Internet checksum (RFC 1071): the 16-bit one's complement of the one's complement sum of
/// the data taken as big-endian 16-bit words, with the IPv4 (RFC 768/793) and IPv6 (RFC 8200
/// §8.1) pseudo-headers and incremental update (RFC 1624).
///
/// A running sum is a plain uint64 of unfolded 16-bit words: `sum` adds data to it, `fold`
/// collapses it to 16 bits, `finish` complements that into the field value. A sum may be built
/// from several pieces, but every piece except the last must have an even length.
module NetStack.Core.Wire.Checksum

open System
open System.Buffers.Binary

/// Adds `data`, taken as big-endian 16-bit words (an odd last byte padded with zero), to `initial`.
let sum (initial: uint64) (data: ReadOnlySpan<byte>) : uint64 =
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
        (v >>> 48) + ((v >>> 32) &&& 0xFFFFUL) + ((v >>> 16) &&& 0xFFFFUL) + (v &&& 0xFFFFUL)

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
