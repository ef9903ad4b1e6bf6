//! Reload (issue 19): SIGHUP and `POST /reload` re-read the configuration file, put in force what
//! can change live (timeouts, limits, the access log, the log level), refuse a change that needs
//! a restart or a file that fails `tandem check`, keep serving either way, and count each result.

mod support;

use http::Method;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::procs::{self, poll_metric, Tandem};
use support::{bin, TempDir};

fn reloads(result: &str, n: u32) -> String {
    format!("tandem_config_reloads_total{{result=\"{result}\"}} {n}")
}

/// `tandem run -c FILE` (the listen addresses in the file), JSON diagnostics.
fn run_file(file: &Path) -> Tandem {
    let mut cmd = Command::new(bin());
    cmd.arg("run").arg("-c").arg(file).args(["--log-format", "json"]).env_remove("RUST_LOG");
    cmd.stdout(std::process::Stdio::null());
    Tandem::spawn(cmd)
}

/// A configuration file for `app`: every listener on 127.0.0.1:0, then `extra` YAML sections.
fn write_config(file: &Path, app: SocketAddr, inbound_extra: &str, extra: &str) {
    let text = format!(
        "inbound:\n  listen: 127.0.0.1:0\n  app: {app}\n{inbound_extra}\
         outbound:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n{extra}"
    );
    std::fs::write(file, text).expect("write config");
}

/// The echo app and a directory holding the configuration file a test rewrites.
struct Setup {
    echo: tandem::app::Echo,
    dir: TempDir,
    file: std::path::PathBuf,
}

impl Setup {
    async fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let file = dir.join("tandem.yaml");
        Self { echo: support::echo().await, dir, file }
    }

    /// Writes the file ([`write_config`]) in front of the echo app.
    fn write(&self, inbound_extra: &str, extra: &str) {
        write_config(&self.file, self.echo.addr, inbound_extra, extra);
    }
}

async fn post_reload(admin: SocketAddr) -> (u16, String) {
    let (status, _, body) = procs::request(admin, Method::POST, "/reload").await.expect("POST /reload");
    (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

async fn status_of(addr: SocketAddr, path: &str) -> (u16, Option<String>) {
    let (status, headers, _) = procs::get(addr, path).await.expect("request through tandem");
    let reason = headers.get("x-tandem-error").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (status.as_u16(), reason)
}

#[tokio::test]
async fn sighup_with_a_shorter_response_timeout_makes_a_slow_request_that_passed_get_504_ut() {
    let s = Setup::new("reload-timeout").await;
    let timeouts = |t: &str| format!("  timeouts:\n    response: {t}\n");
    s.write(&timeouts("30s"), "access_log:\n  destination: off\n");
    let mut t = run_file(&s.file);
    assert_eq!(status_of(t.inbound, "/slow?delay=1s").await, (200, None));

    s.write(&timeouts("100ms"), "access_log:\n  destination: off\n");
    t.signal(libc::SIGHUP);
    poll_metric(t.admin, &reloads("applied", 1)).await;
    assert_eq!(status_of(t.inbound, "/slow?delay=1s").await, (504, Some("UT".to_owned())));
    let stderr = t.logged("configuration reloaded").await;
    let line = stderr.lines().find(|l| l.contains("configuration reloaded")).unwrap_or_default();
    assert!(line.contains("inbound.timeouts.response"), "the reload line names the key:\n{line}");
    let (_, _, config) = procs::get(t.admin, "/config").await.expect("GET /config");
    assert!(String::from_utf8_lossy(&config).contains("response: 100ms"), "/config shows what is in force");
}

#[tokio::test]
async fn a_listen_address_change_is_refused_naming_the_key_and_the_old_configuration_keeps_serving() {
    let s = Setup::new("reload-listen").await;
    s.write("", "access_log:\n  destination: off\n");
    let mut t = run_file(&s.file);

    // The new address differs only in the listen address, and a timeout that would apply.
    let moved = support::free_addr();
    let text =
        std::fs::read_to_string(&s.file).expect("read").replacen("listen: 127.0.0.1:0", &format!("listen: {moved}"), 1);
    std::fs::write(&s.file, text.replace("destination: off", "destination: off\nlog:\n  level: debug")).expect("write");
    t.signal(libc::SIGHUP);
    poll_metric(t.admin, &reloads("refused", 1)).await;
    let stderr = t.logged("configuration reload refused").await;
    let line = stderr.lines().find(|l| l.contains("configuration reload refused")).unwrap_or_default();
    assert!(line.contains("inbound.listen: changing it needs a restart"), "{line}");
    assert_eq!(status_of(t.inbound, "/hello").await, (200, None));
    // Nothing of the refused configuration is in force.
    let (_, _, level) = procs::get(t.admin, "/log-level").await.expect("GET /log-level");
    assert_eq!(String::from_utf8_lossy(&level).trim(), "info");
    let (status, body) = post_reload(t.admin).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body.lines().collect::<Vec<_>>().len(), 1, "one problem, one line: {body}");
}

#[tokio::test]
async fn a_transparent_key_change_is_refused_naming_the_key() {
    let s = Setup::new("reload-transparent").await;
    s.write("", "access_log:\n  destination: off\n");
    let t = run_file(&s.file);
    s.write("", "access_log:\n  destination: off\ntransparent:\n  detect_timeout: 2s\n");
    let (status, body) = post_reload(t.admin).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("transparent.detect_timeout: changing it needs a restart"), "{body}");
    assert_eq!(status_of(t.inbound, "/hello").await, (200, None));
}

