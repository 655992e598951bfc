/// Any-destination mode in the core, with no loop and no device: which packets the IP layer
/// takes for a forwarder, the TCP table's connection requests that wait for a decision (gVisor's
/// forwarder shape) and the UDP table's flows with their idle timeout. The oracles are models
/// kept here: the set of waiting requests with their arrival times, the flows with their last
/// activity, and RFC 9293's segments computed from the SYN.
module NetStack.Tests.Stack.ForwardingTests

open System
open System.Collections.Generic
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Core.Tcp
open NetStack.Core.Stack

let private ours4 = Ipv4Address.Parse "10.0.2.2"
let private ours6 = Ipv6Address.Parse "fd00::2"
let private peer4 = Ipv4Address.Parse "10.0.2.100"

let private ipWith anyDestination =
    IpLayer.create
        { IpLayer.config (ValueSome ours4) (ValueSome ours6) 1500 with
            AnyDestination = anyDestination
        }
        0L

let private timeout = 30_000_000L

let private table maxConnections =
    TcpEndpointTable(
        TcpEndpointSettings(
            MaxConnections = maxConnections,
            IsnKey = { K0 = 1UL; K1 = 2UL },
            CookieKey = { K0 = 3UL; K1 = 4UL },
            ForwardDecisionTimeout = timeout
        )
    )

let private syn (seq: uint32) : Segment =
    {
        Seq = SeqNum seq
        Ack = SeqNum 0u
        Flags = TcpFlags.Syn
        Window = 65535us
        Options = TcpOptions.None
        PayloadLength = 0
    }

let private sent (out: TcpEndpointOutput) =
    [
        for g in out.Groups do
            for i in g.Start .. g.Start + g.Count - 1 do
                match out.Actions[i] with
                | TcpAction.Transmit s -> yield g.Kind, g.Key, s
                | _ -> ()
    ]

let private groupsOf kind (out: TcpEndpointOutput) =
    [
        for g in out.Groups do
            if g.Kind = kind then
                yield g
    ]

/// An IPv4 UDP datagram written here byte by byte (RFC 791, RFC 768; checksum 0 = none).
let private udp4
    (source: Ipv4Address)
    (destination: Ipv4Address)
    (sourcePort: int)
    (destinationPort: int)
    (payload: byte[])
    =
    let total = 28 + payload.Length
    let p = Array.zeroCreate<byte> total
    p[0] <- 0x45uy
    p[2] <- byte (total >>> 8)
    p[3] <- byte total
    p[8] <- 64uy
    p[9] <- 17uy
    source.Write(Span(p, 12, 4))
    destination.Write(Span(p, 16, 4))
    let mutable sum = 0

    for i in 0..2..18 do
        sum <- sum + (int p[i] <<< 8) + int p[i + 1]

    while sum > 0xFFFF do
        sum <- (sum &&& 0xFFFF) + (sum >>> 16)

    let checksum = ~~~sum &&& 0xFFFF
    p[10] <- byte (checksum >>> 8)
    p[11] <- byte checksum
    p[20] <- byte (sourcePort >>> 8)
    p[21] <- byte sourcePort
    p[22] <- byte (destinationPort >>> 8)
    p[23] <- byte destinationPort
    p[24] <- byte ((8 + payload.Length) >>> 8)
    p[25] <- byte (8 + payload.Length)
    payload.CopyTo(p, 28)
    p

let private key (local: int) (localPort: int) (remotePort: int) =
    {
        Local = V4(Ipv4Address.Parse $"203.0.113.{local}")
        LocalPort = uint16 localPort
        Remote = V4 peer4
        RemotePort = uint16 remotePort
    }

/// What a test step does to the TCP table.
type private Step =
    | Syn of tuple: int
    | Accept of tuple: int
    | Refuse of tuple: int
    | Advance of seconds: int

let private stepGen =
    Gen.frequency
        [
            4, Gen.choose (0, 5) |> Gen.map Syn
            2, Gen.choose (0, 5) |> Gen.map Accept
            1, Gen.choose (0, 5) |> Gen.map Refuse
            1, Gen.choose (1, 20) |> Gen.map Advance
        ]

let private tupleKey (i: int) = key (1 + i % 3) (80 + i / 3) 40000

