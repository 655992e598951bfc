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

            test "RFC 9293 Figure 5: the handshake, close and TIME-WAIT edges" {
                let edges =
                    [
                        TcpState.Closed, TcpTrigger.PassiveOpen, TcpState.Listen
                        TcpState.Closed, TcpTrigger.ActiveOpen, TcpState.SynSent
                        TcpState.Listen, TcpTrigger.RcvSyn, TcpState.SynReceived
                        TcpState.Listen, TcpTrigger.Close, TcpState.Closed
                        TcpState.SynSent, TcpTrigger.RcvSyn, TcpState.SynReceived
                        TcpState.SynSent, TcpTrigger.RcvSynAck, TcpState.Established
                        TcpState.SynSent, TcpTrigger.Close, TcpState.Closed
                        TcpState.SynReceived, TcpTrigger.RcvAckOfSyn, TcpState.Established
                        TcpState.SynReceived, TcpTrigger.Close, TcpState.FinWait1
                        TcpState.Established, TcpTrigger.Close, TcpState.FinWait1
                        TcpState.Established, TcpTrigger.RcvFin, TcpState.CloseWait
                        TcpState.FinWait1, TcpTrigger.RcvAckOfFin, TcpState.FinWait2
                        TcpState.FinWait1, TcpTrigger.RcvFin, TcpState.Closing
                        TcpState.FinWait1, TcpTrigger.RcvFinAckOfFin, TcpState.TimeWait
                        TcpState.FinWait2, TcpTrigger.RcvFin, TcpState.TimeWait
                        TcpState.CloseWait, TcpTrigger.Close, TcpState.LastAck
                        TcpState.Closing, TcpTrigger.RcvAckOfFin, TcpState.TimeWait
                        TcpState.LastAck, TcpTrigger.RcvAckOfFin, TcpState.Closed
                        TcpState.TimeWait, TcpTrigger.TimeWaitTimeout, TcpState.Closed
                        TcpState.TimeWait, TcpTrigger.RcvFin, TcpState.TimeWait
                    ]

                for (from, trigger, to') in edges do
                    Expect.isTrue (StateModel.allows from trigger to') $"{from} --{trigger}--> {to'}"
            }

            test "every state but CLOSED and LISTEN fails to CLOSED on an acceptable RST; all but CLOSED on ABORT" {
                for state in allStates do
                    if state <> TcpState.Closed && state <> TcpState.Listen then
                        Expect.isTrue (StateModel.allows state TcpTrigger.RcvRst TcpState.Closed) $"{state} RST"

                    if state <> TcpState.Closed then
                        Expect.isTrue (StateModel.allows state TcpTrigger.Abort TcpState.Closed) $"{state} ABORT"

                Expect.isTrue (StateModel.isIgnored TcpState.Listen TcpTrigger.RcvRst) "LISTEN ignores RST (§3.10.7.2)"
                Expect.isTrue (StateModel.isIgnored TcpState.Closed TcpTrigger.RcvRst) "CLOSED ignores RST (§3.10.7.1)"
            }

            test "TIME-WAIT: an acceptable new SYN ends it (RFC 6191), any other SYN changes nothing" {
                Expect.isTrue
                    (StateModel.allows TcpState.TimeWait TcpTrigger.RcvReopeningSyn TcpState.Closed)
                    "TIME-WAIT --RcvReopeningSyn--> CLOSED"

                Expect.isTrue (StateModel.isIgnored TcpState.TimeWait TcpTrigger.RcvSyn) "a refused SYN: challenge ACK"

                for state in allStates do
                    if state <> TcpState.TimeWait then
                        Expect.isFalse
                            (StateModel.isPermitted state TcpTrigger.RcvReopeningSyn)
                            $"only TIME-WAIT is reopened, not {state}"
            }

            test "no transition the RFC does not have" {
                Expect.isFalse (StateModel.isPermitted TcpState.Closed TcpTrigger.RcvFin) "CLOSED has no FIN edge"

                Expect.isFalse
                    (StateModel.isPermitted TcpState.Listen TcpTrigger.RcvSynAck)
                    "LISTEN has no SYN,ACK edge"

                Expect.isFalse (StateModel.isPermitted TcpState.Established TcpTrigger.ActiveOpen) "no open twice"

                Expect.isFalse
                    (StateModel.isPermitted TcpState.TimeWait TcpTrigger.Timeout)
                    "TIME-WAIT ends on its own timer"

                Expect.equal
                    (StateModel.target TcpState.Established TcpTrigger.RcvSyn)
                    ValueNone
                    "a SYN in ESTABLISHED is ignored"

                Expect.isTrue
                    (StateModel.isIgnored TcpState.Established TcpTrigger.RcvSyn)
                    "challenge ACK, no transition"
            }
        ]
