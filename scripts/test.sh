#!/usr/bin/env bash
# The one test command: installs the test dependencies, builds cairn, runs every unit and
# integration test, then clippy and rustfmt. Fails on the first failure.
#
#   scripts/test.sh                          # against cairn
#   CAIRN_TEST_SERVER=etcd scripts/test.sh   # the same integration tests against etcd 3.5.1
#
# CARGO_TARGET_DIR defaults to /var/tmp/cairn-target: outside the repository and persistent,
# so runs are incremental. CAIRN_TEST_THREADS (default 4) bounds parallel tests; each test
# owns its server process, ports and data directory.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/cairn-target}"
cargo build -p cairn
export CAIRN_BIN="$CARGO_TARGET_DIR/debug/cairn"

cargo test --workspace -- --test-threads="${CAIRN_TEST_THREADS:-4}"
cargo clippy --workspace --all-targets -- -D warnings
cargo fmt --all --check
echo "all checks passed"
