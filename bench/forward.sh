#!/usr/bin/env bash
# Side-by-side forwarding benchmark (issue 18, "Speed"): a program in a network namespace talks to
# a server on the host's loopback through user-mode networking. One run measures, for each tool
# and MTU, TCP throughput both ways (iperf3), short TCP connections per second (ab) and the
# processor time of the forwarding process per GB, and prints one Markdown table.
#
#   sudo bench/forward.sh [--bytes SIZE] [--buffer SIZE] [--conns N] [--concurrency N]
#                         [--warmup SECONDS] [--repeat N] [--rows LIST] [--netstack "COMMAND"]
#                         [--netstack-gateway ADDR]
#
# Columns (rows are TOOL:MTU, MTU a number or "default" = whatever the tool picks by itself):
#   direct       the client on the host itself (no namespace, no forwarder): the kernel's
#                loopback, the reference the others are measured against; "1500" sets lo's MTU
#   slirp4netns  libslirp; its default MTU is 1500, 65520 is the largest it takes and what its
#                documentation recommends for speed
#   pasta        passt in pasta mode; default MTU 65520
#   netstack     `netstack run -- COMMAND` (issue 18); "not available" until that verb exists
#
# Network safety: every row runs in namespaces this script creates. The "host" of a row is a fresh
# network namespace (unshare --net) with only lo up (and, for pasta, a veth pair whose both ends
# stay in that namespace, see below): the servers listen on its 127.0.0.1, and the client's
# namespace is a child of it. No packet can leave the machine. The row also gets its own PID and
# mount namespaces, so when the row ends the kernel kills every process it started and drops
# every mount it made; a trap stops them in order first.
#
# Needs root (namespaces, TUN), iperf3, ab (apache2-utils), python3, slirp4netns, passt (pasta),
# iproute2, util-linux: on Debian `apt-get install iperf3 apache2-utils slirp4netns passt`.
set -euo pipefail

SELF=$(readlink -f "$0")
REPO=$(dirname "$(dirname "$SELF")")
IPERF_PORT=5201
HTTP_PORT=8080

