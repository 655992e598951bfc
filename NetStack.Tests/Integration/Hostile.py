# Kernel-side attacker for the hostile-input tests (HostileTests.fs, LimitsTests.fs). Crafts IPv4
# and TCP with struct and sends them through a raw socket (IPPROTO_RAW: the kernel fills in the
# IPv4 checksum and total length only), spoofing whatever source the test asks for. Runs inside
# the test runner's private network namespace; every packet goes to the stack under test.
#
#   Hostile.py flood STACK PORT COUNT PREFIX     COUNT SYNs from PREFIX.10-250, random ports
#   Hostile.py blind IFACE KERNEL STACK PORT     blind RST/SYN/data against a live echo connection
#   Hostile.py burst IFACE KERNEL STACK PORT     bursts of in-window RSTs and of old data against one
#   Hostile.py idle STACK PORT COUNT             COUNT idle connections, held until stdin closes
import json
import os
import random
import resource
import select
import socket
import struct
import sys
import time


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp(src, dst, sport, dport, seq, ack, flags, window=65535, options=b"", data=b""):
    offset = (5 + len(options) // 4) << 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, offset, flags, window, 0, 0)
    header += options
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(header) + len(data))
    c = checksum(pseudo + header + data)
    return header[:16] + struct.pack("!H", c) + header[18:] + data


def ipv4(src, dst, payload, protocol=6):
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), random.randint(0, 65535), 0, 64, protocol, 0,
        socket.inet_aton(src), socket.inet_aton(dst))
    return header + payload


FIN, SYN, RST, PSH, ACK = 1, 2, 4, 8, 16


def raw_socket():
    return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)


def flood(stack, port, count, prefix):
    s = raw_socket()
    mss = b"\x02\x04\x05\xb4"
    for _ in range(count):
        src = "%s.%d" % (prefix, random.randint(10, 250))
        segment = tcp(src, stack, random.randint(1024, 65535), port, random.getrandbits(32), 0, SYN, options=mss)
        s.sendto(ipv4(src, stack, segment), (stack, 0))
    print("sent %d" % count, flush=True)


def tsval(options):
    """TSval of a timestamps option (RFC 7323) among TCP options, or None."""
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            break
        if kind == 8 and options[i + 1] == 10 and i + 10 <= len(options):
            return struct.unpack("!I", options[i + 2:i + 6])[0]
        i += options[i + 1]
    return None


def parse(packet):
    """(src, dst, sport, dport, seq, ack, flags, payload length, TSval or None) of an IPv4 TCP packet, or None."""
    if len(packet) < 40 or packet[0] >> 4 != 4 or packet[9] != 6:
        return None
    ihl = (packet[0] & 15) * 4
    total = struct.unpack("!H", packet[2:4])[0]
    sport, dport, seq, ack, off, flags = struct.unpack("!HHIIBB", packet[ihl:ihl + 14])
    length = total - ihl - (off >> 4) * 4
    ts = tsval(packet[ihl + 20:ihl + (off >> 4) * 4])
    return socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20]), sport, dport, seq, ack, flags, length, ts


