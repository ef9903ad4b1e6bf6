//! The outbound forward proxy end to end: real clients configured with a proxy (curl through
//! `http_proxy`/`https_proxy`, a hyper-util client sending absolute-form URIs, raw h2c), CONNECT
//! tunnels carrying TLS, policy, every error path, the access-log line and metrics, the drain, and
//! `tandem check` on the outbound keys.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tandem::config::{Config, Human};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// Set-up: a proxy with a file access log in its own temp dir, and the echo app.

struct Setup {
    proxy: tandem::app::Running,
    echo: tandem::app::Echo,
    dir: PathBuf,
}

impl Setup {
    async fn new(tune: impl FnOnce(&mut Config)) -> Self {
        let echo = support::echo().await;
        let dir = temp_dir();
        let mut c = support::config(echo.addr);
        c.access_log.destination = dir.join("access.log").display().to_string();
        tune(&mut c);
        let proxy = support::proxy(c).await;
        Self { proxy, echo, dir }
    }

    fn out(&self) -> SocketAddr {
        self.proxy.outbound_addr
    }

    /// Every access-log line written so far.
    fn lines(&self) -> Vec<Value> {
        self.proxy.telemetry().access_log.flush();
        read_lines(&self.dir.join("access.log"))
    }

    /// The one line for `method` and `authority`, waiting (bounded) for a tunnel to report.
    async fn line(&self, method: &str, authority: &str) -> Value {
        for _ in 0..500 {
            let found = self.lines().into_iter().find(|l| l["method"] == method && l["authority"] == authority);
            if let Some(l) = found {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no access-log line for {method} {authority}: {:?}", self.lines());
    }

    fn metrics(&self) -> String {
        String::from_utf8(self.proxy.telemetry().metrics.render()).expect("utf8")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.echo.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "tandem-outbound-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn read_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// The sum of the samples of `name` whose labels include every `want` pair (`None`: no sample).
fn sample(metrics: &str, name: &str, want: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| want.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .reduce(|a, b| a + b)
}

// ---------------------------------------------------------------------------------------------
// A hyper-util client with a proxy: every connection goes to the proxy and is marked proxied, so
// hyper-util writes absolute-form request targets (what reqwest does with HTTP_PROXY).

#[derive(Clone)]
struct ViaProxy(SocketAddr);

struct Proxied(TcpStream);

impl Connection for Proxied {
    fn connected(&self) -> Connected {
        Connected::new().proxy(true)
    }
}

impl AsyncRead for Proxied {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Proxied {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tower_service::Service<Uri> for ViaProxy {
    type Response = TokioIo<Proxied>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Proxied>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _dst: Uri) -> Self::Future {
        let proxy = self.0;
        Box::pin(async move { Ok(TokioIo::new(Proxied(TcpStream::connect(proxy).await?))) })
    }
}

fn proxied_client(proxy: SocketAddr) -> Client<ViaProxy, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(ViaProxy(proxy))
}

async fn send_via(
    client: &Client<ViaProxy, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let resp = client.request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, body.collect().await.expect("body").to_bytes())
}

async fn get_via(proxy: SocketAddr, url: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    let req = Request::get(url).body(Full::new(Bytes::new())).expect("request");
    send_via(&proxied_client(proxy), req).await
}

/// Sends a raw request to the proxy and returns the response head and whatever body came.
async fn raw(addr: SocketAddr, request: &str) -> String {
    support::raw(addr, request.as_bytes(), Duration::from_secs(10)).await
}

/// Opens a CONNECT tunnel through the proxy; returns the stream and the response head.
async fn connect(proxy: SocketAddr, target: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.expect("connect to proxy");
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await.expect("read") {
            0 => break,
            _ => head.push(byte[0]),
        }
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

fn echo_doc(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

// ---------------------------------------------------------------------------------------------
// Upstreams that misbehave, each on 127.0.0.1:0.

#[derive(Clone, Copy)]
enum Misbehave {
    /// Accepts and never answers.
    Hang,
    /// Reads the request head, then closes.
    Close,
    /// Answers with something that is not HTTP.
    Garbage,
}

/// Starts a misbehaving upstream; the receiver gets one message per connection accepted.
async fn misbehaving(how: Misbehave) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let _ = tx.send(());
            match how {
                Misbehave::Hang => held.push(s),
                Misbehave::Close | Misbehave::Garbage => {
                    tokio::spawn(async move {
                        read_head(&mut s).await;
                        if matches!(how, Misbehave::Garbage) {
                            let _ = s.write_all(b"SPDY/9 banana\r\n\r\n").await;
                        }
                    });
                }
            }
        }
    });
    (addr, rx)
}

async fn read_head(s: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A local TLS server (the echo app behind rustls) with its own CA.

struct Tls {
    addr: SocketAddr,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    ca_pem: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

async fn tls_server() -> Tls {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "tandem test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("leaf params");
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).expect("leaf cert");

    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf_cert.der().clone()], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else { return };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), tandem::echo::EchoService)
                    .await;
            });
        }
    });
    Tls { addr, ca_der: ca_cert.der().clone(), ca_pem: ca_cert.pem() }
}

