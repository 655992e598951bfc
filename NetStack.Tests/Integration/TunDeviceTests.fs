/// The TUN device and its rtnetlink configuration against the real kernel.
///
/// Every test runs inside the private network namespace the test runner creates (Isolation.fs),
/// so the interfaces, addresses and routes made here are invisible to the host. The kernel's own
/// sockets and `ip` are the independent judges: a datagram the kernel sends must come out of the
/// device byte for byte, and a packet written into the device must reach a kernel socket.
module NetStack.Tests.Integration.TunDeviceTests

open System
open System.Net
open System.Net.Sockets
open System.Text
open System.Text.Json
open System.Threading
open Expecto
open NetStack.Core.Wire
open NetStack.Device
open NetStack.Tests

// errno values the tests expect (asm-generic/errno-base.h).
let private EBUSY = 16
let private EEXIST = 17
let private ENODEV = 19
let private EINVAL = 22

/// Runs `ip ARGS` and fails the test when it fails.
let private ip (args: string list) =
    match Isolation.run "ip" args with
    | 0, out -> out
    | code, out -> failtestf "ip %s failed (exit %d): %s" (String.Join(" ", args)) code out

/// Runs `ip -j ARGS` and parses its JSON answer.
let private ipJson (args: string list) = JsonDocument.Parse(ip ("-j" :: args))

let private linkExists (name: string) =
    fst (Isolation.run "ip" [ "link"; "show"; "dev"; name ]) = 0

