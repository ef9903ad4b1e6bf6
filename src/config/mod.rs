//! Configuration: the serde structs, their production defaults, loading (file, then `TANDEM_*`
//! environment, then flags; see [`load`]), and validation that names the key of every problem.
//!
//! The rules every source shares: a duration of 0 turns the two `idle` timeouts off and is refused
//! for every other duration (no timeout fires at once); a list takes a YAML sequence, or one
//! comma-separated string (what a variable or a flag can carry); `inbound.app` takes an IP address
//! or a host name resolved at start, the listen addresses an IP address.

pub mod load;
pub mod policy;

pub use load::{env_name, Loaded, Sources};

use crate::config::policy::Rule;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The whole configuration of `tandem run`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub inbound: Inbound,
    pub outbound: Outbound,
    pub admin: Admin,
    pub access_log: AccessLog,
    pub log: Log,
    pub shutdown: Shutdown,
    pub runtime: Runtime,
    pub readiness: Readiness,
    pub transparent: Transparent,
}

/// The inbound listener: clients → tandem → the app on localhost.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Inbound {
    /// Address the inbound listener binds.
    pub listen: Human<SocketAddr>,
    /// Address of the app (usually on loopback).
    pub app: Human<SocketAddr>,
    /// Protocol spoken to the app: `http1` or `http2` (h2c prior knowledge, for gRPC apps).
    pub app_protocol: AppProtocol,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// TLS on the inbound listener (absent: plaintext).
    pub tls: Option<InboundTls>,
}

/// TLS termination (and optionally mutual TLS) on the inbound listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 or SEC1.
    pub key: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate signed by it (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Peer identities allowed (URI SANs such as `spiffe://cluster.local/ns/shop/sa/frontend`, or
    /// DNS SANs; a trailing `*` matches a prefix). Empty: any certificate the CA signed.
    #[serde(default)]
    pub allowed_identities: Vec<String>,
    /// A client that has not completed the handshake in this time is disconnected.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Human<Duration>,
}

fn default_handshake_timeout() -> Human<Duration> {
    Human::new(Duration::from_secs(10))
}

impl InboundTls {
    /// A template with every key, for environment-variable names and the reference.
    pub fn template() -> Self {
        Self {
            cert: PathBuf::from("/etc/tandem/tls/tls.crt"),
            key: PathBuf::from("/etc/tandem/tls/tls.key"),
            client_ca: Some(PathBuf::from("/etc/tandem/tls/ca.crt")),
            allowed_identities: Vec::new(),
            handshake_timeout: default_handshake_timeout(),
        }
    }
}

/// Timeouts of one listener and its upstream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Time a client has to send a complete request head.
    pub header_read: Human<Duration>,
    /// Time to establish a TCP connection to the upstream.
    pub connect: Human<Duration>,
    /// Time from sending the request to receiving the upstream's response head.
    pub response: Human<Duration>,
    /// A downstream connection with no traffic and no request in flight for this long is closed.
    pub idle: Human<Duration>,
    /// Pooled upstream connections idle for this long are closed.
    pub upstream_idle: Human<Duration>,
}

/// Limits of one listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head (request line plus headers) accepted; larger gets 431.
    pub max_header_bytes: Human<ByteSize>,
    /// Most request header fields accepted; more gets 431.
    pub max_headers: usize,
    /// Most concurrent downstream connections; the excess are closed at once and counted.
    pub max_connections: usize,
    /// Most requests in flight; the excess get 503 `UO` at once.
    pub max_in_flight: usize,
    /// Most idle pooled connections kept per upstream.
    pub max_idle_per_upstream: usize,
}

/// Protocol spoken to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    Http1,
    Http2,
}

/// The outbound listener: the app's own calls → tandem → other services.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outbound {
    /// Address the outbound listener binds (loopback by default: it is a forward proxy).
    pub listen: Human<SocketAddr>,
    /// Allow a non-loopback `listen` address (an open forward proxy is a hole).
    pub allow_non_loopback: bool,
    /// Destinations the app may reach; empty allows every destination not denied. Patterns are
    /// `HOST[:PORTS]` (see [`crate::config::policy`]); a YAML list, or one comma-separated string (for
    /// `TANDEM_OUTBOUND_ALLOW`).
    pub allow: Vec<Human<Rule>>,
    /// Destinations the app may never reach; a match here wins over `allow`.
    pub deny: Vec<Human<Rule>>,
    pub timeouts: Timeouts,
    pub limits: Limits,
}

/// The admin listener: `/live`, `/ready`, `/metrics` and the loopback-only endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    pub listen: Human<SocketAddr>,
}

