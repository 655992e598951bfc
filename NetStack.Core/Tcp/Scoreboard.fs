namespace NetStack.Core.Tcp

open NetStack.Core.Wire
open NetStack.Core.Tcp.ConnectionBasics
open NetStack.Core.Tcp.ReceiveWindow

/// Queries of the sender's SACK scoreboard (RFC 6675 §3-4): what is SACKed, the pipe, the
/// next segment to count as lost.
module internal Scoreboard =

    // ---- Loss recovery helpers (RFC 6675 over the scoreboard) -----------------------------------

    /// DupThresh (RFC 6675 §2, RFC 5681 §3.2).
    [<Literal>]
    let DupThresh = 3

    /// The most retransmissions one recovery watches for loss (`RetransmitMarks`); a loss of
    /// an older one is left to the retransmission timer.
    [<Literal>]
    let MaxRetransmitMarks = 32

    /// The most disjoint ranges the scoreboard keeps: a hostile peer SACKing every other byte
    /// cannot make it (and the work per ACK) grow without bound; blocks beyond are ignored.
    [<Literal>]
    let MaxScoreboardRanges = 512

    /// SACKed bytes in [Acked, position).
    let sackedBelow (position: int64) (c: Connection) =
        c.Recovery.Scoreboard.Ranges
        |> List.sumBy (fun struct (s, e) -> if s >= position then 0L else min e position - s)

    /// Pipe (RFC 6675 §4 SetPipe) over the holes of the scoreboard: a hole's bytes count as in
    /// flight unless IsLost holds for it (DupThresh discontiguous SACKed ranges, or more than
    /// (DupThresh - 1)·SMSS SACKed bytes, above it); bytes below HighRxt were retransmitted and
    /// count (again) too.
    let pipe (c: Connection) =
        let top = sendPosOf c c.Snd.Max
        let mutable sackedAbove = RangeSet.count c.Recovery.Scoreboard
        let mutable rangesAbove = RangeSet.rangeCount c.Recovery.Scoreboard
        let mutable cursor = c.Snd.Acked
        let mutable total = 0L
        let threshold = int64 ((DupThresh - 1) * c.Snd.Mss)

        // What the hole [a, b) adds to the pipe. A plain function, not a closure over the
        // mutable counters: a closure would put them in heap cells on every call.
        let inline hole (a: int64) (b: int64) (lost: bool) =
            if b > a then
                let lost = lost || a < c.Recovery.LostBelow
                let retransmitted = max 0L (min b c.Recovery.HighRxt - a)
                (if lost then 0L else b - a) + retransmitted
            else
                0L

        for struct (s, e) in c.Recovery.Scoreboard.Ranges do
            total <- total + hole cursor s (rangesAbove >= DupThresh || sackedAbove > threshold)
            sackedAbove <- sackedAbove - (e - s)
            rangesAbove <- rangesAbove - 1
            cursor <- e

        total <- total + hole cursor top (rangesAbove >= DupThresh || sackedAbove > threshold)
        int (min total (int64 System.Int32.MaxValue))

    /// NextSeg rule 1 (RFC 6675 §4): the first byte at or above HighRxt in a hole for which
    /// IsLost holds, and how much of the hole (at most one segment) to resend.
    let nextLost (c: Connection) : struct (int64 * int) voption =
        let mutable sackedAbove = RangeSet.count c.Recovery.Scoreboard
        let mutable rangesAbove = RangeSet.rangeCount c.Recovery.Scoreboard
        let mutable cursor = c.Snd.Acked
        let mutable found = ValueNone
        let threshold = int64 ((DupThresh - 1) * c.Snd.Mss)

        for struct (s, e) in c.Recovery.Scoreboard.Ranges do
            if found.IsNone then
                let from = max cursor c.Recovery.HighRxt

                if
                    from < s
                    && (rangesAbove >= DupThresh
                        || sackedAbove > threshold
                        || from < c.Recovery.LostBelow)
                then
                    found <- ValueSome(struct (from, int (min (int64 c.Snd.Mss) (s - from))))

                sackedAbove <- sackedAbove - (e - s)
                rangesAbove <- rangesAbove - 1
                cursor <- e

        found
