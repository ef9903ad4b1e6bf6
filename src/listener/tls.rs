//! TLS on the inbound listener: termination and mutual TLS with rustls, peer identities (SPIFFE URI
//! or DNS SANs) checked against an allow-list during the handshake, and certificate rotation from
//! files without a restart.
//!
//! Rotation: a watcher stats the certificate, key and CA files every [`WATCH_INTERVAL`] (following
//! symlinks, so the `..data` swap Kubernetes does for mounted Secrets is seen). When anything
//! changed, the whole set is loaded and checked (readable, key matches certificate, not expired);
//! a good set replaces the server configuration used by *new* handshakes, established connections
//! are not touched; a bad set is refused, the old one kept, and the error logged and counted.

use crate::base::conn::ConnTls;
use crate::config::InboundTls;
use arc_swap::ArcSwap;
use http::HeaderValue;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// How often the certificate files are checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// A TLS problem, named by the configuration key it comes from.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsError {
    pub key: &'static str,
    pub message: String,
}

fn err(key: &'static str, message: impl Into<String>) -> TlsError {
    TlsError { key, message: message.into() }
}

/// What a good certificate set looks like, for `tandem check` and the metrics.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The leaf certificate's `notAfter`, seconds since the epoch.
    pub not_after: i64,
    /// The leaf's subject and SANs, for the log.
    pub subject: String,
    pub identities: Vec<String>,
    pub mutual: bool,
}

impl Summary {
    /// `notAfter` as RFC 3339, and how far away it is.
    pub fn expiry_text(&self) -> String {
        let mut out = Vec::new();
        crate::telemetry::access_log::rfc3339(UNIX_EPOCH + Duration::from_secs(self.not_after.max(0) as u64), &mut out);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let days = (self.not_after - now) / 86_400;
        format!("{} (in {days} days)", String::from_utf8_lossy(&out))
    }
}

/// Everything loaded from the files, ready to serve.
struct Loaded {
    config: Arc<ServerConfig>,
    summary: Summary,
    /// `By=` for `x-forwarded-client-cert`: our own URI SAN, if any.
    own_uri: Option<String>,
}

/// Loads and checks the certificate set; every failure names its key.
pub fn check_files(tls: &InboundTls) -> Result<Summary, TlsError> {
    load(tls).map(|l| l.summary)
}

/// [`check_files`] as configuration validation takes it ([`crate::config::FileCheck`]).
pub fn check_config_files(tls: &InboundTls) -> Result<(), crate::config::Problem> {
    check_files(tls).map(|_| ()).map_err(|e| crate::config::Problem::new(e.key, e.message))
}

fn load(tls: &InboundTls) -> Result<Loaded, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| err("inbound.tls.cert", format!("cannot read {}: {e}", tls.cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| err("inbound.tls.cert", format!("{} is not a PEM certificate chain: {e}", tls.cert.display())))?;
    let Some(leaf) = certs.first() else {
        return Err(err("inbound.tls.cert", format!("{} holds no certificate", tls.cert.display())));
    };
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| {
        err("inbound.tls.key", format!("cannot read a PKCS#8, PKCS#1 or SEC1 key from {}: {e}", tls.key.display()))
    })?;
    let info = parse_cert(leaf).map_err(|e| err("inbound.tls.cert", format!("{}: {e}", tls.cert.display())))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    if info.not_after < now {
        return Err(err("inbound.tls.cert", format!("{} expired", tls.cert.display())));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| err("inbound.tls.key", format!("{}: unsupported key: {e}", tls.key.display())))?;
    let certified = rustls::sign::CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| {
        err(
            "inbound.tls.key",
            format!("{} does not match the certificate in {}: {e}", tls.key.display(), tls.cert.display()),
        )
    })?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| err("inbound.tls", e.to_string()))?;
    let builder = match &tls.client_ca {
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_path)
                .map_err(|e| err("inbound.tls.client_ca", format!("cannot read {}: {e}", ca_path.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| err("inbound.tls.client_ca", format!("{}: {e}", ca_path.display())))?;
            if cas.is_empty() {
                return Err(err("inbound.tls.client_ca", format!("{} holds no certificate", ca_path.display())));
            }
            for ca in cas {
                roots.add(ca).map_err(|e| err("inbound.tls.client_ca", format!("{}: {e}", ca_path.display())))?;
            }
            let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| err("inbound.tls.client_ca", e.to_string()))?;
            builder.with_client_cert_verifier(Arc::new(IdentityVerifier {
                inner,
                allowed: tls.allowed_identities.clone(),
            }))
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(OneCert(Arc::new(certified))));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let own_uri = info.uris.first().cloned();
    Ok(Loaded {
        config: Arc::new(config),
        summary: Summary {
            not_after: info.not_after,
            subject: info.subject,
            identities: info.uris.into_iter().chain(info.dns).collect(),
            mutual: tls.client_ca.is_some(),
        },
        own_uri,
    })
}

