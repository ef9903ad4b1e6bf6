//! The outbound side, first form: a forward proxy for the app's own calls. The app sets
//! `HTTP_PROXY`/`HTTPS_PROXY` to this listener; tandem forwards plain HTTP requests to the authority
//! they name and tunnels `CONNECT` (what clients do for `https://`), under the outbound policy.
//!
//! The stages of an HTTP request, outermost first (composed in one service, one boxed future):
//!
//! 1. **record** — access-log/metrics record with `direction: outbound`; the authority goes to the
//!    log, the metrics label is the bounded `upstream="passthrough"`.
//! 2. **load shed** — over `max_in_flight` answers 503 `UO` at once.
//! 3. **request checks** — head over the limits answers 431 `DPE`; no destination, or an
//!    `https://` URL sent as a plain request, answers 400 `DPE`.
//! 4. **policy by name** — `outbound.deny`/`outbound.allow` name and port patterns and literal IPs
//!    decide before any lookup; a denial answers 403 `NR`.
//! 5. **rewrite** — hop-by-hop headers go (and `Proxy-Authorization`, meant for a proxy), `Host` is
//!    the authority, the URI goes upstream in origin form, `x-request-id` kept or made.
//! 6. **timeout + forward** — a pooled keep-alive client per authority. A new connection goes
//!    through the [`Dialer`]: name lookup on tokio's blocking pool (getaddrinfo), policy by
//!    resolved address, the loop check, then a TCP connect within `timeouts.connect`. Failures map
//!    to `UF`/`UC`/`UPE`/`UT` as inbound.
//!
//! `CONNECT host:port` goes through the same record, shed, policy and dialer, then answers 200 and
//! copies bytes both ways until either side closes (or nothing moves for `timeouts.idle`); its
//! access-log line is written when the tunnel ends, with the bytes each way and the duration.
//! While open, a tunnel counts as an outbound connection (`tandem_tcp_connections_*`, and against
//! `max_connections`): the HTTP connection that carried the `CONNECT` ends where the tunnel begins.

use crate::base::body::CountingBody;
use crate::base::io::Metered;
use crate::base::reason::Direction;
use crate::base::reason::Reason;
use crate::config::policy::{Destination, Policy, Verdict, Why};
use crate::config::Outbound as OutboundConfig;
use crate::lifecycle::shutdown::Tracker;
use crate::proxy::admission::{Admission, Entered, SideRules};
use crate::proxy::body::ProxyBody;
use crate::proxy::error::{error_response, note_error, ProxyError};
use crate::proxy::headers;
use crate::telemetry::record::{Finish, RequestRecord};
use crate::telemetry::Telemetry;
use arc_swap::ArcSwap;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpInfo;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The metrics label of every forward-proxy request (never the authority: the label set stays bounded).
pub const PASSTHROUGH: &str = crate::telemetry::metrics::OUTBOUND_UPSTREAM;

static PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");

/// State shared by every outbound connection of one worker. A clone shares everything, the
/// pools included ([`OutboundProxy::sibling`] gives a worker pools of its own).
#[derive(Clone)]
pub struct OutboundProxy {
    client: Client<Connector, CountingBody>,
    dialer: Arc<Dialer>,
    telemetry: Arc<Telemetry>,
    conns: Arc<Tracker>,
    /// The in-flight cap, the head limits, the response and tunnel idle timeouts, which a
    /// reload may change.
    admission: Admission,
    connect_timeout: Duration,
    /// Upstream-failure warnings, rate-limited across every worker.
    errors: Arc<crate::telemetry::ratelimit::RateLimitedLog>,
}

impl OutboundProxy {
    /// `own` is the address the outbound listener is bound to (requests naming it are a loop);
    /// `conns` is that listener's connection tracker, which open tunnels join.
    pub fn new(cfg: &OutboundConfig, telemetry: Arc<Telemetry>, own: SocketAddr, conns: Arc<Tracker>) -> Arc<Self> {
        let policy = policy(cfg);
        let dialer = Arc::new(Dialer {
            policy: ArcSwap::from_pointee(policy),
            connect_timeout: cfg.timeouts.connect.value,
            own,
        });
        Arc::new(Self {
            client: Self::client(cfg, &dialer),
            dialer,
            telemetry,
            conns,
            admission: Admission::new(SideRules::new(&cfg.timeouts, &cfg.limits)),
            connect_timeout: cfg.timeouts.connect.value,
            errors: Arc::new(crate::telemetry::ratelimit::RateLimitedLog::new(Duration::from_secs(5))),
        })
    }

