#!/usr/bin/env bash
# Benchmark: static files, gateway vs nginx (sendfile, gzip_static, open_file_cache) serving the
# same folder, and vs WhiteNoise under Gunicorn (the setup the gateway replaces). One run,
# alternating gateway / nginx / whitenoise per round; medians of req/s and p99.
#
#   benches/static.sh                          # DURATION=8s ROUNDS=3 WORKERS=1
#   SKIP_BUILD=1 SKIP_WHITENOISE=1 benches/static.sh
#
# Traffic goes to 127.0.0.1 only. Needs nginx, wrk, python3, curl (installed when missing), and
# for the WhiteNoise leg: pip install -r tests/django_app/requirements.txt.
set -euo pipefail
DURATION="${DURATION:-8s}"; ROUNDS="${ROUNDS:-3}"; CONNS="${CONNS:-64}"; WORKERS="${WORKERS:-1}"
SKIP_WHITENOISE="${SKIP_WHITENOISE:-0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${GATEWAY_BIN:-$ROOT/target/release/gateway}"
source "$ROOT/benches/lib.sh"
need_tools nginx=nginx-light wrk=wrk python3=python3 curl=curl
[[ "${SKIP_BUILD:-0}" == 1 ]] || (cd "$ROOT" && cargo build --release --quiet)

bench_tmp static-bench
GW=$(free_port); NX=$(free_port); WN=$(free_port); DUMMY=$(free_port)

# The folder: a 1 KiB and a 100 KiB hashed stylesheet with .gz siblings, as collectstatic +
# WhiteNoise would write them.
mkdir -p "$TMP/static"
python3 - "$TMP/static" <<'PY'
import gzip, random, sys
root = sys.argv[1]
random.seed(7)
words = ["body", "margin", "padding", "color", "display", "flex", "grid", "border", "font"]
for name, size in (("small.3f2a9c1b7e4d.css", 1024), ("large.9c1b7e4d3f2a.css", 100 * 1024)):
    text = ""
    while len(text) < size:
        text += f".c{random.randint(0, 99999)} {{ {random.choice(words)}: {random.randint(0, 999)}px; }}\n"
    data = text[:size].encode()
    open(f"{root}/{name}", "wb").write(data)
    open(f"{root}/{name}.gz", "wb").write(gzip.compress(data, 9))
PY
chmod -R a+rX "$TMP/static"

cat >"$TMP/gateway.yaml" <<YAML
server: { worker_threads: $WORKERS }
listeners: [{ name: http, bind: "127.0.0.1:$GW" }]
upstreams:
  app: { servers: ["127.0.0.1:$DUMMY"] }
routes:
  - match: { path_prefix: /static/ }
    static: { root: static, precompressed: [br, gzip], immutable_hashed: true }
  - { match: { path_prefix: / }, upstream: app }
logging: { level: warn, access_log: false }
YAML
"$BIN" run -c "$TMP/gateway.yaml" >"$TMP/gateway.log" 2>&1 & PIDS+=($!); GW_PID=$!

mkdir -p "$TMP/nginx/logs"
NGINX_USER=""; [[ $EUID -eq 0 ]] && NGINX_USER="user nobody nogroup;"
cat >"$TMP/nginx/nginx.conf" <<NGINX
worker_processes $WORKERS; daemon off; pid $TMP/nginx/nginx.pid; error_log $TMP/nginx/logs/error.log;
$NGINX_USER
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 100000000; sendfile on; tcp_nopush on;
  open_file_cache max=1000 inactive=60s; open_file_cache_valid 1s;
  include /etc/nginx/mime.types;
  server {
    listen 127.0.0.1:$NX backlog=4096;
    location /static/ {
      alias $TMP/static/; gzip_static on; etag on;
      add_header Cache-Control "public, max-age=31536000, immutable";
    }
  }
}
NGINX
nginx -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" & PIDS+=($!); NX_PID=$!

TARGETS=(gateway nginx)
if [[ "$SKIP_WHITENOISE" != 1 ]] && python3 -c "import whitenoise, django, gunicorn" 2>/dev/null; then
  # WhiteNoise serving the same folder through Gunicorn, $WORKERS sync workers.
  mkdir -p "$TMP/wn"
  cat >"$TMP/wn/wnapp.py" <<PY
from whitenoise import WhiteNoise
def app(environ, start_response):
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]
application = WhiteNoise(app, root="$TMP/static", prefix="static/", max_age=31536000)
PY
  (cd "$TMP/wn" && exec python3 -m gunicorn -w "$WORKERS" -b "127.0.0.1:$WN" --log-level warning wnapp:application) &
  PIDS+=($!); WN_PID=$!
  TARGETS+=(whitenoise)
fi

