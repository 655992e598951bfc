#!/usr/bin/env bash
# Reproduces every golden capture in this directory from nothing.
#
# What it makes: one classic pcap per scenario (packets sent and answered by the real Linux
# kernel), plus X.fields.tsv next to each X.pcap: tshark's own dissection of every frame, the
# independent oracle the golden tests compare against.
#
# Isolation: the whole script re-executes itself inside a private network namespace
# (`unshare --net`, or `unshare --user --map-root-user --net` when not root). A second,
# nested namespace is the peer; a veth pair joins the two. Nothing here can see or change the
# host's interfaces, and no packet can leave the machine. Both namespaces vanish when their
# last process exits; the trap kills the peer's placeholder process on any exit.
#
# Needs: iproute2, ethtool, tcpdump, tshark/editcap, ping (iputils), python3 with scapy.
#   apt-get install -y tcpdump tshark iputils-ping python3-scapy ethtool
#
# Usage: NetStack.Tests/Golden/capture.sh [output-dir]   (default: the script's directory)

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(cd "${1:-$here}" && pwd)"

if [[ "${GOLDEN_CAPTURE_NETNS:-}" != "1" ]]; then
    if [[ "$(id -u)" == "0" ]]; then
        exec unshare --net env GOLDEN_CAPTURE_NETNS=1 bash "$0" "$out"
    else
        exec unshare --user --map-root-user --net env GOLDEN_CAPTURE_NETNS=1 bash "$0" "$out"
    fi
fi

# scapy is installed for the system interpreter; a pyenv shim may not have it.
py=/usr/bin/python3
[[ -x "$py" ]] || py=python3

work="$(mktemp -d)"
peer_pid=""
dump_pid=""