    /// Another worker's proxy: the same policy, telemetry, connection tracker and `max_in_flight`
    /// budget (shared), with its own keep-alive pools, whose connections live on that worker.
    pub fn sibling(&self, cfg: &OutboundConfig) -> Arc<Self> {
        Arc::new(Self { client: Self::client(cfg, &self.dialer), ..self.clone() })
    }

    fn client(cfg: &OutboundConfig, dialer: &Arc<Dialer>) -> Client<Connector, CountingBody> {
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(cfg.timeouts.upstream_idle.value)
            .pool_max_idle_per_host(cfg.limits.max_idle_per_upstream)
            // Host is set from the authority the client named.
            .set_host(false)
            .http1_max_buf_size(1024 * 1024);
        b.build(Connector(dialer.clone()))
    }

    /// The service for one connection from the app at `peer`; `original`: where the connection
    /// was going before iptables redirected it (transparent mode), where its requests go.
    pub fn service(self: &Arc<Self>, peer: SocketAddr, original: Option<SocketAddr>) -> OutboundService {
        OutboundService { proxy: self.clone(), peer, original }
    }

    /// What connects to destinations (policy, loop check, connect timeout), for the opaque relay.
    pub fn dialer(&self) -> &Arc<Dialer> {
        &self.dialer
    }

    /// Requests (and tunnels) in flight right now.
    pub fn in_flight(&self) -> usize {
        self.admission.in_flight()
    }

    /// Puts a reloaded configuration's limits, timeouts and policy in force for the requests and
    /// connections that come next (every worker's proxy shares them).
    pub fn reconfigure(&self, cfg: &OutboundConfig) {
        self.admission.set(SideRules::new(&cfg.timeouts, &cfg.limits));
        self.dialer.policy.store(Arc::new(policy(cfg)));
    }
}

fn policy(cfg: &OutboundConfig) -> Policy {
    Policy::new(cfg.allow.iter().map(|h| h.value.clone()).collect(), cfg.deny.iter().map(|h| h.value.clone()).collect())
}

/// The outbound service bound to one connection from the app.
#[derive(Clone)]
pub struct OutboundService {
    proxy: Arc<OutboundProxy>,
    peer: SocketAddr,
    original: Option<SocketAddr>,
}

impl hyper::service::Service<Request<Incoming>> for OutboundService {
    type Response = Response<ProxyBody>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let proxy = self.proxy.clone();
        let (peer, original) = (self.peer, self.original);
        Box::pin(async move {
            Ok(if req.method() == Method::CONNECT {
                proxy.connect(req, peer).await
            } else {
                proxy.handle(req, peer, original).await
            })
        })
    }
}

impl OutboundProxy {
    /// Starts the record and takes an in-flight slot ([`Admission::enter`]).
    fn admit(&self, record: RequestRecord, received: Option<Arc<AtomicU64>>) -> Entered {
        self.admission.enter(record, received, &self.telemetry)
    }

