# Sourced by the syscall-trace scripts (reply-gaps.sh, ack-order.sh): one fresh
# single-member server, cairn or etcd (both take etcd's flags), on 127.0.0.1, traced
# with `perf` while `cairn bench` puts to it.

# start_single_node BIN OUT PORT: serves clients on PORT and peers on PORT + 10, data in
# OUT/data, log in OUT/server.log (OUT is emptied first); sets $server to its pid and
# kills it when the calling script exits.
start_single_node() {
	local bin=$1 out=$2 port=$3
	local peer="http://127.0.0.1:$((port + 10))"
	rm -rf "$out"
	mkdir -p "$out"
	"$bin" --data-dir "$out/data" --listen-client-urls "http://127.0.0.1:$port" \
		--advertise-client-urls "http://127.0.0.1:$port" --listen-peer-urls "$peer" \
		--initial-advertise-peer-urls "$peer" --initial-cluster "default=$peer" \
		--log-level error >"$out/server.log" 2>&1 &
	server=$!
	trap 'kill -9 $server 2>/dev/null || true' EXIT
	traced_port=$port
	traced_out=$out
}

# trace_puts BENCH_BIN CLIENTS SECONDS EVENTS: puts from CLIENTS clients of BENCH_BIN's
# `cairn bench` to the server started above, and after 2 s of them a `perf record` of
# the server's EVENTS for SECONDS into OUT/sc.data; prints the bench's summary line.
trace_puts() {
	local bench=$1 clients=$2 seconds=$3 events=$4 load
	sleep 1.5
	"$bench" bench put --clients "$clients" --duration "$((seconds + 3))s" --warmup 1s \
		--key-space 10000 --endpoints "127.0.0.1:$traced_port" 2>/dev/null | grep '^put' &
	load=$!
	sleep 2
	perf record -q -e "$events" -p "$server" -o "$traced_out/sc.data" -- sleep "$seconds" 2>/dev/null
	wait "$load"
}
