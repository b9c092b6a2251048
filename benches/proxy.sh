#!/usr/bin/env bash
# Benchmark: gateway vs nginx as a reverse proxy in front of the same fast upstream.
#
#   benches/proxy.sh                       # defaults: DURATION=10s ROUNDS=3 WORKERS=1
#   DURATION=5s ROUNDS=1 benches/proxy.sh  # quick smoke run
#   NGINX_ONLY=1 benches/proxy.sh          # skip the gateway (tests the harness itself)
#   H2=0 benches/proxy.sh                  # skip the HTTP/2 scenario (h2load)
#
# Everything listens on and talks to 127.0.0.1 only. See benches/README.md.
set -euo pipefail

# ---------------------------------------------------------------- settings
DURATION="${DURATION:-10s}"       # wrk -d for each measured run
ROUNDS="${ROUNDS:-3}"             # A/B pairs per scenario
WORKERS="${WORKERS:-1}"           # gateway server.worker_threads == nginx worker_processes
CONNS="${CONNS:-64}"              # wrk -c for the throughput runs
WARMUP="${WARMUP:-3s}"            # wrk -d for the warm-up run of each proxy/scenario
RSS_CONNS="${RSS_CONNS:-1000}"    # keep-alive connections for the memory measurement
RSS_DURATION="${RSS_DURATION:-5s}"
SKIP_RSS="${SKIP_RSS:-0}"         # 1 = skip the peak-RSS measurement
NGINX_ONLY="${NGINX_ONLY:-0}"     # 1 = do not build/run the gateway
SKIP_BUILD="${SKIP_BUILD:-0}"     # 1 = use the existing target/release/gateway
PIN="${PIN:-auto}"                # auto|1|0: taskset upstream/wrk/proxies onto separate CPUs
KEEP_TMP="${KEEP_TMP:-0}"         # 1 = keep the temp dir (configs, logs, raw wrk output)
OUT_DIR="${OUT_DIR:-}"            # if set: copy raw wrk output, results.tsv and report.md there
H2="${H2:-1}"                     # 1 = also HTTP/2 over TLS with h2load (Debian's nghttp2-client)
H2_CONNS="${H2_CONNS:-16}"        # h2load -c: connections ...
H2_STREAMS="${H2_STREAMS:-4}"     # ... and -m streams each (16 x 4 = wrk's 64 in flight)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GATEWAY_BIN="${GATEWAY_BIN:-$ROOT/target/release/gateway}"
NGINX_BIN="${NGINX_BIN:-/usr/sbin/nginx}"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "WORKERS must be a positive integer"

# ---------------------------------------------------------------- tools
source "$ROOT/benches/lib.sh"
nginx_tool=(); [[ -x "$NGINX_BIN" ]] || nginx_tool=(nginx=nginx-light)
h2_tool=(); [[ "$H2" != 1 ]] || h2_tool=(h2load=nghttp2-client)
need_tools "${nginx_tool[@]}" "${h2_tool[@]}" wrk=wrk openssl=openssl python3=python3 curl=curl pgrep=procps
[[ -x "$NGINX_BIN" ]] || NGINX_BIN="$(command -v nginx)"

# 1,000 keep-alive connections need > 2,000 fds in the proxy (client + upstream side)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(( $(ulimit -n) >= 4096 )) || log "warning: ulimit -n is $(ulimit -n); the ${RSS_CONNS}-connection run may fail"

# ---------------------------------------------------------------- temp dir + cleanup + ports
bench_tmp bench   # TMP; PIDS stopped newest first on exit; TMP kept on failure or KEEP_TMP=1
read -r UP_PORT GW_HTTP GW_HTTPS NX_HTTP NX_HTTPS < <(free_ports 5)
log "ports: upstream=$UP_PORT gateway=$GW_HTTP/$GW_HTTPS nginx=$NX_HTTP/$NX_HTTPS tmp=$TMP"

