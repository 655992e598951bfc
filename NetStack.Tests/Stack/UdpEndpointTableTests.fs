/// The core's UDP port table on its own: which socket a datagram or an ICMP error reaches,
/// RFC 1122's port-unreachable rule, and ephemeral ports.
module NetStack.Tests.Stack.UdpEndpointTableTests

open Expecto
open NetStack.Core.Wire
open NetStack.Core.Stack

let private ours = V4(Ipv4Address.Parse "10.0.0.2")
let private other = V4(Ipv4Address.Parse "10.0.0.3")
let private ours6 = V6(Ipv6Address.Parse "fd00::2")

[<Tests>]
let tests =
    testList
        "Udp endpoint table"
        [
            testCase "a socket for the family takes datagrams to any of its addresses; one on an address only those"
            <| fun () ->
                let t = UdpEndpointTable()
                let all = t.BindAll(true, true, 53, 0)
                let one = t.BindOn(ours, 54, 0)
                Expect.isTrue (obj.ReferenceEquals(t.Find(other, 53us), all)) "IPv4, any address"
                Expect.isTrue (obj.ReferenceEquals(t.Find(ours6, 53us), all)) "IPv6 too"
                Expect.isTrue (obj.ReferenceEquals(t.Find(ours, 54us), one)) "its address"
                Expect.isNull (t.Find(other, 54us)) "not another"
                Expect.isNull (t.Find(ours6, 54us)) "nor the other family"

            testCase "a port is taken per family until unbound"
            <| fun () ->
                let t = UdpEndpointTable()
                let a = t.BindAll(true, false, 53, 0)
                Expect.isNull (t.BindOn(ours, 53, 0)) "taken for IPv4"
                Expect.isNotNull (t.BindOn(ours6, 53, 0)) "free for IPv6"
                t.Unbind a
                Expect.isNotNull (t.BindAll(true, false, 53, 0)) "free again"

            testCase "RFC 1122: port unreachable for a datagram to no socket, but not for a broadcast"
            <| fun () ->
                let t = UdpEndpointTable()
                Expect.isTrue (t.PortUnreachableFor false) "unicast"
                Expect.isFalse (t.PortUnreachableFor true) "broadcast (RFC 1122 §3.2.2)"

            testCase "ephemeral ports are distinct, in 49152–65535, until none is left"
            <| fun () ->
                let t = UdpEndpointTable()
                let ports = System.Collections.Generic.HashSet<uint16>()

                for i in 1 .. 65535 - 49152 + 1 do
                    let e = t.BindAll(true, true, 0, i * 104729)
                    Expect.isNotNull e "a free port"
                    Expect.isTrue (e.Port >= 49152us) "dynamic range"
                    Expect.isTrue (ports.Add e.Port) "distinct"

                Expect.isNull (t.BindAll(true, false, 0, 7)) "exhausted"

            testCase "an ICMP error reaches the socket that sent the quoted datagram"
            <| fun () ->
                let t = UdpEndpointTable()
                let e = t.BindAll(true, false, 5000, 0)
                Expect.isTrue (obj.ReferenceEquals(t.ForError(ours, 5000us), e)) "found"
                Expect.isNull (t.ForError(ours, 5001us)) "no socket"
        ]
