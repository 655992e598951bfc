/// The kernel's ping (iputils) as a test oracle: its summary line says how many requests went out,
/// how many replies came back, duplicated or as ICMP errors, and its exit code why it ended
/// (0: replies came, 1: no reply, or fewer than asked with -w, 2: an error).
module NetStack.Tests.KernelPing

open System
open System.Text.RegularExpressions
open Expecto

/// The counts of ping's summary line, "N packets transmitted, M received[, +D duplicates]
/// [, +E errors], ...".
type Summary =
    {
        Transmitted: int
        Received: int
        Duplicates: int
        Errors: int
    }

let private summaryLine =
    Regex @"(\d+) packets transmitted, (\d+) received(?:, \+(\d+) duplicates)?(?:, \+(\d+) errors)?"

/// The summary of ping's `output`; fails the test when it has none.
let summary (output: string) =
    let m = summaryLine.Match output

    if not m.Success then
        failtestf "no ping summary line in:\n%s" output

    let count (g: Group) = if g.Success then int g.Value else 0

    {
        Transmitted = count m.Groups.[1]
        Received = count m.Groups.[2]
        Duplicates = count m.Groups.[3]
        Errors = count m.Groups.[4]
    }

/// The -c COUNT of ping's arguments.
let private countOf (args: string list) =
    match List.tryFindIndex ((=) "-c") args with
    | Some i -> int args.[i + 1]
    | None -> failtestf "ping %A needs -c COUNT" args

/// The -s SIZE of ping's arguments (its echo data bytes), 56 by default.
let private sizeOf (args: string list) =
    match List.tryFindIndex ((=) "-s") args with
    | Some i -> int args.[i + 1]
    | None -> 56

/// One reply line: "BYTES bytes from ADDRESS: icmp_seq=N ttl=...".
let private replyLine =
    Regex(@"^(\d+) bytes from (\S+): icmp_seq=(\d+) ", RegexOptions.Multiline)

/// Runs `ping ARGS` (which must hold -c COUNT and end with the numeric target address): every
/// request must be answered once, so ping exits 0 with COUNT transmitted, COUNT received, no
/// duplicate and no error; and each reply is exact: one line per icmp_seq 1..COUNT, from the
/// target, SIZE + 8 bytes long (the echo data and the ICMP header), and none that ping flags
/// (a payload byte that differs from the request's, a truncated reply, a bad checksum).
/// `expectAnswered args (code, output)` checks a finished run; `answered` runs ping.
let expectAnswered (args: string list) (code: int, output: string) =
    let count = countOf args
    let s = summary output
    let target = Net.IPAddress.Parse(List.last args)

    let replies =
        [
            for m in replyLine.Matches output ->
                int m.Groups.[1].Value, Net.IPAddress.Parse m.Groups.[2].Value, int m.Groups.[3].Value
        ]

    Expect.equal
        (replies |> List.sortBy (fun (_, _, seq) -> seq))
        [ for seq in 1..count -> sizeOf args + 8, target, seq ]
        $"ping %A{args}: one reply per request, from the target, of the request's size:\n{output}"

    for flag in [ "wrong data byte"; "truncated"; "BAD CHECKSUM"; "DUP!" ] do
        Expect.isFalse (output.Contains flag) $"ping %A{args}: no reply flagged '{flag}':\n{output}"

    Expect.equal
        s
        {
            Transmitted = count
            Received = count
            Duplicates = 0
            Errors = 0
        }
        $"ping %A{args}: every request answered once:\n{output}"

    Expect.equal code 0 $"ping %A{args} exit code:\n{output}"

/// Runs `ping ARGS` and checks that every request was answered exactly (expectAnswered). Returns
/// its output.
let answered (args: string list) =
    let code, output = Isolation.run "ping" args
    expectAnswered args (code, output)
    output

/// Runs `ping ARGS` (which must hold -c COUNT) where nothing may answer: ping exits 1 ("no reply")
/// with COUNT transmitted and none received. ICMP errors (the kernel's own "address unreachable"
/// when neighbor resolution fails) are allowed: they are not replies. Returns its output.
let unanswered (args: string list) =
    let code, output = Isolation.run "ping" args
    let count = countOf args
    let s = summary output
    Expect.equal (s.Transmitted, s.Received, s.Duplicates) (count, 0, 0) $"ping %A{args}: no reply:\n{output}"
    Expect.equal code 1 $"ping %A{args} exits 1, no reply (2 would be an error):\n{output}"
    output

/// The helper against ping outputs written here: iputils' lines for a clean run, and the same run
/// with each defect a broken echo responder could cause.
[<Tests>]
let tests =
    let args = [ "-c"; "2"; "-i"; "0.2"; "-W"; "2"; "10.79.1.2" ]

    let run (replies: string list) (summary: string) =
        String.Join(
            "\n",
            [ "PING 10.79.1.2 (10.79.1.2) 56(84) bytes of data." ]
            @ replies
            @ [ ""; "--- 10.79.1.2 ping statistics ---"; summary ]
        )

    let reply seq =
        $"64 bytes from 10.79.1.2: icmp_seq={seq} ttl=64 time=0.1 ms"

    let both = "2 packets transmitted, 2 received, 0% packet loss, time 201ms"

    let fails (name: string) (code: int) (output: string) =
        test name { Expect.throwsT<AssertException> (fun () -> expectAnswered args (code, output)) "the check fails" }

    testList
        "KernelPing"
        [
            test "a clean run passes" { expectAnswered args (0, run [ reply 1; reply 2 ] both) }

            fails
                "a reply with a changed payload byte fails, though ping counts it received"
                0
                (run [ reply 1; reply 2; "wrong data byte #12 should be 0xc but was 0xd" ] both)

            fails
                "a reply from another address fails"
                0
                (run [ reply 1; "64 bytes from 10.79.1.3: icmp_seq=2 ttl=64 time=0.1 ms" ] both)

            fails
                "a short reply fails"
                0
                (run
                    [
                        reply 1
                        "40 bytes from 10.79.1.2: icmp_seq=2 ttl=64 time=0.1 ms (truncated)"
                    ]
                    both)

            fails
                "one request unanswered fails"
                1
                (run [ reply 1 ] "2 packets transmitted, 1 received, 50% packet loss, time 201ms")

            fails
                "a duplicated reply fails"
                0
                (run
                    [ reply 1; reply 1 + " (DUP!)"; reply 2 ]
                    "2 packets transmitted, 2 received, +1 duplicates, 0% packet loss, time 201ms")
        ]