# ---------------------------------------------------------------- CPU pinning
NCPU="$(nproc)"
TS_UP=(); TS_WRK=(); TS_PROXY=()
if [[ "$PIN" == auto ]]; then
  if (( NCPU >= WORKERS + 2 )) && command -v taskset >/dev/null 2>&1; then PIN=1; else PIN=0; fi
fi
if [[ "$PIN" == 1 ]]; then
  (( NCPU >= WORKERS + 2 )) || die "PIN=1 needs at least WORKERS+2=$((WORKERS+2)) CPUs (have $NCPU)"
  TS_UP=(taskset -c 0)
  TS_WRK=(taskset -c 1)
  TS_PROXY=(taskset -c "2-$((WORKERS+1))")
  log "pinning: upstream cpu0, wrk cpu1, proxies cpu2-$((WORKERS+1))"
else
  log "pinning: off ($NCPU CPUs; upstream, wrk and the proxy share them)"
fi

# ---------------------------------------------------------------- build
if [[ "$NGINX_ONLY" != 1 ]]; then
  if [[ "$SKIP_BUILD" != 1 ]]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release)
  fi
  [[ -x "$GATEWAY_BIN" ]] || die "gateway binary not found: $GATEWAY_BIN"
fi

# ---------------------------------------------------------------- certificate
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$TMP/tls.key" -out "$TMP/tls.crt" 2>/dev/null
chmod 644 "$TMP/tls.key"

# ---------------------------------------------------------------- nginx helpers
NGINX_USER_LINE=""
if [[ $EUID -eq 0 ]]; then
  if getent group nogroup >/dev/null; then NGINX_USER_LINE="user nobody nogroup;"; else NGINX_USER_LINE="user nobody;"; fi
fi
NGINX_VER="$("$NGINX_BIN" -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')"
# `http2 on;` exists since 1.25.1; before that it is a `listen ... http2` parameter
if printf '%s\n1.25.1\n' "$NGINX_VER" | sort -V -C; then
  NX_H2_LISTEN=" http2"; NX_H2_DIRECTIVE=""
else
  NX_H2_LISTEN=""; NX_H2_DIRECTIVE="http2 on;"
fi

# start_nginx NAME CONF -> sets STARTED_PID (the master) and records it for cleanup
start_nginx() {
  local name="$1" conf="$2" prefix="$TMP/$1"
  mkdir -p "$prefix/logs" "$prefix/tmp"
  chmod 755 "$prefix" "$prefix/tmp"
  "$NGINX_BIN" -t -q -p "$prefix" -c "$conf" -e "$prefix/logs/error.log" \
    || die "nginx config $conf invalid"
  local ts=("${TS_PROXY[@]}")
  [[ "$name" == upstream ]] && ts=("${TS_UP[@]}")
  "${ts[@]}" "$NGINX_BIN" -p "$prefix" -c "$conf" -e "$prefix/logs/error.log" -g "daemon off;" \
    >"$prefix/logs/stdout.log" 2>&1 &
  STARTED_PID=$!; PIDS+=("$STARTED_PID")
}

nginx_common() {  # $1 = prefix dir
  cat <<EOF
$NGINX_USER_LINE
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
EOF
}

nginx_http_common() {  # $1 = prefix dir
  cat <<EOF
  access_log off;
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
  keepalive_timeout 75s;
  keepalive_requests 100000000;
EOF
}

show_log() {  # FILE: last lines of a log, to stderr
  [[ -s "$1" ]] && { log "--- tail of $1"; tail -n 30 "$1" >&2; } || log "($1 is empty)"
}

wait_ready() {  # NAME PID URL LOGFILE
  local name="$1" pid="$2" url="$3" logf="$4" i body
  for i in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_log "$logf"; die "$name exited during start-up (logs in $TMP)"
    fi
    if body="$(curl -sk --max-time 2 "$url" 2>/dev/null)" && [[ "$body" == "hello world" ]]; then
      return 0
    fi
    sleep 0.1
  done
  show_log "$logf"
  die "$name did not answer 'hello world' on $url within 10s (last body: ${body:-none})"
}

