module NetStack.Tests.Program

open System
open Expecto
open Expecto.Impl

/// Counts from Expecto's summary, printed as one plain closing line after the run.
let mutable private closingLine = None

let private printer =
    let inner = TestPrinters.defaultPrinter

    { inner with
        summary =
            fun config summary ->
                async {
                    do! inner.summary config summary

                    // NETSTACK_SLOWEST=N: the N slowest tests, to see where the suite's time goes.
                    match Int32.TryParse(Environment.GetEnvironmentVariable "NETSTACK_SLOWEST") with
                    | true, n when n > 0 ->
                        printfn "slowest %d tests:" n

                        for test, result in
                            summary.results
                            |> List.sortByDescending (fun (_, r) -> r.duration)
                            |> List.truncate n do
                            printfn "  %8.1f s  %s" result.duration.TotalSeconds (String.Join("/", test.name))
                    | _ -> ()

                    let failed = summary.failed.Length + summary.errored.Length

                    closingLine <-
                        Some(
                            sprintf
                                "tests: %d passed, %d failed, %d skipped"
                                summary.passed.Length
                                failed
                                summary.ignored.Length
                        )
                }
    }

[<EntryPoint>]
let main argv =
    match Isolation.ensureIsolated argv with
    | Some exitCode -> exitCode
    | None ->
        // Plain output when not on a terminal (CI logs): no colours, no spinner.
        let plain =
            if Console.IsOutputRedirected then
                [ CLIArguments.Colours 0; CLIArguments.No_Spinner ]
            else
                []

        let exitCode =
            Tests.runTestsInAssemblyWithCLIArgs (CLIArguments.Printer printer :: plain) argv

        Console.Out.Flush()

        closingLine
        |> Option.iter (fun line -> Console.WriteLine(Environment.NewLine + line))

        exitCode
