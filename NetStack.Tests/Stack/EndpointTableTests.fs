/// The core's TCP endpoint table on its own, with no loop and no device: which connection a
/// segment reaches, what a listener does with SYNs under its bounds, SYN cookies, RSTs for
/// segments to nothing, ephemeral ports, connection timers. The expected segments are computed
/// here from the RFCs' rules, not by the table's own functions.
module NetStack.Tests.Stack.EndpointTableTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Core.Tcp
open NetStack.Core.Stack

let private ours = V4(Ipv4Address.Parse "10.0.0.2")
let private other = V4(Ipv4Address.Parse "10.0.0.3")
let private peer = V4(Ipv4Address.Parse "10.0.0.1")
let private ours6 = V6(Ipv6Address.Parse "fd00::2")
let private peer6 = V6(Ipv6Address.Parse "fd00::1")

let private ip =
    IpLayer.create
        (IpLayer.config (ValueSome(Ipv4Address.Parse "10.0.0.2")) (ValueSome(Ipv6Address.Parse "fd00::2")) 1500)
        0L

let private settings maxConnections cookies =
    TcpEndpointSettings(
        MaxConnections = maxConnections,
        SynCookies = cookies,
        IsnKey = { K0 = 1UL; K1 = 2UL },
        CookieKey = { K0 = 3UL; K1 = 4UL }
    )

let private table () = TcpEndpointTable(settings 1000 true)

let private segment (seq: uint32) (ack: uint32) (flags: TcpFlags) (length: int) : Segment =
    {
        Seq = SeqNum seq
        Ack = SeqNum ack
        Flags = flags
        Window = 65535us
        Options = TcpOptions.None
        PayloadLength = length
    }

let private syn (seq: uint32) = segment seq 0u TcpFlags.Syn 0

/// The segments the output sends, with the key each leaves from and its group's kind.
let private sent (out: TcpEndpointOutput) =
    [
        for g in out.Groups do
            for i in g.Start .. g.Start + g.Count - 1 do
                match out.Actions[i] with
                | TcpAction.Transmit s -> yield g.Kind, g.Key, s
                | _ -> ()
    ]

let private notes (out: TcpEndpointOutput) = List.ofSeq out.Notes

let private receive
    (t: TcpEndpointTable)
    (out: TcpEndpointOutput)
    now
    (sourcePort: uint16)
    (destinationPort: uint16)
    seg
    =
    t.Segment(out, now, ip, peer, sourcePort, ours, destinationPort, seg)

let private replyKey port peerPort =
    {
        Local = ours
        LocalPort = port
        Remote = peer
        RemotePort = peerPort
    }

/// RFC 9293 §3.10.7.1, computed here: a RST answers any segment but a RST; with ACK set it is
/// <SEQ=SEG.ACK><CTL=RST>, else <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>, where SEG.LEN
/// counts SYN and FIN.
let private expectedReset (seg: Segment) =
    if seg.Flags.HasFlag TcpFlags.Rst then
        None
    elif seg.Flags.HasFlag TcpFlags.Ack then
        Some(seg.Ack.Value, 0u, TcpFlags.Rst)
    else
        let len =
            uint32 seg.PayloadLength
            + (if seg.Flags.HasFlag TcpFlags.Syn then 1u else 0u)
            + (if seg.Flags.HasFlag TcpFlags.Fin then 1u else 0u)

        Some(0u, seg.Seq.Value + len, TcpFlags.Rst ||| TcpFlags.Ack)

let private flagsGen =
    Gen.choose (0, 0x3F)
    |> Gen.map (fun f -> LanguagePrimitives.EnumOfValue<byte, TcpFlags>(byte f))

let private uint32Gen =
    Gen.choose (Int32.MinValue, Int32.MaxValue) |> Gen.map uint32

let private config =
    { FsCheckConfig.defaultConfig with
        maxTest = 300
    }