    /// A plain HTTP request: absolute form (`GET http://orders:8080/x`), or origin form with `Host`;
    /// on a redirected connection (`original`), to the original destination whatever it names.
    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        original: Option<SocketAddr>,
    ) -> Response<ProxyBody> {
        let upgrade = headers::wants_upgrade(req.headers(), req.version());
        let downstream_upgrade = if upgrade { Some(hyper::upgrade::on(&mut req)) } else { None };
        let (mut parts, body) = req.into_parts();
        let mut record = RequestRecord::start(Direction::Outbound, peer, &parts);
        record.upstream_cluster = PASSTHROUGH;
        let received = (!http_body::Body::is_end_stream(&body)).then(|| Arc::new(AtomicU64::new(0)));
        let Entered { mut finish, rules, over } = self.admit(record, received.clone());
        if let Some(err) = over {
            return self.fail(err, finish);
        }
        if let Some(err) = rules.parts(&parts) {
            return self.fail(err, finish);
        }
        let authority = match original.map_or_else(|| destination(&parts), original_authority) {
            Ok(a) => a,
            Err(e) => return self.fail(e, finish),
        };
        if let Err(e) = self.dialer.check_name(&authority) {
            return self.fail(e, finish);
        }

        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        parts.headers.remove(&PROXY_AUTHORIZATION);
        let request_id = headers::ensure_request_id(&mut parts.headers);
        if let Some(r) = finish.record_mut() {
            r.request_id = Some(request_id);
            r.x_forwarded_for = parts.headers.get(&headers::X_FORWARDED_FOR).cloned();
        }
        // RFC 9112 §3.2.2: a proxy replaces Host with the authority of an absolute-form target. A
        // redirected request keeps the Host its client chose (it names the service, not the
        // address), and gets the address only when it has none.
        let keep_host = original.is_some() && parts.headers.contains_key(header::HOST);
        if !keep_host && parts.headers.get(header::HOST).is_none_or(|h| h.as_bytes() != authority.as_str().as_bytes()) {
            match HeaderValue::from_str(authority.as_str()) {
                Ok(v) => {
                    parts.headers.insert(header::HOST, v);
                }
                Err(e) => return self.fail(ProxyError::BadRequest { what: format!("bad authority: {e}") }, finish),
            }
        }
        // The client needs an absolute URI to pick the pool and dial; it writes origin form.
        if parts.uri.scheme() != Some(&Scheme::HTTP) || parts.uri.authority() != Some(&authority) {
            let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = Some(authority.clone());
            uri.path_and_query = Some(path);
            parts.uri = match Uri::from_parts(uri) {
                Ok(u) => u,
                Err(e) => {
                    return self
                        .fail(ProxyError::BadRequest { what: format!("cannot build upstream URI: {e}") }, finish)
                }
            };
        }
        parts.version = http::Version::HTTP_11;
        parts.extensions.clear();
        let upstream_req = Request::from_parts(parts, CountingBody::new(body.into(), received));

        let sent_at = Instant::now();
        let result = tokio::time::timeout(rules.response_timeout, self.client.request(upstream_req)).await;
        let mut resp = match result {
            Err(_) => {
                let timeout_ms = rules.response_timeout.as_millis() as u64;
                return self.fail(ProxyError::UpstreamTimeout { upstream: authority.to_string(), timeout_ms }, finish);
            }
            Ok(Err(e)) => {
                let (err, addr) = self.classify(&e, &authority);
                if let Some(r) = finish.record_mut() {
                    r.upstream_host = addr;
                }
                return self.fail(err, finish);
            }
            Ok(Ok(resp)) => resp,
        };
        let upgraded = upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let Some(r) = finish.record_mut() {
            r.upstream_service_time = Some(sent_at.elapsed());
            r.response_code = resp.status().as_u16();
            r.upstream_host = resp.extensions().get::<HttpInfo>().map(HttpInfo::remote_addr);
        }
        if upgraded {
            if let Some(down) = downstream_upgrade {
                let up = hyper::upgrade::on(&mut resp);
                tokio::spawn(join_upgraded(down, up));
            }
        }
        headers::strip_hop_by_hop(resp.headers_mut(), upgraded);
        if let Some(r) = finish.record_mut() {
            r.note_grpc_status(resp.headers());
        }
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, ProxyBody::upstream(body).with_finish(finish))
    }

    /// `CONNECT host:port`: dial, answer 200, then copy bytes both ways until either side closes.
    async fn connect(self: Arc<Self>, mut req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (parts, _body) = req.into_parts();
        let mut record = RequestRecord::start(Direction::Outbound, peer, &parts);
        record.upstream_cluster = PASSTHROUGH;
        let received = Arc::new(AtomicU64::new(0));
        let Entered { mut finish, rules, over } = self.admit(record, Some(received.clone()));
        if let Some(err) = over {
            return self.fail(err, finish);
        }
        let Some(authority) = parts.uri.authority().filter(|a| a.port_u16().is_some()).cloned() else {
            let what = "CONNECT needs host:port as its target".to_owned();
            return self.fail(ProxyError::BadRequest { what }, finish);
        };
        if let Err(e) = self.dialer.check_name(&authority) {
            return self.fail(e, finish);
        }
        let started = Instant::now();
        let port = authority.port_u16().unwrap_or(443);
        let (stream, addr) = match self.dialer.dial(authority.host(), port).await {
            Ok(s) => s,
            Err(e) => {
                if let Some(r) = finish.record_mut() {
                    r.upstream_host = e.addr();
                }
                return self.fail(e.to_proxy_error(&authority, self.connect_timeout), finish);
            }
        };
        if let Some(r) = finish.record_mut() {
            r.upstream_host = Some(addr);
            r.upstream_service_time = Some(started.elapsed());
            r.response_code = 200;
            // Nothing is forwarded to carry it, but the log line gets one to correlate by.
            r.request_id = Some(match parts.headers.get(&headers::X_REQUEST_ID) {
                Some(v) if !v.is_empty() => v.clone(),
                _ => headers::new_request_id(),
            });
        }
        tokio::spawn(self.clone().tunnel(on_upgrade, stream, finish, received, rules.idle_timeout));
        Response::new(ProxyBody::empty())
    }

    /// Runs one tunnel to its end and reports it.
    async fn tunnel(
        self: Arc<Self>,
        on_upgrade: hyper::upgrade::OnUpgrade,
        upstream: TcpStream,
        mut finish: Finish,
        received: Arc<AtomicU64>,
        idle: Duration,
    ) {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                // The app went away before the tunnel began; the record reports DC on drop.
                tracing::debug!(error = %e, "CONNECT upgrade failed");
                return;
            }
        };
        let _conn = self.conns.open();
        self.telemetry.metrics.connection_opened(Direction::Outbound);
        let activity = Arc::new(AtomicU64::new(0));
        let mut down = Metered::new(TokioIo::new(upgraded), activity.clone());
        let mut up = Metered::new(upstream, activity.clone());
        let mut idled = false;
        {
            let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
            tokio::pin!(copy);
            let period = idle.max(Duration::from_millis(1));
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            let mut last = 0;
            loop {
                tokio::select! {
                    res = &mut copy => {
                        if let Err(e) = res {
                            tracing::debug!(error = %e, "tunnel ended with an error");
                        }
                        break;
                    }
                    _ = tick.tick(), if !idle.is_zero() => {
                        let seen = activity.load(Ordering::Relaxed);
                        if seen == last {
                            idled = true;
                            break;
                        }
                        last = seen;
                    }
                }
            }
        }
        self.telemetry.metrics.connection_closed(Direction::Outbound);
        received.store(up.written, Ordering::Relaxed);
        if let Some(r) = finish.record_mut() {
            if up.failed {
                r.response_flags = Some(Reason::UC);
            } else if down.failed {
                r.response_flags = Some(Reason::DC);
            }
        }
        if idled {
            tracing::debug!(idle = ?idle, "tunnel closed after moving nothing for the idle timeout");
        }
        finish.finish(up.read, false);
    }

    /// Maps a pooled-client error; the second value is the address dialed, when one was.
    fn classify(
        &self,
        e: &hyper_util::client::legacy::Error,
        authority: &Authority,
    ) -> (ProxyError, Option<SocketAddr>) {
        let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(s) = source {
            if let Some(d) = s.downcast_ref::<DialError>() {
                return (d.to_proxy_error(authority, self.connect_timeout), d.addr());
            }
            source = s.source();
        }
        let ms = self.connect_timeout.as_millis() as u64;
        (ProxyError::from_client_named(e, authority.to_string(), ms), None)
    }

    /// Answers with tandem's own error response; upstream failures and denials go to tandem's own
    /// log too (rate-limited), every one to the access log.
    fn fail(&self, err: ProxyError, mut finish: Finish) -> Response<ProxyBody> {
        let grpc = note_error(&err, finish.record_mut());
        let resp: Response<ProxyBody> = error_response(&err, grpc);
        if err.status().is_server_error() || err.reason() == Reason::NR {
            self.errors.warn(err.reason().as_str(), &format_args!("outbound: {err}"));
        }
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, body.with_finish(finish))
    }
}

