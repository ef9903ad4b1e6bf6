//! The one accept loop every listener runs: TCP → optional TLS → the protocol choice → a server.
//!
//! On the inbound listener every connection is served by tandem's own servers: HTTP/1.x by the
//! codec ([`crate::http1::server`]), which hands a connection that starts with the HTTP/2
//! preface (or negotiated `h2` by ALPN) to tandem's HTTP/2 server ([`crate::h2::server`]),
//! whatever protocol the app speaks. The other listeners (outbound, admin, the echo app) are
//! served by hyper-util's auto connection (HTTP/1.1 or h2c) with the listener's service; the
//! requests hyper refuses itself there (400, 414 or 431, then the close) get a debug line and
//! are counted in `tandem_http_requests_refused_total{direction, reason}` (`reason` is
//! `invalid` or `too_large`). Every listener has connection limits, an idle timeout and a
//! graceful drain (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY) when a stop begins.

use crate::base::conn::ConnMeta;
use crate::base::io::Metered;
use crate::base::reason::Direction;
use crate::h2::server::H2Rules;
use crate::http1::server::{Codec, Outcome, Rules};
use crate::lifecycle::shutdown::{ConnInfo, Drain, DrainAware, Tracker, DRAIN_IDLE_GRACE};
use crate::listener::tls::TlsServer;
use crate::listener::transparent::Interception;
use crate::telemetry::ratelimit::RateLimitedLog;
use crate::telemetry::Telemetry;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::{IntCounterVec, Opts, Registry};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// How one listener treats its connections.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    /// Time a client has to send a complete HTTP/1.1 request head.
    pub header_read_timeout: Duration,
    /// A connection that moves no bytes for this long is closed gracefully (0: never).
    pub idle_timeout: Duration,
    /// Request-head limits enforced by the service; hyper's own limits sit above them as a backstop.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Connections beyond this are closed at once and counted.
    pub max_connections: usize,
}

/// A listener's settings as a reload replaces them: the accept loop loads them once per
/// connection it accepts (a pointer comparison when nothing changed), and a connection keeps the
/// ones it was accepted under.
#[derive(Clone)]
pub struct LiveSettings {
    swapped: Arc<ArcSwap<ConnSettings>>,
    /// Transparent mode: how redirected connections are found and served (`None`: every
    /// connection takes the listener's usual path, and none is looked at). Outside what a reload
    /// swaps: it is made once, at start, with the listener's address and the proxy's dialer, and
    /// the `transparent` keys need a restart ([`crate::reload::RESTART`]).
    transparent: Option<Arc<Interception>>,
}

impl LiveSettings {
    /// Puts `settings` in force for the connections accepted from now on (the interception, if
    /// any, stays).
    pub fn store(&self, settings: ConnSettings) {
        self.swapped.store(Arc::new(settings));
    }

    /// These settings, with redirected connections handled by `interception`.
    pub fn intercepting(self, interception: Arc<Interception>) -> Self {
        Self { transparent: Some(interception), ..self }
    }
}

impl From<ConnSettings> for LiveSettings {
    fn from(settings: ConnSettings) -> Self {
        Self { swapped: Arc::new(ArcSwap::from_pointee(settings)), transparent: None }
    }
}

impl ConnSettings {
    /// Settings for internal listeners (admin, echo).
    pub fn internal() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_connections: 100_000,
        }
    }
}

/// The header-field count hyper's HTTP/1 parser accepts for a configured `max_headers`.
///
/// hyper parses into a stack array of 100 fields and into two heap arrays (allocated for every
/// request) above that. So the parser limit is 100 while the configured limit is below it (the
/// service answers 431 `DPE` for counts between the two), and the configured limit itself above
/// it. At the default (100) the parser refuses the 101st field: 431, connection closed, one
/// access-log line with `DPE`, counted in `tandem_http_requests_refused_total{reason="too_large"}`.
pub fn parser_max_headers(configured: usize) -> usize {
    configured.max(HYPER_INLINE_HEADERS)
}