# ---------------------------------------------------------------- upstream
mkdir -p "$TMP/upstream"
cat >"$TMP/upstream/nginx.conf" <<EOF
$(nginx_common "$TMP/upstream")
worker_processes 1;
http {
$(nginx_http_common "$TMP/upstream")
  server {
    listen 127.0.0.1:$UP_PORT backlog=4096;
    location / {
      default_type text/plain;
      return 200 "hello world\n";
    }
  }
}
EOF
start_nginx upstream "$TMP/upstream/nginx.conf"; UP_PID=$STARTED_PID
wait_ready upstream "$UP_PID" "http://127.0.0.1:$UP_PORT/" "$TMP/upstream/logs/error.log"

# ---------------------------------------------------------------- nginx proxy
write_nginx_proxy() {
  mkdir -p "$TMP/nginx"
  cat >"$TMP/nginx/nginx.conf" <<EOF
$(nginx_common "$TMP/nginx")
worker_processes $WORKERS;
http {
$(nginx_http_common "$TMP/nginx")
  upstream app {
    server 127.0.0.1:$UP_PORT;
    keepalive 128;
    keepalive_requests 100000000;
    keepalive_timeout 90s;
  }
  server {
    listen 127.0.0.1:$NX_HTTP backlog=4096;
    listen 127.0.0.1:$NX_HTTPS ssl$NX_H2_LISTEN backlog=4096;
    $NX_H2_DIRECTIVE
    ssl_certificate $TMP/tls.crt;
    ssl_certificate_key $TMP/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$http_host;
      proxy_set_header X-Request-Id \$request_id;
      add_header X-Request-Id \$request_id always;
      proxy_request_buffering on;
    }
  }
}
EOF
}

start_nginx_proxy() {
  start_nginx nginx "$TMP/nginx/nginx.conf"; NX_PID=$STARTED_PID
  wait_ready nginx "$NX_PID" "http://127.0.0.1:$NX_HTTP/" "$TMP/nginx/logs/error.log"
  wait_ready nginx-tls "$NX_PID" "https://127.0.0.1:$NX_HTTPS/" "$TMP/nginx/logs/error.log"
  # wait until all workers are forked
  local i
  for i in $(seq 1 50); do
    (( $(pgrep -P "$NX_PID" | wc -l) >= WORKERS )) && break; sleep 0.1
  done
}

# ---------------------------------------------------------------- gateway
write_gateway_config() {
  cat >"$TMP/gateway.yaml" <<EOF
server:
  worker_threads: $WORKERS
  max_connections: 20000
listeners:
  - name: http
    bind: "127.0.0.1:$GW_HTTP"
    redirect_https: false
  - name: https
    bind: "127.0.0.1:$GW_HTTPS"
    tls:
      certificates:
        - cert: tls.crt
          key: tls.key
      alpn: [h2, http/1.1]
upstreams:
  app:
    servers: ["127.0.0.1:$UP_PORT"]
    request_buffering: true
    pool: { max_idle_per_server: 128, idle_timeout: 90s }
routes:
  - match: { path_prefix: / }
    upstream: app
logging:
  level: warn
  access_log: false
EOF
}

start_gateway() {
  "${TS_PROXY[@]}" "$GATEWAY_BIN" run -c "$TMP/gateway.yaml" >>"$TMP/gateway.log" 2>&1 &
  GW_PID=$!; PIDS+=("$GW_PID")
  wait_ready gateway "$GW_PID" "http://127.0.0.1:$GW_HTTP/" "$TMP/gateway.log"
  wait_ready gateway-tls "$GW_PID" "https://127.0.0.1:$GW_HTTPS/" "$TMP/gateway.log"
}

# ---------------------------------------------------------------- measurement
CLK_TCK="$(getconf CLK_TCK)"
RESULTS="$TMP/results.tsv"
: >"$RESULTS"

pids_of() {  # proxy-name -> pids whose CPU we count
  case "$1" in
    gateway) echo "$GW_PID" ;;
    nginx)   echo "$NX_PID" $(pgrep -P "$NX_PID" || true) ;;
  esac
}