def blind(iface, kernel, stack, port, phase="kinds"):
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3))
    sniffer.bind((iface, 0))
    client = socket.create_connection((stack, port), timeout=10)
    lport = client.getsockname()[1]

    latest_ts = {True: None, False: None}

    def drain(wait):
        """Packets of our connection seen within `wait` seconds: (from_stack, seq, ack, flags, length)."""
        seen = []
        deadline = time.time() + wait
        while True:
            left = deadline - time.time()
            if left <= 0 or not select.select([sniffer], [], [], left)[0]:
                return seen
            p = parse(sniffer.recv(65535))
            if p is None:
                continue
            src, dst, sport, dport, seq, ack, flags, length, ts = p
            if (src, sport, dport) == (stack, port, lport):
                seen.append((True, seq, ack, flags, length))
                latest_ts[True] = ts if ts is not None else latest_ts[True]
            elif (src, sport, dport) == (kernel, lport, port):
                seen.append((False, seq, ack, flags, length))
                latest_ts[False] = ts if ts is not None else latest_ts[False]

    def echo(data):
        client.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = client.recv(len(data) - len(got))
            if not chunk:
                break
            got += chunk
        return got

    ok = echo(b"a" * 100) == b"a" * 100
    seen = drain(0.5)
    # The next sequence number each side will send: the highest seq + length (+1 for SYN/FIN).
    k_next = max((s + n + (1 if f & (SYN | FIN) else 0)) & 0xFFFFFFFF for st, s, a, f, n in seen if not st)
    s_next = max((s + n + (1 if f & (SYN | FIN) else 0)) & 0xFFFFFFFF for st, s, a, f, n in seen if st)
    raw = raw_socket()

    def attack(segment):
        raw.sendto(ipv4(kernel, stack, segment), (stack, 0))
        return [x for x in drain(0.4) if x[0]]

    # With timestamps on the connection (RFC 7323), a non-RST segment without them is dropped
    # silently (§3.2) before the RFC 5961 checks; to exercise those, the injected segments carry
    # the kernel's latest TSval (as an attacker who saw one packet would).
    if latest_ts[False] is not None:
        ts = b"\x01\x01\x08\x0a" + struct.pack("!II", latest_ts[False], latest_ts[True] or 0)
    else:
        ts = b""

    result = {}
    if phase == "burst":
        # RFC 5961 §7: 50 in-window RSTs at once draw challenge ACKs at a limited rate (one), 20
        # out-of-window data segments one ACK each (data is never limited), and a RST after the
        # interval (500 ms) a challenge ACK again.
        for _ in range(50):
            raw.sendto(ipv4(kernel, stack, tcp(kernel, stack, lport, port, k_next + 5000, 0, RST)), (stack, 0))
        answers = [x for x in drain(0.3) if x[0]]
        result["rst-burst-acks"] = sum(1 for _, s, a, f, n in answers if f & ACK and a == k_next)
        old = tcp(kernel, stack, lport, port, k_next - 200000, s_next, ACK | PSH, data=b"EVIL", options=ts)
        for _ in range(20):
            raw.sendto(ipv4(kernel, stack, old), (stack, 0))
        answers = [x for x in drain(0.3) if x[0]]
        result["old-data-burst-acks"] = sum(1 for _, s, a, f, n in answers if f & ACK and a == k_next)
        time.sleep(0.3)
        answers = attack(tcp(kernel, stack, lport, port, k_next + 5000, 0, RST))
        result["rst-later-acks"] = sum(1 for _, s, a, f, n in answers if f & ACK and a == k_next)
        result["echo-after"] = echo(b"c" * 1000) == b"c" * 1000
        client.close()
        print(json.dumps(result), flush=True)
        return
    # RFC 5961 §3: a RST inside the window but not at RCV.NXT draws a challenge ACK.
    answers = attack(tcp(kernel, stack, lport, port, k_next + 5000, 0, RST))
    result["rst-in-window-challenge-acks"] = sum(1 for _, s, a, f, n in answers if f & ACK and a == k_next)
    # Outside the window: silently dropped.
    answers = attack(tcp(kernel, stack, lport, port, k_next + 0x40000000, 0, RST))
    result["rst-out-of-window-answers"] = len(answers)
    # RFC 5961 §4: a SYN on an established connection draws a challenge ACK, never a reset.
    answers = attack(tcp(kernel, stack, lport, port, random.getrandbits(32), 0, SYN, options=ts))
    result["syn-challenge-acks"] = sum(1 for _, s, a, f, n in answers if f & ACK and not f & RST)
    # RFC 9293 §3.10.7.4: data outside the window is answered with an ACK and dropped.
    answers = attack(tcp(kernel, stack, lport, port, k_next - 200000, s_next, ACK | PSH, data=b"EVIL", options=ts))
    result["old-data-acks"] = sum(1 for _, s, a, f, n in answers if f & ACK and a == k_next)
    # In-window data acknowledging bytes never sent (SEG.ACK > SND.NXT): ACK, drop.
    answers = attack(tcp(kernel, stack, lport, port, k_next, s_next + 100000, ACK | PSH, data=b"EVIL", options=ts))
    result["future-ack-acks"] = sum(1 for _, s, a, f, n in answers if f & ACK and a == k_next)
    # RFC 5961 §5.2: an ACK far below SND.UNA: challenge ACK, drop.
    answers = attack(tcp(kernel, stack, lport, port, k_next, s_next - 0x40000000, ACK | PSH, data=b"EVIL", options=ts))
    result["old-ack-acks"] = sum(1 for _, s, a, f, n in answers if f & ACK and a == k_next)
    # Data outside the window to the right.
    answers = attack(tcp(kernel, stack, lport, port, k_next + 0x20000000, s_next, ACK | PSH, data=b"EVIL", options=ts))
    result["future-data-acks"] = sum(1 for _, s, a, f, n in answers if f & ACK and a == k_next)
    # Without a timestamp (when the connection has them) data is dropped unanswered.
    result["timestamps"] = latest_ts[False] is not None
    if result["timestamps"]:
        answers = attack(tcp(kernel, stack, lport, port, k_next, s_next, ACK | PSH, data=b"EVIL"))
        result["no-timestamp-data-answers"] = len(answers)
    # The connection still works, and none of the injected bytes reached the echo server.
    result["echo-before"] = ok
    result["echo-after"] = echo(b"b" * 1000) == b"b" * 1000
    client.close()
    print(json.dumps(result), flush=True)


def idle(stack, port, count):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    family = socket.AF_INET6 if ":" in stack else socket.AF_INET
    sockets = []
    for _ in range(count):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect((stack, port))
        sockets.append(s)
    print("connected %d" % len(sockets), flush=True)
    sys.stdin.read()
    for s in sockets:
        s.close()


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "flood":
        flood(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    elif command == "blind":
        blind(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif command == "burst":
        blind(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), "burst")
    elif command == "idle":
        idle(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