/// The per-request access log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLog {
    /// `stdout`, `off`, or a file path.
    pub destination: String,
    /// `json` (one object per line) or `text` (Envoy-like one-line format).
    pub format: AccessLogFormat,
    /// A file destination is rotated when it reaches this size.
    pub max_size: Human<ByteSize>,
    /// Rotated files kept (`access.log.1` … `access.log.N`).
    pub max_files: usize,
    /// Lines queued for the writer before new ones are dropped (and counted).
    pub queue: usize,
}

/// Where access-log lines go: the one reading of `access_log.destination`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Off,
    Stdout,
    File(PathBuf),
}

impl Destination {
    /// `off` (or empty), `stdout` (or `-`), anything else is a file path.
    pub fn parse(s: &str) -> Self {
        match s.trim() {
            "off" | "" => Destination::Off,
            "stdout" | "-" => Destination::Stdout,
            p => Destination::File(PathBuf::from(p)),
        }
    }
}

/// Access log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    Json,
    Text,
}

/// tandem's own diagnostics (stderr).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A `tracing` filter: `info`, `debug`, `tandem=debug,hyper=info`, …
    pub level: String,
    pub format: LogFormat,
}

/// Diagnostics format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

/// Stopping.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    /// After a stop begins, in-flight requests get this long to finish.
    pub drain_timeout: Human<Duration>,
}

/// Connections redirected to tandem by iptables (transparent mode): how their protocol is found.
/// A connection that was not redirected is never looked at.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Transparent {
    /// Original destination ports passed through as TCP at once, without waiting for the first
    /// bytes: server-first protocols (SMTP, MySQL, PostgreSQL, Redis, ...). Linkerd's list.
    pub opaque_ports: Vec<Human<Port>>,
    /// How long a redirected connection may stay silent before it is passed through as TCP
    /// (a server-first protocol on a port not in `opaque_ports`).
    pub detect_timeout: Human<Duration>,
}

impl Transparent {
    /// Whether connections to `port` skip detection.
    pub fn is_opaque(&self, port: u16) -> bool {
        self.opaque_ports.iter().any(|p| p.value.0 == port)
    }
}

/// The async runtime.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// Worker threads; 0 means "follow the container's CPU limit".
    pub workers: usize,
}

/// How tandem decides that the app is ready (`/ready/app`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Readiness {
    /// `tcp`, `http:/path`, `file:/path` or `none`.
    pub app: String,
}

impl Default for Inbound {
    fn default() -> Self {
        Self {
            listen: Human::new(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 15006))),
            app: Human::new(SocketAddr::from(([127, 0, 0, 1], 8080))),
            app_protocol: AppProtocol::Http1,
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            tls: None,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header_read: Human::new(Duration::from_secs(10)),
            connect: Human::new(Duration::from_secs(1)),
            response: Human::new(Duration::from_secs(15)),
            idle: Human::new(Duration::from_secs(60)),
            upstream_idle: Human::new(Duration::from_secs(30)),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: Human::new(ByteSize(64 * 1024)),
            max_headers: 100,
            max_connections: 10_000,
            max_in_flight: 10_000,
            max_idle_per_upstream: 256,
        }
    }
}

impl Default for Outbound {
    fn default() -> Self {
        Self {
            listen: Human::new(SocketAddr::from(([127, 0, 0, 1], 15001))),
            allow_non_loopback: false,
            allow: Vec::new(),
            deny: Vec::new(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
        }
    }
}

impl Default for Admin {
    fn default() -> Self {
        Self { listen: Human::new(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 15020))) }
    }
}

