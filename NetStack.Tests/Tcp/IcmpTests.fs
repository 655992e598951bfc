/// TCP's reaction to ICMP errors (RFC 1122 §4.2.3.9, RFC 5927 §4.1, RFC 1191, RFC 8201), one
/// rule at a time, against numbers written here from the RFCs and from Linux's tables.
module NetStack.Tests.TcpIcmpTests

open System
open System.Net.Sockets
open System.Reflection
open Expecto
open NetStack.Core.Wire
open NetStack.Core.Tcp

let private ms (n: int) = int64 n * 1000L

// RFC 791 §3.1 / RFC 8200 §3: the fixed IP headers; RFC 9293 §3.1: the fixed TCP header;
// RFC 7323 §3: the timestamps option, 10 bytes padded with two NOPs to 12.
let private ipv4Header = 20
let private ipv6Header = 40
let private tcpHeader = 20
let private timestampsOption = 12

// Link MTU 1500: our MSS is 1500 − 40 (IPv4) or 1500 − 60 (IPv6) (RFC 9293 §3.7.1).
let private config (ipv6: bool) =
    { TcpConfig.Default with
        Mss = 1500 - (if ipv6 then ipv6Header else ipv4Header) - tcpHeader
        DefaultPeerMss = (if ipv6 then 1220 else 536)
        ReceiveBufferSize = 65535
    }

let private iss = 1000u
let private peerIss = 5000u

open NetStack.Tests.TestUtil.TcpActions

/// A client in ESTABLISHED with a peer that offered MSS 1460 (1440 over IPv6), timestamps, SACK
/// and a 256 KiB window (shift 2), then `bytes` written: the initial window's segments are out.
let private established (ipv6: bool) (bytes: int64) =
    let c, _ = Connection.openActive (config ipv6) (SeqNum iss) 0L

    let synAck =
        {
            Seq = SeqNum peerIss
            Ack = SeqNum(iss + 1u)
            Flags = TcpFlags.Syn ||| TcpFlags.Ack
            Window = 65535us
            Options =
                { TcpOptions.None with
                    MaximumSegmentSize = ValueSome(uint16 (config ipv6).Mss)
                    SackPermitted = true
                    WindowScale = ValueSome 2uy
                    Timestamps = ValueSome { Value = 77u; EchoReply = 0u }
                }
            PayloadLength = 0
        }

    let c, _ = Connection.handleSegment (ms 10) synAck c
    Expect.equal c.State TcpState.Established "handshake done"
    let c, o = Connection.send (ms 20) bytes c
    Expect.isNonEmpty (sent o) "data went out"
    c

let private icmp (ipv6: bool) (icmpType: byte) (code: byte) (mtu: int) (seq: SeqNum) =
    {
        Ipv6 = ipv6
        Type = icmpType
        Code = code
        PathMtu = mtu
        QuotedSeq = seq
    }

// ICMP types (RFC 792; RFC 4443 §2.1).
let private unreachable4 = 3uy
let private fragmentationNeeded = 4uy
let private timeExceeded4 = 11uy
let private parameterProblem4 = 12uy
let private unreachable6 = 1uy
let private packetTooBig6 = 2uy
let private timeExceeded6 = 3uy

let private packetTooBig (ipv6: bool) (mtu: int) (seq: SeqNum) =
    if ipv6 then
        icmp true packetTooBig6 0uy mtu seq
    else
        icmp false unreachable4 fragmentationNeeded mtu seq

/// What .NET's own Socket reports for a Linux errno: the runtime's errno → SocketError map
/// (SocketErrorPal, what a kernel socket's connect throws with), read by reflection so the
/// expected values do not come from the stack's code.
let private socketErrorOf (errno: int) : SocketError =
    let asm = typeof<Socket>.Assembly
    let flags = BindingFlags.Static ||| BindingFlags.Public ||| BindingFlags.NonPublic
    let pal = asm.GetType("System.Net.Sockets.SocketErrorPal", true)
    let sys = asm.GetType("Interop+Sys", true)
    let toPal = sys.GetMethod("ConvertErrorPlatformToPal", flags)
    let map = pal.GetMethod("GetSocketErrorForNativeError", flags)
    map.Invoke(null, [| toPal.Invoke(null, [| box errno |]) |]) :?> SocketError

// Linux errno values (asm-generic/errno.h).
let private ENETUNREACH = 101
let private EHOSTUNREACH = 113
let private ENOPROTOOPT = 92
let private ECONNREFUSED = 111
let private EACCES = 13
let private EPROTO = 71

