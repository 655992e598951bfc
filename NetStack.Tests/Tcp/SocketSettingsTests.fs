/// Per-socket settings in the core: the IP header settings a socket writes (checked by parsing
/// the packet back with the independent codecs), and what `Connection.configureInto` does to a
/// connection (keep-alive timers and receive buffers, numbers computed here).
module NetStack.Tests.SocketSettingsTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Wire
open NetStack.Core.Tcp
open NetStack.Core.Stack
open NetStack.Tests.TestUtil
open NetStack.Tests.TcpHarness

let private settingsGen =
    gen {
        let! ttl = Gen.choose (1, 255)
        let! tos = Gen.choose (0, 255)
        let! df = Gen.elements [ true; false ]

        return
            {
                Ttl = byte ttl
                TypeOfService = byte tos
                DontFragment = df
            }
    }

let private a4 = V4(Ipv4Address.OfOctets(10uy, 0uy, 0uy, 1uy))
let private b4 = V4(Ipv4Address.OfOctets(10uy, 0uy, 0uy, 2uy))
let private a6 = V6(Ipv6Address.Parse "fd00::1")
let private b6 = V6(Ipv6Address.Parse "fd00::2")

/// The socket settings of `config` with `change` applied.
let private settingsOf (config: TcpConfig) (change: TcpSocketSettings -> TcpSocketSettings) =
    change (TcpSocketSettings.Of config)

let private configure (now: int64) (settings: TcpSocketSettings) (c: Connection) =
    let sink = TcpActions()
    let c = Connection.configureInto sink now settings c
    c, List.ofArray (sink.AsSpan().ToArray())

