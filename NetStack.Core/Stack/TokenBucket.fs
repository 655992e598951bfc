namespace NetStack.Core.Stack

/// A token bucket (the classic rate limiter of RFC 4443 §2.4(f)): `Rate` tokens per second
/// accrue up to `Burst`; each event takes one. Pure: `now` (microseconds, monotonic) is an input.
/// Tokens are counted in millionths so that integer arithmetic is exact: one token is 1_000_000
/// units and a rate of r tokens per second adds r units per microsecond.
[<Struct>]
type TokenBucket =
    {
        /// Tokens added per second.
        Rate: int
        /// The most tokens the bucket holds (the largest burst).
        Burst: int
        /// Tokens held, in millionths of a token.
        Units: int64
        /// When `Units` was last brought up to date.
        Updated: int64
    }

/// Operations on a `TokenBucket`.
[<RequireQualifiedAccess>]
module TokenBucket =

    [<Literal>]
    let private UnitsPerToken = 1_000_000L

    /// A full bucket at `now`. A rate of 0 never grants a token. Throws ArgumentException for a
    /// negative rate or a burst below 1.
    let create (rate: int) (burst: int) (now: int64) : TokenBucket =
        if rate < 0 then
            invalidArg (nameof rate) $"Rate {rate} is negative."

        if burst < 1 then
            invalidArg (nameof burst) $"Burst {burst} is below 1."

        {
            Rate = rate
            Burst = burst
            Units = (if rate = 0 then 0L else int64 burst * UnitsPerToken)
            Updated = now
        }

    /// Takes one token at `now` if there is one: (true, new bucket) or (false, refilled bucket).
    /// A `now` earlier than the last update (a caller bug or a clock step) adds nothing.
    let tryTake (now: int64) (bucket: TokenBucket) : struct (bool * TokenBucket) =
        let elapsed = max 0L (now - bucket.Updated)
        let capacity = int64 bucket.Burst * UnitsPerToken
        // Cap the elapsed time first so the product cannot overflow after a long idle period.
        let refill = min capacity (min elapsed capacity * int64 bucket.Rate)
        let units = min capacity (bucket.Units + refill)

        let refilled =
            { bucket with
                Units = units
                Updated = max now bucket.Updated
            }

        if units >= UnitsPerToken then
            struct (true,
                    { refilled with
                        Units = units - UnitsPerToken
                    })
        else
            struct (false, refilled)
