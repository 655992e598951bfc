namespace NetStack.Core.Tcp

/// The retransmission timeout estimator of RFC 6298, all times in microseconds.
[<Struct>]
type RtoEstimator =
    {
        /// Smoothed round-trip time (SRTT); 0 before the first sample.
        Srtt: int64
        /// Round-trip time variation (RTTVAR); 0 before the first sample.
        RttVar: int64
        /// The current timeout, backoff included.
        Rto: int64
        /// True once a round-trip time has been measured.
        HasSample: bool
    }

/// RFC 6298 arithmetic. The caller applies Karn's rule (no samples from retransmitted segments,
/// RFC 6298 §3) and decides when to back off and when the timer runs.
[<RequireQualifiedAccess>]
module Rto =

    // RFC 6298 §2: K = 4, alpha = 1/8, beta = 1/4.
    [<Literal>]
    let private K = 4L

    /// The estimator before any measurement: RTO = `initialRto` (RFC 6298 §2.1: 1 s).
    let initial (initialRto: int64) : RtoEstimator =
        {
            Srtt = 0L
            RttVar = 0L
            Rto = initialRto
            HasSample = false
        }

    /// Takes a round-trip measurement `rtt` (§2.2 for the first, §2.3 after), then
    /// RTO = SRTT + max(G, K·RTTVAR) clamped to [minRto, maxRto] (§2.4, §2.5). A fresh sample
    /// also ends any backoff, since RTO is recomputed from SRTT.
    let private withSample
        (granularity: int64)
        (minRto: int64)
        (maxRto: int64)
        (srtt: int64)
        (rttVar: int64)
        : RtoEstimator =
        {
            Srtt = srtt
            RttVar = rttVar
            Rto = min maxRto (max minRto (srtt + max granularity (K * rttVar)))
            HasSample = true
        }

    /// Takes a round-trip measurement `rtt` (§2.2 for the first, §2.3 after), then
    /// RTO = SRTT + max(G, K·RTTVAR) clamped to [minRto, maxRto] (§2.4, §2.5). A fresh sample
    /// also ends any backoff, since RTO is recomputed from SRTT.
    let sample (granularity: int64) (minRto: int64) (maxRto: int64) (rtt: int64) (e: RtoEstimator) : RtoEstimator =
        let rtt = max 0L rtt

        if not e.HasSample then
            withSample granularity minRto maxRto rtt (rtt / 2L)
        else
            // Integer forms of RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R'| and SRTT = 7/8 SRTT + 1/8 R'
            // (RTTVAR first: it uses the old SRTT).
            let rttVar = (3L * e.RttVar + abs (e.Srtt - rtt)) / 4L
            let srtt = (7L * e.Srtt + rtt) / 8L
            withSample granularity minRto maxRto srtt rttVar

    /// A sample from the timestamps option, which yields one per ACK instead of one per round
    /// trip: RFC 7323 Appendix G divides the gains by ExpectedSamples = ceil(FlightSize /
    /// (2·SMSS)) (alpha' = 1/(8·n), beta' = 1/(4·n)), so a window's worth of samples weighs
    /// about what one per-RTT sample did and RTTVAR does not collapse. n = 1 is `sample`.
    let sampleWeighted
        (granularity: int64)
        (minRto: int64)
        (maxRto: int64)
        (expectedSamples: int)
        (rtt: int64)
        (e: RtoEstimator)
        : RtoEstimator =
        let n = int64 (max 1 expectedSamples)

        if n = 1L || not e.HasSample then
            sample granularity minRto maxRto rtt e
        else
            let rtt = max 0L rtt
            let rttVar = e.RttVar + (abs (e.Srtt - rtt) - e.RttVar) / (4L * n)
            let srtt = e.Srtt + (rtt - e.Srtt) / (8L * n)
            withSample granularity minRto maxRto srtt (max 0L rttVar)

    /// Forward progress (an ACK of new data) ends the backoff: RTO is recomputed from SRTT and
    /// RTTVAR as BSD and Linux do, instead of waiting, as RFC 6298 §5.7 allows, for a fresh
    /// sample that Karn's rule may withhold for a long time after heavy loss. Before any
    /// sample the (possibly backed-off) RTO stays.
    let resetBackoff (granularity: int64) (minRto: int64) (maxRto: int64) (e: RtoEstimator) : RtoEstimator =
        if e.HasSample then
            { e with
                Rto = min maxRto (max minRto (e.Srtt + max granularity (K * e.RttVar)))
            }
        else
            e

    /// §5.5: after the timer expires, RTO doubles, up to `maxRto`.
    let backoff (maxRto: int64) (e: RtoEstimator) : RtoEstimator =
        { e with Rto = min maxRto (e.Rto * 2L) }
