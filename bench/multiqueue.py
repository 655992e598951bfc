#!/usr/bin/env python3
"""Multi-queue TUN measurement (docs/multiqueue.md): `netstack serve --queues N` against kernel
clients in a private network namespace, restricted to the given processors (taskset), for

  bulk: F parallel kernel -> stack flows to the discard service, MIB in all;
  conn: C client threads opening short connections to the echo service (connect, 1 byte each
        way, close) for SECONDS.

It reports rates and, more usefully on a shared machine, processor time per unit of work: the
serve process's (the stack: every engine loop, the thread pool, the device writes), the client's
(this process), and the busy time of the chosen processors as /proc/stat counts it (everything
that ran there, the kernel's TCP and TUN work included), plus each engine loop thread's share.

Run as root from the repository root after ./build.sh build:
  sudo python3 bench/multiqueue.py --cpus 0 --queues 1 [--flows 4] [--mib 2048] [--conn-clients 4] [--seconds 5]
It re-executes itself under `unshare --net` and pins itself (and so the stack) with taskset.
"""
import argparse
import os
import socket
import subprocess
import sys
import threading
import time

NETSTACK = os.path.join("NetStack.Cli", "bin", "Release", "net10.0", "netstack.dll")
STACK, HOST = "10.150.0.2", "10.150.0.1"
HZ = os.sysconf("SC_CLK_TCK")


def process_seconds(pid):
    # /proc/PID/stat fields 14 and 15: user and system time of every thread of the process.
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def thread_seconds(pid):
    result = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        if name.startswith("netstack "):
            result[name] = result.get(name, 0) + (int(fields[11]) + int(fields[12])) / HZ
    return result


def busy_seconds(cpus):
    # /proc/stat cpuN: user nice system idle iowait irq softirq steal ...; busy = all but idle, iowait.
    busy = 0
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if parts[0].startswith("cpu") and parts[0] != "cpu" and int(parts[0][3:]) in cpus:
                values = [int(v) for v in parts[1:9]]
                busy += sum(values) - values[3] - values[4]
    return busy / HZ


def self_seconds():
    t = os.times()
    return t.user + t.system


def bulk(flows, total_bytes):
    chunk = bytes(1 << 20)
    per_flow = total_bytes // flows

    def flow():
        s = socket.create_connection((STACK, 9))
        left = per_flow
        while left > 0:
            n = min(left, len(chunk))
            s.sendall(memoryview(chunk)[:n])
            left -= n
        s.shutdown(socket.SHUT_WR)
        # discard closes once it has read everything: every byte arrived.
        if s.recv(1) != b"":
            raise RuntimeError("discard sent data")
        s.close()

    threads = [threading.Thread(target=flow) for _ in range(flows)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per_flow * flows


def connections(clients, seconds):
    counts = [0] * clients
    stop = time.monotonic() + seconds

    def client(i):
        while time.monotonic() < stop:
            s = socket.create_connection((STACK, 7))
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise RuntimeError("no echo")
            s.close()
            counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def measure(pid, cpus, run):
    p0, s0, b0, t0, w0 = process_seconds(pid), self_seconds(), busy_seconds(cpus), thread_seconds(pid), time.monotonic()
    units = run()
    p1, s1, b1, t1, w1 = process_seconds(pid), self_seconds(), busy_seconds(cpus), thread_seconds(pid), time.monotonic()
    loops = {k: round(v - t0.get(k, 0), 2) for k, v in t1.items() if v - t0.get(k, 0) > 0}
    return units, w1 - w0, p1 - p0, s1 - s0, b1 - b0, loops


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--cpus", default="0")
    a.add_argument("--queues", type=int, default=1)
    a.add_argument("--flows", type=int, default=4)
    a.add_argument("--mib", type=int, default=2048)
    a.add_argument("--conn-clients", type=int, default=4)
    a.add_argument("--seconds", type=float, default=5)
    a.add_argument("--cases", default="bulk,conn")
    a.add_argument("--inside", action="store_true")
    args = a.parse_args()
    cpus = {int(c) for c in args.cpus.split(",")}
    if not args.inside:
        os.execvp("taskset", ["taskset", "-c", args.cpus, "unshare", "--net", sys.executable, __file__, "--inside"] + sys.argv[1:])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for key, value in [("net.ipv4.tcp_tw_reuse", "1"), ("net.ipv4.ip_local_port_range", "10000 65000")]:
        subprocess.run(["sysctl", "-q", "-w", f"{key}={value}"], check=True)
    serve = subprocess.Popen(["dotnet", NETSTACK, "serve", "--tun", "mq%d", "--ip", STACK, "--host-ip", HOST, "--ip6", "none",
                              "--queues", str(args.queues), "--discard", "9", "--echo", "7"],
                             stdout=subprocess.PIPE, text=True)
    try:
        line = serve.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"serve: {line}")
        cases = args.cases.split(",")
        label = f"cpus {args.cpus} queues {args.queues}"
        if "bulk" in cases:
            bulk(args.flows, 512 << 20)  # warm-up: the JIT's optimized code
            n, wall, stack, client, busy, loops = measure(serve.pid, cpus, lambda: bulk(args.flows, args.mib << 20))
            gb = n / 1e9
            per_loop = {k: round(v / gb, 3) for k, v in loops.items()}
            print(f"{label} bulk {args.flows} flows: {n * 8 / wall / 1e9:.2f} Gbit/s; processor s per GB: stack {stack / gb:.3f} "
                  f"(engine loops {per_loop}), client {client / gb:.3f}, cpus busy {busy / gb:.3f} (of {len(cpus) * wall / gb:.3f} available)",
                  flush=True)
        if "conn" in cases:
            connections(args.conn_clients, 3)  # warm-up
            n, wall, stack, client, busy, loops = measure(serve.pid, cpus, lambda: connections(args.conn_clients, args.seconds))
            per_loop = {k: round(v / n * 1e6) for k, v in loops.items()}
            print(f"{label} conn {args.conn_clients} clients: {n / wall:.0f} connections/s; processor µs per connection: "
                  f"stack {stack / n * 1e6:.0f} (engine loops {per_loop}), client {client / n * 1e6:.0f}, cpus busy {busy / n * 1e6:.0f} "
                  f"(of {len(cpus) * wall / n * 1e6:.0f} available)", flush=True)
    finally:
        serve.terminate()
        serve.wait(30)


if __name__ == "__main__":
    main()
