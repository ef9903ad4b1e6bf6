#!/usr/bin/env python3
"""Side-by-side load comparison: tandem vs nginx vs HAProxy in front of one nginx backend.

Owned by benches/ (issue 8). Run through benches/compare.sh, which installs the tools and builds
tandem first. Everything listens on 127.0.0.1 only, every load run is bounded in time, every
process this script starts is stopped by its PID (never by name), and the results go to the
directory named by --out (default bench-results/<timestamp>).

Phases:
  1. main: backend + proxies pinned to CPU 0, load generators pinned to CPU 1; for each round,
     for each test, every target in a rotated order (interleaved round by round).
  2. idle: fresh proxies; idle RSS after start, then memory per idle keep-alive connection with
     --idle-conns connections open.
  3. two workers: tandem --workers 2 vs nginx worker_processes 2 vs HAProxy nbthread 2, unpinned.
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"

# Ports (all on 127.0.0.1).
P_BACKEND = 18080  # backend nginx, HTTP/1.1
P_BACKEND_H2 = 18079  # backend nginx, h2c (for the direct h2 figure)
PORTS = {
    # name: (h1 port, h2c port, admin port)
    "tandem": (18081, 18081, 18181),
    "tandem-op": (18082, 18082, 18182),
    # --baseline: another tandem binary (access log off), for A/B runs of a change.
    "tandem-base": (18085, 18085, 18185),
    "nginx": (18083, 18093, None),
    "haproxy": (18084, 18094, None),
}
SMALL = "/small"
LARGE = "/16k"
SMALL_BODY = "hello from the backend\n"


def default_tandem():
    """The static release build compare.sh makes (target/<host>/release), else target/release."""
    try:
        host = subprocess.run(["rustc", "--print", "host-tuple"], capture_output=True, text=True, check=True).stdout.strip()
        static = ROOT / "target" / host / "release" / "tandem"
        if static.exists():
            return static
    except (OSError, subprocess.CalledProcessError):
        pass
    return ROOT / "target" / "release" / "tandem"


def elf_linkage(path):
    """'static' when the ELF file has no PT_INTERP program header (no dynamic loader), else 'dynamic'."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return "?"
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    types = [struct.unpack_from("<I", table, i * phentsize)[0] for i in range(phnum)]
    return "dynamic" if 3 in types else "static"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# /proc readings


def proc_children(pid):
    """Direct children of pid (nginx workers), from /proc/PID/task/*/children."""
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


def cpu_ticks(pid):
    """utime + stime of one process (all its threads), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return 0
    fields = data[data.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# ----------------------------------------------------------------------------------------------
# Processes


class Server:
    """A server process this script started; its figures sum over the process and its children."""

    def __init__(self, name, argv, cpus, outdir, env=None):
        self.name = name
        self.argv = argv
        pin = ["taskset", "-c", cpus] if cpus else []
        self.stdout = open(outdir / f"{name}.stdout", "wb")
        self.stderr = open(outdir / f"{name}.stderr", "wb")
        self.proc = subprocess.Popen(
            pin + argv, stdout=self.stdout, stderr=self.stderr, env=env, start_new_session=True
        )
        self.pid = self.proc.pid

    def pids(self):
        return [self.pid] + proc_children(self.pid)

    def cpu_seconds(self):
        return sum(cpu_ticks(p) for p in self.pids()) / CLK_TCK

    def rss_kib(self):
        return sum(status_kib(p, "VmRSS") for p in self.pids())

    def hwm_kib(self):
        return sum(status_kib(p, "VmHWM") for p in self.pids())

    def reset_hwm(self):
        """Sets VmHWM back to the current RSS (/proc/PID/clear_refs "5", Linux 4.0+), so that the
        next hwm_kib() is the peak of what ran in between. False where the kernel refuses; the
        reading then is the peak since the process started."""
        ok = True
        for p in self.pids():
            try:
                with open(f"/proc/{p}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                ok = False
        return ok

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        kids = proc_children(self.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        # nginx workers exit with their master; make sure, by PID.
        for k in kids:
            try:
                os.kill(k, 0)
            except OSError:
                continue
            time.sleep(0.5)
            try:
                os.kill(k, signal.SIGKILL)
            except OSError:
                pass
        self.stdout.close()
        self.stderr.close()


def wait_port(port, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def http_get(port, path, timeout=5.0):
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as r:
        return r.status, r.read()


# ----------------------------------------------------------------------------------------------
# Configurations


def backend_conf(d, workers):
    www = d / "www"
    www.mkdir(exist_ok=True)
    (www / "16k").write_bytes(bytes((i * 7 + 13) % 94 + 33 for i in range(16384)))
    return f"""
