# Shared by the benchmark scripts (sourced, not run): tool installs, a temp dir whose
# processes die with the script, background runs, and free loopback ports.
# Messages go through the script's own `log` when it defines one, else "[NAME] ..." on stderr.

bench_say() {
  if declare -F log >/dev/null; then log "$@"; else printf '[%s] %s\n' "${BENCH_NAME:-bench}" "$*" >&2; fi
}

# need_tools TOOL=PACKAGE...: installs the Debian packages of the tools that are missing
# (with sudo unless root). A distro nginx package's own service is not ours; it may hold
# port 80, which no benchmark uses.
need_tools() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || [[ -x "/usr/sbin/${pair%%=*}" ]] || missing+=("${pair#*=}")
  done
  ((${#missing[@]})) || return 0
  bench_say "installing: ${missing[*]}"
  local sudo=""; [[ $EUID -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# bench_tmp NAME [keep]: sets TMP to a fresh world-readable temp dir (nginx workers may run as
# nobody) and PIDS=() for the processes the script starts. On exit (and on INT/TERM, which
# exit 130/143) bench_cleanup stops every pid in PIDS, newest first, and removes TMP, unless
# the script failed or KEEP_TMP=1 (then it says where TMP is) or "keep" was given (kept
# silently). The script's exit status is preserved.
bench_tmp() {
  BENCH_NAME="$1"
  TMP="$(mktemp -d "${TMPDIR:-/tmp}/gateway-$1.XXXXXX")"; chmod 755 "$TMP"
  PIDS=()
  BENCH_KEEP_TMP="${2:-}"
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

bench_cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  local all=("${PIDS[@]}")
  for ((i = ${#all[@]} - 1; i >= 0; i--)); do stop_pid "${all[i]}"; done
  wait 2>/dev/null || true
  if [[ "$BENCH_KEEP_TMP" == keep ]]; then
    :
  elif [[ "${KEEP_TMP:-0}" == 1 || $rc -ne 0 ]]; then
    bench_say "temp dir kept: $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}

# forget_pid PID: drops a pid from PIDS once it is gone, so a recycled pid is never signalled.
forget_pid() {
  local keep=() p
  for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# stop_pid PID: TERM, up to 5 s to exit, then KILL it and its children (an nginx master's
# workers); forgets the pid.
stop_pid() {
  local pid="$1" i
  forget_pid "$pid"
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  local kids; kids="$(pgrep -P "$pid" 2>/dev/null || true)"
  # shellcheck disable=SC2086
  kill -KILL "$pid" $kids 2>/dev/null || true
}

# run_bg OUTFILE CMD...: runs CMD in the background (stdout+stderr to OUTFILE) and waits for it,
# so INT/TERM interrupt at once and cleanup stops it; returns CMD's exit status.
run_bg() {
  local out="$1" pid rc=0; shift
  "$@" >"$out" 2>&1 &
  pid=$!; PIDS+=("$pid")
  wait "$pid" || rc=$?
  forget_pid "$pid"
  return "$rc"
}

# free_ports N: N distinct free loopback ports on one line (all bound at once, then released).
free_ports() {
  python3 - "${1:-1}" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(*[s.getsockname()[1] for s in socks])
EOF
}
free_port() { free_ports 1; }
