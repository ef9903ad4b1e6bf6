//! Transparent mode, listener side, with real iptables rules in network namespaces (needs root;
//! skips with the reason otherwise). The rules are written by hand here (`tandem iptables` is
//! another piece):
//!
//! ```text
//!  namespace "client"                    namespace "pod"
//!  10.233.9.2/30 ── veth ─────────────── 10.233.9.1/30
//!  remote HTTP app   :9090               tandem (uid 1337) 0.0.0.0:15006, 127.0.0.1:15001, 0.0.0.0:15020
//!  remote TCP echo   :9191, :9443        HTTP apps 127.0.0.1:8080 and :8081, TCP echo :6379,
//!                                        greeting servers :3306 (opaque port) and :7000
//!  PREROUTING: tcp to 8080,8081,6379,3306,7000 → REDIRECT 15006
//!  OUTPUT:     tcp to 10.233.9.2, not uid 1337 → REDIRECT 15001
//! ```
//!
//! The namespaces (with their rules and the veth pair) are removed by a drop guard, also when an
//! assertion fails; tandem is stopped by PID. Every server here serves a bounded number of
//! connections, each with read timeouts.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::netns::{in_netns, run, terminate, Pair};

const POD_IP: &str = "10.233.9.1";
const CLIENT_IP: &str = "10.233.9.2";
/// tandem's uid: its own connections are not redirected.
const TANDEM_UID: &str = "1337";
const GREETING: &[u8] = b"220 server speaks first\r\n";

/// The namespaces (with their rules) and tandem; torn down on drop, tandem first.
struct Pod {
    tandem: Option<Child>,
    ns: Pair,
}

impl Pod {
    fn new() -> Self {
        Pod { tandem: None, ns: Pair::new("tp", POD_IP, CLIENT_IP) }
    }