// ---------------------------------------------------------------------------------------------
// Real clients reach the echo app through tandem.

#[tokio::test]
async fn a_rust_client_with_a_proxy_reaches_the_app_and_the_log_says_outbound() {
    let s = Setup::new(|_| {}).await;
    let echo = s.echo.addr;
    let client = proxied_client(s.out());
    let req = Request::get(format!("http://{echo}/v1/orders?id=7"))
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("x-request-id", "req-outbound-1")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let (status, _, body) = send_via(&client, req).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let doc = echo_doc(&body);
    assert_eq!(doc["path"], "/v1/orders");
    assert_eq!(doc["query"], "id=7");
    assert_eq!(doc["headers"]["host"], echo.to_string());
    assert_eq!(doc["headers"]["x-request-id"], "req-outbound-1");
    assert!(doc["headers"].get("proxy-authorization").is_none(), "{doc}");

    // A streamed request body, on the same pooled connection.
    let req = Request::post(format!("http://{echo}/upload?echo_body=1"))
        .body(Full::new(Bytes::from_static(b"hello through tandem")))
        .expect("request");
    let (status, _, body) = send_via(&client, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"hello through tandem");

    let lines = s.lines();
    let get = lines.iter().find(|l| l["method"] == "GET").expect("GET line");
    assert_eq!(get["direction"], "outbound");
    assert_eq!(get["authority"], echo.to_string());
    assert_eq!(get["upstream_host"], echo.to_string());
    assert_eq!(get["upstream_cluster"], "passthrough");
    assert_eq!(get["path"], "/v1/orders?id=7");
    assert_eq!(get["response_code"], 200);
    assert_eq!(get["response_flags"], "-");
    assert_eq!(get["request_id"], "req-outbound-1");
    let post = lines.iter().find(|l| l["method"] == "POST").expect("POST line");
    assert_eq!(post["bytes_received"], 20);
    assert_eq!(post["bytes_sent"], 20);

    let m = s.metrics();
    let want = ["direction=\"outbound\"", "upstream=\"passthrough\"", "method=\"GET\"", "status_code=\"200\""];
    assert_eq!(sample(&m, "tandem_http_requests_total", &want), Some(1.0), "{m}");
    assert!(sample(&m, "tandem_tcp_connections_opened_total", &["direction=\"outbound\""]).unwrap_or(0.0) >= 1.0);
    // The authority goes to the log, never to a label.
    assert!(!m.lines().any(|l| l.starts_with("tandem_") && l.contains("127.0.0.1")), "{m}");
}

/// curl reads `http_proxy`/`https_proxy` from its environment; skipped (with the reason) when
/// curl is not installed. CI installs it.
async fn curl(args: &[&str], env: &[(&str, String)]) -> Option<std::process::Output> {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "-i", "--max-time", "20"]).args(args);
    for v in ["http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"] {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    match cmd.output().await {
        Ok(o) => Some(o),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            eprintln!("SKIPPED: curl is not installed ({e}); CI installs it");
            None
        }
        Err(e) => panic!("cannot run curl: {e}"),
    }
}