[<Tests>]
let tests =
    testList
        "Endpoint table"
        [
            testPropertyWithConfig
                config
                "a segment for no connection and no listener gets RFC 9293 §3.10.7.1's RST, and a RST gets nothing"
            <| Prop.forAll
                (Arb.fromGen (Gen.zip3 uint32Gen uint32Gen (Gen.zip flagsGen (Gen.choose (0, 1400)))))
                (fun (seq, ack, (flags, length)) ->
                    let t = table ()
                    let out = TcpEndpointOutput()
                    let seg = segment seq ack flags length
                    receive t out 5L 40000us 80us seg

                    let illegal =
                        flags.HasFlag TcpFlags.Syn
                        && (flags.HasFlag TcpFlags.Fin || flags.HasFlag TcpFlags.Rst)

                    let expected =
                        if illegal then
                            []
                        else
                            match expectedReset seg with
                            | Some(s, a, f) -> [ TcpGroupKind.Stateless, replyKey 80us 40000us, s, a, f ]
                            | None -> []

                    let actual =
                        sent out
                        |> List.map (fun (k, key, s) -> k, key, s.Seq.Value, s.Ack.Value, s.Flags)

                    Expect.equal actual expected "the RST, from the segment's destination to its source"
                    Expect.equal t.Count 0 "no state kept")

            testCase "a SYN with FIN or RST is dropped unanswered, even for a listener"
            <| fun () ->
                let t = table ()
                t.ListenAll(true, true, 80, 8, 8, 0) |> ignore
                let out = TcpEndpointOutput()
                receive t out 1L 40000us 80us (segment 7u 0u (TcpFlags.Syn ||| TcpFlags.Fin) 0)
                Expect.isEmpty (sent out) "nothing sent"
                Expect.equal (notes out) [ "tcp.drop.illegal-flags" ] "counted"
                Expect.equal t.Count 0 "no connection"

            testCase "a listener answers a SYN with a SYN,ACK of SEG.SEQ + 1 and keeps one half-open connection"
            <| fun () ->
                let t = table ()
                let l = t.ListenAll(true, false, 80, 8, 8, 0)
                let out = TcpEndpointOutput()
                receive t out 1L 40000us 80us (syn 1000u)
                let segs = sent out
                Expect.equal segs.Length 1 "one segment"
                let kind, key, s = segs.Head
                Expect.equal kind TcpGroupKind.Opened "a new connection"
                Expect.equal key (replyKey 80us 40000us) "from the listener's port"
                Expect.equal s.Flags (TcpFlags.Syn ||| TcpFlags.Ack) "SYN,ACK"
                Expect.equal s.Ack.Value 1001u "acknowledges the SYN"
                Expect.equal l.HalfOpen 1 "half-open"
                Expect.equal t.Count 1 "in the table"
                let e = t.Find key
                Expect.equal e.Core.State TcpState.SynReceived "SYN-RECEIVED"
                Expect.isTrue (obj.ReferenceEquals(e.Listener, l)) "made by the listener"
                // The handshake's ACK moves it out of the half-open queue.
                receive t out 2L 40000us 80us (segment 1001u (s.Seq.Value + 1u) TcpFlags.Ack 0)
                Expect.equal e.Core.State TcpState.Established "ESTABLISHED"
                Expect.equal l.HalfOpen 0 "no longer half-open"
                Expect.equal out.Groups.[0].Kind TcpGroupKind.Connection "the existing connection"

            testCase "a listener on one address does not take SYNs for another; one for the family takes both"
            <| fun () ->
                let t = table ()
                Expect.isNotNull (t.ListenOn(ours, 80, 8, 8, 0)) "listening on 10.0.0.2:80"
                Expect.isNull (t.ListenAll(true, false, 80, 8, 8, 0)) "the port is taken for IPv4"
                Expect.isNotNull (t.ListenAll(false, true, 80, 8, 8, 0)) "but free for IPv6"
                let out = TcpEndpointOutput()
                t.Segment(out, 1L, ip, peer, 40000us, other, 80us, syn 5u)
                Expect.equal (notes out) [ "tcp.drop.no-connection"; "tcp.rst.sent" ] "10.0.0.3:80 is nobody's"
                t.Segment(out, 1L, ip, peer6, 40000us, ours6, 80us, syn 5u)
                Expect.equal (notes out) [ "tcp.passive-open" ] "[fd00::2]:80 is the IPv6 listener's"

            testCase "after Unlisten a SYN gets a RST; the listener's connections stay"
            <| fun () ->
                let t = table ()
                let l = t.ListenAll(true, false, 80, 8, 8, 0)
                let out = TcpEndpointOutput()
                receive t out 1L 40000us 80us (syn 1u)
                t.Unlisten l
                receive t out 2L 40001us 80us (syn 1u)
                Expect.equal (notes out) [ "tcp.drop.no-connection"; "tcp.rst.sent" ] "refused"
                Expect.equal t.Count 1 "the first connection remains"

            testCase
                "a full half-open queue answers with a SYN cookie, and the cookie's ACK makes an established connection"
            <| fun () ->
                let t = table ()
                let l = t.ListenAll(true, false, 80, 8, 2, 0)
                let out = TcpEndpointOutput()
                receive t out 1L 40000us 80us (syn 1u)
                receive t out 1L 40001us 80us (syn 1u)
                Expect.equal l.HalfOpen 2 "the half-open bound reached"
                receive t out 2L 40002us 80us (syn 5000u)
                Expect.equal (notes out) [ "tcp.syncookie.sent" ] "a cookie"
                let kind, _, cookie = (sent out).Head
                Expect.equal kind TcpGroupKind.Stateless "no state"
                Expect.equal cookie.Ack.Value 5001u "acknowledges the SYN"
                Expect.equal t.Count 2 "nothing kept for it"
                // A forged ACK (cookie + 2) is refused; the right one is taken.
                receive t out 3L 40002us 80us (segment 5001u (cookie.Seq.Value + 2u) TcpFlags.Ack 0)
                Expect.equal (notes out) [ "tcp.syncookie.invalid"; "tcp.drop.no-connection"; "tcp.rst.sent" ] "forged"
                receive t out 3L 40002us 80us (segment 5001u (cookie.Seq.Value + 1u) TcpFlags.Ack 0)
                Expect.equal (notes out) [ "tcp.syncookie.validated"; "tcp.passive-open" ] "validated"
                let e = t.Find(replyKey 80us 40002us)
                Expect.equal e.Core.State TcpState.Established "ESTABLISHED from the cookie"
                Expect.equal l.HalfOpen 2 "the cookie connection passed through the half-open count"

            testCase "without SYN cookies a full half-open queue drops SYNs unanswered"
            <| fun () ->
                let t = TcpEndpointTable(settings 1000 false)
                t.ListenAll(true, false, 80, 8, 1, 0) |> ignore
                let out = TcpEndpointOutput()
                receive t out 1L 40000us 80us (syn 1u)
                receive t out 1L 40001us 80us (syn 1u)
                Expect.equal (notes out) [ "tcp.drop.half-open-full" ] "dropped"
                Expect.isEmpty (sent out) "unanswered"

            testCase "a full accept queue drops SYNs unanswered, so the peer retries later"
            <| fun () ->
                let t = table ()
                let l = t.ListenAll(true, false, 80, 2, 8, 0)
                l.Queued <- 2
                let out = TcpEndpointOutput()
                receive t out 1L 40000us 80us (syn 1u)
                Expect.equal (notes out) [ "tcp.drop.listen-queue-full" ] "dropped"
                Expect.isEmpty (sent out) "unanswered"
                l.Queued <- 1
                receive t out 2L 40000us 80us (syn 1u)
                Expect.equal (notes out) [ "tcp.passive-open" ] "room again"

            testCase "at the connection cap a SYN gets a RST and a connect fails"
            <| fun () ->
                let t = TcpEndpointTable(settings 1 true)
                t.ListenAll(true, false, 80, 8, 8, 0) |> ignore
                let out = TcpEndpointOutput()
                receive t out 1L 40000us 80us (syn 1u)
                receive t out 1L 40001us 80us (syn 9u)
                Expect.equal (notes out) [ "tcp.drop.max-connections"; "tcp.rst.sent" ] "refused"
                let _, _, rst = (sent out).Head
                Expect.equal (rst.Flags, rst.Ack.Value) (TcpFlags.Rst ||| TcpFlags.Ack, 10u) "RST,ACK of SEG.SEQ + 1"
                let mutable e = null
                let result = t.Connect(out, 1L, ip, ours, peer, 443us, 0, &e)
                Expect.equal result TcpConnectResult.TooManyConnections "no room"

            testCase "ephemeral ports: distinct, in 49152–65535, never a listener's, until none is left"
            <| fun () ->
                let t = TcpEndpointTable(settings 100000 true)
                let l = t.ListenAll(true, false, 0, 8, 8, 12345)
                Expect.isTrue (l.Port >= 49152us) "a listener's port 0 is ephemeral too"
                let out = TcpEndpointOutput()
                let ports = Collections.Generic.HashSet<uint16>()

                for i in 1 .. 65535 - 49152 do
                    let mutable e = null
                    let r = t.Connect(out, 1L, ip, ours, peer, 443us, i * 7919, &e)
                    Expect.equal r TcpConnectResult.Opened "a port was free"
                    Expect.isTrue (e.Key.LocalPort >= 49152us) "in the dynamic range"
                    Expect.isTrue (ports.Add e.Key.LocalPort) "not handed out twice"
                    Expect.notEqual e.Key.LocalPort l.Port "not the listener's"

                let mutable e = null

                Expect.equal
                    (t.Connect(out, 1L, ip, ours, peer, 443us, 1, &e))
                    TcpConnectResult.NoEphemeralPort
                    "exhausted"

                Expect.equal (notes out) [ "tcp.refused.no-ephemeral-port" ] "counted"

            testCase
                "a multi-queue engine's ephemeral ports (EphemeralShard 2 of 3): each with port % 3 = 2, each handed out once, until none is left"
            <| fun () ->
                let s = settings 100000 true
                s.EphemeralShards <- 3
                s.EphemeralShard <- 2
                let t = TcpEndpointTable s
                let out = TcpEndpointOutput()
                let ports = Collections.Generic.HashSet<uint16>()
                // The dynamic range's ports with remainder 2 mod 3, counted here.
                let expected = [ 49152..65535 ] |> List.filter (fun p -> p % 3 = 2) |> List.length
                let mutable opened = TcpConnectResult.Opened

                while opened = TcpConnectResult.Opened do
                    let mutable e = null
                    opened <- t.Connect(out, 1L, ip, ours, peer, 443us, ports.Count * 7919, &e)

                    if opened = TcpConnectResult.Opened then
                        Expect.equal (int e.Key.LocalPort % 3) 2 "this engine's residue class"
                        Expect.isTrue (ports.Add e.Key.LocalPort) "not handed out twice"

                Expect.equal opened TcpConnectResult.NoEphemeralPort "exhausted"
                Expect.equal ports.Count expected "every port of the class, then none"

            testCase "a connect's SYN is retransmitted by the table's timer after RFC 6298's initial RTO of 1 s"
            <| fun () ->
                let t = table ()
                let out = TcpEndpointOutput()
                let mutable e = null
                t.Connect(out, 1_000L, ip, ours, peer, 443us, 0, &e) |> ignore
                let _, _, first = (sent out).Head
                Expect.equal first.Flags TcpFlags.Syn "a SYN"
                Expect.equal t.NextDeadline (1_000L + 1_000_000L) "RTO 1 s (RFC 6298 §2.1)"
                t.RunTimers(out, 1_000L + 999_999L)
                Expect.isEmpty (sent out) "not yet"
                t.RunTimers(out, 1_000L + 1_000_000L)

                Expect.equal
                    (sent out |> List.map (fun (_, _, s) -> s.Flags, s.Seq))
                    [ TcpFlags.Syn, first.Seq ]
                    "the same SYN again"

                Expect.equal t.NextDeadline (1_000L + 1_000_000L + 2_000_000L) "backed off to 2 s (RFC 6298 §5.5)"

            testPropertyWithConfig
                config
                "hostile segments in any order never throw and keep the listener's half-open count exact"
            <| Prop.forAll
                (Arb.fromGen (
                    Gen.listOfLength
                        60
                        (Gen.zip3
                            (Gen.zip (Gen.choose (40000, 40003)) (Gen.elements [ 79; 80 ]))
                            (Gen.zip uint32Gen uint32Gen)
                            (Gen.zip flagsGen (Gen.choose (0, 100))))
                ))
                (fun segments ->
                    let t = TcpEndpointTable(settings 3 true)
                    let l = t.ListenAll(true, false, 80, 2, 2, 0)
                    let out = TcpEndpointOutput()
                    let mutable now = 0L

                    for (sourcePort, port), (seq, ack), (flags, length) in segments do
                        now <- now + 100_000L
                        receive t out now (uint16 sourcePort) (uint16 port) (segment seq ack flags length)
                        t.RunTimers(out, now)

                        let halfOpen =
                            t.Connections
                            |> Seq.filter (fun e ->
                                obj.ReferenceEquals(e.Listener, l) && e.Core.State = TcpState.SynReceived)
                            |> Seq.length

                        Expect.equal l.HalfOpen halfOpen "the half-open count is the connections in SYN-RECEIVED"
                        Expect.isLessThanOrEqual t.Count 3 "the cap holds"
                        Expect.isLessThanOrEqual l.HalfOpen 2 "the half-open bound holds")
        ]
