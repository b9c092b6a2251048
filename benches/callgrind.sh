#!/usr/bin/env bash
# Instructions per proxied request under callgrind: a steady figure on a noisy machine, where
# wall-clock req/s and CPU time swing with other load (valgrind counts instructions, the same
# for the same binary and inputs whatever else runs).
#
#   benches/callgrind.sh                         # builds release, measures target/release/gateway
#   SKIP_BUILD=1 benches/callgrind.sh BIN_A BIN_B  # compare binaries (run each twice, alternate)
#
# Starts a one-worker nginx upstream and the gateway (1 worker, plain HTTP, access log off) on
# free loopback ports, warms the pool with wrk, zeroes callgrind's counters, runs
# `wrk -t1 -c16 -d$DURATION`, dumps, and prints PROGRAM TOTALS / requests. The profile stays
# in $TMP (printed) for `callgrind_annotate --inclusive=no --threshold=100 FILE`.
set -euo pipefail
DURATION="${DURATION:-8s}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[callgrind] %s\n' "$*" >&2; }

source "$ROOT/benches/lib.sh"
need_tools valgrind=valgrind wrk=wrk nginx=nginx-light curl=curl python3=python3
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then (cd "$ROOT" && cargo build --release --quiet); fi
BINS=("$@"); ((${#BINS[@]})) || BINS=("$ROOT/target/release/gateway")

bench_tmp callgrind keep   # the profiles stay for callgrind_annotate

UP=$(free_port); GW=$(free_port)
cat > "$TMP/up.conf" <<EOF
worker_processes 1; daemon off; pid $TMP/up.pid; error_log $TMP/up.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "hello world\n"; } } }
EOF
"$NGINX" -c "$TMP/up.conf" -p "$TMP" >/dev/null 2>&1 & PIDS+=($!)
cat > "$TMP/gw.yaml" <<EOF
server: { worker_threads: 1 }
listeners:
  - { name: http, bind: "127.0.0.1:$GW" }
upstreams:
  app: { servers: ["127.0.0.1:$UP"], pool: { max_idle_per_server: 128, idle_timeout: 90s } }
routes:
  - { match: { path_prefix: / }, upstream: app }
logging: { level: warn, access_log: false }
EOF

for bin in "${BINS[@]}"; do
  out="$TMP/cg.$(basename "$bin").$RANDOM.out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" run -c "$TMP/gw.yaml" >"$TMP/gw.log" 2>&1 &
  pid=$!; PIDS+=($pid)
  for _ in $(seq 1 100); do curl -s -o /dev/null "127.0.0.1:$GW/" && break; sleep 0.2; done
  wrk -t1 -c16 -d3s "http://127.0.0.1:$GW/" >/dev/null          # warm the upstream pool
  callgrind_control -z "$pid" >/dev/null
  res=$(wrk -t1 -c16 -d"$DURATION" "http://127.0.0.1:$GW/")
  callgrind_control -d "$pid" >/dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
  reqs=$(awk '/requests in/{print $1}' <<<"$res")
  file=$(ls -t "$out".* | head -1)
  ir=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
  echo "$bin requests=$reqs Ir/request=$((ir / reqs)) profile=$file"
done
