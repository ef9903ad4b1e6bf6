#!/usr/bin/env python3
"""Profiles tandem under load with `perf record` (software cpu-clock sampling): owned by benches/.

Starts the nginx backend and one tandem (the `profiling` build, symbols kept) pinned to CPU 0,
drives it with wrk (HTTP/1.1) or h2load (h2c) pinned to CPU 1 for a bounded time, records every
thread of the tandem process, and writes `perf report` text (flat, by symbol) next to the data.
Every process it starts is stopped by PID.

  cargo build --profile profiling
  python3 benches/profile.py --out /tmp/prof [--load h1|h2c|h1-16k] [--access-log] [--seconds 15]
      [--call-graph]   (then: perf report -i DATA --no-children -S SYMBOL -G for its callers)
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tandem", default=str(compare.ROOT / "target/profiling/tandem"))
    ap.add_argument("--load", default="h1", choices=["h1", "h1-16k", "h2c"])
    ap.add_argument("--access-log", action="store_true", help="profile the operator setup (access log to a file)")
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--call-graph", action="store_true",
                    help="record call chains (perf --call-graph dwarf): who calls memmove, malloc")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tmp").mkdir(exist_ok=True)
    name = "tandem-op" if args.access_log else "tandem"
    backend = compare.start_backend(out, 1, "0")
    proxy = None
    try:
        proxy = compare.start_proxy(name, out, 1, "0", args.tandem)
        port = compare.PORTS[name][0]
        data = out / f"perf-{name}-{args.load}.data"
        graph = ["--call-graph", "dwarf,16384"] if args.call_graph else []
        perf = subprocess.Popen(
            ["perf", "record", "-e", "cpu-clock", "-F", "4999", *graph, "-p", str(proxy.pid), "-o", str(data)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        cpu0 = proxy.cpu_seconds()
        if args.load == "h2c":
            r = compare.h2load(port, compare.SMALL, args.seconds, 10, 10, "1")
        else:
            path = compare.LARGE if args.load == "h1-16k" else compare.SMALL
            r = compare.wrk(port, path, args.seconds, 50, "1")
        cpu = proxy.cpu_seconds() - cpu0
        perf.send_signal(2)
        perf.wait(timeout=60)
        print(f"{name} {args.load}: {r.get('rps', 0):,.0f} req/s, {cpu * 1e6 / max(r.get('requests', 1), 1):.1f} us CPU per request")
        report = subprocess.run(
            ["perf", "report", "-i", str(data), "--no-children", "--sort", "symbol", "--stdio", "--percent-limit", "0.4"],
            capture_output=True,
            text=True,
        )
        (out / f"report-{name}-{args.load}.txt").write_text(report.stdout)
        by_dso = subprocess.run(
            ["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,comm", "--stdio"],
            capture_output=True,
            text=True,
        )
        (out / f"report-{name}-{args.load}-dso.txt").write_text(by_dso.stdout)
        print(f"wrote {out}/report-{name}-{args.load}.txt")
    finally:
        if proxy:
            proxy.stop()
        backend.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
