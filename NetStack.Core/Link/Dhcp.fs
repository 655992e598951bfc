namespace NetStack.Core.Link

open System
open NetStack.Core.Wire

/// A lease as the client holds it. Times are absolute, on the caller's clock (microseconds);
/// Int64.MaxValue for an infinite lease.
type DhcpLease =
    {
        /// yiaddr of the ACK.
        Address: Ipv4Address
        /// From option 1 (without it: the address's class, RFC 791).
        PrefixLength: int
        /// Option 3, in order of preference.
        Routers: Ipv4Address[]
        /// Option 6.
        DnsServers: Ipv4Address[]
        /// Option 121 (RFC 3442): when present, option 3 is ignored (§2 of that RFC).
        ClasslessRoutes: ClasslessRoute[]
        /// Option 26.
        Mtu: int voption
        /// Option 54: the server REQUESTs go to while RENEWING.
        ServerId: Ipv4Address
        /// Option 51, seconds.
        LeaseSeconds: uint32
        /// When the REQUEST the ACK answered was sent: the lease's times count from it (RFC 2131 §4.4.1).
        Start: int64
        /// T1: RENEWING begins.
        RenewAt: int64
        /// T2: REBINDING begins.
        RebindAt: int64
        /// The lease ends.
        ExpiresAt: int64
    }

/// What the client asks of its interface.
[<RequireQualifiedAccess>]
type DhcpAction =
    /// Send this message to 255.255.255.255 (MAC broadcast) from its ciaddr (0.0.0.0 while unbound).
    | Broadcast of DhcpMessage
    /// Send this message from its ciaddr to the server (through the neighbor cache).
    | Unicast of DhcpMessage * server: Ipv4Address
    /// Send an ARP probe for the address (RFC 5227 §2.1.1: sender 0.0.0.0).
    | Probe of Ipv4Address
    /// Send an ARP announcement of the address (RFC 5227 §2.3).
    | Announce of Ipv4Address
    /// The lease is ours (new or extended): configure the interface with it.
    | Bind of DhcpLease
    /// The address is gone (expiry or NAK): unconfigure it.
    | Unbind
    /// Count this (dhcp.*).
    | Count of string

/// The settings of a DHCP client. Times in microseconds.
type DhcpSettings =
    {
        /// chaddr, and the client identifier (option 61: type 1, the MAC).
        Mac: MacAddress
        /// Option 12, or null.
        HostName: string
        /// An address to ask for again first (INIT-REBOOT, RFC 2131 §3.2).
        PreviousAddress: Ipv4Address voption
        /// The random wait before the first DISCOVER (RFC 2131 §4.4.1 suggests 1..10 s).
        InitialDelayMax: int64
        /// REQUESTs sent in REQUESTING or REBOOTING before going back to INIT.
        MaxRequests: int
        /// How long to wait after a DECLINE (RFC 2131 §3.1.5: at least 10 s).
        DeclineWait: int64
    }

/// The client: its state, the transaction in progress, the lease.
type DhcpClient =
    {
        Settings: DhcpSettings
        State: DhcpState
        /// The state's timer (retransmission, probe, T1, T2, expiry).
        Deadline: int64
        /// The second announcement after binding (Int64.MaxValue: none due).
        AnnounceAt: int64
        Xid: uint32
        /// Messages sent in this state (the retransmission count).
        Attempt: int
        /// When this acquisition began (the secs field counts from it).
        Began: int64
        /// When the last REQUEST went out.
        RequestSentAt: int64
        /// The OFFER taken (REQUESTING).
        Offer: DhcpMessage voption
        /// The ACK being checked (PROBING).
        Candidate: DhcpLease voption
        /// ARP probes still to send (PROBING).
        ProbesLeft: int
        /// The lease in force (BOUND, RENEWING, REBINDING).
        Lease: DhcpLease voption
        /// splitmix64 state: the caller's seed, so the client stays deterministic.
        Rng: uint64
    }