worker_processes {workers};
pid {d}/backend.pid;
error_log {d}/backend.error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16000; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {d}/tmp/backend-body;
    proxy_temp_path {d}/tmp/backend-proxy;
    fastcgi_temp_path {d}/tmp/backend-fastcgi;
    uwsgi_temp_path {d}/tmp/backend-uwsgi;
    scgi_temp_path {d}/tmp/backend-scgi;
    server {{
        listen {HOST}:{P_BACKEND} backlog=4096;
        listen {HOST}:{P_BACKEND_H2} http2 backlog=4096;
        location = {SMALL} {{ default_type text/plain; return 200 "{SMALL_BODY.strip()}\\n"; }}
        location = {LARGE} {{ default_type application/octet-stream; root {www}; }}
    }}
}}
"""


def nginx_proxy_conf(d, workers):
    h1, h2, _ = PORTS["nginx"]
    loc = f"""
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}"""
    return f"""
worker_processes {workers};
pid {d}/nginx-proxy.pid;
error_log {d}/nginx-proxy.error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16000; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {d}/tmp/proxy-body;
    proxy_temp_path {d}/tmp/proxy-proxy;
    fastcgi_temp_path {d}/tmp/proxy-fastcgi;
    uwsgi_temp_path {d}/tmp/proxy-uwsgi;
    scgi_temp_path {d}/tmp/proxy-scgi;
    upstream backend {{
        server {HOST}:{P_BACKEND};
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {HOST}:{h1} backlog=4096;{loc}
    }}
    server {{
        listen {HOST}:{h2} http2 backlog=4096;{loc}
    }}
}}
"""


def haproxy_conf(d, threads):
    h1, h2, _ = PORTS["haproxy"]
    return f"""
global
    nbthread {threads}
    # HAProxy asks for 2 x maxconn descriptors; where the hard limit is lower (20000 in these
    # containers) it warns and goes on: with http-reuse, 10k idle clients need about 10k.
    no strict-limits
    maxconn 10500
    pidfile {d}/haproxy.pid

defaults
    mode http
    maxconn 10500
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s

frontend h1
    bind {HOST}:{h1} backlog 4096
    default_backend app

frontend h2c
    bind {HOST}:{h2} proto h2 backlog 4096
    default_backend app

backend app
    server app1 {HOST}:{P_BACKEND}
