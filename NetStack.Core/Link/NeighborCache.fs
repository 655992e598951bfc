namespace NetStack.Core.Link

open System

/// Timers and bounds of a neighbor cache. Times are in the caller's clock units (the stack uses
/// microseconds); the defaults below are RFC 4861 §10's constants.
type NeighborCacheConfig =
    {
        /// How long a confirmation keeps an entry REACHABLE (REACHABLE_TIME, 30 s; RFC 4861 §6.3.2
        /// randomises it between 0.5× and 1.5×, which the caller may do when it builds the config).
        ReachableTime: int64
        /// Time between solicitations (RETRANS_TIMER, 1 s).
        RetransTimer: int64
        /// How long a DELAY entry waits before probing (DELAY_FIRST_PROBE_TIME, 5 s).
        DelayFirstProbeTime: int64
        /// Multicast (broadcast for ARP) solicitations before INCOMPLETE gives up (MAX_MULTICAST_SOLICIT, 3).
        MaxMulticastSolicit: int
        /// Unicast probes before PROBE gives up (MAX_UNICAST_SOLICIT, 3).
        MaxUnicastSolicit: int
        /// How long an unused STALE entry is kept before it is forgotten (Linux: gc_staletime, 60 s).
        StaleLifetime: int64
        /// Entries at most; a new entry evicts the oldest REACHABLE or STALE one, or is refused.
        MaxEntries: int
        /// Packets one INCOMPLETE entry holds at most; the oldest is dropped for a newer one
        /// (RFC 4861 §7.2.2 "SHOULD retain ... at least one"). The default, 64, holds a whole
        /// segmented UDP send; Linux bounds the queue by bytes (unres_qlen_bytes, about 200 KB).
        MaxQueuedPerEntry: int
        /// Bytes all queues together hold at most; a packet that does not fit is dropped.
        MaxQueuedBytes: int
    }

/// Why the cache dropped a packet instead of sending it.
type NeighborDropReason =
    /// The entry's queue was full: the oldest waiting packet made room for a newer one.
    | QueueFull = 0
    /// All queues together held MaxQueuedBytes already.
    | QueueBytesFull = 1
    /// Address resolution failed (no answer to the solicitations).
    | Unresolved = 2
    /// The cache was full of entries busy resolving, so no entry could be made.
    | CacheFull = 3

/// One entry: its state, the address it resolved to, its timer and its waiting packets.
type NeighborEntry =
    {
        /// The RFC 4861 state (never Absent inside the cache).
        State: NeighborState
        /// The link-layer address (Zero while INCOMPLETE).
        Mac: MacAddress
        /// When this entry's timer fires (Int64.MaxValue: no timer).
        Deadline: int64
        /// Solicitations sent in the current INCOMPLETE or PROBE phase.
        Solicitations: int
        /// Packets waiting for resolution, oldest first.
        Queue: byte[] list
        /// The bytes in Queue.
        QueuedBytes: int
        /// When the entry was made or last changed state: the eviction order.
        Touched: int64
    }

/// What the caller must do after a cache operation.
type NeighborAction<'Address> =
    /// Send this packet to this link-layer address (a released or passed-through packet).
    | Transmit of mac: MacAddress * packet: byte[]
    /// Send a solicitation (NS, or an ARP request) for `target`: to its unicast address when
    /// given (a PROBE), else multicast (solicited-node group, or broadcast for ARP).
    | Solicit of target: 'Address * unicast: MacAddress voption
    /// The packet was dropped, for this reason; count it.
    | Dropped of packet: byte[] * reason: NeighborDropReason

/// An immutable neighbor cache for one address family (IPv6 NDP, or IPv4 ARP, which uses the
/// same states as Linux does): RFC 4861 §7.2–§7.3 with time as an input. Every operation
/// returns the new cache and the actions to take, in order.
type NeighborCache<'Address when 'Address: comparison> =
    {
        /// The timers and bounds.
        Config: NeighborCacheConfig
        /// The entries by IP address.
        Entries: Map<'Address, NeighborEntry>
        /// Bytes waiting in all queues.
        QueuedBytes: int
        /// The earliest entry deadline (Int64.MaxValue: none).
        NextDeadline: int64
    }

