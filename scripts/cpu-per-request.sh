#!/usr/bin/env bash
# Server CPU time per single-key range (linearizable and serializable), for comparing builds
# on a busy machine: throughput there follows the neighbours' load, CPU per request much less.
#
#   scripts/cpu-per-request.sh OLD_BIN NEW_BIN ...     # alternating rounds, medians printed
#
# Each round starts each binary on a fresh data dir (127.0.0.1:23791), preloads 10,000 keys,
# then reads the server's utime+stime (/proc/PID/stat) around CAIRN_CPU_REQUESTS (60,000)
# ranges from 64 clients. The load generator is the last binary's `cairn bench`.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BIN [BIN...]" >&2; exit 2; }
rounds=${CAIRN_CPU_ROUNDS:-3}
requests=${CAIRN_CPU_REQUESTS:-60000}
endpoint=127.0.0.1:23791
load=${!#}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# measure BIN CONSISTENCY: prints µs of server CPU per request.
measure() {
	local bin=$1 consistency=$2 pid t0 t1
	rm -rf "$work/data"
	"$bin" --data-dir "$work/data" --listen-client-urls "http://$endpoint" \
		--advertise-client-urls "http://$endpoint" --listen-peer-urls http://127.0.0.1:23801 \
		>"$work/server.log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do curl -sf "http://$endpoint/health" >/dev/null && break; sleep 0.1; done
	"$load" bench range --endpoints "$endpoint" --clients 64 --preload --total 20000 \
		--key-space 10000 >/dev/null
	t0=$(cpu_ticks "$pid")
	"$load" bench range --consistency "$consistency" --endpoints "$endpoint" --clients 64 \
		--total "$requests" --warmup 0s --key-space 10000 >/dev/null
	t1=$(cpu_ticks "$pid")
	kill -9 "$pid"
	wait "$pid" 2>/dev/null || true
	echo $(((t1 - t0) * 10000000 / $(getconf CLK_TCK) / requests / 10))
}

for round in $(seq "$rounds"); do
	for consistency in l s; do
		for bin in "$@"; do
			echo "$bin $consistency $(measure "$bin" "$consistency")" | tee -a "$work/results"
		done
	done
done
echo "medians, µs of server CPU per range:"
for bin in "$@"; do
	for consistency in l s; do
		sort -n <(awk -v b="$bin" -v c="$consistency" '$1 == b && $2 == c {print $3}' "$work/results") |
			awk -v b="$bin" -v c="$consistency" '{v[NR] = $1} END {print b, c, v[int((NR + 1) / 2)]}'
	done
done
