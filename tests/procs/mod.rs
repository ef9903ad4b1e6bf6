//! Test support for tests that drive the built `tandem` binary as a process: `tandem run` and
//! `tandem echo` on ports the kernel picks (127.0.0.1:0, the addresses read from their log), a
//! free port for the few tests that must name one before the process starts, a port that stays
//! refusing, spawned processes that are killed by PID when dropped, stderr captured to a file,
//! readiness polled rather than slept for, and signals.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `tandem` binary under test: `TANDEM_TEST_BIN` when set (CI points it at the binary built
/// exactly as the Dockerfile builds it, `cargo build --release --locked`), else the one cargo built
/// for these tests.
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("TANDEM_TEST_BIN")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_tandem").to_owned())
    })
}

/// A port nothing listens on right now: bind 127.0.0.1:0, read the port, close.
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

/// A port that refuses connections for as long as the returned socket lives: bound, never
/// listening. Unlike [`free_port`], nothing else (another test's server) can take it meanwhile.
pub fn refusing_port() -> (socket2::Socket, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
    let a = s.local_addr().expect("addr").as_socket().expect("inet");
    (s, a)
}

/// A process this test started; killed (by its PID) when dropped if still running.
pub struct Proc {
    pub child: tokio::process::Child,
    pub pid: i32,
    pub stderr_path: PathBuf,
    pub name: String,
}

static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn stderr_file(name: &str) -> (PathBuf, std::fs::File) {
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("tandem-test-{}-{n}-{name}.stderr", std::process::id()));
    let f = std::fs::File::create(&p).expect("stderr file");
    (p, f)
}

impl Proc {
    /// Spawns `program args` with stdout discarded and stderr to a file.
    pub fn spawn(name: &str, program: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let (stderr_path, f) = stderr_file(name);
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(f)).kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        let pid = child.id().expect("pid") as i32;
        Self { child, pid, stderr_path, name: name.to_owned() }
    }

    /// Sends `sig` to this process (by PID).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill only sends a signal to a process this test started and has not reaped.
        let rc = unsafe { libc::kill(self.pid, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid);
    }

    /// Waits for the process to exit, at most `limit` (a hang bound, not a performance check).
    pub async fn exit(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(s) => s.expect("wait"),
            Err(_) => panic!("{} did not exit within {limit:?}; stderr:\n{}", self.name, self.stderr()),
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// GET `path` on `addr` over a fresh HTTP/1.1 connection: status, headers, body.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(http::StatusCode, http::HeaderMap, Bytes), String> {
    request(addr, http::Method::GET, path).await
}

/// One request on a fresh HTTP/1.1 connection.
pub async fn request(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((parts.status, parts.headers, body))
}

/// Polls `GET path` on `addr` until it answers `want`, at most 30 s.
pub async fn poll_status(addr: SocketAddr, path: &str, want: u16) {
    let start = Instant::now();
    loop {
        if let Ok((s, _, _)) = get(addr, path).await {
            if s.as_u16() == want {
                return;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(30), "GET {path} on {addr} never answered {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the admin `/metrics` until `line` (exact, e.g. a gauge with its value) appears, at most 30 s.
pub async fn poll_metric(admin: SocketAddr, line: &str) {
    let start = Instant::now();
    loop {
        if let Ok((_, _, body)) = get(admin, "/metrics").await {
            if String::from_utf8_lossy(&body).lines().any(|l| l == line) {
                return;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(30), "metric line {line:?} never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The in-flight gauge line for the inbound side with value `n`.
pub fn inbound_in_flight(n: usize) -> String {
    format!("tandem_http_requests_in_flight{{direction=\"inbound\"}} {n}")
}

/// The address `key` names in the process's log line containing `line`, in either log format
/// (`key=ADDR` or `"key":"ADDR"`).
fn logged_addr(stderr: &str, line: &str, key: &str) -> Option<SocketAddr> {
    let l = stderr.lines().find(|l| l.contains(line))?;
    let text = format!("{key}=");
    let json = format!("\"{key}\":\"");
    let rest = match (l.find(&text), l.find(&json)) {
        (Some(i), _) => &l[i + text.len()..],
        (None, Some(i)) => &l[i + json.len()..],
        (None, None) => return None,
    };
    let end = rest.find([' ', '"']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Waits, at most 30 s, until `proc` logs a line containing `line`, and returns its stderr then.
/// Panics with the stderr if the process exits first.
pub async fn wait_logged(proc: &mut Proc, line: &str) -> String {
    let start = Instant::now();
    loop {
        let stderr = proc.stderr();
        if stderr.contains(line) {
            return stderr;
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!("{} exited ({status}) before logging {line:?}; stderr:\n{stderr}", proc.name);
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{} never logged {line:?}; stderr:\n{stderr}", proc.name);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `tandem echo` on a port the kernel picks (read from its log), answering.
pub async fn echo() -> (Proc, SocketAddr) {
    let mut p = Proc::spawn("echo", bin(), &["echo", "--listen", "127.0.0.1:0", "--workers", "1"], &[]);
    let stderr = wait_logged(&mut p, "echo app listening").await;
    let addr = logged_addr(&stderr, "echo app listening", "listen").expect("the echo app logs its address");
    (p, addr)
}

/// A running `tandem run`: its process and addresses.
pub struct Tandem {
    pub proc: Proc,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

/// `tandem run` in front of `app` with `extra` flags, every listener on a port the kernel picks;
/// returns once it has logged that it is ready, with the addresses it logged.
pub async fn tandem(app: SocketAddr, extra: &[&str], env: &[(&str, &str)]) -> Tandem {
    let p = app.to_string();
    let any = "127.0.0.1:0";
    let mut args = vec!["run", "--app", &p, "--inbound", any, "--admin", any, "--outbound", any];
    if !extra.contains(&"--access-log") {
        args.extend_from_slice(&["--access-log", "off"]);
    }
    if !extra.contains(&"--workers") {
        args.extend_from_slice(&["--workers", "2"]);
    }
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn("tandem", bin(), &args, env);
    let stderr = wait_logged(&mut proc, "tandem is ready").await;
    let addr = |key| {
        logged_addr(&stderr, "tandem is ready", key).unwrap_or_else(|| panic!("no {key} address logged:\n{stderr}"))
    };
    let (inbound, admin) = (addr("inbound"), addr("admin"));
    Tandem { proc, inbound, admin }
}
