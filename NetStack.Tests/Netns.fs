/// Named network namespaces (`ip netns add`) inside the test runner's private namespace, and
/// sockets made in them.
module NetStack.Tests.Netns

open System
open System.IO
open System.Runtime.InteropServices
open System.Threading

[<DllImport("libc", SetLastError = true)>]
extern int private setns(int fd, int nstype)

let private CLONE_NEWNET = 0x40000000

/// Runs `f` on a thread of its own that first enters the network namespace `name` (made by `ip
/// netns add`): a socket made there belongs to that namespace for good, whichever thread uses it
/// later. The thread ends with `f`, so no pooled thread is left in another namespace.
let inNetns (name: string) (f: unit -> 'T) : 'T =
    let mutable result = Unchecked.defaultof<'T>
    let mutable error: exn = null

    let thread =
        Thread(
            (fun () ->
                try
                    // A handle without a FileStream: nsfs files cannot seek.
                    use file = File.OpenHandle($"/run/netns/{name}", FileMode.Open, FileAccess.Read)

                    if setns (int (file.DangerousGetHandle()), CLONE_NEWNET) <> 0 then
                        failwith $"setns {name}: errno {Marshal.GetLastPInvokeError()}"

                    result <- f ()
                with e ->
                    error <- e),
            1 <<< 20
        )

    thread.Start()
    thread.Join()

    if not (isNull error) then
        raise (Exception($"in namespace {name}", error))

    result
