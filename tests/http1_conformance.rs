//! HTTP/1.x on the inbound listener, one server for every request (issue 17's reproducers): a
//! client's framing faults are the client's (400/501 `DPE`, never `502 UC`), the `Content-Length` +
//! `Transfer-Encoding` refusal holds for every request of a connection, `CONNECT` is refused,
//! `Host` follows RFC 9112 section 3.2, odd targets are logged byte for byte, and an app's stale
//! `Content-Length` or `TE` never reaches the client. Requests are written out by hand.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{config_with_log, echo, json_lines, poll, proxy, raw, raw_app, read_head, TempDir};
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(5);

/// An app that records each request head it gets and answers `answer` (then closes).
async fn recording_app(answer: &'static [u8]) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    let addr = raw_app(move |mut s| {
        let seen = seen.clone();
        async move {
            let head = read_head(&mut s).await;
            seen.lock().expect("heads").push(head);
            let _ = s.write_all(answer).await;
            let _ = s.shutdown().await;
        }
    })
    .await;
    (addr, heads)
}

/// The status codes of every response in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ").filter_map(|(at, _)| text.get(at + 9..at + 12)?.parse().ok()).collect()
}

/// Waits until the access log has `n` lines and returns them.
async fn log_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    poll(WAIT, "access-log lines", || {
        let lines = json_lines(path);
        (lines.len() >= n).then_some(lines)
    })
    .await
}

#[tokio::test]
async fn malformed_chunked_bodies_are_the_clients_fault_400_dpe_never_502() {
    let app = echo().await;
    let dir = TempDir::new("chunked-faults");
    let log = dir.join("access.log");
    let p = proxy(config_with_log(app.addr, &log)).await;
    let big_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(20 * 1024));
    let big_trailer = format!("5\r\nhello\r\n0\r\nx-t: {}\r\n\r\n", "t".repeat(20 * 1024));
    let bodies: Vec<(&str, String)> = vec![
        ("data longer than its size", "5\r\nhelloXX0\r\n\r\n".into()),
        ("data shorter than its size", "5\r\nhel\r\n0\r\n\r\n".into()),
        ("size overflow", "fffffffffffffffff\r\nx\r\n0\r\n\r\n".into()),
        ("0x prefix", "0x5\r\nhello\r\n0\r\n\r\n".into()),
        ("negative size", "-5\r\nhello\r\n0\r\n\r\n".into()),
        ("plus sign", "+5\r\nhello\r\n0\r\n\r\n".into()),
        ("bare LF after the size", "5\nhello\r\n0\r\n\r\n".into()),
        ("bare LF after the data", "5\r\nhello\n0\r\n\r\n".into()),
        ("20 KiB of chunk extensions", big_ext),
        ("20 KiB of trailers", big_trailer),
        ("a trailer line with no colon", "5\r\nhello\r\n0\r\nnot a field\r\n\r\n".into()),
    ];
    for (what, body) in &bodies {
        let req = format!("POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let out = raw(p.inbound_addr, req.as_bytes(), WAIT).await;
        assert_eq!(statuses(&out), vec![400], "{what}: {out}");
        assert!(out.contains("x-tandem-error: DPE"), "{what}: {out}");
    }
    let lines = log_lines(&log, bodies.len()).await;
    for l in &lines {
        assert_eq!(l["response_code"], 400, "{l}");
        assert_eq!(l["response_flags"], "DPE", "{l}");
    }
}