cpu_ticks() {  # sum of utime+stime (fields 14,15) over the given pids
  local total=0 pid stat rest f
  for pid in "$@"; do
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
    rest="${stat##*) }"            # comm may contain spaces; fields resume after ") "
    read -ra f <<<"$rest"          # f[0] = field 3 (state) ... f[11] = utime, f[12] = stime
    total=$(( total + f[11] + f[12] ))
  done
  echo "$total"
}

# run_bg_wrk OUTFILE ARGS... : wrk in the background + wait, so INT/TERM interrupt at once
run_bg_wrk() { local out="$1"; shift; run_bg "$out" "${TS_WRK[@]}" wrk "$@"; }

# run_wrk PROXY SCENARIO ROUND URL DURATION CONNS -> appends a TSV row unless ROUND=warmup
run_wrk() {
  local proxy="$1" scen="$2" round="$3" url="$4" dur="$5" conns="$6"
  local out="$TMP/wrk-$proxy-$scen-$round.txt" pids c0 c1
  pids="$(pids_of "$proxy")"
  # shellcheck disable=SC2086
  c0="$(cpu_ticks $pids)"
  run_bg_wrk "$out" -t1 -c"$conns" -d"$dur" --latency "$url" \
    || { cat "$out" >&2; die "wrk failed against $proxy ($url)"; }
  # shellcheck disable=SC2086
  c1="$(cpu_ticks $pids)"
  [[ "$round" == warmup ]] && return 0
  python3 - "$out" "$proxy" "$scen" "$round" "$((c1 - c0))" "$CLK_TCK" >>"$RESULTS" <<'EOF'
import re, sys
path, proxy, scen, rnd, ticks, hz = sys.argv[1:]
text = open(path).read()
def num(pat, default=None):
    m = re.search(pat, text)
    return m.group(1) if m else default
unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
def pct(p):
    m = re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    return float(m.group(1)) * unit[m.group(2)] if m else float("nan")
p50_ms, p90_ms, p99_ms = pct(50), pct(90), pct(99)
reqs = int(num(r"(\d+) requests in", "0"))
rps = float(num(r"Requests/sec:\s+([\d.]+)", "nan"))
non2xx = int(num(r"Non-2xx or 3xx responses:\s+(\d+)", "0"))
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
sockerr = sum(map(int, m.groups())) if m else 0
cpu_s = int(ticks) / int(hz)
us_per_req = cpu_s * 1e6 / reqs if reqs else float("nan")
print(f"{proxy}\t{scen}\t{rnd}\t{rps:.1f}\t{p99_ms:.3f}\t{us_per_req:.2f}\t{reqs}\t{non2xx}\t{sockerr}\t{cpu_s:.2f}\t{p50_ms:.3f}\t{p90_ms:.3f}")
EOF
  log "$(tail -n1 "$RESULTS" | awk -F'\t' '{printf "%-8s %-6s round %s: %10s req/s  p99 %8s ms  cpu %6s us/req  (non-2xx %s, socket errors %s)", $1,$2,$3,$4,$5,$6,$8,$9}')"
}

# run_bg_h2load OUTFILE ARGS... : h2load in the background + wait (as run_bg_wrk)
run_bg_h2load() { local out="$1"; shift; run_bg "$out" "${TS_WRK[@]}" h2load "$@"; }