# ---------------------------------------------------------------------------------------------
# One row, run as PID 1 of its own PID, mount and network namespaces (see main below).
# Arguments: TOOL MTU. Writes one tab-separated line to $STATE/result (stdout is the tools'
# chatter, which main sends to stderr):
#   TOOL MTU ns->host-Gbit/s host->ns-Gbit/s conn/s cpu-s/GB(ns->host) cpu-s/GB(host->ns) note
# Diagnostics go to stderr.
# ---------------------------------------------------------------------------------------------
row() {
  local tool=$1 mtu=$2
  local nsexec=() target="" ifmtu=""
  # Global: the EXIT trap and the helpers below read them.
  pids=() holder="" toolpid=""
  # shellcheck disable=SC2317 # called by the EXIT trap
  cleanup() {
    # Stop what this row started, newest first, by PID: SIGTERM, then SIGKILL after 5 s. The
    # PID namespace ends anything else when this shell (its PID 1) exits.
    local i p
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
      kill "${pids[i]}" 2>/dev/null || true
    done
    for ((i = 0; i < 50; i++)); do
      p=""
      for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && break; p=""; done
      [ -z "$p" ] && break
      sleep 0.1
    done
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    umount "$STATE/netns" 2>/dev/null || true
  }
  trap cleanup EXIT
  log() { echo "[$tool $mtu] $*" >&2; }
  fail() {
    log "$*"
    printf '%s\t%s\t-\t-\t-\t-\t-\t%s\n' "$tool" "$mtu" "$*" >"$STATE/result"
    exit 0
  }

  # The host namespace of this row.
  ip link set lo up
  # Connections per second: enough ephemeral ports, and reuse of TIME-WAIT ones.
  sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1

  # The servers on the host's loopback. iperf3 for bulk. For connections a tiny HTTP/1.0 server
  # on one epoll loop: accept, read the request, write a fixed 2-byte answer, close. Never blocking
  # on one connection matters: slirp4netns sometimes opens a host connection that never carries
  # data, and a server blocked reading it stalls every other client (ab then times out). Measured
  # at about a third of one core when ab drives it directly at 15,000-30,000 connections/s (ab,
  # single-threaded, is the limit there), so it is not what limits any column.
  iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >/dev/null 2>&1 &
  pids+=($!)
  python3 -c '
import selectors, socket, sys
answer = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen(4096)
listener.setblocking(False)
sel = selectors.EpollSelector()
sel.register(listener, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s is listener:
            while True:
                try:
                    c, _ = listener.accept()
                except BlockingIOError:
                    break
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ)
        else:
            sel.unregister(s)
            try:
                if s.recv(4096):
                    s.send(answer)
            except OSError:
                pass
            s.close()
' "$HTTP_PORT" 2>/dev/null &
  pids+=($!)

  # A namespace for the client: a holder process keeps it alive.
  new_holder() {
    unshare --net sleep infinity &
    holder=$!
    pids+=("$holder")
    nsexec=(nsenter --net=/proc/"$holder"/ns/net)
    "${nsexec[@]}" ip link set lo up
    "${nsexec[@]}" sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1
  }

  case $tool in
    direct)
      # No namespace, no forwarder: the client runs here, against 127.0.0.1.
      [ "$mtu" = default ] || ip link set lo mtu "$mtu"
      nsexec=()
      target=127.0.0.1
      ;;
    slirp4netns)
      new_holder
      # --configure: slirp4netns gives tap0 10.0.2.100/24 and a default route via 10.0.2.2,
      # which it maps to the host's 127.0.0.1 (no --disable-host-loopback).
      local mtuopt=()
      [ "$mtu" = default ] || mtuopt=(--mtu="$mtu")
      slirp4netns --configure "${mtuopt[@]}" "$holder" tap0 >/dev/null 2>&1 &
      toolpid=$!
      pids+=("$toolpid")
      ;;
    pasta)
      # pasta copies the address, prefix and gateway of the host's interface with the default
      # route, and refuses to start without one: hence a veth pair here, both ends in this row's
      # host namespace (the other end has no address, so nothing ever answers on it), with
      # 198.18.0.1/24 (RFC 2544's benchmarking range) and a default route via 198.18.0.254. In the
      # namespace pasta gives its interface 198.18.0.1/24 and the route via 198.18.0.254, which
      # it maps to the host's loopback (--map-gw, its default).
      ip link add bench0 type veth peer name bench1
      ip addr add 198.18.0.1/24 dev bench0
      ip link set bench0 up
      ip link set bench1 up
      ip route add default via 198.18.0.254 dev bench0
      new_holder
      # As root pasta switches to nobody unless --runas 0, and then cannot enter root's
      # namespace; it joins a network namespace by path (a bind mount of the holder's, private
      # to this row's mount namespace). -f: stay in the foreground (we own its PID); -q: quiet;
      # -4: IPv4 only (the host namespace has no IPv6 route); -t/-u/-T/-U none: no port
      # forwarding, which the benchmark does not use; --config-net: address, route and MTU on
      # the interface itself (without it only DHCP would tell them); -m: the MTU (default 65520).
      touch "$STATE/netns"
      mount --bind /proc/"$holder"/ns/net "$STATE/netns"
      local mtuopt=()
      [ "$mtu" = default ] || mtuopt=(-m "$mtu")
      pasta -f -q -4 --runas 0 "${mtuopt[@]}" -t none -u none -T none -U none --config-net \
        --netns "$STATE/netns" >/dev/null 2>&1 &
      toolpid=$!
      pids+=("$toolpid")
      ;;
    netstack)
      # `netstack run [--mtu M] -- COMMAND` makes the namespace itself; COMMAND is the holder.
      local mtuopt=()
      [ "$mtu" = default ] || mtuopt=(--mtu "$mtu")
      # shellcheck disable=SC2086 # NETSTACK is a command line (e.g. "dotnet path/netstack.dll")
      $NETSTACK run "${mtuopt[@]}" -- sleep infinity &
      toolpid=$!
      pids+=("$toolpid")
      # The holder: the descendant of netstack that runs `sleep` in another network namespace.
      local mine i p
      mine=$(readlink /proc/self/ns/net)
      for ((i = 0; i < 300; i++)); do
        for p in $(descendants "$toolpid"); do
          if [ "$(cat /proc/"$p"/comm 2>/dev/null)" = sleep ] &&
            [ "$(readlink /proc/"$p"/ns/net 2>/dev/null)" != "$mine" ]; then
            holder=$p
          fi
        done
        [ -n "$holder" ] && break
        kill -0 "$toolpid" 2>/dev/null || fail "netstack run exited before its command ran"
        sleep 0.1
      done
      [ -n "$holder" ] || fail "no namespace from netstack run in 30 s"
      nsexec=(nsenter --net=/proc/"$holder"/ns/net)
      ;;
    *) fail "unknown tool" ;;
  esac

  if [ "$tool" != direct ]; then
    # Up when the namespace has a default route; the target is its gateway, the address each
    # tool maps to the host's loopback.
    local route="" i
    for ((i = 0; i < 300; i++)); do
      route=$("${nsexec[@]}" ip -4 route show default 2>/dev/null | head -n 1)
      [ -n "$route" ] && break
      kill -0 "$toolpid" 2>/dev/null || fail "$tool exited while starting"
      sleep 0.1
    done
    [ -n "$route" ] || fail "no default route in the namespace after 30 s"
    target=$(awk '{for (i = 1; i < NF; i++) if ($i == "via") print $(i + 1)}' <<<"$route")
    [ "$tool" = netstack ] && [ -n "${NETSTACK_GATEWAY:-}" ] && target=$NETSTACK_GATEWAY
    [ -n "$target" ] || fail "default route without a gateway ($route): give --netstack-gateway"
    local dev
    dev=$(awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}' <<<"$route")
    # The namespace's own interface (/sys/class/net shows the namespace that mounted sysfs).
    ifmtu=$("${nsexec[@]}" ip -o link show dev "$dev" | awk '{for (i = 1; i < NF; i++) if ($i == "mtu") print $(i + 1)}')
  else
    ifmtu=$(ip -o link show dev lo | awk '{for (i = 1; i < NF; i++) if ($i == "mtu") print $(i + 1)}')
  fi

  # Ready when a connection through the tool reaches the HTTP server.
  local ok=""
  for ((i = 0; i < 300; i++)); do
    if "${nsexec[@]}" timeout 2 bash -c "exec 3<>/dev/tcp/$target/$HTTP_PORT" 2>/dev/null; then
      ok=1
      break
    fi
    sleep 0.1
  done
  [ -n "$ok" ] || fail "no TCP connection to $target:$HTTP_PORT through $tool in 30 s"
  log "up: target $target, MTU $ifmtu"

  # Warm-up (both directions, and connections): lets a JIT compile the hot paths and every tool
  # grow its buffers before the clock starts.
  if [ "$WARMUP" != 0 ]; then
    "${nsexec[@]}" timeout 120 iperf3 -c "$target" -p "$IPERF_PORT" -t "$WARMUP" -l "$BUFFER" >/dev/null 2>&1 || true
    "${nsexec[@]}" timeout 120 iperf3 -c "$target" -p "$IPERF_PORT" -t "$WARMUP" -l "$BUFFER" -R >/dev/null 2>&1 || true
    "${nsexec[@]}" timeout 120 ab -q -n 1000 -c "$CONCURRENCY" "http://$target:$HTTP_PORT/" >/dev/null 2>&1 || true
  fi

  # One iperf3 transfer of BYTES; prints "Gbit/s cpu-s/GB".
  transfer() {
    local json before after
    before=$(tool_ticks)
    if ! json=$("${nsexec[@]}" timeout 600 iperf3 -c "$target" -p "$IPERF_PORT" -n "$BYTES" -l "$BUFFER" -J "$@" 2>&1); then
      log "iperf3 $* failed: $(tail -c 400 <<<"$json")"
      echo "- -"
      return
    fi
    [ -z "${DEBUG_JSON:-}" ] || printf '%s\n' "$json" >"$DEBUG_JSON.$tool.$mtu${1:-}"
    after=$(tool_ticks)
    python3 -c '
import json, sys
result = json.loads(sys.stdin.read())
if "error" in result or "sum_received" not in result.get("end", {}):
    print("iperf3: %s (end has %s)" % (result.get("error", "no result"), sorted(result.get("end", {}))), file=sys.stderr)
    print("- -")
    sys.exit(0)
end = result["end"]["sum_received"]
ticks, hz, direct = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
gb = end["bytes"] / 1e9
cpu = "-" if direct else "%.2f" % (ticks / hz / gb)
print("%.2f %s" % (end["bits_per_second"] / 1e9, cpu))
' "$((after - before))" "$(getconf CLK_TCK)" "$([ "$tool" = direct ] && echo 1 || echo 0)" <<<"$json"
  }
  # Processor time (clock ticks) of the forwarding tool: user + system time of its process and
  # every descendant except the holder (and of their reaped children).
  tool_ticks() {
    [ -n "$toolpid" ] || {
      echo 0
      return
    }
    local p sum=0 t skip
    skip=" $( [ -n "$holder" ] && { echo "$holder"; descendants "$holder"; } | tr '\n' ' ') "
    for p in $toolpid $(descendants "$toolpid"); do
      [[ "$skip" == *" $p "* ]] && continue
      # Fields after the command name (which may hold spaces): utime, stime, cutime, cstime are
      # the 12th to 15th after the closing parenthesis.
      t=$(sed 's/^.*) //' /proc/"$p"/stat 2>/dev/null | awk '{print $12 + $13 + $14 + $15}') || t=0
      sum=$((sum + ${t:-0}))
    done
    echo "$sum"
  }

  local out_gbps out_cpu in_gbps in_cpu conns
  read -r out_gbps out_cpu <<<"$(transfer)"
  read -r in_gbps in_cpu <<<"$(transfer -R)"
  local ab note=""
  if ab=$("${nsexec[@]}" timeout 600 ab -q -n "$CONNS" -c "$CONCURRENCY" "http://$target:$HTTP_PORT/" 2>&1); then
    conns=$(awk '/^Requests per second:/ {printf "%.0f", $4}' <<<"$ab")
    local failed complete
    failed=$(awk '/^Failed requests:/ {print $3}' <<<"$ab")
    complete=$(awk '/^Complete requests:/ {print $3}' <<<"$ab")
    if [ "${failed:-0}" != 0 ] || [ "$complete" != "$CONNS" ]; then
      note="ab: $complete complete, $failed failed"
    fi
  else
    conns=-
    note="ab failed: $(grep -v '^Total of' <<<"$ab" | tail -n 1)"
    log "ab failed: $ab"
  fi
  if [ "${out_gbps:--}" = - ] || [ "${in_gbps:--}" = - ]; then
    note="iperf3 failed (its message is on stderr) ${note}"
  fi
  [ "$mtu" = default ] && mtu="$ifmtu (default)"
  [ "$mtu" = "$ifmtu" ] || [ "$mtu" = "$ifmtu (default)" ] || note="interface MTU $ifmtu ${note}"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$mtu" "${out_gbps:--}" "${in_gbps:--}" "${conns:--}" "${out_cpu:--}" "${in_cpu:--}" "${note:- }" >"$STATE/result"
}

