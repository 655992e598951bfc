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

/// Runs `ping ARGS` (which must hold -c COUNT): every request must be answered once, so ping exits
/// 0 with COUNT transmitted, COUNT received, no duplicate and no error. Returns its output.
let answered (args: string list) =
    let code, output = Isolation.run "ping" args
    let count = countOf args
    let s = summary output

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
