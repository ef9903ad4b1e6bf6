//! Inbound TLS: termination with ALPN, mutual TLS with identity allow-lists, rotation from files
//! (including the symlink swap of a Kubernetes Secret volume), plaintext and slow clients, and
//! `tandem check` on certificate files.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem::config::{Config, InboundTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A CA and the certificates it signs.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("ca cert");
        Self { cert, key }
    }

    /// A leaf with DNS `localhost` plus `sans`; returns (cert PEM, key PEM, DER).
    fn leaf(&self, cn: &str, uris: &[&str], dns: &[&str]) -> (String, String, Vec<u8>) {
        let mut p = CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        for u in uris {
            p.subject_alt_names.push(SanType::URI((*u).try_into().expect("ia5")));
        }
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("leaf");
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("tandem-tls-{name}-{}-{}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&p).expect("mkdir");
        Self(p)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
    fn write(&self, f: &str, s: &str) -> PathBuf {
        let p = self.path(f);
        std::fs::write(&p, s).expect("write");
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tls_config(app: SocketAddr, cert: PathBuf, key: PathBuf, client_ca: Option<PathBuf>, allowed: &[&str]) -> Config {
    let mut c = support::config(app);
    let mut t = InboundTls::template();
    t.cert = cert;
    t.key = key;
    t.client_ca = client_ca;
    t.allowed_identities = allowed.iter().map(|s| s.to_string()).collect();
    c.inbound.tls = Some(t);
    c
}

fn roots(ca_pem: &str) -> rustls::RootCertStore {
    let mut r = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        r.add(c.expect("ca")).expect("add");
    }
    r
}

use rustls::pki_types::pem::PemObject;

fn client_config(ca_pem: &str, alpn: &[&[u8]], client: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots(ca_pem));
    let mut cfg = match client {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().expect("certs");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
            b.with_client_auth_cert(certs, key).expect("client auth")
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(cfg).connect(ServerName::try_from("localhost").expect("name"), tcp).await
}

/// One GET over an established TLS stream, with HTTP/2 if ALPN chose it. Returns (status, body).
async fn get_over(tls: Tls, path: &str) -> Result<(u16, String), String> {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = hyper_util::rt::TokioIo::new(tls);
    // An HTTP/1.1 request names its Host (hyper's connection-level client adds none).
    let req = http::Request::get(format!("https://localhost{path}"))
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .expect("req");
    let resp = if h2 {
        let (mut s, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        s.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        s.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn metric(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

#[tokio::test]
async fn terminates_tls_with_alpn_for_h1_h2_and_no_alpn() {
    let app = support::echo().await;
    let ca = Ca::new("test CA");
    let (cert, key, _) = ca.leaf("tandem", &[], &["localhost"]);
    let dir = Dir::new("alpn");
    let cfg = tls_config(app.addr, dir.write("tls.crt", &cert), dir.write("tls.key", &key), None, &[]);
    let proxy = support::proxy(cfg).await;

    for (alpn, want) in
        [(vec![&b"h2"[..]], Some(&b"h2"[..])), (vec![&b"http/1.1"[..]], Some(&b"http/1.1"[..])), (vec![], None)]
    {
        let tls = connect(proxy.inbound_addr, client_config(&ca.pem(), &alpn, None)).await.expect("handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), want);
        let version = tls.get_ref().1.protocol_version();
        assert!(matches!(version, Some(rustls::ProtocolVersion::TLSv1_3)), "{version:?}");
        let (status, body) = get_over(tls, "/hello").await.expect("request");
        assert_eq!(status, 200);
        let doc: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(doc["headers"]["x-forwarded-proto"], "https");
        assert!(doc["headers"].get("x-forwarded-client-cert").is_none(), "no client cert, no XFCC");
    }
}

#[tokio::test]
async fn mutual_tls_accepts_refuses_and_forwards_the_identity() {
    let app = support::echo().await;
    let ca = Ca::new("mesh CA");
    let other_ca = Ca::new("other CA");
    let (cert, key, _) = ca.leaf("tandem", &["spiffe://cluster.local/ns/shop/sa/backend"], &["localhost"]);
    let (fe_cert, fe_key, fe_der) = ca.leaf("frontend", &["spiffe://cluster.local/ns/shop/sa/frontend"], &[]);
    let (evil_cert, evil_key, _) = ca.leaf("evil", &["spiffe://cluster.local/ns/evil/sa/x"], &[]);
    let (stranger_cert, stranger_key, _) =
        other_ca.leaf("stranger", &["spiffe://cluster.local/ns/shop/sa/frontend"], &[]);
    let dir = Dir::new("mtls");
    let log = dir.path("access.log");
    let mut cfg = tls_config(
        app.addr,
        dir.write("tls.crt", &cert),
        dir.write("tls.key", &key),
        Some(dir.write("ca.crt", &ca.pem())),
        &["spiffe://cluster.local/ns/shop/sa/frontend"],
    );
    cfg.access_log.destination = log.display().to_string();
    let proxy = support::proxy(cfg).await;
    let metrics = proxy.telemetry();

    // Allowed identity: served, identity and XFCC reach the app, a client XFCC is replaced.
    let tls = connect(proxy.inbound_addr, client_config(&ca.pem(), &[b"http/1.1"], Some((&fe_cert, &fe_key))))
        .await
        .expect("handshake");
    let io = hyper_util::rt::TokioIo::new(tls);
    let (mut s, conn) = hyper::client::conn::http1::handshake(io).await.expect("h1");
    tokio::spawn(conn);
    let req = http::Request::get("/who")
        .header("host", "localhost")
        .header("x-forwarded-client-cert", "URI=spiffe://forged")
        .body(Empty::<Bytes>::new())
        .expect("req");
    let resp = s.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let doc: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let xfcc = doc["headers"]["x-forwarded-client-cert"].as_str().expect("xfcc present").to_owned();
    assert!(!xfcc.contains("forged"), "{xfcc}");
    assert!(xfcc.starts_with("By=spiffe://cluster.local/ns/shop/sa/backend;Hash="), "{xfcc}");
    assert!(xfcc.contains("URI=spiffe://cluster.local/ns/shop/sa/frontend"), "{xfcc}");
    let hash = ring::digest::digest(&ring::digest::SHA256, &fe_der);
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert!(xfcc.contains(&format!("Hash={hex}")), "{xfcc}");

    // No certificate, an untrusted CA, an identity outside the list: refused.
    for (name, client, reason) in [
        ("no cert", None, "no_certificate"),
        ("untrusted", Some((stranger_cert.as_str(), stranger_key.as_str())), "untrusted"),
        ("not allowed", Some((evil_cert.as_str(), evil_key.as_str())), "identity"),
    ] {
        let before = metric(
            &String::from_utf8_lossy(&metrics.metrics.render()),
            &format!("tandem_tls_handshake_errors_total{{reason=\"{reason}\"}}"),
        );
        // With TLS 1.3 the client learns of the refusal on its first read.
        let outcome = match connect(proxy.inbound_addr, client_config(&ca.pem(), &[b"http/1.1"], client)).await {
            Err(e) => Err(e.to_string()),
            Ok(tls) => get_over(tls, "/").await.map(|r| r.0),
        };
        assert!(outcome.is_err(), "{name}: expected a refusal, got {outcome:?}");
        let text = String::from_utf8_lossy(&metrics.metrics.render()).into_owned();
        let after = metric(&text, &format!("tandem_tls_handshake_errors_total{{reason=\"{reason}\"}}"));
        assert_eq!(after, before + 1, "{name}: counted under {reason}");
    }

    metrics.access_log.flush();
    let text = std::fs::read_to_string(&log).expect("log");
    let line: serde_json::Value = serde_json::from_str(text.lines().next().expect("one line")).expect("json");
    assert_eq!(line["downstream_peer_identity"], "spiffe://cluster.local/ns/shop/sa/frontend");
    assert_eq!(line["tls_version"], "TLSv1.3");
    assert_eq!(line["alpn"], "http/1.1");
}

/// Lays out certificate files the way a Kubernetes Secret volume does: `tls.crt -> ..data/tls.crt`,
/// `..data -> ..<version>`; `swap` replaces `..data` atomically.
struct SecretVolume {
    dir: Dir,
    version: u32,
}

impl SecretVolume {
    fn new(cert: &str, key: &str) -> Self {
        let dir = Dir::new("secret");
        let mut v = Self { dir, version: 0 };
        v.swap(cert, key);
        std::os::unix::fs::symlink("..data/tls.crt", v.dir.path("tls.crt")).expect("symlink");
        std::os::unix::fs::symlink("..data/tls.key", v.dir.path("tls.key")).expect("symlink");
        v
    }

    fn swap(&mut self, cert: &str, key: &str) {
        self.version += 1;
        let name = format!("..v{}", self.version);
        std::fs::create_dir_all(self.dir.path(&name)).expect("mkdir");
        std::fs::write(self.dir.path(&name).join("tls.crt"), cert).expect("write");
        std::fs::write(self.dir.path(&name).join("tls.key"), key).expect("write");
        let tmp = self.dir.path("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp).expect("symlink");
        std::fs::rename(&tmp, self.dir.path("..data")).expect("rename");
    }
}

async fn served_cert(addr: SocketAddr, ca: &str) -> Vec<u8> {
    let tls = connect(addr, client_config(ca, &[b"http/1.1"], None)).await.expect("handshake");
    tls.get_ref().1.peer_certificates().expect("certs")[0].to_vec()
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn rotation_from_a_secret_volume_keeps_old_connections_and_refuses_bad_pairs() {
    let app = support::echo().await;
    let ca = Ca::new("rotating CA");
    let (cert1, key1, der1) = ca.leaf("v1", &[], &["localhost"]);
    let (cert2, key2, der2) = ca.leaf("v2", &[], &["localhost"]);
    let (_, key3, _) = ca.leaf("v3", &[], &["localhost"]);
    let mut vol = SecretVolume::new(&cert1, &key1);
    let cfg = tls_config(app.addr, vol.dir.path("tls.crt"), vol.dir.path("tls.key"), None, &[]);
    let proxy = support::proxy(cfg).await;
    let telemetry = proxy.telemetry();
    assert_eq!(served_cert(proxy.inbound_addr, &ca.pem()).await, der1);

    // An established keep-alive connection, from before the rotation.
    let tls = connect(proxy.inbound_addr, client_config(&ca.pem(), &[b"http/1.1"], None)).await.expect("handshake");
    let (mut old, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.expect("h1");
    tokio::spawn(conn);

    vol.swap(&cert2, &key2);
    let addr = proxy.inbound_addr;
    let ca_pem = ca.pem();
    wait_for("the new certificate", || {
        let ca_pem = ca_pem.clone();
        let der2 = der2.clone();
        async move { served_cert(addr, &ca_pem).await == der2 }
    })
    .await;
    let req = http::Request::get("/still").header("host", "localhost").body(Empty::<Bytes>::new()).expect("req");
    assert_eq!(old.send_request(req).await.expect("old connection still works").status(), 200);

    // A key that does not match: refused, counted, the good pair stays in use.
    vol.swap(&cert1, &key3);
    wait_for("the refused reload to be counted", || {
        let t = telemetry.clone();
        async move {
            metric(
                &String::from_utf8_lossy(&t.metrics.render()),
                "tandem_tls_certificate_reloads_total{result=\"error\"}",
            ) >= 1
        }
    })
    .await;
    assert_eq!(served_cert(proxy.inbound_addr, &ca.pem()).await, der2);
    let text = String::from_utf8_lossy(&telemetry.metrics.render()).into_owned();
    assert!(metric(&text, "tandem_tls_certificate_expiry_timestamp_seconds") > 1_700_000_000, "{text}");
}

#[tokio::test]
async fn plaintext_on_a_tls_port_gets_a_clean_400_and_silence_times_out() {
    let app = support::echo().await;
    let ca = Ca::new("CA");
    let (cert, key, _) = ca.leaf("tandem", &[], &["localhost"]);
    let dir = Dir::new("plain");
    let mut cfg = tls_config(app.addr, dir.write("tls.crt", &cert), dir.write("tls.key", &key), None, &[]);
    if let Some(t) = cfg.inbound.tls.as_mut() {
        t.handshake_timeout = tandem::config::Human::new(Duration::from_millis(300));
    }
    let proxy = support::proxy(cfg).await;

    let answer = support::raw(proxy.inbound_addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("x-tandem-error: DPE"), "{answer}");

    // A client that connects and sends nothing is disconnected at the handshake timeout.
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("closed by tandem");
    assert_eq!(n.expect("read"), 0);
    let _ = s.write_all(b"late").await;
    let text = String::from_utf8_lossy(&proxy.telemetry().metrics.render()).into_owned();
    assert_eq!(metric(&text, "tandem_tls_handshake_errors_total{reason=\"plaintext\"}"), 1, "{text}");
    assert_eq!(metric(&text, "tandem_tls_handshake_errors_total{reason=\"timeout\"}"), 1, "{text}");
}

fn check(dir: &Path, cert: &Path, key: &Path) -> std::process::Output {
    let cfg = dir.join("tandem.yaml");
    std::fs::write(&cfg, format!("inbound:\n  tls:\n    cert: {}\n    key: {}\n", cert.display(), key.display()))
        .expect("write");
    std::process::Command::new(support::bin()).args(["check", "-c"]).arg(&cfg).output().expect("run check")
}

#[test]
fn check_loads_the_pair_reports_expiry_and_names_bad_keys() {
    let ca = Ca::new("CA");
    let (cert, key, _) = ca.leaf("tandem", &[], &["localhost"]);
    let (_, other_key, _) = ca.leaf("other", &[], &["localhost"]);
    let dir = Dir::new("check");
    let c = dir.write("tls.crt", &cert);
    let k = dir.write("tls.key", &key);
    let ok = check(&dir.0, &c, &k);
    let err = String::from_utf8_lossy(&ok.stderr).into_owned();
    assert!(ok.status.success(), "{err}");
    assert!(err.contains("tandem: inbound.tls.cert: certificate expires"), "{err}");

    let bad = check(&dir.0, &c, &dir.write("other.key", &other_key));
    let err = String::from_utf8_lossy(&bad.stderr).into_owned();
    assert_eq!(bad.status.code(), Some(1));
    assert!(err.contains("inbound.tls.key:") && err.contains("does not match"), "{err}");

    let missing = check(&dir.0, &dir.path("nope.crt"), &k);
    let err = String::from_utf8_lossy(&missing.stderr).into_owned();
    assert_eq!(missing.status.code(), Some(1));
    assert!(err.contains("inbound.tls.cert: cannot read"), "{err}");

    let mut expired = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    expired.not_before = rcgen::date_time_ymd(2001, 1, 1);
    expired.not_after = rcgen::date_time_ymd(2002, 1, 1);
    let ek = KeyPair::generate().expect("key");
    let ec = expired.self_signed(&ek).expect("cert");
    let out = check(&dir.0, &dir.write("old.crt", &ec.pem()), &dir.write("old.key", &ek.serialize_pem()));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("inbound.tls.cert:") && err.contains("expired"), "{err}");
}

/// A real client: curl with --cacert and --cert against the running binary.
#[test]
fn curl_speaks_tls_and_mtls_to_the_binary() {
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        println!("skipping: curl is not installed");
        return;
    }
    let ca = Ca::new("CA");
    let (cert, key, _) = ca.leaf("tandem", &[], &["localhost"]);
    let (cc, ck, _) = ca.leaf("client", &["spiffe://cluster.local/ns/a/sa/b"], &[]);
    let dir = Dir::new("curl");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let app = rt.block_on(support::echo());
    let port = |_: ()| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let (inb, adm) = (port(()), port(()));
    let cfg = dir.path("tandem.yaml");
    std::fs::write(
        &cfg,
        format!(
            "inbound:\n  listen: 127.0.0.1:{inb}\n  app: {}\n  tls:\n    cert: {}\n    key: {}\n    client_ca: {}\nadmin:\n  listen: 127.0.0.1:{adm}\noutbound:\n  listen: 127.0.0.1:0\naccess_log:\n  destination: off\n",
            app.addr,
            dir.write("tls.crt", &cert).display(),
            dir.write("tls.key", &key).display(),
            dir.write("ca.crt", &ca.pem()).display(),
        ),
    )
    .expect("write");
    let mut child = std::process::Command::new(support::bin())
        .args(["run", "-c"])
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let ready = (0..200).any(|_| {
        let ok = std::process::Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{adm}/ready")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            std::thread::sleep(Duration::from_millis(50));
        }
        ok
    });
    let url = format!("https://localhost:{inb}/x");
    let resolve = format!("localhost:{inb}:127.0.0.1");
    let ca_path = dir.path("ca.crt");
    let curl = |extra: &[&str]| {
        let mut c = std::process::Command::new("curl");
        c.args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "--resolve", &resolve, "--cacert"])
            .arg(&ca_path)
            .args(extra)
            .arg(&url);
        c.output().expect("curl")
    };
    let with_cert = curl(&[
        "--cert",
        dir.write("c.crt", &cc).to_str().expect("path"),
        "--key",
        dir.write("c.key", &ck).to_str().expect("path"),
    ]);
    let without = curl(&[]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "tandem did not become ready");
    let out = String::from_utf8_lossy(&with_cert.stdout).into_owned();
    assert!(out.starts_with("200 "), "with a client certificate: {out}");
    assert!(!without.status.success() || !String::from_utf8_lossy(&without.stdout).starts_with("200"));
}