/// Runs `f` and returns the exception of type 'T it throws; fails when it throws nothing or another type.
let private throwsOf<'T when 'T :> exn> (f: unit -> unit) : 'T =
    let thrown =
        try
            f ()
            None
        with e ->
            Some e

    match thrown with
    | Some(:? 'T as e) -> e
    | Some e -> failtestf "expected %s, got %s: %s" typeof<'T>.Name (e.GetType().Name) e.Message
    | None -> failtestf "expected %s, nothing was thrown" typeof<'T>.Name

/// Reads packets from the device until one satisfies `wanted` (the kernel also sends IPv6
/// router solicitations and MLD reports on its own) or `timeoutMs` passes.
let private readMatching (device: TunDevice) (wanted: byte[] -> bool) (timeoutMs: int) =
    let buffer = Array.zeroCreate<byte> 65536
    let deadline = Environment.TickCount64 + int64 timeoutMs
    let mutable found = None

    while found.IsNone && Environment.TickCount64 < deadline do
        let wait = int (max 1L (deadline - Environment.TickCount64))

        match device.TryRead(Span<byte> buffer, wait) with
        | true, length ->
            let packet = buffer.[0 .. length - 1]

            if wanted packet then
                found <- Some packet
        | false, _ -> ()

    found

let private v4Bytes (a: string) = IPAddress.Parse(a).GetAddressBytes()

let private be16 (b: byte[]) (offset: int) =
    (int b.[offset] <<< 8) ||| int b.[offset + 1]

let private put16 (b: byte[]) (offset: int) (value: int) =
    b.[offset] <- byte (value >>> 8)
    b.[offset + 1] <- byte value

/// A UDP header and payload with the checksum left zero.
let private udpSegment (srcPort: int) (dstPort: int) (payload: byte[]) =
    let segment = Array.zeroCreate<byte>(8 + payload.Length)
    put16 segment 0 srcPort
    put16 segment 2 dstPort
    put16 segment 4 segment.Length
    payload.CopyTo(segment, 8)
    segment

/// The UDP checksum field for a segment (checksum zero) and a pseudo-header sum. RFC 768: a
/// computed zero is sent as all ones, zero meaning "no checksum".
let private udpChecksum (pseudo: uint64) (segment: byte[]) =
    match Checksum.finish (Checksum.sum pseudo (ReadOnlySpan segment)) with
    | 0us -> 0xFFFFus
    | c -> c

/// An IPv4 packet carrying a UDP datagram, checksums computed (RFC 791, RFC 768).
let private ipv4Udp (src: string) (dst: string) (srcPort: int) (dstPort: int) (payload: byte[]) =
    let segment = udpSegment srcPort dstPort payload
    let s = Ipv4Address.Parse src
    let d = Ipv4Address.Parse dst
    put16 segment 6 (int (udpChecksum (Checksum.pseudoHeaderV4 s d 17uy segment.Length) segment))
    let packet = Array.zeroCreate<byte>(20 + segment.Length)
    packet.[0] <- 0x45uy // version 4, IHL 5 words
    put16 packet 2 packet.Length
    put16 packet 4 0x1234 // identification
    put16 packet 6 0x4000 // DF, fragment offset 0
    packet.[8] <- 64uy // TTL
    packet.[9] <- 17uy // UDP
    s.Write(Span<byte>(packet, 12, 4))
    d.Write(Span<byte>(packet, 16, 4))
    put16 packet 10 (int (Checksum.compute (ReadOnlySpan<byte>(packet, 0, 20))))
    segment.CopyTo(packet, 20)
    packet

/// An IPv6 packet carrying a UDP datagram (RFC 8200; the UDP checksum is mandatory, §8.1).
let private ipv6Udp (src: string) (dst: string) (srcPort: int) (dstPort: int) (payload: byte[]) =
    let segment = udpSegment srcPort dstPort payload
    let s = Ipv6Address.Parse src
    let d = Ipv6Address.Parse dst
    put16 segment 6 (int (udpChecksum (Checksum.pseudoHeaderV6 s d 17uy segment.Length) segment))
    let packet = Array.zeroCreate<byte>(40 + segment.Length)
    packet.[0] <- 0x60uy // version 6, traffic class and flow label 0
    put16 packet 4 segment.Length
    packet.[6] <- 17uy // next header: UDP
    packet.[7] <- 64uy // hop limit
    s.Write(Span<byte>(packet, 8, 16))
    d.Write(Span<byte>(packet, 24, 16))
    segment.CopyTo(packet, 40)
    packet

/// A created device with the kernel side configured: host .1 / ::1, stack .2 / ::2, MTU, up.
type private Configured =
    {
        Device: TunDevice
        Link: KernelLink
        HostV4: string
        StackV4: string
        HostV6: string
        StackV6: string
    }

    interface IDisposable with
        member this.Dispose() =
            this.Link.Dispose()
            this.Device.Dispose()

/// Each test takes its own subnet, so that nothing one test leaves behind can confuse another.
let private configure (subnet: int) (mtu: int) =
    let device = TunDevice.Create "ns%d"
    let link = new KernelLink(device)

    let c =
        {
            Device = device
            Link = link
            HostV4 = $"10.77.{subnet}.1"
            StackV4 = $"10.77.{subnet}.2"
            HostV6 = $"fd00:77:{subnet}::1"
            StackV6 = $"fd00:77:{subnet}::2"
        }

    link.SetMtu mtu
    link.SetUp()
    link.AddAddress(IPAddress.Parse c.HostV4, IPAddress.Parse c.StackV4)
    link.AddAddress(IPAddress.Parse c.HostV6, IPAddress.Parse c.StackV6)
    c

let private payloadOf (text: string) = Encoding.ASCII.GetBytes text

[<Runtime.InteropServices.DllImport("libc", SetLastError = true)>]
extern int private dup(int fd)

[<Runtime.InteropServices.DllImport("libc", SetLastError = true)>]
extern int private close(int fd)

/// Taking over a descriptor opened elsewhere (netstack run receives one from another namespace).
let private descriptors =
    testList
        "descriptors"
        [
            test "FromDescriptor reads the name and mode from the descriptor and keeps the interface while it is open" {
                let first = TunDevice.Create("nsfd%d", true)
                use second = TunDevice.FromDescriptor(dup first.FileDescriptor, 1400, 77)
                Expect.equal second.Name first.Name "the name, from TUNGETIFF"
                Expect.isTrue second.HasVirtioNetHeader "IFF_VNET_HDR, from TUNGETIFF"
                Expect.isFalse second.IsTap "a TUN device"
                Expect.equal second.Mtu 1400 "the MTU given (the interface may be in another namespace)"
                Expect.equal second.InterfaceIndex 77 "the index given"
                first.Dispose()
                Expect.isTrue (linkExists second.Name) "the second descriptor keeps the interface"
                second.Dispose()
                Expect.isFalse (linkExists first.Name) "gone with the last descriptor"
            }

            test "FromDescriptor refuses a descriptor that is not an attached TUN, and bad arguments" {
                let fd = dup 0

                let e =
                    throwsOf<TunDeviceException>(fun () -> TunDevice.FromDescriptor(fd, 1500) |> ignore)

                Expect.stringContains e.Message "TUNGETIFF" "names the check"
                Expect.equal (close fd) 0 "the descriptor stayed the caller's"

                throwsOf<ArgumentException>(fun () -> TunDevice.FromDescriptor(-1, 1500) |> ignore)
                |> ignore

                throwsOf<ArgumentException>(fun () -> TunDevice.FromDescriptor(0, 67) |> ignore)
                |> ignore
            }
        ]

let private creation =
    testList
        "creation"
        [
            test "a template gets its number from the kernel and the name, index and MTU read back" {
                use device = TunDevice.Create "ns%d"
                Expect.stringStarts device.Name "ns" "name keeps the template's prefix"
                Expect.isFalse (device.Name.Contains '%') "the kernel filled in the number"
                Expect.isTrue (linkExists device.Name) "ip link show finds the interface"
                Expect.isTrue device.IsOwned "a created device is owned"
                Expect.isGreaterThanOrEqual device.FileDescriptor 0 "the descriptor is open"
                use json = ipJson [ "link"; "show"; "dev"; device.Name ]
                let link = json.RootElement.[0]
                Expect.equal (link.GetProperty("ifindex").GetInt32()) device.InterfaceIndex "ifindex"
                Expect.equal (link.GetProperty("mtu").GetInt32()) device.Mtu "MTU"
            }

            test "an exact name is used as given" {
                use device = TunDevice.Create "nsexact0"
                Expect.equal device.Name "nsexact0" "name"
                Expect.isTrue (linkExists "nsexact0") "interface exists"
            }

            test "disposing a created device deletes the interface" {
                let device = TunDevice.Create "ns%d"
                let name = device.Name
                Expect.isTrue (linkExists name) "exists while open"
                device.Dispose()
                Expect.isFalse (linkExists name) "ip link show fails after Dispose"
                Expect.equal device.FileDescriptor -1 "no descriptor after Dispose"
                device.Dispose() // idempotent
            }

            test "a name longer than 15 bytes is an ArgumentException before any syscall" {
                throwsOf<ArgumentException>(fun () -> TunDevice.Create "abcdefghijklmnop" |> ignore)
                |> ignore

                // 15 bytes of UTF-8 in fewer characters counts by bytes.
                throwsOf<ArgumentException>(fun () -> TunDevice.Create "ééééééé%d" |> ignore)
                |> ignore
            }

            test "malformed names and templates are ArgumentExceptions" {
                for bad in [ ""; "."; ".."; "a/b"; "a:b"; "a b"; "ns%s"; "ns%d%d"; "ns%" ] do
                    throwsOf<ArgumentException>(fun () -> TunDevice.Create bad |> ignore) |> ignore

                throwsOf<ArgumentException>(fun () -> TunDevice.Attach "ns%d" |> ignore)
                |> ignore
            }

            test "creating a name that is taken fails with EBUSY and says so" {
                use first = TunDevice.Create "nsdup0"

                let e = throwsOf<TunDeviceException>(fun () -> TunDevice.Create "nsdup0" |> ignore)

                Expect.equal e.Errno EBUSY "errno"
                Expect.stringContains e.Message "already exists" "message explains"
                Expect.isTrue (linkExists first.Name) "the first device is untouched"
            }

            test "creating over a non-TUN interface's name fails too" {
                let e = throwsOf<TunDeviceException>(fun () -> TunDevice.Create "lo" |> ignore)
                Expect.equal e.Errno EBUSY "errno"
            }
        ]

let private attaching =
    testList
        "attaching"
        [
            test "attaching to a persistent interface leaves it in place on Dispose" {
                ip [ "tuntap"; "add"; "dev"; "nspersist0"; "mode"; "tun" ] |> ignore

                try
                    let device = TunDevice.Attach "nspersist0"
                    Expect.equal device.Name "nspersist0" "name"
                    Expect.isFalse device.IsOwned "not owned"
                    device.Dispose()
                    Expect.isTrue (linkExists "nspersist0") "the interface is still there"
                    // And it can be attached again once released.
                    use again = TunDevice.Attach "nspersist0"
                    Expect.equal again.Name "nspersist0" "reattached"
                finally
                    ip [ "tuntap"; "del"; "dev"; "nspersist0"; "mode"; "tun" ] |> ignore
            }

            test "attaching to a missing interface fails with ENODEV and creates nothing" {
                let e =
                    throwsOf<TunDeviceException>(fun () -> TunDevice.Attach "nsmissing0" |> ignore)

                Expect.equal e.Errno ENODEV "errno"
                Expect.isFalse (linkExists "nsmissing0") "nothing was created"
            }

            test "attaching to an interface that is not TUN fails with EINVAL" {
                let e = throwsOf<TunDeviceException>(fun () -> TunDevice.Attach "lo" |> ignore)
                Expect.equal e.Errno EINVAL "errno"
                Expect.stringContains e.Message "not a TUN interface" "message explains"
            }

            test "attaching to a device another object holds fails with EBUSY" {
                use held = TunDevice.Create "nsheld0"
                let e = throwsOf<TunDeviceException>(fun () -> TunDevice.Attach held.Name |> ignore)
                Expect.equal e.Errno EBUSY "errno"
            }
        ]

let private configuration =
    testList
        "configuration"
        [
            test "ip addr shows the addresses, peers, MTU and UP state set over rtnetlink" {
                use c = configure 1 1400
                Expect.equal c.Device.Mtu 1400 "MTU read back through the device"
                use json = ipJson [ "addr"; "show"; "dev"; c.Device.Name ]
                let link = json.RootElement.[0]
                Expect.equal (link.GetProperty("mtu").GetInt32()) 1400 "MTU"

                let flags = [ for f in link.GetProperty("flags").EnumerateArray() -> f.GetString() ]

                Expect.contains flags "UP" "flags"

                let addresses =
                    [
                        for a in link.GetProperty("addr_info").EnumerateArray() ->
                            let peer =
                                match a.TryGetProperty "address" with
                                | true, p -> p.GetString()
                                | _ -> ""

                            a.GetProperty("family").GetString(),
                            a.GetProperty("local").GetString(),
                            peer,
                            a.GetProperty("prefixlen").GetInt32()
                    ]

                Expect.contains addresses ("inet", c.HostV4, c.StackV4, 32) "IPv4 with peer"
                Expect.contains addresses ("inet6", c.HostV6, c.StackV6, 128) "IPv6 with peer"
            }

            test "the kernel routes the stack's addresses and added prefixes through the device" {
                use c = configure 2 1500
                c.Link.AddRoute(IPAddress.Parse "10.78.2.0", 24)
                c.Link.AddRoute(IPAddress.Parse "fd00:78:2::", 64)

                let routeVia (address: string) =
                    use json = ipJson [ "route"; "get"; address ]
                    json.RootElement.[0].GetProperty("dev").GetString()

                for address in [ c.StackV4; c.StackV6; "10.78.2.9"; "fd00:78:2::9" ] do
                    Expect.equal (routeVia address) c.Device.Name $"route to {address}"
            }

            test "a route via a gateway is one 'ip route' shows with 'via', and goes with the KernelLink" {
                use device = TunDevice.Create "ns%d"

                do
                    use link = new KernelLink(device)
                    link.SetUp()
                    link.AddAddress(IPAddress.Parse "10.77.4.1", 24)
                    link.AddAddress(IPAddress.Parse "fd00:77:4::1", 64)
                    link.AddRoute(IPAddress.Parse "10.79.0.0", 16, IPAddress.Parse "10.77.4.2")
                    link.AddRoute(IPAddress.IPv6Any, 0, IPAddress.Parse "fd00:77:4::2")
                    let routes = ip [ "route"; "show"; "dev"; device.Name ]
                    Expect.stringContains routes "10.79.0.0/16 via 10.77.4.2" "IPv4 route via the gateway"
                    let routes6 = ip [ "-6"; "route"; "show"; "dev"; device.Name ]
                    Expect.stringContains routes6 "default via fd00:77:4::2" "IPv6 default route via the gateway"

                    throwsOf<ArgumentException>(fun () ->
                        link.AddRoute(IPAddress.Parse "10.80.0.0", 16, IPAddress.Parse "fd00::1"))
                    |> ignore

                Expect.isFalse ((ip [ "route"; "show"; "dev"; device.Name ]).Contains "via") "IPv4 route gone"
                Expect.isFalse ((ip [ "-6"; "route"; "show"; "dev"; device.Name ]).Contains "via") "IPv6 route gone"
            }

            test "disposing the KernelLink removes the addresses and routes it added" {
                use device = TunDevice.Create "ns%d"

                do
                    use link = KernelLink.Open device.Name
                    link.SetUp()
                    link.AddAddress(IPAddress.Parse "10.77.3.1", IPAddress.Parse "10.77.3.2")
                    link.AddAddress(IPAddress.Parse "fd00:77:3::1", 64)
                    link.AddRoute(IPAddress.Parse "10.78.3.0", 24)

                use json = ipJson [ "addr"; "show"; "dev"; device.Name ]

                let globals =
                    [
                        for a in json.RootElement.[0].GetProperty("addr_info").EnumerateArray() do
                            if a.GetProperty("scope").GetString() = "global" then
                                a.GetProperty("local").GetString()
                    ]

                Expect.isEmpty globals "no global address left"
                Expect.isFalse ((ip [ "route"; "show"; "dev"; device.Name ]).Contains "10.78.3.0") "route gone"
            }

            test "bad addresses, prefixes and MTUs are ArgumentExceptions" {
                use device = TunDevice.Create "ns%d"
                use link = new KernelLink(device)
                let v4 = IPAddress.Parse "10.77.4.1"
                let v6 = IPAddress.Parse "fd00:77:4::1"

                let bad (f: unit -> unit) = throwsOf<ArgumentException> f |> ignore

                bad (fun () -> link.AddAddress(IPAddress.Any, IPAddress.Parse "10.77.4.2"))
                bad (fun () -> link.AddAddress(v4, IPAddress.Broadcast))
                bad (fun () -> link.AddAddress(v4, IPAddress.Parse "224.0.0.1"))
                bad (fun () -> link.AddAddress(v4, IPAddress.Loopback))
                bad (fun () -> link.AddAddress(v4, v6))
                bad (fun () -> link.AddAddress(v4, v4))
                bad (fun () -> link.AddAddress(IPAddress.IPv6Any, v6))
                bad (fun () -> link.AddAddress(v6, IPAddress.Parse "ff02::1"))
                bad (fun () -> link.AddAddress(IPAddress.Parse "::ffff:10.0.0.1", v6))
                bad (fun () -> link.AddAddress(null, v4))
                bad (fun () -> link.AddAddress(v4, 33))
                bad (fun () -> link.AddAddress(v6, -1))
                bad (fun () -> link.AddRoute(IPAddress.Parse "10.78.4.1", 24))
                bad (fun () -> link.AddRoute(IPAddress.Parse "fd00:78:4::1", 64))
                bad (fun () -> link.SetMtu 67)
                bad (fun () -> link.SetMtu 65536)
            }

            test "adding an address twice fails with EEXIST and says so" {
                use c = configure 5 1500

                let e =
                    throwsOf<TunDeviceException>(fun () ->
                        c.Link.AddAddress(IPAddress.Parse c.HostV4, IPAddress.Parse c.StackV4))

                Expect.equal e.Errno EEXIST "errno"
                Expect.stringContains e.Message "already assigned" "message explains"
            }

            test "an IPv6 address on a link with an MTU below 1280 fails and says to raise the MTU" {
                use device = TunDevice.Create "ns%d"
                use link = new KernelLink(device)
                link.SetMtu 1000
                link.SetUp()

                let e =
                    throwsOf<TunDeviceException>(fun () ->
                        link.AddAddress(IPAddress.Parse "fd00:77:6::1", IPAddress.Parse "fd00:77:6::2"))

                Expect.stringContains e.Message "raise the MTU" "message explains"
            }

            test "opening a KernelLink for a missing interface fails with ENODEV" {
                let e =
                    throwsOf<TunDeviceException>(fun () -> KernelLink.Open "nsmissing1" |> ignore)

                Expect.equal e.Errno ENODEV "errno"
            }
        ]

let private traffic =
    testList
        "traffic"
        [
            test "a datagram the kernel sends to the stack's IPv4 address comes out of the device" {
                use c = configure 10 1500

                use socket =
                    new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                socket.Bind(IPEndPoint(IPAddress.Parse c.HostV4, 0))
                let sourcePort = (socket.LocalEndPoint :?> IPEndPoint).Port
                let payload = payloadOf "hello from the kernel"
                socket.SendTo(payload, IPEndPoint(IPAddress.Parse c.StackV4, 9000)) |> ignore

                let isOurs (p: byte[]) =
                    p.Length >= 28
                    && p.[0] >>> 4 = 4uy
                    && p.[9] = 17uy
                    && p.[16..19] = v4Bytes c.StackV4

                match readMatching c.Device isOurs 3000 with
                | None -> failtest "no IPv4 UDP packet to the stack came out of the device"
                | Some p ->
                    let ihl = int (p.[0] &&& 0x0Fuy) * 4
                    Expect.equal (be16 p 2) p.Length "total length is the packet read"
                    Expect.isTrue (Checksum.verify 0UL (ReadOnlySpan<byte>(p, 0, ihl))) "header checksum"
                    Expect.equal p.[12..15] (v4Bytes c.HostV4) "source is the host address"
                    Expect.equal (be16 p ihl) sourcePort "source port"
                    Expect.equal (be16 p (ihl + 2)) 9000 "destination port"
                    Expect.equal p.[ihl + 8 ..] payload "payload"

                    let pseudo =
                        Checksum.pseudoHeaderV4
                            (Ipv4Address.Parse c.HostV4)
                            (Ipv4Address.Parse c.StackV4)
                            17uy
                            (p.Length - ihl)

                    Expect.isTrue (Checksum.verify pseudo (ReadOnlySpan<byte>(p, ihl, p.Length - ihl))) "UDP checksum"
            }

            test "an IPv4 UDP packet written into the device reaches a kernel socket" {
                use c = configure 11 1500

                use socket =
                    new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)

                socket.Bind(IPEndPoint(IPAddress.Parse c.HostV4, 0))
                socket.ReceiveTimeout <- 3000
                let port = (socket.LocalEndPoint :?> IPEndPoint).Port
                let payload = payloadOf "hello from the stack"
                c.Device.Write(ReadOnlySpan(ipv4Udp c.StackV4 c.HostV4 40000 port payload))
                let buffer = Array.zeroCreate<byte> 2048
                let mutable from = IPEndPoint(IPAddress.Any, 0) :> EndPoint
                let n = socket.ReceiveFrom(buffer, &from)
                Expect.equal buffer.[.. n - 1] payload "payload"
                Expect.equal from (IPEndPoint(IPAddress.Parse c.StackV4, 40000) :> EndPoint) "sender"
            }

            test "a datagram the kernel sends to the stack's IPv6 address comes out of the device" {
                use c = configure 12 1500

                use socket =
                    new Socket(AddressFamily.InterNetworkV6, SocketType.Dgram, ProtocolType.Udp)

                socket.Bind(IPEndPoint(IPAddress.Parse c.HostV6, 0))
                let sourcePort = (socket.LocalEndPoint :?> IPEndPoint).Port
                let payload = payloadOf "hello over IPv6"
                socket.SendTo(payload, IPEndPoint(IPAddress.Parse c.StackV6, 9001)) |> ignore
                let stack = IPAddress.Parse(c.StackV6).GetAddressBytes()

                let isOurs (p: byte[]) =
                    p.Length >= 48 && p.[0] >>> 4 = 6uy && p.[6] = 17uy && p.[24..39] = stack

                match readMatching c.Device isOurs 3000 with
                | None -> failtest "no IPv6 UDP packet to the stack came out of the device"
                | Some p ->
                    Expect.equal (be16 p 4) (p.Length - 40) "payload length"
                    Expect.equal p.[8..23] (IPAddress.Parse(c.HostV6).GetAddressBytes()) "source is the host address"
                    Expect.equal (be16 p 40) sourcePort "source port"
                    Expect.equal (be16 p 42) 9001 "destination port"
                    Expect.equal p.[48..] payload "payload"

                    let pseudo =
                        Checksum.pseudoHeaderV6
                            (Ipv6Address.Parse c.HostV6)
                            (Ipv6Address.Parse c.StackV6)
                            17uy
                            (p.Length - 40)

                    Expect.isTrue (Checksum.verify pseudo (ReadOnlySpan<byte>(p, 40, p.Length - 40))) "UDP checksum"
            }

            test "an IPv6 UDP packet written into the device reaches a kernel socket" {
                use c = configure 13 1500

                use socket =
                    new Socket(AddressFamily.InterNetworkV6, SocketType.Dgram, ProtocolType.Udp)

                socket.Bind(IPEndPoint(IPAddress.Parse c.HostV6, 0))
                socket.ReceiveTimeout <- 3000
                let port = (socket.LocalEndPoint :?> IPEndPoint).Port
                let payload = payloadOf "hello from the stack over IPv6"
                c.Device.Write(ReadOnlySpan(ipv6Udp c.StackV6 c.HostV6 40001 port payload))
                let buffer = Array.zeroCreate<byte> 2048
                let mutable from = IPEndPoint(IPAddress.IPv6Any, 0) :> EndPoint
                let n = socket.ReceiveFrom(buffer, &from)
                Expect.equal buffer.[.. n - 1] payload "payload"
                Expect.equal from (IPEndPoint(IPAddress.Parse c.StackV6, 40001) :> EndPoint) "sender"
            }

            test "a write that is not an IP packet fails with EINVAL and says why" {
                use c = configure 14 1500

                let e =
                    throwsOf<TunDeviceException>(fun () -> c.Device.Write(ReadOnlySpan(Array.create 40 0x50uy)))

                Expect.equal e.Errno EINVAL "errno"
                Expect.stringContains e.Message "IPv4 or IPv6" "message explains"

                throwsOf<ArgumentException>(fun () -> c.Device.Write(ReadOnlySpan.Empty))
                |> ignore
            }
        ]