/// Where a plain request is going: the URI's authority (absolute form, or HTTP/2's
/// `:authority`), else the `Host` header. Only `http` is forwarded this way.
fn destination(parts: &http::request::Parts) -> Result<Authority, ProxyError> {
    let authority = match parts.uri.authority() {
        Some(a) => {
            match parts.uri.scheme_str() {
                None | Some("http") => {}
                Some("https") => {
                    return Err(ProxyError::BadRequest {
                        what: "https:// URLs go through a CONNECT tunnel (set HTTPS_PROXY), not a plain request"
                            .to_owned(),
                    })
                }
                Some(other) => {
                    return Err(ProxyError::BadRequest { what: format!("scheme {other:?} is not forwarded") })
                }
            }
            a.clone()
        }
        None => {
            let host = parts.headers.get(header::HOST).ok_or_else(|| ProxyError::BadRequest {
                what: "no destination: send an absolute-form URI or a Host header".to_owned(),
            })?;
            Authority::try_from(host.as_bytes())
                .map_err(|e| ProxyError::BadRequest { what: format!("bad Host header: {e}") })?
        }
    };
    if authority.host().is_empty() {
        return Err(ProxyError::BadRequest { what: "no host in the destination".to_owned() });
    }
    // `user:pass@host` in a URL is for the origin, never part of Host or of the pool key.
    if let Some((_, hostport)) = authority.as_str().rsplit_once('@') {
        return Authority::try_from(hostport)
            .map_err(|e| ProxyError::BadRequest { what: format!("bad authority {hostport:?}: {e}") });
    }
    Ok(authority)
}

