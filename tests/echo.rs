//! `tandem echo`, the load-test target and test app: every query parameter, `/health`, and the
//! 400 that names a bad parameter.

mod support;

use bytes::Bytes;
use http::header;
use http_body_util::Full;
use std::time::{Duration, Instant};

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn the_default_answer_is_a_json_echo_of_the_request() {
    let echo = support::echo().await;
    let req = http::Request::put(format!("http://{}/a/b?x=1&y=two", echo.addr))
        .header("x-custom", "one")
        .body(Full::new(Bytes::from_static(b"ignored")))
        .expect("req");
    let (status, headers, body) = support::send(&support::h1(), req).await;
    assert_eq!(status, 200);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(headers[header::CONTENT_LENGTH], body.len().to_string());
    let j = json(&body);
    assert_eq!(j["method"], "PUT");
    assert_eq!(j["path"], "/a/b");
    assert_eq!(j["query"], "x=1&y=two");
    assert_eq!(j["version"], "HTTP/1.1");
    assert_eq!(j["headers"]["x-custom"], "one");
    assert_eq!(j["headers"]["host"], echo.addr.to_string());
}

#[tokio::test]
async fn status_sets_the_status() {
    let echo = support::echo().await;
    for code in [201u16, 404, 418, 503] {
        let (status, _, body) = support::get(&format!("http://{}/s?status={code}", echo.addr)).await;
        assert_eq!(status.as_u16(), code);
        assert_eq!(json(&body)["query"], format!("status={code}"));
    }
}

#[tokio::test]
async fn delay_waits_before_answering() {
    let echo = support::echo().await;
    let started = Instant::now();
    let (status, _, _) = support::get(&format!("http://{}/d?delay=300ms", echo.addr)).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300), "answered after {:?}", started.elapsed());
}

#[tokio::test]
async fn size_answers_that_many_bytes() {
    let echo = support::echo().await;
    for (param, n) in [("100000", 100_000usize), ("16KiB", 16_384), ("0", 0), ("1", 1)] {
        let (status, headers, body) = support::get(&format!("http://{}/z?size={param}", echo.addr)).await;
        assert_eq!(status, 200);
        assert_eq!(body.len(), n, "size={param}");
        assert!(body.iter().all(|&b| b == b'x'));
        assert_eq!(headers[header::CONTENT_LENGTH], n.to_string());
        assert_eq!(headers[header::CONTENT_TYPE], "application/octet-stream");
    }
}

#[tokio::test]
async fn chunked_sends_no_length() {
    let echo = support::echo().await;
    for query in ["size=70000&chunked=1", "chunked=1"] {
        let (status, headers, body) = support::get(&format!("http://{}/c?{query}", echo.addr)).await;
        assert_eq!(status, 200);
        assert!(!headers.contains_key(header::CONTENT_LENGTH), "{query}: {headers:?}");
        assert_eq!(headers[header::TRANSFER_ENCODING], "chunked", "{query}");
        if query.starts_with("size") {
            assert_eq!(body.len(), 70_000);
        } else {
            assert_eq!(json(&body)["path"], "/c");
        }
    }
}

#[tokio::test]
async fn echo_body_streams_the_request_body_back() {
    let echo = support::echo().await;
    let payload: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let req = http::Request::post(format!("http://{}/up?echo_body=1", echo.addr))
        .body(Full::new(Bytes::from(payload.clone())))
        .expect("req");
    let (status, headers, body) = support::send(&support::h1(), req).await;
    assert_eq!(status, 200);
    assert_eq!(headers[header::CONTENT_TYPE], "application/octet-stream");
    assert_eq!(&body[..], &payload[..]);
}

#[tokio::test]
async fn health_answers_ok() {
    let echo = support::echo().await;
    let (status, _, body) = support::get(&format!("http://{}/health", echo.addr)).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"ok\n");
}

#[tokio::test]
async fn a_bad_parameter_is_400_naming_it() {
    let echo = support::echo().await;
    for (query, name) in [
        ("status=abc", "status"),
        ("status=99", "status"),
        ("delay=soon", "delay"),
        ("size=lots", "size"),
        ("size=2GiB", "size"),
        ("status=200&delay=5%20parsecs", "delay"),
    ] {
        let (status, _, body) = support::get(&format!("http://{}/bad?{query}", echo.addr)).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{query}: {text}");
        assert!(text.starts_with(&format!("{name}:")), "{query}: {text}");
    }
}
