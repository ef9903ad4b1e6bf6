//! The inbound HTTP/1.1 upstream pool: keep-alive reuse, a retry when the app closed an idle
//! connection, error classification (UF, UPE, UC), request bodies, and upgrades through it.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads one request head (and a Content-Length body) from `s`; None at EOF.
async fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let mut body = buf[end + 4..].to_vec();
            while body.len() < len {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            return Some((head, body));
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// With `one_per_conn`, the app closes each connection after its first answer without saying so
/// (as an app whose keep-alive timeout just fired does), when the test says `close_now`, and
/// says `closed` once it has.
#[derive(Clone, Default)]
struct CloseSteps {
    close_now: Arc<tokio::sync::Notify>,
    closed: Arc<tokio::sync::Notify>,
}

/// An app that answers every request on a connection with `body`, counting connections.
async fn app(body: &'static str, one_per_conn: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let (addr, conns, _) = app_with_steps(body, one_per_conn).await;
    (addr, conns)
}

async fn app_with_steps(body: &'static str, one_per_conn: bool) -> (SocketAddr, Arc<AtomicUsize>, CloseSteps) {
    let steps = CloseSteps::default();
    let app_steps = steps.clone();
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let steps = app_steps.clone();
            tokio::spawn(async move {
                while let Some((_head, _body)) = read_request(&mut s).await {
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                    if one_per_conn {
                        // The proxy has the response (and pools the connection); close it.
                        steps.close_now.notified().await;
                        drop(s);
                        steps.closed.notify_one();
                        return;
                    }
                }
            });
        }
    });
    (addr, conns, steps)
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let (addr, conns) = app("hello", false).await;
    let proxy = support::proxy(support::config(addr)).await;
    let client = support::h1();
    for _ in 0..20 {
        let req = http::Request::get(format!("http://{}/x", proxy.inbound_addr))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let (status, _, body) = support::send(&client, req).await;
        assert_eq!(status, 200);
        assert_eq!(body, "hello");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1, "sequential requests share one upstream connection");
}

#[tokio::test]
async fn a_connection_the_app_closed_while_idle_is_not_an_error() {
    let (addr, conns, steps) = app_with_steps("fresh", true).await;
    let proxy = support::proxy(support::config(addr)).await;
    for i in 0..5 {
        let (status, headers, body) = support::get(&format!("http://{}/x", proxy.inbound_addr)).await;
        assert_eq!(status, 200, "request {i}: {headers:?} {body:?}");
        assert_eq!(body, "fresh");
        // The app closes the connection the proxy has pooled, before the next request.
        steps.close_now.notify_one();
        steps.closed.notified().await;
    }
    assert_eq!(conns.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn upstream_failures_keep_their_reason_codes() {
    // Nothing listening: UF.
    let proxy = support::proxy(support::config(support::dead_addr())).await;
    let (status, headers, _) = support::get(&format!("http://{}/x", proxy.inbound_addr)).await;
    assert_eq!(status, 502);
    assert_eq!(headers["x-tandem-error"], "UF");

    // Garbage instead of a response: UPE.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let garbage = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = read_request(&mut s).await;
            let _ = s.write_all(b"this is not HTTP\r\n\r\n").await;
        }
    });
    let proxy = support::proxy(support::config(garbage)).await;
    let (status, headers, _) = support::get(&format!("http://{}/x", proxy.inbound_addr)).await;
    assert_eq!(status, 502);
    assert_eq!(headers["x-tandem-error"], "UPE");

    // Closed after reading the request, before any response: UC.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closer = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = read_request(&mut s).await;
            drop(s);
        }
    });
    let proxy = support::proxy(support::config(closer)).await;
    let (status, headers, _) = support::get(&format!("http://{}/x", proxy.inbound_addr)).await;
    assert_eq!(status, 502);
    assert_eq!(headers["x-tandem-error"], "UC");
}

#[tokio::test]
async fn request_bodies_reach_the_app_and_the_connection_is_reused_after() {
    let echo = support::echo().await;
    let proxy = support::proxy(support::config(echo.addr)).await;
    let client = support::h1();
    let payload = Bytes::from(vec![b'x'; 100_000]);
    for _ in 0..3 {
        let req = http::Request::post(format!("http://{}/up?echo_body=1", proxy.inbound_addr))
            .body(Full::new(payload.clone()))
            .expect("request");
        let (status, _, body) = support::send(&client, req).await;
        assert_eq!(status, 200);
        assert_eq!(body, payload);
    }
}

#[tokio::test]
async fn upgrades_pass_through_the_pool() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Some((head, _)) = read_request(&mut s).await else { return };
                assert!(head.to_ascii_lowercase().contains("upgrade: tandem-test"), "{head}");
                let _ = s
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: tandem-test\r\n\r\n",
                    )
                    .await;
                let mut b = [0u8; 64];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 || s.write_all(&b[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let proxy = support::proxy(support::config(addr)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    s.write_all(b"GET /ws HTTP/1.1\r\nhost: app\r\nconnection: upgrade\r\nupgrade: tandem-test\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await.expect("in time").expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&got));
    s.write_all(b"ping").await.expect("write");
    let mut echoed = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed)).await.expect("in time").expect("read");
    assert_eq!(&echoed, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_on_a_multi_thread_runtime_too() {
    let (addr, conns) = app("hello", false).await;
    let proxy = support::proxy(support::config(addr)).await;
    let client = support::h1();
    for _ in 0..200 {
        let req = http::Request::get(format!("http://{}/x", proxy.inbound_addr))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let (status, _, _) = support::send(&client, req).await;
        assert_eq!(status, 200);
    }
    // A connection checked in while its task is still finishing on another thread comes back a
    // moment later; a sequential client must not leave a trail of connections behind.
    let n = conns.load(Ordering::SeqCst);
    assert!(n <= 3, "{n} upstream connections for 200 sequential requests");
}

#[tokio::test]
async fn http2_requests_with_and_without_bodies_share_the_one_pool_to_the_app() {
    // One client per app protocol: an HTTP/2 client's requests, with a body or without, go on
    // the same keep-alive connections as the HTTP/1.1 server's (before, those with a body took
    // hyper's own pool, a second connection).
    let (addr, conns) = app("hello", false).await;
    let proxy = support::proxy(support::config(addr)).await;
    let client = support::h2();
    for i in 0..6 {
        let url = format!("http://{}/x", proxy.inbound_addr);
        let req = if i % 2 == 0 {
            http::Request::get(url).body(Full::new(Bytes::new()))
        } else {
            http::Request::post(url).header("content-length", "5").body(Full::new(Bytes::from_static(b"12345")))
        };
        let (status, _, body) = support::send(&client, req.expect("request")).await;
        assert_eq!(status, 200);
        assert_eq!(body, "hello");
    }
    let out = support::raw(
        proxy.inbound_addr,
        b"GET /y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    assert_eq!(conns.load(Ordering::SeqCst), 1, "every request on one upstream connection");
}
