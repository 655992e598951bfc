namespace NetStack.Core.Link

open System
open NetStack.Core.Wire

/// Where duplicate address detection of the configured IPv6 address is.
type DadPhase =
    /// Probes are going out, or the last one's RetransTimer is running: the address is tentative.
    | Probing = 0
    /// No other node answered: the address is ours (or there was nothing to detect).
    | Passed = 1
    /// Another node uses the address (RFC 4862 §5.4.5): it is not ours.
    | Failed = 2

/// Duplicate address detection of one address (RFC 4862 §5.4): DupAddrDetectTransmits neighbor
/// solicitations from the unspecified address, RetransTimer apart, then RetransTimer more of
/// listening. A DAD probe for the same address from another node (§5.4.3) or an advertisement for
/// it (§5.4.4) ends it as Failed. (The autoconfigured addresses run theirs inside Slaac.)
[<Struct>]
type Dad =
    {
        /// The tentative address.
        Target: Ipv6Address
        /// Probing, passed or failed.
        Phase: DadPhase
        /// Probes still to send.
        ProbesLeft: int
        /// When the next probe goes out, or (none left) when detection passes.
        Deadline: int64
        /// Failed: the link-layer address of the node that has the address.
        Owner: MacAddress
    }

/// Operations on Dad.
[<RequireQualifiedAccess>]
module Dad =

    /// Detection of `target` with `transmits` probes, the first at `now`; 0 probes: passed at once.
    let start (now: int64) (target: Ipv6Address) (transmits: int) : Dad =
        {
            Target = target
            Phase = if transmits > 0 then DadPhase.Probing else DadPhase.Passed
            ProbesLeft = max 0 transmits
            Deadline = if transmits > 0 then now else Int64.MaxValue
            Owner = MacAddress.Zero
        }

    /// The address is tentative: not answered for, not used, packets to it discarded (§5.4).
    let isTentative (dad: Dad) = dad.Phase = DadPhase.Probing

    /// When `tick` next has something to do (Int64.MaxValue: nothing).
    let nextDeadline (dad: Dad) =
        if dad.Phase = DadPhase.Probing then
            dad.Deadline
        else
            Int64.MaxValue

    /// At `now`: sends the next probe (true) and waits `retransTimer`, or, with none left and the
    /// last wait over, passes. Returns the new state and whether to send a probe.
    let tick (now: int64) (retransTimer: int64) (dad: Dad) : struct (Dad * bool) =
        if dad.Phase <> DadPhase.Probing || dad.Deadline > now then
            struct (dad, false)
        elif dad.ProbesLeft > 0 then
            struct ({ dad with
                        ProbesLeft = dad.ProbesLeft - 1
                        Deadline = now + retransTimer
                    },
                    true)
        else
            struct ({ dad with
                        Phase = DadPhase.Passed
                        Deadline = Int64.MaxValue
                    },
                    false)

    /// Another node claims the address while it is tentative: detection fails, naming `owner`.
    /// Outside probing nothing changes.
    let conflict (owner: MacAddress) (dad: Dad) : Dad =
        if dad.Phase = DadPhase.Probing then
            { dad with
                Phase = DadPhase.Failed
                Deadline = Int64.MaxValue
                Owner = owner
            }
        else
            dad