#[tokio::test]
async fn curl_with_http_proxy_in_its_environment_reaches_the_app() {
    let s = Setup::new(|_| {}).await;
    let echo = s.echo.addr;
    let url = format!("http://{echo}/from-curl?x=1");
    let Some(out) = curl(&[&url], &[("http_proxy", format!("http://{}", s.out()))]).await else { return };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).expect("body");
    let doc: Value = serde_json::from_str(body).expect("echo json");
    assert_eq!(doc["path"], "/from-curl");
    assert_eq!(doc["headers"]["host"], echo.to_string());
    // curl sends Proxy-Connection to a proxy; it is hop-by-hop and stops here.
    assert!(doc["headers"].get("proxy-connection").is_none(), "{doc}");
    assert!(doc["headers"]["x-request-id"].as_str().is_some_and(|v| v.len() == 36), "{doc}");

    let line = s.line("GET", &echo.to_string()).await;
    assert_eq!(line["direction"], "outbound");
    assert_eq!(line["upstream_host"], echo.to_string());
    assert_eq!(line["path"], "/from-curl?x=1");
    assert!(line["user_agent"].as_str().is_some_and(|ua| ua.starts_with("curl/")), "{line}");
}

#[tokio::test]
async fn curl_with_https_proxy_tunnels_tls_through_connect() {
    let s = Setup::new(|_| {}).await;
    let tls = tls_server().await;
    let ca = s.dir.join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).expect("write ca");
    let url = format!("https://{}/over-tls", tls.addr);
    let ca_arg = ca.display().to_string();
    let Some(out) = curl(&["--cacert", &ca_arg, &url], &[("https_proxy", format!("http://{}", s.out()))]).await else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("\"path\":\"/over-tls\""), "{text}");

    let line = s.line("CONNECT", &tls.addr.to_string()).await;
    assert_eq!(line["direction"], "outbound");
    assert_eq!(line["response_code"], 200);
    assert_eq!(line["upstream_host"], tls.addr.to_string());
    assert!(line["bytes_received"].as_u64().is_some_and(|n| n > 0), "{line}");
    assert!(line["bytes_sent"].as_u64().is_some_and(|n| n > 0), "{line}");
}

#[tokio::test]
async fn origin_form_requests_go_to_the_host_they_name() {
    let s = Setup::new(|_| {}).await;
    let echo = s.echo.addr;
    let resp = raw(s.out(), &format!("GET /by-host HTTP/1.1\r\nHost: {echo}\r\nConnection: close\r\n\r\n")).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"path\":\"/by-host\""), "{resp}");
    let line = s.line("GET", &echo.to_string()).await;
    assert_eq!(line["upstream_host"], echo.to_string());
}

#[tokio::test]
async fn an_h2c_app_is_forwarded_by_its_authority() {
    let s = Setup::new(|_| {}).await;
    let echo = s.echo.addr;
    let stream = TcpStream::connect(s.out()).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get(format!("http://{echo}/over-h2c")).body(Full::new(Bytes::new())).expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let doc = echo_doc(&body);
    assert_eq!(doc["path"], "/over-h2c");
    assert_eq!(doc["headers"]["host"], echo.to_string());
    let line = s.line("GET", &echo.to_string()).await;
    assert_eq!(line["protocol"], "HTTP/2");
    assert_eq!(line["direction"], "outbound");
}

// ---------------------------------------------------------------------------------------------
// CONNECT.

