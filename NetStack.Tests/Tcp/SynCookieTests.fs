/// SYN cookies (RFC 4987 §3.6): a cookie checks out for its own 4-tuple and peer ISN within two
/// clock periods and carries the MSS back; anything else is refused.
module NetStack.Tests.Tcp.SynCookieTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open NetStack.Core.Tcp
open NetStack.Tests

let private key =
    {
        K0 = 0x0123456789ABCDEFUL
        K1 = 0xFEDCBA9876543210UL
    }

let private local4 = [| 10uy; 96uy; 0uy; 2uy |]
let private remote4 = [| 10uy; 96uy; 0uy; 1uy |]

let private make (now: int64) (remote: byte[]) (port: uint16) (isn: uint32) (mss: int) =
    SynCookie.make key now (ReadOnlySpan local4) 7us (ReadOnlySpan remote) port (SeqNum isn) mss

let private check (now: int64) (remote: byte[]) (port: uint16) (isn: uint32) (cookie: SeqNum) =
    SynCookie.check key now (ReadOnlySpan local4) 7us (ReadOnlySpan remote) port (SeqNum isn) cookie

[<Tests>]
let tests =
    testList
        "SynCookie"
        [
            testPropertyWithConfig
                TestUtil.codecConfig
                "a cookie checks out within two periods and returns the MSS from the table"
            <| fun (isn: uint32) (port: uint16) (mssSeed: uint16) (nowSeed: uint32) (later: bool) ->
                let now = int64 nowSeed * 1000L + SynCookie.PeriodMicros
                let mss = 400 + int mssSeed % 9000
                let cookie = make now remote4 port isn mss
                let at = if later then now + SynCookie.PeriodMicros else now
                let expected = SynCookie.MssTable.[SynCookie.mssIndex mss]
                check at remote4 port isn cookie = ValueSome expected && expected <= max mss 536

            testPropertyWithConfig
                TestUtil.codecConfig
                "a cookie is refused for another port, another peer ISN, or after two periods"
            <| fun (isn: uint32) (port: uint16) (nowSeed: uint32) ->
                let now = int64 nowSeed * 1000L
                let cookie = make now remote4 port isn 1460

                check now remote4 (port + 1us) isn cookie = ValueNone
                && check now remote4 port (isn + 1u) cookie = ValueNone
                && check (now + 2L * SynCookie.PeriodMicros) remote4 port isn cookie = ValueNone
                && check now [| 10uy; 96uy; 0uy; 3uy |] port isn cookie = ValueNone

            test "SipHash over words equals SipHash over the same 48 bytes" {
                let words = [| 1UL; 2UL; 0xFFFFFFFFFFFFFFFFUL; 4UL; 5UL; 0x8000000000000000UL |]
                let bytes = Array.zeroCreate<byte> 48

                for i in 0..5 do
                    BitConverter.TryWriteBytes(Span(bytes, 8 * i, 8), words.[i]) |> ignore

                Expect.equal
                    (Isn.sipHash24Words key.K0 key.K1 words.[0] words.[1] words.[2] words.[3] words.[4] words.[5])
                    (Isn.sipHash24 key.K0 key.K1 (ReadOnlySpan bytes))
                    "the same MAC"
            }
        ]