let private stopping =
    testList
        "stopping"
        [
            test "a blocked read ends with ObjectDisposedException soon after Dispose on another thread" {
                let device = TunDevice.Create "ns%d"
                let mutable outcome: exn option = None
                let started = new ManualResetEventSlim(false)

                let reader =
                    Thread(fun () ->
                        let buffer = Array.zeroCreate<byte> 2048

                        try
                            started.Set()
                            device.Read(Span<byte> buffer) |> ignore
                        with e ->
                            outcome <- Some e)

                reader.Start()
                started.Wait()
                Thread.Sleep 200 // let it block in poll()
                Expect.isTrue reader.IsAlive "the read is blocked"
                device.Dispose()
                Expect.isTrue (reader.Join 2000) "the read returned within 2 s of Dispose"

                match outcome with
                | Some(:? ObjectDisposedException) -> ()
                | other -> failtestf "expected ObjectDisposedException, got %A" other

                throwsOf<ObjectDisposedException>(fun () -> device.Read(Span<byte>(Array.zeroCreate 64)) |> ignore)
                |> ignore
            }

            test "reading or writing after the interface was deleted under the device fails with EBADFD" {
                use device = TunDevice.Create "ns%d"
                ip [ "link"; "del"; "dev"; device.Name ] |> ignore
                let buffer = Array.zeroCreate<byte> 2048

                let e =
                    throwsOf<TunDeviceException>(fun () -> device.TryRead(Span<byte> buffer, 1000) |> ignore)

                Expect.equal e.Errno 77 "read errno is EBADFD"
                Expect.stringContains e.Message "was deleted" "message explains"

                let e =
                    throwsOf<TunDeviceException>(fun () ->
                        device.Write(ReadOnlySpan(ipv4Udp "10.0.0.2" "10.0.0.1" 1 2 [||])))

                Expect.equal e.Errno 77 "write errno is EBADFD"
            }

            test "Wake ends a waiting TryRead with false, and a timeout ends it too" {
                use device = TunDevice.Create "ns%d"
                let buffer = Array.zeroCreate<byte> 2048
                let watch = Diagnostics.Stopwatch.StartNew()
                let ok, _ = device.TryRead(Span<byte> buffer, 100)
                Expect.isFalse ok "nothing arrives on a down interface"
                Expect.isGreaterThanOrEqual watch.ElapsedMilliseconds 90L "waited about the timeout"
                Expect.isLessThan watch.ElapsedMilliseconds 2000L "but not much longer"

                let mutable result = None

                let reader =
                    Thread(fun () ->
                        let b = Array.zeroCreate<byte> 2048
                        result <- Some(fst (device.TryRead(Span<byte> b, Timeout.Infinite))))

                reader.Start()
                Thread.Sleep 100
                device.Wake()
                Expect.isTrue (reader.Join 2000) "the wait ended within 2 s of Wake"
                Expect.equal result (Some false) "TryRead returned false"
                Expect.isTrue (linkExists device.Name) "the device is still open"
            }
        ]

/// The TUN device and KernelLink against the kernel, in the test namespace. Sequenced: the
/// tests create and delete interfaces and a shared namespace is easier to reason about serially.
[<Tests>]
let tests =
    testSequenced
    <| testList "TunDevice" [ creation; descriptors; attaching; configuration; traffic; stopping ]
