/// TCP keep-alive (RFC 9293 §3.8.4, RFC 1122 §4.2.3.6), with time as an input.
module NetStack.Tests.KeepAliveTests

open Expecto
open NetStack.Core.Wire
open NetStack.Core.Tcp
open NetStack.Tests.TcpHarness

/// Keep-alive after 10 s idle, probes 1 s apart, 3 of them.
let private keepAlive =
    { TcpConfig.Default with
        KeepAliveIdle = ValueSome(ms 10_000)
        KeepAliveInterval = ms 1_000
        KeepAliveCount = 3
    }

/// A client with `config` and a default server, both ESTABLISHED (the client at 2 ms).
let private established (config: TcpConfig) =
    let client, server, _, _, _ = handshake config TcpConfig.Default
    client, server

[<Tests>]
let tests =
    testList
        "KeepAlive"
        [
            test "off by default: an idle connection runs no timer" {
                let client, _ = established TcpConfig.Default
                Expect.equal (Connection.nextDeadline client) ValueNone "no deadline"
            }

            test "after the idle time a probe numbered SND.NXT - 1 goes out, and the peer's answer resets the timer" {
                let client, server = established keepAlive
                Expect.equal (Connection.nextDeadline client) (ValueSome(ms 10_002)) "idle timer armed"
                let client, o = Connection.handleTimer (ms 10_002) client
                let probe = single o
                Expect.equal probe.Seq (client.Snd.Nxt - 1) "SEQ = SND.NXT - 1"
                Expect.equal probe.DataLength 0 "no data"
                Expect.isTrue (probe.Flags.HasFlag TcpFlags.Ack) "an ACK"
                let client = audited client
                Expect.equal (Connection.nextDeadline client) (ValueSome(ms 11_002)) "next probe after the interval"
                let _, o = Connection.handleSegment (ms 10_003) (arriving probe) server
                let answer = single o
                let client, o = Connection.handleSegment (ms 10_004) (arriving answer) client
                Expect.isEmpty (sent o) "nothing to send back"
                Expect.equal client.Timers.KeepAliveProbes 0 "answered"
                Expect.equal (Connection.nextDeadline client) (ValueSome(ms 20_004)) "idle time starts again"
            }

            test "unanswered probes end the connection with TimedOut" {
                let client, _ = established keepAlive
                let mutable c = client
                let mutable probes = 0
                let mutable timedOut = false

                while c.State <> TcpState.Closed do
                    let at = (Connection.nextDeadline c).Value
                    let next, o = Connection.handleTimer at c
                    probes <- probes + List.length (sent o)
                    timedOut <- timedOut || List.contains (TcpAction.Event TcpEvent.TimedOut) o.Actions
                    c <- audited next

                Expect.equal probes 3 "KeepAliveCount probes"
                Expect.isTrue timedOut "TimedOut"
                Expect.equal (Connection.nextDeadline c) ValueNone "no timer in CLOSED"
            }

            test "with data in flight no probe is sent: the retransmission timer watches the peer" {
                let client, _ =
                    established
                        { keepAlive with
                            InitialRto = ms 20_000
                            MinRto = ms 20_000
                            MaxRto = ms 60_000
                        }

                let client, _ = Connection.send (ms 5) 10L client
                let client, o = Connection.handleTimer (ms 10_002) client
                // A tail loss probe (RFC 8985) may resend the data; a keep-alive probe would be
                // the byte before SND.NXT.
                Expect.isFalse
                    (sent o |> List.exists (fun s -> s.Seq = client.Snd.Nxt - 1 && s.DataLength <= 1))
                    "no keep-alive probe"

                Expect.equal client.Timers.KeepAliveAt (ValueSome(ms 20_002)) "the idle period starts over"
            }

            test "a zero or negative idle time is rejected" {
                Expect.throwsT<System.ArgumentException>
                    (fun () ->
                        { TcpConfig.Default with
                            KeepAliveIdle = ValueSome 0L
                        }
                            .Validate())
                    "KeepAliveIdle 0"
            }
        ]
