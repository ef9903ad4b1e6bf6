//! `tandem await`: holds an app back until the proxy is up, and lets a Job's pod complete.
//!
//! 1. Asks `GET /ready` on tandem's admin port every `--interval` until it answers 200, or gives up
//!    at `--timeout` with a message saying what the last answer was (exit 1).
//! 2. With `-- CMD ARGS`, runs CMD with the same stdin, stdout, stderr and environment, passes the
//!    signals it receives on to CMD, and exits with CMD's code (128 + the signal if CMD was killed by
//!    one; 127 if CMD does not exist, 126 if it cannot be executed).
//! 3. With `--shutdown`, posts `/shutdown` to the admin port once CMD has ended (or failed to start),
//!    so the proxy drains and exits and the pod can complete.
//!
//! Signals: SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2 and SIGWINCH are forwarded to CMD.
//! When stdin is a terminal, the terminal already delivers SIGINT, SIGQUIT and SIGWINCH to CMD (it is
//! in the same foreground process group), so those are not forwarded a second time. A stop signal
//! that arrives while still waiting ends `tandem await` with 128 + the signal, without starting CMD.
//! Run as a container's first process, `tandem await` also reaps orphaned processes, as an init does.
//!
//! The HTTP calls use hyper's client over one TCP connection each: no curl in the image.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use std::ffi::OsString;
use std::time::{Duration, Instant};

/// Exit code when the proxy did not become ready in time.
pub const EXIT_TIMEOUT: u8 = 1;
/// Exit code when CMD cannot be executed (as in POSIX shells).
pub const EXIT_CANNOT_EXECUTE: u8 = 126;
/// Exit code when CMD does not exist (as in POSIX shells).
pub const EXIT_NOT_FOUND: u8 = 127;

/// Longest a single admin request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What `tandem await` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// tandem's admin address, `host:port`.
    pub admin: String,
    /// Give up waiting after this long; zero waits forever.
    pub timeout: Duration,
    /// Pause between two `/ready` requests.
    pub interval: Duration,
    /// POST `/shutdown` once CMD has ended.
    pub shutdown: bool,
    /// CMD and its arguments; empty to only wait.
    pub command: Vec<OsString>,
}

