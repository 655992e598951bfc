/// The Nagle algorithm (RFC 9293 §3.7.4, RFC 1122 §4.2.3.4; Minshall's variant, as Linux) and
/// its per-connection switch.
module NetStack.Tests.NagleTests

open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Core.Tcp
open NetStack.Tests.TcpHarness

/// A client (with `clientConfig`) and a server that ACKs at once, both ESTABLISHED at 3 ms.
let private established (clientConfig: TcpConfig) =
    let serverConfig =
        { TcpConfig.Default with
            DelayedAckTimeout = 0L
        }

    let client, server, _, _, _ = handshake clientConfig serverConfig
    client, server

let private nagle = TcpConfig.Default

let private noDelay =
    { TcpConfig.Default with
        NoDelay = true
    }

[<Tests>]
let tests =
    testList
        "Nagle"
        [
            test "the first small write goes out at once, the next waits for the ACK" {
                let client, server = established nagle
                let client, o = Connection.send (ms 10) 10L client
                let first = single o
                Expect.equal first.DataLength 10 "nothing in flight: sent at once"
                let client, o = Connection.send (ms 11) 20L (audited client)
                Expect.isEmpty (sent o) "10 bytes unacknowledged: the 20 bytes are held"
                let _, o = Connection.handleSegment (ms 12) (arriving first) server
                let ack = single o
                let client, o = Connection.handleSegment (ms 13) (arriving ack) (audited client)
                let released = single o
                Expect.equal released.DataPosition 10L "the held bytes follow"
                Expect.equal released.DataLength 20 "all of them in one segment"
                audited client |> ignore
            }

            test "full segments are never held" {
                let client, _ = established nagle
                let client, o = Connection.send (ms 10) 10L client
                Expect.equal (single o).DataLength 10 "first small segment"
                let mss = client.Snd.Mss
                let client, o = Connection.send (ms 11) (int64 (2 * mss + 5)) client
                let lengths = sent o |> List.map (fun s -> s.DataLength)
                Expect.equal lengths [ mss; mss ] "two full segments go, the 5-byte tail waits"
                audited client |> ignore
            }

            test "a write's short tail follows full segments in flight (Minshall's variant)" {
                let client, _ = established nagle
                let mss = client.Snd.Mss
                let client, o = Connection.send (ms 10) (int64 (2 * mss + 5)) client
                let lengths = sent o |> List.map (fun s -> s.DataLength)
                Expect.equal lengths [ mss; mss; 5 ] "nothing short was unacknowledged: the tail goes too"
                let client, o = Connection.send (ms 11) 7L (audited client)
                Expect.isEmpty (sent o) "now the 5-byte segment is: the next short data waits"
                audited client |> ignore
            }

            test "with NoDelay every small write goes out at once" {
                let client, _ = established noDelay
                let client, o = Connection.send (ms 10) 10L client
                Expect.equal (single o).DataLength 10 "first"
                let client, o = Connection.send (ms 11) 20L client
                Expect.equal (single o).DataLength 20 "second, though the first is unacknowledged"
                audited client |> ignore
            }

            test "turning NoDelay on sends the held data at once" {
                let client, _ = established nagle
                let client, _ = Connection.send (ms 10) 10L client
                let client, o = Connection.send (ms 11) 20L client
                Expect.isEmpty (sent o) "held"
                let client, o = Connection.setNoDelay (ms 12) true client
                let s = single o
                Expect.equal (s.DataPosition, s.DataLength) (10L, 20) "released"
                Expect.isTrue client.Config.NoDelay "the switch stays on"
                let client, o = Connection.setNoDelay (ms 13) false client
                Expect.isEmpty (sent o) "turning it off sends nothing"
                Expect.isFalse client.Config.NoDelay "and Nagle is back"
            }

            test "close sends the held data with the FIN" {
                let client, _ = established nagle
                let client, _ = Connection.send (ms 10) 10L client
                let client, o = Connection.send (ms 11) 20L client
                Expect.isEmpty (sent o) "held"
                let client, o = Connection.close (ms 12) client
                let s = single o
                Expect.equal (s.DataPosition, s.DataLength) (10L, 20) "the held bytes"
                Expect.isTrue (s.Flags.HasFlag TcpFlags.Fin) "with the FIN"
                audited client |> ignore
            }

            test "a retransmission timeout resends the held data with the lost segment" {
                let client, _ = established nagle
                let client, _ = Connection.send (ms 10) 10L client
                let client, _ = Connection.send (ms 11) 20L client
                let deadline = (Connection.nextDeadline client).Value
                let client, o = Connection.handleTimer deadline client
                let s = single o
                Expect.equal (s.DataPosition, s.DataLength) (0L, 30) "go-back-N takes everything pending"
                audited client |> ignore
            }

            testPropertyWithConfig TestUtil.codecConfig "without ACKs, at most one segment is shorter than the MSS"
            <| fun (writes: PositiveInt list) ->
                let client, _ = established nagle

                let _, segments =
                    writes
                    |> List.truncate 30
                    |> List.fold
                        (fun (c, acc) (PositiveInt n) ->
                            let c, o = Connection.send (ms 10) (int64 (n % 3000)) c
                            audited c, acc @ sent o)
                        (client, [])

                (segments |> List.filter (fun s -> s.DataLength < client.Snd.Mss) |> List.length)
                <= 1
        ]
