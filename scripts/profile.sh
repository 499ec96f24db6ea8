#!/usr/bin/env bash
# CPU profiles of a cairn server under `cairn bench` load, as flamegraph SVGs.
#
#   scripts/profile.sh [OUT_DIR]          # default bench-results/profile-<date>-<host>/
#
# For each case of PROFILE_CASES (default "put-1 put-64"; MODE-CLIENTS where MODE is a
# `cairn bench` mode: put, txn-put, range, ...) a fresh one-member cairn is started, the
# load runs for PROFILE_SECONDS (default 5) after a 1 s warm-up, and `perf record` samples
# the server (all threads, call graphs from DWARF unwinding: the release profile keeps line
# tables) during the measured part. Writes per case: CASE.svg (scripts/flamegraph.py),
# CASE.folded.gz (collapsed stacks, for other flamegraph tools), CASE.json (the bench result), CASE.threads.txt (samples
# per thread name). Needs `perf` (Debian: linux-perf) and root or perf_event_paranoid <= 1.
#
# Knobs: CAIRN_BIN (default $CARGO_TARGET_DIR/release/cairn), PROFILE_PORT (43379),
# PROFILE_FREQ (sampling Hz, 499), CAIRN_EXTRA_ARGS.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-bench-results/profile-$(date -u +%Y%m%d-%H%M)-$(hostname -s)}
cases=${PROFILE_CASES:-put-1 put-64}
seconds=${PROFILE_SECONDS:-5}
port=${PROFILE_PORT:-43379}
freq=${PROFILE_FREQ:-499}
cairn=${CAIRN_BIN:-${CARGO_TARGET_DIR:-/var/tmp/cairn-target}/release/cairn}
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 1; }
[ -x "$cairn" ] || { echo "no cairn binary at $cairn (set CAIRN_BIN)" >&2; exit 1; }
mkdir -p "$out"
work=$(mktemp -d)
server=""
cleanup() {
	[ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

start_cairn() {
	local data="$work/data-$1" at="127.0.0.1:$port" peer="http://127.0.0.1:$((port + 1))"
	# shellcheck disable=SC2086 # CAIRN_EXTRA_ARGS is a list of words
	"$cairn" --name p --data-dir "$data" --listen-client-urls "http://$at" \
		--advertise-client-urls "http://$at" --listen-peer-urls "$peer" \
		--initial-advertise-peer-urls "$peer" --initial-cluster "p=$peer" \
		${CAIRN_EXTRA_ARGS:-} >"$work/server-$1.log" 2>&1 &
	server=$!
	for _ in $(seq 100); do
		"$cairn" bench put --endpoints "$at" --total 1 --warmup 0s >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "cairn did not start; log:" >&2
	tail -n 20 "$work/server-$1.log" >&2
	exit 1
}

for case in $cases; do
	mode=${case%-*}
	clients=${case##*-}
	start_cairn "$case"
	extra=()
	[ "$mode" = range ] && extra=(--preload --key-space 10000)
	"$cairn" bench "$mode" --endpoints "127.0.0.1:$port" --clients "$clients" \
		--duration "${seconds}s" --warmup 1s "${extra[@]}" >"$work/$case.out" 2>&1 &
	bench=$!
	# Preloading (range) takes a while: wait for it before the warm-up.
	for _ in $(seq 600); do
		grep -q preloaded "$work/$case.out" 2>/dev/null || [ "$mode" != range ] && break
		sleep 0.1
	done
	sleep 1
	perf record -q -F "$freq" --call-graph dwarf,16384 -p "$server" -o "$work/$case.data" \
		-- sleep "$seconds" >/dev/null 2>&1
	wait "$bench" || { cat "$work/$case.out" >&2; exit 1; }
	grep -v '^BENCH_RESULT' "$work/$case.out" | tail -n 1
	sed -n 's/^BENCH_RESULT //p' "$work/$case.out" >"$out/$case.json"
	perf script -i "$work/$case.data" 2>/dev/null >"$work/$case.perf"
	python3 "$here/flamegraph.py" --title "cairn server, $mode, $clients clients" \
		--folded "$out/$case.folded" "$work/$case.perf" >"$out/$case.svg"
	awk '{ n = $NF; split($1, f, ";"); t[f[1]] += n; all += n }
		END { for (k in t) printf "%6.1f%%  %s\n", 100 * t[k] / all, k }' \
		"$out/$case.folded" | sort -rn >"$out/$case.threads.txt"
	gzip -f "$out/$case.folded"
	kill "$server"
	wait "$server" 2>/dev/null || true
	server=""
done
echo "flamegraphs in $out"
