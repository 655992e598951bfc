namespace NetStack.Core.Stack

open System
open System.Collections.Generic
open System.Runtime.InteropServices
open System.Threading
open NetStack.Core.Tcp
open NetStack.Core.Wire

/// The dynamic port range (RFC 6335 §6) both endpoint tables hand ephemeral ports from, and
/// RFC 6056 §3.3.1's choice among them.
[<RequireQualifiedAccess>]
module EphemeralPorts =

    /// The first dynamic port.
    [<Literal>]
    let First = 49152

    /// The last dynamic port.
    [<Literal>]
    let Last = 65535

    /// From a random start in the range, upwards, the first port `free` accepts; -1 when none.
    let pick (free: uint16 -> bool) (random: int) =
        let count = Last - First + 1
        let start = (random &&& Int32.MaxValue) % count
        let mutable found = -1
        let mutable i = 0

        while found < 0 && i < count do
            let port = First + (start + i) % count

            if free (uint16 port) then
                found <- port

            i <- i + 1

        found

    /// As `pick`, among the ports with `port % shards = shard` only: each engine of a multi-queue
    /// stack hands out its own residue class, so a segment's destination port alone tells which
    /// engine owns the connection (docs/multiqueue.md). `shards` 1 is `pick`.
    let pickSharded (free: uint16 -> bool) (random: int) (shard: int) (shards: int) =
        if shards <= 1 then
            pick free random
        else
            let count = Last - First + 1
            let start = (random &&& Int32.MaxValue) % count
            let mutable found = -1
            let mutable i = 0

            while found < 0 && i < count do
                let port = First + (start + i) % count

                if port % shards = shard && free (uint16 port) then
                    found <- port

                i <- i + 1

            found

/// A TCP 4-tuple from our side: the key of the connection table.
[<Struct; CustomEquality; NoComparison>]
type EndpointKey =
    {
        /// Our address (the arriving packet's destination).
        Local: IpAddr
        /// Our port.
        LocalPort: uint16
        /// The peer's address.
        Remote: IpAddr
        /// The peer's port.
        RemotePort: uint16
    }

    // Written out so that a lookup boxes nothing (the generated equality of a struct record
    // compares IpAddr fields through the generic, boxing path).
    member this.Equals(other: EndpointKey) =
        this.LocalPort = other.LocalPort
        && this.RemotePort = other.RemotePort
        && IpAddr.Compare(this.Remote, other.Remote) = 0
        && IpAddr.Compare(this.Local, other.Local) = 0

    override this.Equals(o: obj) =
        match o with
        | :? EndpointKey as other -> this.Equals other
        | _ -> false

    override this.GetHashCode() =
        HashCode.Combine(this.Local.GetHashCode(), this.LocalPort, this.Remote.GetHashCode(), this.RemotePort)

    interface IEquatable<EndpointKey> with
        member this.Equals(other) = this.Equals other

    override this.ToString() =
        $"{this.Local}:{this.LocalPort} <-> {this.Remote}:{this.RemotePort}"

