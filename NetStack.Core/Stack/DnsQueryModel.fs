namespace NetStack.Core.Stack

open Stateless
open NetStack.Core

/// Where one question (a name and type) of the stub resolver stands: Absent (nothing
/// outstanding; an answer may be cached), Udp (asked over UDP, waiting for an answer or the
/// timeout), Tcp (a truncated answer came: asked again over TCP, RFC 7766).
[<RequireQualifiedAccess>]
type DnsQueryState =
    | Absent
    | Udp
    | Tcp

/// What happens to a question.
[<RequireQualifiedAccess>]
type DnsQueryTrigger =
    /// A caller asks, nothing cached or outstanding: the query goes to the first server.
    | Ask
    /// A caller asks and the cache answers: nothing is sent.
    | CacheHit
    /// A caller asks while the question is outstanding: it shares the query.
    | SharedAsk
    /// A datagram that fails the RFC 5452 checks (source, port, ID, question) or does not
    /// parse: ignored.
    | Mismatch
    /// An answer with TC = 1 over UDP.
    | Truncated
    /// A final answer: addresses, NXDOMAIN or NODATA.
    | Answer
    /// The attempt timed out, failed (SERVFAIL, REFUSED, a malformed TCP answer, a TCP
    /// connection that failed) and another attempt is left: the next server over UDP.
    | Retry
    /// The same, with no attempt left: the question fails (TimedOut or ServerFailure).
    | GiveUp

/// The resolver's per-question graph declared with Stateless: the formal model the
/// DnsResolver's state is checked against, as the TCP StateModel and the NeighborModel are.
[<RequireQualifiedAccess>]
module DnsQueryModel =

    /// Declares the graph on a fresh machine starting in `initial`.
    let internal configure (initial: DnsQueryState) =
        let machine = StateMachine<DnsQueryState, DnsQueryTrigger>(initial)

        machine
            .Configure(DnsQueryState.Absent)
            .Permit(DnsQueryTrigger.Ask, DnsQueryState.Udp)
            .Ignore(DnsQueryTrigger.CacheHit)
            .Ignore(DnsQueryTrigger.Mismatch)
        |> ignore

        machine
            .Configure(DnsQueryState.Udp)
            .Ignore(DnsQueryTrigger.SharedAsk)
            .Ignore(DnsQueryTrigger.Mismatch)
            .Permit(DnsQueryTrigger.Truncated, DnsQueryState.Tcp)
            .Permit(DnsQueryTrigger.Answer, DnsQueryState.Absent)
            .PermitReentry(DnsQueryTrigger.Retry)
            .Permit(DnsQueryTrigger.GiveUp, DnsQueryState.Absent)
        |> ignore

        // UDP answers that come late, truncated or not, are ignored while TCP is asked.
        machine
            .Configure(DnsQueryState.Tcp)
            .Ignore(DnsQueryTrigger.SharedAsk)
            .Ignore(DnsQueryTrigger.Mismatch)
            .Ignore(DnsQueryTrigger.Truncated)
            .Permit(DnsQueryTrigger.Answer, DnsQueryState.Absent)
            .Permit(DnsQueryTrigger.Retry, DnsQueryState.Udp)
            .Permit(DnsQueryTrigger.GiveUp, DnsQueryState.Absent)
        |> ignore

        machine

    let private model = lazy (StatelessModel(configure DnsQueryState.Absent))

    /// Where `trigger` takes a question in `state`: the target, itself for an ignore, or
    /// ValueNone when the model does not permit the trigger there.
    let after (state: DnsQueryState) (trigger: DnsQueryTrigger) =
        match model.Value.Target(state, trigger) with
        | ValueSome t -> ValueSome t
        | ValueNone when model.Value.IsIgnored(state, trigger) -> ValueSome state
        | ValueNone -> ValueNone

    /// Every (state, trigger) pair the graph permits or ignores: the edges a test must exercise.
    let edges () =
        [
            for s in [ DnsQueryState.Absent; DnsQueryState.Udp; DnsQueryState.Tcp ] do
                for t in
                    [
                        DnsQueryTrigger.Ask
                        DnsQueryTrigger.CacheHit
                        DnsQueryTrigger.SharedAsk
                        DnsQueryTrigger.Mismatch
                        DnsQueryTrigger.Truncated
                        DnsQueryTrigger.Answer
                        DnsQueryTrigger.Retry
                        DnsQueryTrigger.GiveUp
                    ] do
                    if (after s t).IsSome then
                        yield s, t
        ]

    /// The graph in Graphviz DOT (committed as docs/dns-query-states.dot).
    let dot () : string = model.Value.Dot()
