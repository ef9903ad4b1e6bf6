//! Every error tandem answers itself, end to end: status, `x-tandem-error`, one-line body, and
//! what the metrics count; plus the requests hyper refuses before the service runs.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::assert_proxy_error;
use tandem::config::{ByteSize, Human};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn app_not_listening_is_502_uf() {
    let app = support::dead_addr();
    let proxy = support::proxy(support::config(app)).await;
    let resp = support::get(&format!("http://{}/x", proxy.inbound_addr)).await;
    assert_proxy_error(&resp, 502, "UF", &format!("upstream connect failed (UF): connection refused by {app}"));
    assert_eq!(
        String::from_utf8_lossy(&resp.2),
        format!("upstream connect failed (UF): connection refused by {app}\n")
    );
}

#[tokio::test]
async fn app_closing_before_answering_is_502_uc() {
    let app = support::raw_app(|mut s| async move {
        support::read_head(&mut s).await;
        drop(s);
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let resp = support::get(&format!("http://{}/x", proxy.inbound_addr)).await;
    assert_proxy_error(
        &resp,
        502,
        "UC",
        &format!("upstream closed the connection (UC): {app} closed or reset before a full response"),
    );
}

#[tokio::test]
async fn app_resetting_the_connection_is_502_uc() {
    let app = support::raw_app(|mut s| async move {
        support::read_head(&mut s).await;
        // SO_LINGER 0: close sends RST instead of FIN.
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        drop(s);
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let resp = support::get(&format!("http://{}/x", proxy.inbound_addr)).await;
    assert_proxy_error(&resp, 502, "UC", "upstream closed the connection (UC):");
}

#[tokio::test]
async fn app_sending_garbage_is_502_upe() {
    let app = support::raw_app(|mut s| async move {
        support::read_head(&mut s).await;
        let _ = s.write_all(b"this is not HTTP at all\r\n\r\n").await;
        let _ = s.flush().await;
        support::read_head(&mut s).await;
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let resp = support::get(&format!("http://{}/x", proxy.inbound_addr)).await;
    assert_proxy_error(&resp, 502, "UPE", &format!("upstream protocol error (UPE): {app} sent an invalid response:"));
}

#[tokio::test]
async fn app_hanging_is_504_ut() {
    let app = support::raw_app(|mut s| async move {
        support::read_head(&mut s).await;
        // Hold the connection open and never answer.
        support::read_head(&mut s).await;
    })
    .await;
    let mut cfg = support::config(app);
    cfg.inbound.timeouts.response = Human::new(Duration::from_millis(200));
    let proxy = support::proxy(cfg).await;
    let resp = support::get(&format!("http://{}/x", proxy.inbound_addr)).await;
    assert_proxy_error(&resp, 504, "UT", &format!("upstream timed out (UT): no response from {app} within 200ms"));
}

#[tokio::test]
async fn over_the_in_flight_limit_is_503_uo_at_once() {
    // The app tells the test when the first request arrives and answers when released.
    let (arrived_tx, mut arrived_rx) = tokio::sync::mpsc::channel::<()>(4);
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let r = release.clone();
    let app = support::app(false, move |_req| {
        let (arrived, release) = (arrived_tx.clone(), r.clone());
        async move {
            let _ = arrived.send(()).await;
            let _permit = release.acquire().await;
            http::Response::new(Full::new(Bytes::from_static(b"slow\n")))
        }
    })
    .await;
    let mut cfg = support::config(app);
    cfg.inbound.limits.max_in_flight = 1;
    let proxy = support::proxy(cfg).await;
    let url = format!("http://{}/slow", proxy.inbound_addr);
    let first = tokio::spawn({
        let url = url.clone();
        async move { support::get(&url).await }
    });
    tokio::time::timeout(Duration::from_secs(10), arrived_rx.recv()).await.expect("the first request reaches the app");
    let second = support::get(&url).await;
    assert_proxy_error(&second, 503, "UO", "overloaded (UO): 1 requests already in flight");
    release.add_permits(1);
    let (status, _, body) = first.await.expect("first request");
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"slow\n");
    let m = support::metrics(&proxy);
    assert_eq!(support::metric_value(&m, &["tandem_http_requests_total{", "response_flags=\"UO\""]), Some(1.0), "{m}");
}

#[tokio::test]
async fn oversized_heads_and_too_many_headers_are_431_dpe() {
    let echo = support::echo().await;
    let mut cfg = support::config(echo.addr);
    cfg.inbound.limits.max_header_bytes = Human::new(ByteSize(2048));
    cfg.inbound.limits.max_headers = 10;
    let proxy = support::proxy(cfg).await;
    let url = format!("http://{}/x", proxy.inbound_addr);

    let req = http::Request::get(&url).header("x-big", "b".repeat(3000)).body(Full::new(Bytes::new())).expect("req");
    let resp = support::send(&support::h1(), req).await;
    assert_proxy_error(&resp, 431, "DPE", "request header fields too large (DPE): request head of");
    assert!(String::from_utf8_lossy(&resp.2).contains("the limit is 2048"));

    let mut req = http::Request::get(&url);
    for i in 0..20 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let resp = support::send(&support::h1(), req.body(Full::new(Bytes::new())).expect("req")).await;
    assert_proxy_error(&resp, 431, "DPE", "request header fields too large (DPE): ");
    assert!(String::from_utf8_lossy(&resp.2).contains("header fields, the limit is 10"));

    // Within the limits the same request passes.
    let req = http::Request::get(&url).header("x-big", "b".repeat(500)).body(Full::new(Bytes::new())).expect("req");
    assert_eq!(support::send(&support::h1(), req).await.0, 200);
}

/// Parses a raw HTTP/1.1 response: status line, headers (lower-cased names), body.
fn parse_raw(raw: &str) -> (String, Vec<(String, String)>, String) {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("").to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400_dpe_and_never_reaches_the_app() {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let app = support::app(false, move |_req| {
        s.fetch_add(1, Ordering::SeqCst);
        async move { http::Response::new(Full::new(Bytes::from_static(b"app\n"))) }
    })
    .await;
    let log = std::env::temp_dir().join(format!("tandem-cl-te-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut cfg = support::config(app);
    cfg.access_log.destination = log.display().to_string();
    let proxy = support::proxy(cfg).await;
    let smuggled = "GET /second HTTP/1.1\r\nHost: x\r\n\r\n";
    for head in [
        "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST /b HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 40\r\n\r\n",
    ] {
        let raw = format!("{head}0\r\n\r\n{smuggled}");
        let out = support::raw(proxy.inbound_addr, raw.as_bytes(), Duration::from_secs(5)).await;
        let (status, headers, body) = parse_raw(&out);
        assert!(status.starts_with("HTTP/1.1 400 "), "{out}");
        assert_eq!(header(&headers, "x-tandem-error"), Some("DPE"), "{out}");
        assert_eq!(header(&headers, "connection"), Some("close"), "{out}");
        assert_eq!(body, "bad request (DPE): the request has both Content-Length and Transfer-Encoding\n", "{out}");
        assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "nothing after the refusal is served: {out}");
    }

    // The head arriving in pieces (the Content-Length line before Transfer-Encoding arrives).
    let mut s = tokio::net::TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    for piece in
        ["POST /c HTTP/1.1\r\nHost: x\r\nContent-Le", "ngth: 4\r\n", "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]
    {
        s.write_all(piece.as_bytes()).await.expect("write");
        s.flush().await.expect("flush");
        tokio::task::yield_now().await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");

    // A request with only one of the two still passes, on the same proxy.
    let ok = support::raw(
        proxy.inbound_addr,
        b"POST /d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
    assert_eq!(seen.load(Ordering::SeqCst), 1, "only the valid request reached the app");

    // Counted and logged like every proxy-made response.
    let m = support::metrics(&proxy);
    let refused = ["tandem_http_requests_total{", "status_code=\"400\"", "response_flags=\"DPE\""];
    assert_eq!(support::metric_value(&m, &refused), Some(3.0), "{m}");
    proxy.telemetry().access_log.flush();
    let lines = std::fs::read_to_string(&log).expect("access log");
    let _ = std::fs::remove_file(&log);
    let records: Vec<serde_json::Value> =
        lines.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    for path in ["/a", "/b", "/c"] {
        let r = records.iter().find(|r| r["path"] == path).unwrap_or_else(|| panic!("no line for {path}: {lines}"));
        assert_eq!(r["response_code"], 400, "{r}");
        assert_eq!(r["response_flags"], "DPE", "{r}");
        assert_eq!(r["method"], "POST", "{r}");
    }
    assert_eq!(records.len(), 4, "three refusals and the valid request: {lines}");
}

#[tokio::test]
async fn a_client_going_away_mid_request_is_counted_dc() {
    let (arrived_tx, mut arrived_rx) = tokio::sync::mpsc::channel::<()>(1);
    let app = support::app(false, move |_req| {
        let arrived = arrived_tx.clone();
        async move {
            let _ = arrived.send(()).await;
            std::future::pending::<()>().await;
            http::Response::new(Full::new(Bytes::new()))
        }
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let mut s = tokio::net::TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    s.write_all(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    tokio::time::timeout(Duration::from_secs(10), arrived_rx.recv()).await.expect("the request reaches the app");
    drop(s);
    support::wait_for("the DC record", Duration::from_secs(10), || {
        let m = support::metrics(&proxy);
        let v = support::metric_value(&m, &["tandem_http_requests_total{", "response_flags=\"DC\""]);
        async move { (v == Some(1.0)).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn heads_the_parser_refuses_are_answered_by_tandem_and_counted() {
    let echo = support::echo().await;
    let mut cfg = support::config(echo.addr);
    cfg.inbound.limits.max_header_bytes = Human::new(ByteSize(2048));
    let proxy = support::proxy(cfg).await;

    let out = support::raw(proxy.inbound_addr, b"NOT-HTTP\r\n\r\n", Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 400 ") && out.contains("x-tandem-error: DPE"), "{out}");
    // Past the read buffer (16 KiB here) the head is refused before it is whole.
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(20_000));
    let out = support::raw(proxy.inbound_addr, big.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 431 ") && out.contains("x-tandem-error: DPE"), "{out}");

    for status in ["400", "431"] {
        let want = format!("status_code=\"{status}\"");
        support::wait_for(&format!("a {status} refusal counted"), Duration::from_secs(5), || {
            let m = support::metrics(&proxy);
            let v = support::metric_value(&m, &["tandem_http_requests_total{", "direction=\"inbound\"", &want, "DPE"]);
            async move { (v == Some(1.0)).then_some(()) }
        })
        .await;
    }
}

#[tokio::test]
async fn over_the_default_header_count_the_parser_refuses_with_431() {
    // At the default max_headers (100) the 101st field is refused with 431 and counted, and 100
    // pass.
    // An app that takes any head (tandem adds x-forwarded-* and x-request-id on the way).
    let app = head_taking_app().await;
    let cfg = support::config(app);
    assert_eq!(cfg.inbound.limits.max_headers, 100);
    let proxy = support::proxy(cfg).await;
    let out = support::raw(proxy.inbound_addr, head_with_fields(100).as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    let out = support::raw(proxy.inbound_addr, head_with_fields(101).as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    assert!(out.contains("x-tandem-error: DPE"), "tandem's own answer: {out}");
    support::wait_for("the refusal counted", Duration::from_secs(5), || {
        let m = support::metrics(&proxy);
        let v = support::metric_value(
            &m,
            &["tandem_http_requests_total{", "direction=\"inbound\"", "status_code=\"431\"", "DPE"],
        );
        async move { (v == Some(1.0)).then_some(()) }
    })
    .await;
    assert_eq!(tandem::listener::accept::parser_max_headers(10), 100);
    assert_eq!(tandem::listener::accept::parser_max_headers(100), 100);
    assert_eq!(tandem::listener::accept::parser_max_headers(250), 250);
}

#[tokio::test]
async fn above_the_parser_array_the_configured_count_is_exact() {
    // A limit above hyper's inline array: the parser enforces exactly the configured count.
    let mut cfg = support::config(head_taking_app().await);
    cfg.inbound.limits.max_headers = 150;
    let proxy = support::proxy(cfg).await;
    let out = support::raw(proxy.inbound_addr, head_with_fields(150).as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    let out = support::raw(proxy.inbound_addr, head_with_fields(151).as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
}

/// A raw app that reads one request head, whatever its size, and answers 200.
async fn head_taking_app() -> std::net::SocketAddr {
    support::raw_app(|mut s| async move {
        use tokio::io::AsyncWriteExt;
        let _ = support::read_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
    })
    .await
}

/// A request head with exactly `n` header fields (Host and Connection among them).
fn head_with_fields(n: usize) -> String {
    let mut h = String::from("GET /count HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..n - 2 {
        h.push_str(&format!("x-h{i}: v\r\n"));
    }
    h.push_str("\r\n");
    h
}

/// An HTTP/1.1 gRPC request (`connection: close`, so the answer is followed by the close).
fn grpc_h1(extra: &str) -> String {
    format!(
        "POST /t.Test/Echo HTTP/1.1\r\nhost: pod.test\r\ncontent-type: application/grpc+proto\r\nte: trailers\r\n\
         content-length: 0\r\nconnection: close\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn an_http1_grpc_client_gets_a_200_with_the_status_in_its_head_and_no_body() {
    let (_socket, app) = support::refusing_port();
    let message = format!("upstream connect failed (UF): connection refused by {app}");
    // To an HTTP/1.1 app (the codec relays) and to an h2 app (the proxy's client).
    for protocol in [tandem::config::AppProtocol::Http1, tandem::config::AppProtocol::Http2] {
        let mut cfg = support::config(app);
        cfg.inbound.app_protocol = protocol;
        let proxy = support::proxy(cfg).await;
        let out = support::raw(proxy.inbound_addr, grpc_h1("").as_bytes(), Duration::from_secs(5)).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{protocol:?}: {out}");
        for field in [
            "content-type: application/grpc\r\n".to_owned(),
            "grpc-status: 14\r\n".to_owned(),
            format!("grpc-message: {message}\r\n"),
            "x-tandem-error: UF\r\n".to_owned(),
            "content-length: 0\r\n".to_owned(),
        ] {
            assert!(out.contains(&field), "{protocol:?}: {field:?} in {out}");
        }
        assert!(out.ends_with("\r\n\r\n"), "{protocol:?}: no body: {out}");
    }
}

#[tokio::test]
async fn an_http1_grpc_request_the_codec_refuses_gets_invalid_argument() {
    let proxy = support::proxy(support::config(support::dead_addr())).await;
    let out =
        support::raw(proxy.inbound_addr, grpc_h1("host: other.test\r\n").as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(
        out.contains("grpc-status: 3\r\n")
            && out.contains("grpc-message: bad request (DPE): more than one Host field\r\n"),
        "{out}"
    );
    assert!(out.contains("x-tandem-error: DPE\r\n"), "{out}");
}
