#!/usr/bin/env bash
# Benchmark: round_robin vs least_conn vs p2c when one of three upstream servers is 10x slower
# (issue 4's target: p2c or least_conn beat round_robin on p99 latency).
#
#   benches/balance.sh                              # DURATION=10s ROUNDS=3, fast 10 ms / slow 100 ms
#   SKIP_BUILD=1 DURATION=5s ROUNDS=1 benches/balance.sh
#   FAST_MS=20 SLOW_MS=200 benches/balance.sh       # other latencies (keep the 10x if comparing)
#   CLIENT=ab SKIP_BUILD=1 benches/balance.sh       # ApacheBench (ab -k) instead of wrk
#
# The upstreams are three small asyncio HTTP/1.1 servers (python3, keep-alive), each its own
# process, answering "hello world" after a fixed delay: FAST_MS for two, SLOW_MS for one. One
# gateway per strategy runs side by side (idle ones cost nothing); rounds alternate
# A B C A B C so drift hits every strategy alike; each run is wrk -t1 -c$CONNS --latency.
# CLIENT=ab cross-checks the tail with another client: ab -k -c$CONNS for the same time
# (HTTP/1.0 keep-alive, whole-millisecond percentiles). On 2026-11-22 wrk reported ~1% of
# p2c's requests 25-100 ms slow that neither ab nor the gateway's own request-duration
# histogram saw (see RESULTS.md), so the p99 of one client alone is worth a second look.
# The slow server's share of requests comes from each gateway's admin /upstreams.
# The delays are large enough that they, not CPU queueing, set the latencies on a small
# machine: with 1 ms servers a 2-CPU box is CPU-bound (p50 several ms for every server), and
# the slow server is then only ~2x slower as the balancer sees it, not 10x.
# Traffic goes to 127.0.0.1 only. Needs wrk (or ab), python3, curl (installed when missing).
set -euo pipefail

# ---------------------------------------------------------------- settings
DURATION="${DURATION:-10s}"     # wrk -d for each measured run
ROUNDS="${ROUNDS:-3}"           # rounds; each runs every strategy once
CONNS="${CONNS:-64}"            # wrk -c
WARMUP="${WARMUP:-3s}"          # one warm-up run per strategy
WORKERS="${WORKERS:-1}"         # gateway server.worker_threads
FAST_MS="${FAST_MS:-10}"        # delay of the two fast servers
SLOW_MS="${SLOW_MS:-100}"       # delay of the slow one
STRATEGIES=(round_robin least_conn p2c)
KEEP_TMP="${KEEP_TMP:-0}"       # 1 = keep the temp dir (configs, logs, raw wrk output)
CLIENT="${CLIENT:-wrk}"         # wrk | ab

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${GATEWAY_BIN:-$ROOT/target/release/gateway}"

log() { printf '[balance-bench] %s\n' "$*" >&2; }
die() { printf '[balance-bench] ERROR: %s\n' "$*" >&2; exit 1; }

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$CLIENT" == wrk || "$CLIENT" == ab ]] || die "CLIENT must be wrk or ab"
secs() { [[ "$1" =~ ^([0-9]+)s?$ ]] || die "ab needs whole seconds: $1"; echo "${BASH_REMATCH[1]}"; }
if [[ "$CLIENT" == ab ]]; then secs "$DURATION" >/dev/null; secs "$WARMUP" >/dev/null; fi

# ---------------------------------------------------------------- tools
source "$ROOT/benches/lib.sh"
client_tool=wrk=wrk; [[ "$CLIENT" == ab ]] && client_tool=ab=apache2-utils
need_tools "$client_tool" python3=python3 curl=curl
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "cargo build --release"
  (cd "$ROOT" && cargo build --release --quiet)
fi
[[ -x "$BIN" ]] || die "gateway binary not found: $BIN"

# ---------------------------------------------------------------- temp dir + cleanup
bench_tmp balance-bench   # TMP; PIDS stopped on exit; TMP kept on failure or KEEP_TMP=1