# The PIDs of every descendant of $1 (children first).
descendants() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2; order[NR] = $1 }
    END {
      want[root] = 1
      do {
        grew = 0
        for (i = 1; i <= NR; i++) {
          p = order[i]
          if (!(p in want) && (parent[p] in want)) { want[p] = 1; grew = 1; print p }
        }
      } while (grew)
    }'
}

if [ "${1:-}" = __row ]; then
  row "$2" "$3"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# Main: options, one private namespace set per row, the table.
# ---------------------------------------------------------------------------------------------
usage() {
  sed -n '2,11p' "$SELF" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

BYTES=1G       # per transfer, iperf3 -n (K/M/G suffixes are powers of 1024)
BUFFER=1M      # iperf3 -l: bytes per write/read; 128K (iperf3's own default) makes iperf3
               # itself the limit on the direct row
CONNS=20000    # ab -n
CONCURRENCY=20 # ab -c
WARMUP=2       # seconds of iperf3 each way before measuring (0: none)
REPEAT=1       # rounds; each figure is the median over them
ROWS=direct:default,direct:1500,slirp4netns:default,slirp4netns:65520,pasta:default,pasta:1500,netstack:default,netstack:1500
NETSTACK="dotnet $REPO/NetStack.Cli/bin/Release/net10.0/netstack.dll"
NETSTACK_GATEWAY=""
while [ $# -gt 0 ]; do
  case $1 in
    --bytes) BYTES=$2; shift 2 ;;
    --buffer) BUFFER=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --rows) ROWS=$2; shift 2 ;;
    --netstack) NETSTACK=$2; shift 2 ;;
    --netstack-gateway) NETSTACK_GATEWAY=$2; shift 2 ;;
    -h | --help) usage 0 ;;
    *) echo "forward.sh: unknown argument '$1'" >&2; usage 2 ;;
  esac