[<Tests>]
let tests =
    testList
        "Forwarding core"
        [
            test
                "the IP layer takes unicast packets to any address only in any-destination mode, and marks them foreign" {
                let datagram = udp4 peer4 (Ipv4Address.Parse "203.0.113.7") 40000 53 [| 1uy; 2uy |]
                let struct (_, off) = IpLayer.receive 1L (ReadOnlySpan datagram) (ipWith false)
                Expect.equal off.Kind ReceivedKind.Dropped "off by default"
                Expect.equal off.DropCounter "drop.not-for-us" "not for us"

                let struct (_, on) = IpLayer.receive 1L (ReadOnlySpan datagram) (ipWith true)
                Expect.equal on.Kind ReceivedKind.UdpDatagram "taken"
                Expect.isTrue on.Foreign "foreign"
                Expect.equal on.Destination (V4(Ipv4Address.Parse "203.0.113.7")) "destination kept"

                let own = udp4 peer4 ours4 40000 53 [| 1uy |]
                let struct (_, mine) = IpLayer.receive 1L (ReadOnlySpan own) (ipWith true)
                Expect.isFalse mine.Foreign "our own address is not foreign"

                // A group nobody joined is dropped as such (multicast is never a forwarded flow).
                for destination, counter in
                    [
                        "224.0.0.5", "drop.multicast.not-joined"
                        "127.0.0.1", "drop.not-for-us"
                        "0.0.0.0", "drop.not-for-us"
                    ] do
                    let p = udp4 peer4 (Ipv4Address.Parse destination) 40000 53 [| 1uy |]
                    let struct (_, r) = IpLayer.receive 1L (ReadOnlySpan p) (ipWith true)
                    Expect.equal r.DropCounter counter $"{destination} is no unicast destination"

                // A packet from the address it is sent to is nobody's.
                let looped =
                    udp4 (Ipv4Address.Parse "203.0.113.7") (Ipv4Address.Parse "203.0.113.7") 1 2 [||]

                let struct (_, r) = IpLayer.receive 1L (ReadOnlySpan looped) (ipWith true)
                Expect.equal r.DropCounter "drop.bad-source" "source = destination"
            }

            test
                "a port unreachable in any-destination mode comes from the address the datagram was for; a forwarder's refusal from ours" {
                let datagram = udp4 peer4 (Ipv4Address.Parse "203.0.113.7") 40000 53 [| 9uy |]
                let buffer = Array.zeroCreate<byte> 1500

                let check error (expectedSource: string) (expectedType: byte) (expectedCode: byte) =
                    let struct (_, verdict, length) =
                        IpLayer.tryWriteError 1L error (ReadOnlySpan datagram) (Span buffer) (ipWith true)

                    Expect.equal verdict ErrorVerdict.Sent "sent"

                    Expect.equal
                        (Ipv4Address.Read(ReadOnlySpan(buffer, 12, 4)))
                        (Ipv4Address.Parse expectedSource)
                        "source"

                    Expect.equal (Ipv4Address.Read(ReadOnlySpan(buffer, 16, 4))) peer4 "to the sender"
                    Expect.equal buffer[20] expectedType "ICMP type"
                    Expect.equal buffer[21] expectedCode "ICMP code"
                    // The quote: the original header starts right after the 8-byte ICMP header.
                    Expect.sequenceEqual (buffer[28 .. 28 + 19]) (datagram[0..19]) "quote"
                    Expect.isLessThanOrEqual length 576 "RFC 1812 §4.3.2.3"

                // RFC 792: type 3, codes 3 port, 1 host, 0 net, 13 (RFC 1812) prohibited.
                check OutgoingError.PortUnreachable "203.0.113.7" 3uy 3uy
                check OutgoingError.HostUnreachable "10.0.2.2" 3uy 1uy
                check OutgoingError.NetworkUnreachable "10.0.2.2" 3uy 0uy
                check OutgoingError.AdministrativelyProhibited "10.0.2.2" 3uy 13uy
            }

            test
                "a SYN to any address waits for the forwarder's decision; accepted, it gets the SYN,ACK from that address" {
                let t = table 100
                let out = TcpEndpointOutput()
                let forwarder = t.ListenForward(10, 10)
                Expect.isNotNull forwarder "made"
                Expect.isNull (t.ListenForward(10, 10)) "one per table"
                let k = key 9 443 40001
                t.Segment(out, 5L, ipWith true, k.Remote, k.RemotePort, k.Local, k.LocalPort, syn 1000u, true)
                Expect.isEmpty (sent out) "nothing answered yet"
                let pending = groupsOf TcpGroupKind.Pending out
                Expect.equal pending.Length 1 "one request"
                let p = pending.Head.Pending
                Expect.equal p.Key k "the original destination is the key's local end"

                // The SYN's retransmission is absorbed.
                t.Segment(out, 1_000_005L, ipWith true, k.Remote, k.RemotePort, k.Local, k.LocalPort, syn 1000u, true)
                Expect.isEmpty (sent out) "absorbed"
                Expect.isEmpty (groupsOf TcpGroupKind.Pending out) "no second request"

                Expect.isTrue (t.AcceptPending(out, 2_000_000L, ipWith true, p)) "accepted"

                match sent out with
                | [ (TcpGroupKind.Opened, from, s) ] ->
                    Expect.equal from k "from the original destination"
                    Expect.equal s.Flags (TcpFlags.Syn ||| TcpFlags.Ack) "SYN,ACK"
                    Expect.equal s.Ack (SeqNum 1001u) "acknowledges the SYN (RFC 9293 §3.4)"
                | other -> failtestf "expected one SYN,ACK, got %A" other

                Expect.isFalse (t.AcceptPending(out, 2_000_001L, ipWith true, p)) "decided once"
                Expect.isNotNull (t.Find k) "in the table"
            }

            test
                "a listener on every address takes only our own addresses; the forwarder takes the rest, ours too on ports nobody listens on" {
                let t = table 100
                let out = TcpEndpointOutput()
                let listener = t.ListenAll(true, true, 80, 16, 16, 0)
                t.ListenForward(10, 10) |> ignore
                let ip = ipWith true
                let foreign = key 5 80 40002
                t.Segment(out, 1L, ip, foreign.Remote, 40002us, foreign.Local, 80us, syn 1u, true)
                Expect.equal (groupsOf TcpGroupKind.Pending out).Length 1 "foreign port 80: the forwarder's"
                t.Segment(out, 1L, ip, V4 peer4, 40003us, V4 ours4, 80us, syn 1u, false)
                Expect.equal (groupsOf TcpGroupKind.Opened out).Length 1 "our port 80: the listener's"

                Expect.isTrue
                    (obj.ReferenceEquals((groupsOf TcpGroupKind.Opened out).Head.Endpoint.Listener, listener))
                    "that listener"

                t.Segment(out, 1L, ip, V4 peer4, 40004us, V4 ours4, 81us, syn 1u, false)
                Expect.equal (groupsOf TcpGroupKind.Pending out).Length 1 "our port 81: the forwarder's"
            }

            testPropertyWithConfig
                { FsCheckConfig.defaultConfig with
                    maxTest = 300
                }
                "requests follow ForwardModel: one per new SYN within the cap, absorbed repeats, decided once, expired unanswered after the timeout"
            <| Prop.forAll (Arb.fromGen (Gen.listOfLength 40 stepGen)) (fun steps ->
                let cap = 3
                let t = table 1000
                let out = TcpEndpointOutput()
                let forwarder = t.ListenForward(cap, 100)
                let ip = ipWith true
                // The model's state of each tuple, with when its request arrived, and the
                // request objects the table handed out (to decide on, late ones too).
                let state = Dictionary<int, ForwardRequestState>()
                let arrived = Dictionary<int, int64>()
                let requests = Dictionary<int, TcpPendingConnection>()
                let mutable now = 1L

                let stateOf i =
                    match state.TryGetValue i with
                    | true, s -> s
                    | _ -> ForwardRequestState.Absent

                let waiting () =
                    state.Values |> Seq.filter ((=) ForwardRequestState.Waiting) |> Seq.length

                // What the table shows of tuple i.
                let observed i =
                    match requests.TryGetValue i with
                    | true, p when p.IsPending -> ForwardRequestState.Waiting
                    | _ when not (isNull (t.Find(tupleKey i))) -> ForwardRequestState.Connection
                    | _ -> ForwardRequestState.Absent

                let apply i trigger =
                    match ForwardModel.requestAfter (stateOf i) trigger with
                    | ValueSome next ->
                        state[i] <- next
                        true
                    | ValueNone -> false

                let check () =
                    for i in 0..5 do
                        Expect.equal (observed i) (stateOf i) $"tuple {i}"

                    Expect.equal t.PendingCount (waiting ()) "as many waiting as the model says"

                for step in steps do
                    match step with
                    | Advance s ->
                        now <- now + int64 s * 1_000_000L
                        t.RunTimers(out, now)

                        let expired =
                            groupsOf TcpGroupKind.PendingExpired out
                            |> List.map (fun g -> string g.Pending.Key)
                            |> set

                        let due =
                            [
                                for i in 0..5 do
                                    if stateOf i = ForwardRequestState.Waiting && arrived[i] + timeout <= now then
                                        yield i
                            ]

                        Expect.equal
                            expired
                            (due |> List.map (tupleKey >> string) |> set)
                            "exactly the requests past the timeout expire"

                        for i in due do
                            apply i ForwardRequestTrigger.Timeout |> ignore

                        let dueKeys = due |> List.map (tupleKey >> string) |> set

                        for (_, (from: EndpointKey), _) in sent out do
                            Expect.isFalse (dueKeys.Contains(string from)) "expiry answers nothing"

                        // An accepted connection's own timers may end its handshake: from then
                        // on the tuple is the TCP model's business, not this one's.
                        for i in 0..5 do
                            if stateOf i = ForwardRequestState.Connection && isNull (t.Find(tupleKey i)) then
                                state[i] <- ForwardRequestState.Absent
                    | Syn i ->
                        let k = tupleKey i

                        let trigger =
                            if stateOf i = ForwardRequestState.Absent && waiting () >= cap then
                                ForwardRequestTrigger.SynOverCap
                            else
                                ForwardRequestTrigger.Syn

                        let before = stateOf i

                        t.Segment(
                            out,
                            now,
                            ip,
                            k.Remote,
                            k.RemotePort,
                            k.Local,
                            k.LocalPort,
                            syn (uint32 (7 * i)),
                            true
                        )

                        Expect.isTrue (apply i trigger) $"the model permits {trigger} in {before}"
                        let made = groupsOf TcpGroupKind.Pending out

                        if before = ForwardRequestState.Absent && stateOf i = ForwardRequestState.Waiting then
                            Expect.equal made.Length 1 "a request"
                            requests[i] <- made.Head.Pending
                            arrived[i] <- now
                        else
                            Expect.isEmpty made "no request"

                        if before <> ForwardRequestState.Connection then
                            Expect.isEmpty (sent out) "nothing answered before a decision"
                    | Accept i ->
                        match requests.TryGetValue i with
                        | true, p ->
                            let permitted = apply i ForwardRequestTrigger.Accept

                            Expect.equal
                                (t.AcceptPending(out, now, ip, p))
                                permitted
                                "accepted exactly when the model permits it"

                            if permitted then
                                match sent out with
                                | [ (_, from, s) ] ->
                                    Expect.equal from (tupleKey i) "from the original destination"
                                    Expect.equal s.Flags (TcpFlags.Syn ||| TcpFlags.Ack) "SYN,ACK"
                                    Expect.equal s.Ack (SeqNum(uint32 (7 * i) + 1u)) "for that SYN"
                                | other -> failtestf "one SYN,ACK expected: %A" other
                            else
                                Expect.isEmpty (sent out) "a late decision sends nothing"
                        | _ -> ()
                    | Refuse i ->
                        match requests.TryGetValue i with
                        | true, p ->
                            let permitted = apply i ForwardRequestTrigger.Refuse

                            Expect.equal
                                (t.RefusePending(out, p, true))
                                permitted
                                "refused exactly when the model permits it"

                            if permitted then
                                match sent out with
                                | [ (TcpGroupKind.Stateless, from, s) ] ->
                                    Expect.equal from (tupleKey i) "from the original destination"
                                    // RFC 9293 §3.10.7.1 for a SYN: <SEQ=0><ACK=SEG.SEQ+1><CTL=RST,ACK>.
                                    Expect.equal s.Flags (TcpFlags.Rst ||| TcpFlags.Ack) "RST,ACK"
                                    Expect.equal s.Seq (SeqNum 0u) "SEQ 0"
                                    Expect.equal s.Ack (SeqNum(uint32 (7 * i) + 1u)) "ACK SEG.SEQ+1"
                                | other -> failtestf "one RST expected: %A" other
                            else
                                Expect.isEmpty (sent out) "a late decision sends nothing"
                        | _ -> ()

                    check ()

                t.Unlisten forwarder

                for i in 0..5 do
                    apply i ForwardRequestTrigger.ForwarderGone |> ignore

                check ())

            test "without a forwarder, a SYN to another address gets a RST from that address" {
                let t = table 100
                let out = TcpEndpointOutput()
                let k = key 4 22 40010
                t.Segment(out, 1L, ipWith true, k.Remote, k.RemotePort, k.Local, k.LocalPort, syn 50u, true)

                match sent out with
                | [ (TcpGroupKind.Stateless, from, s) ] ->
                    Expect.equal from k "from there"
                    Expect.equal s.Flags (TcpFlags.Rst ||| TcpFlags.Ack) "RST,ACK"
                | other -> failtestf "a RST expected: %A" other

                // With a forwarder that stops, the waiting requests go and SYNs are reset again.
                let f = t.ListenForward(4, 4)
                t.Segment(out, 2L, ipWith true, k.Remote, k.RemotePort, k.Local, k.LocalPort, syn 60u, true)
                let p = (groupsOf TcpGroupKind.Pending out).Head.Pending
                t.Unlisten f
                Expect.isFalse p.IsPending "dropped with its forwarder"
                Expect.equal t.PendingCount 0 "none waiting"
                t.Segment(out, 3L, ipWith true, k.Remote, k.RemotePort, k.Local, k.LocalPort, syn 60u, true)
                Expect.equal (sent out |> List.map (fun (kind, _, _) -> kind)) [ TcpGroupKind.Stateless ] "RST again"
            }

            testPropertyWithConfig
                { FsCheckConfig.defaultConfig with
                    maxTest = 300
                }
                "UDP flows follow ForwardModel: one per 4-tuple within the cap, kept open by traffic either way, ended idle after the timeout"
            <| Prop.forAll
                (Arb.fromGen (
                    Gen.listOfLength
                        50
                        (Gen.frequency
                            [
                                4, Gen.choose (0, 5) |> Gen.map (fun i -> Choice1Of4 i)
                                2, Gen.choose (0, 5) |> Gen.map (fun i -> Choice2Of4 i)
                                1, Gen.choose (0, 5) |> Gen.map (fun i -> Choice3Of4 i)
                                2, Gen.choose (1, 40) |> Gen.map (fun s -> Choice4Of4 s)
                            ])
                ))
                (fun steps ->
                    let idle = 20_000_000L
                    let cap = 4
                    let t = UdpEndpointTable()
                    Expect.isTrue (t.ForwardFlows(cap, idle)) "on"
                    Expect.isFalse (t.ForwardFlows(cap, idle)) "once"
                    // A bound socket on every address still takes our own address only.
                    let bound = t.BindAll(true, true, 53, 0)
                    let state = Dictionary<int, UdpFlowState>()
                    let lastActive = Dictionary<int, int64>()
                    let entries = Dictionary<int, UdpFlowEntry>()
                    let mutable now = 1L
                    let expired = List<UdpFlowEntry>()

                    let stateOf i =
                        match state.TryGetValue i with
                        | true, s -> s
                        | _ -> UdpFlowState.Absent

                    let openFlows () =
                        state.Values |> Seq.filter ((=) UdpFlowState.Open) |> Seq.length

                    let apply i trigger =
                        match ForwardModel.flowAfter (stateOf i) trigger with
                        | ValueSome next ->
                            state[i] <- next

                            if trigger = UdpFlowTrigger.Datagram || trigger = UdpFlowTrigger.Reply then
                                lastActive[i] <- now
                        | ValueNone -> failtestf "the model does not permit %A in %A" trigger (stateOf i)

                    for step in steps do
                        match step with
                        | Choice1Of4 i ->
                            // A datagram from the peer of tuple i.
                            let k = tupleKey i
                            let before = stateOf i

                            let trigger =
                                if before = UdpFlowState.Absent && openFlows () >= cap then
                                    UdpFlowTrigger.DatagramOverCap
                                else
                                    UdpFlowTrigger.Datagram

                            let mutable endpoint = null
                            let mutable flow = null
                            let mutable note = null

                            let verdict =
                                t.Classify(
                                    now,
                                    k.Remote,
                                    k.RemotePort,
                                    k.Local,
                                    k.LocalPort,
                                    true,
                                    false,
                                    &endpoint,
                                    &flow,
                                    &note
                                )

                            apply i trigger

                            match before, stateOf i with
                            | UdpFlowState.Absent, UdpFlowState.Open ->
                                Expect.equal verdict UdpVerdict.NewFlow "a new flow"
                                Expect.equal flow.Key k "keyed by the 4-tuple"
                                entries[i] <- flow
                            | UdpFlowState.Open, _ ->
                                Expect.equal verdict UdpVerdict.Flow "the open flow"
                                Expect.isTrue (obj.ReferenceEquals(flow, entries[i])) "the same flow"
                            | _ ->
                                Expect.equal verdict UdpVerdict.Drop "over the cap"
                                Expect.equal note "udp.forward.drop.flows-full" "counted"
                        | Choice2Of4 i ->
                            // A reply on tuple i's flow, if open.
                            if stateOf i = UdpFlowState.Open then
                                t.Touch(entries[i], now)
                                apply i UdpFlowTrigger.Reply
                        | Choice3Of4 i ->
                            // The user closes tuple i's flow, if open.
                            if stateOf i = UdpFlowState.Open then
                                t.Close entries[i]
                                apply i UdpFlowTrigger.Close
                                Expect.isFalse entries[i].IsOpen "closed"
                        | Choice4Of4 seconds ->
                            now <- now + int64 seconds * 1_000_000L
                            expired.Clear()
                            t.ExpireFlows(now, expired)

                            let due =
                                [
                                    for i in 0..5 do
                                        if stateOf i = UdpFlowState.Open && lastActive[i] + idle <= now then
                                            yield i
                                ]

                            Expect.equal
                                (expired |> Seq.map (fun f -> string f.Key) |> set)
                                (due |> List.map (tupleKey >> string) |> set)
                                "exactly the flows idle for the timeout end"

                            for i in due do
                                apply i UdpFlowTrigger.IdleTimeout
                                Expect.isFalse entries[i].IsOpen "ended"

                        Expect.equal t.FlowCount (openFlows ()) "as many flows as the model"

                    // Our own address: the bound socket; a foreign one never reaches it.
                    let mutable endpoint = null
                    let mutable flow = null
                    let mutable note = null

                    let verdict =
                        t.Classify(now, V4 peer4, 1000us, V4 ours4, 53us, false, false, &endpoint, &flow, &note)

                    Expect.equal verdict UdpVerdict.Socket "bound socket"
                    Expect.isTrue (obj.ReferenceEquals(endpoint, bound)) "that socket"

                    let verdict =
                        t.Classify(
                            now,
                            V4 peer4,
                            1000us,
                            V4(Ipv4Address.Parse "203.0.113.1"),
                            53us,
                            true,
                            false,
                            &endpoint,
                            &flow,
                            &note
                        )

                    Expect.notEqual
                        verdict
                        UdpVerdict.Socket
                        "a foreign destination never reaches a socket bound to every address"

                    let verdict =
                        t.Classify(now, V4 peer4, 1000us, V4 ours4, 9us, false, true, &endpoint, &flow, &note)

                    Expect.equal verdict UdpVerdict.Drop "a broadcast is never forwarded"

                    for f in t.StopForwarding() do
                        Expect.isFalse f.IsOpen "ended on stop"

                    Expect.equal t.FlowCount 0 "none left")

            test "docs/forward-request-states.dot and docs/udp-flow-states.dot are the models' DOT exports" {
                let normalise (s: string) = s.Replace("\r\n", "\n").Trim()

                for name, current in
                    [
                        "forward-request-states.dot", ForwardModel.requestDot ()
                        "udp-flow-states.dot", ForwardModel.flowDot ()
                    ] do
                    let path = IO.Path.Combine(NetStack.Tests.TestUtil.repoRoot.Value, "docs", name)

                    let committed =
                        if IO.File.Exists path then
                            normalise (IO.File.ReadAllText path)
                        else
                            ""

                    if committed <> normalise current then
                        IO.File.WriteAllText(path + ".actual", normalise current + "\n")

                    Expect.equal committed (normalise current) $"{path} differs from the model; see {path}.actual"
            }
        ]