#[tokio::test]
async fn a_connect_tunnel_carries_a_verified_tls_session_end_to_end() {
    let s = Setup::new(|_| {}).await;
    let tls = tls_server().await;
    let target = tls.addr.to_string();
    let (stream, head) = connect(s.out(), &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(tls.ca_der.clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls_stream =
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, stream).await.expect("TLS handshake");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls_stream)).await.expect("h1");
    let conn = tokio::spawn(conn.without_shutdown());
    let req =
        Request::get("/inside-the-tunnel").header("host", "localhost").body(Full::new(Bytes::new())).expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(echo_doc(&body)["path"], "/inside-the-tunnel");

    // Close cleanly (close_notify, FIN) and read until the server has closed too.
    drop(sender);
    let mut io = conn.await.expect("join").expect("conn").io.into_inner();
    io.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    let _ = io.read_to_end(&mut rest).await;

    let line = s.line("CONNECT", &target).await;
    assert_eq!(line["direction"], "outbound");
    assert_eq!(line["response_code"], 200);
    assert_eq!(line["response_flags"], "-");
    assert_eq!(line["upstream_host"], target);
    assert_eq!(line["upstream_cluster"], "passthrough");
    assert_eq!(line["path"], Value::Null);
    assert!(line["request_id"].is_string());
    let (up, down) = (line["bytes_received"].as_u64().unwrap_or(0), line["bytes_sent"].as_u64().unwrap_or(0));
    assert!(up > 100 && down > 500, "a TLS handshake each way: {line}");
    assert!(line["duration_ms"].is_u64());

    let m = s.metrics();
    // The HTTP connection that carried CONNECT, then the tunnel.
    let opened = sample(&m, "tandem_tcp_connections_opened_total", &["direction=\"outbound\""]);
    assert!(opened.unwrap_or(0.0) >= 2.0, "{m}");
    let connects = ["direction=\"outbound\"", "method=\"CONNECT\"", "status_code=\"200\""];
    assert_eq!(sample(&m, "tandem_http_requests_total", &connects), Some(1.0), "{m}");
}

#[tokio::test]
async fn an_h2c_app_can_open_a_connect_tunnel_too() {
    let s = Setup::new(|_| {}).await;
    let echo = s.echo.addr;
    let stream = TcpStream::connect(s.out()).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::connect(echo.to_string()).body(Full::new(Bytes::new())).expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut tunnel = TokioIo::new(hyper::upgrade::on(resp).await.expect("upgraded"));
    tunnel.write_all(b"GET /in-an-h2-stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    tunnel.read_to_end(&mut answer).await.expect("read");
    // The app's side ends too (END_STREAM), and with it the tunnel.
    tunnel.shutdown().await.expect("shutdown");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("/in-an-h2-stream"), "{answer}");
    let line = s.line("CONNECT", &echo.to_string()).await;
    assert_eq!(line["protocol"], "HTTP/2");
}

