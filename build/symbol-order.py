#!/usr/bin/env python3
"""Makes and checks build/symbol-order.txt, the order the release link lays tandem's functions
out in (build.rs passes it to the linker): owned by build/ (see build/README.md).

  python3 build/symbol-order.py generate [--out build/symbol-order.txt]
      Builds the static release binary exactly as the image and CI do, with a linker map; runs
      it under valgrind's callgrind through start-up (dumped once it is ready and has idled a
      second), then through a mix of requests (HTTP/1.1 through the codec and through hyper,
      h2c, an upload, the outbound proxy, the admin endpoints) and a drain; and writes the
      functions each phase ran, start-up first, each phase's hottest first. --binary B --map M
      profile a binary already built with TANDEM_LINK_MAP=M instead.

  python3 build/symbol-order.py check MAP [--min 0.8]
      How many of the file's symbols the link that wrote MAP (TANDEM_LINK_MAP) had; exit 1 if
      fewer than --min of them (the file is stale: another compiler or dependency versions).

Everything runs on 127.0.0.1 with ports chosen by the kernel; every process started here is
stopped by its PID.
"""

import argparse
import bisect
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "build" / "symbol-order.txt"


def host_tuple():
    return subprocess.run(["rustc", "--print", "host-tuple"], capture_output=True, text=True, check=True).stdout.strip()


def build(map_path):
    env = dict(os.environ, RUSTFLAGS="-C target-feature=+crt-static", TANDEM_LINK_MAP=str(map_path))
    host = host_tuple()
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "--target", host], cwd=ROOT, env=env, check=True
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / host / "release" / "tandem"


# ---------------------------------------------------------------------------------------------
# The linker map (lld's -Map): "VMA LMA Size Align Out In Symbol"; an input section line names
# its file and section, the symbol lines under it are indented further. lld prints symbols
# demangled, so a section's name for the ordering file comes from the section itself: rustc
# puts every function in its own section, `.text.<mangled name>` (or `.text.unlikely.<name>`);
# C objects (the static glibc) have one `.text` (or `.text.avx2` and the like) for several
# functions, named by the first symbol in it, which C does not mangle.

SECTION = re.compile(r"^\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+\s{9}\S.*:\((\.text[^)]*)\)\s*$")
SYMBOL = re.compile(r"^\s*([0-9a-f]+)\s+[0-9a-f]+\s+[0-9a-f]+\s+\d+\s{17}(\S+)\s*$")
SECTION_PREFIXES = ("unlikely.", "hot.", "startup.", "exit.", "split.")


def section_key(section, symbols):
    """The name the ordering file gives a section: its mangled function, or its first symbol."""
    rest = section[len(".text."):] if section.startswith(".text.") else ""
    for prefix in SECTION_PREFIXES:
        if rest.startswith(prefix):
            rest = rest[len(prefix):]
            break
    if rest.startswith(("_Z", "_R")) or (rest and rest in symbols):
        return rest
    return symbols[0] if symbols else None


def read_map(path):
    """Input sections of .text: [start, size, ordering-file name], sorted by start."""
    sections = []
    cur = None
    with open(path, errors="replace") as f:
        for line in f:
            m = SECTION.match(line)
            if m:
                cur = [int(m.group(1), 16), int(m.group(2), 16), m.group(3), []]
                sections.append(cur)
                continue
            m = SYMBOL.match(line)
            if m and cur is not None:
                addr = int(m.group(1), 16)
                if cur[0] <= addr < cur[0] + max(cur[1], 1):
                    cur[3].append(m.group(2))
                continue
            cur = None
    keyed = [[start, size, section_key(name, syms)] for start, size, name, syms in sections]
    keyed = [s for s in keyed if s[2]]
    keyed.sort()
    return keyed


def map_symbols(path):
    names = set()
    for _, _, key in read_map(path):
        names.add(key)
    return names


# ---------------------------------------------------------------------------------------------
# callgrind


def wait_line(path, pattern, timeout=120):
    deadline = time.time() + timeout
    rx = re.compile(pattern)
    while time.time() < deadline:
        try:
            m = rx.search(Path(path).read_text(errors="replace"))
            if m:
                return m
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {pattern} in {path}")


