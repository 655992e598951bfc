/// RFC 5227 §2.4 conflict defence in Tap mode against the kernel: a python3 AF_PACKET socket
/// forges ARP packets that claim the stack's IPv4 address; the stack defends once per
/// DEFEND_INTERVAL, keeps its address and counts every conflict.
/// Interface ns106t3, subnet 10.106.3.0/24, fda6:3::/64.
module NetStack.Tests.Integration.ArpConflictTests

open System
open System.IO
open System.Net
open System.Net.NetworkInformation
open Expecto
open NetStack
open NetStack.Tests

/// Sends `count` forged announcements of `ip` from MAC 02:66:00:00:00:01, 100 ms apart, while
/// listening; prints how many announcements of `ip` from `stackMac` it saw within 2 s.
let private forgeScript =
    """
import socket, struct, sys, time
dev, ip, stack_mac, count = sys.argv[1], socket.inet_aton(sys.argv[2]), bytes.fromhex(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((dev, 0))
s.settimeout(0.05)
forger = bytes([2, 0x66, 0, 0, 0, 1])
arp = struct.pack('!HHBBH', 1, 0x0800, 6, 4, 1) + forger + ip + bytes(6) + ip
seen = 0
def drain():
    global seen
    try:
        while True:
            f = s.recv(2048)
            if f[6:12] == stack_mac and f[12:14] == b'\x08\x06' and f[22:28] == stack_mac and f[28:32] == ip and f[38:42] == ip:
                seen += 1
    except socket.timeout:
        pass
for _ in range(count):
    s.send(b'\xff' * 6 + forger + b'\x08\x06' + arp)
    end = time.time() + 0.1
    while time.time() < end: drain()
end = time.time() + 2
while time.time() < end: drain()
print(seen)
"""

[<Tests>]
let tests =
    testSequenced
    <| testList
        "ARP conflict with the kernel"
        [
            test
                "forged ARP claiming the stack's address: one defence per DEFEND_INTERVAL, every conflict counted, the address kept" {
                let options =
                    NetStackOptions(
                        Mode = NetStackMode.Tap,
                        TunName = "ns106t3",
                        Address = IPAddress.Parse "10.106.3.2",
                        HostAddress = IPAddress.Parse "10.106.3.1",
                        Address6 = IPAddress.Parse "fda6:3::2",
                        HostAddress6 = IPAddress.Parse "fda6:3::1",
                        MacAddress = PhysicalAddress.Parse "02-A6-00-00-03-02"
                    )

                use stack = NetworkStack.Start options

                let path =
                    Path.Combine(Path.GetTempPath(), $"netstack-arp-conflict-{Environment.ProcessId}.py")

                File.WriteAllText(path, forgeScript)

                try
                    let code, output =
                        Isolation.run "python3" [ path; "ns106t3"; "10.106.3.2"; "02a600000302"; "3" ]

                    Expect.equal code 0 $"the forger ran:\n{output}"
                    let summary = $"{output}\n{stack.Statistics}"
                    Expect.equal (output.Trim()) "1" $"exactly one defending announcement:\n{summary}"
                    Expect.equal stack.Statistics.["arp.conflict"] 3L $"three conflicts counted:\n{summary}"
                    Expect.equal stack.Statistics.["arp.defended"] 1L $"one defence:\n{summary}"

                    let reply =
                        stack.PingAsync(IPAddress.Parse "10.106.3.1", TimeSpan.FromSeconds 5.0)
                        |> TestUtil.waitWithin (TimeSpan.FromSeconds 10.0)

                    Expect.equal reply.Status IPStatus.Success "the stack keeps its address"
                finally
                    File.Delete path

                TestUtil.assertNoExceptions stack
            }
        ]