/// hyper's inline header array size (`DEFAULT_MAX_HEADERS` in its HTTP/1 parser).
const HYPER_INLINE_HEADERS: usize = 100;

/// Binds a TCP listener with `SO_REUSEADDR` and a deep backlog.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(socket(addr, false)?)
}

/// Binds one of several listeners on the same address (`SO_REUSEPORT`): the kernel spreads new
/// connections across them, one listener per worker. Every one must be bound this way, the
/// first on the configured address and the rest on the address it got.
/// The listener is returned unregistered: [`TcpListener::from_std`] it inside the runtime that
/// will serve it.
pub fn bind_shared(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    socket(addr, true)
}

/// Binds `addr`. `[::]` (the default for inbound and admin) takes IPv4 clients too
/// (`IPV6_V6ONLY` off, whatever the host's `bindv6only`), so a dual-stack pod is reachable over
/// both; where the host has no IPv6 it becomes `0.0.0.0`, with a line saying so.
fn socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    match open_socket(addr, reuse_port) {
        Err(e) if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED && ipv6_unavailable(&e) => {
            let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::info!(listen = %addr, error = %e, instead = %v4, "no IPv6 on this host; listening on IPv4 only");
            open_socket(v4, reuse_port)
        }
        r => r,
    }
}

/// Whether binding an IPv6 socket failed because the host has no IPv6 (a kernel without it, or
/// no IPv6 address to bind).
fn ipv6_unavailable(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT | libc::EADDRNOTAVAIL))
}

/// An IPv4 client of a dual-stack listener, as the IPv4 address it is (`::ffff:10.0.0.5` is
/// 10.0.0.5) for the access log, `x-forwarded-for` and the loopback checks.
fn client_addr(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => peer,
        },
        v4 => v4,
    }
}

fn open_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// What serves a listener's connections once they are accepted and TLS is done:
/// [`OwnServers`] (tandem's own, the inbound listener) or [`HyperServers`] (hyper's, with a
/// service per connection: outbound, admin, echo).
pub trait Servers: Send + Sync + 'static {
    /// Takes the listener's settings once, before the first connection.
    fn prepare(&mut self, settings: &ConnSettings, telemetry: Option<&Arc<Telemetry>>, direction: Direction);

    /// Takes settings a reload put in force, for the connections accepted from now on.
    fn retune(&self, settings: &ConnSettings);

    /// Serves one connection until it ends (the accept loop cuts it at the drain deadline).
    fn serve_conn(&self, conn: Accepted) -> impl Future<Output = ()> + Send;

    /// Whether a redirected connection that starts with a TLS ClientHello is served here
    /// (terminated), rather than passed through as TCP.
    fn terminates_tls(&self) -> bool {
        false
    }
}

/// An accepted connection, handed to its server.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// The stop: a server asks its connection to close gracefully when it fires.
    pub drain: Drain,
    /// Bytes moved either way so far (for the idle timeout and the drain's quiet check).
    pub activity: Arc<AtomicU64>,
    /// Where the connection was going before iptables redirected it to the listener (transparent
    /// mode); `None` when it came to the listener directly.
    pub original_dst: Option<SocketAddr>,
    /// A redirected connection whose first bytes are HTTP: served in plaintext even on a
    /// listener that terminates TLS.
    pub plaintext: bool,
}

/// The inbound listener's servers: every HTTP/1.x connection goes to tandem's codec
/// ([`crate::http1::server`]), every HTTP/2 one (the preface, or `h2` by ALPN) to tandem's HTTP/2
/// server ([`crate::h2::server`]).
pub struct OwnServers {
    codec: Codec,
    /// TLS termination: every connection is a handshake first (ALPN picks h2 or HTTP/1.1).
    tls: Option<Arc<TlsServer>>,
    /// The rules of each protocol, loaded once per connection.
    rules: ArcSwap<(Rules, H2Rules)>,
}

impl OwnServers {
    pub fn new(codec: Codec, tls: Option<Arc<TlsServer>>) -> Self {
        let rules = Rules { header_read: Duration::ZERO, idle: Duration::ZERO, max_head: 0 };
        Self { codec, tls, rules: ArcSwap::from_pointee((rules, H2Rules { idle: Duration::ZERO, max_list: 0 })) }
    }
}