# run_h2load PROXY ROUND URL DURATION -> appends a TSV row unless ROUND=warmup. HTTP/2 over
# TLS (ALPN h2): H2_CONNS connections with H2_STREAMS concurrent streams each; p99 from
# h2load's per-request log (h2load itself prints no percentiles).
run_h2load() {
  local proxy="$1" round="$2" url="$3" dur="${4%s}"
  local out="$TMP/h2load-$proxy-$round.txt" reqlog="$TMP/h2load-$proxy-$round.log" pids c0 c1
  pids="$(pids_of "$proxy")"
  # shellcheck disable=SC2086
  c0="$(cpu_ticks $pids)"
  run_bg_h2load "$out" -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D"$dur" --log-file="$reqlog" "$url" \
    || { cat "$out" >&2; die "h2load failed against $proxy ($url)"; }
  # shellcheck disable=SC2086
  c1="$(cpu_ticks $pids)"
  grep -q 'Application protocol: h2' "$out" || { cat "$out" >&2; die "$proxy did not negotiate h2"; }
  [[ "$round" == warmup ]] && { rm -f "$reqlog"; return 0; }
  python3 - "$out" "$reqlog" "$proxy" "$round" "$((c1 - c0))" "$CLK_TCK" >>"$RESULTS" <<'EOF'
import re, sys
path, reqlog, proxy, rnd, ticks, hz = sys.argv[1:]
text = open(path).read()
m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", text)
rps = float(m.group(1)) if m else float("nan")
m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
done, ok, failed, errored, timeout = map(int, m.groups()) if m else (0, 0, 0, 0, 0)
m = re.search(r"status codes: (\d+) 2xx", text)
non2xx = done - int(m.group(1)) if m else 0
durations = sorted(int(l.split("\t")[2]) for l in open(reqlog) if l.count("\t") >= 2)
def pct(p):
    return durations[min(len(durations) - 1, int(len(durations) * p))] / 1000 if durations else float("nan")
p50_ms, p90_ms, p99_ms = pct(0.50), pct(0.90), pct(0.99)
cpu_s = int(ticks) / int(hz)
us_per_req = cpu_s * 1e6 / done if done else float("nan")
print(f"{proxy}\th2\t{rnd}\t{rps:.1f}\t{p99_ms:.3f}\t{us_per_req:.2f}\t{done}\t{non2xx}\t{failed + errored + timeout}\t{cpu_s:.2f}\t{p50_ms:.3f}\t{p90_ms:.3f}")
EOF
  rm -f "$reqlog"
  log "$(tail -n1 "$RESULTS" | awk -F'\t' '{printf "%-8s %-6s round %s: %10s req/s  p99 %8s ms  cpu %6s us/req  (non-2xx %s, errors %s)", $1,$2,$3,$4,$5,$6,$8,$9}')"
}

vm_hwm_kb() {  # sum of VmHWM over pids
  local total=0 pid v
  for pid in "$@"; do
    v="$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
    total=$(( total + ${v:-0} ))
  done
  echo "$total"
}

# ---------------------------------------------------------------- start proxies
PROXIES=()
if [[ "$NGINX_ONLY" != 1 ]]; then
  write_gateway_config
  if ! "$GATEWAY_BIN" check -c "$TMP/gateway.yaml" >"$TMP/gateway-check.log" 2>&1; then
    log "warning: 'gateway check' failed:"; cat "$TMP/gateway-check.log" >&2
  fi
  start_gateway
  PROXIES+=(gateway)
fi
write_nginx_proxy
start_nginx_proxy
PROXIES+=(nginx)

url_for() {  # PROXY SCENARIO
  case "$1:$2" in
    gateway:http)  echo "http://127.0.0.1:$GW_HTTP/" ;;
    gateway:https) echo "https://127.0.0.1:$GW_HTTPS/" ;;
    nginx:http)    echo "http://127.0.0.1:$NX_HTTP/" ;;
    nginx:https)   echo "https://127.0.0.1:$NX_HTTPS/" ;;
  esac
}

for p in "${PROXIES[@]}"; do
  port="$(url_for "$p" https | sed 's|.*:\([0-9]*\)/|\1|')"
  tlsinfo="$(openssl s_client -connect "127.0.0.1:$port" -brief </dev/null 2>&1 \
    | awk -F': ' '/Protocol version|Ciphersuite/ {printf "%s ", $2}')"
  log "$p TLS (what wrk negotiates; wrk offers no ALPN, so HTTP/1.1): ${tlsinfo:-unknown}"
done

# ---------------------------------------------------------------- throughput runs
for scen in http https; do
  for p in "${PROXIES[@]}"; do
    log "warm-up $p $scen ($WARMUP)"
    run_wrk "$p" "$scen" warmup "$(url_for "$p" "$scen")" "$WARMUP" "$CONNS"
  done
  for ((r=1; r<=ROUNDS; r++)); do
    for p in "${PROXIES[@]}"; do
      run_wrk "$p" "$scen" "$r" "$(url_for "$p" "$scen")" "$DURATION" "$CONNS"
    done
  done