#[tokio::test]
async fn an_invalid_file_is_refused_with_checks_messages_and_tandem_keeps_serving() {
    let s = Setup::new("reload-invalid").await;
    s.write("", "access_log:\n  destination: off\n");
    let t = run_file(&s.file);

    s.write("  timeouts:\n    response: soon\n  limit: {}\n", "access_log:\n  destination: off\n");
    let check = Command::new(bin()).arg("check").arg("-c").arg(&s.file).output().expect("tandem check");
    assert!(!check.status.success());
    let stderr = String::from_utf8_lossy(&check.stderr);
    let expected: Vec<&str> = stderr.lines().filter(|l| l.starts_with("  ")).map(str::trim).collect();
    assert_eq!(expected.len(), 2, "check reports both problems:\n{stderr}");

    let (status, body) = post_reload(t.admin).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body.lines().collect::<Vec<_>>(), expected);
    poll_metric(t.admin, &reloads("refused", 1)).await;
    assert_eq!(status_of(t.inbound, "/hello").await, (200, None));
}

#[tokio::test]
async fn post_reload_from_loopback_applies_the_change_and_the_counter_moves() {
    let s = Setup::new("reload-post").await;
    s.write("", "access_log:\n  destination: off\n");
    let t = run_file(&s.file);
    poll_metric(t.admin, &reloads("applied", 0)).await;

    let (status, body) = post_reload(t.admin).await;
    assert_eq!((status, body.as_str()), (200, "nothing changed\n"));
    s.write("  limits:\n    max_headers: 2\n", "access_log:\n  destination: off\n");
    let (status, body) = post_reload(t.admin).await;
    assert_eq!((status, body.as_str()), (200, "changed: inbound.limits.max_headers\n"));
    poll_metric(t.admin, &reloads("applied", 2)).await;
    // procs::get sends Host only: a request with three fields is now over the limit.
    let resp =
        support::raw(t.inbound, b"GET / HTTP/1.1\r\nHost: a\r\nx-a: 1\r\nx-b: 2\r\n\r\n", Duration::from_secs(10))
            .await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert_eq!(status_of(t.inbound, "/hello").await, (200, None));
}