impl Servers for OwnServers {
    fn prepare(&mut self, settings: &ConnSettings, _: Option<&Arc<Telemetry>>, _: Direction) {
        self.retune(settings);
    }

    fn retune(&self, settings: &ConnSettings) {
        let rules = Rules {
            header_read: settings.header_read_timeout,
            idle: settings.idle_timeout,
            max_head: read_buffer(settings),
        };
        self.rules
            .store(Arc::new((rules, H2Rules { idle: settings.idle_timeout, max_list: h2_header_list(settings) })));
    }

    fn terminates_tls(&self) -> bool {
        self.tls.is_some()
    }

    async fn serve_conn(&self, conn: Accepted) {
        let Accepted { stream, peer, mut drain, activity, original_dst, plaintext } = conn;
        let (rules, h2) = **self.rules.load();
        let counted = |inner| Metered::new(inner, activity.clone());
        let plain = ConnMeta { peer, tls: None, original_dst };
        let (mut io, meta) = match &self.tls {
            Some(tls) if !plaintext => match tls.accept(stream, counted).await {
                Some((s, info)) => (Transport::Tls(Box::new(s)), ConnMeta { tls: Some(Arc::new(info)), ..plain }),
                None => return,
            },
            _ => (Transport::Plain(counted(stream)), plain),
        };
        // A redirected connection goes to the app on the port it was sent to.
        let for_port;
        let codec = match original_dst {
            None => &self.codec,
            Some(original) => {
                for_port = Codec::new(&self.codec.proxy().for_original(original));
                &for_port
            }
        };
        let peer_ip = crate::proxy::headers::peer_ip_value(meta.peer);
        // Every HTTP/1.x request is the codec's; it stops only at the HTTP/2 preface.
        let mut handed = bytes::BytesMut::new();
        if meta.tls.as_ref().is_none_or(|t| t.alpn != Some("h2")) {
            match codec.serve(&mut io, &meta, peer_ip.as_ref(), &mut drain, rules).await {
                Outcome::H2(rest) => handed = rest,
                Outcome::Closed => return,
            }
        }
        let proxy = codec.proxy();
        crate::h2::server::serve(&mut io, handed, proxy, &meta, peer_ip.as_ref(), &mut drain, h2).await;
    }
}

/// hyper-util's auto connection (HTTP/1.1, or h2 by ALPN under TLS and by prior knowledge in
/// plaintext) with a service made per connection by `make_service`.
pub struct HyperServers<F> {
    make_service: F,
    /// The connection builder and idle timeout, loaded once per connection.
    tuned: ArcSwap<Tuned>,
    refused: Option<Refusals>,
    telemetry: Option<Arc<Telemetry>>,
    direction: Direction,
}

impl<F> HyperServers<F> {
    pub fn new(make_service: F) -> Self {
        Self {
            make_service,
            tuned: ArcSwap::from_pointee(Tuned {
                builder: auto::Builder::new(TokioExecutor::new()),
                idle: Duration::ZERO,
            }),
            refused: None,
            telemetry: None,
            direction: Direction::Inbound,
        }
    }
}