impl Default for AccessLog {
    fn default() -> Self {
        Self {
            destination: "stdout".to_owned(),
            format: AccessLogFormat::Json,
            max_size: Human::new(ByteSize(100 * 1024 * 1024)),
            max_files: 5,
            queue: 65_536,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Self { level: "info".to_owned(), format: LogFormat::Plain }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self { drain_timeout: Human::new(Duration::from_secs(20)) }
    }
}

impl Default for Transparent {
    fn default() -> Self {
        Self {
            opaque_ports: [25, 587, 3306, 4444, 5432, 6379, 9300, 11211].map(|p| Human::new(Port(p))).into(),
            detect_timeout: Human::new(Duration::from_millis(500)),
        }
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self { app: "tcp".to_owned() }
    }
}

/// One configuration problem, named by its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
    /// The variable (`TANDEM_...`) or "a flag" that set the key, when not the file.
    pub source: Option<String>,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into(), source: None }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{} (set by {source}): {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Every problem found while loading a configuration.
#[derive(Debug, Clone)]
pub struct Problems(pub Vec<Problem>);

/// Checks the files an `inbound.tls` section names (see [`Config::load_checking`]).
pub type FileCheck = fn(&InboundTls) -> Result<(), Problem>;

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

fn problem(key: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem::new(key, message)
}

impl Config {
    /// Checks every value, and with `files` the TLS files; returns all problems, each named by
    /// its key path.
    pub fn validate(&self, files: FileCheck) -> Result<(), Problems> {
        let mut p = Vec::new();
        self.inbound.listen.check("inbound.listen", &mut p);
        self.inbound.app.check("inbound.app", &mut p);
        self.inbound.timeouts.check("inbound.timeouts", &mut p);
        self.inbound.limits.check("inbound.limits", &mut p);
        self.outbound.listen.check("outbound.listen", &mut p);
        self.outbound.timeouts.check("outbound.timeouts", &mut p);
        self.outbound.limits.check("outbound.limits", &mut p);
        check_patterns("outbound.allow", &self.outbound.allow, &mut p);
        check_patterns("outbound.deny", &self.outbound.deny, &mut p);
        self.admin.listen.check("admin.listen", &mut p);
        if let Some(tls) = &self.inbound.tls {
            tls.handshake_timeout.check_above_zero("inbound.tls.handshake_timeout", &mut p);
            if !tls.allowed_identities.is_empty() && tls.client_ca.is_none() {
                p.push(problem(
                    "inbound.tls.allowed_identities",
                    "needs inbound.tls.client_ca: identities come from client certificates",
                ));
            }
            if let Err(e) = files(tls) {
                p.push(e);
            }
        }
        self.access_log.max_size.check("access_log.max_size", &mut p);
        self.shutdown.drain_timeout.check_above_zero("shutdown.drain_timeout", &mut p);
        for (i, port) in self.transparent.opaque_ports.iter().enumerate() {
            port.check(&format!("transparent.opaque_ports[{i}]"), &mut p);
        }
        self.transparent.detect_timeout.check_above_zero("transparent.detect_timeout", &mut p);
        if self.transparent.detect_timeout.is_valid() && self.transparent.detect_timeout.value > MAX_DETECT_TIMEOUT {
            p.push(problem(
                "transparent.detect_timeout",
                format!(
                    "at most {}: every connection of a server-first protocol waits this long before it is passed through",
                    render_duration(MAX_DETECT_TIMEOUT)
                ),
            ));
        }

        if self.outbound.listen.is_valid()
            && !self.outbound.listen.value.ip().is_loopback()
            && !self.outbound.allow_non_loopback
        {
            p.push(problem(
                "outbound.listen",
                format!(
                    "{} is not a loopback address; an open forward proxy is a hole \
                     (set outbound.allow_non_loopback: true to allow it)",
                    self.outbound.listen.value
                ),
            ));
        }
        if self.access_log.destination.trim().is_empty() {
            p.push(problem("access_log.destination", "must be stdout, off, or a file path"));
        }
        if self.access_log.max_files == 0 {
            p.push(problem("access_log.max_files", "must be at least 1"));
        }
        if self.access_log.queue == 0 {
            p.push(problem("access_log.queue", "must be at least 1"));
        }
        if self.access_log.max_size.is_valid() && self.access_log.max_size.value.0 < 4096 {
            p.push(problem("access_log.max_size", "must be at least 4KiB"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            p.push(problem("log.level", format!("invalid filter {:?}: {e}", self.log.level)));
        }
        if self.runtime.workers > 1024 {
            p.push(problem("runtime.workers", "must be at most 1024 (0 follows the CPU limit)"));
        }
        if let Err(e) = AppCheck::parse(&self.readiness.app) {
            p.push(problem("readiness.app", e));
        }
        let listeners = [
            ("inbound.listen", &self.inbound.listen),
            ("outbound.listen", &self.outbound.listen),
            ("admin.listen", &self.admin.listen),
        ];
        for (i, (ka, a)) in listeners.iter().enumerate() {
            for (kb, b) in listeners.iter().skip(i + 1) {
                if a.is_valid() && b.is_valid() && a.value == b.value && a.value.port() != 0 {
                    p.push(problem(*kb, format!("{} is also {ka}", b.value)));
                }
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(Problems(p))
        }
    }

    /// The effective configuration as YAML (what `tandem check` and `GET /config` print).
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

impl Timeouts {
    fn check(&self, prefix: &str, p: &mut Vec<Problem>) {
        self.header_read.check_above_zero(&format!("{prefix}.header_read"), p);
        self.connect.check_above_zero(&format!("{prefix}.connect"), p);
        self.response.check_above_zero(&format!("{prefix}.response"), p);
        // The one duration 0 turns off: a connection that moves nothing is never closed for it.
        self.idle.check(&format!("{prefix}.idle"), p);
        self.upstream_idle.check_above_zero(&format!("{prefix}.upstream_idle"), p);
    }
}

impl Limits {
    fn check(&self, prefix: &str, p: &mut Vec<Problem>) {
        self.max_header_bytes.check(&format!("{prefix}.max_header_bytes"), p);
        if self.max_header_bytes.is_valid() && self.max_header_bytes.value.0 < 1024 {
            p.push(problem(format!("{prefix}.max_header_bytes"), "must be at least 1KiB"));
        }
        for (name, v) in [
            ("max_headers", self.max_headers),
            ("max_connections", self.max_connections),
            ("max_in_flight", self.max_in_flight),
        ] {
            if v == 0 {
                p.push(problem(format!("{prefix}.{name}"), "must be at least 1"));
            }
        }
    }
}

/// Reports every destination pattern that did not parse, by its index (`outbound.allow[2]`).
fn check_patterns(key: &str, list: &[Human<Rule>], p: &mut Vec<Problem>) {
    for (i, h) in list.iter().enumerate() {
        if let Some(raw) = &h.invalid {
            let why = raw.parse::<Rule>().err().unwrap_or_else(|| "cannot parse".to_owned());
            p.push(problem(format!("{key}[{i}]"), format!("invalid destination pattern {raw:?}: {why}")));
        }
    }
}

/// A value written in human units in the file (`250ms`, `64KiB`, `0.0.0.0:15006`). A value that
/// does not parse is kept as written and reported by [`Config::validate`] under its key.
#[derive(Clone, PartialEq, Eq)]
pub struct Human<T> {
    pub value: T,
    invalid: Option<String>,
}

impl<T> Human<T> {
    pub fn new(value: T) -> Self {
        Self { value, invalid: None }
    }
    pub fn is_valid(&self) -> bool {
        self.invalid.is_none()
    }
}

impl<T: HumanUnit> Human<T> {
    fn check(&self, key: &str, p: &mut Vec<Problem>) {
        if let Some(raw) = &self.invalid {
            match T::hint(raw) {
                Some(hint) => p.push(problem(key, format!("invalid {} {raw:?}: {hint}", T::KIND))),
                None => p.push(problem(key, format!("invalid {} {raw:?}", T::KIND))),
            }
        }
    }
}

impl Human<Duration> {
    /// [`Human::check`], and 0 refused: only the `idle` timeouts can be turned off.
    fn check_above_zero(&self, key: &str, p: &mut Vec<Problem>) {
        self.check(key, p);
        if self.is_valid() && self.value.is_zero() {
            p.push(problem(key, "must be greater than 0 (0 turns off only the idle timeouts)"));
        }
    }
}

impl<T> std::ops::Deref for Human<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: HumanUnit> fmt::Debug for Human<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.invalid {
            Some(raw) => write!(f, "invalid({raw:?})"),
            None => f.write_str(&self.value.render()),
        }
    }
}

/// A type written in human units.
pub trait HumanUnit: Sized {
    /// The value held while the written one is invalid (never used: validation fails first).
    fn placeholder() -> Self;
    /// What it is called in messages: "duration", "size", "address".
    const KIND: &'static str;
    fn parse_human(s: &str) -> Option<Self>;
    fn render(&self) -> String;
    /// What to say after "invalid KIND "raw"" when there is more to say.
    fn hint(_raw: &str) -> Option<String> {
        None
    }
}

impl<T: HumanUnit> Serialize for Human<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.invalid {
            Some(raw) => s.serialize_str(raw),
            None => s.serialize_str(&self.value.render()),
        }
    }
}

impl<'de, T: HumanUnit> Deserialize<'de> for Human<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<T: HumanUnit> de::Visitor<'_> for V<T> {
            type Value = Human<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a {}", T::KIND)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Human<T>, E> {
                Ok(match T::parse_human(s) {
                    Some(value) => Human::new(value),
                    None => Human { value: T::placeholder(), invalid: Some(s.to_owned()) },
                })
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Human<T>, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Human<T>, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Human<T>, E> {
                self.visit_str(&n.to_string())
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl HumanUnit for Duration {
    const KIND: &'static str = "duration";
    fn placeholder() -> Self {
        Duration::ZERO
    }
    fn parse_human(s: &str) -> Option<Self> {
        parse_duration(s)
    }
    fn render(&self) -> String {
        render_duration(*self)
    }
}

impl HumanUnit for SocketAddr {
    const KIND: &'static str = "address";
    fn placeholder() -> Self {
        SocketAddr::from(([0, 0, 0, 0], 0))
    }
    fn parse_human(s: &str) -> Option<Self> {
        let s = s.trim();
        if let Ok(a) = SocketAddr::from_str(s) {
            return Some(a);
        }
        // `:8080` means every IPv4 interface, as in Go and Envoy.
        let port = s.strip_prefix(':')?.parse::<u16>().ok()?;
        Some(SocketAddr::from(([0, 0, 0, 0], port)))
    }
    fn render(&self) -> String {
        self.to_string()
    }
    fn hint(raw: &str) -> Option<String> {
        // A listen address is bound, not resolved (`inbound.app` is resolved before this).
        let (host, port) = raw.trim().rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        (!host.is_empty() && host.parse::<std::net::IpAddr>().is_err())
            .then(|| format!("a listen address needs an IP address and a port, such as 0.0.0.0:{port}"))
    }
}

/// The longest `transparent.detect_timeout` accepted.
pub const MAX_DETECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP port, 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port(pub u16);

impl HumanUnit for Port {
    const KIND: &'static str = "port";
    fn placeholder() -> Self {
        Port(0)
    }
    fn parse_human(s: &str) -> Option<Self> {
        s.trim().parse::<u16>().ok().filter(|p| *p != 0).map(Port)
    }
    fn render(&self) -> String {
        self.0.to_string()
    }
}

/// A size in bytes, written `512`, `64KiB`, `1MiB`, `10MB`, `1GiB`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl HumanUnit for ByteSize {
    const KIND: &'static str = "size";
    fn placeholder() -> Self {
        ByteSize(0)
    }
    fn parse_human(s: &str) -> Option<Self> {
        parse_size(s).map(ByteSize)
    }
    fn render(&self) -> String {
        let n = self.0;
        for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n >= m && n.is_multiple_of(m) {
                return format!("{}{unit}", n / m);
            }
        }
        n.to_string()
    }
}

