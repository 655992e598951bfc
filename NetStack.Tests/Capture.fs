/// tcpdump as a witness of what crossed an interface: started before, read after. A packet the
/// kernel handed to tcpdump's socket reaches the file only once tcpdump runs, so a test waits
/// for a packet it knows must be there (`awaitPackets`) before it stops the capture: a busy
/// machine may not have scheduled tcpdump yet when the traffic is over.
module NetStack.Tests.Capture

open System.Diagnostics
open System.Threading
open Expecto

/// tcpdump on `dev` into `file` (headers of 200 bytes, each packet written as it comes) until
/// `stop`; returns once tcpdump says it listens. `prefix` runs it elsewhere (`ip netns exec NS`).
let start (prefix: string list) (dev: string) (file: string) =
    let command =
        prefix
        @ [
            "tcpdump"
            "-n"
            "--immediate-mode"
            "-i"
            dev
            "-U"
            "-s"
            "200"
            "-w"
            file
        ]

    let psi = ProcessStartInfo(List.head command)

    for a in List.tail command do
        psi.ArgumentList.Add a

    psi.RedirectStandardError <- true
    psi.RedirectStandardOutput <- true
    let p = Process.Start psi
    let mutable line = p.StandardError.ReadLine()

    while not (isNull line) && not (line.Contains "listening on") do
        line <- p.StandardError.ReadLine()

    Expect.isNotNull line "tcpdump started"
    p

/// The packets of `file` that match the BPF `filter`, one line each (`tcpdump -r`).
let read (file: string) (filter: string) =
    let _, output = Isolation.run "tcpdump" [ "-n"; "-r"; file; filter ]

    output.Split('\n', System.StringSplitOptions.RemoveEmptyEntries)
    |> Array.filter (fun l -> not (l.StartsWith "reading from") && not (l.Contains "truncated"))

/// Waits (up to 10 s) until `file` holds a packet that matches `filter`; fails otherwise.
let awaitPackets (file: string) (filter: string) =
    let deadline = Stopwatch.StartNew()

    while (read file filter).Length = 0 && deadline.Elapsed.TotalSeconds < 10.0 do
        Thread.Sleep 50

    Expect.isNonEmpty (read file filter) $"tcpdump saw '{filter}'"

/// Stops a capture `start` began.
let stop (p: Process) =
    p.Kill()
    p.WaitForExit()
    p.Dispose()