/// Serves the one certificate set of this configuration, whatever the SNI.
#[derive(Debug)]
struct OneCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// What tandem reads out of a certificate.
#[derive(Debug, Clone, Default)]
pub struct CertInfo {
    pub subject: String,
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub not_after: i64,
}

/// Parses a DER certificate's subject, SANs and expiry.
pub fn parse_cert(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("cannot parse certificate: {e}"))?;
    let mut info = CertInfo {
        subject: cert.subject().to_string(),
        not_after: cert.validity().not_after.timestamp(),
        ..CertInfo::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::URI(u) => info.uris.push((*u).to_owned()),
                x509_parser::extensions::GeneralName::DNSName(d) => info.dns.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    Ok(info)
}

/// Whether `identity` matches an allow-list entry: exact, or a prefix ending in `*`.
pub fn identity_allowed(allowed: &[String], identities: &[String]) -> bool {
    allowed.is_empty()
        || allowed.iter().any(|pattern| {
            identities.iter().any(|id| match pattern.strip_suffix('*') {
                Some(prefix) => id.starts_with(prefix),
                None => id == pattern,
            })
        })
}

/// The client-certificate verifier: the CA chain first (webpki), then the identity allow-list, so a
/// peer outside the list is refused during the handshake.
#[derive(Debug)]
struct IdentityVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for IdentityVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if self.allowed.is_empty() {
            return Ok(verified);
        }
        let info = parse_cert(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        let ids: Vec<String> = info.uris.into_iter().chain(info.dns).collect();
        if identity_allowed(&self.allowed, &ids) {
            Ok(verified)
        } else {
            tracing::debug!(identities = ?ids, "client identity not in inbound.tls.allowed_identities");
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The TLS metrics, on the registry passed in.
#[derive(Clone)]
pub struct TlsMetrics {
    handshake_errors: IntCounterVec,
    expiry: IntGauge,
    reloads: IntCounterVec,
}

impl TlsMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let handshake_errors = IntCounterVec::new(
            Opts::new("tandem_tls_handshake_errors_total", "Inbound TLS handshakes that failed, by reason."),
            &["reason"],
        )?;
        let expiry = IntGauge::new(
            "tandem_tls_certificate_expiry_timestamp_seconds",
            "notAfter of the inbound certificate in use, as a Unix timestamp.",
        )?;
        let reloads = IntCounterVec::new(
            Opts::new("tandem_tls_certificate_reloads_total", "Certificate reloads from disk, by result."),
            &["result"],
        )?;
        registry.register(Box::new(handshake_errors.clone()))?;
        registry.register(Box::new(expiry.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        for r in ["timeout", "plaintext", "no_certificate", "untrusted", "identity", "protocol", "io"] {
            handshake_errors.with_label_values(&[r]);
        }
        for r in ["ok", "error"] {
            reloads.with_label_values(&[r]);
        }
        Ok(Self { handshake_errors, expiry, reloads })
    }
}

/// A certificate set read for a reload, not yet in force.
pub struct Prepared {
    settings: InboundTls,
    loaded: Loaded,
}

/// The inbound TLS terminator: current configuration, metrics, and the file watcher's state.
pub struct TlsServer {
    /// `inbound.tls`; a reload replaces it with the certificate set it names.
    settings: ArcSwap<InboundTls>,
    current: ArcSwap<ServerConfig>,
    own_uri: ArcSwap<Option<String>>,
    metrics: TlsMetrics,
    stamps: Mutex<Vec<Stamp>>,
}

/// A file's identity as of the last load: changes in any of these mean "reload".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    path: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Stamp {
    // `metadata` follows symlinks: the Secret volume's `..data` swap changes the target's inode.
    match std::fs::metadata(path) {
        Ok(m) => Stamp {
            path: path.to_owned(),
            modified: m.modified().ok(),
            len: m.len(),
            #[cfg(unix)]
            ino: std::os::unix::fs::MetadataExt::ino(&m),
            #[cfg(not(unix))]
            ino: 0,
        },
        Err(_) => Stamp { path: path.to_owned(), modified: None, len: 0, ino: 0 },
    }
}

impl TlsServer {
    /// Loads the certificate set (failing with the key of the problem) and registers the metrics.
    pub fn new(settings: InboundTls, registry: &Registry) -> Result<Arc<Self>, TlsError> {
        let metrics = TlsMetrics::new(registry).map_err(|e| err("inbound.tls", format!("metrics: {e}")))?;
        let loaded = load(&settings)?;
        metrics.expiry.set(loaded.summary.not_after);
        tracing::info!(
            subject = %loaded.summary.subject,
            expires = %loaded.summary.expiry_text(),
            mutual = loaded.summary.mutual,
            "inbound TLS certificate loaded"
        );
        let stamps = settings_stamps(&settings);
        Ok(Arc::new(Self {
            settings: ArcSwap::from_pointee(settings),
            current: ArcSwap::new(loaded.config),
            own_uri: ArcSwap::from_pointee(loaded.own_uri),
            metrics,
            stamps: Mutex::new(stamps),
        }))
    }

    fn handshake_timeout(&self) -> Duration {
        self.settings.load().handshake_timeout.value
    }

    /// Reads and checks the files a reloaded `inbound.tls` names, changing nothing yet
    /// ([`TlsServer::commit`] does), so a set that does not load leaves TLS as it was.
    pub fn prepare(settings: InboundTls) -> Result<Prepared, TlsError> {
        let loaded = load(&settings)?;
        Ok(Prepared { settings, loaded })
    }

    /// Puts a prepared set in force: new handshakes use it; connections already up keep theirs.
    pub fn commit(&self, prepared: Prepared) {
        let Prepared { settings, loaded } = prepared;
        let stamps = settings_stamps(&settings);
        self.settings.store(Arc::new(settings));
        self.install(loaded);
        if let Ok(mut last) = self.stamps.lock() {
            *last = stamps;
        }
    }

    fn install(&self, loaded: Loaded) {
        self.current.store(loaded.config);
        self.own_uri.store(Arc::new(loaded.own_uri));
        self.metrics.expiry.set(loaded.summary.not_after);
        self.metrics.reloads.with_label_values(&["ok"]).inc();
        tracing::info!(
            subject = %loaded.summary.subject,
            expires = %loaded.summary.expiry_text(),
            "inbound TLS certificate reloaded; new handshakes use it"
        );
    }

    /// Checks the files once; reloads when they changed. Returns whether a new set is in use.
    pub fn poll_files(&self) -> bool {
        let settings = self.settings.load_full();
        let now = settings_stamps(&settings);
        {
            let Ok(mut last) = self.stamps.lock() else { return false };
            if *last == now {
                return false;
            }
            *last = now;
        }
        match load(&settings) {
            Ok(loaded) => {
                self.install(loaded);
                true
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["error"]).inc();
                tracing::error!(error = %e, "new inbound TLS certificate refused; keeping the one in use");
                false
            }
        }
    }

    /// Watches the files until the task is dropped.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let me = self.clone();
            // File reads and PEM parsing are blocking work: keep them off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || me.poll_files()).await;
        }
    }

    /// Accepts one TLS connection: refuses plaintext cleanly, bounds the handshake in time, counts
    /// failures by reason. `wrap` turns the TCP stream into the transport TLS runs over.
    pub async fn accept<IO>(
        &self,
        mut raw: TcpStream,
        wrap: impl FnOnce(TcpStream) -> IO,
    ) -> Option<(TlsStream<IO>, ConnTls)>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let deadline = self.handshake_timeout();
        // A client speaking plain HTTP to a TLS port gets a one-line answer instead of a hang.
        let mut first = [0u8; 1];
        match tokio::time::timeout(deadline, raw.peek(&mut first)).await {
            Err(_) => {
                self.count("timeout");
                return None;
            }
            Ok(Err(_)) | Ok(Ok(0)) => {
                self.count("io");
                return None;
            }
            Ok(Ok(_)) => {}
        }
        if first[0] != 0x16 {
            self.count("plaintext");
            let body = "plain HTTP sent to a TLS port (DPE): use https\n";
            let resp = format!(
                "HTTP/1.1 400 Bad Request\r\nx-tandem-error: DPE\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), raw.write_all(resp.as_bytes())).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), raw.shutdown()).await;
            return None;
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current.load_full());
        let tls = match tokio::time::timeout(deadline, acceptor.accept(wrap(raw))).await {
            Err(_) => {
                self.count("timeout");
                return None;
            }
            Ok(Err(e)) => {
                let reason = classify(&e);
                tracing::debug!(error = %e, reason, "TLS handshake failed");
                self.count(reason);
                return None;
            }
            Ok(Ok(s)) => s,
        };
        let info = self.conn_info(tls.get_ref().1);
        Some((tls, info))
    }

    fn count(&self, reason: &str) {
        self.metrics.handshake_errors.with_label_values(&[reason]).inc();
    }

    fn conn_info(&self, conn: &rustls::ServerConnection) -> ConnTls {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        let alpn = match conn.alpn_protocol() {
            Some(b"h2") => Some("h2"),
            Some(b"http/1.1") => Some("http/1.1"),
            _ => None,
        };
        let (peer_identity, xfcc) = match conn.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => match parse_cert(cert) {
                Ok(info) => {
                    let id = info.uris.first().or(info.dns.first()).cloned().unwrap_or_else(|| info.subject.clone());
                    let own = self.own_uri.load();
                    (Some(id), xfcc_value(own.as_ref().as_deref(), cert, &info))
                }
                Err(_) => (None, None),
            },
            None => (None, None),
        };
        ConnTls { version, alpn, peer_identity, xfcc }
    }
}