cleanup() {
    [[ -n "$dump_pid" ]] && kill "$dump_pid" 2>/dev/null || true
    [[ -n "$peer_pid" ]] && kill "$peer_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# --- Topology -------------------------------------------------------------------------------
# Namespace A (this process) owns va; namespace B (a placeholder `sleep`) owns vb.
#   va 02:00:00:00:00:01  10.0.0.1/24  fd00::1/64
#   vb 02:00:00:00:00:02  10.0.0.2/24  fd00::2/64
# (No 802.1Q VLAN: this kernel has no 8021q support; the Pcap tests cover tags synthetically.)
# Neighbours are permanent on both sides so no ARP or neighbour discovery lands in a capture.
ip link set lo up

unshare --net sleep 3600 &
peer_pid=$!
sleep 0.2
inb() { nsenter --net="/proc/$peer_pid/ns/net" -- "$@"; }

inb ip link set lo up
ip link add va type veth peer name vb netns "$peer_pid"
ip link set va address 02:00:00:00:00:01
inb ip link set vb address 02:00:00:00:00:02

for side in a b; do
    if [[ $side == a ]]; then run=(); dev=va; me=1; them=2; mac=02:00:00:00:00:02
    else run=(inb); dev=vb; me=2; them=1; mac=02:00:00:00:00:01; fi
    # No router solicitations or DAD probes: fewer unrelated packets on the wire.
    "${run[@]}" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
        net.ipv6.conf.default.router_solicitations=0
    "${run[@]}" ip addr add 10.0.0.$me/24 dev $dev
    "${run[@]}" ip addr add fd00::$me/64 dev $dev nodad
    "${run[@]}" ip link set $dev up
    "${run[@]}" ip neigh replace 10.0.0.$them lladdr $mac nud permanent dev $dev
    "${run[@]}" ip neigh replace fd00::$them lladdr $mac nud permanent dev $dev
    # veth offloads the TCP/UDP checksum (CHECKSUM_PARTIAL): a capture would hold only the
    # pseudo-header sum in the field. Computing it in software puts the real value on the wire.
    "${run[@]}" ethtool -K $dev tx off >/dev/null
done
sleep 0.5

# --- Capture helpers --------------------------------------------------------------------------
# start_capture NAME IFACE FILTER [tcpdump options...]: starts tcpdump writing $work/NAME.pcap
# and returns once the capture socket is live (the file header is written after activation).
# --immediate-mode: with TPACKET_V3 a block is only handed over when full or after a timeout,
# and packets still in the open block when tcpdump is interrupted would be lost.
start_capture() {
    local name=$1 iface=$2 filter=$3
    shift 3
    tcpdump -Z root -U --immediate-mode -n -s 65535 -i "$iface" "$@" -w "$work/$name.pcap" "$filter" 2>"$work/$name.log" &
    dump_pid=$!
    for _ in $(seq 100); do
        [[ -s "$work/$name.pcap" ]] && break
        sleep 0.05
    done
    sleep 0.3
}

# stop_capture NAME: lets late packets arrive, stops tcpdump cleanly, keeps the pcap.
stop_capture() {
    local name=$1
    sleep 0.5
    kill -INT "$dump_pid"
    wait "$dump_pid" || true
    dump_pid=""
    cp "$work/$name.pcap" "$out/$name.pcap"
}

# The fields tshark writes into X.fields.tsv. Multi-valued fields (e.g. the inner IP header
# that an ICMP error quotes) are joined with ','; the outer header's value comes first.
fields=(
    frame.number frame.len
    ip.version ip.hdr_len ip.dsfield ip.len ip.id ip.flags.df ip.flags.mf ip.frag_offset
    ip.ttl ip.proto ip.checksum ip.checksum.status ip.src ip.dst
    ipv6.tclass ipv6.flow ipv6.plen ipv6.nxt ipv6.hlim ipv6.src ipv6.dst
    ipv6.hopopts.nxt ipv6.hopopts.len ipv6.dstopts.nxt ipv6.dstopts.len
    ipv6.routing.nxt ipv6.routing.type ipv6.routing.segleft
    ipv6.fraghdr.nxt ipv6.fraghdr.offset ipv6.fraghdr.more ipv6.fraghdr.ident
    tcp.srcport tcp.dstport tcp.seq_raw tcp.ack_raw tcp.hdr_len tcp.flags tcp.window_size_value
    tcp.checksum tcp.checksum.status tcp.urgent_pointer tcp.len
    tcp.options.mss_val tcp.options.wscale.shift tcp.options.sack_perm
    tcp.options.timestamp.tsval tcp.options.timestamp.tsecr
    udp.srcport udp.dstport udp.length udp.checksum udp.checksum.status
    icmp.type icmp.code icmp.checksum icmp.checksum.status icmp.ident icmp.seq
    icmpv6.type icmpv6.code icmpv6.checksum icmpv6.checksum.status
    icmpv6.echo.identifier icmpv6.echo.sequence_number
)

# write_fields NAME: tshark's per-frame dissection, each frame as captured (no reassembly),
# with checksum validation switched on so tshark's verdict is recorded too.
write_fields() {
    local name=$1 args=()
    for f in "${fields[@]}"; do args+=(-e "$f"); done
    tshark -r "$out/$name.pcap" -n \
        -o ip.defragment:FALSE -o ipv6.defragment:FALSE -o tcp.desegment_tcp_streams:FALSE \
        -o ip.check_checksum:TRUE -o tcp.check_checksum:TRUE -o udp.check_checksum:TRUE \
        -T fields -E header=y -E separator=/t -E occurrence=a -E aggregator=, \
        "${args[@]}" >"$out/$name.fields.tsv" 2>"$work/$name.tshark.log"
}

v4filter="ip and host 10.0.0.1 and host 10.0.0.2"
v6filter="ip6 and host fd00::1 and host fd00::2"

# --- Scenarios ------------------------------------------------------------------------------

# IPv4 echo request + reply, twice. Link type EN10MB.
start_capture ipv4-ping va "$v4filter"
ping -q -n -c 2 -i 0.2 10.0.0.2 >/dev/null
stop_capture ipv4-ping

# IPv4 ping of 6000 bytes over a 1500-byte MTU: the kernel fragments request and reply
# (RFC 791 §2.3). -M dont clears DF so local fragmentation is allowed.
start_capture ipv4-ping-fragmented va "$v4filter"
ping -q -n -c 1 -s 6000 -M dont 10.0.0.2 >/dev/null
stop_capture ipv4-ping-fragmented

# IPv6 echo request + reply. Captured on the "any" pseudo-device: link type LINUX_SLL2.
start_capture ipv6-ping any "$v6filter"
ping -6 -q -n -c 2 -i 0.2 fd00::2 >/dev/null
stop_capture ipv6-ping

# IPv6 ping of 6000 bytes: source fragmentation with a Fragment header (RFC 8200 §4.5).
# Captured on "any" forced to the older cooked header: link type LINUX_SLL.
start_capture ipv6-ping-fragmented any "$v6filter" -y LINUX_SLL
ping -6 -q -n -c 1 -s 6000 fd00::2 >/dev/null
stop_capture ipv6-ping-fragmented

# A UDP server in B and client in A: each datagram is echoed back upper-cased.
# Usage: udp_exchange FAMILY SERVER-ADDR PORT
udp_exchange() {
    local family=$1 addr=$2 port=$3
    inb "$py" - "$family" "$addr" "$port" <<'EOF' &
import socket, sys
fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((sys.argv[2], int(sys.argv[3])))
s.settimeout(5)
for _ in range(3):
    data, peer = s.recvfrom(2048)
    s.sendto(data.upper(), peer)
EOF
    local server=$!
    sleep 0.5
    "$py" - "$family" "$addr" "$port" <<'EOF'
import socket, sys
fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
c = socket.socket(fam, socket.SOCK_DGRAM)
c.settimeout(5)
for msg in (b"golden udp one", b"x", b"an odd-length payload"):
    c.sendto(msg, (sys.argv[2], int(sys.argv[3])))
    c.recvfrom(2048)
EOF
    wait "$server"
}

start_capture udp-ipv4 va "$v4filter"
udp_exchange 4 10.0.0.2 7000
stop_capture udp-ipv4

start_capture udp-ipv6 va "$v6filter"
udp_exchange 6 fd00::2 7000
stop_capture udp-ipv6

# A full TCP connection: handshake (Linux SYNs carry MSS, SACK-permitted, timestamps, NOP and
# window scale), a request, a reply, and an orderly FIN close from both sides.
# Usage: tcp_exchange FAMILY SERVER-ADDR PORT
tcp_exchange() {
    local family=$1 addr=$2 port=$3
    inb "$py" - "$family" "$addr" "$port" <<'EOF' &
import socket, sys
fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[2], int(sys.argv[3])))
s.listen(1)
s.settimeout(5)
conn, _ = s.accept()
data = b""
while not data.endswith(b"\n"):
    chunk = conn.recv(4096)
    if not chunk:
        break
    data += chunk
