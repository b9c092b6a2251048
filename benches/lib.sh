# Shared by the benchmark scripts (sourced, not run): tool installs, a temp dir whose
# processes die with the script, and free loopback ports.

# need_tools TOOL=PACKAGE...: installs the Debian packages of the tools that are missing.
need_tools() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || [[ -x "/usr/sbin/${pair%%=*}" ]] || missing+=("${pair#*=}")
  done
  ((${#missing[@]})) || return 0
  local sudo=""; [[ $EUID -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# bench_tmp NAME [keep]: sets TMP to a fresh world-readable temp dir (nginx workers may run as
# nobody) and PIDS=(); on exit every pid in PIDS is killed and TMP removed (kept with "keep").
bench_tmp() {
  TMP="$(mktemp -d "${TMPDIR:-/tmp}/gateway-$1.XXXXXX")"; chmod 755 "$TMP"
  PIDS=()
  BENCH_KEEP_TMP="${2:-}"
  trap bench_cleanup EXIT INT TERM
}
bench_cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ "$BENCH_KEEP_TMP" == keep ]] || rm -rf "$TMP"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
