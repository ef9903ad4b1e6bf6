//! Driving the built `tandem` binary ([`super::bin`]) as a process: one wrapper, [`Proc`], for
//! every process a test starts (stderr captured to a file, killed by PID when dropped, signals,
//! waiting for its exit or for a log line from async and from synchronous tests), and [`Tandem`],
//! a running `tandem run` with the addresses it logged. `tandem run` and `tandem echo` listen on
//! ports the kernel picks (127.0.0.1:0) and the addresses are read from their log; readiness is
//! polled rather than slept for. Also a few HTTP/1.1 helpers that take an address, for polling a
//! process's ports.

use super::{bin, wait_for};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a process may take to log a line it is waited for.
const LOG_LIMIT: Duration = Duration::from_secs(30);

/// A process this test started; killed (by its PID) when dropped if still running. Its stderr
/// goes to a file, removed on drop.
pub struct Proc {
    pub child: std::process::Child,
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
    /// Spawns `program args` (with `env` added) with stdout discarded and stderr to a file.
    pub fn spawn(name: &str, program: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(program);
        cmd.args(args).stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::start(name, cmd)
    }

    /// Spawns `cmd` with stdin closed and stderr to a file; stdout as the caller set it.
    pub fn start(name: &str, mut cmd: Command) -> Self {
        let (stderr_path, f) = stderr_file(name);
        cmd.stdin(Stdio::null()).stderr(Stdio::from(f));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name} ({:?}): {e}", cmd.get_program()));
        let pid = i32::try_from(child.id()).expect("pid");
        Self { child, pid, stderr_path, name: name.to_owned() }
    }

    /// Its resident memory in KiB, total and anonymous (the heap and stacks, not the binary's
    /// pages), from /proc/PID/status.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).expect("status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/{}/status", self.pid))
        };
        (field("VmRSS:"), field("RssAnon:"))
    }

    /// Sends `sig` to this process (by PID).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill only sends a signal to a process this test started and has not reaped.
        let rc = unsafe { libc::kill(self.pid, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid);
    }

    /// Its exit status if it has exited (asks again after it was reaped: the status is kept).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the process to exit, at most `limit` (a hang bound, not a performance check).
    pub async fn exit(&mut self, limit: Duration) -> ExitStatus {
        self.until(limit, "did not exit", Self::exited).await
    }

    /// [`Proc::exit`] for synchronous tests.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        self.until_blocking(limit, "did not exit", Self::exited)
    }

    /// Asks `f` every 5 ms until it answers, at most `limit`; then panics saying the process
    /// `failed` (e.g. "did not exit"), with its stderr.
    async fn until<T>(&mut self, limit: Duration, failed: &str, mut f: impl FnMut(&mut Self) -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            self.late(deadline, limit, failed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// [`Proc::until`] for synchronous tests.
    fn until_blocking<T>(&mut self, limit: Duration, failed: &str, mut f: impl FnMut(&mut Self) -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            self.late(deadline, limit, failed);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn late(&self, deadline: Instant, limit: Duration, failed: &str) {
        assert!(Instant::now() < deadline, "{} {failed} within {limit:?}; stderr:\n{}", self.name, self.stderr());
    }

    /// Everything it has written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Every complete stderr line so far (a line still being written is left for the next call).
    pub fn stderr_lines(&self) -> Vec<String> {
        let text = self.stderr();
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        complete.lines().map(str::to_owned).collect()
    }

    /// Every stderr line so far, parsed as JSON (panics on one that is not).
    pub fn json_stderr(&self) -> Vec<serde_json::Value> {
        self.stderr_lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {l}")))
            .collect()
    }

    /// Whether the process has exited, without reaping it (or it was reaped already).
    fn has_exited(&self) -> bool {
        // SAFETY: a zeroed siginfo_t is a valid value; waitid with WNOWAIT only looks at our own
        // child and leaves it to be reaped through `child`.
        let (rc, info) = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            (libc::waitid(libc::P_PID, self.pid as libc::id_t, &mut info, flags), info)
        };
        if rc != 0 {
            // ECHILD: reaped already (it exited); anything else (EINTR): ask again.
            return std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD);
        }
        // SAFETY: waitid filled `info` (si_pid stays 0 while the child runs, under WNOHANG).
        unsafe { info.si_pid() != 0 }
    }

    /// Every stderr line, once the process has exited (waiting at most `limit`).
    pub fn all_stderr_lines(&self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        while !self.has_exited() {
            self.late(deadline, limit, "did not close its stderr (exit)");
            std::thread::sleep(Duration::from_millis(5));
        }
        self.stderr().lines().map(str::to_owned).collect()
    }

    /// Its stderr if it contains `line`; panics with the stderr if the process has exited first.
    fn logged_yet(&mut self, line: &str) -> Option<String> {
        let stderr = self.stderr();
        if stderr.contains(line) {
            return Some(stderr);
        }
        if let Some(status) = self.exited() {
            panic!("{} exited ({status}) before logging {line:?}; stderr:\n{stderr}", self.name);
        }
        None
    }

    /// Waits, at most 30 s, until the process logs a line containing `line`, and returns its
    /// stderr then. Panics with the stderr if the process exits first.
    pub async fn logged(&mut self, line: &str) -> String {
        self.until(LOG_LIMIT, &format!("never logged {line:?}"), |p| p.logged_yet(line)).await
    }

    /// [`Proc::logged`] for synchronous tests.
    pub fn logged_blocking(&mut self, line: &str) -> String {
        self.until_blocking(LOG_LIMIT, &format!("never logged {line:?}"), |p| p.logged_yet(line))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// Waits, at most 30 s, until `proc` logs a line containing `line`, and returns its stderr then.
/// Panics with the stderr if the process exits first.
pub async fn wait_logged(proc: &mut Proc, line: &str) -> String {
    proc.logged(line).await
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

/// `tandem echo` as a process on a port the kernel picks (read from its log), answering.
pub async fn echo() -> (Proc, SocketAddr) {
    let mut p = Proc::spawn("echo", bin(), &["echo", "--listen", "127.0.0.1:0", "--workers", "1"], &[]);
    let stderr = p.logged("echo app listening").await;
    let addr = logged_addr(&stderr, "echo app listening", "listen").expect("the echo app logs its address");
    (p, addr)
}

/// A running `tandem run`: its process and the addresses it logged. It derefs to its [`Proc`]
/// (`t.signal(..)`, `t.child`, `t.json_stderr()`).
pub struct Tandem {
    pub proc: Proc,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

impl std::ops::Deref for Tandem {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.proc
    }
}

impl std::ops::DerefMut for Tandem {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

const READY: &str = "tandem is ready";

impl Tandem {
    /// `tandem run` with every listener on 127.0.0.1:0, JSON diagnostics, and `args` after those
    /// (a later flag wins); stdout goes to /dev/null. Waits for the "tandem is ready" line and
    /// reads the addresses from it.
    pub fn run(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut cmd = Self::command(args, envs);
        cmd.stdout(Stdio::null());
        Self::spawn(cmd)
    }

    /// The command [`Tandem::run`] starts, for callers that want its stdout.
    pub fn command(args: &[&str], envs: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.args(["run", "--inbound", "127.0.0.1:0", "--outbound", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
        cmd.args(["--log-format", "json"]).args(args);
        cmd.env_remove("RUST_LOG");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts `cmd` (a `tandem run`, possibly behind a wrapper such as `ip netns exec`; stdout as
    /// the caller set it) and waits, blocking, for it to be ready.
    pub fn spawn(cmd: Command) -> Self {
        let mut proc = Proc::start("tandem", cmd);
        let stderr = proc.logged_blocking(READY);
        Self::ready(proc, &stderr)
    }

    /// The running proxy, with the addresses its ready line (in `stderr`) names.
    fn ready(proc: Proc, stderr: &str) -> Self {
        let addr =
            |key| logged_addr(stderr, READY, key).unwrap_or_else(|| panic!("no {key} address logged:\n{stderr}"));
        let (inbound, admin) = (addr("inbound"), addr("admin"));
        Self { proc, inbound, admin }
    }
}

/// `tandem run` in front of `app` with `extra` flags (and `env` added), every listener on a port
/// the kernel picks, the access log off and two workers unless `extra` says otherwise, the
/// diagnostics in the default format; returns once it has logged that it is ready.
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
    let stderr = proc.logged(READY).await;
    Tandem::ready(proc, &stderr)
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
    wait_for(&format!("GET {path} on {addr} to answer {want}"), Duration::from_secs(30), || async move {
        matches!(get(addr, path).await, Ok((s, _, _)) if s.as_u16() == want).then_some(())
    })
    .await
}

/// Polls the admin `/metrics` until `line` (exact, e.g. a gauge with its value) appears, at most 30 s.
pub async fn poll_metric(admin: SocketAddr, line: &str) {
    wait_for(&format!("metric line {line:?}"), Duration::from_secs(30), || async move {
        let (_, _, body) = get(admin, "/metrics").await.ok()?;
        String::from_utf8_lossy(&body).lines().any(|l| l == line).then_some(())
    })
    .await
}

/// The in-flight gauge line for the inbound side with value `n`.
pub fn inbound_in_flight(n: usize) -> String {
    format!("tandem_http_requests_in_flight{{direction=\"inbound\"}} {n}")
}