/// Operations on NeighborCache.
[<RequireQualifiedAccess>]
module NeighborCache =

    /// No timer.
    let private never = Int64.MaxValue

    /// RFC 4861 §10 constants in microseconds, and bounds like Linux's defaults
    /// (gc_thresh3 = 1024 entries is for a router; a host needs far fewer).
    let defaultConfig =
        {
            ReachableTime = 30_000_000L
            RetransTimer = 1_000_000L
            DelayFirstProbeTime = 5_000_000L
            MaxMulticastSolicit = 3
            MaxUnicastSolicit = 3
            StaleLifetime = 60_000_000L
            MaxEntries = 256
            MaxQueuedPerEntry = 64
            MaxQueuedBytes = 256 * 1024
        }

    /// Throws ArgumentException when a time or bound is not positive.
    let validate (config: NeighborCacheConfig) =
        if
            config.ReachableTime <= 0L
            || config.RetransTimer <= 0L
            || config.DelayFirstProbeTime <= 0L
            || config.StaleLifetime <= 0L
        then
            invalidArg (nameof config) "Neighbor cache times must be positive."

        if
            config.MaxMulticastSolicit < 1
            || config.MaxUnicastSolicit < 1
            || config.MaxEntries < 1
            || config.MaxQueuedPerEntry < 1
            || config.MaxQueuedBytes < 1
        then
            invalidArg (nameof config) "Neighbor cache bounds must be at least 1."

    /// The cache with new ReachableTime and RetransTimer (RFC 4861 §6.3.4: from a router
    /// advertisement, or a new random ReachableTime, §6.3.2). Running timers keep their deadlines;
    /// the new values apply from the next state change. Throws ArgumentException when one is not
    /// positive.
    let withTimers (reachableTime: int64) (retransTimer: int64) (cache: NeighborCache<'Address>) =
        let config =
            { cache.Config with
                ReachableTime = reachableTime
                RetransTimer = retransTimer
            }

        validate config
        { cache with Config = config }

    /// An empty cache.
    let create (config: NeighborCacheConfig) : NeighborCache<'Address> =
        validate config

        {
            Config = config
            Entries = Map.empty
            QueuedBytes = 0
            NextDeadline = never
        }

    let private withEntries (entries: Map<'Address, NeighborEntry>) (queued: int) (cache: NeighborCache<'Address>) =
        let mutable next = never

        for KeyValue(_, e) in entries do
            if e.Deadline < next then
                next <- e.Deadline

        { cache with
            Entries = entries
            QueuedBytes = queued
            NextDeadline = next
        }

    /// The state of `address`'s entry (Absent when there is none).
    let state (address: 'Address) (cache: NeighborCache<'Address>) : NeighborState =
        match cache.Entries.TryFind address with
        | Some e -> e.State
        | None -> NeighborState.Absent

    /// The fast path: the link-layer address to send to `address` at once, without any change
    /// of state: REACHABLE, DELAY and PROBE entries. ValueNone means "call send": the entry is
    /// missing, INCOMPLETE, or STALE (whose first use starts the DELAY timer).
    let tryResolve (address: 'Address) (cache: NeighborCache<'Address>) : MacAddress voption =
        match cache.Entries.TryFind address with
        | Some e when
            e.State = NeighborState.Reachable
            || e.State = NeighborState.Delay
            || e.State = NeighborState.Probe
            ->
            ValueSome e.Mac
        | _ -> ValueNone

    // The entry the cache gives up to make room: the least recently touched one that is not
    // busy resolving or probing (REACHABLE or STALE, which the model lets Evict).
    let private evictable (cache: NeighborCache<'Address>) =
        let mutable found = ValueNone
        let mutable oldest = never

        for KeyValue(address, e) in cache.Entries do
            if
                (e.State = NeighborState.Stale || e.State = NeighborState.Reachable)
                && e.Touched <= oldest
            then
                oldest <- e.Touched
                found <- ValueSome address

        found

    /// Sends `packet` to `address` (RFC 4861 §7.2.2, §7.3.3): passes it through to a known
    /// address (a STALE entry moves to DELAY), queues it behind an INCOMPLETE one, or makes an
    /// INCOMPLETE entry and asks for a multicast solicitation.
    let send
        (now: int64)
        (address: 'Address)
        (packet: byte[])
        (cache: NeighborCache<'Address>)
        : NeighborCache<'Address> * NeighborAction<'Address> list =
        let config = cache.Config

        match cache.Entries.TryFind address with
        | Some e ->
            match e.State with
            | NeighborState.Incomplete ->
                if cache.QueuedBytes + packet.Length > config.MaxQueuedBytes then
                    cache, [ Dropped(packet, NeighborDropReason.QueueBytesFull) ]
                elif e.Queue.Length >= config.MaxQueuedPerEntry then
                    let oldest = List.head e.Queue
                    let queue = List.tail e.Queue @ [ packet ]

                    let entry =
                        { e with
                            Queue = queue
                            QueuedBytes = e.QueuedBytes - oldest.Length + packet.Length
                        }

                    withEntries
                        (cache.Entries.Add(address, entry))
                        (cache.QueuedBytes - oldest.Length + packet.Length)
                        cache,
                    [ Dropped(oldest, NeighborDropReason.QueueFull) ]
                else
                    let entry =
                        { e with
                            Queue = e.Queue @ [ packet ]
                            QueuedBytes = e.QueuedBytes + packet.Length
                        }

                    withEntries (cache.Entries.Add(address, entry)) (cache.QueuedBytes + packet.Length) cache, []
            | NeighborState.Stale ->
                let entry =
                    { e with
                        State = NeighborState.Delay
                        Deadline = now + config.DelayFirstProbeTime
                        Touched = now
                    }

                withEntries (cache.Entries.Add(address, entry)) cache.QueuedBytes cache, [ Transmit(e.Mac, packet) ]
            | _ -> cache, [ Transmit(e.Mac, packet) ]
        | None ->
            let room =
                if cache.Entries.Count < config.MaxEntries then
                    ValueSome cache.Entries
                else
                    match evictable cache with
                    | ValueSome victim -> ValueSome(cache.Entries.Remove victim)
                    | ValueNone -> ValueNone

            match room with
            | ValueNone -> cache, [ Dropped(packet, NeighborDropReason.CacheFull) ]
            | ValueSome _ when cache.QueuedBytes + packet.Length > config.MaxQueuedBytes ->
                cache, [ Dropped(packet, NeighborDropReason.QueueBytesFull) ]
            | ValueSome entries ->
                let entry =
                    {
                        State = NeighborState.Incomplete
                        Mac = MacAddress.Zero
                        Deadline = now + config.RetransTimer
                        Solicitations = 1
                        Queue = [ packet ]
                        QueuedBytes = packet.Length
                        Touched = now
                    }

                withEntries (entries.Add(address, entry)) (cache.QueuedBytes + packet.Length) cache,
                [ Solicit(address, ValueNone) ]

    // Moves an entry to a resolved state with `mac`; an INCOMPLETE entry's queue is released.
    let private resolve
        (now: int64)
        (address: 'Address)
        (e: NeighborEntry)
        (state: NeighborState)
        (mac: MacAddress)
        (cache: NeighborCache<'Address>)
        : NeighborCache<'Address> * NeighborAction<'Address> list =
        let deadline =
            if state = NeighborState.Reachable then
                now + cache.Config.ReachableTime
            else
                now + cache.Config.StaleLifetime

        let entry =
            {
                State = state
                Mac = mac
                Deadline = deadline
                Solicitations = 0
                Queue = []
                QueuedBytes = 0
                Touched = now
            }

        let released = e.Queue |> List.map (fun p -> Transmit(mac, p))
        withEntries (cache.Entries.Add(address, entry)) (cache.QueuedBytes - e.QueuedBytes) cache, released

    /// A neighbor advertisement for `address` (or an ARP reply from it), RFC 4861 §7.2.5:
    /// without an entry it is ignored; an INCOMPLETE entry takes `mac` and becomes REACHABLE
    /// (solicited) or STALE, releasing its queue; otherwise a different address without the
    /// override flag only makes a REACHABLE entry STALE, and an accepted one updates the entry
    /// (REACHABLE when solicited, STALE when the address changed unsolicited).
    let advertise
        (now: int64)
        (address: 'Address)
        (mac: MacAddress)
        (solicited: bool)
        (override': bool)
        (cache: NeighborCache<'Address>)
        : NeighborCache<'Address> * NeighborAction<'Address> list =
        match cache.Entries.TryFind address with
        | None -> cache, []
        | Some e when e.State = NeighborState.Incomplete ->
            resolve
                now
                address
                e
                (if solicited then
                     NeighborState.Reachable
                 else
                     NeighborState.Stale)
                mac
                cache
        | Some e ->
            let changed = e.Mac <> mac

            if changed && not override' then
                if e.State = NeighborState.Reachable then
                    let entry =
                        { e with
                            State = NeighborState.Stale
                            Deadline = now + cache.Config.StaleLifetime
                            Touched = now
                        }

                    withEntries (cache.Entries.Add(address, entry)) cache.QueuedBytes cache, []
                else
                    cache, []
            elif solicited then
                resolve now address e NeighborState.Reachable mac cache
            elif changed then
                resolve now address e NeighborState.Stale mac cache
            else
                cache, []

    /// A solicitation from `address` carrying its link-layer address (an NS with a source
    /// link-layer option, or an ARP request for us), RFC 4861 §7.2.3 / RFC 826: a missing
    /// entry is made STALE when `create` (the caller says whether the message was for us), an
    /// existing one becomes STALE with the new address when it changed (an INCOMPLETE one
    /// releases its queue), and nothing changes when the address is the same.
    let learn
        (now: int64)
        (address: 'Address)
        (mac: MacAddress)
        (create: bool)
        (cache: NeighborCache<'Address>)
        : NeighborCache<'Address> * NeighborAction<'Address> list =
        match cache.Entries.TryFind address with
        | None when not create -> cache, []
        | None ->
            // A placeholder for the entry about to be made: no queue to release.
            let absent =
                {
                    State = NeighborState.Absent
                    Mac = mac
                    Deadline = never
                    Solicitations = 0
                    Queue = []
                    QueuedBytes = 0
                    Touched = now
                }

            if cache.Entries.Count < cache.Config.MaxEntries then
                resolve now address absent NeighborState.Stale mac cache
            else
                match evictable cache with
                | ValueSome victim ->
                    let trimmed = withEntries (cache.Entries.Remove victim) cache.QueuedBytes cache
                    resolve now address absent NeighborState.Stale mac trimmed
                // Every entry is busy resolving: learning a stranger is not worth one of them.
                | ValueNone -> cache, []
        | Some e when e.State = NeighborState.Incomplete || e.Mac <> mac ->
            resolve now address e NeighborState.Stale mac cache
        | Some _ -> cache, []

    /// Fires every timer due at `now`, each entry at most once (call again while NextDeadline
    /// ≤ now to catch up): INCOMPLETE and PROBE solicit again or give up (dropping the queue),
    /// REACHABLE becomes STALE, DELAY starts probing, an old STALE entry is forgotten.
    let tick (now: int64) (cache: NeighborCache<'Address>) : NeighborCache<'Address> * NeighborAction<'Address> list =
        if cache.NextDeadline > now then
            cache, []
        else
            let config = cache.Config
            let mutable entries = cache.Entries
            let mutable queued = cache.QueuedBytes
            let actions = ResizeArray()

            for KeyValue(address, e) in cache.Entries do
                if e.Deadline <= now then
                    match e.State with
                    | NeighborState.Incomplete when e.Solicitations < config.MaxMulticastSolicit ->
                        entries <-
                            entries.Add(
                                address,
                                { e with
                                    Solicitations = e.Solicitations + 1
                                    Deadline = now + config.RetransTimer
                                }
                            )

                        actions.Add(Solicit(address, ValueNone))
                    | NeighborState.Probe when e.Solicitations < config.MaxUnicastSolicit ->
                        entries <-
                            entries.Add(
                                address,
                                { e with
                                    Solicitations = e.Solicitations + 1
                                    Deadline = now + config.RetransTimer
                                }
                            )

                        actions.Add(Solicit(address, ValueSome e.Mac))
                    | NeighborState.Incomplete
                    | NeighborState.Probe ->
                        entries <- entries.Remove address
                        queued <- queued - e.QueuedBytes

                        for p in e.Queue do
                            actions.Add(Dropped(p, NeighborDropReason.Unresolved))
                    | NeighborState.Reachable ->
                        entries <-
                            entries.Add(
                                address,
                                { e with
                                    State = NeighborState.Stale
                                    Deadline = now + config.StaleLifetime
                                    Touched = now
                                }
                            )
                    | NeighborState.Delay ->
                        entries <-
                            entries.Add(
                                address,
                                { e with
                                    State = NeighborState.Probe
                                    Solicitations = 1
                                    Deadline = now + config.RetransTimer
                                    Touched = now
                                }
                            )

                        actions.Add(Solicit(address, ValueSome e.Mac))
                    | _ -> entries <- entries.Remove address

            withEntries entries queued cache, List.ofSeq actions

    /// Removes every entry (an interface going down); their queued packets are dropped.
    let flush (cache: NeighborCache<'Address>) : NeighborCache<'Address> * NeighborAction<'Address> list =
        let dropped =
            [
                for KeyValue(_, e) in cache.Entries do
                    for p in e.Queue do
                        Dropped(p, NeighborDropReason.Unresolved)
            ]

        withEntries Map.empty 0 cache, dropped