conn.sendall(b"reply: " + data)
conn.shutdown(socket.SHUT_WR)
while conn.recv(4096):
    pass
conn.close()
EOF
    local server=$!
    sleep 0.5
    "$py" - "$family" "$addr" "$port" <<'EOF'
import socket, sys
fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
c = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=5)
c.sendall(b"hello from the golden capture\n")
got = b""
while True:
    chunk = c.recv(4096)
    if not chunk:
        break
    got += chunk
c.close()
EOF
    wait "$server"
}

start_capture tcp-ipv4 va "$v4filter"
tcp_exchange 4 10.0.0.2 8000
stop_capture tcp-ipv4

start_capture tcp-ipv6 va "$v6filter"
tcp_exchange 6 fd00::2 8000
stop_capture tcp-ipv6

# A UDP datagram to a closed port: the kernel answers ICMP destination unreachable, port
# unreachable (RFC 792 type 3 code 3; RFC 4443 type 1 code 4), quoting the datagram.
send_to_closed_port() {
    "$py" - "$1" "$2" <<'EOF'
import socket, sys
fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
c = socket.socket(fam, socket.SOCK_DGRAM)
c.sendto(b"nobody listens here", (sys.argv[2], 9))
EOF
}

# The IPv4 one is stored as link type RAW (101): editcap chops the 14-byte Ethernet header.
# editcap keeps each record's orig_len (the Ethernet frame length, 14 more than incl_len);
# the tests compare orig_len with tshark's frame.len, which reads the same field.
start_capture icmp-port-unreachable-ipv4-eth va "$v4filter"
send_to_closed_port 4 10.0.0.2
stop_capture icmp-port-unreachable-ipv4-eth
editcap -F pcap -C 14 -T rawip "$out/icmp-port-unreachable-ipv4-eth.pcap" "$out/icmp-port-unreachable-ipv4.pcap"
rm "$out/icmp-port-unreachable-ipv4-eth.pcap"