/// Sends one request to the admin port and returns the status and the body's first line.
pub async fn admin_request(admin: &str, method: Method, path: &str) -> Result<(StatusCode, String), String> {
    let call = async {
        let stream = tokio::net::TcpStream::connect(admin).await.map_err(|e| format!("connect to {admin}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake with {admin}: {e}"))?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::HOST, admin)
            .header(http::header::USER_AGENT, concat!("tandem-await/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| format!("{method} {path} on {admin}: {e}"))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        conn.abort();
        let line = String::from_utf8_lossy(&body).lines().next().unwrap_or("").trim().to_owned();
        Ok((status, line))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(r) => r,
        Err(_) => Err(format!("{method} {path} on {admin}: no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// Asks `/ready` until it answers 200. `Err` carries the last reason when `timeout` passes.
pub async fn wait_ready(admin: &str, timeout: Duration, interval: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let deadline = (!timeout.is_zero()).then(|| started + timeout);
    loop {
        let last = match admin_request(admin, Method::GET, "/ready").await {
            Ok((StatusCode::OK, _)) => return Ok(started.elapsed()),
            Ok((status, body)) => format!(
                "/ready answered {}{}",
                status.as_u16(),
                if body.is_empty() { String::new() } else { format!(" ({body})") }
            ),
            Err(e) => e,
        };
        let now = Instant::now();
        if let Some(d) = deadline {
            if now >= d {
                return Err(last);
            }
            tokio::time::sleep(interval.min(d - now)).await;
        } else {
            tokio::time::sleep(interval).await;
        }
    }
}

/// Runs `tandem await` and returns its exit code. Messages go to stderr, prefixed `tandem await:`.
pub async fn run(opts: Options) -> u8 {
    let mut signals = match unix::Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tandem await: cannot install signal handlers: {e}");
            return EXIT_TIMEOUT;
        }
    };
    let waited = tokio::select! {
        r = wait_ready(&opts.admin, opts.timeout, opts.interval) => r,
        sig = signals.stop_signal() => {
            eprintln!("tandem await: {} while waiting for the proxy; {}", unix::name(sig),
                if opts.command.is_empty() { "giving up" } else { "not starting the command" });
            return 128u8.saturating_add(u8::try_from(sig).unwrap_or(0));
        }
    };
    match waited {
        Ok(after) => {
            eprintln!("tandem await: the proxy at {} is ready (after {:.1}s)", opts.admin, after.as_secs_f64())
        }
        Err(last) => {
            eprintln!(
                "tandem await: the proxy at {} is not ready after {}: {last}",
                opts.admin,
                humanize(opts.timeout)
            );
            return EXIT_TIMEOUT;
        }
    }
    if opts.command.is_empty() {
        return 0;
    }
    let code = run_command(&opts.command, &mut signals).await;
    if opts.shutdown {
        match admin_request(&opts.admin, Method::POST, "/shutdown").await {
            Ok((StatusCode::OK, _)) => eprintln!("tandem await: asked the proxy at {} to shut down", opts.admin),
            Ok((status, body)) => {
                eprintln!("tandem await: POST /shutdown on {} answered {}: {body}", opts.admin, status.as_u16())
            }
            Err(e) => eprintln!("tandem await: cannot ask the proxy to shut down: {e}"),
        }
    }
    code
}

fn humanize(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

async fn run_command(command: &[OsString], signals: &mut unix::Signals) -> u8 {
    let Some((program, args)) = command.split_first() else { return 0 };
    // fork + exec waits for the exec to succeed: off the async thread. The child-exit handler is
    // already installed, so an exit right after the spawn is not missed.
    let (p, a) = (program.clone(), args.to_vec());
    let spawned = tokio::task::spawn_blocking(move || std::process::Command::new(p).args(a).spawn())
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
                _ => EXIT_CANNOT_EXECUTE,
            };
            eprintln!("tandem await: cannot run {}: {e}", program.to_string_lossy());
            return code;
        }
    };
    signals.supervise(child.id()).await
}

mod unix {
    //! Signal forwarding and child reaping.

    use tokio::signal::unix::{signal, Signal, SignalKind};

    /// Forwarded to the child.
    const FORWARDED: [libc::c_int; 7] =
        [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2, libc::SIGWINCH];
    /// Sent to the whole foreground process group by a terminal.
    const FROM_TERMINAL: [libc::c_int; 3] = [libc::SIGINT, libc::SIGQUIT, libc::SIGWINCH];
    /// End the wait before the child starts.
    const STOP: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT, libc::SIGHUP];

    pub fn name(sig: libc::c_int) -> &'static str {
        match sig {
            libc::SIGTERM => "SIGTERM",
            libc::SIGINT => "SIGINT",
            libc::SIGQUIT => "SIGQUIT",
            libc::SIGHUP => "SIGHUP",
            libc::SIGUSR1 => "SIGUSR1",
            libc::SIGUSR2 => "SIGUSR2",
            libc::SIGWINCH => "SIGWINCH",
            _ => "a signal",
        }
    }

    pub struct Signals {
        streams: Vec<(libc::c_int, Signal)>,
        child: Signal,
        tty: bool,
    }

    impl Signals {
        /// Installs every handler before anything starts, so no signal is lost in between.
        pub fn install() -> std::io::Result<Self> {
            let mut streams = Vec::with_capacity(FORWARDED.len());
            for sig in FORWARDED {
                streams.push((sig, signal(SignalKind::from_raw(sig))?));
            }
            // SAFETY: isatty only inspects the descriptor.
            let tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
            Ok(Self { streams, child: signal(SignalKind::child())?, tty })
        }

        /// The next signal that should stop the wait.
        pub async fn stop_signal(&mut self) -> libc::c_int {
            next(&mut self.streams, &STOP).await
        }

        /// Forwards signals to `pid` and reaps children until `pid` exits; returns its exit code.
        pub async fn supervise(&mut self, pid: u32) -> u8 {
            let Ok(pid) = libc::pid_t::try_from(pid) else { return super::EXIT_CANNOT_EXECUTE };
            loop {
                if let Some(code) = reap(pid) {
                    return code;
                }
                tokio::select! {
                    _ = self.child.recv() => {}
                    sig = next(&mut self.streams, &FORWARDED) => {
                        if self.tty && FROM_TERMINAL.contains(&sig) {
                            continue;
                        }
                        // SAFETY: kill only sends a signal; a pid that has exited but not been reaped
                        // is still ours, so the signal cannot reach another process.
                        unsafe { libc::kill(pid, sig) };
                    }
                }
            }
        }
    }

    /// The next signal from `set`; other signals are dropped.
    async fn next(streams: &mut [(libc::c_int, Signal)], set: &[libc::c_int]) -> libc::c_int {
        loop {
            let sig = std::future::poll_fn(|cx| {
                for (sig, s) in streams.iter_mut() {
                    if let std::task::Poll::Ready(Some(())) = s.poll_recv(cx) {
                        return std::task::Poll::Ready(*sig);
                    }
                }
                std::task::Poll::Pending
            })
            .await;
            if set.contains(&sig) {
                return sig;
            }
        }
    }

    /// Reaps every exited child (tandem await may be a container's first process, which inherits
    /// orphans) and returns the exit code of `pid` once it has exited.
    fn reap(pid: libc::pid_t) -> Option<u8> {
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid with WNOHANG never blocks and writes only `status`.
            let got = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if got <= 0 {
                return None;
            }
            if got == pid {
                if libc::WIFEXITED(status) {
                    return Some(u8::try_from(libc::WEXITSTATUS(status)).unwrap_or(u8::MAX));
                }
                if libc::WIFSIGNALED(status) {
                    return Some(128u8.saturating_add(u8::try_from(libc::WTERMSIG(status)).unwrap_or(0)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dead_admin_port_times_out_with_the_reason() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        drop(l);
        let err = wait_ready(&addr, Duration::from_millis(300), Duration::from_millis(50)).await.expect_err("timeout");
        assert!(err.contains("connect to"), "{err}");
    }

    #[test]
    fn durations_print_plainly() {
        assert_eq!(humanize(Duration::from_secs(60)), "60s");
        assert_eq!(humanize(Duration::from_millis(1500)), "1500ms");
    }
}