port_of() { case "$1" in gateway) echo "$GW";; nginx) echo "$NX";; whitenoise) echo "$WN";; esac; }
pid_of() { case "$1" in gateway) echo "$GW_PID";; nginx) echo "$NX_PID";; whitenoise) echo "$WN_PID";; esac; }
# utime+stime (clock ticks) of a server: its process and its children (nginx and Gunicorn
# workers).
cpu_ticks() {
  local total=0 pid stat
  for pid in "$1" $(pgrep -P "$1" || true); do
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
    stat="${stat##*) }"   # fields after the command name, which may hold spaces
    total=$((total + $(awk '{print $12 + $13}' <<<"$stat")))
  done
  echo "$total"
}
HZ="$(getconf CLK_TCK)"
for t in "${TARGETS[@]}"; do
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$(port_of "$t")/static/small.3f2a9c1b7e4d.css" >/dev/null && break; sleep 0.1; done
  curl -fs "http://127.0.0.1:$(port_of "$t")/static/small.3f2a9c1b7e4d.css" >/dev/null || { echo "$t is not serving"; exit 1; }
done

RESULTS="$TMP/results.tsv"; : >"$RESULTS"
for file in small.3f2a9c1b7e4d.css large.9c1b7e4d3f2a.css; do
  for t in "${TARGETS[@]}"; do
    wrk -t1 -c"$CONNS" -d2s -H "Accept-Encoding: gzip" "http://127.0.0.1:$(port_of "$t")/static/$file" >/dev/null
  done
  for i in $(seq 1 "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
      c0="$(cpu_ticks "$(pid_of "$t")")"
      out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H "Accept-Encoding: gzip" "http://127.0.0.1:$(port_of "$t")/static/$file")
      c1="$(cpu_ticks "$(pid_of "$t")")"
      if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx from $t on $file" >&2; exit 1; fi
      rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
      p99=$(awk '$1=="99%"{print $2}' <<<"$out")
      p50=$(awk '$1=="50%"{print $2}' <<<"$out")
      p90=$(awk '$1=="90%"{print $2}' <<<"$out")
      reqs=$(awk '/requests in/{print $1}' <<<"$out")
      cpu=$(python3 -c "print(f'{($c1 - $c0) / $HZ * 1e6 / max($reqs, 1):.1f}')")
      echo "[static-bench] $file $t round $i: $rps req/s p99 $p99 cpu $cpu us/req" >&2
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$file" "$t" "$rps" "$p99" "$cpu" "$p50" "$p90" "$i" >>"$RESULTS"
    done
  done
done

python3 - "$RESULTS" "$DURATION" "$ROUNDS" "$CONNS" "$WORKERS" <<'PY'
import collections, statistics, sys
def ms(v):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * f
    return float(v)
rows = collections.defaultdict(lambda: ([], [], [], [], []))
by_round = {}
for line in open(sys.argv[1]):
    f, t, rps, p99, cpu, p50, p90, rnd = line.split()
    for i, v in enumerate((float(rps), ms(p99), float(cpu), ms(p50), ms(p90))):
        rows[(f, t)][i].append(v)
    by_round[(f, t, rnd)] = ms(p99)
print(f"\nStatic files (wrk -t1 -c{sys.argv[4]} -d{sys.argv[2]} --latency, Accept-Encoding: gzip, "
      f"median of {sys.argv[3]} alternating rounds, {sys.argv[5]} worker(s) each)\n")
print("| file | server | req/s | p99 ms | CPU us/req | req/s vs nginx | p99 vs nginx | CPU vs nginx |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
med = statistics.median
for f in sorted({k[0] for k in rows}, reverse=True):
    n_rps, n_p99, n_cpu = (med(v) for v in rows[(f, "nginx")][:3])
    for t in ("gateway", "nginx", "whitenoise"):
        if (f, t) in rows:
            rps, p99, cpu = (med(v) for v in rows[(f, t)][:3])
            print(f"| {f.split('.')[0]} | {t} | {rps:.0f} | {p99:.2f} | {cpu:.1f} | {rps / n_rps:.2f} "
                  f"| {p99 / n_p99:.2f} | {cpu / n_cpu:.2f} |")
print("\nLatency percentiles, median of rounds (ms), and rounds in which the gateway's p99 was the lower:\n")
print("| file | gateway p50 | nginx p50 | gateway p90 | nginx p90 | gateway p99 | nginx p99 | gateway p99 lower |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for f in sorted({k[0] for k in rows}, reverse=True):
    g, n = rows[(f, "gateway")], rows[(f, "nginx")]
    rounds = [r for (ff, t, r) in by_round if ff == f and t == "gateway" and (f, "nginx", r) in by_round]
    lower = sum(by_round[(f, "gateway", r)] < by_round[(f, "nginx", r)] for r in rounds)
    print(f"| {f.split('.')[0]} | {med(g[3]):.2f} | {med(n[3]):.2f} | {med(g[4]):.2f} | {med(n[4]):.2f} "
          f"| {med(g[1]):.2f} | {med(n[1]):.2f} | {lower} of {len(rounds)} |")
print("\nCPU us/req = utime+stime of the server's processes (nginx and Gunicorn: master + workers)"
      " during the round / requests served; wrk's CPU is not counted.")
PY
