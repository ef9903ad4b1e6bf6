//! Test support: apps and proxies on 127.0.0.1:0 (ports read before anything connects), a raw
//! HTTP client, and the built binary.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;
use tandem::config::{Config, Human};

/// The path of the `tandem` binary cargo built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tandem")
}

/// A configuration with every listener on 127.0.0.1:0, the access log off, and `app` as the app.
pub fn config(app: SocketAddr) -> Config {
    let mut c = Config::default();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    c.inbound.listen = Human::new(any);
    c.outbound.listen = Human::new(any);
    c.admin.listen = Human::new(any);
    c.inbound.app = Human::new(app);
    c.access_log.destination = "off".into();
    c.shutdown.drain_timeout = Human::new(Duration::from_secs(5));
    c
}

/// Starts the echo app on a free port.
pub async fn echo() -> tandem::app::Echo {
    tandem::app::Echo::start("127.0.0.1:0".parse().expect("addr")).await.expect("echo starts")
}

/// Starts a proxy with `config`.
pub async fn proxy(config: Config) -> tandem::app::Running {
    tandem::app::start(config, None).await.expect("proxy starts")
}

/// An address nothing listens on: bind a port, read it, close it.
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

/// An HTTP/1.1 client.
pub fn h1() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c (prior knowledge) client.
pub fn h2() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// Sends `req` and collects the response: (status, headers, body).
pub async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> (http::StatusCode, http::HeaderMap, Bytes) {
    let resp = client.request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

/// GET `url` over HTTP/1.1.
pub async fn get(url: &str) -> (http::StatusCode, http::HeaderMap, Bytes) {
    let req = http::Request::get(url).body(Full::new(Bytes::new())).expect("request");
    send(&h1(), req).await
}

/// Writes raw bytes to `addr` and reads until the peer closes or `timeout` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A free loopback address for a process the test starts (bind port 0, read it, close it).
pub fn free_addr() -> SocketAddr {
    dead_addr()
}

/// GET `url` over HTTP/1.1 without panicking (for polling): status and body, or `None` if it
/// could not connect.
pub async fn try_get(url: &str) -> Option<(http::StatusCode, Bytes)> {
    let req = http::Request::get(url).body(Full::new(Bytes::new())).ok()?;
    let resp = h1().request(req).await.ok()?;
    let status = resp.status();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

/// Polls `check` every 20ms until it returns `Some`, panicking with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The proxy's metrics in the Prometheus text format.
pub fn metrics(proxy: &tandem::app::Running) -> String {
    String::from_utf8_lossy(&proxy.telemetry().metrics.render()).into_owned()
}

/// The value of the first metrics line that contains every one of `parts`.
pub fn metric_value(text: &str, parts: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A request or response body fed through a channel: the sender decides when each chunk goes.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// A body made of the given frames (data and trailers), sent without a length.
pub struct Frames(pub std::collections::VecDeque<http_body::Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// Starts an HTTP app on a free port: HTTP/1.1, or h2c only with `h2`. `handler` answers each
/// request. The app lives until the test's runtime ends.
pub async fn app<F, Fut, B>(h2: bool, handler: F) -> SocketAddr
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("app addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            let service = hyper::service::service_fn(move |req| {
                let fut = handler(req);
                async move { Ok::<_, std::convert::Infallible>(fut.await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            tokio::spawn(async move {
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                }
            });
        }
    });
    addr
}

/// Starts a raw TCP app on a free port: `handler` gets each accepted connection.
pub async fn raw_app<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind raw app");
    let addr = listener.local_addr().expect("raw app addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handler(stream));
        }
    });
    addr
}

/// Reads from `stream` until the end of a request head (`\r\n\r\n`), returning it.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&byte[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Asserts a response tandem made itself: its status, `x-tandem-error: code`, and a one-line
/// plain-text body that starts with `body_start`.
pub fn assert_proxy_error(
    (status, headers, body): &(http::StatusCode, http::HeaderMap, Bytes),
    want_status: u16,
    code: &str,
    body_start: &str,
) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status.as_u16(), want_status, "status; body: {text}");
    assert_eq!(headers.get("x-tandem-error").map(|v| v.to_str().unwrap_or("")), Some(code), "x-tandem-error");
    assert!(
        headers.get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/plain")),
        "content-type: {headers:?}"
    );
    assert!(text.ends_with('\n') && text.matches('\n').count() == 1, "one line: {text:?}");
    assert!(text.starts_with(body_start), "body {text:?} should start with {body_start:?}");
}

/// [`try_get`] with an owned URL, for spawning.
pub async fn try_get_owned(url: String) -> Option<(http::StatusCode, Bytes)> {
    try_get(&url).await
}