#[tokio::test]
async fn a_reload_under_load_loses_no_request() {
    let s = Setup::new("reload-load").await;
    let with = |response: &str, in_flight: u32| {
        s.write(
            &format!("  timeouts:\n    response: {response}\n  limits:\n    max_in_flight: {in_flight}\n"),
            "access_log:\n  destination: off\n",
        )
    };
    with("10s", 1000);
    let t = run_file(&s.file);
    let inbound = t.inbound;
    let mut load = Vec::new();
    for task in 0..4 {
        load.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0..40 {
                let path = format!("/load/{task}/{i}?delay=5ms");
                answers.push(status_of(inbound, &path).await);
            }
            answers
        }));
    }
    for n in 0..6u32 {
        with(if n % 2 == 0 { "20s" } else { "10s" }, 1000 + n);
        let (status, body) = post_reload(t.admin).await;
        assert_eq!(status, 200, "{body}");
    }
    for task in load {
        let answers = task.await.expect("load task");
        assert_eq!(answers.len(), 40);
        assert!(answers.iter().all(|a| *a == (200, None)), "every request answered normally: {answers:?}");
    }
    poll_metric(t.admin, &reloads("applied", 6)).await;
}

#[tokio::test]
async fn a_log_level_change_takes_effect_on_sighup() {
    let s = Setup::new("reload-level").await;
    // The access log on stdout (/dev/null here), so that SIGUSR1 has a writer to reopen.
    s.write("", "log:\n  level: info\n");
    let mut t = run_file(&s.file);
    s.write("", "log:\n  level: debug\n");
    t.signal(libc::SIGHUP);
    poll_metric(t.admin, &reloads("applied", 1)).await;
    let (_, _, level) = procs::get(t.admin, "/log-level").await.expect("GET /log-level");
    assert_eq!(String::from_utf8_lossy(&level).trim(), "debug");
    // A line only a debug filter lets through: the writer's reopen.
    t.signal(libc::SIGUSR1);
    t.logged("access log reopened").await;
}

#[tokio::test]
async fn an_access_log_path_change_reopens_to_the_new_file() {
    let s = Setup::new("reload-access-log").await;
    let (first, second) = (s.dir.join("first.log"), s.dir.join("second.log"));
    let log_to = |p: &Path| format!("access_log:\n  destination: {}\n", p.display());
    s.write("", &log_to(&first));
    let t = run_file(&s.file);
    assert_eq!(status_of(t.inbound, "/before").await, (200, None));
    support::poll(Duration::from_secs(10), "the first line", || (support::json_lines(&first).len() == 1).then_some(()))
        .await;

    s.write("", &log_to(&second));
    let (status, body) = post_reload(t.admin).await;
    assert_eq!((status, body.as_str()), (200, "changed: access_log.destination\n"));
    assert_eq!(status_of(t.inbound, "/after").await, (200, None));
    let lines = support::poll(Duration::from_secs(10), "a line in the new file", || {
        let l = support::json_lines(&second);
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(lines[0]["path"], "/after");
    let old = support::json_lines(&first);
    assert_eq!(old.len(), 1, "nothing more in the old file: {old:?}");
    assert_eq!(old[0]["path"], "/before");
}

#[tokio::test]
async fn turning_on_an_access_log_that_started_off_is_refused_naming_the_key() {
    let s = Setup::new("reload-log-on").await;
    s.write("", "access_log:\n  destination: off\n");
    let t = run_file(&s.file);
    let path = s.dir.join("access.log");
    s.write("  timeouts:\n    response: 3s\n", &format!("access_log:\n  destination: {}\n", path.display()));
    let (status, body) = post_reload(t.admin).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.starts_with("access_log.destination: changing it needs a restart"), "{body}");
    // The whole reload was refused: the timeout that could have changed did not.
    let (_, _, config) = procs::get(t.admin, "/config").await.expect("GET /config");
    assert!(String::from_utf8_lossy(&config).contains("response: 15s"), "the old configuration is in force");
    assert_eq!(status_of(t.inbound, "/hello").await, (200, None));
    assert!(!path.exists(), "no file was opened");
}
