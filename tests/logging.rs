//! tandem's own diagnostics, through the binary: quiet by default (nothing per request at info),
//! plain and JSON formats, and repeated identical upstream errors rate-limited with a count of the
//! suppressed ones.

mod support;

use std::io::BufRead;
use std::time::{Duration, Instant};
use support::*;
use tandem::telemetry::ratelimit::RateLimitedLog;

#[tokio::test]
async fn nothing_is_logged_per_request_at_info() {
    const N: usize = 60;
    let echo = echo().await;
    let mut t = Tandem::run(&["--app", &echo.addr.to_string(), "--access-log", "off"], &[]);
    let base = format!("http://{}", t.inbound);
    for i in 0..N {
        let path = if i % 3 == 0 { format!("/quiet-{i}?status=404") } else { format!("/quiet-{i}") };
        let (s, ..) = request("GET", &format!("{base}{path}"), &[("x-request-id", &format!("quiet-{i}"))], "").await;
        assert!(s == 200 || s == 404);
    }
    assert_eq!(request("POST", &format!("http://{}/shutdown", t.admin), &[], "").await.0, 200);
    assert!(t.wait_exit(Duration::from_secs(20)).success());
    let lines = t.all_stderr_lines(Duration::from_secs(10));
    assert!(lines.len() < 12, "{} lines for {N} requests: {lines:#?}", lines.len());
    assert!(!lines.iter().any(|l| l.contains("quiet-")), "a request shows in the diagnostics: {lines:#?}");
}

