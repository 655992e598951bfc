namespace NetStack.Core.Tcp

open System

/// The congestion control algorithm a connection uses.
[<RequireQualifiedAccess>]
type CongestionControl =
    /// RFC 5681 Reno: slow start, then about one segment more per round trip; halve on loss.
    | Reno
    /// RFC 9438 CUBIC: a cubic function of the time since the last loss, multiplicative decrease
    /// to 0.7, a Reno-friendly floor. The default, as in Linux.
    | Cubic

/// CUBIC's own state (RFC 9438 §4.1 variables); Reno needs none. Windows in bytes, times in µs.
[<Struct>]
type CubicState =
    {
        /// W_max: cwnd (bytes) just before the last reduction.
        WMax: float
        /// W_last_max, for fast convergence (§4.7).
        WLastMax: float
        /// cwnd_prior (bytes): cwnd when ssthresh was last set, before the reduction (§4.3).
        CwndPrior: float
        /// When the current congestion-avoidance epoch began (µs), or ValueNone before its first ACK.
        EpochStart: int64 voption
        /// K (s): when the cubic curve reaches its plateau, from the epoch start.
        K: float
        /// The plateau the curve climbs to (bytes): W_max, or cwnd when it already passed it.
        Origin: float
        /// W_est (bytes): the Reno-friendly estimate (§4.3).
        WEst: float
    }

    /// Before any loss.
    static member Initial =
        {
            WMax = 0.0
            WLastMax = 0.0
            CwndPrior = 0.0
            EpochStart = ValueNone
            K = 0.0
            Origin = 0.0
            WEst = 0.0
        }

/// Pure congestion control: the caller feeds ACKs, losses and timeouts with the time and the
/// smoothed RTT; no clock, no state beyond `CongestionState`.
[<RequireQualifiedAccess>]
module Congestion =

    /// RFC 9438 §5: C = 0.4 (segments/s³).
    [<Literal>]
    let CubicC = 0.4

    /// RFC 9438 §4.6: β_cubic = 0.7.
    [<Literal>]
    let CubicBeta = 0.7

    /// RFC 9438 §4.3: α_cubic = 3·(1 − β)/(1 + β), Reno's average growth at β = 0.7, until W_est
    /// reaches cwnd_prior; from there 1, Reno's own rate (AIMD(1, 0.5)).
    let CubicAlpha = 3.0 * (1.0 - CubicBeta) / (1.0 + CubicBeta)

    /// RFC 3465 ABC limit L: slow start grows by at most 2·SMSS per ACK.
    [<Literal>]
    let AbcLimit = 2

    /// The largest window the engine keeps (1 GiB).
    [<Literal>]
    let MaxWindow = 1073741824

    /// RFC 6928 initial window: min(10·MSS, max(2·MSS, 14600)).
    let initialWindow (mss: int) = min (10 * mss) (max (2 * mss) 14600)

    /// W_cubic(t) = C·(t − K)³ + W_max in segments (RFC 9438 §4.2, eq. 1), t and K in seconds.
    let cubicWindow (wMaxSegments: float) (k: float) (t: float) =
        CubicC * Math.Pow(t - k, 3.0) + wMaxSegments

    /// K = ∛((W_max − cwnd_epoch)/C) (RFC 9438 §4.2, eq. 2), in seconds.
    let cubicK (wMaxSegments: float) (cwndEpochSegments: float) =
        Math.Cbrt(max 0.0 (wMaxSegments - cwndEpochSegments) / CubicC)

    let private clampWindow (w: float) = int (min (float MaxWindow) (max 1.0 w))

    /// `acked` new bytes were acknowledged at `now` (outside fast recovery): the next cwnd.
    /// Slow start below ssthresh, with ABC (RFC 3465, L = 2); above it Reno's ~1 MSS per RTT
    /// (RFC 5681 §3.1) or CUBIC's curve (RFC 9438 §4.2-4.5): the target W_cubic(t + RTT)
    /// bounded to [cwnd, 1.5·cwnd], approached by (target − cwnd)/cwnd per acknowledged
    /// segment, and never below the Reno-friendly W_est.
    let onAck
        (algorithm: CongestionControl)
        (now: int64)
        (srtt: int64)
        (mss: int)
        (acked: int64)
        (cwnd: int)
        (ssthresh: int)
        (s: CubicState)
        : struct (int * CubicState) =
        if acked <= 0L then
            struct (cwnd, s)
        elif cwnd < ssthresh then
            let grown = int (min acked (int64 (AbcLimit * mss)))
            struct (min MaxWindow (cwnd + grown), s)
        else
            match algorithm with
            | CongestionControl.Reno ->
                struct (min MaxWindow (cwnd + max 1 (int (int64 mss * int64 mss / int64 (max 1 cwnd)))), s)
            | CongestionControl.Cubic ->
                let m = float mss
                let w = float cwnd

                // §4.2: the epoch starts with the first ACK in congestion avoidance.
                let s =
                    match s.EpochStart with
                    | ValueSome _ -> s
                    | ValueNone ->
                        let k, origin =
                            if w < s.WMax then
                                cubicK (s.WMax / m) (w / m), s.WMax
                            else
                                0.0, w

                        { s with
                            EpochStart = ValueSome now
                            K = k
                            Origin = origin
                            WEst = w
                        }

                let t = float (now - s.EpochStart.Value) / 1e6
                let rtt = float (max 0L srtt) / 1e6
                let target = cubicWindow (s.Origin / m) s.K (t + rtt) * m
                let target = min (1.5 * w) (max w target)
                // §4.3: W_est grows by α_cubic segments per window of acknowledged bytes; α_cubic
                // is 1 once W_est has reached cwnd_prior ("the sender SHOULD set α_cubic to 1 to
                // ensure that it can achieve the same congestion window increment rate as Reno").
                let alpha = if s.WEst >= s.CwndPrior then 1.0 else CubicAlpha
                let wEst = s.WEst + alpha * m * float acked / w
                let cubicNow = cubicWindow (s.Origin / m) s.K t * m

                let next =
                    if cubicNow < wEst then
                        // §4.3: the Reno-friendly region.
                        max w wEst
                    else
                        // §4.4/4.5: (target − cwnd)/cwnd segments per acknowledged segment.
                        w + (target - w) * float acked / w

                struct (max cwnd (clampWindow next), { s with WEst = wEst })

    /// A congestion event with `flight` bytes outstanding: the new ssthresh. Reno halves the
    /// flight (RFC 5681 §3.1 eq. 4); CUBIC takes β = 0.7 of cwnd and remembers W_max, lowered
    /// further when the previous W_max was not reached (fast convergence, RFC 9438 §4.6-4.7).
    /// The caller sets cwnd: ssthresh on entering recovery, one segment after a timeout (§4.8).
    let onLoss
        (algorithm: CongestionControl)
        (flight: int)
        (mss: int)
        (cwnd: int)
        (s: CubicState)
        : struct (int * CubicState) =
        match algorithm with
        | CongestionControl.Reno -> struct (max (flight / 2) (2 * mss), s)
        | CongestionControl.Cubic ->
            let w = float cwnd

            let wMax, wLastMax =
                if w < s.WLastMax then
                    w * (1.0 + CubicBeta) / 2.0, w
                else
                    w, w

            struct (max (2 * mss) (int (w * CubicBeta)),
                    { s with
                        WMax = wMax
                        WLastMax = wLastMax
                        CwndPrior = w
                        EpochStart = ValueNone
                    })