def get(url, data=None, timeout=60):
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def raw(addr, payload, timeout=20):
    """Sends `payload` and reads until the server closes the connection."""
    host, port = addr.rsplit(":", 1)
    out = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(payload)
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
    return out


def traffic(inbound, outbound, admin, app):
    """A mix of what a proxy in a pod sees, a few times each (the hot paths run more than once)."""
    for _ in range(3):
        get(f"http://{inbound}/hello?n=1")
        get(f"http://{inbound}/big?size=20000")
        get(f"http://{inbound}/chunked?size=3000&chunked=1")
        get(f"http://{inbound}/up?echo_body=1", data=b"x" * 5000)
        raw(inbound, b"GET /h10 HTTP/1.0\r\nHost: a\r\n\r\n")
        raw(inbound, b"GET /close HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        # h2c with prior knowledge, through hyper's server and the codec's client half.
        if subprocess.run(["which", "nghttp"], capture_output=True).returncode == 0:
            subprocess.run(["nghttp", "-n", f"http://{inbound}/h2?x=1", f"http://{inbound}/h2b?size=9000"],
                           capture_output=True, timeout=120)
        # The outbound forward proxy (absolute-form), to the same app.
        proxy = urllib.request.ProxyHandler({"http": f"http://{outbound}"})
        urllib.request.build_opener(proxy).open(f"http://{app}/out", timeout=60).read()
        get(f"http://{admin}/metrics")
        get(f"http://{admin}/ready")
        get(f"http://{admin}/live")
    # An error answer (status from the app) and a refused request head.
    try:
        get(f"http://{inbound}/err?status=503")
    except urllib.error.HTTPError:
        pass
    raw(inbound, b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")


def profile(binary, work):
    """Runs `binary` under callgrind: returns ({addr: cost} for start-up, {addr: cost} after, load base)."""
    echo_err = work / "echo.err"
    echo = subprocess.Popen([str(binary), "echo", "--listen", "127.0.0.1:0"], stderr=open(echo_err, "w"))
    cg = None
    try:
        app = wait_line(echo_err, r"listen=(127\.0\.0\.1:\d+)").group(1)
        out = work / "cg.out"
        err = work / "tandem.err"
        cg = subprocess.Popen(
            [
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=yes",
                "--compress-pos=no", "--compress-strings=no",
                str(binary), "run", "--app", app, "--inbound", "127.0.0.1:0", "--outbound", "127.0.0.1:0",
                "--admin", "127.0.0.1:0", "--workers", "1", "--access-log", str(work / "access.log"),
                "--log-format", "json",
            ],
            stderr=open(err, "w"),
        )
        wait_line(err, r'"tandem is ready"', timeout=300)
        inbound = wait_line(err, r'"inbound":"([^"]+)"').group(1)
        outbound = wait_line(err, r'"outbound":"([^"]+)"').group(1)
        admin = wait_line(err, r'"admin":"([^"]+)"').group(1)
        base = load_base(cg.pid, binary)
        time.sleep(1.0)
        subprocess.run(["callgrind_control", "--dump=startup", str(cg.pid)], check=True, capture_output=True)
        traffic(inbound, outbound, admin, app)
        cg.send_signal(signal.SIGTERM)
        cg.wait(timeout=300)
        cg = None
        dumps = sorted(work.glob("cg.out*"))
        startup = [d for d in dumps if d.name.endswith(".1")]
        rest = [d for d in dumps if not d.name.endswith(".1")]
        return read_costs(startup), read_costs(rest), base
    finally:
        for p in (cg, echo):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def load_base(pid, binary):
    """Where valgrind mapped the binary (its first mapping, file offset 0)."""
    target = os.path.realpath(binary)
    deadline = time.time() + 60
    while time.time() < deadline:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 6 and os.path.realpath(parts[5]) == target and int(parts[2], 16) == 0:
                return int(parts[0].split("-")[0], 16)
        time.sleep(0.2)
    raise SystemExit("could not find the binary's mapping under valgrind")


def read_costs(paths):
    """Instruction addresses and their own costs (Ir) from callgrind dumps made with
    --dump-instr=yes --compress-pos=no: a cost line is the positions the header names
    ("instr line") and then the cost; the line after a calls= line is the callee's inclusive
    cost, charged to the call site, and is skipped."""
    costs = {}
    for p in paths:
        npos = 1
        after_call = False
        with open(p, errors="replace") as f:
            for line in f:
                if line.startswith("positions:"):
                    npos = len(line.split()) - 1
                    continue
                if line.startswith("calls="):
                    after_call = True
                    continue
                if not line.startswith("0x"):
                    continue
                if after_call:
                    after_call = False
                    continue
                parts = line.split()
                if len(parts) <= npos:
                    continue
                a = int(parts[0], 16)
                costs[a] = costs.get(a, 0) + int(parts[npos])
    return costs


def bias(costs, base, sections):
    """callgrind names code by its run-time address, or (valgrind 3.19 on a static-pie binary)
    by the address the link gave it: whichever reading puts more of the cost inside .text."""
    lo, hi = sections[0][0], sections[-1][0] + sections[-1][1]

    def inside(b):
        return sum(c for a, c in costs.items() if lo <= a - b < hi)

    return max((base, 0), key=inside)


def symbols_by_cost(costs, base, sections):
    base = bias(costs, base, sections)
    starts = [s[0] for s in sections]
    per = {}
    for addr, cost in costs.items():
        vma = addr - base
        i = bisect.bisect_right(starts, vma) - 1
        if i < 0:
            continue
        start, size, key = sections[i]
        if vma >= start + size:
            continue
        per[key] = per.get(key, 0) + cost
    return [s for s, _ in sorted(per.items(), key=lambda kv: -kv[1])]


def generate(args):
    tmp = tempfile.mkdtemp(prefix="tandem-order-")
    try:
        work = Path(tmp)
        if args.binary and args.map:
            map_path, binary = Path(args.map), Path(args.binary)
        else:
            map_path = work / "tandem.map"
            binary = build(map_path)
        sections = read_map(map_path)
        if not sections:
            raise SystemExit(f"no .text input sections found in {map_path}")
        startup, rest, base = profile(binary, work)
        first = symbols_by_cost(startup, base, sections)
        seen = set(first)
        then = [s for s in symbols_by_cost(rest, base, sections) if s not in seen]
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out)
    with open(out, "w") as f:
        f.write("# The order of tandem's functions in the release binary (build.rs; build/README.md).\n")
        f.write(f"# Made by build/symbol-order.py generate with {rustc_version()}.\n")
        f.write(f"# {len(first)} functions run at start-up, then {len(then)} run only under traffic.\n")
        for s in first + then:
            f.write(s + "\n")
    print(f"wrote {out}: {len(first)} start-up functions, {len(then)} more under traffic "
          f"(of {len(sections)} text sections)")


def rustc_version():
    return subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()


def check(args):
    sections = read_map(args.map)
    names = {key for _, _, key in sections}
    wanted = [l.strip() for l in open(args.order) if l.strip() and not l.startswith("#")]
    have = [w for w in wanted if w in names]
    share = len(have) / max(len(wanted), 1)
    print(f"{args.order}: {len(have)} of {len(wanted)} symbols are in this link ({share:.0%})")
    if share < args.min:
        print("the symbol order is stale for this compiler or these dependencies: "
              "run python3 build/symbol-order.py generate", file=sys.stderr)
        return 1
    # The link followed the file: the sections it names come first in .text, in its order.
    wanted_set = set(have)
    # (A local C function's name can be in several objects: each is laid out where it is named.)
    laid = list(dict.fromkeys(key for _, _, key in sections if key in wanted_set))
    head = min(len(have), 200)
    if laid[:head] != have[:head]:
        first = next(i for i, (a, b) in enumerate(zip(laid, have)) if a != b)
        print(f"the link did not follow the order (build.rs did not pass it?): "
              f"entry {first} is {laid[first]}, the file says {have[first]}", file=sys.stderr)
        return 1
    print(f"the link laid out the file's first {head} functions in its order")
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--out", default=str(DEFAULT_OUT))
    g.add_argument("--keep", action="store_true", help="keep the working directory (logs, profiles)")
    g.add_argument("--binary", help="profile this binary instead of building one (needs --map)")
    g.add_argument("--map", help="the linker map written with --binary's link (TANDEM_LINK_MAP)")
    c = sub.add_parser("check")
    c.add_argument("map")
    c.add_argument("--order", default=str(DEFAULT_OUT))
    c.add_argument("--min", type=float, default=0.8)
    args = ap.parse_args()
    if args.cmd == "generate":
        generate(args)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
