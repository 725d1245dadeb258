#!/usr/bin/env bash
# Runs `statecraft bench` against throw-away Redis, Redis Cluster and
# PostgreSQL servers on loopback (started here, removed on exit), so that
# the numbers in BENCHMARKS.md can be reproduced:
#
#   bash scripts/bench-remote.sh [extra statecraft bench flags…]
#
# Needs redis-server, redis-tools and PostgreSQL (bash scripts/test.sh
# installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d /tmp/statecraft-bench-XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  # runuser's pid is not the postmaster's: stop PostgreSQL by its data dir.
  [ -f "$work/pg/data/postmaster.pid" ] && \
    run_pg "$pg_bin/pg_ctl" -D "$work/pg/data" stop -m immediate >/dev/null 2>&1 || true
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  sleep 0.2
  rm -rf "$work"
}
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
run_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$work" --logfile "$work/redis.log" &
pids+=($!)

cluster_ports=()
for i in 1 2 3; do
  port=$((20000 + RANDOM % 20000))
  mkdir -p "$work/c$i"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --cluster-enabled yes --cluster-config-file nodes.conf \
    --dir "$work/c$i" --logfile "$work/c$i/redis.log" &
  pids+=($!)
  cluster_ports+=("$port")
done

pg_port=$(free_port)
mkdir -p "$work/pg"
[ "$(id -u)" -eq 0 ] && chown postgres "$work/pg"
run_pg "$pg_bin/initdb" -D "$work/pg/data" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
run_pg "$pg_bin/postgres" -D "$work/pg/data" -p "$pg_port" -k "$work/pg" \
  -c listen_addresses=127.0.0.1 -c max_connections=300 >"$work/pg.log" 2>&1 &
pids+=($!)

sleep 1
nodes=()
for port in "${cluster_ports[@]}"; do nodes+=("127.0.0.1:$port"); done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
until redis-cli -p "${cluster_ports[0]}" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
until "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port"; do sleep 0.1; done

cluster_url="redis+cluster://$(IFS=,; echo "${nodes[*]}")"
cargo run --release -q -p statecraft-cli -- bench \
  --backend "redis://127.0.0.1:$redis_port" \
  --backend "$cluster_url" \
  --backend "postgres://postgres@127.0.0.1:$pg_port/postgres" \
  "$@"