fn settings_stamps(s: &InboundTls) -> Vec<Stamp> {
    let mut v = vec![stamp(&s.cert), stamp(&s.key)];
    if let Some(ca) = &s.client_ca {
        v.push(stamp(ca));
    }
    v
}

fn classify(e: &std::io::Error) -> &'static str {
    let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return "io";
    };
    match inner {
        rustls::Error::NoCertificatesPresented => "no_certificate",
        rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure) => "identity",
        rustls::Error::InvalidCertificate(_) => "untrusted",
        _ => "protocol",
    }
}

/// `x-forwarded-client-cert` as Envoy writes it: `By=…;Hash=…;Subject="…";URI=…;DNS=…`.
pub fn xfcc_value(own_uri: Option<&str>, cert: &[u8], info: &CertInfo) -> Option<HeaderValue> {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert);
    let mut v = String::with_capacity(256);
    if let Some(by) = own_uri {
        v.push_str("By=");
        v.push_str(by);
        v.push(';');
    }
    v.push_str("Hash=");
    for b in digest.as_ref() {
        v.push_str(&format!("{b:02x}"));
    }
    v.push_str(";Subject=\"");
    v.push_str(&info.subject.replace('"', "\\\""));
    v.push('"');
    for u in &info.uris {
        v.push_str(";URI=");
        v.push_str(u);
    }
    for d in &info.dns {
        v.push_str(";DNS=");
        v.push_str(d);
    }
    HeaderValue::from_str(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_exactly_or_by_prefix() {
        let ids = vec!["spiffe://cluster.local/ns/shop/sa/frontend".to_owned()];
        assert!(identity_allowed(&[], &ids));
        assert!(identity_allowed(&["spiffe://cluster.local/ns/shop/sa/frontend".into()], &ids));
        assert!(identity_allowed(&["spiffe://cluster.local/ns/shop/*".into()], &ids));
        assert!(!identity_allowed(&["spiffe://cluster.local/ns/shop/sa/backend".into()], &ids));
        assert!(!identity_allowed(&["spiffe://cluster.local/ns/other/*".into()], &ids));
    }
}
