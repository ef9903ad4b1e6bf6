#!/usr/bin/env bash
# Side-by-side load comparison of tandem, nginx and HAProxy (issue 8); owned by benches/.
# Installs or checks for its tools (nginx, haproxy, wrk, h2load from nghttp2-client, oha),
# builds tandem's static release binary, then runs benches/compare.py with the arguments given here.
# Everything is on 127.0.0.1, every run is bounded in time, and every process started is stopped
# by its PID. Results go to bench-results/<timestamp>/ (or --out DIR): summary.md, results.json
# and each server's configuration and output.
#
#   benches/compare.sh                 # the full run: 3 rounds of 10 s, idle and two-worker phases
#   benches/compare.sh --quick         # 1 round of 3 s, pinned phase only
#   benches/compare.sh --help          # every option
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then
  echo "compare.sh: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! oha --version >/dev/null 2>&1; then
  echo "compare.sh: installing oha (cargo install, takes a few minutes)" >&2
  cargo install oha --locked
fi
# Debian starts the packaged services on install where it can; this script never uses them.
# The static binary the image ships (docs/operations.md, "The image"); compare.py runs it by default.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --quiet --target "$(rustc --print host-tuple)"
exec python3 benches/compare.py "$@"
