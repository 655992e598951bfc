module NetStack.Bench.Program

open BenchmarkDotNet.Running

/// Runs the benchmarks chosen on the command line (BenchmarkDotNet's switcher: --filter '*', --list flat, ...).
[<EntryPoint>]
let main argv =
    BenchmarkSwitcher.FromAssembly(typeof<ChecksumBench.Marker>.Assembly).Run(argv)
    |> ignore

    0
