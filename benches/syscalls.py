#!/usr/bin/env python3
"""System calls per request of tandem, nginx and HAProxy under the comparison's load: owned by benches/.

Starts the nginx backend and each proxy in turn exactly as compare.py does (one worker, proxy and
backend on CPU 0, the load generator on CPU 1), records every system call the proxy's processes
enter (`perf record -e raw_syscalls:sys_enter`) during one bounded h2load (h2c) or wrk (HTTP/1.1)
run, and prints the calls per answered request, by call. The counts, not the rates, are the result:
recording slows every proxy. Needs root (perf tracepoints). Every process it starts is stopped by PID.

  python3 benches/syscalls.py [--load h2c|h1] [--seconds 5] [--tandem BIN]
"""

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402

# x86_64 numbers of the calls a proxy makes on its request path.
NAMES = {
    0: "read", 1: "write", 3: "close", 7: "poll", 12: "brk", 15: "rt_sigreturn", 48: "shutdown", 20: "writev", 41: "socket", 42: "connect",
    44: "sendto", 45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 54: "setsockopt", 55: "getsockopt",
    202: "futex", 228: "clock_gettime", 232: "epoll_wait", 233: "epoll_ctl", 281: "epoll_pwait",
    223: "timer_settime", 288: "accept4", 441: "epoll_pwait2",
}


def count(data):
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "trace"], capture_output=True, text=True).stdout
    calls = collections.Counter()
    for line in out.splitlines():
        m = re.search(r"NR (\d+)", line)
        if m:
            calls[int(m.group(1))] += 1
    return calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", default="h2c", choices=["h2c", "h1"])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--tandem", default=str(compare.default_tandem()))
    args = ap.parse_args()
    if shutil.which("perf") is None:
        raise SystemExit("perf is not installed (apt-get install linux-perf)")
    d = Path(tempfile.mkdtemp(prefix="tandem-syscalls-"))
    (d / "tmp").mkdir()
    backend = compare.start_backend(d, 1, "0")
    try:
        for name in ["tandem", "nginx", "haproxy"]:
            proxy = compare.start_proxy(name, d, 1, "0", args.tandem)
            try:
                data = d / f"{name}.data"
                pids = ",".join(str(p) for p in proxy.pids())
                perf = subprocess.Popen(
                    ["perf", "record", "-q", "-e", "raw_syscalls:sys_enter", "-p", pids, "-o", str(data)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                h1, h2, _ = compare.PORTS[name]
                if args.load == "h2c":
                    r = compare.h2load(h2, compare.SMALL, args.seconds, 10, 10, "1")
                else:
                    r = compare.wrk(h1, compare.SMALL, args.seconds, 50, "1")
                perf.send_signal(2)
                perf.wait(timeout=60)
                calls = count(data)
                reqs = max(r.get("requests", 0), 1)
                by_call = ", ".join(f"{NAMES.get(k, k)} {v / reqs:.3f}" for k, v in calls.most_common(8))
                print(f"{name}: {r.get('requests', 0)} requests ({r.get('rps', 0):,.0f} req/s while recorded), "
                      f"{sum(calls.values()) / reqs:.2f} system calls per request: {by_call}", flush=True)
            finally:
                proxy.stop()
    finally:
        backend.stop()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
