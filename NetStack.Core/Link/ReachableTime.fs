namespace NetStack.Core.Link

open System

/// RFC 4861 §6.3.2 BaseReachableTime and the ReachableTime drawn from it.
[<Struct>]
type ReachableTimeState =
    {
        /// BaseReachableTime, in clock units (the stack's are microseconds).
        Base: int64
        /// ReachableTime: uniformly between MIN_RANDOM_FACTOR (0.5) and MAX_RANDOM_FACTOR (1.5)
        /// times Base.
        Current: int64
        /// When Current is drawn again, so a value is never kept for more than a few hours.
        RecomputeAt: int64
    }

/// ReachableTime randomisation (RFC 4861 §6.3.2) and the RA fields that set the neighbor timers
/// (§6.3.4), as pure functions: the random draw (a number in [0, 1)) is an input.
[<RequireQualifiedAccess>]
module ReachableTime =

    /// How often ReachableTime is drawn again with an unchanged base: §6.3.2 asks for "at least
    /// every few hours"; Linux draws every 300 s on average. Here: every two hours, in microseconds.
    [<Literal>]
    let RecomputeInterval = 7_200_000_000L

    /// RFC 4861 §6.2.1 MAX_REACHABLE_TIME (3,600,000 ms): larger advertised values are capped, so
    /// a hostile advertisement cannot keep stale neighbors REACHABLE for weeks.
    [<Literal>]
    let MaxReachableTimeMs = 3_600_000u

    /// `baseTime` times a factor between 0.5 and 1.5 chosen by `draw` in [0, 1); at least 1.
    let randomise (baseTime: int64) (draw: float) : int64 =
        let draw = if Double.IsNaN draw then 0.5 else min (max draw 0.0) 1.0
        max 1L (int64 (float baseTime * (0.5 + draw)))

    /// A state with BaseReachableTime `baseTime` at `now`.
    let create (now: int64) (baseTime: int64) (draw: float) : ReachableTimeState =
        {
            Base = baseTime
            Current = randomise baseTime draw
            RecomputeAt = now + RecomputeInterval
        }

    /// §6.3.4: a router advertisement's Reachable Time field (milliseconds; 0: unspecified). A
    /// non-zero value becomes BaseReachableTime (capped at MAX_REACHABLE_TIME), and a new
    /// ReachableTime is drawn when it differs from the previous base. Returns the state and
    /// whether Current changed.
    let onAdvertisement (now: int64) (reachableMs: uint32) (draw: float) (state: ReachableTimeState) =
        if reachableMs = 0u then
            state, false
        else
            let baseTime = int64 (min reachableMs MaxReachableTimeMs) * 1000L

            if baseTime = state.Base then
                state, false
            else
                create now baseTime draw, true

    /// Draws ReachableTime again when RecomputeAt has come; returns the state and whether it did.
    let tick (now: int64) (draw: float) (state: ReachableTimeState) =
        if now >= state.RecomputeAt then
            create now state.Base draw, true
        else
            state, false

    /// §6.3.4: a router advertisement's Retrans Timer field (milliseconds; 0: unspecified) as the
    /// new RetransTimer in microseconds, or `current` when unspecified. Capped like Reachable Time.
    let retransTimer (retransMs: uint32) (current: int64) : int64 =
        if retransMs = 0u then
            current
        else
            int64 (min retransMs MaxReachableTimeMs) * 1000L