/// Linux's icmp_err_convert (net/ipv4/icmp.c) and icmpv6_err_convert (net/ipv6/icmp.c): the
/// errno each destination-unreachable code gives a TCP socket in SYN-SENT (tcp_v4_err and
/// tcp_v6_err fail the connect with it), and for IPv6 whether Linux deems it fatal.
let private unreachableCodes4 =
    [
        0uy, ENETUNREACH // net unreachable
        1uy, EHOSTUNREACH // host unreachable
        2uy, ENOPROTOOPT // protocol unreachable
        3uy, ECONNREFUSED // port unreachable
        6uy, ENETUNREACH // destination network unknown
        9uy, ENETUNREACH // network administratively prohibited
        10uy, EHOSTUNREACH // host administratively prohibited
        11uy, ENETUNREACH // network unreachable for TOS
        12uy, EHOSTUNREACH // host unreachable for TOS
        13uy, EHOSTUNREACH // communication administratively prohibited
    ]

let private unreachableCodes6 =
    [
        0uy, ENETUNREACH // no route
        1uy, EACCES // administratively prohibited
        2uy, EHOSTUNREACH // beyond scope
        3uy, EHOSTUNREACH // address unreachable
        4uy, ECONNREFUSED // port unreachable
        5uy, EACCES // source address failed policy
        6uy, EACCES // reject route
    ]

/// RFC 1122 §4.2.3.9: hard errors are protocol and port unreachable (IPv4 codes 2, 3); for IPv6
/// the codes Linux's icmpv6_err_convert marks fatal (administratively prohibited, port
/// unreachable, policy failure, reject route) and parameter problem.
let private hard4 = set [ 2uy; 3uy ]
let private hard6 = set [ 1uy; 4uy; 5uy; 6uy ]

/// A client in SYN-SENT (its SYN, ISS, outstanding).
let private synSent (ipv6: bool) =
    let c, _ = Connection.openActive (config ipv6) (SeqNum iss) 0L
    c

/// Drives retransmission timeouts until the connection gives up; returns the last output.
let rec private timeOut (now: int64) (c: Connection) =
    match Connection.nextDeadline c with
    | ValueSome at when c.State <> TcpState.Closed ->
        let c, o = Connection.handleTimer (max now at) c

        if c.State = TcpState.Closed then
            c, o
        else
            timeOut (max now at) c
    | _ -> failtest $"no timer left in {c.State}"

