module NetStack.Tests.StateModelTests

open System
open System.IO
open Expecto
open Microsoft.FSharp.Reflection
open NetStack.Core.Tcp

/// Every case of a fieldless union.
let private casesOf<'T> () =
    FSharpType.GetUnionCases typeof<'T>
    |> Array.map (fun c -> FSharpValue.MakeUnion(c, [||]) :?> 'T)
    |> List.ofArray

let allStates = casesOf<TcpState>()
let allTriggers = casesOf<TcpTrigger>()

/// The committed DOT file, found from the test binary upwards (the folder holding NetStack.sln).
let private dotPath () =
    let rec up (dir: DirectoryInfo) =
        if isNull dir then
            failwith "NetStack.sln not found above the test binary"
        elif File.Exists(Path.Combine(dir.FullName, "NetStack.sln")) then
            dir.FullName
        else
            up dir.Parent

    Path.Combine(up (DirectoryInfo AppContext.BaseDirectory), "docs", "tcp-states.dot")

let private normalise (text: string) =
    text.Replace("\r\n", "\n").TrimEnd('\n')

/// Where a trigger leads in the RFC: to a state (itself for "remain in the state, restart the
/// timer"), or nowhere (the segment or call is answered or discarded, the state stays).
type Outcome =
    | To of TcpState
    | Ignored

/// RFC 9293 Figure 5 and the event processing of §3.10, written out as (state, event, outcome,
/// where the RFC says so). Every row is one entry the model must have, and the model may have no
/// other. "Failure" rows: RST processing (§3.10.7.3, §3.10.7.4 second step with RFC 5961 §3.2's
/// exact match), ABORT (§3.10.5), the timeouts (§3.8.3 "R2" retransmissions, RFC 1122
/// §4.2.3.5; the user timeout of §3.10.8; zero-window probing given up; FIN-WAIT-2's timer) and
/// ICMP errors that end the connection (RFC 1122 §4.2.3.9, RFC 5927 §4.1: only in states with
/// something in flight, so not FIN-WAIT-2 or TIME-WAIT).
let rfc9293: (TcpState * TcpTrigger * Outcome * string) list =
    let closed = To TcpState.Closed

    [
        TcpState.Closed, TcpTrigger.PassiveOpen, To TcpState.Listen, "Fig. 5 passive OPEN; §3.10.1"
        TcpState.Closed, TcpTrigger.ActiveOpen, To TcpState.SynSent, "Fig. 5 active OPEN / snd SYN; §3.10.1"
        TcpState.Closed, TcpTrigger.RcvRst, Ignored, "§3.10.7.1: an incoming RST is discarded"

        TcpState.Listen, TcpTrigger.RcvSyn, To TcpState.SynReceived, "Fig. 5 rcv SYN / snd SYN,ACK; §3.10.7.2"
        TcpState.Listen, TcpTrigger.Close, closed, "Fig. 5 CLOSE / delete TCB; §3.10.4"
        TcpState.Listen, TcpTrigger.Abort, closed, "§3.10.5 LISTEN: delete TCB, enter CLOSED"
        TcpState.Listen, TcpTrigger.RcvRst, Ignored, "§3.10.7.2: an incoming RST should be ignored"

        TcpState.SynSent, TcpTrigger.RcvSynAck, To TcpState.Established, "Fig. 5 rcv SYN,ACK / snd ACK; §3.10.7.3"
        TcpState.SynSent, TcpTrigger.RcvSyn, To TcpState.SynReceived, "Fig. 5 rcv SYN / snd SYN,ACK (simultaneous open)"
        TcpState.SynSent, TcpTrigger.Close, closed, "Fig. 5 CLOSE / delete TCB; §3.10.4"
        TcpState.SynSent, TcpTrigger.RcvRst, closed, "§3.10.7.3: RST with an acceptable ACK, enter CLOSED"
        TcpState.SynSent, TcpTrigger.Abort, closed, "§3.10.5"
        TcpState.SynSent, TcpTrigger.Timeout, closed, "§3.8.3 R2 for the SYN; §3.10.8"
        TcpState.SynSent,
        TcpTrigger.IcmpHardError,
        closed,
        "RFC 1122 §4.2.3.9, RFC 5927: an unreachable fails the connect (as Linux)"

        TcpState.SynReceived,
        TcpTrigger.RcvAckOfSyn,
        To TcpState.Established,
        "Fig. 5 rcv ACK of SYN; §3.10.7.4 fifth step"
        TcpState.SynReceived, TcpTrigger.Close, To TcpState.FinWait1, "Fig. 5 CLOSE / snd FIN; §3.10.4"
        TcpState.SynReceived, TcpTrigger.RcvSyn, Ignored, "§3.10.7.4 fourth step, RFC 5961 §4.2: challenge ACK"
        TcpState.SynReceived, TcpTrigger.RcvRst, closed, "§3.10.7.4 second step (note 1: LISTEN is the listener's)"
        TcpState.SynReceived, TcpTrigger.Abort, closed, "§3.10.5: send RST, enter CLOSED"
        TcpState.SynReceived, TcpTrigger.Timeout, closed, "§3.8.3 R2 for the SYN; §3.10.8"
        TcpState.SynReceived,
        TcpTrigger.IcmpHardError,
        closed,
        "RFC 1122 §4.2.3.9 hard error; simultaneous open: any unreachable"

        TcpState.Established, TcpTrigger.Close, To TcpState.FinWait1, "Fig. 5 CLOSE / snd FIN; §3.10.4"
        TcpState.Established, TcpTrigger.RcvFin, To TcpState.CloseWait, "Fig. 5 rcv FIN / snd ACK; eighth step"
        TcpState.Established, TcpTrigger.RcvSyn, Ignored, "fourth step, RFC 5961 §4.2: challenge ACK"
        TcpState.Established, TcpTrigger.RcvRst, closed, "second step, RFC 5961 §3.2"
        TcpState.Established, TcpTrigger.Abort, closed, "§3.10.5: send RST"
        TcpState.Established, TcpTrigger.Timeout, closed, "§3.8.3 R2; §3.10.8; §3.8.6.1 probes"
        TcpState.Established,
        TcpTrigger.IcmpHardError,
        closed,
        "RFC 1122 §4.2.3.9: a hard error aborts (RFC 5927 §4.1 in window)"

        TcpState.FinWait1, TcpTrigger.RcvAckOfFin, To TcpState.FinWait2, "Fig. 5 rcv ACK of FIN; fifth step"
        TcpState.FinWait1, TcpTrigger.RcvFin, To TcpState.Closing, "Fig. 5 rcv FIN / snd ACK; eighth step"
        TcpState.FinWait1, TcpTrigger.RcvFinAckOfFin, To TcpState.TimeWait, "Fig. 5 note 2; eighth step"
        TcpState.FinWait1, TcpTrigger.Close, Ignored, "§3.10.4: no second FIN"
        TcpState.FinWait1, TcpTrigger.RcvSyn, Ignored, "fourth step, RFC 5961 §4.2"
        TcpState.FinWait1, TcpTrigger.RcvRst, closed, "second step"
        TcpState.FinWait1, TcpTrigger.Abort, closed, "§3.10.5: send RST"
        TcpState.FinWait1, TcpTrigger.Timeout, closed, "§3.8.3 R2; §3.10.8"
        TcpState.FinWait1, TcpTrigger.IcmpHardError, closed, "RFC 1122 §4.2.3.9 hard error (our FIN in flight)"

        TcpState.FinWait2, TcpTrigger.RcvFin, To TcpState.TimeWait, "Fig. 5 rcv FIN / snd ACK; eighth step"
        TcpState.FinWait2, TcpTrigger.Close, Ignored, "§3.10.4: no second FIN"
        TcpState.FinWait2, TcpTrigger.RcvSyn, Ignored, "fourth step, RFC 5961 §4.2"
        TcpState.FinWait2, TcpTrigger.RcvRst, closed, "second step"
        TcpState.FinWait2, TcpTrigger.Abort, closed, "§3.10.5: send RST"
        TcpState.FinWait2, TcpTrigger.Timeout, closed, "FIN-WAIT-2 timer (Linux tcp_fin_timeout); §3.10.8"

        TcpState.CloseWait, TcpTrigger.Close, To TcpState.LastAck, "Fig. 5 CLOSE / snd FIN; §3.10.4"
        TcpState.CloseWait, TcpTrigger.RcvFin, Ignored, "eighth step: remain in CLOSE-WAIT"
        TcpState.CloseWait, TcpTrigger.RcvSyn, Ignored, "fourth step, RFC 5961 §4.2"
        TcpState.CloseWait, TcpTrigger.RcvRst, closed, "second step"
        TcpState.CloseWait, TcpTrigger.Abort, closed, "§3.10.5: send RST"
        TcpState.CloseWait, TcpTrigger.Timeout, closed, "§3.8.3 R2; §3.10.8"
        TcpState.CloseWait, TcpTrigger.IcmpHardError, closed, "RFC 1122 §4.2.3.9 hard error"

        TcpState.Closing, TcpTrigger.RcvAckOfFin, To TcpState.TimeWait, "Fig. 5 rcv ACK of FIN; fifth step"
        TcpState.Closing, TcpTrigger.Close, Ignored, "§3.10.4: error, connection closing"
        TcpState.Closing, TcpTrigger.RcvFin, Ignored, "eighth step: remain in CLOSING"
        TcpState.Closing, TcpTrigger.RcvSyn, Ignored, "fourth step, RFC 5961 §4.2"
        TcpState.Closing, TcpTrigger.RcvRst, closed, "second step: enter CLOSED"
        TcpState.Closing, TcpTrigger.Abort, closed, "§3.10.5: delete TCB"
        TcpState.Closing, TcpTrigger.Timeout, closed, "§3.8.3 R2 for the FIN"
        TcpState.Closing, TcpTrigger.IcmpHardError, closed, "RFC 1122 §4.2.3.9 hard error (our FIN in flight)"

        TcpState.LastAck, TcpTrigger.RcvAckOfFin, closed, "Fig. 5 rcv ACK of FIN / delete TCB; fifth step"
        TcpState.LastAck, TcpTrigger.Close, Ignored, "§3.10.4: error, connection closing"
        TcpState.LastAck, TcpTrigger.RcvFin, Ignored, "eighth step: remain in LAST-ACK"
        TcpState.LastAck, TcpTrigger.RcvSyn, Ignored, "fourth step, RFC 5961 §4.2"
        TcpState.LastAck, TcpTrigger.RcvRst, closed, "second step: enter CLOSED"
        TcpState.LastAck, TcpTrigger.Abort, closed, "§3.10.5: delete TCB"
        TcpState.LastAck, TcpTrigger.Timeout, closed, "§3.8.3 R2 for the FIN"
        TcpState.LastAck, TcpTrigger.IcmpHardError, closed, "RFC 1122 §4.2.3.9 hard error (our FIN in flight)"

        TcpState.TimeWait, TcpTrigger.TimeWaitTimeout, closed, "Fig. 5 Timeout=2MSL / delete TCB"
        TcpState.TimeWait, TcpTrigger.RcvFin, To TcpState.TimeWait, "eighth step: restart the 2 MSL timeout"
        TcpState.TimeWait,
        TcpTrigger.RcvRst,
        closed,
        "§3.10.7.4 second step, RFC 5961 §3.2 (exactly RCV.NXT, else ignored); Linux tcp_rfc1337=0, not RFC 1337 §3 F1"
        TcpState.TimeWait,
        TcpTrigger.RcvReopeningSyn,
        closed,
        "RFC 6191 §2, RFC 1122 §4.2.2.13: a new SYN with a newer TSval or SEG.SEQ beyond RCV.NXT; Linux tcp_timewait_state_process"
        TcpState.TimeWait, TcpTrigger.Abort, closed, "§3.10.5: delete TCB"
        TcpState.TimeWait, TcpTrigger.Close, Ignored, "§3.10.4: error, connection closing"
        TcpState.TimeWait, TcpTrigger.RcvSyn, Ignored, "a SYN RFC 6191 refuses: fourth step, RFC 5961 §4.2"
    ]

[<Tests>]
let tests =
    testList
        "StateModel"
        [
            test "docs/tcp-states.dot is the model's DOT export" {
                let path = dotPath ()
                Expect.isTrue (File.Exists path) $"{path} exists"
                let committed = normalise (File.ReadAllText path)
                let current = normalise (StateModel.dot ())

                if committed <> current then
                    File.WriteAllText(path + ".actual", current + "\n")

                Expect.equal
                    committed
                    current
                    $"docs/tcp-states.dot differs from StateModel.dot (); the current export is in {path}.actual"
            }

            test "the lookup tables agree with firing a Stateless machine, for every state and trigger" {
                for state in allStates do
                    for trigger in allTriggers do
                        let machine = StateModel.configure state

                        Expect.equal
                            (machine.CanFire trigger)
                            (StateModel.isPermitted state trigger)
                            $"{state} {trigger}"

                        if machine.CanFire trigger then
                            machine.Fire trigger

                            let expected =
                                match StateModel.target state trigger with
                                | ValueSome t -> t
                                | ValueNone -> state

                            Expect.equal machine.State expected $"{state} --{trigger}-->"
            }

            test "the model's edge set is RFC 9293's table, in both directions" {
                let expected = set [ for (s, t, o, _) in rfc9293 -> s, t, o ]

                let actual =
                    set
                        [
                            for s in allStates do
                                for t in allTriggers do
                                    match StateModel.target s t with
                                    | ValueSome next -> yield s, t, To next
                                    | ValueNone when StateModel.isIgnored s t -> yield s, t, Ignored
                                    | ValueNone -> ()
                        ]

                let show (s: TcpState, t: TcpTrigger, o: Outcome) = $"{s} --{t}--> %A{o}"

                Expect.isEmpty
                    (Set.difference actual expected |> Set.toList |> List.map show)
                    "the model has no entry the RFC table lacks"

                Expect.isEmpty
                    (Set.difference expected actual |> Set.toList |> List.map show)
                    "the model has every entry of the RFC table"

                Expect.equal (List.length rfc9293) expected.Count "no row twice"
            }

            test "the RFC 9293 transitions NetStack leaves out are absent from the model" {
                // Figure 5's LISTEN --SEND / snd SYN--> SYN-SENT (§3.10.2: "If the foreign socket is
                // specified, then change the connection from passive to active"): a NetStack LISTEN
                // is a listener, which has no SEND; the model has no SEND trigger at all.
                for t in allTriggers do
                    Expect.notEqual
                        (StateModel.target TcpState.Listen t)
                        (ValueSome TcpState.SynSent)
                        $"LISTEN --{t}--> SYN-SENT"

                // Figure 5 note 1: a RST in SYN-RECEIVED after a passive OPEN returns to LISTEN. A
                // NetStack listener never leaves LISTEN; the connection it made goes to CLOSED.
                for t in allTriggers do
                    Expect.notEqual
                        (StateModel.target TcpState.SynReceived t)
                        (ValueSome TcpState.Listen)
                        $"SYN-RECEIVED --{t}--> LISTEN"
            }
        ]