# ---------------------------------------------------------------- upstreams
cat >"$TMP/upstream.py" <<'PY'
"""HTTP/1.1 keep-alive server: answers every request head with "hello world" after DELAY ms."""
import asyncio, sys

PORT, DELAY = int(sys.argv[1]), float(sys.argv[2]) / 1000
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\n"
            b"hello world\n")

class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buf = transport, b""

    def data_received(self, data):
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:   # GETs only: no bodies
            self.buf = self.buf[end + 4:]
            loop.call_later(DELAY, self.reply)               # same delay: replies stay in order

    def reply(self):
        if not self.transport.is_closing():
            self.transport.write(RESPONSE)

loop = asyncio.new_event_loop()
server = loop.run_until_complete(
    loop.create_server(Http, "127.0.0.1", PORT, backlog=4096, reuse_address=True))
loop.run_forever()
PY
UP_PORTS=()
for delay in "$FAST_MS" "$SLOW_MS" "$FAST_MS"; do
  port="$(free_port)"; UP_PORTS+=("$port")
  python3 "$TMP/upstream.py" "$port" "$delay" >"$TMP/upstream-$port.log" 2>&1 & PIDS+=($!)
done
SLOW_ADDR="127.0.0.1:${UP_PORTS[1]}"
for port in "${UP_PORTS[@]}"; do
  for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
  curl -fs "http://127.0.0.1:$port/" >/dev/null || die "upstream on $port did not start"
done
log "upstreams: fast ${FAST_MS} ms on ${UP_PORTS[0]} and ${UP_PORTS[2]}, slow ${SLOW_MS} ms on ${UP_PORTS[1]}"

# ---------------------------------------------------------------- gateways, one per strategy
declare -A GW ADMIN
for s in "${STRATEGIES[@]}"; do
  GW[$s]="$(free_port)"; ADMIN[$s]="$(free_port)"
  cat >"$TMP/$s.yaml" <<YAML
server: { worker_threads: $WORKERS }
listeners: [{ name: http, bind: "127.0.0.1:${GW[$s]}" }]
upstreams:
  app:
    servers: ["127.0.0.1:${UP_PORTS[0]}", "127.0.0.1:${UP_PORTS[1]}", "127.0.0.1:${UP_PORTS[2]}"]
    balance: $s
    pool: { max_idle_per_server: 128, idle_timeout: 90s }
routes: [{ match: { path_prefix: / }, upstream: app }]
admin: { bind: "127.0.0.1:${ADMIN[$s]}" }
logging: { level: warn, access_log: false }
YAML
  "$BIN" check -c "$TMP/$s.yaml" >/dev/null || die "gateway check failed for $s"
  "$BIN" run -c "$TMP/$s.yaml" >"$TMP/gateway-$s.log" 2>&1 & PIDS+=($!)
  for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:${GW[$s]}/" >/dev/null && break; sleep 0.1; done
  curl -fs "http://127.0.0.1:${GW[$s]}/" >/dev/null || { cat "$TMP/gateway-$s.log" >&2; die "gateway ($s) did not start"; }
done

slow_requests() {  # STRATEGY -> requests the slow server has taken so far
  curl -fs "http://127.0.0.1:${ADMIN[$1]}/upstreams" | python3 -c '
import json, sys
servers = json.load(sys.stdin)["upstreams"]["app"]["servers"]
print(next(s["requests"] for s in servers if s["address"] == sys.argv[1]))' "$SLOW_ADDR"
}

