//! Test support, the one module every test file shares (`mod support;`): apps and proxies on
//! 127.0.0.1:0 (ports read before anything connects), a raw HTTP client, observability helpers,
//! the binary under test ([`bin`]), and in [`procs`] the built binary driven as a process.
#![allow(dead_code)]

pub mod netns;
pub mod procs;

// Not every test file uses these.
#[allow(unused_imports)]
pub use procs::{Proc, Tandem};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;
use tandem::config::{Config, Human};

/// The `tandem` binary under test: `TANDEM_TEST_BIN` when set (CI points it at the binary built
/// exactly as the Dockerfile builds it, `cargo build --release --locked`), else the one cargo built
/// for these tests.
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("TANDEM_TEST_BIN")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_tandem").to_owned())
    })
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

/// An address nothing listens on right now: bind a port, read it, close it. Another test's
/// server may take it meanwhile: where it must stay refusing, use [`refusing_port`].
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

/// A port that refuses connections for as long as the returned socket lives: bound, never
/// listening. Unlike [`dead_addr`], nothing else (another test's server) can take it meanwhile.
pub fn refusing_port() -> (socket2::Socket, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
    let a = s.local_addr().expect("addr").as_socket().expect("inet");
    (s, a)
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

// ---- observability helpers -------------------------------------------------------------------

/// Polls `f` every 10 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn poll<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    match poll_for(timeout, f).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `f` every 10 ms until it returns `Some`, or gives `None` after `timeout`.
pub async fn poll_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The same, for synchronous tests.
pub fn poll_blocking<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh empty directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("tandem-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A configuration like [`config`] with the access log written to `path` as JSON.
pub fn config_with_log(app: SocketAddr, path: &std::path::Path) -> Config {
    let mut c = config(app);
    c.access_log.destination = path.to_string_lossy().into_owned();
    c
}

/// Every line of a file (empty if it does not exist), each parsed as JSON; panics on a line that
/// is not a JSON object or a file that does not end in a newline.
pub fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    };
    assert!(bytes.is_empty() || bytes.ends_with(b"\n"), "{} ends in a partial line", path.display());
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_slice(l).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(l)));
            assert!(v.is_object(), "not an object: {v}");
            v
        })
        .collect()
}

/// The access-log lines of `path` and its rotated files (`.1` … `.max`), oldest first.
pub fn json_lines_rotated(path: &std::path::Path, max: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for n in (1..=max).rev() {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        out.extend(json_lines(std::path::Path::new(&p)));
    }
    out.extend(json_lines(path));
    out
}

/// The `request_id` of an access-log line.
pub fn request_id(line: &serde_json::Value) -> String {
    line["request_id"].as_str().unwrap_or_default().to_owned()
}

/// One parsed Prometheus sample: name, labels (sorted), value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// The samples of a Prometheus text exposition (comments skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = Vec::new();
                // Label values in tandem's output never contain `",` (fixed label sets).
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").expect("label pair");
                    labels.push((k.to_owned(), v.trim_end_matches('"').to_owned()));
                }
                labels.sort();
                (n.to_owned(), labels)
            }
            None => (series.to_owned(), Vec::new()),
        };
        out.push(Sample { name, labels, value });
    }
    out
}

/// Sum of every sample named `name` whose labels include all of `want`.
pub fn metric_sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| want.iter().all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v)))
        .map(|s| s.value)
        .sum()
}

/// Scrapes `GET /metrics` on an admin address.
pub async fn scrape(admin: SocketAddr) -> Vec<Sample> {
    let (status, headers, body) = get(&format!("http://{admin}/metrics")).await;
    assert_eq!(status, 200);
    let ct = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "content type {ct}");
    parse_metrics(std::str::from_utf8(&body).expect("utf8 metrics"))
}

/// Sends a request with a method, URL, headers and body; returns (status, headers, body).
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (http::StatusCode, http::HeaderMap, Bytes) {
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&h1(), b.body(Full::new(Bytes::from(body.to_owned()))).expect("request")).await
}

/// A ClientHello record naming `name` (enough of one for the detector and the SNI).
pub fn client_hello(name: &str) -> Vec<u8> {
    let mut sni = ((name.len() + 3) as u16).to_be_bytes().to_vec();
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name.as_bytes());
    let mut exts = vec![0, 0];
    exts.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    exts.extend_from_slice(&sni);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[9u8; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 section 5.1), `first` holding the bits above
/// it: the tests' own encoder, independent of tandem's.
pub fn hpack_int(out: &mut impl bytes::BufMut, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.put_u8(first | v as u8);
        return;
    }
    out.put_u8(first | max as u8);
    v -= max;
    while v >= 128 {
        out.put_u8((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.put_u8(v as u8);
}
