#!/usr/bin/env bash
# The one test command: installs the test dependencies, builds the example plugins and cairn,
# runs every unit and integration test, then clippy and rustfmt. Fails on the first failure.
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

# Example plugins (issue 12): their own workspace, built for wasm32-wasip2 into
# plugins/target, where config/plugins.yaml and the integration tests find them. Their
# logic is tested natively, and they are linted for the target they ship on.
rustup target add wasm32-wasip2
(
  cd plugins
  cargo build --release --target wasm32-wasip2 --target-dir target
  cargo test --target-dir target
  cargo clippy --target wasm32-wasip2 --target-dir target --all-targets -- -D warnings
  cargo fmt --all --check
)

cargo build -p cairn
export CAIRN_BIN="$CARGO_TARGET_DIR/debug/cairn"

cargo test --workspace -- --test-threads="${CAIRN_TEST_THREADS:-4}"
cargo clippy --workspace --all-targets -- -D warnings
cargo fmt --all --check
echo "all checks passed"