/// The authority of a redirected connection's original destination (`10.0.0.7:80`, `[fd00::7]:80`).
fn original_authority(original: SocketAddr) -> Result<Authority, ProxyError> {
    Authority::try_from(original.to_string())
        .map_err(|e| ProxyError::BadRequest { what: format!("bad original destination {original}: {e}") })
}

/// The IP of a literal host (`10.0.0.1`, `[::1]`), or `None` for a name.
fn literal_ip(host: &str) -> Option<IpAddr> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse().ok()
}

/// Resolves, applies the address policy and the loop check, and connects: everything between an
/// authority and a TCP connection, shared by the pooled client and `CONNECT`.
pub struct Dialer {
    /// `outbound.allow`/`outbound.deny`; a reload swaps it, and each check loads it once.
    policy: ArcSwap<Policy>,
    connect_timeout: Duration,
    /// The outbound listener's own address: dialing it is a loop.
    own: SocketAddr,
}

/// Why dialing failed.
#[derive(Debug)]
pub enum DialError {
    /// The policy refuses every address (`why` names the entry).
    Denied { why: String },
    /// Every allowed address is tandem's own outbound listener.
    Loop { addr: SocketAddr },
    /// The name did not resolve.
    Resolve { cause: String },
    /// The name lookup did not finish within the connect timeout.
    ResolveTimeout,
    /// Every address refused or failed; the last one tried and its error.
    Connect { addr: SocketAddr, cause: io::Error },
    /// The connect timeout passed; the last address tried.
    Timeout { addr: Option<SocketAddr> },
    /// The URI handed to the connector has no host.
    NoHost,
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DialError::Denied { why } => write!(f, "denied by outbound policy: {why}"),
            DialError::Loop { addr } => write!(f, "{addr} is tandem's own outbound listener (a loop)"),
            DialError::Resolve { cause } => write!(f, "name lookup failed: {cause}"),
            DialError::ResolveTimeout => f.write_str("name lookup timed out"),
            DialError::Connect { addr, cause } => write!(f, "connect to {addr} failed: {cause}"),
            DialError::Timeout { .. } => f.write_str("connect timed out"),
            DialError::NoHost => f.write_str("no host to connect to"),
        }
    }
}

impl std::error::Error for DialError {}

impl DialError {
    /// The outbound policy refused the destination (or it is tandem's own listener).
    pub fn is_denied(&self) -> bool {
        matches!(self, DialError::Denied { .. } | DialError::Loop { .. })
    }