"""


def start_backend(d, workers, cpus):
    (d / "backend.conf").write_text(backend_conf(d, workers))
    s = Server("backend", ["nginx", "-c", str(d / "backend.conf"), "-g", "daemon off;"], cpus, d)
    if not (wait_port(P_BACKEND) and wait_port(P_BACKEND_H2)):
        raise SystemExit("backend nginx did not start; see backend.stderr")
    return s


def start_proxy(name, d, workers, cpus, tandem_bin, tag="", baseline=None):
    if name == "tandem-base":
        tandem_bin = baseline
    if name.startswith("tandem"):
        h1, _, admin = PORTS[name]
        argv = [
            tandem_bin, "run",
            "--app", f"{HOST}:{P_BACKEND}",
            "--inbound", f"{HOST}:{h1}",
            "--admin", f"{HOST}:{admin}",
            "--outbound", f"{HOST}:0",
            "--workers", str(workers),
            "--max-connections", "19000",
            "--log-level", "warn",
        ]
        if name == "tandem-op":
            argv += ["--access-log", str(d / f"access{tag}.log")]
        else:
            argv += ["--access-log", "off"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
        s = Server(name + tag, argv, cpus, d, env)
        ports = [h1, admin]
    elif name == "nginx":
        conf = d / f"nginx-proxy{tag}.conf"
        conf.write_text(nginx_proxy_conf(d, workers))
        s = Server(name + tag, ["nginx", "-c", str(conf), "-g", "daemon off;"], cpus, d)
        ports = list(PORTS[name][:2])
    elif name == "haproxy":
        conf = d / f"haproxy{tag}.cfg"
        conf.write_text(haproxy_conf(d, workers))
        s = Server(name + tag, ["haproxy", "-db", "-f", str(conf)], cpus, d)
        ports = list(PORTS[name][:2])
    else:
        raise ValueError(name)
    for p in ports:
        if not wait_port(p):
            s.stop()
            raise SystemExit(f"{name} did not start; see {name}{tag}.stderr")
    # One request each way, so the upstream pool is warm and the proxy answers correctly.
    status, body = http_get(ports[0], SMALL)
    if status != 200 or body != SMALL_BODY.encode():
        raise SystemExit(f"{name}: unexpected answer {status} {body[:80]!r}")
    return s


# ----------------------------------------------------------------------------------------------
# Load generators


def run_cmd(argv, timeout):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        return -1, out.decode(errors="replace") if isinstance(out, bytes) else out


def wrk(port, path, secs, conns, cpus):
    threads = 1 if cpus else 2  # unpinned (two-worker phase): one wrk thread per core
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--timeout", "5s", f"http://{HOST}:{port}{path}"]
    if cpus:
        argv = ["taskset", "-c", cpus] + argv
    rc, out = run_cmd(argv, secs + 30)
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = 0
    e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if e:
        errors += sum(int(x) for x in e.groups())
    n2 = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if n2:
        errors += int(n2.group(1))
    if not (m and rps):
        return {"ok": False, "raw": out[-2000:]}
    return {"ok": rc == 0, "requests": int(m.group(1)), "rps": float(rps.group(1)), "errors": errors}


def h2load(port, path, secs, conns, streams, cpus):
    argv = ["h2load", "-t1", "-c", str(conns), "-m", str(streams), "-D", str(secs), f"http://{HOST}:{port}{path}"]
    if cpus:
        argv = ["taskset", "-c", cpus] + argv
    rc, out = run_cmd(argv, secs + 30)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (rps and req):
        return {"ok": False, "raw": out[-2000:]}
    errors = int(req.group(5)) + int(req.group(6))
    if status:
        errors += int(status.group(3)) + int(status.group(4))
    return {"ok": rc == 0, "requests": int(req.group(4)), "rps": float(rps.group(1)), "errors": errors}


def oha(port, path, secs, rate, conns, cpus):
    argv = [
        "oha", "-z", f"{secs}s", "-q", str(rate), "--latency-correction", "-c", str(conns),
        "--no-tui", "--output-format", "json", f"http://{HOST}:{port}{path}",
    ]
    if cpus:
        argv = ["taskset", "-c", cpus] + argv
    rc, out = run_cmd(argv, secs + 30)
    try:
        j = json.loads(out[out.index("{") :])
    except (ValueError, json.JSONDecodeError):
        return {"ok": False, "raw": out[-2000:]}
    pct = j.get("latencyPercentiles", {})
    summary = j.get("summary", {})
    codes = j.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    errors = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(j.get("errorDistribution", {}).values())

    def ms(k):
        v = pct.get(k)
        return None if v is None else v * 1000.0

    return {
        "ok": rc == 0,
        "requests": ok,
        "rps": summary.get("requestsPerSec"),
        "errors": errors,
        # What oha counted as errors (e.g. "aborted due to deadline" for requests still in flight
        # when -z ends), kept so a non-zero count can be read afterwards.
        "error_kinds": j.get("errorDistribution", {}),
        "p50": ms("p50"),
        "p90": ms("p90"),
        "p99": ms("p99"),
        "p99.9": ms("p99.9"),
    }


class Scraper:
    """Scrapes a tandem admin /metrics every few seconds while a run goes on, as Prometheus would."""

    def __init__(self, port, every=5.0):
        self.port, self.every = port, every
        self.stop_ev = threading.Event()
        self.count = 0
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        while not self.stop_ev.wait(self.every):
            try:
                http_get(self.port, "/metrics", timeout=2)
                self.count += 1
            except OSError:
                pass

    def stop(self):
        self.stop_ev.set()
        self.t.join(timeout=5)


def measure(test, target, servers, args, cpus):
    """One bounded load run against one target; CPU time of the target's processes around it."""
    if target == "direct":
        h1, h2, admin = P_BACKEND, P_BACKEND_H2, None
        server = servers["backend"]
    else:
        h1, h2, admin = PORTS[target]
        server = servers[target]
    scraper = Scraper(admin) if (target == "tandem-op" and admin) else None
    # Peak RSS of this run alone (from the RSS the process kept from earlier runs upwards).
    r_hwm_reset = server.reset_hwm()
    cpu0 = server.cpu_seconds()
    t0 = time.time()
    if test == "h1-small":
        r = wrk(h1, SMALL, args.duration, args.conns, cpus)
    elif test == "h1-16k":
        r = wrk(h1, LARGE, args.duration, args.conns, cpus)
    elif test == "h2c":
        r = h2load(h2, SMALL, args.duration, args.h2_conns, args.h2_streams, cpus)
    elif test == "latency":
        r = oha(h1, SMALL, args.duration, args.rate, args.latency_conns, cpus)
    else:
        raise ValueError(test)
    r["wall"] = time.time() - t0
    r["cpu_s"] = server.cpu_seconds() - cpu0
    if r.get("requests"):
        r["cpu_ms_per_10k"] = r["cpu_s"] * 1000.0 / r["requests"] * 10_000
    if scraper:
        scraper.stop()
        r["scrapes"] = scraper.count
    r["hwm_kib"] = server.hwm_kib()
    r["hwm_reset"] = r_hwm_reset
    if not server.alive():
        r["ok"] = False
        r["died"] = True
    return r


