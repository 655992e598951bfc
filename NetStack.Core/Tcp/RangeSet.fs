namespace NetStack.Core.Tcp

/// A set of half-open ranges [Start, End) of 64-bit stream positions: the out-of-order data a
/// receiver holds beyond its in-order point. Immutable; ranges are kept sorted, disjoint and
/// non-adjacent (touching ranges are merged), so a set never has more ranges than holes + 1.
[<Struct>]
type RangeSet =
    private
        {
            Items: struct (int64 * int64) list
        }

    /// The ranges, sorted by start.
    member this.Ranges = this.Items

    /// True when the set holds no position.
    member this.IsEmpty = List.isEmpty this.Items

/// Operations on `RangeSet`.
[<RequireQualifiedAccess>]
module RangeSet =

    /// The empty set.
    let empty = { Items = [] }

    /// The set with [start, end') added (nothing when the range is empty).
    let add (start: int64) (end': int64) (set: RangeSet) : RangeSet =
        if end' <= start then
            set
        else
            // Walk the sorted list: ranges wholly before stay, ranges touching or overlapping
            // are merged into the new one, the rest follow.
            let rec insert lo hi (items: struct (int64 * int64) list) =
                match items with
                | [] -> [ struct (lo, hi) ]
                | struct (s, e) :: rest when e < lo -> struct (s, e) :: insert lo hi rest
                | struct (s, _) :: _ when hi < s -> struct (lo, hi) :: items
                | struct (s, e) :: rest -> insert (min lo s) (max hi e) rest

            { Items = insert start end' set.Items }

    /// When the first range starts at or before `position`, the position just past it and the
    /// set without it (and without anything below the new position); otherwise `position` and
    /// the set unchanged. This is how the in-order point advances over data received early.
    let advance (position: int64) (set: RangeSet) : struct (int64 * RangeSet) =
        match set.Items with
        | struct (s, e) :: rest when s <= position -> struct (max position e, { Items = rest })
        | _ -> struct (position, set)

    /// True when every position of [start, end') is in the set.
    let contains (start: int64) (end': int64) (set: RangeSet) : bool =
        end' <= start
        || set.Items |> List.exists (fun struct (s, e) -> s <= start && end' <= e)

    /// The number of positions in the set.
    let count (set: RangeSet) : int64 =
        set.Items |> List.sumBy (fun struct (s, e) -> e - s)

    /// The set without any position below `position` (a range straddling it is cut).
    let trimBelow (position: int64) (set: RangeSet) : RangeSet =
        let rec trim (items: struct (int64 * int64) list) =
            match items with
            | struct (_, e) :: rest when e <= position -> trim rest
            | struct (s, e) :: rest when s < position -> struct (position, e) :: rest
            | _ -> items

        match set.Items with
        | struct (s, _) :: _ when s < position -> { Items = trim set.Items }
        | _ -> set

    /// The end of the range holding `position`, if one does.
    let endOfRangeAt (position: int64) (set: RangeSet) : int64 voption =
        let rec find (items: struct (int64 * int64) list) =
            match items with
            | struct (s, e) :: _ when s <= position && position < e -> ValueSome e
            | struct (s, _) :: _ when s > position -> ValueNone
            | _ :: rest -> find rest
            | [] -> ValueNone

        find set.Items

    /// The start of the first range beginning after `position`, if any.
    let nextStartAfter (position: int64) (set: RangeSet) : int64 voption =
        let rec find (items: struct (int64 * int64) list) =
            match items with
            | struct (s, _) :: _ when s > position -> ValueSome s
            | _ :: rest -> find rest
            | [] -> ValueNone

        find set.Items

    /// The number of ranges.
    let rangeCount (set: RangeSet) : int = List.length set.Items