/// Parses `250ms`, `30s`, `1m`, `1h30m`, `100us`, `1.5s`; a bare `0` is zero.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = rest[..unit_end].trim();
        rest = &rest[unit_end..];
        let secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * secs;
    }
    if !total.is_finite() || total > 1e9 {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

fn render_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    for (unit, n) in
        [("h", 3_600_000_000_000u128), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1000)]
    {
        if nanos.is_multiple_of(n) {
            return format!("{}{unit}", nanos / n);
        }
    }
    format!("{nanos}ns")
}

/// Parses `512`, `512B`, `64KiB`, `64KB`, `64k`, `1MiB`, `2GiB`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if split == 0 {
        return None;
    }
    let n: u64 = s[..split].parse().ok()?;
    let mult: u64 = match s[split..].trim() {
        "" | "B" => 1,
        "KiB" | "k" | "K" | "Ki" => 1 << 10,
        "KB" | "kB" => 1000,
        "MiB" | "M" | "Mi" | "m" => 1 << 20,
        "MB" => 1_000_000,
        "GiB" | "G" | "Gi" | "g" => 1 << 30,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The app readiness check, from `readiness.app`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppCheck {
    /// Connect to the app port.
    Tcp,
    /// `GET` this path on the app; 2xx is ready.
    Http(String),
    /// This file exists.
    File(PathBuf),
    /// Always ready.
    None,
}

impl AppCheck {
    /// Parses `tcp`, `http:/path`, `file:/path` or `none`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "tcp" {
            Ok(AppCheck::Tcp)
        } else if s == "none" {
            Ok(AppCheck::None)
        } else if let Some(p) = s.strip_prefix("http:") {
            if p.starts_with('/') && p.parse::<http::uri::PathAndQuery>().is_ok() {
                Ok(AppCheck::Http(p.to_owned()))
            } else {
                Err(format!("invalid check {s:?}: http: needs a path such as http:/healthz"))
            }
        } else if let Some(p) = s.strip_prefix("file:") {
            if p.starts_with('/') {
                Ok(AppCheck::File(PathBuf::from(p)))
            } else {
                Err(format!("invalid check {s:?}: file: needs an absolute path such as file:/shared/ready"))
            }
        } else {
            Err(format!("invalid check {s:?}: expected tcp, http:/path, file:/path or none"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_human_units() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("100us"), Some(Duration::from_micros(100)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("5 parsecs"), None);
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(render_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(render_duration(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn sizes_parse_in_human_units() {
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(ByteSize(65536).render(), "64KiB");
    }
}