# ----------------------------------------------------------------------------------------------
# Idle connections


def hold_idle_connections(port, n, path=SMALL):
    """Opens n keep-alive connections, each after one complete request, and keeps them open."""
    socks = []
    req = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    for _ in range(n):
        s = socket.create_connection((HOST, port), timeout=5)
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                raise OSError("closed before the response")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        m = re.search(rb"content-length:\s*(\d+)", head, re.I)
        want = int(m.group(1)) if m else 0
        while len(rest) < want:
            chunk = s.recv(4096)
            if not chunk:
                break
            rest += chunk
        socks.append(s)
    return socks


def idle_phase(args, d, tandem_bin, out):
    targets = [t for t in args.targets if t != "direct"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = min(args.idle_conns, hard - 500)
    backend = start_backend(d, 1, "0")
    try:
        for t in targets:
            log(f"idle: {t}")
            s = start_proxy(t, d, 1, "0", tandem_bin, tag="-idle", baseline=args.baseline)
            try:
                time.sleep(1.0)
                idle = s.rss_kib()
                socks = hold_idle_connections(PORTS[t][0], n)
                time.sleep(1.0)
                held = s.rss_kib()
                still = s.alive()
                for k in socks:
                    k.close()
                out[t] = {
                    "idle_rss_kib": idle,
                    "rss_with_conns_kib": held,
                    "conns": n,
                    "bytes_per_conn": (held - idle) * 1024.0 / n,
                    "ok": still,
                }
                log(f"idle: {t}: idle {idle} KiB, with {n} conns {held} KiB")
            except OSError as e:
                out[t] = {"ok": False, "error": str(e)}
                log(f"idle: {t}: {e}")
            finally:
                s.stop()
    finally:
        backend.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ----------------------------------------------------------------------------------------------
# Report


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=0):
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


AB_LIMIT = 1.03  # a change holds when new / old is at most this, for CPU per request and peak RSS


def ab_section(L, results, tests, idle, meta):
    """--baseline: tandem (new) against tandem-base (old), run in the same rounds; ratios new / old."""

    def by_round(test, target, key):
        return {r["round"]: r.get(key) for r in results.get(test, {}).get(target, []) if r.get("ok")}

    L.append("")
    L.append("## A/B: tandem (new) against tandem-base (old, --baseline), same rounds")
    L.append("")
    L.append(
        "Medians over rounds; new / old is the ratio of the medians, per round the ratio inside each round. "
        f"Peak RSS is each run's own VmHWM (reset before the run{'' if all_hwm_reset(results) else '; NOT reset here, so cumulative'}). "
        f"CPU and peak RSS hold when new / old <= {AB_LIMIT:.2f}."
    )
    L.append("")
    L.append("| test | figure | new | old | new / old | per round (new / old) | holds |")
    L.append("| --- | --- | ---: | ---: | ---: | --- | --- |")
    rows = [("req/s", "rps", 0, False), ("CPU ms / 10k req", "cpu_ms_per_10k", 1, True), ("peak RSS KiB", "hwm_kib", 0, True)]
    for test in [t for t in tests if t != "latency"]:
        for label, key, nd, gate in rows:
            n, o = by_round(test, "tandem", key), by_round(test, "tandem-base", key)
            nm, om = med(list(n.values())), med(list(o.values()))
            per = [ratio(n.get(k), o.get(k)) for k in sorted(set(n) & set(o))]
            q = ratio(nm, om)
            holds = ("yes" if q is not None and q <= AB_LIMIT else "no") if gate else "-"
            L.append(
                f"| {test} | {label} | {fmt(nm, nd)} | {fmt(om, nd)} | {fmt(q, 3)} | "
                f"{', '.join(fmt(v, 3) for v in per) or '-'} | {holds} |"
            )
    if "latency" in tests:
        for q in ["p50", "p90", "p99"]:
            n, o = by_round("latency", "tandem", q), by_round("latency", "tandem-base", q)
            nm, om = med(list(n.values())), med(list(o.values()))
            per = [ratio(n.get(k), o.get(k)) for k in sorted(set(n) & set(o))]
            L.append(
                f"| latency | {q} ms | {fmt(nm, 3)} | {fmt(om, 3)} | {fmt(ratio(nm, om), 3)} | "
                f"{', '.join(fmt(v, 3) for v in per) or '-'} | - |"
            )
    hn, ho = meta["hwm"].get("tandem"), meta["hwm"].get("tandem-base")
    L.append(f"| all | peak RSS over the whole phase KiB | {fmt(hn)} | {fmt(ho)} | {fmt(ratio(hn, ho), 3)} | - | - |")
    i_n = idle.get("tandem", {}).get("idle_rss_kib")
    i_o = idle.get("tandem-base", {}).get("idle_rss_kib")
    if i_n or i_o:
        L.append(f"| idle | RSS 1 s after start KiB | {fmt(i_n)} | {fmt(i_o)} | {fmt(ratio(i_n, i_o), 3)} | - | - |")
        b_n = idle.get("tandem", {}).get("bytes_per_conn")
        b_o = idle.get("tandem-base", {}).get("bytes_per_conn")
        L.append(f"| idle | bytes per idle keep-alive conn | {fmt(b_n)} | {fmt(b_o)} | {fmt(ratio(b_n, b_o), 3)} | - | - |")


