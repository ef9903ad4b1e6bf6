//! The seed's pod built on this machine out of network namespaces (needs root; skips with the
//! reason otherwise):
//!
//! ```text
//!  namespace "client"                 namespace "pod" (the pod's shared network namespace)
//!  10.232.7.2/30 ── veth ──────────── 10.232.7.1/30
//!                                      tandem run   0.0.0.0:15006 (inbound), 0.0.0.0:15020 (admin)
//!                                      tandem echo  127.0.0.1:8080 (the app, loopback only)
//! ```
//!
//! The client reaches the app only through tandem; the app's own port is not reachable from
//! outside the pod; the admin's mutating endpoints answer only callers inside the pod. Both
//! namespaces (and with them the veth pair) are removed by a drop guard, also when an assertion
//! fails; the processes are stopped by PID.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::netns::{in_netns, terminate, Pair};

const POD_IP: &str = "10.232.7.1";
const CLIENT_IP: &str = "10.232.7.2";

/// The namespaces and processes of one run; torn down on drop, the processes first.
struct Pod {
    procs: Vec<Child>,
    ns: Pair,
}

impl Pod {
    /// Creates both namespaces (the guard owns them from the first one on) and the veth pair.
    fn new() -> Self {
        Pod { procs: Vec::new(), ns: Pair::new("pod", POD_IP, CLIENT_IP) }
    }

    /// Starts `tandem ARGS` inside the pod namespace with `ip netns exec`.
    fn spawn(&mut self, args: &[&str]) -> u32 {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns.pod, support::bin()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let pid = child.id();
        self.procs.push(child);
        pid
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One HTTP/1.1 request with `Connection: close`; the whole response as text.
fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: pod\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Polls `GET path` until it answers 200, at most 30 s.
fn poll_200(addr: SocketAddr, path: &str) {
    let start = Instant::now();
    loop {
        if http(addr, "GET", path).is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{path} on {addr} never answered 200");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn skip_reason() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to create network namespaces");
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("needs iproute2's ip (apt-get install iproute2)");
    }
    None
}

#[test]
fn the_seeds_pod_out_of_network_namespaces() {
    if let Some(reason) = skip_reason() {
        println!("skipped: {reason}");
        return;
    }
    let mut pod = Pod::new();
    pod.spawn(&["echo", "--listen", "127.0.0.1:8080", "--workers", "1"]);
    let tandem_pid = pod.spawn(&[
        "run",
        "--app",
        "127.0.0.1:8080",
        "--inbound",
        "0.0.0.0:15006",
        "--admin",
        "0.0.0.0:15020",
        "--outbound",
        "127.0.0.1:15001",
        "--access-log",
        "off",
        "--workers",
        "1",
    ]);
    let inbound: SocketAddr = format!("{POD_IP}:15006").parse().expect("addr");
    let admin: SocketAddr = format!("{POD_IP}:15020").parse().expect("addr");
    let app: SocketAddr = format!("{POD_IP}:8080").parse().expect("addr");

    let (hello, app_direct, app_ready, shutdown) = in_netns(&pod.ns.client, move || {
        poll_200(admin, "/ready");
        poll_200(admin, "/ready/app");
        let hello = http(inbound, "GET", "/hello").expect("through tandem");
        let app_direct = TcpStream::connect_timeout(&app, Duration::from_secs(5));
        let app_ready = http(admin, "GET", "/ready/app").expect("app readiness");
        let shutdown = http(admin, "POST", "/shutdown").expect("answer");
        (hello, app_direct.map(|_| ()), app_ready, shutdown)
    });

    // Through tandem: the echo app answers, and sees the client's address in x-forwarded-for.
    assert!(hello.starts_with("HTTP/1.1 200"), "{hello}");
    assert!(hello.contains("\"path\":\"/hello\""), "the echo app answered: {hello}");
    assert!(hello.contains(CLIENT_IP), "x-forwarded-for names the client: {hello}");
    // The app itself, bound to the pod's loopback, is not reachable from outside the pod.
    let err = app_direct.expect_err("the app port is not reachable from outside the pod");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    // Its readiness is, through tandem's admin port.
    assert!(app_ready.starts_with("HTTP/1.1 200"), "{app_ready}");
    // Stopping tandem is for callers inside the pod only.
    assert!(shutdown.starts_with("HTTP/1.1 403"), "{shutdown}");

    // Inside the pod, loopback reaches the app directly (the shared network namespace).
    let inside = in_netns(&pod.ns.pod, || http("127.0.0.1:8080".parse().expect("addr"), "GET", "/inside"));
    assert!(inside.expect("inside the pod").starts_with("HTTP/1.1 200"));

    // SIGTERM by PID: tandem drains and exits 0.
    let child = pod.procs.iter_mut().find(|c| c.id() == tandem_pid).expect("tandem");
    assert_eq!(terminate(child).code(), Some(0));
}