done

if [[ "$H2" == 1 ]]; then
  for p in "${PROXIES[@]}"; do
    log "warm-up $p h2 ($WARMUP)"
    run_h2load "$p" warmup "$(url_for "$p" https)" "$WARMUP"
  done
  for ((r=1; r<=ROUNDS; r++)); do
    for p in "${PROXIES[@]}"; do
      run_h2load "$p" "$r" "$(url_for "$p" https)" "$DURATION"
    done
  done
fi

# ---------------------------------------------------------------- peak RSS with many connections
RSS_FILE="$TMP/rss.tsv"; : >"$RSS_FILE"
if [[ "$SKIP_RSS" != 1 ]]; then
  # fresh processes, so VmHWM reflects this run only and not the throughput runs
  for p in "${PROXIES[@]}"; do
    case "$p" in
      gateway) stop_pid "$GW_PID"; start_gateway; pids="$GW_PID" ;;
      nginx)   stop_pid "$NX_PID"; start_nginx_proxy; pids="$(pgrep -P "$NX_PID" | tr '\n' ' ')" ;;
    esac
    # shellcheck disable=SC2086
    idle="$(vm_hwm_kb $pids)"
    log "peak RSS run: $p with $RSS_CONNS keep-alive connections ($RSS_DURATION)"
    out="$TMP/wrk-$p-rss.txt"
    run_bg_wrk "$out" -t1 -c"$RSS_CONNS" -d"$RSS_DURATION" --timeout 10s "$(url_for "$p" http)" \
      || { cat "$out" >&2; die "wrk failed (rss run, $p)"; }
    # shellcheck disable=SC2086
    peak="$(vm_hwm_kb $pids)"
    rps="$(awk '/Requests\/sec:/ {print $2}' "$out")"
    errs="$(awk '/Socket errors:/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i} END {print s + 0}' "$out")"
    printf '%s\t%s\t%s\t%s\t%s\n' "$p" "$idle" "$peak" "${rps:-nan}" "${errs:-0}" >>"$RSS_FILE"
  done
fi

# ---------------------------------------------------------------- report
B_H2="$H2_CONNS x $H2_STREAMS" B_WORKERS="$WORKERS" B_CONNS="$CONNS" B_DURATION="$DURATION" B_ROUNDS="$ROUNDS" B_PIN="$PIN" \
B_NCPU="$NCPU" B_NGINX_VER="$NGINX_VER" B_RSS_CONNS="$RSS_CONNS" B_RSS_DURATION="$RSS_DURATION" \
python3 - "$RESULTS" "$RSS_FILE" >"$TMP/report.md" <<'EOF'
import math, os, statistics, sys
E = os.environ
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
rss = [l.rstrip("\n").split("\t") for l in open(sys.argv[2]) if l.strip()]

def med(proxy, scen, col):
    v = [float(r[col]) for r in rows if r[0] == proxy and r[1] == scen]
    return statistics.median(v) if v else float("nan")
def tot(proxy, scen, col):
    return sum(int(r[col]) for r in rows if r[0] == proxy and r[1] == scen)
def ratio(a, b):
    return a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")
def f(x, spec):
    return "-" if isinstance(x, float) and math.isnan(x) else format(x, spec)

print()
print(f"Proxy: gateway vs nginx  (WORKERS={E['B_WORKERS']}, wrk -t1 -c{E['B_CONNS']} -d{E['B_DURATION']} --latency, "
      f"ROUNDS={E['B_ROUNDS']}, median of rounds, pinning={E['B_PIN']}, {E['B_NCPU']} CPUs, nginx {E['B_NGINX_VER']})")