/// A DHCPv4 client (RFC 2131) as pure functions: time and the random seed are inputs, sends and
/// configuration changes are returned as actions. Its graph is DhcpModel's.
[<RequireQualifiedAccess>]
module Dhcp =

    /// RFC 5227 §1.1: PROBE_WAIT 1 s, PROBE_NUM 3, PROBE_MIN 1 s, PROBE_MAX 2 s, ANNOUNCE_WAIT
    /// 2 s, ANNOUNCE_INTERVAL 2 s.
    [<Literal>]
    let ProbeWait = 1_000_000L

    [<Literal>]
    let ProbeNum = 3

    [<Literal>]
    let ProbeMin = 1_000_000L

    [<Literal>]
    let ProbeMax = 2_000_000L

    [<Literal>]
    let AnnounceWait = 2_000_000L

    [<Literal>]
    let AnnounceInterval = 2_000_000L

    /// RFC 2131 §4.4.5: retransmissions while RENEWING or REBINDING wait half the time left,
    /// but at least 60 s.
    [<Literal>]
    let MinimumRenewRetransmit = 60_000_000L

    /// The options asked for (option 55): mask, router, DNS, host name, MTU, lease, server id,
    /// T1, T2, classless routes.
    let parameterRequests =
        [| 1uy; 3uy; 6uy; 12uy; 26uy; 51uy; 54uy; 58uy; 59uy; 121uy |]

    /// Defaults: no host name, no previous address, up to 1 s before the first DISCOVER (shorter
    /// than RFC 2131's suggested 1..10 s: one host on a TAP link has no crowd to desynchronise
    /// from), 4 REQUESTs, 10 s after a DECLINE.
    let settings (mac: MacAddress) : DhcpSettings =
        {
            Mac = mac
            HostName = null
            PreviousAddress = ValueNone
            InitialDelayMax = 1_000_000L
            MaxRequests = 4
            DeclineWait = 10_000_000L
        }

    // splitmix64: a draw in [0, 1) and the next generator state.
    let private draw (rng: uint64) : struct (float * uint64) =
        let next = rng + 0x9E3779B97F4A7C15UL
        let mutable z = next
        z <- (z ^^^ (z >>> 30)) * 0xBF58476D1CE4E5B9UL
        z <- (z ^^^ (z >>> 27)) * 0x94D049BB133111EBUL
        z <- z ^^^ (z >>> 31)
        struct (float (z >>> 11) * (1.0 / 9007199254740992.0), next)

    let private xid (rng: uint64) : struct (uint32 * uint64) =
        let struct (d, rng) = draw rng
        struct (uint32 (d * 4294967296.0), rng)

    /// RFC 2131 §4.1: the n-th transmission (1-based) waits 4 s, 8 s, ... up to 64 s, each
    /// randomised by a uniform ±1 s.
    let retransmitDelay (attempt: int) (draw01: float) : int64 =
        let baseSeconds = min 64L (4L <<< (min (attempt - 1) 4))
        baseSeconds * 1_000_000L + int64 ((draw01 * 2.0 - 1.0) * 1_000_000.0)

    /// A fresh client at `now`: INIT, or INIT-REBOOT with a previous address; the first message
    /// after a random delay of up to InitialDelayMax.
    let create (settings: DhcpSettings) (seed: uint64) (now: int64) : DhcpClient =
        let struct (d, rng) = draw seed
        let struct (x, rng) = xid rng

        {
            Settings = settings
            State =
                if settings.PreviousAddress.IsSome then
                    DhcpState.InitReboot
                else
                    DhcpState.Init
            Deadline = now + int64 (d * float settings.InitialDelayMax)
            AnnounceAt = Int64.MaxValue
            Xid = x
            Attempt = 0
            Began = now
            RequestSentAt = now
            Offer = ValueNone
            Candidate = ValueNone
            ProbesLeft = 0
            Lease = ValueNone
            Rng = rng
        }

    /// When `tick` next has something to do.
    let nextDeadline (c: DhcpClient) : int64 = min c.Deadline c.AnnounceAt

    /// The address being probed (PROBING), whose ARP traffic from others is a conflict.
    let probing (c: DhcpClient) : Ipv4Address voption =
        match c.State, c.Candidate with
        | DhcpState.Probing, ValueSome lease -> ValueSome lease.Address
        | _ -> ValueNone

    /// The address in use (BOUND, RENEWING, REBINDING).
    let address (c: DhcpClient) : Ipv4Address voption =
        match c.Lease with
        | ValueSome lease -> ValueSome lease.Address
        | ValueNone -> ValueNone

    let private message (c: DhcpClient) (now: int64) (kind: DhcpMessageType) =
        let clientId = Array.zeroCreate 7
        clientId.[0] <- 1uy
        c.Settings.Mac.Write(Span(clientId, 1, 6))

        { DhcpMessage.empty 1uy kind c.Xid c.Settings.Mac with
            Secs = uint16 (min 65535L (max 0L ((now - c.Began) / 1_000_000L)))
            ClientId = clientId
            // RFC 2131 Table 5: a DECLINE carries no host name or parameter list.
            HostName =
                if kind = DhcpMessageType.Decline then
                    null
                else
                    c.Settings.HostName
            ParameterRequests =
                if kind = DhcpMessageType.Decline then
                    [||]
                else
                    parameterRequests
        }

    let private discover c now = message c now DhcpMessageType.Discover

    // §4.3.2: SELECTING: server id and requested address; INIT-REBOOT: requested address only;
    // RENEWING and REBINDING: ciaddr only.
    let private request c now (requested: Ipv4Address voption) (server: Ipv4Address voption) (ciaddr: Ipv4Address) =
        { message c now DhcpMessageType.Request with
            RequestedAddress = requested
            ServerId = server
            ClientAddress = ciaddr
        }

    // A mask's prefix length; a non-contiguous mask counts its leading ones.
    let private prefixOf (mask: Ipv4Address voption) (address: Ipv4Address) =
        match mask with
        | ValueSome m -> System.Numerics.BitOperations.LeadingZeroCount(~~~m.Value)
        | ValueNone ->
            let a = address.Value >>> 24

            if a < 128u then 8
            elif a < 192u then 16
            else 24

    let private seconds (start: int64) (s: int64) =
        if start = Int64.MaxValue then
            Int64.MaxValue
        else
            start + s * 1_000_000L

    /// The lease an ACK gives when it was asked for at `start` (RFC 2131 §4.4.5: T1 defaults to
    /// 0.5 and T2 to 0.875 of the lease; given ones are used when T1 < T2 < lease), or ValueNone
    /// when it has no address, lease time or server id.
    let leaseOf (ack: DhcpMessage) (start: int64) : DhcpLease voption =
        match ack.LeaseTime, ack.ServerId with
        | ValueSome lease, ValueSome server when ack.YourAddress.Value <> 0u ->
            let infinite = lease = UInt32.MaxValue
            let l = int64 lease

            let t1, t2 =
                match ack.RenewalTime, ack.RebindingTime with
                | ValueSome t1, ValueSome t2 when int64 t1 < int64 t2 && int64 t2 < l -> int64 t1, int64 t2
                | ValueSome t1, ValueNone when int64 t1 < l * 7L / 8L -> int64 t1, l * 7L / 8L
                | ValueNone, ValueSome t2 when l / 2L < int64 t2 && int64 t2 < l -> l / 2L, int64 t2
                | _ -> l / 2L, l * 7L / 8L

            ValueSome
                {
                    Address = ack.YourAddress
                    PrefixLength = prefixOf ack.SubnetMask ack.YourAddress
                    Routers = ack.Routers
                    DnsServers = ack.DnsServers
                    ClasslessRoutes = ack.ClasslessRoutes
                    Mtu = ack.Mtu
                    ServerId = server
                    LeaseSeconds = lease
                    Start = start
                    RenewAt = if infinite then Int64.MaxValue else seconds start t1
                    RebindAt = if infinite then Int64.MaxValue else seconds start t2
                    ExpiresAt = if infinite then Int64.MaxValue else seconds start l
                }
        | _ -> ValueNone

    let private newXid (c: DhcpClient) =
        let struct (x, rng) = xid c.Rng
        { c with Xid = x; Rng = rng }

    // §4.4.5: half the time left until `until`, at least 60 s, never past it.
    let private renewRetransmit (now: int64) (until: int64) =
        if until = Int64.MaxValue then
            Int64.MaxValue
        else
            min until (now + max MinimumRenewRetransmit ((until - now) / 2L))

    // Sends the state's message again (or the first time) and arms the retransmission timer.
    let private transmit (now: int64) (c: DhcpClient) : DhcpClient * DhcpAction list =
        let struct (d, rng) = draw c.Rng
        let attempt = c.Attempt + 1
        let c = { c with Rng = rng; Attempt = attempt }

        match c.State with
        | DhcpState.Selecting ->
            { c with
                Deadline = now + retransmitDelay attempt d
            },
            [ DhcpAction.Broadcast(discover c now); DhcpAction.Count "dhcp.discover.sent" ]
        | DhcpState.Requesting ->
            let offer = c.Offer.Value

            { c with
                Deadline = now + retransmitDelay attempt d
                RequestSentAt = now
            },
            [
                DhcpAction.Broadcast(request c now (ValueSome offer.YourAddress) offer.ServerId Ipv4Address.Any)
                DhcpAction.Count "dhcp.request.sent"
            ]
        | DhcpState.Rebooting ->
            { c with
                Deadline = now + retransmitDelay attempt d
                RequestSentAt = now
            },
            [
                DhcpAction.Broadcast(request c now c.Settings.PreviousAddress ValueNone Ipv4Address.Any)
                DhcpAction.Count "dhcp.request.sent"
            ]
        | DhcpState.Renewing ->
            let lease = c.Lease.Value

            { c with
                Deadline = renewRetransmit now lease.RebindAt
                RequestSentAt = now
            },
            [
                DhcpAction.Unicast(request c now ValueNone ValueNone lease.Address, lease.ServerId)
                DhcpAction.Count "dhcp.request.sent"
            ]
        | DhcpState.Rebinding ->
            let lease = c.Lease.Value

            { c with
                Deadline = renewRetransmit now lease.ExpiresAt
                RequestSentAt = now
            },
            [
                DhcpAction.Broadcast(request c now ValueNone ValueNone lease.Address)
                DhcpAction.Count "dhcp.request.sent"
            ]
        | _ -> c, []

    let private enter (state: DhcpState) (now: int64) (c: DhcpClient) =
        transmit now { c with State = state; Attempt = 0 }

    // Back to INIT: a new transaction after `wait`; the lease, if any, is dropped.
    let private restart (now: int64) (wait: int64) (c: DhcpClient) : DhcpClient * DhcpAction list =
        let unbind = if c.Lease.IsSome then [ DhcpAction.Unbind ] else []

        { newXid c with
            State = DhcpState.Init
            Deadline = now + wait
            AnnounceAt = Int64.MaxValue
            Attempt = 0
            Offer = ValueNone
            Candidate = ValueNone
            Lease = ValueNone
        },
        unbind

    let private bind (lease: DhcpLease) (c: DhcpClient) =
        { c with
            State = DhcpState.Bound
            Lease = ValueSome lease
            Candidate = ValueNone
            Offer = ValueNone
            Attempt = 0
            Deadline = lease.RenewAt
        },
        [ DhcpAction.Bind lease ]

    /// Runs the timers due at `now`, one transition per call (call again while `nextDeadline`
    /// is due): the first message of INIT / INIT-REBOOT, retransmissions, giving up, probes, the
    /// second announcement, T1, T2 and expiry.
    let tick (now: int64) (c: DhcpClient) : DhcpClient * DhcpAction list =
        if c.AnnounceAt <= now then
            let announce =
                match c.Lease with
                | ValueSome lease -> [ DhcpAction.Announce lease.Address; DhcpAction.Count "dhcp.announce.sent" ]
                | ValueNone -> []

            { c with AnnounceAt = Int64.MaxValue }, announce
        elif c.Deadline > now then
            c, []
        else
            match c.State with
            | DhcpState.Init ->
                enter
                    DhcpState.Selecting
                    now
                    { c with
                        Began = now
                        Offer = ValueNone
                    }
            | DhcpState.InitReboot -> enter DhcpState.Rebooting now { c with Began = now }
            | DhcpState.Selecting -> transmit now c
            | DhcpState.Requesting
            | DhcpState.Rebooting ->
                if c.Attempt >= c.Settings.MaxRequests then
                    let c, actions = restart now 0L c
                    c, DhcpAction.Count "dhcp.request.unanswered" :: actions
                else
                    transmit now c
            | DhcpState.Probing ->
                let lease = c.Candidate.Value

                if c.ProbesLeft > 0 then
                    let left = c.ProbesLeft - 1
                    let struct (d, rng) = draw c.Rng

                    { c with
                        Rng = rng
                        ProbesLeft = left
                        Deadline =
                            if left > 0 then
                                now + ProbeMin + int64 (d * float (ProbeMax - ProbeMin))
                            else
                                now + AnnounceWait
                    },
                    [ DhcpAction.Probe lease.Address; DhcpAction.Count "dhcp.probe.sent" ]
                else
                    let c, actions = bind lease c

                    { c with
                        AnnounceAt = now + AnnounceInterval
                    },
                    actions @ [ DhcpAction.Announce lease.Address; DhcpAction.Count "dhcp.bound" ]
            | DhcpState.Bound -> enter DhcpState.Renewing now c
            | DhcpState.Renewing ->
                if now >= c.Lease.Value.RebindAt then
                    enter DhcpState.Rebinding now c
                else
                    transmit now c
            | DhcpState.Rebinding ->
                if now >= c.Lease.Value.ExpiresAt then
                    let c, actions = restart now 0L c
                    c, DhcpAction.Count "dhcp.lease.expired" :: actions
                else
                    transmit now c

    /// A message received for the client port at `now`. Replies with another xid or MAC, or of
    /// a type the state does not wait for, are counted and ignored (RFC 2131 §4.4.1).
    let receive (now: int64) (m: DhcpMessage) (c: DhcpClient) : DhcpClient * DhcpAction list =
        if m.Op <> 2uy || m.Xid <> c.Xid || m.ClientMac <> c.Settings.Mac then
            c, [ DhcpAction.Count "dhcp.drop.not-ours" ]
        else
            match c.State, m.MessageType with
            | DhcpState.Selecting, DhcpMessageType.Offer when m.YourAddress.Value <> 0u && m.ServerId.IsSome ->
                let c, actions = enter DhcpState.Requesting now { c with Offer = ValueSome m }
                c, DhcpAction.Count "dhcp.offer.received" :: actions
            | (DhcpState.Requesting | DhcpState.Rebooting), DhcpMessageType.Ack ->
                match leaseOf m c.RequestSentAt with
                | ValueSome lease ->
                    let struct (d, rng) = draw c.Rng

                    { c with
                        State = DhcpState.Probing
                        Rng = rng
                        Candidate = ValueSome lease
                        ProbesLeft = ProbeNum
                        Deadline = now + int64 (d * float ProbeWait)
                    },
                    [ DhcpAction.Count "dhcp.ack.received" ]
                | ValueNone -> c, [ DhcpAction.Count "dhcp.drop.invalid" ]
            | (DhcpState.Renewing | DhcpState.Rebinding), DhcpMessageType.Ack ->
                match leaseOf m c.RequestSentAt with
                | ValueSome lease when lease.Address = c.Lease.Value.Address ->
                    let c, actions = bind lease c
                    c, DhcpAction.Count "dhcp.ack.received" :: actions
                | _ -> c, [ DhcpAction.Count "dhcp.drop.invalid" ]
            | (DhcpState.Requesting | DhcpState.Rebooting | DhcpState.Renewing | DhcpState.Rebinding),
              DhcpMessageType.Nak ->
                let c, actions = restart now 0L c
                c, DhcpAction.Count "dhcp.nak.received" :: actions
            | _ -> c, [ DhcpAction.Count "dhcp.drop.unexpected" ]

    /// Another host answered for, or probes, the address being checked (RFC 5227 §2.1.1): it is
    /// DECLINEd (RFC 2131 §3.1.5) and the client starts again after DeclineWait. Outside
    /// PROBING nothing happens.
    let conflict (now: int64) (c: DhcpClient) : DhcpClient * DhcpAction list =
        match c.State, c.Candidate with
        | DhcpState.Probing, ValueSome lease ->
            let decline =
                { message c now DhcpMessageType.Decline with
                    RequestedAddress = ValueSome lease.Address
                    ServerId = ValueSome lease.ServerId
                    Secs = 0us
                }

            let c, actions = restart now c.Settings.DeclineWait c
            c, DhcpAction.Broadcast decline :: DhcpAction.Count "dhcp.decline.sent" :: actions
        | _ -> c, []