def all_hwm_reset(results):
    return all(r.get("hwm_reset", False) for runs in results.values() for rs in runs.values() for r in rs)


def summarize(results, args, idle, two, meta):
    """Markdown: the table of medians over rounds, ratios, per-round target checks."""
    L = []
    tests = args.tests
    targets = args.targets
    proxies = [t for t in targets if t != "direct"]

    def samples(test, target, key, src=results):
        return [r.get(key) for r in src.get(test, {}).get(target, []) if r.get("ok")]

    L.append(f"# tandem side-by-side: {meta['started']}")
    L.append("")
    L.append(
        f"rounds {args.rounds}, {args.duration}s per run; wrk -t1 -c{args.conns}; h2load -c{args.h2_conns} "
        f"-m{args.h2_streams}; oha -q {args.rate} -c{args.latency_conns} --latency-correction; "
        f"proxy+backend on CPU 0, load on CPU 1. Figures are medians over rounds."
    )
    L.append(f"machine: {meta['cpus']} CPUs; load average before {meta['load_before']}, after {meta['load_after']}")
    L.append(f"tandem: {meta['tandem_bin']} ({meta['binary_size']} bytes stripped, {meta.get('linkage', '?')}), {meta['tandem_rev']}")
    L.append(f"tandem --version: {meta.get('tandem_version', '?')}")
    if meta.get("baseline"):
        b = meta["baseline"]
        L.append(f"tandem-base (--baseline): {b['bin']} ({b['binary_size']} bytes stripped, {b['linkage']}), {b['version']}")
    L.append(f"nginx {meta['nginx']}, HAProxy {meta['haproxy']}, {meta['oha']}")
    L.append("")
    L.append("## Throughput (requests per second) and proxy CPU per 10k requests")
    L.append("")
    L.append("| test | target | req/s | vs nginx | vs direct | CPU ms / 10k req | CPU vs nginx | errors |")
    L.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for test in [t for t in tests if t != "latency"]:
        base_n = med(samples(test, "nginx", "rps"))
        base_d = med(samples(test, "direct", "rps"))
        cpu_n = med(samples(test, "nginx", "cpu_ms_per_10k"))
        for t in targets:
            rps = med(samples(test, t, "rps"))
            cpu = med(samples(test, t, "cpu_ms_per_10k"))
            errs = sum((r.get("errors") or 0) for r in results.get(test, {}).get(t, []))
            bad = sum(1 for r in results.get(test, {}).get(t, []) if not r.get("ok"))
            L.append(
                f"| {test} | {t} | {fmt(rps)} | {fmt(ratio(rps, base_n), 2)} | {fmt(ratio(rps, base_d), 2)} | "
                f"{fmt(cpu, 1)} | {fmt(ratio(cpu, cpu_n), 2) if t != 'direct' else '-'} | {errs}{' (' + str(bad) + ' failed runs)' if bad else ''} |"
            )
    if "latency" in tests:
        L.append("")
        L.append(f"## Latency at {args.rate} req/s (ms, with latency correction; added = proxy - direct)")
        L.append("")
        L.append("| target | p50 | p90 | p99 | p99.9 | added p50 | added p90 | p99 vs nginx | errors |")
        L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        d50, d90 = med(samples("latency", "direct", "p50")), med(samples("latency", "direct", "p90"))
        n99 = med(samples("latency", "nginx", "p99"))
        for t in targets:
            p = {k: med(samples("latency", t, k)) for k in ["p50", "p90", "p99", "p99.9"]}
            errs = sum((r.get("errors") or 0) for r in results.get("latency", {}).get(t, []))
            add50 = None if t == "direct" or p["p50"] is None or d50 is None else p["p50"] - d50
            add90 = None if t == "direct" or p["p90"] is None or d90 is None else p["p90"] - d90
            L.append(
                f"| {t} | {fmt(p['p50'], 3)} | {fmt(p['p90'], 3)} | {fmt(p['p99'], 3)} | {fmt(p['p99.9'], 3)} | "
                f"{fmt(add50, 3)} | {fmt(add90, 3)} | {fmt(ratio(p['p99'], n99), 2)} | {errs} |"
            )
    L.append("")
    L.append("## Memory (KiB; a process's figures sum over it and its children, e.g. nginx master + worker)")
    L.append("")
    L.append("| target | peak RSS during the run (VmHWM) | idle RSS after start | RSS with idle conns | bytes per idle conn |")
    L.append("| --- | ---: | ---: | ---: | ---: |")
    for t in proxies:
        hwm = meta["hwm"].get(t)
        i = idle.get(t, {})
        L.append(
            f"| {t} | {fmt(hwm)} | {fmt(i.get('idle_rss_kib'))} | {fmt(i.get('rss_with_conns_kib'))} "
            f"({i.get('conns', '-')} conns) | {fmt(i.get('bytes_per_conn'))} |"
        )
    if two:
        L.append("")
        L.append("## Two workers (tandem --workers 2, nginx worker_processes 2, HAProxy nbthread 2; nothing pinned)")
        L.append("")
        L.append("| test | target | req/s | vs nginx | vs direct | CPU ms / 10k req | CPU vs nginx |")
        L.append("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for test in two.get("tests", []):
            res = two["results"]
            base_n = med(samples(test, "nginx", "rps", res))
            base_d = med(samples(test, "direct", "rps", res))
            cpu_n = med(samples(test, "nginx", "cpu_ms_per_10k", res))
            for t in two["targets"]:
                rps = med(samples(test, t, "rps", res))
                cpu = med(samples(test, t, "cpu_ms_per_10k", res))
                L.append(
                    f"| {test} | {t} | {fmt(rps)} | {fmt(ratio(rps, base_n), 2)} | {fmt(ratio(rps, base_d), 2)} | "
                    f"{fmt(cpu, 1)} | {fmt(ratio(cpu, cpu_n), 2) if t != 'direct' else '-'} |"
                )

    if "tandem-base" in targets and "tandem" in targets:
        ab_section(L, results, tests, idle, meta)

    # Targets of issue 8, checked per round (a target holds when it holds in 2 of 3 rounds).
    L.append("")
    L.append("## Targets (per round; holds when it holds in at least 2 of 3 rounds, or a majority of rounds)")
    L.append("")
    L.append("| figure | target | per round | holds |")
    L.append("| --- | --- | --- | --- |")

    def per_round(test, target, key):
        out = {}
        for r in results.get(test, {}).get(target, []):
            if r.get("ok"):
                out[r["round"]] = r.get(key)
        return out

    def check(label, goal, values, passes):
        shown = ", ".join(fmt(v, 2) for v in values) or "-"
        n_ok = sum(1 for v in values if v is not None and passes(v))
        need = len(values) // 2 + 1 if values else 1
        L.append(f"| {label} | {goal} | {shown} | {'yes' if values and n_ok >= need else 'no'} ({n_ok}/{len(values)}) |")

    def ratios(test, a, b, key):
        ra, rb = per_round(test, a, key), per_round(test, b, key)
        return [ratio(ra.get(k), rb.get(k)) for k in sorted(set(ra) & set(rb))]

    rounds = range(1, args.rounds + 1)
    if "h1-small" in tests:
        check("HTTP/1.1 req/s small, tandem / nginx", ">= 1.10", ratios("h1-small", "tandem", "nginx", "rps"), lambda v: v >= 1.10)
        check("HTTP/1.1 req/s small, tandem-op / nginx", ">= 1.00", ratios("h1-small", "tandem-op", "nginx", "rps"), lambda v: v >= 1.00)
        check("CPU per request at saturation (small), tandem / nginx", "<= 0.90", ratios("h1-small", "tandem", "nginx", "cpu_ms_per_10k"), lambda v: v <= 0.90)
    if "h1-16k" in tests:
        check("HTTP/1.1 req/s 16 KiB, tandem / nginx", ">= 1.00", ratios("h1-16k", "tandem", "nginx", "rps"), lambda v: v >= 1.00)
    if "h2c" in tests:
        check("h2c req/s, tandem / nginx", ">= 1.50", ratios("h2c", "tandem", "nginx", "rps"), lambda v: v >= 1.50)
        check("h2c req/s, haproxy / nginx (reference)", "about 1.4", ratios("h2c", "haproxy", "nginx", "rps"), lambda v: True)
    if "latency" in tests:
        for q in ["p50", "p90"]:
            t_ = per_round("latency", "tandem", q)
            n_ = per_round("latency", "nginx", q)
            d_ = per_round("latency", "direct", q)
            diffs = []
            for k in rounds:
                if k in t_ and k in n_ and k in d_:
                    diffs.append((t_[k] - d_[k]) - (n_[k] - d_[k]))
            check(f"added latency {q}: tandem - nginx (ms)", "<= 0", diffs, lambda v: v <= 0.0)
        check("p99 at a fixed rate, tandem / nginx", "<= 1.0", ratios("latency", "tandem", "nginx", "p99"), lambda v: v <= 1.0)
    hwm = meta["hwm"].get("tandem")
    L.append(f"| peak RSS during the run, tandem | <= 10 MiB | {fmt(hwm)} KiB | {'yes' if hwm and hwm <= 10240 else 'no'} |")
    hwm = meta["hwm"].get("tandem-op")
    L.append(f"| peak RSS during the run, tandem-op | <= 10 MiB | {fmt(hwm)} KiB | {'yes' if hwm and hwm <= 10240 else 'no'} |")
    i = idle.get("tandem", {}).get("idle_rss_kib")
    L.append(f"| idle RSS after start, tandem | <= 5 MiB | {fmt(i)} KiB | {'yes' if i and i <= 5120 else 'no'} |")
    L.append("")
    return "\n".join(L)


# ----------------------------------------------------------------------------------------------


def tool_version(argv):
    rc, out = run_cmd(argv, 10)
    return out.strip().splitlines()[0] if out.strip() else "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="results directory (default bench-results/<timestamp>)")
    ap.add_argument("--tandem", default=str(default_tandem()), help="tandem binary (default: the static release build)")
    ap.add_argument("--baseline", help="a second tandem binary, run as target tandem-base (A/B a change)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per load run")
    ap.add_argument("--conns", type=int, default=50, help="wrk connections")
    ap.add_argument("--h2-conns", type=int, default=10)
    ap.add_argument("--h2-streams", type=int, default=10)
    ap.add_argument("--rate", type=int, default=2000, help="fixed rate for the latency run")
    ap.add_argument("--latency-conns", type=int, default=20)
    ap.add_argument("--idle-conns", type=int, default=10_000)
    ap.add_argument("--tests", default="h1-small,h1-16k,h2c,latency")
    ap.add_argument("--targets", default="direct,tandem,tandem-op,nginx,haproxy")
    ap.add_argument("--skip-idle", action="store_true")
    ap.add_argument("--skip-two", action="store_true", help="skip the two-worker comparison")
    ap.add_argument("--quick", action="store_true", help="1 round of 3 s, no idle or two-worker phase")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.skip_idle, args.skip_two = 1, 3, True, True
    args.tests = [t for t in args.tests.split(",") if t and t != "none"]
    args.targets = [t for t in args.targets.split(",") if t]
    if args.baseline and "tandem-base" not in args.targets:
        args.targets.append("tandem-base")

    # Absolute: nginx resolves relative paths in its command line against its own prefix.
    out = Path(args.out).resolve() if args.out else ROOT / "bench-results" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "tmp").mkdir(exist_ok=True)
    tandem_bin = args.tandem
    if not os.access(tandem_bin, os.X_OK):
        raise SystemExit(f"{tandem_bin} missing: run benches/compare.sh, which builds it")
    for tool in ["nginx", "haproxy", "wrk", "h2load", "oha", "taskset"]:
        if tool == "oha" and "latency" not in args.tests:
            continue
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: run benches/compare.sh, which installs it")

    rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpus": os.cpu_count(),
        "load_before": " ".join(open("/proc/loadavg").read().split()[:3]),
        "tandem_bin": tandem_bin,
        "binary_size": os.path.getsize(tandem_bin),
        "linkage": elf_linkage(tandem_bin),
        # The tree's revision says which commit the binary is only when it is this tree's build.
        "tandem_rev": (rev.stdout.strip() or "?")
        if Path(tandem_bin).resolve().is_relative_to(ROOT / "target")
        else f"not built from this tree ({ROOT} is at {rev.stdout.strip() or '?'})",
        "tandem_version": tool_version([tandem_bin, "--version"]),
        "nginx": tool_version(["nginx", "-v"]),
        "haproxy": tool_version(["haproxy", "-v"]),
        "oha": tool_version(["oha", "--version"]) if shutil.which("oha") else "oha not used",
        "argv": sys.argv,
        "hwm": {},
    }
    if args.baseline:
        if not os.access(args.baseline, os.X_OK):
            raise SystemExit(f"--baseline {args.baseline}: not an executable")
        meta["baseline"] = {
            "bin": args.baseline,
            "binary_size": os.path.getsize(args.baseline),
            "linkage": elf_linkage(args.baseline),
            "version": tool_version([args.baseline, "--version"]),
        }
    log(f"results in {out}; load average {meta['load_before']}")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    results = {t: {x: [] for x in args.targets} for t in args.tests}
    idle, two = {}, {}
    servers = {}
    try:
        # Phase 1: pinned, one worker each.
        servers["backend"] = start_backend(out, 1, "0")
        for t in args.targets:
            if t != "direct":
                servers[t] = start_proxy(t, out, 1, "0", tandem_bin, baseline=args.baseline)
        time.sleep(1.0)
        meta["idle_rss_main"] = {t: s.rss_kib() for t, s in servers.items()}
        order = list(args.targets)
        peak = {}  # per target: the highest per-run peak RSS (VmHWM is reset before each run)
        for rnd in range(1, args.rounds + 1):
            k = (rnd - 1) % len(order)
            rot = order[k:] + order[:k]
            for test in args.tests:
                for t in rot:
                    r = measure(test, t, servers, args, "1")
                    r["round"] = rnd
                    results[test][t].append(r)
                    shown = f"{r.get('rps') or 0:,.0f} req/s" if test != "latency" else f"p50 {fmt(r.get('p50'), 3)} p99 {fmt(r.get('p99'), 3)} ms"
                    peak[t] = max(peak.get(t, 0), r.get("hwm_kib") or 0)
                    log(f"round {rnd} {test:9} {t:10} {shown}  cpu/10k {fmt(r.get('cpu_ms_per_10k'), 1)} ms  peak {fmt(r.get('hwm_kib'))} KiB  errors {r.get('errors')}{'' if r.get('ok') else '  FAILED'}")
                    time.sleep(0.5)
        meta["hwm"] = {t: max(s.hwm_kib(), peak.get(t, 0)) for t, s in servers.items()}
        if "tandem-op" in servers:
            try:
                _, body = http_get(PORTS["tandem-op"][2], "/metrics")
                m = re.findall(rb'tandem_access_log_(lines|dropped)_total (\d+)', body)
                meta["tandem_op_access_log"] = {k.decode(): int(v) for k, v in m}
            except OSError:
                pass
        for s in servers.values():
            s.stop()
        servers = {}

        # Phase 2: idle RSS and idle keep-alive connections, fresh processes.
        if not args.skip_idle:
            idle_phase(args, out, tandem_bin, idle)

        # Phase 3: two workers, nothing pinned.
        if not args.skip_two:
            two_tests = [t for t in args.tests if t != "latency"]
            two_targets = [t for t in args.targets if t not in ("tandem-op", "tandem-base")]
            two_res = {t: {x: [] for x in two_targets} for t in two_tests}
            servers["backend"] = start_backend(out, 2, None)
            for t in two_targets:
                if t != "direct":
                    servers[t] = start_proxy(t, out, 2, None, tandem_bin, tag="-2w")
            for rnd in range(1, args.rounds + 1):
                k = (rnd - 1) % len(two_targets)
                rot = two_targets[k:] + two_targets[:k]
                for test in two_tests:
                    for t in rot:
                        r = measure(test, t, servers, args, None)
                        r["round"] = rnd
                        two_res[test][t].append(r)
                        log(f"2 workers round {rnd} {test:9} {t:10} {r.get('rps') or 0:,.0f} req/s  cpu/10k {fmt(r.get('cpu_ms_per_10k'), 1)} ms  errors {r.get('errors')}")
                        time.sleep(0.5)
            two = {"tests": two_tests, "targets": two_targets, "results": two_res}
    finally:
        for s in servers.values():
            s.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    meta["load_after"] = " ".join(open("/proc/loadavg").read().split()[:3])
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "args": vars(args), "results": results, "idle": idle, "two": two}, indent=1)
    )
    summary = summarize(results, args, idle, two, meta)
    (out / "summary.md").write_text(summary)
    print()
    print(summary)
    log(f"wrote {out}/summary.md and {out}/results.json")


if __name__ == "__main__":
    main()
