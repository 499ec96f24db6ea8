# Sourced by the syscall-trace scripts (reply-gaps.sh, ack-order.sh): one fresh
# single-member server, cairn or etcd (both take etcd's flags), on 127.0.0.1.

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
}
