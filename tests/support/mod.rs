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