[<Tests>]
let tests =
    testList
        "Socket settings"
        [
            testPropertyWithConfig
                codecConfig
                "any TTL, TOS and DF written with a UDP datagram parse back: TTL, DSCP = TOS >>> 2, ECN 0 (Not-ECT), DF as set; IPv6: hop limit and traffic class with the ECN bits cleared"
            <| Prop.forAll (Arb.fromGen settingsGen) (fun s ->
                let buffer = Array.zeroCreate<byte> 200
                let payload = ReadOnlySpan(Array.create 20 7uy)
                let n = IpLayer.writeUdpWith s a4 b4 1000us 2000us 5us payload (Span buffer)

                match Ipv4.parse (ReadOnlySpan(buffer, 0, n)) with
                | Ok h ->
                    Expect.equal h.Ttl s.Ttl "TTL"
                    Expect.equal h.Dscp (s.TypeOfService >>> 2) "DSCP"
                    Expect.equal h.Ecn 0uy "Not-ECT"
                    Expect.equal h.DontFragment s.DontFragment "DF"
                | Error e -> failtestf "IPv4 did not parse: %A" e

                let n = IpLayer.writeUdpWith s a6 b6 1000us 2000us 0us payload (Span buffer)

                match Ipv6.parse (ReadOnlySpan(buffer, 0, n)) with
                | Ok h ->
                    Expect.equal h.HopLimit s.Ttl "hop limit"
                    Expect.equal h.TrafficClass (s.TypeOfService &&& 0xFCuy) "traffic class, ECN cleared"
                | Error e -> failtestf "IPv6 did not parse: %A" e)

            testPropertyWithConfig
                codecConfig
                "a TCP segment written with a connection's settings carries them; without, TCP's defaults (TTL 64, TOS 0, DF)"
            <| Prop.forAll (Arb.fromGen settingsGen) (fun s ->
                let client, _, _, _, _ = handshake TcpConfig.Default TcpConfig.Default

                let segment =
                    {
                        Seq = client.Snd.Nxt
                        Ack = client.Rcv.Nxt
                        Flags = TcpFlags.Ack
                        Window = 1000us
                        Options = TcpOptions.None
                        DataPosition = 0L
                        DataLength = 0
                    }

                let buffer = Array.zeroCreate<byte> 200

                let n =
                    IpLayer.writeTcpWith s a4 b4 1000us 2000us 1us segment ReadOnlySpan.Empty (Span buffer)

                match Ipv4.parse (ReadOnlySpan(buffer, 0, n)) with
                | Ok h ->
                    Expect.equal h.Ttl s.Ttl "TTL"
                    Expect.equal h.Dscp (s.TypeOfService >>> 2) "DSCP"
                    Expect.equal h.DontFragment s.DontFragment "DF"
                | Error e -> failtestf "did not parse: %A" e

                let n =
                    IpLayer.writeTcp a4 b4 1000us 2000us 1us segment ReadOnlySpan.Empty (Span buffer)

                match Ipv4.parse (ReadOnlySpan(buffer, 0, n)) with
                | Ok h -> Expect.equal (h.Ttl, h.Dscp, h.DontFragment) (64uy, 0uy, true) "defaults"
                | Error e -> failtestf "did not parse: %A" e)

            test
                "keep-alive turned on at t arms the first probe at t + idle, then probes every interval; turned off, no timer" {
                let client, _, _, _, _ = handshake TcpConfig.Default TcpConfig.Default
                Expect.equal (Connection.nextDeadline client) ValueNone "off by default"

                let on =
                    settingsOf client.Config (fun s ->
                        { s with
                            KeepAliveIdle = ValueSome(ms 5_000)
                            KeepAliveInterval = ms 700
                            KeepAliveCount = 2
                        })

                let client, actions = configure (ms 100) on client
                Expect.isEmpty actions "nothing sent"
                Expect.equal (Connection.nextDeadline client) (ValueSome(ms 5_100)) "100 ms + 5 s"
                let client, o = Connection.handleTimer (ms 5_100) client
                Expect.equal (List.length (sent o)) 1 "a probe"
                Expect.equal (Connection.nextDeadline client) (ValueSome(ms 5_800)) "the next 700 ms later"
                let off = { on with KeepAliveIdle = ValueNone }
                let client, _ = configure (ms 5_200) off client
                Expect.equal (Connection.nextDeadline client) ValueNone "no timer"
            }

            test
                "a locked receive buffer ends auto-tuning; a larger one grows the buffer at once up to 65535·2^shift (RFC 7323 §2.3), ReceiveBufferGrown first; a smaller one keeps it" {
                let tuned =
                    { TcpConfig.Default with
                        ReceiveBufferSize = 20_000
                        ReceiveBufferMax = 200_000
                    }

                let client, _, _, _, _ = handshake tuned TcpConfig.Default
                Expect.isTrue client.WindowScaled "scaling agreed"
                // Our SYN's shift covers 200 000: 65535·2^2 = 262140 is the first that does.
                let shift = client.Rcv.WndShift
                Expect.equal shift 2 "shift 2"

                let locked =
                    settingsOf client.Config (fun s -> { s with ReceiveBufferSize = 1_000_000 })

                let client, actions = configure (ms 10) locked client
                let limit = 65535 <<< 2

                match actions with
                | TcpAction.ReceiveBufferGrown size :: _ -> Expect.equal size limit "grown to what the shift can offer"
                | other -> failtestf "expected ReceiveBufferGrown first, got %A" other

                Expect.equal
                    client.Config.ReceiveBufferLimit
                    1_000_000
                    "locked: the limit is the size, no auto-tuning beyond"

                Expect.equal client.Config.ReceiveBufferMax 0 "auto-tuning off"

                let smaller =
                    settingsOf client.Config (fun s -> { s with ReceiveBufferSize = 10_000 })

                let client, actions = configure (ms 20) smaller client
                Expect.isEmpty actions "nothing shrinks, nothing sent"
                Expect.equal client.Tuning.RcvBuf limit "the buffer stays"
            }

            test "settings out of range are refused with ArgumentException" {
                let client, _, _, _, _ = handshake TcpConfig.Default TcpConfig.Default

                Expect.throwsT<ArgumentException>
                    (fun () ->
                        configure
                            0L
                            (settingsOf client.Config (fun s -> { s with KeepAliveIdle = ValueSome 0L }))
                            client
                        |> ignore)
                    "idle 0"

                Expect.throwsT<ArgumentException> (fun () -> IpHeaderSettings.Tcp.WithTtl 0 |> ignore) "TTL 0"

                Expect.throwsT<ArgumentException> (fun () -> IpHeaderSettings.Tcp.WithTtl 256 |> ignore) "TTL 256"
            }
        ]
