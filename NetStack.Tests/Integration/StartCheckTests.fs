/// What a new user meets first when an option is wrong: Start and ListenTcp name the option the
/// user set (never an internal parameter) and say how to fix it, and Start refuses addresses the
/// kernel of the namespace already uses instead of coming up and then never receiving. The
/// oracle is the kernel's own configuration, made by the test with `ip`.
module NetStack.Tests.StartCheckTests

open System
open System.Net
open Expecto
open NetStack
open NetStack.Device
open NetStack.Engine

let private ip args =
    let code, output = Isolation.run "ip" args

    if code <> 0 then
        failtestf "ip %s: %s" (String.Join(" ", args)) output

let private options name (address: string) (host: string) (address6: string) (host6: string) =
    let parse (a: string) =
        if isNull a then null else IPAddress.Parse a

    NetStackOptions(
        TunName = name,
        Address = parse address,
        HostAddress = parse host,
        Address6 = parse address6,
        HostAddress6 = parse host6
    )

/// The ArgumentException Start throws for `o`, checked to name `option` and to carry no
/// internal parameter name.
let private refused (o: NetStackOptions) (option: string) (says: string) =
    let e = Expect.throwsC (fun () -> NetworkStack.Start o |> ignore) id

    match e with
    | :? ArgumentException as a ->
        Expect.equal a.ParamName "options" "the parameter is Start's"
        Expect.stringStarts a.Message option $"the message starts with the option {option}"
        Expect.stringContains a.Message says "the message says why"

        for internalName in [ "'local'"; "'peer'"; "'name'"; "'nameOrTemplate'" ] do
            Expect.isFalse (a.Message.Contains internalName) $"no internal parameter {internalName}: {a.Message}"

        a.Message
    | other -> failtestf "expected an ArgumentException, got %O" other

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Start checks"
        [
            test "an address option that cannot be an interface's address names the option" {
                refused (options "nssc0" "127.0.0.5" "10.212.0.1" null null) "Address 127.0.0.5" "loopback"
                |> ignore

                refused (options "nssc0" "10.212.0.2" "255.255.255.255" null null) "HostAddress" "broadcast"
                |> ignore

                refused (options "nssc0" null null "ff02::1" "fd12::1") "Address6 ff02::1" "multicast"
                |> ignore

                refused (options "nssc0" null null "::ffff:10.212.0.2" "fd12::1") "Address6" "IPv4-mapped"
                |> ignore
            }

            test "an address the kernel has on one of its interfaces is refused, naming the interface" {
                // (No dummy interfaces in this kernel: a TAP interface nobody opened holds the addresses.)
                ip [ "tuntap"; "add"; "nssc-own"; "mode"; "tap" ]

                try
                    ip [ "addr"; "add"; "10.212.5.9/24"; "dev"; "nssc-own" ]
                    ip [ "-6"; "addr"; "add"; "fd12:5::9/64"; "dev"; "nssc-own"; "nodad" ]

                    refused (options "nssc0" "10.212.5.9" "10.212.6.1" null null) "Address 10.212.5.9" "'nssc-own'"
                    |> ignore

                    refused (options "nssc0" null null "fd12:5::9" "fd12:6::1") "Address6 fd12:5::9" "'nssc-own'"
                    |> ignore
                finally
                    Isolation.run "ip" [ "tuntap"; "del"; "nssc-own"; "mode"; "tap" ] |> ignore
            }

            test "a second stack with the same addresses is refused while the first runs, and starts after it" {
                let first = options "nssc1" "10.212.1.2" "10.212.1.1" "fd12:1::2" "fd12:1::1"
                let stack = NetworkStack.Start first

                try
                    // Same options on another interface: the stack's address is the first one's peer.
                    let message =
                        refused
                            (options "nssc2" "10.212.1.2" "10.212.1.1" "fd12:1::2" "fd12:1::1")
                            "Address 10.212.1.2"
                            "'nssc1'"

                    Expect.stringContains message "another NetworkStack" "the message suggests the likely cause"
                    // Another host address, same stack address: still routed to the first.
                    refused (options "nssc2" "10.212.1.2" "10.212.2.1" null null) "Address 10.212.1.2" "'nssc1'"
                    |> ignore
                    // IPv6 alone: the peer route is read from the IPv6 table.
                    refused (options "nssc2" null null "fd12:1::2" "fd12:2::1") "Address6 fd12:1::2" "'nssc1'"
                    |> ignore
                    // Another stack address, the same host address: the kernel has it on nssc1.
                    refused (options "nssc2" "10.212.1.3" "10.212.1.1" null null) "HostAddress 10.212.1.1" "'nssc1'"
                    |> ignore
                finally
                    TestUtil.assertNoExceptions stack
                    stack.Dispose()

                // The first is gone, so are its addresses and routes: the same options start now.
                use again =
                    NetworkStack.Start(options "nssc2" "10.212.1.2" "10.212.1.1" "fd12:1::2" "fd12:1::1")

                let reply =
                    again.PingAsync(IPAddress.Parse "10.212.1.1", TimeSpan.FromSeconds 5.).Result

                Expect.equal reply.Status Net.NetworkInformation.IPStatus.Success "the second stack works"
                TestUtil.assertNoExceptions again
            }

            test "an interface name that exists says how to attach to it" {
                ip [ "tuntap"; "add"; "nssc3"; "mode"; "tun" ]

                try
                    let e =
                        Expect.throwsC
                            (fun () ->
                                NetworkStack.Start(options "nssc3" "10.212.3.2" "10.212.3.1" null null)
                                |> ignore)
                            id

                    Expect.isTrue (e :? TunDeviceException) $"a TunDeviceException: {e}"
                    Expect.stringContains e.Message "AttachExisting = true" "the message names the option that attaches"
                    Expect.stringContains e.Message "TunName" "and the option that names the interface"
                finally
                    Isolation.run "ip" [ "tuntap"; "del"; "nssc3"; "mode"; "tun" ] |> ignore
            }

            test "TunName, Mtu and ListenTcp's port are checked with messages that name them" {
                let template =
                    NetStackOptions(TunName = "nssc%d", AttachExisting = true, Address = IPAddress.Parse "10.212.4.2")

                refused template "TunName" "AttachExisting = true" |> ignore

                let small = NetStackOptions(TunName = "nssc4", Mtu = 576)
                refused small "Mtu 576" "Address6 = null" |> ignore

                use stack =
                    NetworkStack.Start(options "nssc4" "10.212.4.2" "10.212.4.1" null null, new MemoryPacketDevice())

                let e = Expect.throwsC (fun () -> stack.ListenTcp 70000 |> ignore) id

                match e with
                | :? ArgumentOutOfRangeException as a ->
                    Expect.equal a.ParamName "port" "the user's parameter"
                    Expect.stringContains a.Message "0..65535" "the range"
                | other -> failtestf "expected ArgumentOutOfRangeException, got %O" other

                TestUtil.assertNoExceptions stack
            }
        ]