[<Tests>]
let tests =
    testList
        "TcpIcmp"
        [
            testList
                "path MTU"
                [
                    for ipv6 in [ false; true ] do
                        let family = if ipv6 then "IPv6" else "IPv4"
                        let ipHeader = if ipv6 then ipv6Header else ipv4Header

                        test
                            $"{family}: a too-big inside the window lowers the MSS and resends what is outstanding at the new size, cwnd kept" {
                            let c = established ipv6 100_000L
                            let fullBefore = 1500 - ipHeader - tcpHeader - timestampsOption
                            Expect.equal c.Snd.Mss fullBefore "MSS from MTU 1500, less the timestamps"
                            let una = c.Snd.Una
                            let max = c.Snd.Max
                            Expect.isGreaterThan (max - una) (3 * fullBefore) "several segments in flight"
                            let cwnd, ssthresh, retries = c.Recovery.Cwnd, c.Recovery.Ssthresh, c.Retries
                            // A router on a 1280-byte link drops the third segment and says so.
                            let quoted = una + 2 * fullBefore
                            let c, o = Connection.handleIcmp (ms 30) (packetTooBig ipv6 1280 quoted) c
                            let expected = 1280 - ipHeader - tcpHeader - timestampsOption
                            Expect.equal c.Snd.Mss expected "1280 − IP − TCP − timestamps"
                            Expect.contains (events o) (TcpEvent.PathMtuLowered 1280) "reported to the caller"
                            let resent = sent o
                            Expect.isNonEmpty resent "outstanding data went out again"
                            Expect.equal resent.Head.Seq una "from SND.UNA"
                            Expect.equal resent.Head.DataPosition 0L "send-stream position of SND.UNA"

                            resent
                            |> List.pairwise
                            |> List.iter (fun (a, b) ->
                                Expect.equal b.Seq (a.Seq + a.DataLength) "contiguous"
                                Expect.equal a.DataLength expected "full segments at the new size")

                            for s in resent do
                                Expect.isLessThanOrEqual s.DataLength expected "no segment above the new MSS"

                            // As much as the unchanged congestion window holds goes at once
                            // (the rest follows as ACKs come, as after Linux's tcp_simple_retransmit).
                            let covered = resent |> List.sumBy (fun s -> s.DataLength)

                            Expect.equal
                                covered
                                (min (max - una) (cwnd / expected * expected))
                                "the window's worth resent"

                            Expect.equal
                                (c.Recovery.Cwnd, c.Recovery.Ssthresh, c.Retries)
                                (cwnd, ssthresh, retries)
                                "no congestion response, no backoff"

                            Expect.equal c.Snd.Nxt (una + covered) "SND.NXT after what went out"
                            Expect.equal c.Snd.Max max "SND.MAX kept"
                            Expect.equal c.State TcpState.Established "still open"
                        }

                        test $"{family}: a quoted sequence number outside [SND.UNA, SND.NXT) is ignored and counted" {
                            let c = established ipv6 100_000L

                            for seq in [ c.Snd.Una - 1; c.Snd.Max; c.Snd.Max + 100_000; c.Snd.Una - 70_000 ] do
                                let c', o = Connection.handleIcmp (ms 30) (packetTooBig ipv6 1280 seq) c

                                Expect.equal
                                    (events o)
                                    [ TcpEvent.IcmpNoted TcpIcmpNote.OutOfWindow ]
                                    $"seq {seq.Value}"

                                Expect.isEmpty (sent o) "nothing sent"
                                Expect.equal c'.Snd.Mss c.Snd.Mss "MSS unchanged"

                                let portUnreachable =
                                    if ipv6 then
                                        icmp true unreachable6 4uy 0 seq
                                    else
                                        icmp false unreachable4 3uy 0 seq

                                let c', o = Connection.handleIcmp (ms 30) portUnreachable c

                                Expect.equal
                                    c'.State
                                    TcpState.Established
                                    "a hard error out of the window aborts nothing"

                                Expect.equal (events o) [ TcpEvent.IcmpNoted TcpIcmpNote.OutOfWindow ] "counted"
                        }

                        test $"{family}: an MTU below the floor is taken as the floor" {
                            // RFC 8201 §4: 1280 for IPv6; for IPv4 576 (RFC 791/1122's datagram every host takes).
                            let floor = if ipv6 then 1280 else 576
                            let c = established ipv6 100_000L

                            let c, o =
                                Connection.handleIcmp (ms 30) (packetTooBig ipv6 (floor - 300) c.Snd.Una) c

                            Expect.contains (events o) (TcpEvent.PathMtuLowered floor) "clamped"

                            Expect.equal
                                c.Snd.Mss
                                (floor - ipHeader - tcpHeader - timestampsOption)
                                "MSS from the floor"

                            let c', o = Connection.handleIcmp (ms 31) (packetTooBig ipv6 100 c.Snd.Una) c

                            Expect.equal
                                (events o)
                                [ TcpEvent.IcmpNoted TcpIcmpNote.MtuNotLower ]
                                "already at the floor"

                            Expect.equal c'.Snd.Mss c.Snd.Mss "unchanged"
                        }

                        test $"{family}: an MTU at or above the current one is ignored" {
                            let c = established ipv6 100_000L
                            let c', o = Connection.handleIcmp (ms 30) (packetTooBig ipv6 1500 c.Snd.Una) c
                            Expect.equal (events o) [ TcpEvent.IcmpNoted TcpIcmpNote.MtuNotLower ] "equal to the link's"
                            Expect.equal c'.Snd.Mss c.Snd.Mss "unchanged"
                            let c, _ = Connection.handleIcmp (ms 30) (packetTooBig ipv6 1400 c.Snd.Una) c
                            let lowered = 1400 - ipHeader - tcpHeader - timestampsOption
                            Expect.equal c.Snd.Mss lowered "lowered to 1400 first"

                            for mtu in [ 1400; 1450; 9000 ] do
                                let c', o = Connection.handleIcmp (ms 31) (packetTooBig ipv6 mtu c.Snd.Una) c
                                Expect.equal (events o) [ TcpEvent.IcmpNoted TcpIcmpNote.MtuNotLower ] $"{mtu}"
                                Expect.isEmpty (sent o) "nothing resent"
                                Expect.equal c'.Snd.Mss lowered "unchanged"
                        }

                        test $"{family}: a new connection capped by a known path MTU sends segments of that size" {
                            let c, _ = Connection.openActive (config ipv6) (SeqNum iss) 0L
                            let c = Connection.limitToPathMtu ipv6 1300 c

                            let synAck =
                                {
                                    Seq = SeqNum peerIss
                                    Ack = SeqNum(iss + 1u)
                                    Flags = TcpFlags.Syn ||| TcpFlags.Ack
                                    Window = 65535us
                                    Options =
                                        { TcpOptions.None with
                                            MaximumSegmentSize = ValueSome 1460us
                                        }
                                    PayloadLength = 0
                                }

                            let c, _ = Connection.handleSegment (ms 10) synAck c
                            Expect.equal c.Snd.Mss (1300 - ipHeader - tcpHeader) "path MTU − IP − TCP (no timestamps)"
                            let _, o = Connection.send (ms 20) 10_000L c
                            Expect.equal (sent o).Head.DataLength (1300 - ipHeader - tcpHeader) "segments of that size"
                        }
                ]

            testList
                "unreachable"
                [
                    for ipv6, codes in [ false, unreachableCodes4; true, unreachableCodes6 ] do
                        let family = if ipv6 then "IPv6" else "IPv4"

                        for code, errno in codes do
                            test
                                $"{family}: SYN-SENT + destination unreachable code {code} fails the connect at once with errno {errno}'s SocketError" {
                                let c = synSent ipv6

                                let message =
                                    icmp ipv6 (if ipv6 then unreachable6 else unreachable4) code 0 (SeqNum iss)

                                let c, o = Connection.handleIcmp (ms 5) message c
                                let expected = socketErrorOf errno
                                Expect.equal (events o) [ TcpEvent.IcmpError expected; TcpEvent.Closed ] $"{expected}"
                                Expect.equal c.State TcpState.Closed "CLOSED"

                                Expect.equal
                                    (transitions o)
                                    [ TcpState.SynSent, TcpTrigger.IcmpHardError, TcpState.Closed ]
                                    "the model's edge"

                                Expect.isEmpty (sent o) "no RST to an unreachable peer"
                            }

                    test "SYN-SENT + time exceeded fails with EHOSTUNREACH, parameter problem with EPROTO (Linux)" {
                        for ipv6, t in [ false, timeExceeded4; true, timeExceeded6 ] do
                            let _, o =
                                Connection.handleIcmp (ms 5) (icmp ipv6 t 0uy 0 (SeqNum iss)) (synSent ipv6)

                            Expect.equal
                                (events o)
                                [ TcpEvent.IcmpError(socketErrorOf EHOSTUNREACH); TcpEvent.Closed ]
                                $"time exceeded, v6 {ipv6}"

                        let _, o =
                            Connection.handleIcmp
                                (ms 5)
                                (icmp false parameterProblem4 0uy 0 (SeqNum iss))
                                (synSent false)

                        Expect.equal
                            (events o)
                            [ TcpEvent.IcmpError(socketErrorOf EPROTO); TcpEvent.Closed ]
                            "parameter problem"
                    }

                    test "SYN-SENT ignores an error quoting another sequence number than our SYN" {
                        let c = synSent false

                        let c', o =
                            Connection.handleIcmp (ms 5) (icmp false unreachable4 3uy 0 (SeqNum(iss + 1u))) c

                        Expect.equal (events o) [ TcpEvent.IcmpNoted TcpIcmpNote.OutOfWindow ] "ISS + 1 was never sent"
                        Expect.equal c'.State TcpState.SynSent "still connecting"
                    }

                    for ipv6 in [ false; true ] do
                        let family = if ipv6 then "IPv6" else "IPv4"
                        let codes = if ipv6 then unreachableCodes6 else unreachableCodes4
                        let hard = if ipv6 then hard6 else hard4

                        test $"{family}: ESTABLISHED + a hard error aborts, a soft one is remembered" {
                            for code, errno in codes do
                                let c = established ipv6 20_000L

                                let message =
                                    icmp ipv6 (if ipv6 then unreachable6 else unreachable4) code 0 c.Snd.Una

                                let c', o = Connection.handleIcmp (ms 30) message c

                                if hard.Contains code then
                                    Expect.equal
                                        (events o)
                                        [ TcpEvent.IcmpError(socketErrorOf errno); TcpEvent.Closed ]
                                        $"code {code} aborts"

                                    Expect.equal
                                        (transitions o)
                                        [ TcpState.Established, TcpTrigger.IcmpHardError, TcpState.Closed ]
                                        "the model's edge"

                                    Expect.isEmpty (sent o) "no RST"
                                else
                                    Expect.equal
                                        (events o)
                                        [ TcpEvent.IcmpNoted TcpIcmpNote.SoftErrorRemembered ]
                                        $"code {code} is soft"

                                    Expect.equal c'.State TcpState.Established "still open"
                                    Expect.equal c'.SoftError (ValueSome(socketErrorOf errno)) "remembered"
                        }

                    test
                        "ESTABLISHED + host unreachable: the connection times out later with HostUnreachable, not TimedOut" {
                        let c = established false 20_000L
                        let c, _ = Connection.handleIcmp (ms 30) (icmp false unreachable4 1uy 0 c.Snd.Una) c
                        let c, o = timeOut (ms 30) c
                        Expect.contains (events o) TcpEvent.TimedOut "retransmissions ran out"
                        Expect.equal c.State TcpState.Closed "CLOSED"

                        Expect.equal
                            (Connection.timeoutError c)
                            (socketErrorOf EHOSTUNREACH)
                            "the soft error is what the user sees"
                    }

                    test "a soft error is forgotten once data is acknowledged" {
                        let c = established false 20_000L
                        let c, _ = Connection.handleIcmp (ms 30) (icmp false unreachable4 1uy 0 c.Snd.Una) c
                        Expect.isTrue c.SoftError.IsSome "remembered"

                        let ackOfSome =
                            {
                                Seq = SeqNum(peerIss + 1u)
                                Ack = c.Snd.Una + 1000
                                Flags = TcpFlags.Ack
                                Window = 65535us
                                Options =
                                    { TcpOptions.None with
                                        Timestamps = ValueSome { Value = 78u; EchoReply = c.Ts.Recent }
                                    }
                                PayloadLength = 0
                            }

                        let c, _ = Connection.handleSegment (ms 40) ackOfSome c
                        Expect.equal c.SoftError ValueNone "forgotten (Linux's tcp_ack clears sk_err_soft)"
                        let c, _ = timeOut (ms 40) c
                        Expect.equal (Connection.timeoutError c) SocketError.TimedOut "a plain timeout"
                    }

                    test
                        "a passive SYN-RECEIVED connection is dropped on a hard error about its SYN,ACK, kept on a soft one" {
                        let syn =
                            {
                                Seq = SeqNum peerIss
                                Ack = SeqNum 0u
                                Flags = TcpFlags.Syn
                                Window = 65535us
                                Options = TcpOptions.None
                                PayloadLength = 0
                            }

                        let c, _ = Connection.accept (config false) (SeqNum iss) 0L syn
                        Expect.equal c.State TcpState.SynReceived "SYN-RECEIVED"

                        let soft, o =
                            Connection.handleIcmp (ms 5) (icmp false unreachable4 1uy 0 (SeqNum iss)) c

                        Expect.equal soft.State TcpState.SynReceived "host unreachable: kept"
                        Expect.equal (events o) [ TcpEvent.IcmpNoted TcpIcmpNote.SoftErrorRemembered ] "remembered"

                        let hard, o =
                            Connection.handleIcmp (ms 5) (icmp false unreachable4 3uy 0 (SeqNum iss)) c

                        Expect.equal hard.State TcpState.Closed "port unreachable: dropped"

                        Expect.equal
                            (transitions o)
                            [ TcpState.SynReceived, TcpTrigger.IcmpHardError, TcpState.Closed ]
                            "the model's edge"
                    }

                    test "every transition the engine reports for an ICMP error is an edge of the model" {
                        let cases =
                            [
                                for ipv6 in [ false; true ] do
                                    for t in [ 1uy; 2uy; 3uy; 4uy; 11uy; 12uy ] do
                                        for code in 0uy .. 16uy do
                                            yield ipv6, t, code
                            ]

                        for ipv6, t, code in cases do
                            for c in [ synSent ipv6; established ipv6 20_000L ] do
                                let c', o = Connection.handleIcmp (ms 30) (icmp ipv6 t code 1280 c.Snd.Una) c

                                for from, trigger, target in transitions o do
                                    Expect.isTrue
                                        (StateModel.allows from trigger target)
                                        $"{from} --{trigger}--> {target}"

                                if c'.State = TcpState.Closed then
                                    Expect.equal
                                        (transitions o)
                                        [ c.State, TcpTrigger.IcmpHardError, TcpState.Closed ]
                                        "IcmpHardError"
                    }
                ]
        ]
