namespace NetStack.Core.Tcp

open System

/// A TCP sequence number: a point on the circle of 2^32 values (RFC 9293 §3.4).
///
/// Sequence numbers wrap, so two of them are ordered only by the signed 32-bit difference
/// between them (RFC 1982-style serial number arithmetic): `a` is before `b` when `b - a`,
/// taken as a signed 32-bit number, is positive. This order is meaningful only for numbers
/// less than 2^31 apart, which TCP guarantees because a window is at most 2^30 (RFC 7323 §2.3).
/// There is deliberately no `IComparable`: a structural comparison of the raw values would be
/// wrong across the wrap, so comparisons go through the `SeqNum` module functions.
[<Struct; CustomEquality; NoComparison>]
type SeqNum =
    /// The raw 32-bit value, as carried in the header.
    val Value: uint32

    /// A sequence number with the given raw value.
    new(value: uint32) = { Value = value }

    /// The number `n` positions after `a` (before it when `n` is negative), modulo 2^32.
    static member (+)(a: SeqNum, n: int) = SeqNum(a.Value + uint32 n)

    /// The number `n` positions before `a`, modulo 2^32.
    static member (-)(a: SeqNum, n: int) = SeqNum(a.Value - uint32 n)

    /// The signed distance from `b` to `a`: positive when `a` is after `b`. Meaningful when the
    /// two are less than 2^31 apart.
    static member (-)(a: SeqNum, b: SeqNum) : int = int (a.Value - b.Value)

    override this.Equals(o) =
        match o with
        | :? SeqNum as s -> s.Value = this.Value
        | _ -> false

    override this.GetHashCode() = int this.Value

    override this.ToString() = string this.Value

    interface IEquatable<SeqNum> with
        member this.Equals(s) = s.Value = this.Value

/// Comparisons and arithmetic on sequence numbers modulo 2^32 (RFC 9293 §3.4).
[<RequireQualifiedAccess>]
module SeqNum =
    /// The sequence number with raw value `value`.
    let inline ofUInt32 (value: uint32) = SeqNum value

    /// `a` is strictly before `b` (RFC 9293 §3.4's "<").
    let inline lt (a: SeqNum) (b: SeqNum) = int (a.Value - b.Value) < 0

    /// `a` is before or equal to `b` ("=<").
    let inline le (a: SeqNum) (b: SeqNum) = int (a.Value - b.Value) <= 0

    /// `a` is strictly after `b`.
    let inline gt (a: SeqNum) (b: SeqNum) = int (a.Value - b.Value) > 0

    /// `a` is after or equal to `b`.
    let inline ge (a: SeqNum) (b: SeqNum) = int (a.Value - b.Value) >= 0

    /// The later of two sequence numbers.
    let inline max (a: SeqNum) (b: SeqNum) = if ge a b then a else b

    /// The earlier of two sequence numbers.
    let inline min (a: SeqNum) (b: SeqNum) = if le a b then a else b

    /// `lo =< x < hi`, the half-open test RFC 9293 §3.4 uses for windows. Computed on the
    /// unsigned forward distance from `lo`, so it holds for any window size below 2^32
    /// (an empty window, `lo = hi`, contains nothing).
    let inline inWindow (lo: SeqNum) (x: SeqNum) (hi: SeqNum) =
        x.Value - lo.Value < hi.Value - lo.Value

    /// The number of positions from `a` forward to `b`, modulo 2^32 (0 .. 2^32-1).
    let inline forward (a: SeqNum) (b: SeqNum) : uint32 = b.Value - a.Value