done

[ "$(id -u)" = 0 ] || { echo "forward.sh: needs root (network namespaces, TUN)" >&2; exit 1; }
missing=()
for t in iperf3 ab python3 unshare nsenter ip slirp4netns pasta; do
  command -v "$t" >/dev/null || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "forward.sh: missing ${missing[*]} (Debian: apt-get install iperf3 apache2-utils python3 util-linux iproute2 slirp4netns passt)" >&2
  exit 1
fi

STATE=$(mktemp -d)
trap 'rm -rf "$STATE"' EXIT
export STATE BYTES BUFFER CONNS CONCURRENCY WARMUP NETSTACK NETSTACK_GATEWAY

# netstack's column exists once `netstack run` does: its help then has a "netstack run" usage line
# (without the verb, `netstack run --help` prints the root help and exits 0 all the same).
netstack_why=""
# shellcheck disable=SC2086
if ! $NETSTACK run --help >"$STATE/run-help" 2>&1 ||
  ! grep -Eq '^[[:space:]]*netstack run( |$)' "$STATE/run-help"; then
  netstack_why="not available (no 'netstack run' in: $NETSTACK)"
fi

version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"; }
echo "Forwarding benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), Linux $(uname -r)"
echo "slirp4netns $(version slirp4netns), passt $(version passt), iperf3 $(version iperf3), ab $(version apache2-utils), netstack $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "Command: bench/forward.sh --bytes $BYTES --buffer $BUFFER --conns $CONNS --concurrency $CONCURRENCY --warmup $WARMUP --repeat $REPEAT --rows $ROWS"
echo
echo "| tool | MTU | ns → host Gbit/s | host → ns Gbit/s | conn/s | CPU s/GB ns → host | CPU s/GB host → ns | note |"
echo "|---|---|---|---|---|---|---|---|"
IFS=, read -r -a rows <<<"$ROWS"
# Rounds: every row once per round, so a slow spell of the machine touches all tools alike.
for ((round = 1; round <= REPEAT; round++)); do
  for ((k = 0; k < ${#rows[@]}; k++)); do
    r=${rows[k]}
    tool=${r%%:*}
    mtu=${r#*:}
    [ "$mtu" = "$r" ] && mtu=default
    if [ "$tool" = netstack ] && [ -n "$netstack_why" ]; then
      line=$(printf '%s\t%s\t-\t-\t-\t-\t-\t%s' "$tool" "$mtu" "$netstack_why")
    elif [ "$tool" = netstack ] && [ "$mtu" != default ] && ! grep -q -- '--mtu' "$STATE/run-help"; then
      line=$(printf '%s\t%s\t-\t-\t-\t-\t-\t%s' "$tool" "$mtu" "not available ('netstack run' has no --mtu)")
    else
      # The row's own network, PID and mount namespaces: nothing it does reaches this namespace,
      # and whatever it leaves running dies with its PID namespace.
      rm -f "$STATE/result"
      status=0
      unshare --net --pid --mount --fork --mount-proc --kill-child -- bash "$SELF" __row "$tool" "$mtu" >&2 || status=$?
      line=$(cat "$STATE/result" 2>/dev/null || true)
      [ -n "$line" ] || line=$(printf '%s\t%s\t-\t-\t-\t-\t-\t%s' "$tool" "$mtu" "row failed (exit $status) before its result")
    fi
    printf '%s\t%s\n' "$k" "$line" >>"$STATE/results"
    echo "round $round: $line" >&2
  done
done

# One line per row: the median of each figure over the rounds that gave one.
python3 - "$STATE/results" "$REPEAT" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    k, tool, mtu, *figures, note = line.rstrip("\n").split("\t")
    row = rows.setdefault(int(k), {"tool": tool, "mtu": mtu, "figures": [[] for _ in figures], "notes": []})
    for column, value in zip(row["figures"], figures):
        if value != "-":
            column.append(float(value))
    if note.strip() and note.strip() not in row["notes"]:
        row["notes"].append(note.strip())
for k in sorted(rows):
    row = rows[k]
    cells = []
    for i, column in enumerate(row["figures"]):
        if not column:
            cells.append("-")
        elif i == 2:
            cells.append("{:,.0f}".format(statistics.median(column)))
        else:
            cells.append("%.2f" % statistics.median(column))
        if column and len(column) < int(sys.argv[2]):
            cells[-1] += " (%d of %s runs)" % (len(column), sys.argv[2])
    print("| %s | %s | %s | %s |" % (row["tool"], row["mtu"], " | ".join(cells), "; ".join(row["notes"])))
PY
