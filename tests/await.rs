//! `tandem await` through the built binary: waiting for `/ready`, the timeout and its message,
//! running CMD with its exit code, signals passed through, CMD not found or not executable, a stop
//! signal while waiting, and `--shutdown` stopping the proxy when CMD ends.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::procs::{echo, tandem};
use support::{bin, dead_addr, refusing_port, Proc};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const LIMIT: Duration = Duration::from_secs(30);

fn await_proc(admin: SocketAddr, extra: &[&str]) -> Proc {
    let a = admin.to_string();
    let mut args = vec!["await", "--admin", &a];
    args.extend_from_slice(extra);
    Proc::spawn("await", bin(), &args, &[])
}

/// A stand-in admin port that answers every request `503 draining` and counts the requests.
async fn not_ready_admin() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf).await;
            s.fetch_add(1, Ordering::SeqCst);
            let _ = c
                .write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\nconnection: close\r\n\r\ndraining\n",
                )
                .await;
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_at_the_timeout_with_a_clear_message() {
    // A port that stays refusing: a free one could be taken by another test's proxy meanwhile.
    let (_held, refusing) = refusing_port();
    let mut p = await_proc(refusing, &["--timeout", "500ms"]);
    assert_eq!(p.exit(LIMIT).await.code(), Some(1));
    let err = p.stderr();
    assert!(err.contains("is not ready after 500ms") && err.contains("Connection refused"), "{err}");

    // A proxy that answers but is not ready: the message carries its answer.
    let (admin, seen) = not_ready_admin().await;
    let mut p = await_proc(admin, &["--timeout", "1s", "--", "true"]);
    assert_eq!(p.exit(LIMIT).await.code(), Some(1));
    assert!(p.stderr().contains("/ready answered 503 (draining)"), "{}", p.stderr());
    assert!(seen.load(Ordering::SeqCst) >= 2, "it asked more than once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_until_the_proxy_is_ready() {
    let (_echo, app) = echo().await;
    let admin = dead_addr();
    let mut waiting = await_proc(admin, &["--timeout", "30s"]);
    // Start the proxy only now, on the admin port the waiter is asking.
    let mut t = Proc::spawn(
        "tandem",
        bin(),
        &[
            "run",
            "--app",
            &app.to_string(),
            "--inbound",
            "127.0.0.1:0",
            "--admin",
            &admin.to_string(),
            "--outbound",
            "127.0.0.1:0",
            "--access-log",
            "off",
        ],
        &[],
    );
    assert_eq!(waiting.exit(LIMIT).await.code(), Some(0), "{}", waiting.stderr());
    assert!(waiting.stderr().contains("is ready"));
    t.signal(libc::SIGTERM);
    assert_eq!(t.exit(LIMIT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_the_command_and_exits_with_its_code() {
    let (_echo, app) = echo().await;
    let t = tandem(app, &[], &[]).await;
    let mut p = await_proc(t.admin, &["--", "sh", "-c", "exit 3"]);
    assert_eq!(p.exit(LIMIT).await.code(), Some(3));
    let mut p = await_proc(t.admin, &["--", "true"]);
    assert_eq!(p.exit(LIMIT).await.code(), Some(0));
    // Killed by a signal: 128 + the signal, as a shell reports it.
    let mut p = await_proc(t.admin, &["--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(p.exit(LIMIT).await.code(), Some(128 + libc::SIGTERM));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_cannot_run_is_reported() {
    let (_echo, app) = echo().await;
    let t = tandem(app, &[], &[]).await;
    let mut p = await_proc(t.admin, &["--", "/nonexistent/tandem-test-command"]);
    assert_eq!(p.exit(LIMIT).await.code(), Some(127));
    assert!(p.stderr().contains("cannot run /nonexistent/tandem-test-command"), "{}", p.stderr());
    // A file that is not executable.
    let f = std::env::temp_dir().join(format!("tandem-not-exec-{}", std::process::id()));
    std::fs::write(&f, b"not a program").expect("write");
    let mut p = await_proc(t.admin, &["--", &f.display().to_string()]);
    assert_eq!(p.exit(LIMIT).await.code(), Some(126));
    assert!(p.stderr().contains("Permission denied"), "{}", p.stderr());
    let _ = std::fs::remove_file(&f);
}

/// Starts `tandem await -- sh -c SCRIPT` with stdout piped and waits for the script's "ready" line.
async fn started_script(admin: SocketAddr, script: &str) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(bin())
        .args(["await", "--admin", &admin.to_string(), "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(LIMIT, lines.next_line()).await.expect("in time").expect("read");
    assert_eq!(line.as_deref(), Some("ready"));
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_are_passed_to_the_command() {
    let (_echo, app) = echo().await;
    let t = tandem(app, &[], &[]).await;
    for (sig, code) in [(libc::SIGUSR1, 42), (libc::SIGTERM, 43), (libc::SIGHUP, 44), (libc::SIGINT, 45)] {
        let script = "trap 'exit 42' USR1; trap 'exit 43' TERM; trap 'exit 44' HUP; trap 'exit 45' INT; \
                      echo ready; while :; do sleep 0.05; done";
        let mut child = started_script(t.admin, script).await;
        let pid = child.id().expect("pid") as i32;
        // SAFETY: signals the `tandem await` this test started.
        unsafe { libc::kill(pid, sig) };
        let status = tokio::time::timeout(LIMIT, child.wait()).await.expect("exits").expect("wait");
        assert_eq!(status.code(), Some(code), "signal {sig}");
    }
    // A command that does not handle the signal dies of it: 128 + the signal.
    let mut child = started_script(t.admin, "echo ready; while :; do sleep 0.05; done").await;
    let pid = child.id().expect("pid") as i32;
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(LIMIT, child.wait()).await.expect("exits").expect("wait");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_signal_while_waiting_ends_without_starting_the_command() {
    let (admin, seen) = not_ready_admin().await;
    let marker = std::env::temp_dir().join(format!("tandem-await-started-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let script = format!("touch {}", marker.display());
    let mut p = await_proc(admin, &["--timeout", "60s", "--", "sh", "-c", &script]);
    // Once it has asked, its handlers are installed (they are set up before the first request).
    while seen.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit(LIMIT).await.code(), Some(128 + libc::SIGTERM));
    assert!(p.stderr().contains("SIGTERM while waiting for the proxy; not starting the command"), "{}", p.stderr());
    assert!(!marker.exists(), "the command never ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_shutdown_the_proxy_stops_when_the_command_ends() {
    let (_echo, app) = echo().await;
    let mut t = tandem(app, &[], &[]).await;
    let mut p = await_proc(t.admin, &["--shutdown", "--", "sh", "-c", "exit 5"]);
    assert_eq!(p.exit(LIMIT).await.code(), Some(5), "the command's code, not the shutdown's");
    assert!(p.stderr().contains("asked the proxy at"), "{}", p.stderr());
    assert_eq!(t.proc.exit(LIMIT).await.code(), Some(0), "the proxy drained and exited");

    // Even when the command cannot start, the proxy is stopped so the pod completes.
    let mut t = tandem(app, &[], &[]).await;
    let mut p = await_proc(t.admin, &["--shutdown", "--", "/nonexistent/tandem-test-command"]);
    assert_eq!(p.exit(LIMIT).await.code(), Some(127));
    assert_eq!(t.proc.exit(LIMIT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_refused() {
    let mut p = Proc::spawn("await", bin(), &["await", "--shutdown"], &[]);
    assert_eq!(p.exit(LIMIT).await.code(), Some(2), "--shutdown needs a command");
    let mut p = Proc::spawn("await", bin(), &["await", "--timeout", "soon"], &[]);
    assert_eq!(p.exit(LIMIT).await.code(), Some(2));
    assert!(p.stderr().contains("invalid duration"), "{}", p.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_self_installs_the_binary_for_an_app_container() {
    let dir = std::env::temp_dir().join(format!("tandem-copy-self-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut p = Proc::spawn("copy-self", bin(), &["copy-self", &dir.display().to_string()], &[]);
    assert_eq!(p.exit(LIMIT).await.code(), Some(0), "{}", p.stderr());
    let copied = dir.join("tandem");
    let out = std::process::Command::new(&copied).arg("--version").output().expect("the copy runs");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("tandem "));
    let _ = std::fs::remove_dir_all(&dir);
    let mut p = Proc::spawn("copy-self", bin(), &["copy-self", "/nonexistent/dir"], &[]);
    assert_eq!(p.exit(LIMIT).await.code(), Some(1));
    assert!(p.stderr().contains("cannot copy the binary into /nonexistent/dir"), "{}", p.stderr());
}