#[tokio::test]
async fn a_plain_upgrade_through_the_proxy_joins_both_sides() {
    // An upstream that switches protocols and then echoes bytes.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((mut c, _)) = l.accept().await else { return };
        read_head(&mut c).await;
        let _ = c.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n").await;
        let mut buf = [0u8; 64];
        while let Ok(n) = c.read(&mut buf).await {
            if n == 0 || c.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let s = Setup::new(|_| {}).await;
    let mut c = TcpStream::connect(s.out()).await.expect("connect");
    let req = format!("GET http://{up}/chat HTTP/1.1\r\nHost: {up}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n");
    c.write_all(req.as_bytes()).await.expect("write");
    read_head(&mut c).await;
    c.write_all(b"ping").await.expect("write");
    let mut pong = [0u8; 4];
    c.read_exact(&mut pong).await.expect("read");
    assert_eq!(&pong, b"ping");
    drop(c);
    let line = s.line("GET", &up.to_string()).await;
    assert_eq!(line["response_code"], 101);
}

#[tokio::test]
async fn connect_to_a_dead_port_is_502_uf_and_without_a_port_400() {
    let s = Setup::new(|_| {}).await;
    let dead = support::dead_addr();
    let (_, head) = connect(s.out(), &dead.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-tandem-error: uf"), "{head}");
    let line = s.line("CONNECT", &dead.to_string()).await;
    assert_eq!(line["response_flags"], "UF");
    assert_eq!(line["upstream_host"], dead.to_string());

    let resp = raw(s.out(), "CONNECT 127.0.0.1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}

// ---------------------------------------------------------------------------------------------
// Policy.

#[tokio::test]
async fn denied_destinations_get_403_nr_by_name_address_and_port() {
    let s = Setup::new(|c| {
        c.outbound.deny =
            ["*.blocked.test", "127.0.0.0/8:1-1023"].iter().map(|p| Human::new(p.parse().expect("pattern"))).collect();
    })
    .await;
    // By name, before any lookup.
    let (status, headers, body) = get_via(s.out(), "http://api.blocked.test/x").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers["x-tandem-error"], "NR");
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("api.blocked.test") && text.contains("outbound.deny[0]"), "{text}");
    // By address and port: a literal IP in a denied block and range.
    let (status, _, body) = get_via(s.out(), "http://127.0.0.1:80/").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("outbound.deny[1] (127.0.0.0/8:1-1023)"));
    // CONNECT is held to the same policy.
    let (_, head) = connect(s.out(), "api.blocked.test:443").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    // The echo app (a port outside the range) is still reachable.
    let (status, _, _) = get_via(s.out(), &format!("http://{}/ok", s.echo.addr)).await;
    assert_eq!(status, StatusCode::OK);

    let line = s.line("GET", "api.blocked.test").await;
    assert_eq!(line["response_code"], 403);
    assert_eq!(line["response_flags"], "NR");
    assert_eq!(line["direction"], "outbound");
    let m = s.metrics();
    let want = ["direction=\"outbound\"", "status_code=\"403\"", "response_flags=\"NR\""];
    assert!(sample(&m, "tandem_http_requests_total", &want).unwrap_or(0.0) >= 2.0, "{m}");
}

#[tokio::test]
async fn address_patterns_apply_to_what_a_name_resolves_to() {
    // localhost resolves from /etc/hosts (no DNS traffic); every loopback address is denied.
    let s = Setup::new(|c| {
        c.outbound.deny =
            vec![Human::new("127.0.0.0/8".parse().expect("cidr")), Human::new("::1".parse().expect("ip"))];
    })
    .await;
    let (status, headers, body) = get_via(s.out(), &format!("http://localhost:{}/", s.echo.addr.port())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body:?}");
    assert_eq!(headers["x-tandem-error"], "NR");
    assert!(String::from_utf8_lossy(&body).contains("outbound.deny["), "{body:?}");
}

#[tokio::test]
async fn a_non_empty_allow_list_admits_only_what_it_names() {
    let s = Setup::new(|c| {
        let echo = c.inbound.app.value;
        c.outbound.allow = vec![Human::new(format!("127.0.0.1:{}", echo.port()).parse().expect("pattern"))];
    })
    .await;
    let echo = s.echo.addr;
    let (status, _, _) = get_via(s.out(), &format!("http://{echo}/allowed")).await;
    assert_eq!(status, StatusCode::OK);
    let other = support::dead_addr();
    let (status, headers, body) = get_via(s.out(), &format!("http://{other}/")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers["x-tandem-error"], "NR");
    assert!(String::from_utf8_lossy(&body).contains("matches nothing in outbound.allow"), "{body:?}");
}

#[tokio::test]
async fn a_request_naming_tandems_own_outbound_listener_is_refused_not_recursed() {
    let s = Setup::new(|_| {}).await;
    let own = s.out();
    let resp = raw(own, &format!("GET /loop HTTP/1.1\r\nHost: {own}\r\nConnection: close\r\n\r\n")).await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("x-tandem-error: NR") && resp.contains("loop"), "{resp}");
    let (_, head) = connect(own, &own.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let gets: Vec<Value> = s.lines().into_iter().filter(|l| l["path"] == "/loop").collect();
    assert_eq!(gets.len(), 1, "exactly one request, not a recursion: {gets:?}");
}

// ---------------------------------------------------------------------------------------------
// Upstream failures: the same vocabulary as inbound.

#[tokio::test]
async fn an_unreachable_upstream_is_502_uf() {
    let s = Setup::new(|_| {}).await;
    let dead = support::dead_addr();
    let (status, headers, body) = get_via(s.out(), &format!("http://{dead}/x")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-tandem-error"], "UF");
    let text = String::from_utf8_lossy(&body);
    assert_eq!(text, format!("upstream connect failed (UF): connection refused by {dead}\n"));
    let line = s.line("GET", &dead.to_string()).await;
    assert_eq!(line["response_flags"], "UF");
    assert_eq!(line["upstream_host"], dead.to_string());
}

/// A listener whose accept queue is full: further SYNs are dropped, so a connect hangs. The
/// returned stream holds the one queued connection.
async fn full_backlog() -> (SocketAddr, socket2::Socket, TcpStream) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("addr").into()).expect("bind");
    sock.listen(0).expect("listen");
    let addr = sock.local_addr().expect("addr").as_socket().expect("inet");
    let queued = TcpStream::connect(addr).await.expect("the one queued connection");
    (addr, sock, queued)
}

