#!/usr/bin/env bash
# The test command (README.md): installs what the tests need, then runs
# every check CI runs: formatting, clippy with -D warnings, the crate with
# each optional feature alone, and every test (unit, integration, doc).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]} (Debian packages the tests use)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian starts an etcd service on install; the tests start their own on
# free ports and do not need it.

# Foreign gRPC servers in the interop tests: Python's grpcio (gRPC C-core).
if ! python3 -c 'import grpc' >/dev/null 2>&1; then
  echo "== installing grpcio (pip) for the interop tests"
  python3 -m pip install --quiet grpcio \
    || python3 -m pip install --quiet --break-system-packages grpcio
fi
# grpcio's health service, for the health-checking tests.
if ! python3 -c 'import grpc_health.v1.health' >/dev/null 2>&1; then
  echo "== installing grpcio-health-checking (pip) for the health tests"
  python3 -m pip install --quiet grpcio-health-checking \
    || python3 -m pip install --quiet --break-system-packages grpcio-health-checking
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== each optional feature alone"
cargo check --lib --no-default-features
cargo check --lib --no-default-features --features dns
cargo check --lib --no-default-features --features etcd
cargo check --lib --no-default-features --features discover
cargo check --lib --no-default-features --features tls
cargo check --lib --no-default-features --features tls-native-roots
cargo check --lib --no-default-features --features tls-webpki-roots
cargo check --lib --no-default-features --features otel
cargo check --lib --no-default-features --features channelz
echo "== cargo doc (warnings are errors: broken links, missing docs)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features
# What a user's `cargo doc` builds: links to items of optional features break here.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps
echo "== cargo test"
cargo test --all-features