start_capture icmp-port-unreachable-ipv6 va "$v6filter"
send_to_closed_port 6 fd00::2
stop_capture icmp-port-unreachable-ipv6

# IPv6 extension headers (RFC 8200 §4).
#  1. The kernel builds them: a UDP socket with sticky IPV6_HOPOPTS and IPV6_DSTOPTS
#     (RFC 3542 §9) sends a datagram carrying a Hop-by-Hop header (PadN) and a Destination
#     Options header (an unknown skippable option 0x1e, then PadN).
#  2. scapy sends echo requests with Hop-by-Hop + Destination Options, and with a type 0
#     Routing header whose Segments Left is 0 (must be ignored, RFC 8200 §4.4): the kernel
#     answers each with an echo reply.
#  3. scapy sends a type 0 Routing header with Segments Left 1: RFC 5095 deprecates type 0,
#     so the kernel answers ICMPv6 parameter problem (type 4, code 0) pointing at the type.
start_capture ipv6-extension-headers va "$v6filter"
"$py" - <<'EOF'
import socket
IPV6_HOPOPTS, IPV6_DSTOPTS = 54, 59
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
# Next header and length bytes are filled in by the kernel; PadN of 4 pads to 8 bytes.
s.setsockopt(socket.IPPROTO_IPV6, IPV6_HOPOPTS, bytes([0, 0, 1, 4, 0, 0, 0, 0]))
s.setsockopt(socket.IPPROTO_IPV6, IPV6_DSTOPTS, bytes([0, 0, 0x1E, 2, 0xAB, 0xCD, 1, 0]))
s.sendto(b"with extension headers", ("fd00::2", 9))
EOF
"$py" - <<'EOF'
import logging, time
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from scapy.all import Ether, IPv6, IPv6ExtHdrHopByHop, IPv6ExtHdrDestOpt, IPv6ExtHdrRouting
from scapy.all import ICMPv6EchoRequest, PadN, sendp
eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
ip = IPv6(src="fd00::1", dst="fd00::2")
frames = [
    eth / ip / IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\x00\x00\x00\x00")])
        / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00\x00\x00\x00")])
        / ICMPv6EchoRequest(id=0x1234, seq=1, data=b"hop-by-hop and destination options"),
    eth / ip / IPv6ExtHdrRouting(type=0, segleft=0, addresses=["fd00::2"])
        / ICMPv6EchoRequest(id=0x1234, seq=2, data=b"routing type 0, segments left 0"),
    eth / ip / IPv6ExtHdrRouting(type=0, segleft=1, addresses=["fd00::3"])
        / ICMPv6EchoRequest(id=0x1234, seq=3, data=b"routing type 0, segments left 1"),
]
for f in frames:
    sendp(f, iface="va", verbose=False)
    time.sleep(0.2)
EOF
stop_capture ipv6-extension-headers

for pcap in "$out"/*.pcap; do
    write_fields "$(basename "$pcap" .pcap)"
done

for pcap in "$out"/*.pcap; do
    printf '%-40s %3d frames\n' "$(basename "$pcap")" "$(($(wc -l <"${pcap%.pcap}.fields.tsv") - 1))"
done
