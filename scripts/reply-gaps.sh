#!/usr/bin/env bash
# Finds write stalls: starts a fresh single-node server, puts from 64 clients, traces the
# server's syscalls for 5 s with `perf`, and prints the largest gaps between two replies
# (writes to client sockets) and every fsync or sync_file_range over 3 ms. To see what each
# thread did in a gap, read the trace it leaves: `perf script -i $OUT/sc.data`.
#
#   scripts/reply-gaps.sh [SERVER_BIN] [OUT_DIR]   # default: target/release/cairn, /tmp/reply-gaps
#
# Needs perf (Debian's linux-perf) and root or perf_event_paranoid <= 1. Round 9 of
# BENCHMARKS.md found fjall's locked housekeeping with it (57 ms gaps, 14 ms after).
set -euo pipefail
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/cairn}
OUT=${2:-/tmp/reply-gaps}
PORT=${BENCH_PORT:-23790}
# shellcheck source=scripts/single-node.sh
source "$(dirname "$0")/single-node.sh"
start_single_node "$BIN" "$OUT" "$PORT"
events=syscalls:sys_enter_fdatasync,syscalls:sys_exit_fdatasync,syscalls:sys_enter_fsync
events+=,syscalls:sys_exit_fsync,syscalls:sys_enter_sync_file_range,syscalls:sys_exit_sync_file_range
events+=,syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_sendto,syscalls:sys_enter_futex
events+=,syscalls:sys_exit_futex,syscalls:sys_enter_recvfrom
trace_puts "$BIN" 64 5 "$events"
perf script -i "$OUT/sc.data" -F tid,comm,time,event,trace 2>/dev/null >"$OUT/sc.txt"
python3 - "$OUT/sc.txt" <<'PY'
import re, sys
events = []
for line in open(sys.argv[1]):
    m = re.match(r'\s*(\S+)\s+(\d+)\s+([\d.]+):\s+syscalls:(\w+): (.*)', line)
    if m:
        events.append((float(m[3]), m[1], int(m[2]), m[4], m[5].split(',')[0]))
# Client sockets are the descriptors the server receives requests on.
sockets = {fd for _, _, _, e, fd in events if e == 'sys_enter_recvfrom'}
# Replies leave by send (sendto): cairn's connections report non-vectored writes.
writes = ('sys_enter_writev', 'sys_enter_write', 'sys_enter_sendto')
replies = [t for t, _, _, e, fd in events if e in writes and fd in sockets]
gaps = sorted(((b - a, a) for a, b in zip(replies, replies[1:])), reverse=True)[:8]
print('largest gaps between replies, ms (at trace time):')
print('  ' + '  '.join(f'{g * 1000:.1f} ({t:.3f})' for g, t in gaps))
started = {}
for t, comm, tid, e, _ in events:
    call = e.split('_', 2)[2]
    if e.startswith('sys_enter_') and call in ('fsync', 'fdatasync', 'sync_file_range'):
        started[(tid, call)] = t
    elif e.startswith('sys_exit_') and (tid, call) in started:
        took = t - started.pop((tid, call))
        if took > 0.003:
            print(f'  {call} by {comm}: {took * 1000:.1f} ms at {t - took:.3f}')
PY