/// A listening endpoint: a port on one of our addresses or on every address of a family
/// (RFC 9293 §3.10.1 "passive OPEN" with an unspecified local address), with its queues'
/// bounds. The engine keeps the accept queue itself (it holds the sockets waiting for
/// AcceptAsync) and keeps `Queued` in step with it.
[<Sealed; AllowNullLiteral>]
type TcpListenEndpoint
    internal (address: IpAddr voption, ipv4: bool, ipv6: bool, port: uint16, backlog: int, maxHalfOpen: int) =
    /// Connections in SYN-RECEIVED this listener made (RFC 9293 §3.10.7.2), at most MaxHalfOpen.
    [<DefaultValue>]
    val mutable HalfOpen: int

    /// Established connections waiting to be accepted; at most Backlog. The engine's accept
    /// queue owns the count (Interlocked: accepting happens on the caller's thread).
    [<DefaultValue>]
    val mutable Queued: int

    /// When this listener last answered with a SYN cookie (RFC 4987 §3.6), or Int64.MinValue.
    [<DefaultValue>]
    val mutable internal CookieSentAt: int64

    [<DefaultValue>]
    val mutable internal Closed: bool

    /// The one address it takes connections for, or ValueNone for every address of its families.
    member _.Address = address
    /// Takes IPv4 connections.
    member _.Ipv4 = ipv4
    /// Takes IPv6 connections.
    member _.Ipv6 = ipv6
    /// The port.
    member _.Port = port
    /// Established connections waiting to be accepted, at most.
    member _.Backlog = backlog
    /// Connections in SYN-RECEIVED, at most (beyond: SYN cookies, or drops).
    member _.MaxHalfOpen = maxHalfOpen
    /// What the engine attached (its listener object).
    member val Owner: obj = null with get, set

    /// SO_REUSEADDR, inherited by the connections it accepts (Linux: sk_reuse): see
    /// `TcpEndpoint.ReuseAddress`.
    member val ReuseAddress = false with get, set

    /// The listener's socket options, inherited by every connection it accepts from now on (as
    /// Linux's accepted sockets inherit the listener's); ValueNone: the stack's defaults.
    member val Socket: TcpSocketSettings voption = ValueNone with get, set

    /// RFC 9293 §3.10.7.2: room for one more connection to complete its handshake and wait.
    member this.AcceptQueueHasRoom =
        not this.Closed && Volatile.Read(&this.Queued) < backlog

/// One connection of the table: its 4-tuple, its control block (updated in place by the
/// table) and what the table knows about it. The engine finds its socket through `Owner`.
[<Sealed; AllowNullLiteral>]
type TcpEndpoint internal (handle: int, key: EndpointKey, ephemeral: bool) =
    /// The control block (RFC 9293 §3.3.1). Only the table changes it; the engine reads it.
    [<DefaultValue>]
    val mutable Core: Connection

    /// The listener whose half-open queue this connection is in (SYN-RECEIVED), or null.
    [<DefaultValue>]
    val mutable internal HalfOpenOf: TcpListenEndpoint

    /// The listener that made this connection (a passive open), or null (an active open): the
    /// engine offers the connection to it once it is established.
    [<DefaultValue>]
    val mutable Listener: TcpListenEndpoint

    /// Its user let go of it: nobody reads, so its window stays open and FIN-WAIT-2 ends.
    [<DefaultValue>]
    val mutable internal Orphaned: bool

    /// SO_REUSEADDR: a new bind to its local port (a listener, or a connect from a fixed port)
    /// is refused while it uses the port unless both it and the new socket have it, as Linux's
    /// bind conflict rule (TIME-WAIT included).
    [<DefaultValue>]
    val mutable ReuseAddress: bool

    /// Out of the table (Closed, reopened, or the table disposed); its handle is dead.
    [<DefaultValue>]
    val mutable Released: bool

    /// The deadline its timer entry sits under (Int64.MaxValue: none).
    [<DefaultValue>]
    val mutable internal TimerAt: int64

    /// A number for logs and tests, unique for the table's life.
    member _.Handle = handle
    /// The 4-tuple.
    member _.Key = key
    /// Its local port came from the ephemeral range (an active open).
    member _.Ephemeral = ephemeral
    /// What the engine attached (its socket object).
    member val Owner: obj = null with get, set

    /// The error a connection that timed out reports: TimedOut, or the soft ICMP error seen
    /// meanwhile (RFC 1122 §4.2.3.9).
    member this.TimeoutError = Connection.timeoutError this.Core

    /// The send buffer the windows would fill (`Connection.sendBufferWanted`): the engine grows
    /// a waiting writer's buffer from `capacity` towards it, up to `maximum`.
    member this.SendBufferWanted(capacity: int, maximum: int) =
        Connection.sendBufferWanted capacity maximum this.Core