print()
print("| scenario | gateway req/s | nginx req/s | ratio | gateway p99 ms | nginx p99 ms | ratio | gateway CPU us/req | nginx CPU us/req | ratio |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
names = {"http": "HTTP/1.1 keep-alive", "https": "HTTPS (TLS, HTTP/1.1) keep-alive",
         "h2": f"HTTP/2 over TLS (h2load, {E['B_H2']} streams)"}
warn = []
for scen in [s for s in ("http", "https", "h2") if any(r[1] == s for r in rows)]:
    g = [med("gateway", scen, c) for c in (3, 4, 5)]
    n = [med("nginx", scen, c) for c in (3, 4, 5)]
    cells = []
    for a, b, spec in zip(g, n, (".0f", ".2f", ".1f")):
        cells += [f(a, spec), f(b, spec), f(ratio(a, b), ".2f")]
    print(f"| {names[scen]} | " + " | ".join(cells) + " |")
    for p in ("gateway", "nginx"):
        bad = tot(p, scen, 7) + tot(p, scen, 8)
        if bad:
            warn.append(f"{p} {scen}: {tot(p, scen, 7)} non-2xx responses, {tot(p, scen, 8)} socket errors (figures not trustworthy)")
print()
print("ratio = gateway / nginx: req/s above 1 is better; p99 and CPU us/req below 1 are better.")
print("CPU us/req = (utime+stime of the proxy process(es) during the run) / requests served;")
print("for nginx summed over master + workers. The upstream's and wrk's CPU are not counted.")
for w in warn:
    print("WARNING:", w)

# The tail moves with the machine more than between the proxies: percentiles below p99, and
# how many of the paired rounds (run back to back) each proxy had the lower p99 in.
print()
print("Latency percentiles, median of rounds (ms), and rounds in which the gateway's p99 was the lower:")
print()
print("| scenario | gateway p50 | nginx p50 | gateway p90 | nginx p90 | gateway p99 | nginx p99 | gateway p99 lower |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for scen in [s for s in ("http", "https", "h2") if any(r[1] == s for r in rows)]:
    cells = []
    for col in (10, 11, 4):
        cells += [f(med("gateway", scen, col), ".2f"), f(med("nginx", scen, col), ".2f")]
    p99 = {p: {r[2]: float(r[4]) for r in rows if r[0] == p and r[1] == scen} for p in ("gateway", "nginx")}
    paired = [k for k in p99["gateway"] if k in p99["nginx"]]
    lower = sum(p99["gateway"][k] < p99["nginx"][k] for k in paired)
    print(f"| {names[scen]} | " + " | ".join(cells) + f" | {lower} of {len(paired)} |")

if rss:
    print()
    print(f"Peak RSS with {E['B_RSS_CONNS']} keep-alive connections (wrk -t1 -c{E['B_RSS_CONNS']} -d{E['B_RSS_DURATION']}, plain HTTP, fresh processes):")
    print()
    print("| proxy | VmHWM before (MiB) | VmHWM peak (MiB) | req/s during | socket errors |")
    print("|---|---:|---:|---:|---:|")
    for p, idle, peak, rps, errs in rss:
        label = p if p == "gateway" else "nginx (sum of workers)"
        print(f"| {label} | {int(idle)/1024:.1f} | {int(peak)/1024:.1f} | {f(float(rps), '.0f')} | {errs} |")
    bad = False
    for p, idle, peak, rps, errs in rss:
        if int(errs) or not float(rps) > 0:
            bad = True
            print(f"WARNING: {p} had socket errors or served nothing during the RSS run; its peak is not meaningful")
    d = {r[0]: int(r[2]) for r in rss}
    if "gateway" in d and d.get("nginx") and not bad:
        print()
        print(f"peak RSS ratio gateway/nginx: {d['gateway']/d['nginx']:.2f}")
EOF
cat "$TMP/report.md"

if [[ -n "$OUT_DIR" ]]; then
  mkdir -p "$OUT_DIR"
  cp "$TMP"/wrk-*.txt "$RESULTS" "$RSS_FILE" "$TMP/report.md" "$OUT_DIR"/
  cp "$TMP"/h2load-*.txt "$OUT_DIR"/ 2>/dev/null || true
  log "raw results copied to $OUT_DIR"
fi
