#!/usr/bin/env bash
# Measures tandem's memory and CPU under a bounded wrk load on loopback: the figures behind the
# resource requests and limits in deploy/ (docs/operations.md, "Sizing").
#
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$(rustc --print host-tuple)"
#   deploy/measure-sizing.sh [WORKERS] [CONNECTIONS] [DURATION] [PATH]
#   deploy/measure-sizing.sh 1 32 15s /
#   deploy/measure-sizing.sh 1 64 10s '/x?size=16KiB'
#
# Needs wrk (apt-get install wrk). Traffic goes to 127.0.0.1 only; every process it starts is
# stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
# The static release binary the image ships (docs/operations.md, "The image"); TANDEM_BIN overrides.
B=${TANDEM_BIN:-target/$(rustc --print host-tuple)/release/tandem}
W=${1:-1}; C=${2:-32}; D=${3:-15s}; Q=${4:-/}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
APP=$(free_port); IN=$(free_port); ADMIN=$(free_port)
LOG=$(mktemp)
"$B" echo --listen "127.0.0.1:$APP" --workers 1 2>/dev/null & E=$!
"$B" run --app "127.0.0.1:$APP" --inbound "127.0.0.1:$IN" --admin "127.0.0.1:$ADMIN" \
  --outbound 127.0.0.1:0 --access-log "$LOG" --workers "$W" 2>/dev/null & P=$!
trap 'kill $P $E 2>/dev/null || true; rm -f "$LOG"*' EXIT
"$B" await --admin "127.0.0.1:$ADMIN" --timeout 30s 2>/dev/null
kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$P/status"; }
ticks() { awk '{print $14 + $15}' "/proc/$P/stat"; }
echo "tandem: $W worker(s); wrk: $C connections for $D on $Q"
echo "idle RSS: $(kib VmRSS) KiB"
c0=$(ticks); t0=$(date +%s.%N)
wrk -t 2 -c "$C" -d "$D" "http://127.0.0.1:$IN$Q" | grep -E "requests in|Requests/sec|Socket errors|Non-2xx" || true
c1=$(ticks); t1=$(date +%s.%N)
echo "RSS after: $(kib VmRSS) KiB, peak (VmHWM): $(kib VmHWM) KiB"
python3 -c "print('tandem CPU: %.2f cores' % ((($c1 - $c0) / $(getconf CLK_TCK)) / ($t1 - $t0)))"
python3 -c "import urllib.request as u; print([l for l in u.urlopen('http://127.0.0.1:$ADMIN/metrics').read().decode().splitlines() if l.startswith('tandem_access_log_dropped_total')][0])"
kill -TERM "$P"; wait "$P" || true
# The live file and the ones rotated away at access_log.max_size (100 MiB by default).
echo "access log: $(cat "$LOG" "$LOG".[0-9]* 2>/dev/null | wc -l) lines"