/// A connection request (a SYN) to a forwarder, waiting for its decision: nothing has been
/// answered yet, so a proxy can first try its own outbound connection and then accept (the
/// handshake goes on) or refuse (a RST, or an ICMP error the engine sends) — gVisor's forwarder
/// shape. The SYN's retransmissions meanwhile are absorbed. Undecided after the table's
/// `ForwardDecisionTimeout`, it expires without an answer.
[<Sealed; AllowNullLiteral>]
type TcpPendingConnection internal (key: EndpointKey, syn: Segment, arrivedAt: int64, iss: SeqNum) =
    /// Decided (accepted, refused), expired, or dropped with its forwarder.
    [<DefaultValue>]
    val mutable internal Done: bool

    /// Its place in the table's expiry order.
    [<DefaultValue>]
    val mutable internal Node: LinkedListNode<TcpPendingConnection>

    /// The ISS the connection gets if accepted (RFC 6528, or RFC 6191 after TIME-WAIT).
    member internal _.Iss = iss

    /// The 4-tuple: `Local` is the address and port the peer wanted (the original destination).
    member _.Key = key
    /// The SYN as it arrived.
    member _.Syn = syn
    /// When the SYN arrived.
    member _.ArrivedAt = arrivedAt
    /// Still waiting for a decision.
    member this.IsPending = not this.Done
    /// What the engine attached (its request object).
    member val Owner: obj = null with get, set

/// The kind of a group of actions in a `TcpEndpointOutput`.
type TcpGroupKind =
    /// Actions of an existing connection.
    | Connection = 0
    /// Actions of a connection this call created from a listener (passive open or a valid
    /// SYN cookie): the engine attaches a socket to it (`TcpEndpoint.Owner` is null).
    | Opened = 1
    /// Segments sent with no connection behind them (a RST, a SYN cookie's SYN,ACK): only
    /// `Transmit` actions, from the key's local end to its remote end.
    | Stateless = 2
    /// A new connection request for the forwarder (`TcpGroup.Pending`), no actions: the engine
    /// hands it to the forwarder's user, who accepts or refuses it.
    | Pending = 3
    /// A request that was not decided in time (`TcpGroup.Pending`), no actions: nothing was
    /// answered, and the engine tells the request's user.
    | PendingExpired = 4

/// One group: the actions [Start, Start + Count) of the sink belong to `Endpoint` (null for a
/// stateless group) and leave from `Key`.
[<Struct>]
type TcpGroup =
    {
        Kind: TcpGroupKind
        Endpoint: TcpEndpoint
        /// For Pending and PendingExpired: the request.
        Pending: TcpPendingConnection
        Key: EndpointKey
        Start: int
        Count: int
        /// The IP header settings of the group's segments: its connection's (`TcpConfig.IpHeader`),
        /// a listener's for the SYN,ACKs it answers statelessly (cookies), TCP's defaults for a
        /// RST for no connection (Linux sends those from its per-CPU control socket).
        Header: IpHeaderSettings
    }

/// What one call of the table produced, in order: groups of actions over one shared sink, and
/// the names of the counters to increment. Reused: the table clears it at the start of each
/// call, so a steady stream of segments allocates nothing.
[<Sealed>]
type TcpEndpointOutput() =
    let groups = List<TcpGroup>(4)
    let notes = List<string>(4)

    /// The actions of every group, in order.
    member val Actions = TcpActions() with get

    /// The groups, in the order to carry them out.
    member _.Groups = groups

    /// Counter names to increment by one each (a name may appear more than once).
    member _.Notes = notes

    /// Empties the output.
    member this.Clear() =
        this.Actions.Clear()
        groups.Clear()
        notes.Clear()

/// What a connect attempt got.
type TcpConnectResult =
    /// The SYN is on its way: the endpoint's actions are in the output.
    | Opened = 0
    /// The table is at its connection cap (TooManyOpenSockets).
    | TooManyConnections = 1
    /// No ephemeral port is free (AddressNotAvailable, as a kernel socket's connect).
    | NoEphemeralPort = 2
    /// The fixed local port asked for is in use (AddressAlreadyInUse, as a kernel socket's bind):
    /// by a listener, or by a connection while ReuseAddress is off.
    | LocalPortInUse = 3
    /// The 4-tuple exists already (AddressNotAvailable, as a kernel socket's connect).
    | TupleInUse = 4