# ---------------------------------------------------------------- measurement
RESULTS="$TMP/results.tsv"; : >"$RESULTS"
run() {  # STRATEGY ROUND DURATION -> a TSV row unless ROUND=warmup
  local s="$1" round="$2" dur="$3" out="$TMP/$CLIENT-$1-$2.txt" before after rc=0
  before="$(slow_requests "$s")"
  if [[ "$CLIENT" == ab ]]; then
    run_bg "$out" ab -k -c"$CONNS" -t"$(secs "$dur")" -n 100000000 "http://127.0.0.1:${GW[$s]}/" || rc=$?
  else
    run_bg "$out" wrk -t1 -c"$CONNS" -d"$dur" --latency "http://127.0.0.1:${GW[$s]}/" || rc=$?
  fi
  ((rc == 0)) || { cat "$out" >&2; die "$CLIENT failed against $s"; }
  after="$(slow_requests "$s")"
  [[ "$round" == warmup ]] && return 0
  python3 - "$out" "$s" "$round" "$((after - before))" >>"$RESULTS" <<'PY'
import re, sys
path, strategy, rnd, slow = sys.argv[1:]
text = open(path).read()
unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
def pct(p):  # wrk: "99%  12.34ms"; ab: "99%     21" (whole ms)
    m = re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s)?\s*$", text, re.M)
    return float(m.group(1)) * unit[m.group(2) or "ms"] if m else float("nan")
def num(pattern, default=0):
    m = re.search(pattern, text)
    return m.group(1) if m else default
reqs = int(num(r"(\d+) requests in") or num(r"Complete requests:\s+(\d+)"))
rps = float(num(r"Requests/sec:\s+([\d.]+)") or num(r"Requests per second:\s+([\d.]+)", "nan"))
bad = int(num(r"Non-2xx or 3xx responses:\s+(\d+)")) + int(num(r"Non-2xx responses:\s+(\d+)"))
bad += int(num(r"Failed requests:\s+(\d+)"))
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
bad += sum(map(int, m.groups())) if m else 0
share = 100 * int(slow) / reqs if reqs else float("nan")
print(f"{strategy}\t{rnd}\t{rps:.1f}\t{pct(50):.3f}\t{pct(99):.3f}\t{share:.2f}\t{bad}")
PY
  log "$(tail -n1 "$RESULTS" | awk -F'\t' '{printf "round %s %-12s %9s req/s  p50 %7s ms  p99 %7s ms  slow share %5s%%  errors %s", $2,$1,$3,$4,$5,$6,$7}')"
}

for s in "${STRATEGIES[@]}"; do log "warm-up $s ($WARMUP)"; run "$s" warmup "$WARMUP"; done
for ((r = 1; r <= ROUNDS; r++)); do
  for s in "${STRATEGIES[@]}"; do run "$s" "$r" "$DURATION"; done
done

# ---------------------------------------------------------------- report
python3 - "$RESULTS" "$DURATION" "$ROUNDS" "$CONNS" "$WORKERS" "$FAST_MS" "$SLOW_MS" "$(nproc)" "$CLIENT" <<'PY'
import math, statistics, sys
path, dur, rounds, conns, workers, fast, slow, ncpu, client = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
def med(s, col):
    v = [float(r[col]) for r in rows if r[0] == s]
    return statistics.median(v) if v else float("nan")
run = f"wrk -t1 -c{conns} -d{dur} --latency" if client == "wrk" else f"ab -k -c{conns} -t{dur}"
print(f"\nOne of three servers 10x slower (fast {fast} ms, slow {slow} ms): {run}, "
      f"median of {rounds} alternating rounds, worker_threads {workers}, {ncpu} CPUs\n")
print("| strategy | req/s | p50 ms | p99 ms | p99 vs round_robin | slow server's share |")
print("|---|---:|---:|---:|---:|---:|")
rr = med("round_robin", 4)
for s in ("round_robin", "least_conn", "p2c"):
    p99 = med(s, 4)
    print(f"| {s} | {med(s, 2):.0f} | {med(s, 3):.2f} | {p99:.2f} | {p99 / rr:.2f}x | {med(s, 5):.1f}% |")
errors = sum(int(r[6]) for r in rows)
if errors:
    print(f"\nWARNING: {errors} non-2xx responses or socket errors; figures not trustworthy")
PY
