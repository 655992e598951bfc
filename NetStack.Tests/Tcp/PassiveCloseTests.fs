/// The ACK of the peer's FIN (RFC 9293 §3.10.7.4, eighth step): the FIN that starts a passive
/// close waits like a delayed ACK, so the FIN the application's close sends carries it; the FIN
/// that ends our own close is acknowledged at once.
module NetStack.Tests.PassiveCloseTests

open Expecto
open NetStack.Core.Wire
open NetStack.Core.Tcp

let private ms (n: int) = int64 n * 1000L

let private config =
    { TcpConfig.Default with
        DelayedAckTimeout = ms 40
    }

let private iss = 7000u
let private peerIss = 90000u

let private segment (seq: uint32) (ack: uint32) (flags: TcpFlags) =
    {
        Seq = SeqNum seq
        Ack = SeqNum ack
        Flags = flags
        Window = 65535us
        Options = TcpOptions.None
        PayloadLength = 0
    }

let private transmitted (o: TcpOutput) =
    o.Actions
    |> List.choose (function
        | TcpAction.Transmit s -> Some s
        | _ -> None)

/// A client connection, established at t = 10 ms (no options: no timestamps, no SACK).
let private established () =
    let c, _ = Connection.openActive config (SeqNum iss) 0L

    let c, _ =
        Connection.handleSegment (ms 10) (segment peerIss (iss + 1u) (TcpFlags.Syn ||| TcpFlags.Ack)) c

    Expect.equal c.State TcpState.Established "handshake done"
    c

/// The peer's FIN (with the ACK of everything we sent) at `at`.
let private peerFin (at: int64) (c: Connection) =
    Connection.handleSegment at (segment (peerIss + 1u) (iss + 1u) (TcpFlags.Fin ||| TcpFlags.Ack)) c

[<Tests>]
let tests =
    testList
        "Passive close"
        [
            test
                "the peer's FIN in ESTABLISHED arms the delayed ACK, and our FIN a millisecond later carries it: one segment" {
                let c, o = peerFin (ms 20) (established ())
                Expect.equal c.State TcpState.CloseWait "CLOSE-WAIT"
                Expect.isEmpty (transmitted o) "no segment yet"
                Expect.equal o.NextDeadline (ValueSome(ms 20 + config.DelayedAckTimeout)) "the delayed-ACK timer"
                let c, o = Connection.close (ms 21) c
                Expect.equal c.State TcpState.LastAck "LAST-ACK"

                match transmitted o with
                | [ fin ] ->
                    Expect.equal fin.Flags (TcpFlags.Fin ||| TcpFlags.Ack) "FIN,ACK"
                    Expect.equal fin.Ack.Value (peerIss + 2u) "it acknowledges the peer's FIN"
                | other -> failtest $"expected our FIN alone, got {other}"
            }

            test "an application that does not close gets the FIN acknowledged when the delayed-ACK timer fires" {
                let c, _ = peerFin (ms 20) (established ())
                let c, o = Connection.handleTimer (ms 20 + config.DelayedAckTimeout) c
                Expect.equal c.State TcpState.CloseWait "still CLOSE-WAIT"

                match transmitted o with
                | [ a ] ->
                    Expect.equal a.Flags TcpFlags.Ack "a pure ACK"
                    Expect.equal a.Ack.Value (peerIss + 2u) "of the FIN"
                | other -> failtest $"expected one ACK, got {other}"
            }

            test "the peer's FIN in FIN-WAIT-2 is acknowledged at once (the peer waits in LAST-ACK for it)" {
                let c, _ = Connection.close (ms 20) (established ())
                Expect.equal c.State TcpState.FinWait1 "FIN-WAIT-1"

                let c, _ =
                    Connection.handleSegment (ms 21) (segment (peerIss + 1u) (iss + 2u) TcpFlags.Ack) c

                Expect.equal c.State TcpState.FinWait2 "FIN-WAIT-2"

                let c, o =
                    Connection.handleSegment
                        (ms 22)
                        (segment (peerIss + 1u) (iss + 2u) (TcpFlags.Fin ||| TcpFlags.Ack))
                        c

                Expect.equal c.State TcpState.TimeWait "TIME-WAIT"

                match transmitted o with
                | [ a ] -> Expect.equal a.Ack.Value (peerIss + 2u) "the FIN's ACK went at once"
                | other -> failtest $"expected one ACK, got {other}"
            }
        ]
