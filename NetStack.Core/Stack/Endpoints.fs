namespace NetStack.Core.Stack

open System
open System.Collections.Generic
open System.Runtime.InteropServices
open System.Threading
open NetStack.Core.Tcp
open NetStack.Core.Wire

/// The TCP endpoint table: every decision about which connection a segment or an ICMP error
/// belongs to, what a listener does with a SYN (RFC 9293 §3.10.7.2 with bounded queues, SYN
/// cookies), what a segment for nothing gets (RFC 9293 §3.10.7.1: a RST), ephemeral ports
/// (RFC 6056 §3.3.1), TIME-WAIT reuse (RFC 6191), orphaned connections, and each connection's
/// timer. Sans-I/O: the caller passes the time, the path MTU state and random numbers, and
/// carries out the output; nothing here reads a clock or touches a device.
///
/// Mutable, like the control blocks it updates in place, and owned by one thread (the engine
/// loop): it is not thread-safe.
[<Sealed>]
type TcpEndpointTable(settings: TcpEndpointSettings) =
    let connections = Dictionary<EndpointKey, TcpEndpoint>()
    let listen4 = Dictionary<uint16, TcpListenEndpoint>()
    let listen6 = Dictionary<uint16, TcpListenEndpoint>()
    // How many connections use each local port, so an ephemeral port is never handed out while
    // any 4-tuple (TIME-WAIT included) still uses it.
    let portUse = Dictionary<uint16, int>()
    let timers = PriorityQueue<TcpEndpoint, int64>()
    let mutable nextHandle = 1
    let mutable reopened: TcpEndpoint = null
    // The forwarder (any-destination mode): takes the SYNs no listener does, as requests that
    // wait for a decision. Requests by 4-tuple, and in arrival order for their expiry.
    let mutable forwarder: TcpListenEndpoint = null
    let mutable forwardMaxPending = 0
    let pending = Dictionary<EndpointKey, TcpPendingConnection>()
    let pendingOrder = LinkedList<TcpPendingConnection>()

    let config4 = settings.ConfigFor false
    let config6 = settings.ConfigFor true

    let config (v6: bool) = if v6 then config6 else config4

    // The settings of a connection `listener` makes: the stack's, with the listener's socket
    // options when it has any (inherited, as on Linux).
    let listenerConfig (listener: TcpListenEndpoint) (v6: bool) =
        match listener.Socket with
        | ValueSome socket -> socket.Apply(config v6)
        | ValueNone -> config v6

    // Room for two addresses, for the ISN and cookie functions (the table is single-threaded).
    let scratch: byte array = Array.zeroCreate 32

    let addressBytes (address: IpAddr) (offset: int) =
        let destination = Span<byte>(scratch, offset, 16)

        match address with
        | V6 a ->
            a.Write destination
            16
        | V4 a ->
            a.Write destination
            4

    // The key's addresses in scratch: local at 0, remote at 16; returns their length.
    let keyBytes (key: EndpointKey) =
        let n = addressBytes key.Local 0
        addressBytes key.Remote 16 |> ignore
        n

    /// RFC 6528 §3: the ISN of a new connection of `key`.
    let generateIss (now: int64) (key: EndpointKey) =
        let n = keyBytes key

        Isn.generate
            settings.IsnKey
            now
            (ReadOnlySpan<byte>(scratch, 0, n))
            key.LocalPort
            (ReadOnlySpan<byte>(scratch, 16, n))
            key.RemotePort

    /// The ISS of a connection a SYN opens: RFC 6528's, or for a SYN that ended TIME-WAIT
    /// (`old`, RFC 6191) one beyond the old connection's.
    let issFor (now: int64) (key: EndpointKey) (old: TcpEndpoint) =
        let generated = generateIss now key

        if isNull old then
            generated
        else
            Connection.reopenIss old.Core generated

    /// Our own connection on `key` that a connect from an explicitly bound port may take over,
    /// or null. Linux allows it when that connection is in TIME-WAIT and used timestamps
    /// (`__inet_hash_connect` checks a bound port without a TIME-WAIT pointer, so
    /// `tcp_twsk_unique` accepts it): PAWS (RFC 7323 §5) then keeps the old incarnation's
    /// duplicates out of the new one, whose ISS lies beyond the old SND.MAX (`issFor`, as for a
    /// SYN that ends TIME-WAIT, RFC 6191). Only an orphan (no socket holds it any more) is taken.
    let timeWaitToTakeOver (key: EndpointKey) : TcpEndpoint =
        match connections.TryGetValue key with
        | true, e when e.Orphaned && e.Core.State = TcpState.TimeWait && e.Core.Ts.Enabled -> e
        | _ -> null

    let listenersOf (v6: bool) = if v6 then listen6 else listen4

    let findListener (local: IpAddr) (port: uint16) =
        match (listenersOf local.IsIpv6).TryGetValue port with
        | true, l when (l.Address.IsNone || IpAddr.Compare(l.Address.Value, local) = 0) -> l
        | _ -> null

    // A listener takes connections to our own addresses (`foreign` false) only; whatever no
    // listener takes goes to the forwarder, if there is one (gVisor's shape: a forwarder sees
    // the SYNs no endpoint matched).
    let listenerFor (local: IpAddr) (port: uint16) (foreign: bool) =
        let l = if foreign then null else findListener local port
        if isNull l then forwarder else l

    let usePort (port: uint16) =
        match portUse.TryGetValue port with
        | true, n -> portUse[port] <- n + 1
        | _ -> portUse[port] <- 1

    let releasePort (port: uint16) =
        match portUse.TryGetValue port with
        | true, n when n > 1 -> portUse[port] <- n - 1
        | _ -> portUse.Remove port |> ignore

    let portFree (v4: bool) (v6: bool) (port: uint16) =
        not (v4 && listen4.ContainsKey port)
        && not (v6 && listen6.ContainsKey port)
        && not (portUse.ContainsKey port)

    // Linux's bind conflict (inet_csk_bind_conflict, checked against the kernel in the tests):
    // a listener of the families on the port always conflicts; connections of the families using
    // it (TIME-WAIT included) conflict unless the new socket and every one of them have
    // SO_REUSEADDR. Addresses within a family are not told apart.
    let bindConflict (v4: bool) (v6: bool) (port: uint16) (reuse: bool) =
        let ofFamilies (e: TcpEndpoint) =
            e.Key.LocalPort = port && (if e.Key.Local.IsIpv6 then v6 else v4)

        (v4 && listen4.ContainsKey port)
        || (v6 && listen6.ContainsKey port)
        || (portUse.ContainsKey port
            && connections.Values
               |> Seq.exists (fun e -> ofFamilies e && (not reuse || not e.ReuseAddress)))

    // RFC 6056 §3.3.1: a port no listener of the families and no connection in any state uses.
    let pickPort (v4: bool) (v6: bool) (random: int) =
        EphemeralPorts.pickSharded (portFree v4 v6) random settings.EphemeralShard settings.EphemeralShards

    let newEndpoint (key: EndpointKey) (ephemeral: bool) (core: Connection) =
        let e = TcpEndpoint(nextHandle, key, ephemeral)
        nextHandle <- if nextHandle = Int32.MaxValue then 1 else nextHandle + 1
        e.Core <- core
        e.TimerAt <- Int64.MaxValue
        connections[key] <- e
        usePort key.LocalPort
        e

    // Out of the table: its 4-tuple and port free again, its listener's half-open count down.
    // Its queued timer entry stays and is skipped when it comes due (Released).
    let release (e: TcpEndpoint) =
        if not e.Released then
            e.Released <- true
            connections.Remove e.Key |> ignore
            releasePort e.Key.LocalPort

            if not (isNull e.HalfOpenOf) then
                e.HalfOpenOf.HalfOpen <- e.HalfOpenOf.HalfOpen - 1
                e.HalfOpenOf <- null

    let arm (e: TcpEndpoint) =
        if not e.Released then
            let deadline = Connection.nextDeadline e.Core

            if deadline.IsSome && deadline.Value < e.TimerAt then
                e.TimerAt <- deadline.Value
                timers.Enqueue(e, deadline.Value)

    // What the table itself does with a connection's actions, once the connection has made
    // them: a handshake a listener made leaves its half-open queue (the engine moves the socket
    // to the accept queue), a closed connection leaves the table, TIME-WAIT reopened by a SYN
    // (RFC 6191) leaves it too and is remembered for the listener.
    let settle (out: TcpEndpointOutput) (e: TcpEndpoint) (start: int) =
        let actions = out.Actions.AsSpan()

        for i in start .. actions.Length - 1 do
            match actions[i] with
            | TcpAction.Event TcpEvent.Connected ->
                if not (isNull e.HalfOpenOf) then
                    e.HalfOpenOf.HalfOpen <- e.HalfOpenOf.HalfOpen - 1
                    e.HalfOpenOf <- null
            | TcpAction.Event TcpEvent.Closed -> release e
            | TcpAction.Event TcpEvent.Reopened -> reopened <- e
            | _ -> ()

    // Closes the group of e that began at action `start`: the table's own bookkeeping, the
    // orphan rule, and e's timer.
    let rec finishGroup (out: TcpEndpointOutput) (kind: TcpGroupKind) (now: int64) (e: TcpEndpoint) (start: int) =
        settle out e start

        if e.Orphaned && not e.Released && e.Core.Rcv.Consumed < e.Core.Rcv.Delivered then
            // Nobody reads an orphaned connection: its window stays open so the peer can finish.
            e.Core <-
                Connection.receiveWindowUpdateInto out.Actions now (e.Core.Rcv.Delivered - e.Core.Rcv.Consumed) e.Core

            settle out e (out.Actions.Count)

        out.Groups.Add
            {
                Kind = kind
                Endpoint = e
                Pending = null
                Key = e.Key
                Start = start
                Count = out.Actions.Count - start
                Header = e.Core.Config.IpHeader
            }

        arm e

    let statelessWith
        (header: IpHeaderSettings)
        (out: TcpEndpointOutput)
        (key: EndpointKey)
        (segment: OutgoingSegment)
        =
        let start = out.Actions.Count
        out.Actions.Add(TcpAction.Transmit segment)

        out.Groups.Add
            {
                Kind = TcpGroupKind.Stateless
                Endpoint = null
                Pending = null
                Key = key
                Start = start
                Count = 1
                Header = header
            }

    let stateless (out: TcpEndpointOutput) (key: EndpointKey) (segment: OutgoingSegment) =
        statelessWith IpHeaderSettings.Tcp out key segment

    // RFC 9293 §3.10.7.1 (and §3.10.7.2 for a listener's refusals): the RST a segment gets when
    // nothing takes it, none for a RST.
    let reset (out: TcpEndpointOutput) (key: EndpointKey) (seg: Segment) =
        match Connection.resetFor seg with
        | ValueSome rst ->
            stateless out key rst
            out.Notes.Add "tcp.rst.sent"
        | ValueNone -> ()

    let withPathMtu (now: int64) (ip: IpLayerState) (remote: IpAddr) (c: Connection) =
        Connection.limitToPathMtu remote.IsIpv6 (IpLayer.pathMtu now remote ip) c

    // RFC 4987 §3.6: a SYN,ACK whose ISN is the cookie, and no state kept.
    let sendCookie
        (out: TcpEndpointOutput)
        (now: int64)
        (listener: TcpListenEndpoint)
        (key: EndpointKey)
        (seg: Segment)
        =
        let cfg = listenerConfig listener key.Local.IsIpv6

        let peerMss =
            if seg.Options.MaximumSegmentSize.IsSome then
                int seg.Options.MaximumSegmentSize.Value
            else
                cfg.DefaultPeerMss

        let n = keyBytes key

        let cookie =
            SynCookie.make
                settings.CookieKey
                now
                (ReadOnlySpan<byte>(scratch, 0, n))
                key.LocalPort
                (ReadOnlySpan<byte>(scratch, 16, n))
                key.RemotePort
                seg.Seq
                peerMss

        statelessWith cfg.IpHeader out key (TcpLayer.cookieSynAck cfg cookie seg)
        listener.CookieSentAt <- now
        out.Notes.Add "tcp.syncookie.sent"

    // The ACK of one of our cookie SYN,ACKs: when the cookie checks out, the connection is
    // rebuilt from it (a SYN with the peer's ISN and the cookie's MSS, then this ACK). False
    // when it is no valid cookie (the caller answers it as a segment for nothing).
    let tryCookie
        (out: TcpEndpointOutput)
        (now: int64)
        (ip: IpLayerState)
        (listener: TcpListenEndpoint)
        (key: EndpointKey)
        (seg: Segment)
        =
        let n = keyBytes key
        let peerIsn = seg.Seq - 1
        let cookieIss = seg.Ack - 1

        let mss =
            SynCookie.check
                settings.CookieKey
                now
                (ReadOnlySpan<byte>(scratch, 0, n))
                key.LocalPort
                (ReadOnlySpan<byte>(scratch, 16, n))
                key.RemotePort
                peerIsn
                cookieIss

        if mss.IsNone then
            out.Notes.Add "tcp.syncookie.invalid"
            false
        elif connections.Count >= settings.MaxConnections || not listener.AcceptQueueHasRoom then
            // No room after all: as for a SYN at the cap, the peer learns at once.
            out.Notes.Add "tcp.syncookie.no-room"
            reset out key seg
            true
        else
            let cfg = listenerConfig listener key.Local.IsIpv6
            let syn = TcpLayer.cookieSyn seg mss.Value
            // The rebuilt connection's own SYN,ACK is not sent: the peer already has it.
            let discard = TcpActions()
            let core = Connection.acceptInto discard cfg cookieIss now syn

            if core.State <> TcpState.SynReceived then
                false
            else
                let e = newEndpoint key false (withPathMtu now ip key.Remote core)
                e.ReuseAddress <- listener.ReuseAddress
                e.HalfOpenOf <- listener
                e.Listener <- listener
                listener.HalfOpen <- listener.HalfOpen + 1
                out.Notes.Add "tcp.syncookie.validated"
                out.Notes.Add "tcp.passive-open"
                let start = out.Actions.Count
                e.Core <- Connection.handleSegmentInto out.Actions now seg e.Core
                finishGroup out TcpGroupKind.Opened now e start
                true

    // RFC 9293 §3.10.7.2: the connection a SYN opens for `listener` (a listener, or the
    // forwarder once its user accepted), in SYN-RECEIVED with its SYN,ACK in the output, in the
    // listener's half-open queue; true when opened. A SYN the engine's own checks refuse in
    // LISTEN leaves only its segments, as stateless groups.
    let openPassive
        (out: TcpEndpointOutput)
        (now: int64)
        (ip: IpLayerState)
        (listener: TcpListenEndpoint)
        (key: EndpointKey)
        (seg: Segment)
        (iss: SeqNum)
        =
        let start = out.Actions.Count

        let core =
            Connection.acceptInto out.Actions (listenerConfig listener key.Local.IsIpv6) iss now seg

        if core.State = TcpState.SynReceived then
            let e = newEndpoint key false (withPathMtu now ip key.Remote core)
            e.ReuseAddress <- listener.ReuseAddress
            e.HalfOpenOf <- listener
            e.Listener <- listener
            listener.HalfOpen <- listener.HalfOpen + 1
            out.Notes.Add "tcp.passive-open"
            finishGroup out TcpGroupKind.Opened now e start
            true
        else
            let actions = out.Actions.AsSpan()

            for i in start .. actions.Length - 1 do
                match actions[i] with
                | TcpAction.Transmit _ ->
                    out.Groups.Add
                        {
                            Kind = TcpGroupKind.Stateless
                            Endpoint = null
                            Pending = null
                            Key = key
                            Start = i
                            Count = 1
                            Header = core.Config.IpHeader
                        }
                | _ -> ()

            false

    // RFC 9293 §3.10.7.2: a SYN for a listener, with the queues bounded. The connection cap
    // refuses with a RST; a full accept queue drops the SYN, as Linux does, so the peer's
    // retransmission tries again later; a full half-open queue answers with a SYN cookie.
    let listenerSyn
        (out: TcpEndpointOutput)
        (now: int64)
        (ip: IpLayerState)
        (listener: TcpListenEndpoint)
        (key: EndpointKey)
        (seg: Segment)
        (old: TcpEndpoint)
        =
        if connections.Count >= settings.MaxConnections then
            out.Notes.Add "tcp.drop.max-connections"
            reset out key seg
        elif not listener.AcceptQueueHasRoom then
            out.Notes.Add "tcp.drop.listen-queue-full"
        // A SYN that reopened a TIME-WAIT 4-tuple takes state even when the half-open queue is
        // full, as Linux does (no cookie when tw_isn is set): a cookie is an ISS of its own,
        // which could not honour reopenIss (RFC 1122 §4.2.2.13). A flood cannot use it: the
        // connection replaces the one in TIME-WAIT just released, and each such SYN needs a
        // 4-tuple in TIME-WAIT and a sequence number or timestamp beyond its last.
        elif isNull old && listener.HalfOpen >= listener.MaxHalfOpen then
            if settings.SynCookies then
                sendCookie out now listener key seg
            else
                out.Notes.Add "tcp.drop.half-open-full"
        else
            openPassive out now ip listener key seg (issFor now key old) |> ignore

    // Out of the waiting set (decided, expired or dropped).
    let settlePending (p: TcpPendingConnection) =
        p.Done <- true

        match pending.TryGetValue p.Key with
        | true, q when obj.ReferenceEquals(p, q) -> pending.Remove p.Key |> ignore
        | _ -> ()

        if not (isNull p.Node) && not (isNull p.Node.List) then
            pendingOrder.Remove p.Node

    // A SYN no listener takes, for the forwarder: a request that waits for the user's decision;
    // its retransmissions meanwhile are absorbed. Bounded: the connection cap refuses with a
    // RST, as for a listener; a full set of requests or of accepted handshakes drops the SYN
    // (the peer retries later).
    let forwardSyn (out: TcpEndpointOutput) (now: int64) (key: EndpointKey) (seg: Segment) (old: TcpEndpoint) =
        match pending.TryGetValue key with
        | true, _ -> out.Notes.Add "tcp.forward.syn-absorbed"
        | _ ->
            if connections.Count >= settings.MaxConnections then
                out.Notes.Add "tcp.drop.max-connections"
                reset out key seg
            elif pending.Count >= forwardMaxPending then
                out.Notes.Add "tcp.forward.drop.pending-full"
            elif forwarder.HalfOpen >= forwarder.MaxHalfOpen then
                out.Notes.Add "tcp.forward.drop.half-open-full"
            else
                let p = TcpPendingConnection(key, seg, now, issFor now key old)
                pending[key] <- p
                p.Node <- pendingOrder.AddLast p
                out.Notes.Add "tcp.forward.requested"

                out.Groups.Add
                    {
                        Kind = TcpGroupKind.Pending
                        Endpoint = null
                        Pending = p
                        Key = key
                        Start = out.Actions.Count
                        Count = 0
                        Header = IpHeaderSettings.Tcp
                    }

    let listen
        (address: IpAddr voption)
        (ipv4: bool)
        (ipv6: bool)
        (port: int)
        (backlog: int)
        (maxHalfOpen: int)
        (random: int)
        (reuse: bool)
        =
        if port < 0 || port > 65535 then
            invalidArg (nameof port) "A port lies in 0..65535."

        if backlog < 1 || maxHalfOpen < 1 then
            invalidArg (nameof backlog) "The backlog and the half-open bound must be positive."

        let chosen = if port <> 0 then port else pickPort ipv4 ipv6 random

        if chosen < 0 || bindConflict ipv4 ipv6 (uint16 chosen) reuse then
            null
        else
            let l = TcpListenEndpoint(address, ipv4, ipv6, uint16 chosen, backlog, maxHalfOpen)
            l.ReuseAddress <- reuse
            l.CookieSentAt <- Int64.MinValue

            if ipv4 then
                listen4[uint16 chosen] <- l

            if ipv6 then
                listen6[uint16 chosen] <- l

            l

    /// The connection of a 4-tuple, or null.
    member _.Find(key: EndpointKey) : TcpEndpoint =
        match connections.TryGetValue key with
        | true, e -> e
        | _ -> null

    /// The connections in the table.
    member _.Connections = connections.Values

    /// How many connections the table holds (any state).
    member _.Count = connections.Count

    /// The earliest deadline of any connection's timer (Int64.MaxValue: none).
    member _.NextDeadline =
        let timer =
            match timers.TryPeek() with
            | true, _, at -> at
            | _ -> Int64.MaxValue

        if pendingOrder.Count = 0 then
            timer
        else
            min timer (pendingOrder.First.Value.ArrivedAt + settings.ForwardDecisionTimeout)

    /// Listens on `port` (0: an ephemeral one, drawn with `random`) on every address of the
    /// families given (RFC 9293 §3.10.1 with an unspecified local address). Null when the port
    /// is taken for one of them (AddressAlreadyInUse): by a listener, or by connections
    /// (TIME-WAIT included) unless `reuseAddress` and every one of them has SO_REUSEADDR.
    member _.ListenAll
        (
            ipv4: bool,
            ipv6: bool,
            port: int,
            backlog: int,
            maxHalfOpen: int,
            random: int,
            [<Optional; DefaultParameterValue(false)>] reuseAddress: bool
        ) : TcpListenEndpoint =
        if not ipv4 && not ipv6 then
            invalidArg (nameof ipv4) "A listener takes at least one family."

        listen ValueNone ipv4 ipv6 port backlog maxHalfOpen random reuseAddress

    /// Listens on (`address`, `port`) only (0: an ephemeral port, drawn with `random`). Null
    /// when the port is taken for the address's family (AddressAlreadyInUse).
    member _.ListenOn
        (
            address: IpAddr,
            port: int,
            backlog: int,
            maxHalfOpen: int,
            random: int,
            [<Optional; DefaultParameterValue(false)>] reuseAddress: bool
        ) : TcpListenEndpoint =
        listen (ValueSome address) (not address.IsIpv6) address.IsIpv6 port backlog maxHalfOpen random reuseAddress

    /// Stops `listener`: SYNs for its port get a RST from now on. Its connections stay.
    member _.Unlisten(listener: TcpListenEndpoint) =
        listener.Closed <- true

        if obj.ReferenceEquals(listener, forwarder) then
            // Its undecided requests go unanswered; the engine fails their users.
            for p in Seq.toArray pendingOrder do
                settlePending p

            forwarder <- null

        let drop (table: Dictionary<uint16, TcpListenEndpoint>) =
            match table.TryGetValue listener.Port with
            | true, l when obj.ReferenceEquals(l, listener) -> table.Remove listener.Port |> ignore
            | _ -> ()

        drop listen4
        drop listen6

    /// The listeners (each once), the forwarder among them.
    member _.Listeners: TcpListenEndpoint array =
        Seq.append listen4.Values listen6.Values
        |> Seq.append (
            if isNull forwarder then
                Seq.empty
            else
                Seq.singleton forwarder
        )
        |> Seq.distinct
        |> Seq.toArray

    /// The forwarder, or null.
    member _.Forwarder = forwarder

    /// The requests waiting for a decision.
    member _.PendingCount = pending.Count

    /// Makes the forwarder (any-destination mode): from now on every SYN no listener takes, to
    /// any address and port, becomes a `TcpPendingConnection` (an output group of kind
    /// Pending) that waits for `AcceptPending` or `RefusePending`. At most `maxPending` wait,
    /// and at most `maxHalfOpen` accepted ones are in SYN-RECEIVED. Null when a forwarder exists.
    member _.ListenForward(maxPending: int, maxHalfOpen: int) : TcpListenEndpoint =
        if maxPending < 1 || maxHalfOpen < 1 then
            invalidArg (nameof maxPending) "The bounds on waiting and half-open requests must be positive."

        if not (isNull forwarder) then
            null
        else
            let l = TcpListenEndpoint(ValueNone, true, true, 0us, Int32.MaxValue, maxHalfOpen)
            l.CookieSentAt <- Int64.MinValue
            forwarder <- l
            forwardMaxPending <- maxPending
            l

    /// The forwarder's user accepts a request: the handshake goes on (the SYN,ACK is in the
    /// output, a group of kind Opened whose endpoint has the forwarder as `Listener`). False
    /// when the request is no longer pending (decided, expired, its forwarder gone) or the
    /// table refuses it now (the connection cap: a RST is in the output).
    member _.AcceptPending(out: TcpEndpointOutput, now: int64, ip: IpLayerState, p: TcpPendingConnection) : bool =
        out.Clear()

        if p.Done || isNull forwarder then
            out.Notes.Add "tcp.forward.decided-late"
            false
        else
            settlePending p

            if connections.ContainsKey p.Key then
                // The 4-tuple was taken meanwhile (an active open of ours drew the same port).
                out.Notes.Add "tcp.forward.tuple-taken"
                false
            elif connections.Count >= settings.MaxConnections then
                out.Notes.Add "tcp.drop.max-connections"
                reset out p.Key p.Syn
                false
            elif openPassive out now ip forwarder p.Key p.Syn p.Iss then
                out.Notes.Add "tcp.forward.accepted"
                true
            else
                false

    /// The forwarder's user refuses a request. `sendReset`: the peer gets the RST a closed port
    /// sends (RFC 9293 §3.10.7.1), in the output; otherwise nothing is in the output and the
    /// engine answers (an ICMP destination unreachable quoting the SYN). False when the request
    /// was no longer pending.
    member _.RefusePending(out: TcpEndpointOutput, p: TcpPendingConnection, sendReset: bool) : bool =
        out.Clear()

        if p.Done then
            out.Notes.Add "tcp.forward.decided-late"
            false
        else
            settlePending p
            out.Notes.Add "tcp.forward.refused"

            if sendReset then
                reset out p.Key p.Syn

            true

    /// An active open (RFC 9293 §3.10.1) from `local` to (remote, remotePort), from an
    /// ephemeral port drawn with `random`, with the stack's default socket options.
    member this.Connect
        (
            out: TcpEndpointOutput,
            now: int64,
            ip: IpLayerState,
            local: IpAddr,
            remote: IpAddr,
            remotePort: uint16,
            random: int,
            [<Out>] endpoint: byref<TcpEndpoint>
        ) : TcpConnectResult =
        this.Connect(out, now, ip, local, 0, false, remote, remotePort, ValueNone, random, &endpoint)

    /// An active open (RFC 9293 §3.10.1) from (`local`, `localPort`) to (remote, remotePort)
    /// with the socket options `socket` (ValueNone: the stack's defaults; they decide the SYN's
    /// window scale and the IP header of every segment). `localPort` 0 draws an ephemeral port
    /// with `random`. A fixed port is refused as a kernel socket's bind refuses it
    /// (`LocalPortInUse`): when a listener of the family holds it, or, unless `reuseAddress`
    /// (SO_REUSEADDR), when any connection uses it (TIME-WAIT included); an existing 4-tuple is
    /// refused as connect refuses it (`TupleInUse`), except our own TIME-WAIT connection that
    /// used timestamps, which the connect takes over as Linux's does (`timeWaitToTakeOver`).
    member _.Connect
        (
            out: TcpEndpointOutput,
            now: int64,
            ip: IpLayerState,
            local: IpAddr,
            localPort: int,
            reuseAddress: bool,
            remote: IpAddr,
            remotePort: uint16,
            socket: TcpSocketSettings voption,
            random: int,
            [<Out>] endpoint: byref<TcpEndpoint>
        ) : TcpConnectResult =
        out.Clear()
        endpoint <- null

        if localPort < 0 || localPort > 65535 then
            invalidArg (nameof localPort) "A port lies in 0..65535."

        let cfg =
            match socket with
            | ValueSome s -> s.Apply(config local.IsIpv6)
            | ValueNone -> config local.IsIpv6

        let tupleFor (port: int) =
            {
                Local = local
                LocalPort = uint16 port
                Remote = remote
                RemotePort = remotePort
            }

        if connections.Count >= settings.MaxConnections then
            out.Notes.Add "tcp.refused.max-connections"
            TcpConnectResult.TooManyConnections
        elif
            localPort <> 0
            && bindConflict (not local.IsIpv6) local.IsIpv6 (uint16 localPort) reuseAddress
        then
            out.Notes.Add "tcp.refused.local-port-in-use"
            TcpConnectResult.LocalPortInUse
        elif
            localPort <> 0
            && connections.ContainsKey(tupleFor localPort)
            && isNull (timeWaitToTakeOver (tupleFor localPort))
        then
            out.Notes.Add "tcp.refused.tuple-in-use"
            TcpConnectResult.TupleInUse
        else
            // A connect from a bound port may take over our own TIME-WAIT connection of the same
            // 4-tuple (see timeWaitToTakeOver); the new ISS then lies beyond the old SND.MAX.
            let old =
                if localPort <> 0 then
                    timeWaitToTakeOver (tupleFor localPort)
                else
                    null

            if not (isNull old) then
                release old
                out.Notes.Add "tcp.time-wait.taken-over"

            let port =
                if localPort <> 0 then
                    localPort
                else
                    pickPort (not local.IsIpv6) local.IsIpv6 random

            if port < 0 then
                // A kernel socket's connect fails with EADDRNOTAVAIL then.
                out.Notes.Add "tcp.refused.no-ephemeral-port"
                TcpConnectResult.NoEphemeralPort
            else
                let key = tupleFor port

                let core = Connection.openActiveInto out.Actions cfg (issFor now key old) now

                let e = newEndpoint key (localPort = 0) (withPathMtu now ip remote core)
                e.ReuseAddress <- reuseAddress
                out.Notes.Add "tcp.active-open"
                finishGroup out TcpGroupKind.Connection now e 0
                endpoint <- e
                TcpConnectResult.Opened

    /// An arriving segment from (source, seg.SourcePort) to (destination, seg.DestinationPort),
    /// one of our addresses.
    member this.Segment
        (
            out: TcpEndpointOutput,
            now: int64,
            ip: IpLayerState,
            source: IpAddr,
            sourcePort: uint16,
            destination: IpAddr,
            destinationPort: uint16,
            seg: Segment
        ) =
        this.Segment(out, now, ip, source, sourcePort, destination, destinationPort, seg, false)

    /// An arriving segment; `foreign`: its destination is not one of our addresses (accepted in
    /// any-destination mode, `Received.Foreign`), so no listener takes it, only the forwarder.
    member _.Segment
        (
            out: TcpEndpointOutput,
            now: int64,
            ip: IpLayerState,
            source: IpAddr,
            sourcePort: uint16,
            destination: IpAddr,
            destinationPort: uint16,
            seg: Segment,
            foreign: bool
        ) =
        out.Clear()

        if seg.Has TcpFlags.Syn && (seg.Has TcpFlags.Fin || seg.Has TcpFlags.Rst) then
            // SYN with FIN or RST has no meaning in any state (a scanner's or an attacker's
            // packet): dropped without an answer, as Linux does.
            out.Notes.Add "tcp.drop.illegal-flags"
        else
            let key =
                {
                    Local = destination
                    LocalPort = destinationPort
                    Remote = source
                    RemotePort = sourcePort
                }

            let mutable old: TcpEndpoint = null
            let mutable handled = false

            match connections.TryGetValue key with
            | true, e ->
                reopened <- null
                e.Core <- Connection.handleSegmentInto out.Actions now seg e.Core
                finishGroup out TcpGroupKind.Connection now e 0

                if obj.ReferenceEquals(reopened, e) then
                    // RFC 6191: the SYN ended TIME-WAIT (the endpoint is released); it goes
                    // on to the listener as a new connection request.
                    reopened <- null
                    old <- e
                else
                    handled <- true
            | _ -> ()

            if not handled then
                let listener = listenerFor destination destinationPort foreign

                if not (isNull listener) && seg.Has TcpFlags.Syn && not (seg.Has TcpFlags.Ack) then
                    if obj.ReferenceEquals(listener, forwarder) then
                        forwardSyn out now key seg old
                    else
                        listenerSyn out now ip listener key seg old
                elif
                    not (isNull listener)
                    && seg.Has TcpFlags.Ack
                    && not (seg.Has TcpFlags.Syn)
                    && not (seg.Has TcpFlags.Rst)
                    && listener.CookieSentAt <> Int64.MinValue
                    && now - listener.CookieSentAt < 2L * SynCookie.PeriodMicros
                    && tryCookie out now ip listener key seg
                then
                    ()
                else
                    out.Notes.Add "tcp.drop.no-connection"
                    reset out key seg

    /// An ICMP error quoting one of our segments of the 4-tuple `quoted` (RFC 1122 §4.2.3.9,
    /// RFC 5927): to that connection, whose engine checks the quoted sequence number and
    /// decides. `sequenceQuoted` false (not a first fragment, or a quote cut before the
    /// sequence number): nothing to check, so nothing is done.
    member _.IcmpError
        (out: TcpEndpointOutput, now: int64, quoted: EndpointKey, sequenceQuoted: bool, error: TcpIcmpError)
        =
        out.Clear()

        match connections.TryGetValue quoted with
        | true, e when sequenceQuoted ->
            e.Core <- Connection.handleIcmpInto out.Actions now error e.Core
            finishGroup out TcpGroupKind.Connection now e 0
        | true, _ -> out.Notes.Add "tcp.icmp.unverifiable"
        | _ -> out.Notes.Add "icmp.error.no-socket"

    /// Runs every connection timer due at `now` (RFC 6298 retransmission, delayed ACK, persist,
    /// keep-alive, TIME-WAIT, FIN-WAIT-2, loss probe, user timeout), one group each.
    member _.RunTimers(out: TcpEndpointOutput, now: int64) =
        out.Clear()

        while pendingOrder.Count > 0
              && pendingOrder.First.Value.ArrivedAt + settings.ForwardDecisionTimeout <= now do
            let p = pendingOrder.First.Value
            settlePending p
            out.Notes.Add "tcp.forward.decision-timeout"

            out.Groups.Add
                {
                    Kind = TcpGroupKind.PendingExpired
                    Endpoint = null
                    Pending = p
                    Key = p.Key
                    Start = out.Actions.Count
                    Count = 0
                    Header = IpHeaderSettings.Tcp
                }

        let mutable e = null
        let mutable at = 0L

        while timers.TryPeek(&e, &at) && at <= now do
            timers.Dequeue() |> ignore

            if at = e.TimerAt && not e.Released then
                e.TimerAt <- Int64.MaxValue
                let retries = e.Core.Timers.Retries
                let start = out.Actions.Count
                e.Core <- Connection.handleTimerInto out.Actions now e.Core
                // Retries grows only when the retransmission timer fired with data
                // outstanding (RFC 6298 §5.4).
                if e.Core.Timers.Retries > retries then
                    out.Notes.Add "tcp.retransmission-timeout"

                finishGroup out TcpGroupKind.Connection now e start

    /// The user has written `totalWritten` bytes into e's send buffer since the connection
    /// began: the new ones go out as the window and congestion control allow.
    member _.Written(out: TcpEndpointOutput, now: int64, e: TcpEndpoint, totalWritten: int64) =
        out.Clear()

        if not e.Released && Connection.canSend e.Core then
            let more = totalWritten - e.Core.Snd.Written

            if more > 0L then
                e.Core <- Connection.sendInto out.Actions now more e.Core
                finishGroup out TcpGroupKind.Connection now e 0

    /// The user has read `totalConsumed` bytes of e's receive stream: the window may open.
    member _.Consumed(out: TcpEndpointOutput, now: int64, e: TcpEndpoint, totalConsumed: int64) =
        out.Clear()

        if not e.Released then
            let more = totalConsumed - e.Core.Rcv.Consumed

            if more > 0L then
                e.Core <- Connection.receiveWindowUpdateInto out.Actions now more e.Core
                finishGroup out TcpGroupKind.Connection now e 0

    /// CLOSE (RFC 9293 §3.10.4). `orphan`: the user also let go of the connection, so nobody
    /// reads: its window stays open and FIN-WAIT-2 ends after `TcpLayer.OrphanFinWait2Timeout`.
    /// An orphaning close that leaves received data unread resets the connection instead (RFC
    /// 1122 §4.2.2.13, RFC 2525 §2.17 "failure to RST on close with data pending"), as Linux's
    /// tcp_close does: the peer learns that its data was not read.
    member _.Close(out: TcpEndpointOutput, now: int64, e: TcpEndpoint, orphan: bool) =
        out.Clear()

        if not e.Released then
            if orphan && e.Core.Rcv.Delivered - e.Core.Rcv.Consumed > 0L then
                e.Core <- Connection.abortInto out.Actions now e.Core
            else
                if orphan then
                    e.Orphaned <- true
                    e.Core <- TcpLayer.orphan now e.Core

                e.Core <- Connection.closeInto out.Actions now e.Core

            finishGroup out TcpGroupKind.Connection now e 0

    /// TCP_NODELAY on or off (RFC 9293 §3.7.4, Nagle).
    member _.SetNoDelay(out: TcpEndpointOutput, now: int64, e: TcpEndpoint, noDelay: bool) =
        out.Clear()

        if not e.Released then
            e.Core <- Connection.setNoDelayInto out.Actions now noDelay e.Core
            finishGroup out TcpGroupKind.Connection now e 0

    /// The connection's socket options changed (`Connection.configureInto`).
    member _.Configure(out: TcpEndpointOutput, now: int64, e: TcpEndpoint, socket: TcpSocketSettings) =
        out.Clear()

        if not e.Released then
            e.Core <- Connection.configureInto out.Actions now socket e.Core
            finishGroup out TcpGroupKind.Connection now e 0

    /// ABORT (RFC 9293 §3.10.5).
    member _.Abort(out: TcpEndpointOutput, now: int64, e: TcpEndpoint) =
        out.Clear()

        if not e.Released then
            e.Core <- Connection.abortInto out.Actions now e.Core
            finishGroup out TcpGroupKind.Connection now e 0

    /// The stack is going away: every connection the peer may still hold state for gets the
    /// RST an ABORT sends (RFC 9293 §3.10.5), one stateless group each, and the table empties.
    member _.AbortAll(out: TcpEndpointOutput, now: int64) =
        out.Clear()
        let scratchActions = TcpActions()

        for e in connections.Values do
            scratchActions.Clear()
            Connection.abortInto scratchActions now e.Core |> ignore

            for a in scratchActions.AsSpan() do
                match a with
                | TcpAction.Transmit segment -> statelessWith e.Core.Config.IpHeader out e.Key segment
                | _ -> ()

            e.Released <- true

        connections.Clear()
        portUse.Clear()
        timers.Clear()
        listen4.Clear()
        listen6.Clear()

        for p in Seq.toArray pendingOrder do
            settlePending p

        forwarder <- null
