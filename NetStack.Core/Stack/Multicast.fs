namespace NetStack.Core.Stack

open System
open NetStack.Core.Wire

/// One group the host is a member of, with its report timer (RFC 3376 §5, RFC 3810 §6).
[<Struct>]
type GroupEntry =
    {
        /// The group.
        Group: IpAddr
        /// Sockets that joined it.
        Users: int
        /// Delaying (a report pending at Deadline) or Idle.
        State: GroupState
        /// When the pending report is due (Delaying only).
        Deadline: int64
        /// Reports still to send, this one included (Delaying only): Robustness after a join, 1
        /// for a query's answer.
        ReportsLeft: int
        /// The pending reports are a join's state-change reports (CHANGE_TO_EXCLUDE), not a
        /// query's current-state answer (MODE_IS_EXCLUDE).
        StateChange: bool
    }

/// A group left with state-change records (IGMPv3/MLDv2, RFC 3376 §5.1) or a leave message
/// (IGMPv2/MLDv1) still to send.
[<Struct>]
type PendingLeave =
    {
        /// The group.
        Group: IpAddr
        /// When the next one is due.
        Deadline: int64
        /// How many are left, the next included.
        Left: int
    }

/// One membership message to send: an IGMPv1/v2 report or leave, an MLDv1 report or done
/// (one group each), or an IGMPv3/MLDv2 report (one record per group, no sources).
type GroupReport =
    {
        /// MLD rather than IGMP.
        Ipv6: bool
        /// The protocol version it is written in (the compatibility mode when it was made).
        Version: GroupProtocolVersion
        /// A leave / done (versions 1-2 only).
        Leave: bool
        /// The record types of a version 3 report, one per group.
        RecordTypes: byte[]
        /// The groups (one for versions 1-2).
        Groups: IpAddr[]
    }

    /// Where the message goes: 224.0.0.22 / ff02::16 for version 3, 224.0.0.2 / ff02::2 for a
    /// leave, the group itself for a v1/v2 report (RFC 2236 §3, RFC 2710 §4, RFC 3376 §4.2.14,
    /// RFC 3810 §5.2.14).
    member this.Destination: IpAddr =
        match this.Version, this.Ipv6, this.Leave with
        | GroupProtocolVersion.V3, false, _ -> V4 Igmp.AllV3Routers
        | GroupProtocolVersion.V3, true, _ -> V6 Mld.AllV2Routers
        | _, false, true -> V4 Igmp.AllRouters
        | _, true, true -> V6 Mld.AllRouters
        | _ -> this.Groups.[0]

/// The membership state of one address family on the interface: the groups, their timers, the
/// compatibility mode, and the querier's variables. An immutable value.
type MulticastState =
    {
        /// IPv6 (MLD) rather than IPv4 (IGMP).
        Ipv6: bool
        /// The groups in the membership state machine.
        Groups: Map<IpAddr, GroupEntry>
        /// Groups joined but never reported (224.0.0.1, ff02::1, interface- and
        /// reserved-scope IPv6 groups; RFC 3376 §5, RFC 3810 §6), with their users.
        Silent: Map<IpAddr, int>
        /// Left groups with records still to send.
        Leaves: PendingLeave list
        /// RFC 3376 §7.2.1: until when an IGMPv1 querier is present (0: none seen).
        V1QuerierUntil: int64
        /// Until when an IGMPv2 querier (MLD: an MLDv1 querier, RFC 3810 §8.2.1) is present.
        V2QuerierUntil: int64
        /// The Robustness Variable (RFC 3376 §8.1; a query's QRV replaces it).
        Robustness: int
        /// The Query Interval, µs (§8.2; a query's QQIC replaces it).
        QueryInterval: int64
        /// The Query Response Interval, µs (§8.3; a version 3 query's Max Resp Time replaces it).
        QueryResponseInterval: int64
        /// When the answer to a version 3 general query is due (Int64.MaxValue: none pending).
        GeneralDeadline: int64
        /// The random draws' generator state (splitmix64).
        Rng: uint64
    }