impl<F, S, B> Servers for HyperServers<F>
where
    F: Fn(ConnMeta) -> S + Send + Sync + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn prepare(&mut self, settings: &ConnSettings, telemetry: Option<&Arc<Telemetry>>, direction: Direction) {
        self.retune(settings);
        self.refused = telemetry.and_then(|t| Refusals::register(t.metrics.registry(), direction));
        self.telemetry = telemetry.cloned();
        self.direction = direction;
    }

    fn retune(&self, settings: &ConnSettings) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .max_buf_size(read_buffer(settings))
            .max_headers(parser_max_headers(settings.max_headers));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(h2_header_list(settings)).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        self.tuned.store(Arc::new(Tuned { builder, idle: settings.idle_timeout }));
    }

    async fn serve_conn(&self, conn: Accepted) {
        let Accepted { stream, peer, mut drain, activity, original_dst, .. } = conn;
        let io = Transport::Plain(Metered::new(stream, activity.clone()));
        let meta = ConnMeta { peer, tls: None, original_dst };
        // Held for the connection's life: hyper's connection borrows its builder.
        let tuned = self.tuned.load_full();
        let (direction, idle) = (self.direction, tuned.idle);
        let info = Arc::new(ConnInfo::default());
        let service = DrainAware::new((self.make_service)(meta), drain.clone(), info.clone());
        // Boxed: hyper's connection state is several KiB.
        let mut conn = Box::pin(tuned.builder.serve_connection_with_upgrades(TokioIo::new(io), service));
        let mut closing = false;
        let mut draining = false;
        let mut last_seen = 0u64;
        let mut idle_tick = tokio::time::interval_at(
            tokio::time::Instant::now() + idle.max(Duration::from_millis(1)),
            idle.max(Duration::from_millis(1)),
        );
        // The drain rules are in crate::lifecycle::shutdown: HTTP/2 gets GOAWAY at once; HTTP/1.1
        // answers with `Connection: close` and is closed once it has been quiet for
        // DRAIN_IDLE_GRACE.
        let mut drain_tick = tokio::time::interval(DRAIN_IDLE_GRACE);
        let mut drain_seen = 0u64;
        loop {
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        match refusal(e.as_ref()) {
                            Some(reason) => {
                                tracing::debug!(
                                    error = %e,
                                    %peer,
                                    reason,
                                    direction = direction.as_str(),
                                    "request refused by the HTTP/1 parser before reaching the service"
                                );
                                if let Some(r) = &self.refused {
                                    r.count(reason);
                                }
                                // One access-log line and one request count, like every other
                                // refusal.
                                if let Some(t) = &self.telemetry {
                                    t.connection_error(direction, peer, e.as_ref());
                                }
                            }
                            None => tracing::debug!(error = %e, %peer, "connection ended with an error"),
                        }
                    }
                    return;
                }
                _ = drain.wait(), if !draining && !closing => {
                    draining = true;
                    if info.is_h2() {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    } else {
                        drain_seen = activity.load(Ordering::Relaxed);
                        drain_tick.reset();
                    }
                }
                _ = drain_tick.tick(), if draining && !closing => {
                    let seen = activity.load(Ordering::Relaxed);
                    if info.is_h2() || seen == drain_seen {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    drain_seen = seen;
                }
                _ = idle_tick.tick(), if !closing && !idle.is_zero() => {
                    let seen = activity.load(Ordering::Relaxed);
                    if seen == last_seen {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    last_seen = seen;
                }
            }
        }
    }
}

/// What [`HyperServers`] makes from a listener's settings.
struct Tuned {
    builder: auto::Builder<TokioExecutor>,
    idle: Duration,
}

/// The accept loops' failures, logged at most once a second per direction and error with the
/// count held back since the last line (shared by every worker's loop).
fn accept_errors() -> &'static RateLimitedLog {
    static LOG: std::sync::OnceLock<RateLimitedLog> = std::sync::OnceLock::new();
    LOG.get_or_init(|| RateLimitedLog::new(Duration::from_secs(1)))
}

/// The HTTP/1 read buffer (the codec's and hyper's): a head that does not fit is refused with
/// 431 (414 while the request line has not ended).
fn read_buffer(settings: &ConnSettings) -> usize {
    (settings.max_header_bytes * 2).max(16 * 1024)
}

/// SETTINGS_MAX_HEADER_LIST_SIZE on HTTP/2 (hyper's server and tandem's own alike).
fn h2_header_list(settings: &ConnSettings) -> usize {
    settings.max_header_bytes.saturating_mul(2)
}

