/// Bulk TCP over a 65000-byte MTU link with the kernel as the peer (issue 5): a segment is then
/// ~64 KB, so a peer window that no scale factor lifts above 65535 bytes holds one segment and
/// the kernel's delayed ACK (up to 40 ms) paces the sender to ~0.01 Gbit/s. With window scaling
/// (RFC 7323 §2) both ways the transfer must run at link speed. 32 MiB each way, IPv4 and IPv6,
/// offloads on and off, SHA-256 exact; MB/s is printed, never asserted.
/// Subnets 10.103.N.0/24 and fda3:N::/64, interfaces ns103bN.
module NetStack.Tests.Integration.BigMtuTests

open System
open System.Net
open System.Net.Sockets
open Expecto
open NetStack
open NetStack.Tests

let private mtu = 65000

let private optionsFor (n: int) (offloads: bool) =
    NetStackOptions(
        TunName = $"ns103b{n}",
        Address = IPAddress.Parse $"10.103.{n}.2",
        HostAddress = IPAddress.Parse $"10.103.{n}.1",
        Address6 = IPAddress.Parse $"fda3:{n}::2",
        HostAddress6 = IPAddress.Parse $"fda3:{n}::1",
        Mtu = mtu,
        Offloads = offloads,
        TcpLinger = TimeSpan.FromSeconds 10.0
    )

let private families (n: int) = TestUtil.families (optionsFor n false)

let private bulkBytes = 32L * 1024L * 1024L

let private timeout = TimeSpan.FromSeconds 120.0

let private withStack (options: NetStackOptions) (f: NetworkStack -> unit) = TestUtil.withStackOf options f

/// TCP_INFO's tcpi_options (IPPROTO_TCP 6, TCP_INFO 11; byte 5): bit 4 is window scaling.
let private kernelScalesWindow (socket: Socket) =
    let buffer = Array.zeroCreate<byte> 256
    let length = socket.GetRawSocketOption(6, 11, Span buffer)

    if length < 8 then
        failtest $"TCP_INFO returned {length} bytes"

    buffer.[5] &&& 4uy = 4uy

let private report (what: string) (elapsed: TimeSpan) =
    printfn "%s: %.1f MB/s" what (float bulkBytes / 1e6 / elapsed.TotalSeconds)

/// Kernel to NetStack: `bulkBytes` from a kernel socket into a NetStack listener.
let private inbound (stack: NetworkStack) (stackAddress: IPAddress) (label: string) =
    use listener = stack.ListenTcp(IPEndPoint(stackAddress, 9))

    let scales (socket: Socket) =
        Expect.isTrue (kernelScalesWindow socket) $"window scaling in use over {stackAddress}"

    TestUtil.kernelToStackWith scales timeout 103 bulkBytes listener (IPEndPoint(stackAddress, 9))
    |> report $"kernel → NetStack over {stackAddress} ({label})"

/// NetStack to kernel: `bulkBytes` from a NetStack connection into a kernel listener.
let private outbound (stack: NetworkStack) (kernelAddress: IPAddress) (label: string) =
    use kernel = TestUtil.kernelListener kernelAddress

    let scales (socket: Socket) =
        Expect.isTrue (kernelScalesWindow socket) $"window scaling in use to {kernelAddress}"

    TestUtil.stackToKernelWith scales timeout 104 bulkBytes stack kernel
    |> report $"NetStack → kernel over {kernelAddress} ({label})"

/// NetStack to a kernel listener whose receive buffer is 64 KiB, so its window stays near one
/// MTU-65000 segment: NetStack's segments are cut to half the peer's largest window, so the
/// kernel sees two per window and ACKs at once rather than after its delayed-ACK timer.
let private outboundSmallWindow (stack: NetworkStack) (kernelAddress: IPAddress) =
    use kernel =
        new Socket(kernelAddress.AddressFamily, SocketType.Stream, ProtocolType.Tcp)

    kernel.ReceiveBufferSize <- 65536
    kernel.Bind(IPEndPoint(kernelAddress, 0))
    kernel.Listen 4
    let total = 8L * 1024L * 1024L
    let elapsed = TestUtil.stackToKernel timeout 105 total stack kernel

    printfn
        "NetStack → kernel with a 64 KiB kernel receive buffer over %O: %.1f MB/s"
        kernelAddress
        (float total / 1e6 / elapsed.TotalSeconds)

let private bothWays (n: int) (offloads: bool) =
    let label = if offloads then "offloads on" else "offloads off"

    withStack (optionsFor n offloads) (fun stack ->
        for (stackAddress, kernelAddress) in families n do
            inbound stack stackAddress label
            outbound stack kernelAddress label)

[<Tests>]
let tests =
    testSequenced
    <| testList
        "BigMtu with the kernel"
        [
            test "MTU 65000, TUN offloads on: 32 MiB each way, IPv4 and IPv6, SHA-256 exact; prints MB/s" {
                bothWays 1 true
            }

            test "MTU 65000, a 64 KiB kernel receive buffer: 8 MiB NetStack → kernel, SHA-256 exact; prints MB/s" {
                withStack (optionsFor 3 true) (fun stack ->
                    for (_, kernelAddress) in families 3 do
                        outboundSmallWindow stack kernelAddress)
            }

            test "MTU 65000, TUN offloads off: 32 MiB each way, IPv4 and IPv6, SHA-256 exact; prints MB/s" {
                bothWays 2 false
            }
        ]
