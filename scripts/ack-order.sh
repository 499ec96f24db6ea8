#!/usr/bin/env bash
# Does a server answer a put before the fsync that makes it durable? Starts a fresh
# single-node server (cairn, or etcd when the first argument is `etcd`), puts from one
# client, traces the server's syscalls for 1 s with `perf`, and for each request matches:
# the request's read from the client socket, the next fdatasync of the server's log file
# (the file fdatasynced most often) and when it returned, and the reply (the largest write
# to that socket before the next request; HTTP/2 pings and window updates are smaller than
# a put's reply).
# Prints how many replies left before their fdatasync returned, and by how much, then where
# a request's time goes (medians): in the server before its fdatasync, the fdatasync, after
# it until the reply, and from the reply to the next request's read (the client and both
# kernels' loopback: the part no server change can shorten).
#
#   scripts/ack-order.sh [cairn|etcd] [OUT_DIR]   # default: cairn, /tmp/ack-order
#
# CAIRN_BIN (default $CARGO_TARGET_DIR/release/cairn) is the server for cairn and the load
# generator for both; ETCD_BIN (default: etcd on PATH). Needs perf (Debian's linux-perf)
# and root or perf_event_paranoid <= 1. BENCHMARKS.md (issue 15, round 10) shows etcd
# 3.5.1 answering most single-node puts before their WAL fdatasync returns (etcd#14370);
# cairn answers after it.
set -euo pipefail
SERVER=${1:-cairn}
OUT=${2:-/tmp/ack-order}
PORT=${BENCH_PORT:-23790}
CAIRN=${CAIRN_BIN:-${CARGO_TARGET_DIR:-target}/release/cairn}
case $SERVER in
cairn) BIN=$CAIRN ;;
etcd) BIN=${ETCD_BIN:-$(command -v etcd)} ;;
*) echo "usage: $0 [cairn|etcd] [OUT_DIR]" >&2 && exit 2 ;;
esac
# shellcheck source=scripts/single-node.sh
source "$(dirname "$0")/single-node.sh"
start_single_node "$BIN" "$OUT" "$PORT"
events=syscalls:sys_enter_fdatasync,syscalls:sys_exit_fdatasync
for call in read recvfrom write writev sendto; do
	events+=,syscalls:sys_enter_$call,syscalls:sys_exit_$call
done
trace_puts "$CAIRN" 1 1 "$events"
perf script -i "$OUT/sc.data" -F tid,time,event,trace 2>/dev/null >"$OUT/sc.txt"
python3 - "$OUT/sc.txt" <<'PY'
import collections, re, statistics, sys

# One event per line: tid, time, name, arguments (enter) or return value (exit).
events, entered = [], {}
for line in open(sys.argv[1]):
    m = re.match(r"\s*(\d+)\s+([\d.]+):\s+syscalls:sys_(enter|exit)_(\w+):\s*(.*)", line)
    if not m:
        continue
    tid, t, phase, call, rest = int(m[1]), float(m[2]), m[3], m[4], m[5]
    if phase == "enter":
        fd = re.search(r"fd: (0x[0-9a-f]+)", rest)
        entered[tid] = (call, int(fd[1], 16) if fd else None, t)
    elif tid in entered and entered[tid][0] == call:
        _, fd, t0 = entered.pop(tid)
        events.append((t0, t, call, fd, int(rest.split()[-1], 16)))
events.sort()
syncs = [e for e in events if e[2] == "fdatasync"]
if not syncs:
    sys.exit("no fdatasync traced")
log_fd = collections.Counter(e[3] for e in syncs).most_common(1)[0][0]
reads = [e for e in events if e[2] in ("read", "recvfrom") and 0 < e[4] < 1 << 40]
# The client socket: the descriptor the most request-sized reads came from.
sock = collections.Counter(e[3] for e in reads if e[4] > 100).most_common(1)[0][0]
requests = [e[0] for e in reads if e[3] == sock and e[4] > 100]
writes = [e for e in events if e[2] in ("write", "writev", "sendto") and e[3] == sock]
log_syncs = [(e[0], e[1]) for e in syncs if e[3] == log_fd]
early, late, leads = 0, 0, []
parts = collections.defaultdict(list)
for i, start in enumerate(requests[:-1]):
    sync = next((s for s in log_syncs if s[0] > start), None)
    replies = [w for w in writes if start < w[0] < requests[i + 1]]
    if sync is None or not replies or sync[0] > requests[i + 1]:
        continue
    reply = max(replies, key=lambda w: w[4])[0]
    parts["request read -> reply"].append(reply - start)
    parts["reply -> next request read"].append(requests[i + 1] - reply)
    parts["request read -> fdatasync call"].append(sync[0] - start)
    parts["fdatasync"].append(sync[1] - sync[0])
    if reply < sync[1]:
        early += 1
        leads.append((sync[1] - reply) * 1e6)
    else:
        late += 1
        parts["fdatasync return -> reply"].append(reply - sync[1])
total = early + late
print(f"requests matched: {total}; replies before their fdatasync returned: {early} "
      f"({100 * early / max(total, 1):.0f} %), after: {late}")
if leads:
    print(f"early replies left a median {statistics.median(leads):.0f} us before the fdatasync returned")
for name, spans in parts.items():
    print(f"  {name}: median {statistics.median(spans) * 1e6:.0f} us")
PY