    /// The address this failure concerns, for `upstream_host`.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            DialError::Loop { addr } | DialError::Connect { addr, .. } => Some(*addr),
            DialError::Timeout { addr } => *addr,
            _ => None,
        }
    }

    /// The error tandem answers with, naming the authority the app asked for.
    pub fn to_proxy_error(&self, authority: &Authority, connect_timeout: Duration) -> ProxyError {
        let timeout_ms = connect_timeout.as_millis() as u64;
        let named = |addr: SocketAddr| {
            if literal_ip(authority.host()).is_some() {
                addr.to_string()
            } else {
                format!("{authority} ({addr})")
            }
        };
        match self {
            DialError::Denied { why } => ProxyError::Denied { what: format!("{authority} ({why})") },
            DialError::Loop { addr } => ProxyError::Denied {
                what: format!("{authority} ({addr} is tandem's own outbound listener: a proxy loop)"),
            },
            DialError::Resolve { cause } => ProxyError::ConnectFailed {
                upstream: authority.to_string(),
                cause: format!("name lookup failed ({cause})"),
            },
            DialError::ResolveTimeout => ProxyError::ConnectTimeout { upstream: authority.to_string(), timeout_ms },
            DialError::Connect { addr, cause } => {
                ProxyError::ConnectFailed { upstream: named(*addr), cause: describe_io(cause) }
            }
            DialError::Timeout { addr } => ProxyError::ConnectTimeout {
                upstream: addr.map(named).unwrap_or_else(|| authority.to_string()),
                timeout_ms,
            },
            DialError::NoHost => ProxyError::BadRequest { what: "no host in the destination".to_owned() },
        }
    }
}

fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
        _ => {
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_ascii_lowercase(),
                None => s,
            }
        }
    }
}

impl Dialer {
    /// The policy by name and port (and by address for a literal IP), before any lookup.
    fn check_name(&self, authority: &Authority) -> Result<(), ProxyError> {
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(80);
        let literal = literal_ip(host);
        let d = Destination { name: if literal.is_some() { None } else { Some(host) }, addr: literal, port };
        let policy = self.policy.load();
        match policy.decide(&d) {
            Verdict::Allow | Verdict::Resolve => Ok(()),
            Verdict::Deny(why) => Err(ProxyError::Denied { what: format!("{authority} ({})", policy.explain(why)) }),
        }
    }

    /// Whether connecting to `addr` would reach tandem's own outbound listener.
    fn is_self(&self, addr: SocketAddr) -> bool {
        if addr.port() != self.own.port() {
            return false;
        }
        let ip = addr.ip().to_canonical();
        // Connecting to 0.0.0.0 or :: reaches this host.
        let local = ip.is_loopback() || ip.is_unspecified();
        ip == self.own.ip()
            || (self.own.ip().is_unspecified() && local)
            || (ip.is_unspecified() && self.own.ip().is_loopback())
    }

    /// Resolves `host` (unless it is a literal IP), keeps the addresses the policy allows and that
    /// are not tandem itself, and connects to them in order within the connect timeout.
    pub async fn dial(&self, host: &str, port: u16) -> Result<(TcpStream, SocketAddr), DialError> {
        let literal = literal_ip(host);
        let name = if literal.is_some() { None } else { Some(host) };
        let addrs: Vec<SocketAddr> = match literal {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            // getaddrinfo on tokio's blocking pool, never on a worker thread; only new connections
            // get here (pooled ones skip the lookup).
            None => match tokio::time::timeout(self.connect_timeout, tokio::net::lookup_host((host, port))).await {
                Err(_) => return Err(DialError::ResolveTimeout),
                Ok(Err(e)) => return Err(DialError::Resolve { cause: resolve_cause(&e) }),
                Ok(Ok(it)) => it.collect(),
            },
        };
        let policy = self.policy.load_full();
        let mut allowed = Vec::with_capacity(addrs.len());
        let mut denied = None;
        let mut looped = None;
        for a in addrs {
            let a = SocketAddr::new(a.ip().to_canonical(), a.port());
            if self.is_self(a) {
                looped = Some(a);
                continue;
            }
            match policy.decide(&Destination { name, addr: Some(a.ip()), port }) {
                Verdict::Allow => allowed.push(a),
                Verdict::Deny(why) => {
                    denied.get_or_insert(why);
                }
                // Never with an address; refuse rather than guess.
                Verdict::Resolve => {
                    denied.get_or_insert(Why::NotAllowed);
                }
            }
        }
        if allowed.is_empty() {
            return Err(match (denied, looped) {
                (Some(why), _) => DialError::Denied { why: policy.explain(why) },
                (None, Some(addr)) => DialError::Loop { addr },
                (None, None) => DialError::Resolve { cause: "no addresses".to_owned() },
            });
        }
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let mut last = DialError::Timeout { addr: None };
        for (i, addr) in allowed.iter().enumerate() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            // Each remaining address gets an equal share of what is left (as hyper-util does).
            let share = left / u32::try_from(allowed.len() - i).unwrap_or(u32::MAX);
            match tokio::time::timeout(share, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
                    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                    return Ok((stream, *addr));
                }
                Ok(Err(cause)) => last = DialError::Connect { addr: *addr, cause },
                Err(_) => last = DialError::Timeout { addr: Some(*addr) },
            }
        }
        Err(last)
    }
}

