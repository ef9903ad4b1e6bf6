//! Requests tandem cuts itself are logged `LR` (Envoy's "local reset"), not `DC` (the client
//! left): the ones still in flight when the drain deadline passes, and the ones in flight at a
//! second stop signal, which also get their access-log line written before the process exits.
//! Inbound and outbound, HTTP/1.1 and HTTP/2, in the access log and in the `response_flags` label
//! of `tandem_http_requests_total`.

mod support;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tandem::config::Human;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A bound for things that happen quickly; it only keeps a broken build from hanging.
const LIMIT: Duration = Duration::from_secs(30);

/// Sends a raw HTTP/1.1 request head and keeps the connection, so the request stays in flight.
async fn raw_request(addr: SocketAddr, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write");
    s
}

/// Starts an HTTP/2 (prior knowledge) GET of `uri` on a new connection to `addr`; the task ends
/// with the response head, or with the error that cut the stream.
async fn h2_request(addr: SocketAddr, uri: String) -> tokio::task::JoinHandle<Result<u16, String>> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::get(uri).body(Empty::<Bytes>::new()).expect("request");
    tokio::spawn(async move { sender.send_request(req).await.map(|r| r.status().as_u16()).map_err(|e| e.to_string()) })
}

/// Reads from `s` until `needle` has arrived.
async fn read_until(s: &mut TcpStream, needle: &str) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = tokio::time::timeout(LIMIT, s.read(&mut buf)).await.expect("read in time").expect("read");
        assert!(n > 0, "closed before {needle:?} arrived: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

/// Reads `s` to its end: tandem closed it (or reset it).
async fn assert_cut(s: &mut TcpStream) {
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(LIMIT, s.read_to_end(&mut rest)).await.expect("the connection was closed");
}

/// The one access-log line whose path is `path`.
fn line_for<'a>(lines: &'a [Value], path: &str) -> &'a Value {
    let found: Vec<&Value> = lines.iter().filter(|l| l["path"] == path).collect();
    assert_eq!(found.len(), 1, "one line for {path}: {lines:#?}");
    found[0]
}

/// `tandem_http_requests_total` summed over `direction` and `flags`.
fn requests(samples: &[support::Sample], direction: &str, flags: &str) -> f64 {
    support::metric_sum(samples, "tandem_http_requests_total", &[("direction", direction), ("response_flags", flags)])
}