#[tokio::test]
async fn a_connect_that_times_out_is_504_uf() {
    let s = Setup::new(|c| c.outbound.timeouts.connect = Human::new(Duration::from_millis(200))).await;
    let (full, _listener, _queued) = full_backlog().await;
    let (status, headers, body) = get_via(s.out(), &format!("http://{full}/")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body:?}");
    assert_eq!(headers["x-tandem-error"], "UF");
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("upstream connect timed out (UF): no answer from {full} within 200ms\n")
    );
    let (_, head) = connect(s.out(), &full.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 504") && head.contains("x-tandem-error: UF"), "{head}");
    let line = s.line("GET", &full.to_string()).await;
    assert_eq!(line["response_flags"], "UF");
    assert_eq!(line["response_code"], 504);
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_502_uf() {
    let s = Setup::new(|_| {}).await;
    // A label over 63 bytes fails inside the resolver library: no DNS query leaves the machine.
    let name = format!("{}.test", "a".repeat(70));
    let (status, headers, body) = get_via(s.out(), &format!("http://{name}/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
    assert_eq!(headers["x-tandem-error"], "UF");
    assert!(String::from_utf8_lossy(&body).contains("name lookup failed"), "{body:?}");
}

#[tokio::test]
async fn a_hanging_upstream_is_504_ut() {
    let s = Setup::new(|c| c.outbound.timeouts.response = Human::new(Duration::from_millis(300))).await;
    let (hang, _accepted) = misbehaving(Misbehave::Hang).await;
    let (status, headers, body) = get_via(s.out(), &format!("http://{hang}/slow")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["x-tandem-error"], "UT");
    assert!(String::from_utf8_lossy(&body).contains("within 300ms"), "{body:?}");
    let line = s.line("GET", &hang.to_string()).await;
    assert_eq!(line["response_flags"], "UT");
    assert_eq!(line["direction"], "outbound");
}

#[tokio::test]
async fn an_upstream_that_closes_is_502_uc_and_garbage_is_502_upe() {
    let s = Setup::new(|_| {}).await;
    let (closer, _a) = misbehaving(Misbehave::Close).await;
    let (status, headers, _) = get_via(s.out(), &format!("http://{closer}/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-tandem-error"], "UC");
    let (garbage, _b) = misbehaving(Misbehave::Garbage).await;
    let (status, headers, _) = get_via(s.out(), &format!("http://{garbage}/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-tandem-error"], "UPE");
}

#[tokio::test]
async fn over_max_in_flight_is_503_uo() {
    let s = Setup::new(|c| c.outbound.limits.max_in_flight = 1).await;
    let (hang, mut accepted) = misbehaving(Misbehave::Hang).await;
    let out = s.out();
    let first = tokio::spawn(async move { get_via(out, &format!("http://{hang}/held")).await });
    accepted.recv().await.expect("the first request reached the upstream");
    let (status, headers, _) = get_via(out, &format!("http://{}/", s.echo.addr)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-tandem-error"], "UO");
    first.abort();
}

#[tokio::test]
async fn malformed_proxy_requests_are_400_dpe() {
    let s = Setup::new(|_| {}).await;
    let resp =
        raw(s.out(), "GET https://127.0.0.1:1/ HTTP/1.1\r\nHost: 127.0.0.1:1\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400") && resp.contains("CONNECT"), "{resp}");
    assert!(resp.contains("x-tandem-error: DPE"), "{resp}");
    let resp = raw(s.out(), "GET /no-host HTTP/1.0\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.0 400") || resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("no destination"), "{resp}");
}

// ---------------------------------------------------------------------------------------------
// Lifecycle: outbound keeps serving while inbound drains, so the app can finish its own work.

#[tokio::test]
async fn outbound_keeps_serving_during_the_drain() {
    // An app that holds its one request until told to answer.
    let app = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app_addr = app.local_addr().expect("addr");
    let (got_tx, got_rx) = tokio::sync::oneshot::channel();
    let (answer_tx, answer_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = app.accept().await.expect("accept");
        read_head(&mut s).await;
        let _ = got_tx.send(());
        let _ = answer_rx.await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone").await;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    });
    let echo = support::echo().await;
    let proxy = support::proxy(support::config(app_addr)).await;
    let (inbound, out) = (proxy.inbound_addr, proxy.outbound_addr);
    let stop = proxy.shutdown_handle();
    let held = tokio::spawn(async move { support::get(&format!("http://{inbound}/work")).await });
    got_rx.await.expect("the inbound request reached the app");

    stop.trigger();
    let waiting = tokio::spawn(proxy.wait());
    let (status, _, body) = get_via(out, &format!("http://{}/during-drain", echo.addr)).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert!(!waiting.is_finished());

    answer_tx.send(()).expect("answer");
    let (status, _, body) = held.await.expect("join");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"done"[..]));
    waiting.await.expect("drained");
    echo.stop();
}

// ---------------------------------------------------------------------------------------------
// Configuration, through the binary.

fn check(yaml: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = temp_dir();
    let file = dir.join("tandem.yaml");
    std::fs::write(&file, yaml).expect("write config");
    let mut cmd = std::process::Command::new(support::bin());
    cmd.arg("check").arg("-c").arg(&file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run tandem check");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tandem_check_refuses_a_non_loopback_outbound_listener_without_the_opt_in() {
    let (ok, _, err) = check("outbound:\n  listen: 0.0.0.0:15001\n", &[]);
    assert!(!ok, "{err}");
    assert!(err.contains("outbound.listen: 0.0.0.0:15001 is not a loopback address"), "{err}");
    assert!(err.contains("outbound.allow_non_loopback"), "{err}");

    let (ok, _, err) = check("outbound:\n  listen: 0.0.0.0:15001\n  allow_non_loopback: true\n", &[]);
    assert!(ok, "{err}");
}

#[test]
fn tandem_check_names_each_bad_destination_pattern_by_index() {
    let yaml = "outbound:\n  allow: ['*.svc.cluster.local', '10.0.0.0/33', 'orders:99999']\n  deny: ['ex*mple.com']\n";
    let (ok, _, err) = check(yaml, &[]);
    assert!(!ok);
    assert!(err.contains("outbound.allow[1]: invalid destination pattern \"10.0.0.0/33\""), "{err}");
    assert!(err.contains("longer than 32 bits"), "{err}");
    assert!(err.contains("outbound.allow[2]:") && err.contains("not a port"), "{err}");
    assert!(err.contains("outbound.deny[0]:") && err.contains("wildcard"), "{err}");
    assert!(!err.contains("outbound.allow[0]"), "{err}");
}

#[test]
fn policy_lists_can_come_from_the_environment_as_comma_separated_text() {
    let (ok, out, err) =
        check("", &[("TANDEM_OUTBOUND_DENY", "169.254.169.254, *.internal:443"), ("TANDEM_OUTBOUND_ALLOW", "*")]);
    assert!(ok, "{err}");
    assert!(out.contains("- 169.254.169.254") && out.contains("- '*.internal:443'"), "{out}");
    let (ok, _, err) = check("", &[("TANDEM_OUTBOUND_DENY", "10.0.0.0/8, bad pattern")]);
    assert!(!ok);
    assert!(
        err.contains("outbound.deny[1] (set by TANDEM_OUTBOUND_DENY): invalid destination pattern \"bad pattern\""),
        "{err}"
    );
}
