#!/usr/bin/env python3
"""Opaque TCP side by side: tandem's passthrough (transparent mode) vs HAProxy `mode tcp` vs nginx
`stream`, one worker each (issue 20).

Needs root: everything runs in a network namespace of its own (removed at the end), where an
iptables rule redirects the load generator's connections to the backend's port to tandem's
outbound listener, so tandem relays them as it would in a pod: original destination read from
the socket, protocol detection (the first bytes are binary: opaque at once), the relay. HAProxy and
nginx listen on ports of their own and connect to the same backend. Only the load generator's uid
is redirected; the proxies' own connections are not.

Two figures per proxy, run one after the other, in a rotated order each round:
  stream  one connection moving --stream-mib MiB to a sink that counts them (MiB/s);
  short   connections per second for --secs seconds: connect, 1 KiB each way, close
          (--clients processes).
Proxies are pinned to CPU 0, the backend and the load generator to CPU 1, as benches/compare.py
does. Every process started is stopped by its PID. A brief check of the script itself:
  sudo benches/compare_tcp.py --stream-mib 64 --secs 2 --rounds 1
"""

import argparse
import multiprocessing
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NS = f"tandem-bench-tcp-{os.getpid()}"
HOST = "127.0.0.1"
P_SINK, P_ECHO = 19001, 19002  # the backend: the ports clients are redirected from, for tandem
P_HAPROXY = {"sink": 19011, "echo": 19012}
P_NGINX = {"sink": 19021, "echo": 19022}
P_TANDEM_OUT = 15001
TANDEM_UID = 1337
LOAD_UID = 1338
CHUNK = 1 << 20
SHORT = 1024


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def in_ns(argv, cpus=None, uid=None):
    """argv inside the namespace, pinned to `cpus`, as `uid`."""
    out = ["ip", "netns", "exec", NS]
    if cpus is not None:
        out += ["taskset", "-c", cpus]
    if uid is not None:
        out += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return out + argv


# ---- the backend: a sink (counts bytes until EOF, answers the count) and an echo -------------

def backend(port_sink, port_echo):
    sel = selectors.DefaultSelector()
    for port, kind in ((port_sink, "sink"), (port_echo, "echo")):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((HOST, port))
        ls.listen(4096)
        ls.setblocking(False)
        sel.register(ls, selectors.EVENT_READ, ("listen", kind))
    buf = bytearray(CHUNK)
    counts = {}
    while True:
        for key, _ in sel.select(timeout=1.0):
            what, kind = key.data
            s = key.fileobj
            if what == "listen":
                try:
                    c, _ = s.accept()
                except BlockingIOError:
                    continue
                c.setblocking(False)
                counts[c.fileno()] = 0
                sel.register(c, selectors.EVENT_READ, ("conn", kind))
                continue
            try:
                n = s.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                n = 0
            if n and kind == "sink":
                counts[s.fileno()] += n
                continue
            if n:
                try:
                    s.setblocking(True)
                    s.sendall(buf[:n])
                    s.setblocking(False)
                except OSError:
                    n = 0
                else:
                    continue
            if kind == "sink":
                try:
                    s.setblocking(True)
                    s.sendall(counts[s.fileno()].to_bytes(8, "big"))
                except OSError:
                    pass
            counts.pop(s.fileno(), None)
            sel.unregister(s)
            s.close()


# ---- the load: one long stream, then short connections ---------------------------------------

def stream(port, mib, timeout):
    data = bytes(CHUNK)
    s = socket.create_connection((HOST, port), timeout=timeout)
    start = time.monotonic()
    for _ in range(mib):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while len(got) < 8:
        part = s.recv(8 - len(got))
        if not part:
            break
        got += part
    secs = time.monotonic() - start
    s.close()
    moved = int.from_bytes(got, "big") if len(got) == 8 else 0
    if moved != mib * CHUNK:
        raise SystemExit(f"stream through port {port}: the sink counted {moved} bytes, not {mib * CHUNK}")
    return mib / secs


def short_worker(port, secs, out):
    payload = b"x" * SHORT
    n = errors = 0
    end = time.monotonic() + secs
    while time.monotonic() < end:
        try:
            s = socket.create_connection((HOST, port), timeout=5)
            s.sendall(payload)
            got = 0
            while got < SHORT:
                part = s.recv(SHORT - got)
                if not part:
                    break
                got += len(part)
            s.close()
            if got == SHORT:
                n += 1
            else:
                errors += 1
        except OSError:
            errors += 1
    out.put((n, errors))