/// The in-flight gauge for `direction`.
fn in_flight(proxy: &tandem::app::Running, direction: &str) -> f64 {
    let text = support::metrics(proxy);
    support::metric_value(&text, &["tandem_http_requests_in_flight{", &format!("direction=\"{direction}\"")])
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_at_the_drain_deadline_are_logged_and_counted_lr_on_both_sides_and_both_protocols() {
    let echo = support::echo().await;
    let app = echo.addr;
    let dir = support::TempDir::new("local-reset-deadline");
    let log = dir.join("access.log");
    let mut config = support::config_with_log(app, &log);
    config.shutdown.drain_timeout = Human::new(Duration::from_secs(1));
    let proxy = support::proxy(config).await;
    let (inbound, outbound) = (proxy.inbound_addr, proxy.outbound_addr);

    // Inbound, HTTP/1.1, waiting for the app's answer.
    let mut in_h1 = raw_request(inbound, "GET /in-h1?delay=60s HTTP/1.1\r\nHost: app\r\n\r\n").await;
    // Inbound, HTTP/1.1, in the middle of its response body: the app echoes the upload as it comes
    // and the client has not sent all of it.
    let mut in_h1_body = raw_request(
        inbound,
        "POST /in-h1-body?echo_body=1 HTTP/1.1\r\nHost: app\r\nContent-Length: 1000\r\n\r\nfirst-part",
    )
    .await;
    read_until(&mut in_h1_body, "first-part").await;
    // Inbound, HTTP/2.
    let in_h2 = h2_request(inbound, format!("http://{inbound}/in-h2?delay=60s")).await;
    // Outbound (the app's own call through the forward proxy), HTTP/1.1 and HTTP/2.
    let mut out_h1 =
        raw_request(outbound, &format!("GET http://{app}/out-h1?delay=60s HTTP/1.1\r\nHost: {app}\r\n\r\n")).await;
    let out_h2 = h2_request(outbound, format!("http://{app}/out-h2?delay=60s")).await;

    support::poll(LIMIT, "3 inbound and 2 outbound requests in flight", || {
        (in_flight(&proxy, "inbound") == 3.0 && in_flight(&proxy, "outbound") == 2.0).then_some(())
    })
    .await;

    // The stop; nothing finishes within the 1 s deadline, so tandem cuts all five.
    let telemetry = proxy.telemetry();
    proxy.shutdown_handle().trigger();
    tokio::time::timeout(LIMIT, proxy.wait()).await.expect("tandem exits after the deadline");

    assert_cut(&mut in_h1).await;
    assert_cut(&mut in_h1_body).await;
    assert_cut(&mut out_h1).await;
    assert!(in_h2.await.expect("join").is_err(), "the inbound h2 stream was cut");
    assert!(out_h2.await.expect("join").is_err(), "the outbound h2 stream was cut");

    let lines = support::json_lines(&log);
    for (path, direction, protocol) in [
        ("/in-h1?delay=60s", "inbound", "HTTP/1.1"),
        ("/in-h1-body?echo_body=1", "inbound", "HTTP/1.1"),
        ("/in-h2?delay=60s", "inbound", "HTTP/2"),
        ("/out-h1?delay=60s", "outbound", "HTTP/1.1"),
        ("/out-h2?delay=60s", "outbound", "HTTP/2"),
    ] {
        let line = line_for(&lines, path);
        assert_eq!(line["response_flags"], "LR", "{path}: {line}");
        assert_eq!(line["direction"], direction, "{path}: {line}");
        assert_eq!(line["protocol"], protocol, "{path}: {line}");
    }
    assert_eq!(line_for(&lines, "/in-h1-body?echo_body=1")["response_code"], 200, "its head had been sent");

    let samples = support::parse_metrics(&String::from_utf8_lossy(&telemetry.metrics.render()));
    assert_eq!(requests(&samples, "inbound", "LR"), 3.0);
    assert_eq!(requests(&samples, "outbound", "LR"), 2.0);
    assert_eq!(requests(&samples, "inbound", "DC") + requests(&samples, "outbound", "DC"), 0.0);
    echo.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_during_the_drain_before_the_deadline_is_still_dc() {
    let echo = support::echo().await;
    let dir = support::TempDir::new("local-reset-left");
    let log = dir.join("access.log");
    let mut config = support::config_with_log(echo.addr, &log);
    config.shutdown.drain_timeout = Human::new(Duration::from_secs(600));
    let proxy = support::proxy(config).await;

    let client = raw_request(proxy.inbound_addr, "GET /left?delay=60s HTTP/1.1\r\nHost: app\r\n\r\n").await;
    support::poll(LIMIT, "the request in flight", || (in_flight(&proxy, "inbound") == 1.0).then_some(())).await;
    let telemetry = proxy.telemetry();
    proxy.shutdown_handle().trigger();
    let draining = tokio::spawn(proxy.wait());
    drop(client);
    // The drain ends when the last inbound connection closes, long before the deadline.
    tokio::time::timeout(LIMIT, draining).await.expect("drained when the client left").expect("join");

    let lines = support::json_lines(&log);
    assert_eq!(line_for(&lines, "/left?delay=60s")["response_flags"], "DC");
    let samples = support::parse_metrics(&String::from_utf8_lossy(&telemetry.metrics.render()));
    assert_eq!(requests(&samples, "inbound", "DC"), 1.0);
    assert_eq!(requests(&samples, "inbound", "LR"), 0.0);
    echo.stop();
}

/// The address a `tandem run` process logged as `key` in its ready line.
fn ready_addr(stderr: &[Value], key: &str) -> SocketAddr {
    let ready = stderr.iter().find(|v| v["message"] == "tandem is ready").expect("the ready line");
    ready[key].as_str().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{key} in {ready}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_at_a_second_stop_signal_get_an_lr_line_before_the_process_exits() {
    let echo = support::echo().await;
    let app = echo.addr.to_string();
    let dir = support::TempDir::new("local-reset-second-signal");
    let log = dir.join("access.log");
    let log_arg = log.display().to_string();
    let mut t = tokio::task::spawn_blocking(move || {
        let args = ["--app", &app, "--access-log", &log_arg, "--drain-timeout", "5m", "--workers", "2"];
        support::Tandem::run(&args, &[])
    })
    .await
    .expect("tandem starts");
    let (inbound, admin) = (t.inbound, t.admin);
    let outbound = ready_addr(&t.json_stderr(), "outbound");
    let app = echo.addr;

    let mut in_h1 = raw_request(inbound, "GET /second-h1?delay=5m HTTP/1.1\r\nHost: app\r\n\r\n").await;
    let in_h2 = h2_request(inbound, format!("http://{inbound}/second-h2?delay=5m")).await;
    let mut out_h1 =
        raw_request(outbound, &format!("GET http://{app}/second-out?delay=5m HTTP/1.1\r\nHost: {app}\r\n\r\n")).await;
    support::wait_for("2 inbound and 1 outbound requests in flight", LIMIT, || async {
        let samples = support::scrape(admin).await;
        let gauge = |d| support::metric_sum(&samples, "tandem_http_requests_in_flight", &[("direction", d)]);
        (gauge("inbound") == 2.0 && gauge("outbound") == 1.0).then_some(())
    })
    .await;

    t.signal(libc::SIGTERM);
    support::wait_for("/ready to say 503", LIMIT, || async {
        let (status, _) = support::try_get(&format!("http://{admin}/ready")).await?;
        (status == 503).then_some(())
    })
    .await;
    t.signal(libc::SIGINT);
    let status = tokio::task::spawn_blocking(move || {
        let status = t.wait_exit(LIMIT);
        (status, t.all_stderr_lines(LIMIT))
    })
    .await
    .expect("join");
    let (status, stderr) = status;
    assert_eq!(status.code(), Some(0), "{stderr:#?}");
    assert!(stderr.iter().any(|l| l.contains("second stop signal; exiting now")), "{stderr:#?}");

    assert_cut(&mut in_h1).await;
    assert_cut(&mut out_h1).await;
    assert!(in_h2.await.expect("join").is_err(), "the h2 stream was cut");
    // The process has exited: whatever it wrote is all there is.
    let lines = support::json_lines(&log);
    for (path, direction, protocol) in [
        ("/second-h1?delay=5m", "inbound", "HTTP/1.1"),
        ("/second-h2?delay=5m", "inbound", "HTTP/2"),
        ("/second-out?delay=5m", "outbound", "HTTP/1.1"),
    ] {
        let line = line_for(&lines, path);
        assert_eq!(line["response_flags"], "LR", "{path}: {line}");
        assert_eq!(line["direction"], direction, "{path}: {line}");
        assert_eq!(line["protocol"], protocol, "{path}: {line}");
    }
    echo.stop();
}