/// Serves `listener` with `servers` until `drain` fires, then stops accepting and asks every
/// open connection to close gracefully. Stopping refuses new handshakes at once
/// ([`refuse_new_handshakes`]), takes the connections that still complete for
/// [`HANDSHAKE_GRACE`], and then closes the listener, so no client is reset on a connection it
/// believes open. `tracker` counts the listener from this call (not from the loop's first poll:
/// a stop that comes before it still waits for it) until it closes, and every connection until
/// it closes, so the caller can wait for them (with its deadline); at the drain deadline it cuts
/// them. The future ends once the accept loop has stopped.
pub fn serve<C: Servers>(
    listener: TcpListener,
    settings: impl Into<LiveSettings>,
    direction: Direction,
    telemetry: Option<Arc<Telemetry>>,
    mut drain: Drain,
    tracker: Arc<Tracker>,
    mut servers: C,
) -> impl Future<Output = ()> + Send + 'static {
    let listening = tracker.listening();
    let LiveSettings { swapped: live, transparent } = settings.into();
    let mut settings = live.load_full();
    servers.prepare(&settings, telemetry.as_ref(), direction);
    let servers = Arc::new(servers);
    async move {
        // Set once the stop has begun: when the listener closes.
        let mut closing: Option<tokio::time::Instant> = None;
        loop {
            let accepted = if let Some(until) = closing {
                // The stop has begun and new handshakes are refused (see `refuse_new_handshakes`).
                // Connections the kernel completed, and handshakes under way when the stop began,
                // are taken (they are served in drain mode) until the grace ends; then the
                // listener closes.
                tokio::select! {
                    biased;
                    a = listener.accept() => a,
                    _ = tokio::time::sleep_until(until) => break,
                    _ = listening.closed_by_force() => break,
                }
            } else {
                tokio::select! {
                    biased;
                    _ = drain.wait() => {
                        if let Err(e) = refuse_new_handshakes(&listener) {
                            tracing::warn!(error = %e, direction = direction.as_str(), "could not stop new handshakes on the listener");
                        }
                        closing = Some(tokio::time::Instant::now() + HANDSHAKE_GRACE);
                        continue;
                    }
                    a = listener.accept() => a,
                }
            };
            let (stream, peer) = match accepted {
                Ok((stream, peer)) => (stream, client_addr(peer)),
                Err(e) => {
                    // EMFILE/ENFILE/ENOMEM: back off instead of spinning on a listener that stays
                    // readable; the pending connection waits in the backlog. At the fd limit each
                    // closing connection lets one accept through before the next fails, so the
                    // warning is rate-limited across every worker's loop, not per run of errors.
                    if let Some(suppressed) = accept_errors().admit_message(direction.as_str(), &e.to_string()) {
                        tracing::warn!(error = %e, direction = direction.as_str(), suppressed, "accept failed; backing off");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Settings a reload put in force apply from this connection on.
            let now = live.load();
            if !Arc::ptr_eq(&now, &settings) {
                settings = arc_swap::Guard::into_inner(now);
                servers.retune(&settings);
            }
            if tracker.count() >= settings.max_connections {
                if let Some(t) = &telemetry {
                    t.metrics.connection_rejected(direction);
                }
                drop(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let guard = tracker.open();
            let servers = servers.clone();
            let transparent = transparent.clone();
            let relay_idle = settings.idle_timeout;
            let telemetry = telemetry.clone();
            let drain = drain.clone();
            tokio::spawn(async move {
                if let Some(t) = &telemetry {
                    t.metrics.connection_opened(direction);
                }
                let conn = Accepted {
                    stream,
                    peer,
                    drain,
                    activity: Arc::new(AtomicU64::new(0)),
                    original_dst: None,
                    plaintext: false,
                };
                let served = async {
                    match &transparent {
                        None => servers.serve_conn(conn).await,
                        Some(t) => t.route(conn, &*servers, relay_idle).await,
                    }
                };
                tokio::select! {
                    () = served => {}
                    _ = guard.closed_by_force() => {
                        tracing::debug!(%peer, "drain deadline: closing the connection");
                    }
                }
                if let Some(t) = &telemetry {
                    t.metrics.connection_closed(direction);
                }
            });
        }
        // The listener closes before the drain can see it gone.
        drop(listener);
        drop(listening);
    }
}

/// The byte stream under HTTP: plain TCP or TLS over it.
pub enum Transport {
    Plain(Metered<TcpStream>),
    Tls(Box<TlsStream<Metered<TcpStream>>>),
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl crate::http1::server::ReadReady for Transport {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Plain(s) => s.get_ref().poll_read_ready(cx),
            // rustls may hold decrypted bytes already: read at once.
            Transport::Tls(_) => Poll::Ready(Ok(())),
        }
    }
}

/// Whether a connection error means hyper refused a request itself (and answered it): `invalid`
/// (400) or `too_large` (431 for the head, 414 for the URI).
fn refusal(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            return if h.is_parse_too_large() {
                Some("too_large")
            } else if h.is_parse() {
                Some("invalid")
            } else {
                None
            };
        }
        cur = err.source();
    }
    None
}

/// `tandem_http_requests_refused_total` for one listener, registered on the shared registry
/// with the listener's direction as a constant label.
pub struct Refusals {
    counter: IntCounterVec,
}

impl Refusals {
    fn register(registry: &Registry, direction: Direction) -> Option<Self> {
        let opts = Opts::new(
            "tandem_http_requests_refused_total",
            "Requests the HTTP/1 parser refused before any service saw them (tandem answered 400, 414 or 431 and closed the connection).",
        )
        .const_label("direction", direction.as_str());
        let counter = match IntCounterVec::new(opts, &["reason"]) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "cannot create the refused-requests counter");
                return None;
            }
        };
        if let Err(e) = registry.register(Box::new(counter.clone())) {
            // A second listener of the same direction on one registry: count, unexported.
            tracing::debug!(error = %e, direction = direction.as_str(), "refused-requests counter not registered");
        }
        // Both series exist from the start.
        counter.with_label_values(&["invalid"]);
        counter.with_label_values(&["too_large"]);
        Some(Self { counter })
    }

    fn count(&self, reason: &str) {
        self.counter.with_label_values(&[reason]).inc();
    }
}

