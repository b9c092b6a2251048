#!/usr/bin/env bash
# Benchmark: a JWT-protected route against the same route without JWT, on one gateway, in one
# run, alternating A B C A B C (issue 3's target: JWT route >= 0.9x the req/s of the open route).
#
#   benches/jwt.sh                          # DURATION=8s ROUNDS=3, HS256 and RS256
#   SKIP_BUILD=1 DURATION=5s benches/jwt.sh
#
# Traffic goes to 127.0.0.1 only. Needs nginx (the fast upstream), wrk, openssl, python3, curl.
set -euo pipefail
DURATION="${DURATION:-8s}"; ROUNDS="${ROUNDS:-3}"; CONNS="${CONNS:-64}"; WORKERS="${WORKERS:-1}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${GATEWAY_BIN:-$ROOT/target/release/gateway}"
source "$ROOT/benches/lib.sh"
need_tools nginx=nginx-light wrk=wrk openssl=openssl python3=python3 curl=curl
[[ "${SKIP_BUILD:-0}" == 1 ]] || (cd "$ROOT" && cargo build --release --quiet)

bench_tmp jwt-bench
UP=$(free_port); GW=$(free_port)

mkdir -p "$TMP/up/logs"
NGINX_USER=""; [[ $EUID -eq 0 ]] && NGINX_USER="user nobody nogroup;"
cat >"$TMP/up/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $TMP/up/nginx.pid; error_log $TMP/up/logs/error.log;
$NGINX_USER
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "hello world\n"; } } }
NGINX
nginx -c "$TMP/up/nginx.conf" -p "$TMP/up" & PIDS+=($!)

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/rs.key" 2>/dev/null
openssl pkey -in "$TMP/rs.key" -pubout -out "$TMP/rs.pub" 2>/dev/null
cat >"$TMP/gateway.yaml" <<YAML
server: { worker_threads: $WORKERS }
listeners: [{ name: http, bind: "127.0.0.1:$GW" }]
upstreams:
  app: { servers: ["127.0.0.1:$UP"], pool: { max_idle_per_server: 128, idle_timeout: 90s } }
jwt_policies:
  hs: { algorithms: [HS256], key: { secret: "bench-secret-0123456789abcdef0123456789" }, claims: { token_type: access } }
  rs: { algorithms: [RS256], key: { public_key_file: rs.pub }, claims: { token_type: access } }
routes:
  - { match: { path_prefix: /hs }, jwt: hs, upstream: app }
  - { match: { path_prefix: /rs }, jwt: rs, upstream: app }
  - { match: { path_prefix: / }, upstream: app }
logging: { level: warn, access_log: false }
YAML
HS=$("$BIN" token -c "$TMP/gateway.yaml" --policy hs --claim user_id=42 --claim token_type=access --ttl 1h)
RS=$("$BIN" token -c "$TMP/gateway.yaml" --policy rs --claim user_id=42 --claim token_type=access --ttl 1h --key "$TMP/rs.key")
"$BIN" run -c "$TMP/gateway.yaml" >"$TMP/gateway.log" 2>&1 & PIDS+=($!)
for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$GW/open" >/dev/null && break; sleep 0.1; done
for pair in "hs:$HS" "rs:$RS"; do
  if ! curl -fs -H "Authorization: Bearer ${pair#*:}" "http://127.0.0.1:$GW/${pair%%:*}" >/dev/null; then
    echo "token for ${pair%%:*} refused"; cat "$TMP/gateway.log"; exit 1
  fi
done

run() {  # path [token] -> req/s
  local out
  if [[ -n "${2:-}" ]]; then
    out=$(wrk -t1 -c"$CONNS" -d"$DURATION" -H "Authorization: Bearer $2" "http://127.0.0.1:$GW$1")
  else
    out=$(wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$GW$1")
  fi
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx responses on $1" >&2; exit 1; fi
  awk '/Requests\/sec/{print $2}' <<<"$out"
}
wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$GW/open" >/dev/null   # warm-up
OPEN=""; HSR=""; RSR=""
for i in $(seq 1 "$ROUNDS"); do
  v=$(run /open); OPEN+="$v "; echo "[jwt-bench] round $i open  $v req/s" >&2
  v=$(run /hs "$HS"); HSR+="$v "; echo "[jwt-bench] round $i HS256 $v req/s" >&2
  v=$(run /rs "$RS"); RSR+="$v "; echo "[jwt-bench] round $i RS256 $v req/s" >&2
done
python3 - "$OPEN" "$HSR" "$RSR" "$DURATION" "$ROUNDS" "$CONNS" <<'PY'
import statistics, sys
o, h, r = (statistics.median(float(x) for x in a.split()) for a in sys.argv[1:4])
print(f"\nJWT route vs open route (wrk -t1 -c{sys.argv[6]} -d{sys.argv[4]}, median of {sys.argv[5]} alternating rounds)\n")
print("| route | req/s | ratio to open |\n|---|---:|---:|")
for name, v in (("open (no JWT)", o), ("HS256 JWT", h), ("RS256 JWT", r)):
    print(f"| {name} | {v:.0f} | {v/o:.2f} |")
PY