def short(port, secs, clients):
    q = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=short_worker, args=(port, secs, q)) for _ in range(clients)]
    for p in procs:
        p.start()
    results = [q.get(timeout=secs + 30) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    done = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    return done / secs, errors


def load_main(args):
    """Runs inside the namespace as the load uid (the redirected one), pinned to CPU 1."""
    ports = {
        "tandem": {"sink": P_SINK, "echo": P_ECHO},
        "haproxy": P_HAPROXY,
        "nginx": P_NGINX,
    }
    names = list(ports)
    results = {n: {"stream": [], "short": [], "errors": 0} for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            mibs = stream(ports[name]["sink"], args.stream_mib, args.secs * 10 + 60)
            rate, errors = short(ports[name]["echo"], args.secs, args.clients)
            results[name]["stream"].append(mibs)
            results[name]["short"].append(rate)
            results[name]["errors"] += errors
            log(f"round {r + 1} {name}: stream {mibs:.0f} MiB/s, short {rate:.0f} conn/s ({errors} errors)")
    print(repr(results), flush=True)


# ---- the proxies ------------------------------------------------------------------------------

def haproxy_cfg(d):
    lines = [
        "global", "    nbthread 1", f"    pidfile {d}/haproxy.pid", "    maxconn 8000",
        "defaults", "    mode tcp", "    timeout connect 1s", "    timeout client 60s", "    timeout server 60s",
    ]
    for kind, port in P_HAPROXY.items():
        backend_port = P_SINK if kind == "sink" else P_ECHO
        lines += [f"listen {kind}", f"    bind {HOST}:{port}", f"    server b {HOST}:{backend_port}"]
    return "\n".join(lines) + "\n"


def nginx_conf(d):
    servers = "".join(
        f"    server {{ listen {HOST}:{port} reuseport backlog=4096; proxy_pass {HOST}:{P_SINK if kind == 'sink' else P_ECHO}; "
        f"proxy_connect_timeout 1s; proxy_timeout 60s; proxy_half_close on; }}\n"
        for kind, port in P_NGINX.items()
    )
    # Debian's nginx has `stream` as a module (apt-get install libnginx-mod-stream).
    module = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
    load = f"load_module {module};\n" if module.exists() else ""
    return (
        f"{load}worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx.error.log warn;\n"
        f"events {{ worker_connections 16384; }}\nstream {{\n{servers}}}\n"
    )


class Proc:
    def __init__(self, name, argv, d):
        self.name = name
        self.err = open(d / f"{name}.stderr", "wb")
        self.p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.err, start_new_session=True)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.err.close()


def wait_port(port, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = sh("ip", "netns", "exec", NS, "bash", "-c", f"exec 3<>/dev/tcp/{HOST}/{port}", check=False)
        if r.returncode == 0:
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout}s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tandem", default=str(ROOT / "target" / "release" / "tandem"))
    ap.add_argument("--stream-mib", type=int, default=1024, help="MiB in the long stream (1 GiB)")
    ap.add_argument("--secs", type=int, default=10, help="seconds of short connections per proxy and round")
    ap.add_argument("--clients", type=int, default=4, help="load processes for short connections")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load:
        return load_main(args)
    if args.backend:
        return backend(P_SINK, P_ECHO)
    if os.geteuid() != 0:
        raise SystemExit("needs root (a network namespace and an iptables rule)")
    for tool in ("ip", "iptables", "taskset", "setpriv", "haproxy", "nginx"):
        if not shutil.which(tool):
            raise SystemExit(f"needs {tool}")
    tandem = Path(args.tandem)
    if not tandem.exists():
        raise SystemExit(f"no tandem binary at {tandem} (cargo build --release)")

    d = Path(tempfile.mkdtemp(prefix="tandem-bench-tcp-"))
    procs = []
    sh("ip", "netns", "add", NS)
    try:
        sh("ip", "-n", NS, "link", "set", "lo", "up")
        # The load generator's connections to the backend's ports go to tandem's outbound listener.
        sh("ip", "netns", "exec", NS, "iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", HOST,
           "-m", "multiport", "--dports", f"{P_SINK},{P_ECHO}", "-m", "owner", "--uid-owner", str(LOAD_UID),
           "-j", "REDIRECT", "--to-ports", str(P_TANDEM_OUT))
        (d / "haproxy.cfg").write_text(haproxy_cfg(d))
        (d / "nginx.conf").write_text(nginx_conf(d))
        procs.append(Proc("backend", in_ns([sys.executable, __file__, "--backend"], "1"), d))
        procs.append(Proc("tandem", in_ns([str(tandem), "run", "--workers", "1", "--access-log", "off",
                                           "--inbound", f"{HOST}:15006", "--outbound", f"{HOST}:{P_TANDEM_OUT}",
                                           "--admin", f"{HOST}:15020", "--app", f"{HOST}:8080"], "0", TANDEM_UID), d))
        procs.append(Proc("haproxy", in_ns(["haproxy", "-db", "-f", str(d / "haproxy.cfg")], "0"), d))
        procs.append(Proc("nginx", in_ns(["nginx", "-c", str(d / "nginx.conf"), "-g", "daemon off;"], "0"), d))
        for port in (P_SINK, P_ECHO, P_TANDEM_OUT, *P_HAPROXY.values(), *P_NGINX.values()):
            wait_port(port)
        budget = args.rounds * 3 * (args.secs * 12 + 120)
        load = subprocess.run(
            in_ns([sys.executable, __file__, "--load", "--stream-mib", str(args.stream_mib), "--secs", str(args.secs),
                   "--clients", str(args.clients), "--rounds", str(args.rounds)], "1", LOAD_UID),
            capture_output=True, text=True, timeout=budget)
        sys.stderr.write(load.stderr)
        if load.returncode != 0:
            raise SystemExit("the load generator failed")
        results = eval(load.stdout.strip().splitlines()[-1], {})  # our own repr, from the line above
    finally:
        for p in reversed(procs):
            p.stop()
        sh("ip", "netns", "del", NS, check=False)

    best_stream = max(statistics.median(results[n]["stream"]) for n in ("haproxy", "nginx"))
    nginx_short = statistics.median(results["nginx"]["short"])
    print(f"{'proxy':<8} {'stream MiB/s':>13} {'x best':>7} {'short conn/s':>13} {'x nginx':>8} {'errors':>7}")
    for name in ("tandem", "haproxy", "nginx"):
        s = statistics.median(results[name]["stream"])
        c = statistics.median(results[name]["short"])
        print(f"{name:<8} {s:>13.0f} {s / best_stream:>7.2f} {c:>13.0f} {c / nginx_short:>8.2f} {results[name]['errors']:>7}")
    print(f"(medians of {args.rounds} rounds; stream {args.stream_mib} MiB, short {args.secs}s x {args.clients} clients; logs in {d})")


if __name__ == "__main__":
    main()
