/// The compact forms `dotnet fsi` and %A print for packets, segments, options, actions and a
/// connection (StructuredFormatDisplay): one line per header, five per connection, in tcpdump's
/// words, times in µs. The expected text is written from the bytes by hand (the SYN below,
/// decoded as RFC 791/9293/7323/2018 lay it out, and as tcpdump prints it), not by the code.
module NetStack.Tests.DisplayTests

open System
open Expecto
open NetStack.Core.Wire
open NetStack.Core.Tcp

/// A Linux SYN from 10.0.0.1:46164 to 10.0.0.2:8000 (NetStack.Tests/Golden/tcp-ipv4.pcap's first
/// frame): tcpdump prints it as "10.0.0.1.46164 > 10.0.0.2.8000: Flags [S], seq 3382976480,
/// win 64240, options [mss 1460,sackOK,TS val 1243078697 ecr 0,nop,wscale 10], length 0".
let private linuxSyn =
    Convert.FromHexString(
        "4500003cd989400040064d300a0000010a000002"
        + "b4541f40c9a41fe000000000a002faf051af0000"
        + "020405b40402080a4a17e029000000000103030a"
    )

let private lines (text: string) =
    text.Split('\n', StringSplitOptions.RemoveEmptyEntries)

[<Tests>]
let tests =
    testList
        "Display (fsi printers)"
        [
            test "an IPv4 header, its TCP header and options print as one line each, in tcpdump's words" {
                let ip =
                    match Ipv4.parse (ReadOnlySpan linuxSyn) with
                    | Ok ip -> ip
                    | Error e -> failtestf "parse %A" e

                Expect.equal
                    (sprintf "%A" ip)
                    "IPv4 10.0.0.1 > 10.0.0.2 proto 6 ttl 64 len 60 id 55689 DF"
                    "the IPv4 header"

                let tcpBytes = ReadOnlySpan(linuxSyn, 20, 40)

                let tcp =
                    match Tcp.parse tcpBytes with
                    | Ok h -> h
                    | Error e -> failtestf "parse %A" e

                Expect.equal
                    (sprintf "%A" tcp)
                    "TCP 46164 > 8000 [SYN] seq 3382976480 win 64240 len 0"
                    "the TCP header (no ack: ACK is not set)"

                let options =
                    match Tcp.parseOptions (tcpBytes.Slice(20, 20)) with
                    | Ok o -> o
                    | Error e -> failtestf "parse %A" e

                Expect.equal
                    (sprintf "%A" options)
                    "<mss 1460,sackOK,TS val 1243078697 ecr 0,wscale 10>"
                    "the options as tcpdump lists them (without its nop)"
            }

            test "a new connection prints in five lines with its state, sequence spaces and timers in µs" {
                let out = TcpActions()

                let c = Connection.openActiveInto out TcpConfig.Default (SeqNum 1000u) 0L

                let text = sprintf "%A" c
                let shown = lines text
                Expect.equal shown.Length 5 $"five lines:\n{text}"
                Expect.stringStarts shown.[0] "SynSent (active open" "the state first"
                // RFC 9293 §3.4: a SYN takes one sequence number, so SND.NXT = ISS + 1.
                Expect.stringContains shown.[1] "snd una 1000 nxt 1001" "the send sequence space"
                // RFC 6298 §2.1: the first RTO is 1 s, armed at time 0 for the SYN.
                Expect.stringContains shown.[4] "rto 1000000 µs" "the RTO in µs"
                Expect.stringContains shown.[4] "retransmit at 1000000 µs" "the armed timer, in µs"

                let actions = lines (sprintf "%A" out)
                Expect.equal actions.[0] "2 actions" "the count first"
                Expect.stringContains actions.[1] "Closed -ActiveOpen-> SynSent" "the transition"
                Expect.stringContains actions.[2] "Transmit seq 1000 [SYN]" "the SYN"
                Expect.equal (lines (sprintf "%A" TcpConfig.Default)).Length 1 "the config in one line"
            }
        ]
