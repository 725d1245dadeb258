#!/usr/bin/env bash
# Runs the whole statecraft test suite on a fresh Debian machine.
# Installs what the tests need when it is missing (a Rust toolchain must be
# there already): redis-server and redis-cli (redis-tools) for the Redis and
# Redis Cluster tests, openssl for the TLS test's certificates, and the
# PostgreSQL server binaries. The tests start
# their own throw-away servers on loopback ports (PostgreSQL as the
# `postgres` user when run as root). Run as root or with sudo available.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 \
  || ls /usr/lib/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 || need_apt+=(faketime)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${need_apt[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-features --all-targets 2>&1 | tee "$log"
cargo test --workspace --all-features --doc 2>&1 | tee -a "$log"
# The local breaker under shuttle's scheduler (its own build, beside).
RUSTFLAGS="--cfg shuttle" cargo test -p statecraft --lib --target-dir target/shuttle shuttle 2>&1 | tee -a "$log"
# One closing line over every test binary and the doctests.
awk '/^test result:/ { p += $4; f += $6 } END { printf "total: %d passed, %d failed\n", p, f }' "$log"