/// How long a stopping listener keeps taking connections after it stopped answering new
/// handshakes: a handshake under way then (the client's SYN answered, its ACK not yet in) completes
/// within one round trip, and its client may send a request at once. Closing the listener earlier
/// would reset such a connection; a client whose ACK takes longer than this is reset.
pub const HANDSHAKE_GRACE: Duration = Duration::from_millis(100);

/// The socket filter a stopping listener gets: it drops a TCP segment that opens a connection
/// (SYN without ACK) and keeps every other. The filter runs on the TCP header (IPv4 and IPv6 alike),
/// so byte 13 holds the flags.
#[cfg(any(target_os = "linux", target_os = "android"))]
const REFUSE_SYN: [libc::sock_filter; 5] = [
    // A = the flags byte
    bpf(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 13),
    // A &= SYN | ACK
    bpf(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, 0, 0, 0x12),
    // SYN alone: drop; otherwise keep
    bpf(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 1, 0, 0x02),
    bpf(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),
    bpf(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
];

#[cfg(any(target_os = "linux", target_os = "android"))]
const fn bpf(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    // Every classic BPF opcode fits in 16 bits.
    libc::sock_filter { code: code as u16, jt, jf, k }
}

/// Stops `listener` from starting new connections while it stays open: a client's SYN is dropped
/// (its kernel retries it after a second, and by then the closed port refuses it: the client knows
/// nothing was sent). Handshakes already answered complete and queue as before, so the accept loop
/// can take every connection whose client may have written a request, then close the listener
/// without resetting one. Closing with connections still arriving would reset those that complete
/// between the last `accept` and the close.
///
/// Socket filters are Linux's: elsewhere this fails, the listener takes connections until the grace
/// ends, and one completing between the last accept and the close is reset.
pub fn refuse_new_handshakes(listener: &TcpListener) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return socket2::SockRef::from(listener).attach_filter(&REFUSE_SYN);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = listener;
        Err(io::Error::new(io::ErrorKind::Unsupported, "socket filters are Linux's"))
    }
}

/// Waits for a future but gives up at `deadline`; true if it finished in time.
pub async fn within<Fut: Future>(deadline: Duration, fut: Fut) -> bool {
    tokio::time::timeout(deadline, fut).await.is_ok()
}