    fn iptables(&self, rule: &str) {
        let mut args = vec!["netns", "exec", &self.ns.pod, "iptables", "-w", "-t", "nat"];
        args.extend(rule.split_whitespace());
        run("ip", &args);
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(c) = &mut self.tandem {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Binds `addr` in namespace `ns` and serves at most 32 connections with `handler`, each on a
/// thread of its own with 10 s read and write timeouts.
fn serve(ns: &str, addr: &str, handler: fn(TcpStream, u16)) {
    let addr: SocketAddr = addr.parse().expect("addr");
    let listener = in_netns(ns, move || TcpListener::bind(addr).expect("bind"));
    std::thread::spawn(move || {
        for _ in 0..32 {
            let Ok((s, _)) = listener.accept() else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
            std::thread::spawn(move || handler(s, addr.port()));
        }
    });
}

/// An HTTP/1.1 app that answers `port=<its port>` and the request head it got, then closes.
fn http_app(mut s: TcpStream, port: u16) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("port={port}\n{}", String::from_utf8_lossy(&head));
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

/// Echoes until the client's end of stream, then ends its own (the half-close goes through).
fn echo(mut s: TcpStream, _: u16) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// A server-first protocol: a greeting before anything is read, then an echo.
fn greeter(mut s: TcpStream, port: u16) {
    if s.write_all(GREETING).is_ok() {
        echo(s, port);
    }
}

fn connect(addr: &str) -> TcpStream {
    let addr: SocketAddr = addr.parse().expect("addr");
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s
}

/// One request with `Connection: close`; the whole answer.
fn http(addr: &str, request: &str) -> String {
    let mut s = connect(addr);
    s.write_all(request.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn get(addr: &str, host: &str, path: &str) -> String {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"))
}

/// Sends `payload` and then its end of stream from a thread while reading everything back.
fn exchange(mut s: TcpStream, payload: Vec<u8>) -> Vec<u8> {
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        w.write_all(&payload).expect("send");
        w.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).expect("read to the end");
    writer.join().expect("writer");
    back
}

/// Bytes no detector takes for HTTP or TLS.
fn binary(n: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(20);
    let mut v: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
    v[0] = 0;
    v
}

fn skip_reason() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to create network namespaces and iptables rules");
    }
    for (tool, arg) in [("ip", "-V"), ("iptables", "-V"), ("setpriv", "--version"), ("curl", "--version")] {
        if Command::new(tool).arg(arg).output().is_err() {
            return Some("needs ip, iptables, setpriv and curl");
        }
    }
    None
}

fn lines_where(lines: &[serde_json::Value], f: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
    lines.iter().filter(|l| f(l)).cloned().collect()
}

#[test]
fn redirected_connections_are_detected_and_reach_their_original_destination() {
    if let Some(reason) = skip_reason() {
        println!("skipped: {reason}");
        return;
    }
    let mut pod = Pod::new();
    let dir = support::TempDir::new("transparent");
    // tandem runs as its own uid and writes its access log here.
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
    let log = dir.join("access.log");

    for port in ["8080", "8081"] {
        serve(&pod.ns.pod, &format!("127.0.0.1:{port}"), http_app);
    }
    serve(&pod.ns.pod, "127.0.0.1:6379", echo);
    serve(&pod.ns.pod, "127.0.0.1:3306", greeter);
    serve(&pod.ns.pod, "127.0.0.1:7000", greeter);
    serve(&pod.ns.client, &format!("{CLIENT_IP}:9090"), http_app);
    serve(&pod.ns.client, &format!("{CLIENT_IP}:9191"), echo);
    serve(&pod.ns.client, &format!("{CLIENT_IP}:9443"), echo);

    pod.iptables(
        "-A PREROUTING -i eth0 -p tcp -m multiport --dports 8080,8081,6379,3306,7000 -j REDIRECT --to-ports 15006",
    );
    pod.iptables(&format!(
        "-A OUTPUT -p tcp -d {CLIENT_IP} -m owner ! --uid-owner {TANDEM_UID} -j REDIRECT --to-ports 15001"
    ));

    let tandem = Command::new("ip")
        .args(["netns", "exec", &pod.ns.pod, "setpriv", "--reuid", TANDEM_UID, "--regid", TANDEM_UID, "--clear-groups"])
        .arg(support::bin())
        .args(["run", "--app", "127.0.0.1:8080", "--inbound", "0.0.0.0:15006", "--admin", "0.0.0.0:15020"])
        .args(["--outbound", "127.0.0.1:15001", "--workers", "1", "--access-log"])
        .arg(&log)
        .env("TANDEM_TRANSPARENT_DETECT_TIMEOUT", "200ms")
        .env("TANDEM_SHUTDOWN_DRAIN_TIMEOUT", "1s")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tandem");
    pod.tandem = Some(tandem);
    let admin = format!("{POD_IP}:15020");
    let admin_c = admin.clone();
    in_netns(&pod.ns.client, move || {
        support::poll_blocking(Duration::from_secs(30), "tandem ready", || {
            let addr: SocketAddr = admin_c.parse().ok()?;
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
            s.write_all(b"GET /ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            out.starts_with("HTTP/1.1 200").then_some(())
        })
    });

    // Inbound, from the client namespace to the pod's own ports.
    let client_ns = pod.ns.client.clone();
    let (a, b, h2, opaque, fast_greeting, slow_greeting) = in_netns(&client_ns, || {
        let a = get(&format!("{POD_IP}:8080"), "shop", "/a");
        let b = get(&format!("{POD_IP}:8081"), "shop", "/b");
        let h2 = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--http2-prior-knowledge", "-w", "\nversion=%{http_version}"])
            .arg(format!("http://{POD_IP}:8081/h2"))
            .output()
            .expect("curl");
        let h2 = String::from_utf8_lossy(&h2.stdout).into_owned();
        let opaque = exchange(connect(&format!("{POD_IP}:6379")), binary(256 * 1024));
        let greet = |port: u16| {
            let mut s = BufReader::new(connect(&format!("{POD_IP}:{port}")));
            let mut line = String::new();
            s.read_line(&mut line).expect("greeting");
            line
        };
        (a, b, h2, opaque, greet(3306), greet(7000))
    });
    assert!(a.starts_with("HTTP/1.1 200") && a.contains("port=8080"), "{a}");
    assert!(a.to_ascii_lowercase().contains(&format!("x-forwarded-for: {CLIENT_IP}")), "{a}");
    assert!(b.starts_with("HTTP/1.1 200") && b.contains("port=8081"), "the app on the original port answers: {b}");
    assert!(h2.contains("port=8081") && h2.ends_with("version=2"), "prior-knowledge h2 is detected: {h2}");
    assert!(opaque == binary(256 * 1024), "the opaque port's bytes come back exactly ({} bytes)", opaque.len());
    assert_eq!(fast_greeting.as_bytes(), GREETING, "opaque port: the server speaks first");
    assert_eq!(slow_greeting.as_bytes(), GREETING, "another port: the greeting comes after the detection timeout");

    // A reload (the same flags and environment, read again) swaps the connection settings; the
    // interception is not among them and keeps working.
    let pid = pod.tandem.as_ref().expect("tandem").id();
    // SAFETY: kill has no memory preconditions; the pid is tandem's, a child of this test.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) }, 0);
    let admin_r = admin.clone();
    in_netns(&client_ns, move || {
        support::poll_blocking(Duration::from_secs(30), "the reload applied", || {
            let metrics = get(&admin_r, "a", "/metrics");
            metrics.contains("tandem_config_reloads_total{result=\"applied\"} 1").then_some(())
        })
    });
    let (after, opaque_after) = in_netns(&client_ns, || {
        let after = get(&format!("{POD_IP}:8081"), "shop", "/after-reload");
        (after, exchange(connect(&format!("{POD_IP}:6379")), binary(1024)))
    });
    assert!(after.starts_with("HTTP/1.1 200") && after.contains("port=8081"), "after a reload: {after}");
    assert!(opaque_after == binary(1024), "after a reload the opaque port still relays");

    // Outbound, from the "app" in the pod namespace (not tandem's uid: redirected).
    let pod_ns = pod.ns.pod.clone();
    let (redirected, forward, raw, tls) = in_netns(&pod_ns, || {
        let redirected = get(&format!("{CLIENT_IP}:9090"), "elsewhere.invalid:7", "/out");
        let forward = http(
            "127.0.0.1:15001",
            &format!(
                "GET http://{CLIENT_IP}:9090/forward HTTP/1.1\r\nHost: {CLIENT_IP}:9090\r\nConnection: close\r\n\r\n"
            ),
        );
        let raw = exchange(connect(&format!("{CLIENT_IP}:9191")), binary(64 * 1024));
        let tls = exchange(connect(&format!("{CLIENT_IP}:9443")), support::client_hello("orders.shop.example"));
        (redirected, forward, raw, tls)
    });
    assert!(redirected.starts_with("HTTP/1.1 200") && redirected.contains("port=9090"), "{redirected}");
    assert!(redirected.contains("elsewhere.invalid:7"), "the Host the app chose is kept: {redirected}");
    assert!(forward.starts_with("HTTP/1.1 200") && forward.contains("port=9090"), "forward-proxy mode: {forward}");
    assert!(raw == binary(64 * 1024), "outbound opaque bytes come back exactly");
    assert!(tls == support::client_hello("orders.shop.example"), "a ClientHello not terminated passes through");

    // An opaque connection still open at the stop is cut at the drain deadline, flagged LR.
    let held = in_netns(&client_ns, || {
        let mut s = connect(&format!("{POD_IP}:6379"));
        s.write_all(b"\x00held").expect("send");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("echoed");
        s
    });

    // The detection counters, read from the admin port.
    let admin_m = admin.clone();
    let metrics = in_netns(&client_ns, move || get(&admin_m, "a", "/metrics"));
    let metrics = metrics.split_once("\r\n\r\n").map_or(metrics.clone(), |(_, body)| body.to_owned());
    let samples = support::parse_metrics(&metrics);
    let count = |direction: &str, result: &str| {
        support::metric_sum(
            &samples,
            "tandem_protocol_detection_total",
            &[("direction", direction), ("result", result)],
        )
    };
    assert!(count("inbound", "http1") >= 2.0, "{metrics}");
    assert!(count("inbound", "http2") >= 1.0, "{metrics}");
    assert!(count("inbound", "opaque") >= 3.0, "6379 twice and 3306 skip detection: {metrics}");
    assert!(count("inbound", "timeout") >= 1.0, "7000 waits for the timeout: {metrics}");
    assert!(count("outbound", "http1") >= 1.0, "{metrics}");
    assert!(count("outbound", "opaque") >= 1.0, "{metrics}");
    assert!(count("outbound", "tls") >= 1.0, "{metrics}");

    // SIGTERM: tandem drains, cuts the held connection at the deadline and exits 0.
    let status = terminate(pod.tandem.as_mut().expect("tandem"));
    assert_eq!(status.code(), Some(0));
    drop(held);

    let lines = support::json_lines(&log);
    let tcp = |dir: &str, host: &str| {
        lines_where(&lines, |l| l["protocol"] == "tcp" && l["direction"] == dir && l["upstream_host"] == host)
    };
    let echoed = tcp("inbound", "127.0.0.1:6379");
    assert!(
        echoed
            .iter()
            .any(|l| l["bytes_received"] == 262_144 && l["bytes_sent"] == 262_144 && l["response_flags"] == "-"),
        "one tcp line with the bytes each way: {echoed:?}"
    );
    assert!(echoed.iter().any(|l| l["response_flags"] == "LR"), "the held connection is cut as LR: {echoed:?}");
    assert!(echoed
        .iter()
        .all(|l| l["method"].is_null()
            && l["downstream_remote_address"].as_str().is_some_and(|a| a.starts_with(CLIENT_IP))));
    assert_eq!(tcp("inbound", "127.0.0.1:7000").len(), 1, "{lines:?}");
    let out_raw = tcp("outbound", &format!("{CLIENT_IP}:9191"));
    assert!(out_raw.iter().any(|l| l["bytes_received"] == 65_536 && l["bytes_sent"] == 65_536), "{out_raw:?}");
    let out_tls = tcp("outbound", &format!("{CLIENT_IP}:9443"));
    assert!(out_tls.iter().any(|l| l["authority"] == "orders.shop.example"), "the SNI is logged: {out_tls:?}");
    let http_lines = |dir: &str, path: &str| lines_where(&lines, |l| l["direction"] == dir && l["path"] == path);
    assert_eq!(http_lines("inbound", "/b")[0]["upstream_host"], "127.0.0.1:8081", "{lines:?}");
    let out = http_lines("outbound", "/out");
    assert_eq!(out[0]["upstream_host"], format!("{CLIENT_IP}:9090"), "the original destination: {out:?}");
    assert_eq!(out[0]["authority"], "elsewhere.invalid:7");
}