#[test]
fn plain_format_is_one_uncoloured_line_per_event_and_json_is_json() {
    let mut child = std::process::Command::new(bin())
        .args(["run", "--inbound", "127.0.0.1:0", "--outbound", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--app", &dead_addr().to_string(), "--access-log", "off", "--log-format", "plain"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = Vec::new();
    let started = Instant::now();
    for line in std::io::BufReader::new(child.stderr.take().expect("stderr")).lines() {
        let line = line.expect("line");
        let ready = line.contains("tandem is ready");
        lines.push(line);
        if ready || started.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let ready = lines.iter().find(|l| l.contains("tandem is ready")).unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(ready.contains(" INFO ") && ready.contains("admin=127.0.0.1:"), "{ready}");
    assert!(!lines.iter().any(|l| l.contains('\x1b')), "colour codes on a pipe: {lines:?}");
    assert!(lines.iter().all(|l| serde_json::from_str::<serde_json::Value>(l).is_err()));

    // JSON: every line an object with timestamp, level and message at the top.
    let t = Tandem::run(&["--app", &dead_addr().to_string(), "--access-log", "off"], &[]);
    for l in t.json_stderr() {
        assert!(l["timestamp"].is_string() && l["level"].is_string() && l["message"].is_string(), "{l}");
    }
}

#[tokio::test]
async fn repeated_upstream_errors_come_out_once_per_interval_with_the_suppressed_count() {
    const BURST: usize = 40;
    let app = dead_addr();
    let t = Tandem::run(&["--app", &app.to_string(), "--access-log", "off"], &[]);
    let url = format!("http://{}/down", t.inbound);
    let uf_lines = |t: &Tandem| -> Vec<serde_json::Value> {
        t.json_stderr().into_iter().filter(|l| l["level"] == "WARN" && l["code"] == "UF").collect()
    };

    let started = Instant::now();
    for _ in 0..BURST {
        assert_eq!(request("GET", &url, &[], "").await.0, 502);
    }
    let burst_took = started.elapsed();
    let first = poll(Duration::from_secs(5), "the first UF warning", || uf_lines(&t).first().cloned()).await;
    assert_eq!(first["message"], format!("upstream connect failed (UF): connection refused by {app}"));
    assert!(first.get("suppressed").is_none(), "{first}");
    if burst_took < Duration::from_secs(4) {
        assert_eq!(uf_lines(&t).len(), 1, "the burst was not rate-limited: {:#?}", uf_lines(&t));

        // Once the interval (5 s, from the first error, which came a little after `started`) has
        // passed, the next error comes out with the count of the rest. Requests sent while it
        // has not quite passed are held back too, and counted.
        tokio::time::sleep(Duration::from_secs(5).saturating_sub(started.elapsed())).await;
        let mut held_after = 0u64;
        let second = loop {
            assert_eq!(request("GET", &url, &[], "").await.0, 502);
            let line = poll_for(Duration::from_millis(500), || uf_lines(&t).get(1).cloned()).await;
            if let Some(line) = line {
                break line;
            }
            held_after += 1;
            assert!(held_after < 20, "no second UF warning 15 s after the burst: {:#?}", uf_lines(&t));
        };
        assert_eq!(second["suppressed"], (BURST - 1) as u64 + held_after, "{second}");
    } else {
        eprintln!("burst took {burst_took:?}: too slow a machine to check the exact counts");
    }
}

#[test]
fn the_rate_limiter_counts_what_it_holds_back_per_distinct_error() {
    let log = RateLimitedLog::new(Duration::from_millis(200));
    assert_eq!(log.admit_message("UF", "refused by a"), Some(0));
    assert_eq!(log.admit_message("UF", "refused by b"), Some(0), "another upstream is another error");
    let mut held = 0;
    let reported = poll_blocking(Duration::from_secs(5), "the interval to pass", || {
        match log.admit_message("UF", "refused by a") {
            None => {
                held += 1;
                None
            }
            Some(n) => Some(n),
        }
    });
    assert!(held > 0);
    assert_eq!(reported, held);
    assert_eq!(log.admit_message("UF", "refused by a"), None);
}

#[test]
fn the_filter_changes_at_run_time_and_a_second_subscriber_is_refused() {
    // The only test in this binary that installs a subscriber in the test process itself.
    let control = tandem::telemetry::logging::init("info", tandem::config::LogFormat::Json).expect("first subscriber");
    assert_eq!(control.current(), "info");
    control.set("tandem=debug,hyper=warn").expect("valid filter");
    assert_eq!(control.current(), "tandem=debug,hyper=warn");
    assert!(control.set("tandem=[nope").is_err());
    assert_eq!(control.current(), "tandem=debug,hyper=warn", "an invalid filter changed nothing");
    assert!(tandem::telemetry::logging::init("debug", tandem::config::LogFormat::Plain).is_none());
}

#[test]
fn accept_failures_at_the_fd_limit_are_logged_at_most_once_a_second() {
    // 64 descriptors: enough to start (about 20 with two workers), soon used up by clients.
    const CLIENTS: usize = 160;
    let cmd = Tandem::command(&["--app", &dead_addr().to_string(), "--access-log", "off", "--workers", "2"], &[]);
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut wrapped = std::process::Command::new("sh");
    wrapped.args(["-c", "ulimit -n 64 && exec \"$0\" \"$@\""]).arg(program).args(args);
    wrapped.env_remove("RUST_LOG").stdout(std::process::Stdio::null());
    let t = Tandem::spawn(wrapped);
    // Idle connections hold tandem's descriptors; the rest wait in the backlog.
    let mut clients: Vec<std::net::TcpStream> =
        (0..CLIENTS).map(|_| std::net::TcpStream::connect(t.inbound).expect("connect")).collect();
    poll_blocking(Duration::from_secs(20), "accept to fail", || {
        t.stderr().contains("accept failed; backing off").then_some(())
    });
    // Each client that leaves frees a descriptor: one accept succeeds, the next fails again.
    let start = Instant::now();
    while let Some(c) = clients.pop() {
        drop(c);
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed();
    let warnings: Vec<serde_json::Value> =
        t.json_stderr().into_iter().filter(|l| l["message"] == "accept failed; backing off").collect();
    // At most one per second (plus the first, and one for a second just begun).
    let allowed = elapsed.as_secs() as usize + 2;
    assert!(warnings.len() <= allowed, "{} warnings in {elapsed:?}: {warnings:#?}", warnings.len());
    assert!(
        warnings.iter().any(|w| w["suppressed"].as_u64().is_some_and(|n| n > 0)),
        "a later warning counts the suppressed ones: {warnings:#?}"
    );
}
