// Reproduces a garbage-collection hole in .NET tail calls that pass a Span through the runtime's
// tail-call helpers (seen on .NET 10.0.12, x64 Linux). Run it from the repository root after a
// Release build:
//
//   dotnet fsi --optimize+ --tailcalls+ docs/tailcall-span-repro.fsx   -> some builds come back all zero
//   dotnet fsi --optimize+ --tailcalls- docs/tailcall-span-repro.fsx   -> none do
//
// The lambda below calls Icmpv6.buildEchoRequest in tail position. The callee takes more argument
// bytes than the lambda (three 16-byte structs on the stack), so the JIT cannot make it a fast tail
// call and uses the helpers, which park the arguments in a thread-local buffer. When a compacting
// collection moves the array in that window, the Span still points at the array's old place: the
// echo request is written there and the moved array stays zero. NetStack's F# projects build with
// <Tailcalls>false</Tailcalls> (Directory.Build.props) for this reason.
#r "../NetStack.Core/bin/Release/net10.0/NetStack.Core.dll"

open System
open System.Threading
open NetStack.Core.Wire

let source = Ipv6Address.Parse "fe80::1"
let destination = Ipv6Address.Parse "fe80::2"
let data = "hi"B

let build (write: byte[] -> int) =
    let buffer = Array.zeroCreate 15
    let n = write buffer
    buffer.[.. n - 1]

let mutable lost = 0L
let mutable builds = 0L
let mutable running = true

let worker () =
    while Volatile.Read &running do
        let bytes =
            build (fun b -> Icmpv6.buildEchoRequest (Span b) source destination 0x1234us 1us (ReadOnlySpan data))

        if bytes.[0] <> 0x80uy then
            Interlocked.Increment &lost |> ignore

        Interlocked.Increment &builds |> ignore

let threads = [ for _ in 1..2 -> Thread worker ]

for t in threads do
    t.Start()

let collector =
    Thread(fun () ->
        while Volatile.Read &running do
            GC.Collect(0, GCCollectionMode.Forced, true, true))

collector.Start()
Thread.Sleep 15000
Volatile.Write(&running, false)

for t in threads do
    t.Join()

collector.Join()
printfn "%d builds, %d came back with the echo request lost" builds lost