/// The table's settings, built by name (a C# object initializer): the link MTU and the
/// connection settings a stack offers, from which the table makes each family's `TcpConfig`.
/// Times are microseconds; a null time means "none".
[<Sealed; AllowNullLiteral>]
type TcpEndpointSettings() =
    /// The link MTU: our MSS is what it leaves after the IP and TCP headers (RFC 9293 §3.7.1).
    member val LinkMtu = 1500 with get, set
    /// The receive buffer each connection starts with (the window it offers).
    member val ReceiveBufferBytes = TcpConfig.Default.ReceiveBufferSize with get, set
    /// How far receive-buffer auto-tuning may grow it (0: no auto-tuning).
    member val ReceiveBufferMaxBytes = TcpConfig.Default.ReceiveBufferMax with get, set
    /// How long TIME-WAIT lasts (RFC 9293 §3.4.2: 2·MSL).
    member val TimeWait = 2L * TcpConfig.Default.Msl with get, set
    /// Congestion control (RFC 5681 Reno or RFC 9438 CUBIC).
    member val CongestionControl = TcpConfig.Default.CongestionControl with get, set
    /// Keep-alive idle time (RFC 9293 §3.8.4), or null for no keep-alives.
    member val KeepAliveIdle = Nullable<int64>() with get, set
    /// Keep-alive probe interval.
    member val KeepAliveInterval = TcpConfig.Default.KeepAliveInterval with get, set
    /// Unanswered keep-alive probes before the connection is dropped.
    member val KeepAliveCount = TcpConfig.Default.KeepAliveCount with get, set
    /// Least time between two ACKs answering out-of-window segments (RFC 5961 §10).
    member val InvalidAckInterval = TcpConfig.Default.OutOfWindowAckInterval with get, set
    /// The user timeout (RFC 9293 §3.10.8, RFC 5482), or null for none.
    member val UserTimeout = Nullable<int64>() with get, set
    /// Connections in the table at most (any state): beyond, SYNs get a RST and connects fail.
    member val MaxConnections = 65536 with get, set
    /// Answer with SYN cookies when a listener's half-open queue is full (RFC 4987 §3.6).
    member val SynCookies = true with get, set
    /// RFC 6528 §3's secret: the engine draws it from a cryptographic source once.
    member val IsnKey = Unchecked.defaultof<IsnKey> with get, set
    /// RFC 4987 §3.6's MAC key for SYN cookies, separate from the ISN key.
    member val CookieKey = Unchecked.defaultof<IsnKey> with get, set
    /// How long a forwarder's connection request waits for a decision before it expires
    /// unanswered (the peer's SYN retransmissions then make a new request).
    member val ForwardDecisionTimeout = 30_000_000L with get, set
    /// A multi-queue stack's engines (1: a single engine): ephemeral ports are drawn only with
    /// `port % EphemeralShards = EphemeralShard` (EphemeralPorts.pickSharded).
    member val EphemeralShards = 1 with get, set
    /// This engine's residue class of ephemeral ports, 0 .. EphemeralShards - 1.
    member val EphemeralShard = 0 with get, set

    /// The control-block settings of a connection of the family (`ipv6`), checked.
    member this.ConfigFor(ipv6: bool) : TcpConfig =
        let voptionOf (n: Nullable<int64>) =
            if n.HasValue then ValueSome n.Value else ValueNone

        let config =
            { TcpConfig.Default with
                Mss = TcpConfig.MssForMtu(this.LinkMtu, ipv6)
                // RFC 9293 §3.7.1: the MSS assumed when a SYN carries none: the minimum
                // datagram each family carries (IPv4 576, IPv6 1280) less the headers.
                DefaultPeerMss = (if ipv6 then 1280 - 60 else 576 - 40)
                ReceiveBufferSize = this.ReceiveBufferBytes
                ReceiveBufferMax = this.ReceiveBufferMaxBytes
                Msl = this.TimeWait / 2L
                CongestionControl = this.CongestionControl
                KeepAliveIdle = voptionOf this.KeepAliveIdle
                KeepAliveInterval = this.KeepAliveInterval
                KeepAliveCount = this.KeepAliveCount
                OutOfWindowAckInterval = this.InvalidAckInterval
                UserTimeout = voptionOf this.UserTimeout
            }

        config.Validate()
        config