#[tokio::test]
async fn a_client_that_leaves_during_a_chunked_upload_is_dc() {
    let app = echo().await;
    let dir = TempDir::new("chunked-dc");
    let log = dir.join("access.log");
    let p = proxy(config_with_log(app.addr, &log)).await;
    let mut s = tokio::net::TcpStream::connect(p.inbound_addr).await.expect("connect");
    s.write_all(b"POST /up?echo_body=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        .await
        .expect("write");
    // The request reached the app once its head was forwarded; then the client goes away.
    poll(WAIT, "the request in flight", || {
        let m = support::metrics(&p);
        (support::metric_value(&m, &["tandem_http_requests_in_flight{", "inbound"]) == Some(1.0)).then_some(())
    })
    .await;
    drop(s);
    let lines = log_lines(&log, 1).await;
    assert_eq!(lines[0]["response_flags"], "DC", "{}", lines[0]);
}

#[tokio::test]
async fn an_apps_stale_content_length_beside_chunked_is_dropped_and_the_body_relayed() {
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let (app, _) = recording_app(answer).await;
    let p = proxy(support::config(app)).await;
    let req =
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let out = raw(p.inbound_addr, req, WAIT).await;
    assert_eq!(statuses(&out), vec![200], "{out}");
    let head = out.split("\r\n\r\n").next().unwrap_or_default().to_ascii_lowercase();
    assert!(!head.contains("content-length"), "{out}");
    assert!(head.contains("transfer-encoding: chunked"), "{out}");
    assert!(out.ends_with("5\r\nhello\r\n0\r\n\r\n"), "{out}");
}

#[tokio::test]
async fn the_cl_te_refusal_holds_after_a_request_that_asked_for_an_upgrade() {
    let app = echo().await;
    let p = proxy(support::config(app.addr)).await;
    let req = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n\
POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let out = raw(p.inbound_addr, req, WAIT).await;
    assert_eq!(statuses(&out), vec![200, 400], "{out}");
}

#[tokio::test]
async fn connect_on_the_inbound_listener_is_405_dpe_and_logged() {
    let app = echo().await;
    let dir = TempDir::new("inbound-connect");
    let log = dir.join("access.log");
    let p = proxy(config_with_log(app.addr, &log)).await;
    let out = raw(p.inbound_addr, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", WAIT).await;
    assert_eq!(statuses(&out), vec![405], "{out}");
    assert!(out.contains("x-tandem-error: DPE"), "{out}");
    let lines = log_lines(&log, 1).await;
    assert_eq!((lines[0]["response_code"].as_u64(), lines[0]["response_flags"].as_str()), (Some(405), Some("DPE")));
}

#[tokio::test]
async fn host_must_be_there_once_and_valid() {
    let (app, heads) = recording_app(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let p = proxy(support::config(app)).await;
    for (what, req) in [
        // `Connection: close` so that each answer ends with its connection (nothing waits).
        ("two Host fields", &b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"[..]),
        ("no Host", b"GET / HTTP/1.1\r\nUser-Agent: t\r\nConnection: close\r\n\r\n"),
        ("an invalid Host", b"GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n"),
    ] {
        let out = raw(p.inbound_addr, req, WAIT).await;
        assert_eq!(statuses(&out), vec![400], "{what}: {out}");
        assert!(out.contains("x-tandem-error: DPE"), "{what}: {out}");
    }
    assert!(heads.lock().expect("heads").is_empty(), "none reached the app");
}

#[tokio::test]
async fn host_survives_connection_and_an_absolute_target_names_the_authority() {
    let (app, heads) = recording_app(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let dir = TempDir::new("host-rules");
    let log = dir.join("access.log");
    let p = proxy(config_with_log(app, &log)).await;
    let out =
        raw(p.inbound_addr, b"GET /a HTTP/1.1\r\nHost: kept.example\r\nConnection: Host, close\r\n\r\n", WAIT).await;
    assert_eq!(statuses(&out), vec![200], "{out}");
    let out = raw(
        p.inbound_addr,
        b"GET http://target.example/b?q=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(statuses(&out), vec![200], "{out}");
    let heads = heads.lock().expect("heads").clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(heads[0].to_ascii_lowercase().contains("\r\nhost: kept.example\r\n"), "{}", heads[0]);
    assert!(heads[1].starts_with("GET /b?q=1 HTTP/1.1\r\n"), "{}", heads[1]);
    let h1 = heads[1].to_ascii_lowercase();
    assert!(h1.contains("\r\nhost: target.example\r\n") && !h1.contains("other.example"), "{}", heads[1]);
    let lines = log_lines(&log, 2).await;
    assert_eq!(lines[1]["authority"], "target.example", "{}", lines[1]);
    assert_eq!(lines[1]["path"], "/b?q=1", "{}", lines[1]);
}

#[tokio::test]
async fn an_http_1_0_request_without_host_reaches_the_app_as_a_valid_request() {
    let (app, heads) = recording_app(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let p = proxy(support::config(app)).await;
    let out = raw(p.inbound_addr, b"GET /health HTTP/1.0\r\n\r\n", WAIT).await;
    assert_eq!(statuses(&out), vec![200], "{out}");
    assert!(out.ends_with("ok"), "{out}");
    let heads = heads.lock().expect("heads").clone();
    assert_eq!(heads.len(), 1);
    let want_host = format!("\r\nhost: {app}\r\n");
    assert!(heads[0].to_ascii_lowercase().contains(&want_host), "{}", heads[0]);
}

#[tokio::test]
async fn targets_http_uri_refuses_are_answered_and_logged_byte_for_byte() {
    let (app, heads) = recording_app(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let dir = TempDir::new("odd-paths");
    let log = dir.join("access.log");
    let p = proxy(config_with_log(app, &log)).await;
    let out =
        raw(p.inbound_addr, b"GET /a\"b{c}|d^e`f\\g HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", WAIT).await;
    assert_eq!(statuses(&out), vec![200], "{out}");
    let heads = heads.lock().expect("heads").clone();
    assert!(heads[0].starts_with("GET /a\"b{c}|d^e`f\\g HTTP/1.1\r\n"), "{heads:?}");
    let lines = log_lines(&log, 1).await;
    assert_eq!(lines[0]["path"], "/a\"b{c}|d^e`f\\g", "{}", lines[0]);
}

#[tokio::test]
async fn transfer_codings_tandem_does_not_apply_are_refused() {
    let (app, heads) = recording_app(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let p = proxy(support::config(app)).await;
    for (what, te, want) in [
        ("gzip before chunked", "Transfer-Encoding: gzip, chunked\r\n", 501),
        ("identity before chunked", "Transfer-Encoding: identity, chunked\r\n", 501),
        ("chunked twice in one field", "Transfer-Encoding: chunked, chunked\r\n", 400),
        ("chunked in two fields", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 400),
        ("chunked not last", "Transfer-Encoding: chunked, gzip\r\n", 400),
    ] {
        let req = format!("POST / HTTP/1.1\r\nHost: x\r\n{te}\r\n0\r\n\r\n");
        let out = raw(p.inbound_addr, req.as_bytes(), WAIT).await;
        assert_eq!(statuses(&out), vec![want], "{what}: {out}");
        assert!(out.contains("x-tandem-error: DPE"), "{what}: {out}");
    }
    assert!(heads.lock().expect("heads").is_empty(), "none reached the app");
}

#[tokio::test]
async fn a_te_field_in_the_apps_answer_never_reaches_the_client() {
    let answer = b"HTTP/1.1 200 OK\r\nTE: trailers\r\nContent-Length: 2\r\n\r\nok";
    let (app, _) = recording_app(answer).await;
    let p = proxy(support::config(app)).await;
    // A chunked upload: the request hyper's server took before (issue 17, item 9).
    let req = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n";
    let out = raw(p.inbound_addr, req, WAIT).await;
    assert_eq!(statuses(&out), vec![200], "{out}");
    assert!(!out.to_ascii_lowercase().contains("\r\nte:"), "{out}");
}

#[tokio::test]
async fn a_head_not_complete_in_time_is_logged_408_dpe_and_counted() {
    let app = echo().await;
    let dir = TempDir::new("header-timeout");
    let log = dir.join("access.log");
    let mut config = config_with_log(app.addr, &log);
    config.inbound.timeouts.header_read = tandem::config::Human::new(Duration::from_millis(300));
    let p = proxy(config).await;
    let out = raw(p.inbound_addr, b"GET /slow HTTP/1.1\r\nHost: x\r\n", WAIT).await;
    assert!(out.is_empty() || statuses(&out) == vec![408], "{out}");
    let lines = log_lines(&log, 1).await;
    assert_eq!(lines[0]["response_code"], 408, "{}", lines[0]);
    assert_eq!(lines[0]["response_flags"], "DPE", "{}", lines[0]);
    let m = support::metrics(&p);
    assert!(
        support::metric_value(&m, &["tandem_http_requests_total{", "status_code=\"408\"", "DPE"])
            .is_some_and(|v| v >= 1.0),
        "{m}"
    );
}

#[tokio::test]
async fn an_unsupported_expectation_is_417_and_100_continue_is_answered_before_the_body() {
    let app = echo().await;
    let p = proxy(support::config(app.addr)).await;
    let out = raw(
        p.inbound_addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(statuses(&out), vec![417], "{out}");
    let mut s = tokio::net::TcpStream::connect(p.inbound_addr).await.expect("connect");
    s.write_all(b"POST /?echo_body=1 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
        .await
        .expect("head");
    let interim = read_head(&mut s).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue\r\n"), "{interim}");
    s.write_all(b"hello").await.expect("body");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read_to_end(&mut s, &mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert_eq!(statuses(&rest), vec![200], "{rest}");
    assert!(rest.ends_with("hello"), "{rest}");
}

/// An h2c app that answers with the request body it read (or 500 if the body failed).
async fn h2c_echo_app() -> SocketAddr {
    support::app(true, |req: http::Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        match req.into_body().collect().await {
            Ok(b) => http::Response::new(http_body_util::Full::new(b.to_bytes())),
            Err(_) => {
                let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                r
            }
        }
    })
    .await
}

#[tokio::test]
async fn an_h2c_app_gets_http_1_1_requests_from_the_same_server_chunked_bodies_de_chunked() {
    let app = h2c_echo_app().await;
    let dir = TempDir::new("h1-to-h2c");
    let log = dir.join("access.log");
    let mut config = config_with_log(app, &log);
    config.inbound.app_protocol = tandem::config::AppProtocol::Http2;
    let p = proxy(config).await;
    let req = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n\
GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let out = raw(p.inbound_addr, req, WAIT).await;
    assert_eq!(statuses(&out), vec![200, 200], "{out}");
    assert!(out.contains("hello world"), "{out}");
    // The rules hold on this path too: the same parser refuses CL+TE and a missing Host.
    let out = raw(
        p.inbound_addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(statuses(&out), vec![400], "{out}");
    let out = raw(p.inbound_addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", WAIT).await;
    assert_eq!(statuses(&out), vec![400], "{out}");
    let lines = log_lines(&log, 4).await;
    assert_eq!(lines[0]["bytes_received"], 11, "{}", lines[0]);
}

#[tokio::test]
async fn a_broken_chunked_body_to_an_h2c_app_is_the_clients_fault() {
    let app = h2c_echo_app().await;
    let mut config = support::config(app);
    config.inbound.app_protocol = tandem::config::AppProtocol::Http2;
    let p = proxy(config).await;
    let req = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n";
    let out = raw(p.inbound_addr, req, WAIT).await;
    assert_eq!(statuses(&out), vec![400], "{out}");
    assert!(out.contains("x-tandem-error: DPE"), "{out}");
}