/// Group membership of a host (IGMPv3 with IGMPv1/v2 compatibility, RFC 3376; MLDv2 with MLDv1
/// compatibility, RFC 3810) as pure functions: time and randomness come in (`now`, the seed),
/// the messages to send come out. Only any-source membership, EXCLUDE {} in RFC 3376's terms.
[<RequireQualifiedAccess>]
module Multicast =

    /// RFC 3376 §8.1 / RFC 3810 §9.1: the default Robustness Variable.
    [<Literal>]
    let DefaultRobustness = 2

    /// RFC 3376 §8.2 / RFC 3810 §9.2: the default Query Interval, 125 s.
    [<Literal>]
    let DefaultQueryInterval = 125_000_000L

    /// RFC 3376 §8.3 / RFC 3810 §9.3: the default Query Response Interval, 10 s.
    [<Literal>]
    let DefaultQueryResponseInterval = 10_000_000L

    /// RFC 3376 §8.11 / RFC 3810 §9.11: the Unsolicited Report Interval of version 3, 1 s.
    [<Literal>]
    let UnsolicitedReportIntervalV3 = 1_000_000L

    /// RFC 2236 §8.10 / RFC 2710 §7.10: the Unsolicited Report Interval of IGMPv2 and MLDv1, 10 s.
    [<Literal>]
    let UnsolicitedReportIntervalV2 = 10_000_000L

    /// Source-less records per IGMPv3 report: 24 bytes of IPv4 header with the Router Alert, 8
    /// of report header and 8 per record stay within 576 bytes.
    [<Literal>]
    let MaxRecordsV4 = 68

    /// Source-less records per MLDv2 report: 40 bytes of IPv6 header, 8 of hop-by-hop options,
    /// 8 of report header and 20 per record stay within 1280 bytes.
    [<Literal>]
    let MaxRecordsV6 = 61

    /// A fresh state for IPv4 (IGMP) or IPv6 (MLD); `seed` seeds the random delays.
    let create (ipv6: bool) (seed: uint64) : MulticastState =
        {
            Ipv6 = ipv6
            Groups = Map.empty
            Silent = Map.empty
            Leaves = []
            V1QuerierUntil = 0L
            V2QuerierUntil = 0L
            Robustness = DefaultRobustness
            QueryInterval = DefaultQueryInterval
            QueryResponseInterval = DefaultQueryResponseInterval
            GeneralDeadline = Int64.MaxValue
            Rng = seed
        }

    // splitmix64: a draw in [0, 1) and the next generator state.
    let private draw (rng: uint64) : struct (float * uint64) =
        let next = rng + 0x9E3779B97F4A7C15UL
        let mutable z = next
        z <- (z ^^^ (z >>> 30)) * 0xBF58476D1CE4E5B9UL
        z <- (z ^^^ (z >>> 27)) * 0x94D049BB133111EBUL
        z <- z ^^^ (z >>> 31)
        struct (float (z >>> 11) * (1.0 / 9007199254740992.0), next)

    /// True for a multicast address of the state's family.
    let isMulticast (address: IpAddr) : bool =
        match address with
        | V4 a -> (a.Value >>> 28) = 0xEu
        | V6 a -> a.IsMulticast

    /// True for a group that is joined without reports: all-systems 224.0.0.1 (RFC 3376 §5),
    /// all-nodes ff02::1 and IPv6 groups of scope 0 (reserved) or 1 (interface-local) (RFC 3810 §6).
    let isSilent (group: IpAddr) : bool =
        match group with
        | V4 a -> a = Igmp.AllSystems
        | V6 a ->
            let scope = int (a.High >>> 48) &&& 0xF
            a = Mld.AllNodes || scope = 0 || scope = 1

    /// The compatibility mode at `now` (RFC 3376 §7.2.1, RFC 3810 §8.2.1): V1 while an IGMPv1
    /// querier is present, else V2 while an IGMPv2/MLDv1 querier is, else V3.
    let mode (now: int64) (state: MulticastState) : GroupProtocolVersion =
        if not state.Ipv6 && state.V1QuerierUntil > now then
            GroupProtocolVersion.V1
        elif state.V2QuerierUntil > now then
            GroupProtocolVersion.V2
        else
            GroupProtocolVersion.V3

    /// RFC 3376 §8.12 / RFC 3810 §9.12: Older Version Querier Present Timeout = Robustness
    /// Variable × Query Interval + Query Response Interval.
    let olderQuerierTimeout (state: MulticastState) : int64 =
        int64 state.Robustness * state.QueryInterval + state.QueryResponseInterval

    let private unsolicitedInterval (version: GroupProtocolVersion) =
        if version = GroupProtocolVersion.V3 then
            UnsolicitedReportIntervalV3
        else
            UnsolicitedReportIntervalV2

    /// The state of `group`: NonMember, Delaying or Idle (silent groups are Idle).
    let stateOf (group: IpAddr) (state: MulticastState) : GroupState =
        match state.Groups.TryFind group with
        | Some e -> e.State
        | None when state.Silent.ContainsKey group -> GroupState.Idle
        | None -> GroupState.NonMember

    /// Every group joined (silent ones included), for the receive filters.
    let members (state: MulticastState) : IpAddr[] =
        Array.append
            (state.Groups |> Seq.map (fun kv -> kv.Key) |> Array.ofSeq)
            (state.Silent |> Seq.map (fun kv -> kv.Key) |> Array.ofSeq)

    /// One more socket joins `group` at `now`. The first makes it a member (trigger Join):
    /// Robustness unsolicited reports are due, the first at once (`tick`). Throws
    /// ArgumentException for an address that is not a multicast address of the state's family.
    let join (now: int64) (group: IpAddr) (state: MulticastState) : MulticastState =
        if group.IsIpv6 <> state.Ipv6 || not (isMulticast group) then
            invalidArg (nameof group) $"{group} is not a multicast address of this family."

        if isSilent group then
            let users = defaultArg (state.Silent.TryFind group) 0

            { state with
                Silent = state.Silent.Add(group, users + 1)
            }
        else
            match state.Groups.TryFind group with
            | Some e ->
                { state with
                    Groups = state.Groups.Add(group, { e with Users = e.Users + 1 })
                }
            | None ->
                let entry =
                    {
                        Group = group
                        Users = 1
                        State = GroupState.Delaying
                        Deadline = now
                        ReportsLeft = state.Robustness
                        StateChange = true
                    }

                { state with
                    Groups = state.Groups.Add(group, entry)
                    // A rejoin cancels the leave records still pending for the group.
                    Leaves = state.Leaves |> List.filter (fun l -> l.Group <> group)
                }

    /// One socket leaves `group` at `now`. The last makes it a non-member (trigger Leave): in
    /// version 3 Robustness CHANGE_TO_INCLUDE {} records follow, the first at once; in version
    /// 2 one leave / done message (RFC 2236 §3 lets a host always send it); in version 1
    /// nothing. Unchanged when the group is not joined.
    let leave (now: int64) (group: IpAddr) (state: MulticastState) : MulticastState =
        match state.Silent.TryFind group with
        | Some 1 ->
            { state with
                Silent = state.Silent.Remove group
            }
        | Some users ->
            { state with
                Silent = state.Silent.Add(group, users - 1)
            }
        | None ->
            match state.Groups.TryFind group with
            | Some e when e.Users > 1 ->
                { state with
                    Groups = state.Groups.Add(group, { e with Users = e.Users - 1 })
                }
            | Some _ ->
                let left =
                    match mode now state with
                    | GroupProtocolVersion.V3 -> state.Robustness
                    | GroupProtocolVersion.V2 -> 1
                    | _ -> 0

                { state with
                    Groups = state.Groups.Remove group
                    Leaves =
                        if left > 0 then
                            {
                                Group = group
                                Deadline = now
                                Left = left
                            }
                            :: state.Leaves
                        else
                            state.Leaves
                }
            | None -> state

    // The Query trigger for one member group: its answer is due within `delay`; a pending timer
    // keeps its deadline when that is sooner (RFC 2236 §3, RFC 3376 §5.2 rule 3).
    let private queried (now: int64) (delay: int64) (e: GroupEntry) =
        match e.State with
        | GroupState.Delaying ->
            { e with
                Deadline = min e.Deadline (now + delay)
            }
        | _ ->
            { e with
                State = GroupState.Delaying
                Deadline = now + delay
                ReportsLeft = 1
                StateChange = false
            }

    /// A membership message received at `now` (already parsed; `Igmp.parse` / `Mld.parse`).
    /// Queries set the compatibility mode and the querier's variables, and schedule the answers
    /// at random delays within Max Resp Time; another host's v1/v2 report suppresses ours in
    /// compatibility mode (trigger ReportHeard). Leaves and version 3 reports change nothing.
    let receive (now: int64) (message: GroupMessage) (state: MulticastState) : MulticastState =
        let group = if state.Ipv6 then V6 message.Group6 else V4 message.Group4

        let unspecified =
            if state.Ipv6 then
                message.Group6 = Ipv6Address.Any
            else
                message.Group4 = Ipv4Address.Any

        match message.Kind with
        | GroupMessageKind.Query ->
            let state =
                match message.Version with
                | GroupProtocolVersion.V1 when not state.Ipv6 ->
                    { state with
                        V1QuerierUntil = now + olderQuerierTimeout state
                    }
                | GroupProtocolVersion.V2 ->
                    { state with
                        V2QuerierUntil = now + olderQuerierTimeout state
                    }
                | _ ->
                    { state with
                        Robustness =
                            if message.Robustness > 0 then
                                message.Robustness
                            else
                                state.Robustness
                        QueryInterval =
                            if message.QueryInterval > 0 then
                                int64 message.QueryInterval * 1_000_000L
                            else
                                state.QueryInterval
                        QueryResponseInterval = message.MaxResponseDelay
                    }

            let struct (d, rng) = draw state.Rng
            let delay = int64 (d * float message.MaxResponseDelay)
            let state = { state with Rng = rng }

            if unspecified then
                if mode now state = GroupProtocolVersion.V3 then
                    // RFC 3376 §5.2 rule 1: one interface timer for the whole answer.
                    { state with
                        GeneralDeadline = min state.GeneralDeadline (now + delay)
                    }
                else
                    // Version 1/2: each group its own random delay.
                    let mutable rng = state.Rng
                    let mutable groups = state.Groups

                    for KeyValue(g, e) in state.Groups do
                        let struct (d, next) = draw rng
                        rng <- next
                        groups <- groups.Add(g, queried now (int64 (d * float message.MaxResponseDelay)) e)

                    { state with
                        Groups = groups
                        Rng = rng
                    }
            else
                match state.Groups.TryFind group with
                | Some e ->
                    { state with
                        Groups = state.Groups.Add(group, queried now delay e)
                    }
                | None -> state
        | GroupMessageKind.Report when mode now state <> GroupProtocolVersion.V3 ->
            match state.Groups.TryFind group with
            | Some e when e.State = GroupState.Delaying ->
                { state with
                    Groups =
                        state.Groups.Add(
                            group,
                            { e with
                                State = GroupState.Idle
                                ReportsLeft = 0
                                StateChange = false
                            }
                        )
                }
            | _ -> state
        | _ -> state

    /// When `tick` next has something to send (Int64.MaxValue: nothing).
    let nextDeadline (state: MulticastState) : int64 =
        let mutable next = state.GeneralDeadline

        for KeyValue(_, e) in state.Groups do
            if e.State = GroupState.Delaying && e.Deadline < next then
                next <- e.Deadline

        for l in state.Leaves do
            if l.Deadline < next then
                next <- l.Deadline

        next

    /// The reports due at `now`, in the compatibility mode of `now`: per group (Retransmit
    /// while repetitions remain, at a random delay within the Unsolicited Report Interval,
    /// else TimerExpired), the pending leave records, and the answer to a version 3 general
    /// query (every member group, MODE_IS_EXCLUDE {}). Version 3 records due together share
    /// one report.
    let tick (now: int64) (state: MulticastState) : struct (MulticastState * GroupReport list) =
        let version = mode now state
        let interval = unsolicitedInterval version
        let mutable rng = state.Rng
        let mutable groups = state.Groups
        let reports = Collections.Generic.List<GroupReport>()
        let v3Types = Collections.Generic.List<byte>()
        let v3Groups = Collections.Generic.List<IpAddr>()

        let single leave (g: IpAddr) =
            reports.Add
                {
                    Ipv6 = state.Ipv6
                    Version = version
                    Leave = leave
                    RecordTypes = [||]
                    Groups = [| g |]
                }

        let nextDelay () =
            let struct (d, next) = draw rng
            rng <- next
            int64 (d * float interval)

        for KeyValue(g, e) in state.Groups do
            if e.State = GroupState.Delaying && e.Deadline <= now then
                if version = GroupProtocolVersion.V3 then
                    v3Types.Add(
                        if e.StateChange then
                            GroupRecordType.ChangeToExclude
                        else
                            GroupRecordType.ModeIsExclude
                    )

                    v3Groups.Add g
                else
                    single false g

                let left = e.ReportsLeft - 1

                groups <-
                    groups.Add(
                        g,
                        if left > 0 then
                            { e with
                                ReportsLeft = left
                                Deadline = now + nextDelay ()
                            }
                        else
                            { e with
                                State = GroupState.Idle
                                ReportsLeft = 0
                                StateChange = false
                            }
                    )

        let leaves =
            state.Leaves
            |> List.choose (fun l ->
                if l.Deadline > now then
                    Some l
                else
                    match version with
                    | GroupProtocolVersion.V3 ->
                        v3Types.Add GroupRecordType.ChangeToInclude
                        v3Groups.Add l.Group
                    | GroupProtocolVersion.V2 -> single true l.Group
                    | _ -> ()

                    if l.Left > 1 && version = GroupProtocolVersion.V3 then
                        Some
                            { l with
                                Left = l.Left - 1
                                Deadline = now + nextDelay ()
                            }
                    else
                        None)

        let general = state.GeneralDeadline <= now

        if general && version = GroupProtocolVersion.V3 then
            for KeyValue(g, _) in groups do
                if not (v3Groups.Contains g) then
                    v3Types.Add GroupRecordType.ModeIsExclude
                    v3Groups.Add g

        // RFC 3376 §4.2.16 / RFC 3810 §5.2.15: records that do not fit one packet go in more
        // reports, each within the minimum MTU (576 / 1280 bytes with their headers).
        let perReport = if state.Ipv6 then MaxRecordsV6 else MaxRecordsV4
        let mutable first = 0

        while first < v3Groups.Count do
            let count = min perReport (v3Groups.Count - first)

            reports.Add
                {
                    Ipv6 = state.Ipv6
                    Version = GroupProtocolVersion.V3
                    Leave = false
                    RecordTypes = v3Types.GetRange(first, count).ToArray()
                    Groups = v3Groups.GetRange(first, count).ToArray()
                }

            first <- first + count

        struct ({ state with
                    Groups = groups
                    Leaves = leaves
                    Rng = rng
                    GeneralDeadline = if general then Int64.MaxValue else state.GeneralDeadline
                },
                List.ofSeq reports)

    /// IPv4 Router Alert (RFC 2113): option 148, length 4, value 0.
    let private routerAlert4 = [| 0x94uy; 4uy; 0uy; 0uy |]

    /// Writes the whole IP packet of `report` from `source` into `dst` and returns its length:
    /// TTL / hop limit 1 and a Router Alert option (IPv4 option 148, RFC 2113; an IPv6
    /// hop-by-hop Router Alert with value 0 for MLD, RFC 2711), as RFC 3376 §4 and RFC 3810 §5
    /// require; IGMP with DSCP CS6 as Linux sends it. Throws ArgumentException when the
    /// families differ or `dst` is too short.
    let write (source: IpAddr) (report: GroupReport) (dst: Span<byte>) : int =
        let destination = report.Destination

        match source, destination with
        | V4 s, V4 d ->
            let header = Ipv4.headerLengthFor routerAlert4.Length

            let length =
                match report.Version with
                | GroupProtocolVersion.V3 ->
                    let groups =
                        report.Groups
                        |> Array.map (fun g ->
                            match g with
                            | V4 a -> a
                            | V6 _ -> invalidArg (nameof report) "An IGMP report names IPv4 groups.")

                    Igmp.writeV3Report report.RecordTypes groups (dst.Slice header)
                | version ->
                    let group =
                        match report.Groups.[0] with
                        | V4 a -> a
                        | V6 _ -> invalidArg (nameof report) "An IGMP report names IPv4 groups."

                    let messageType =
                        if report.Leave then Igmp.LeaveV2
                        elif version = GroupProtocolVersion.V1 then Igmp.ReportV1
                        else Igmp.ReportV2

                    Igmp.writeV2 messageType group (dst.Slice header)

            let ip =
                { Ipv4.header s d Igmp.Protocol with
                    Ttl = 1uy
                    Dscp = 0x30uy
                }

            Ipv4.write ip (ReadOnlySpan routerAlert4) length dst + length
        | V6 s, V6 d ->
            // Hop-by-hop options: next header ICMPv6, length 0 (8 bytes), Router Alert (type 5,
            // length 2, value 0: MLD), PadN of 2 bytes.
            let hopByHop = 8

            if dst.Length < Ipv6.HeaderLength + hopByHop then
                invalidArg (nameof dst) "The buffer is too short."

            let options = dst.Slice(Ipv6.HeaderLength, hopByHop)
            options.[0] <- IpProtocol.Icmpv6
            options.[1] <- 0uy
            options.[2] <- 5uy
            options.[3] <- 2uy
            options.[4] <- 0uy
            options.[5] <- 0uy
            options.[6] <- 1uy
            options.[7] <- 0uy
            let body = dst.Slice(Ipv6.HeaderLength + hopByHop)

            let length =
                match report.Version with
                | GroupProtocolVersion.V3 ->
                    let groups =
                        report.Groups
                        |> Array.map (fun g ->
                            match g with
                            | V6 a -> a
                            | V4 _ -> invalidArg (nameof report) "An MLD report names IPv6 groups.")

                    Mld.writeV2Report s d report.RecordTypes groups body
                | _ ->
                    let group =
                        match report.Groups.[0] with
                        | V6 a -> a
                        | V4 _ -> invalidArg (nameof report) "An MLD report names IPv6 groups."

                    Mld.writeV1 (if report.Leave then Mld.Done else Mld.ReportV1) s d group body

            let ip =
                { Ipv6.header s d IpProtocol.HopByHop with
                    PayloadLength = hopByHop + length
                    HopLimit = 1uy
                }

            Ipv6.write ip dst |> ignore
            Ipv6.HeaderLength + hopByHop + length
        | _ -> invalidArg (nameof source) "The source's family is not the report's."