fn resolve_cause(e: &io::Error) -> String {
    // "failed to lookup address information: Name or service not known" → the part that says why.
    let s = e.to_string();
    match s.split_once(": ") {
        Some((_, why)) => why.to_owned(),
        None => s,
    }
}

/// The pooled client's connector: a [`Dialer`] behind hyper-util's connector interface.
#[derive(Clone)]
pub struct Connector(Arc<Dialer>);

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, DialError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dialer = self.0.clone();
        Box::pin(async move {
            let host = uri.host().ok_or(DialError::NoHost)?;
            let port = uri.port_u16().unwrap_or(80);
            dialer.dial(host, port).await.map(|(s, _)| TokioIo::new(s))
        })
    }
}

/// Joins the two halves of an HTTP/1.1 upgrade (`101`, e.g. WebSocket) into a byte tunnel.
async fn join_upgraded(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) {
    let (down, up) = match tokio::try_join!(down, up) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: Request<()>) -> http::request::Parts {
        req.into_parts().0
    }

    #[test]
    fn the_destination_comes_from_the_uri_then_host() {
        let p = parts(Request::get("http://orders:8080/v1/x").header("host", "other").body(()).expect("req"));
        assert_eq!(destination(&p).expect("dest").as_str(), "orders:8080");
        let p = parts(Request::get("/v1/x").header("host", "orders.ns:9090").body(()).expect("req"));
        assert_eq!(destination(&p).expect("dest").as_str(), "orders.ns:9090");
        let p = parts(Request::get("http://user:pw@orders/x").body(()).expect("req"));
        assert_eq!(destination(&p).expect("dest").as_str(), "orders");
    }

    #[test]
    fn plain_https_and_no_destination_are_bad_requests() {
        for req in [
            Request::get("https://orders/x").body(()).expect("req"),
            Request::get("ftp://orders/x").body(()).expect("req"),
            Request::get("/x").body(()).expect("req"),
        ] {
            let err = destination(&parts(req)).expect_err("bad");
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{err}");
        }
    }

    #[test]
    fn the_own_listener_is_a_loop() {
        let d = |own: &str| Dialer {
            policy: ArcSwap::from_pointee(Policy::default()),
            connect_timeout: Duration::from_secs(1),
            own: own.parse().expect("addr"),
        };
        let loopback = d("127.0.0.1:15001");
        assert!(loopback.is_self("127.0.0.1:15001".parse().expect("addr")));
        assert!(loopback.is_self("0.0.0.0:15001".parse().expect("addr")));
        assert!(loopback.is_self("[::ffff:127.0.0.1]:15001".parse().expect("addr")));
        assert!(!loopback.is_self("127.0.0.1:15006".parse().expect("addr")));
        assert!(!loopback.is_self("10.0.0.1:15001".parse().expect("addr")));
        let any = d("0.0.0.0:15001");
        assert!(any.is_self("127.0.0.1:15001".parse().expect("addr")));
        assert!(any.is_self("[::1]:15001".parse().expect("addr")));
    }

    #[test]
    fn literal_ips_are_recognised() {
        assert_eq!(literal_ip("10.0.0.1"), Some("10.0.0.1".parse().expect("ip")));
        assert_eq!(literal_ip("[::1]"), Some("::1".parse().expect("ip")));
        assert_eq!(literal_ip("orders"), None);
    }
}
