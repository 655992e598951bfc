module NetStack.Tests.Program

open Expecto
open Expecto.Impl

/// Adds one plain closing line, "tests: N passed, N failed, N skipped", to Expecto's summary.
let private printer =
    let inner = TestPrinters.defaultPrinter

    { inner with
        summary =
            fun config summary ->
                async {
                    do! inner.summary config summary
                    let failed = summary.failed.Length + summary.errored.Length

                    printfn
                        "tests: %d passed, %d failed, %d skipped"
                        summary.passed.Length
                        failed
                        summary.ignored.Length
                }
    }

[<EntryPoint>]
let main argv =
    match Isolation.ensureIsolated argv with
    | Some exitCode -> exitCode
    | None -> Tests.runTestsInAssemblyWithCLIArgs [ CLIArguments.Printer printer ] argv
