//! The inbound stack: a client's request → checks → the app on localhost, and the response back.
//!
//! The stages, outermost first (each one line of why), composed in one service so that a request
//! costs one boxed future and no per-layer clones:
//!
//! 1. **record** — start the access-log/metrics record; it reports once, when the response body
//!    ends or the client goes away (`DC`).
//! 2. **load shed** — over `max_in_flight` answers 503 `UO` at once; nothing queues.
//! 3. **request checks** — a head over `max_header_bytes`/`max_headers` answers 431 `DPE`
//!    ([`crate::proxy::admission`]); the HTTP/1.1 server has checked the framing rules itself,
//!    and the HTTP/2 server its own.
//! 4. **rewrite** — strip hop-by-hop headers, set `x-forwarded-*`, keep or make `x-request-id`.
//! 5. **timeout + forward** — pooled client to the app; connect failures `UF`, resets `UC`, garbage
//!    `UPE`, no response head within `timeouts.response` `UT`.
//! 7. **trailers** — an HTTP/1.1 client that sent `TE: trailers` gets a gRPC response's trailers
//!    declared in `Trailer` (hyper writes only declared trailer fields).

use crate::base::body::{CountingBody, RequestBody};
use crate::base::conn::ConnMeta;
use crate::base::reason::Direction;
use crate::config::Inbound as InboundConfig;
use crate::proxy::admission::{Admission, Entered, SideRules};
use crate::proxy::body::ProxyBody;
use crate::proxy::error::{error_response, note_error, ProxyError};
use crate::proxy::headers;
use crate::telemetry::record::{Finish, RequestRecord};
use crate::telemetry::Telemetry;
use crate::upstream::pool::AppStreams;
use crate::upstream::pool::UpstreamClient;
use http::HeaderName;

static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, Uri};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The one client per app protocol: for an HTTP/1.1 app the codec's pool of TCP connections
/// (the HTTP/1.1 server relays on them, and [`crate::upstream::http1`] sends the HTTP/2
/// server's requests on them); hyper-util's pooled client for h2.
#[derive(Clone)]
enum AppClient {
    Http1(Arc<AppStreams>),
    Http2(Box<UpstreamClient>),
}

impl AppClient {
    fn new(cfg: &InboundConfig) -> Self {
        match cfg.app_protocol {
            crate::config::AppProtocol::Http1 => {
                AppClient::Http1(AppStreams::new(cfg.app.value, &cfg.timeouts, &cfg.limits))
            }
            _ => {
                AppClient::Http2(Box::new(crate::upstream::pool::client(&cfg.timeouts, &cfg.limits, cfg.app_protocol)))
            }
        }
    }
}

/// State shared by every inbound connection of one worker. A clone shares everything, the pool
/// to the app included ([`InboundProxy::sibling`] gives a worker a pool of its own).
#[derive(Clone)]
pub struct InboundProxy {
    client: AppClient,
    pub(crate) app: SocketAddr,
    app_authority: Authority,
    pub(crate) telemetry: Arc<Telemetry>,
    /// The in-flight cap, the head limits and the response timeout, which a reload may change.
    pub(crate) admission: Admission,
    pub(crate) connect_timeout_ms: u64,
    pub(crate) proto: &'static str,
    /// Upstream-failure warnings, rate-limited across every worker.
    errors: Arc<crate::telemetry::ratelimit::RateLimitedLog>,
    /// The app on other ports (transparent mode, [`InboundProxy::for_original`]): a proxy each,
    /// made when the first connection for its port comes. This worker's own.
    ports: Arc<Mutex<HashMap<u16, Arc<InboundProxy>>>>,
}

/// Where a connection redirected to `port` goes: the app's address with that port, or
/// `127.0.0.1` with it when `inbound.app` is not a loopback address (the pod's app listens on
/// localhost).
pub fn app_on_port(app: SocketAddr, port: u16) -> SocketAddr {
    let ip = if app.ip().is_loopback() { app.ip() } else { std::net::Ipv4Addr::LOCALHOST.into() };
    SocketAddr::new(ip, port)
}

impl InboundProxy {
    /// The proxy for one inbound side (`tls`: its listener terminates TLS).
    pub fn new(cfg: &InboundConfig, telemetry: Arc<Telemetry>, tls: bool) -> Result<Arc<Self>, http::Error> {
        let app = cfg.app.value;
        let app_authority = Authority::try_from(app.to_string().as_str())?;
        Ok(Arc::new(Self {
            client: AppClient::new(cfg),
            app,
            app_authority,
            telemetry,
            admission: Admission::new(SideRules::new(&cfg.timeouts, &cfg.limits)),
            connect_timeout_ms: cfg.timeouts.connect.value.as_millis() as u64,
            proto: if tls { "https" } else { "http" },
            errors: Arc::new(crate::telemetry::ratelimit::RateLimitedLog::new(Duration::from_secs(5))),
            ports: Arc::default(),
        }))
    }

    /// Another worker's proxy: the same configuration, telemetry, connection tracker and
    /// `max_in_flight` budget (shared), with its own connection pool to the app, so a worker's
    /// requests never wait on a connection another thread drives.
    pub fn sibling(&self, cfg: &InboundConfig) -> Arc<Self> {
        Arc::new(Self { client: AppClient::new(cfg), ports: Arc::default(), ..self.clone() })
    }

    /// The proxy for a connection iptables redirected from `original` (transparent mode): the
    /// app on the same port ([`app_on_port`]), so an app listening on several ports needs no
    /// configuration. This proxy itself when that is `inbound.app`; otherwise one per port, with
    /// its own pool, sharing everything else (the `max_in_flight` budget included).
    pub fn for_original(self: &Arc<Self>, original: SocketAddr) -> Arc<Self> {
        let app = app_on_port(self.app, original.port());
        if app == self.app {
            return self.clone();
        }
        let mut ports = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = ports.get(&app.port()) {
            return p.clone();
        }
        // A socket address is always a valid authority.
        let Ok(app_authority) = Authority::try_from(app.to_string().as_str()) else { return self.clone() };
        let client = match &self.client {
            AppClient::Http1(streams) => AppClient::Http1(streams.to(app)),
            // hyper's client pools by authority already.
            AppClient::Http2(client) => AppClient::Http2(client.clone()),
        };
        let proxy = Arc::new(Self { client, app, app_authority, ports: Arc::default(), ..(**self).clone() });
        ports.insert(app.port(), proxy.clone());
        proxy
    }

    /// Idle keep-alive connections in this proxy's HTTP/1.1 pools to the app (0 for an h2 app,
    /// whose client multiplexes).
    pub fn app_idle_connections(&self) -> usize {
        match &self.client {
            AppClient::Http1(streams) => streams.idle_count(),
            AppClient::Http2(_) => 0,
        }
    }

    /// The codec's connections to the app, when the app speaks HTTP/1.1 (the codec serves
    /// HTTP/1.1 clients of such an app; see [`crate::http1::server`]).
    pub fn codec_streams(&self) -> Option<&Arc<AppStreams>> {
        match &self.client {
            AppClient::Http1(streams) => Some(streams),
            AppClient::Http2(_) => None,
        }
    }

    /// The app's address as a `Host` value (for a request that names none).
    pub(crate) fn app_authority(&self) -> &str {
        self.app_authority.as_str()
    }

    /// Requests in flight right now.
    pub fn in_flight(&self) -> usize {
        self.admission.in_flight()
    }

    /// Puts a reloaded configuration's limits and response timeout in force for the requests
    /// admitted from now on (every worker's proxy shares them).
    pub fn reconfigure(&self, cfg: &InboundConfig) {
        self.admission.set(SideRules::new(&cfg.timeouts, &cfg.limits));
    }
}

impl InboundProxy {
    /// One request, from whichever server read it (hyper's, or [`crate::h2::server`]).
    ///
    /// Everything up to the upstream send is synchronous; only forwarding is a future, and a
    /// small one (the server keeps the returned future in a per-connection or per-stream slot,
    /// so a request answered here allocates nothing for it).
    pub(crate) fn call(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        meta: &ConnMeta,
        peer_ip: Option<&HeaderValue>,
    ) -> InboundFuture {
        match self.head(req, meta, peer_ip) {
            Ok(fwd) => InboundFuture::Forward(Box::pin(self.clone().forward(fwd))),
            Err(resp) => InboundFuture::Ready(Some(resp)),
        }
    }
}

/// The response future of [`InboundProxy::call`]: an answer made at once (refusals), or the
/// request on its way to the app.
// hyper keeps this in one allocation per connection, so an inline answer costs no allocation.
#[allow(clippy::large_enum_variant)]
pub enum InboundFuture {
    Ready(Option<Response<ProxyBody>>),
    Forward(Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>),
}

impl Future for InboundFuture {
    type Output = Result<Response<ProxyBody>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            // Polled again after it completed (hyper never does): it stays pending.
            InboundFuture::Ready(r) => r.take().map_or(std::task::Poll::Pending, |r| std::task::Poll::Ready(Ok(r))),
            InboundFuture::Forward(f) => f.as_mut().poll(cx).map(Ok),
        }
    }
}

/// A request that passed every check, rewritten for the app, with what its response needs.
struct Forwarding {
    req: Request<CountingBody>,
    finish: Finish,
    /// An HTTP/1.1 client that accepts trailers.
    h1_trailers: bool,
    /// `timeouts.response` as it was when the request was admitted.
    response_timeout: Duration,
}

impl InboundProxy {
    /// The synchronous part of a request: record, load shed, checks and rewriting. `Err` is an
    /// answer made here (a refusal), already carrying its completion report.
    // Both sides are moved once, into the caller's future or response slot.
    #[allow(clippy::result_large_err)]
    fn head(
        &self,
        req: Request<RequestBody>,
        meta: &ConnMeta,
        peer_ip: Option<&HeaderValue>,
    ) -> Result<Forwarding, Response<ProxyBody>> {
        let peer = meta.peer;
        let (mut parts, body) = req.into_parts();
        let mut record = RequestRecord::start(Direction::Inbound, peer, &parts);
        record.upstream_host = Some(self.app);
        record.tls = meta.tls.clone();

        // Load shed: never queue beyond max_in_flight.

        // From here on the request is reported exactly once, whichever way it ends.
        let Entered { mut finish, rules, over } = self.admission.enter(record, None, &self.telemetry);
        if let Some(err) = over {
            return Err(self.fail(err, finish));
        }

        // Request-head limits (hyper's own limits sit above these as a backstop).
        if let Some(err) = rules.parts(&parts) {
            return Err(self.fail(err, finish));
        }

        headers::strip_hop_by_hop(&mut parts.headers, false);
        // An HTTP/1.1 client that accepts trailers (only `TE: trailers` survives the strip).
        let h1_trailers = parts.version < http::Version::HTTP_2 && parts.headers.contains_key(header::TE);
        match peer_ip {
            Some(ip) => headers::set_forwarded_ip(&mut parts.headers, ip, self.proto),
            None => headers::set_forwarded(&mut parts.headers, peer, self.proto),
        }
        // Only tandem vouches for client certificates: a client-supplied XFCC never passes.
        parts.headers.remove(&X_FORWARDED_CLIENT_CERT);
        if let Some(xfcc) = meta.tls.as_ref().and_then(|t| t.xfcc.clone()) {
            parts.headers.insert(&X_FORWARDED_CLIENT_CERT, xfcc);
        }
        let request_id = headers::ensure_request_id(&mut parts.headers);
        if let Some(r) = finish.record_mut() {
            r.request_id = Some(request_id);
            r.x_forwarded_for = parts.headers.get(&headers::X_FORWARDED_FOR).cloned();
        }
        // An HTTP/2 client names the authority in the URI, not in Host; the app gets it as Host.
        if !parts.headers.contains_key(header::HOST) {
            if let Some(a) = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
                parts.headers.insert(header::HOST, a);
            }
        }
        let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = match &self.client {
            // HTTP/1.1 to the app: origin-form, as it goes on the wire.
            AppClient::Http1(..) => Uri::from(path),
            // h2 needs :scheme and :authority.
            AppClient::Http2(_) => {
                let mut uri = http::uri::Parts::default();
                uri.scheme = Some(Scheme::HTTP);
                uri.authority = Some(self.app_authority.clone());
                uri.path_and_query = Some(path);
                match Uri::from_parts(uri) {
                    Ok(u) => u,
                    Err(e) => {
                        return Err(self
                            .fail(ProxyError::BadRequest { what: format!("cannot build upstream URI: {e}") }, finish));
                    }
                }
            }
        };
        parts.version = http::Version::HTTP_11;
        parts.extensions.clear();

        let received = (!http_body::Body::is_end_stream(&body)).then(|| Arc::new(AtomicU64::new(0)));
        let body = CountingBody::new(body, received.clone());
        finish.set_received(received);
        let response_timeout = rules.response_timeout;
        Ok(Forwarding { req: Request::from_parts(parts, body), finish, h1_trailers, response_timeout })
    }

    /// Sends a request the HTTP/1.1 server already admitted, checked and rewrote (`parts`:
    /// origin-form target, its fields as they go to the app) through the app's client: the
    /// path of HTTP/1.x requests to an app that speaks h2. `h1_trailers`: the client accepts
    /// trailers; `response_timeout`: the one in force when the request was admitted.
    pub(crate) fn forward_checked(
        self: &Arc<Self>,
        mut parts: http::request::Parts,
        body: RequestBody,
        mut finish: Finish,
        h1_trailers: bool,
        response_timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>> {
        if let AppClient::Http2(_) = &self.client {
            let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = Some(self.app_authority.clone());
            uri.path_and_query = Some(path);
            match Uri::from_parts(uri) {
                Ok(u) => parts.uri = u,
                Err(e) => {
                    let err = ProxyError::BadRequest { what: format!("cannot build upstream URI: {e}") };
                    let resp = self.fail(err, finish);
                    return Box::pin(async move { resp });
                }
            }
        }
        let received = (!http_body::Body::is_end_stream(&body)).then(|| Arc::new(AtomicU64::new(0)));
        let body = CountingBody::new(body, received.clone());
        finish.set_received(received);
        let fwd = Forwarding { req: Request::from_parts(parts, body), finish, h1_trailers, response_timeout };
        Box::pin(self.clone().forward(fwd))
    }

    /// Sends a checked request to the app and turns its answer into the client's response.
    ///
    /// A plain function that returns the future, not an `async fn`: an `async fn` keeps its
    /// arguments in its state for its whole life, next to the pieces moved out of them, and an
    /// inner `async fn send` would do the same with the request. Destructured here and sent from
    /// one `async` block, the future that every request allocates stays under the allocator's
    /// per-thread cache limit (768 bytes; it was 1,592, and above 1,032 every request paid a
    /// trip through the allocator's bins and, on free, its consolidation). It is 720 bytes with
    /// the streaming client half, whose `send` borrows the head and takes the body; taking the
    /// whole request by value made it 1,536.
    fn forward(self: Arc<Self>, fwd: Forwarding) -> impl Future<Output = Response<ProxyBody>> + Send + 'static {
        let Forwarding { req, finish, h1_trailers, response_timeout } = fwd;
        // The head and the body apart, each held once: the client half borrows the head and
        // takes the body (an `async fn` argument would be a second copy for the request's life).
        let (head, body) = req.into_parts();
        let mut body = (!http_body::Body::is_end_stream(&body)).then_some(body);
        async move {
            let mut finish = finish;
            let sent_at = Instant::now();
            // One clock reading for both the service time and the deadline.
            let deadline = tokio::time::Instant::from_std(sent_at) + response_timeout;
            let sent = match &self.client {
                // To an HTTP/1.1 app every request goes on the codec's connections
                // ([`crate::upstream::http1`]), its body streamed.
                AppClient::Http1(streams) => {
                    let send = async {
                        crate::upstream::http1::send(streams, &head, &mut body).await.map_err(|e| self.app_error(e))
                    };
                    match tokio::time::timeout_at(deadline, send).await {
                        Ok(Ok(resp)) => Ok(ProxyBody::split_app(resp)),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(self.response_timed_out(response_timeout)),
                    }
                }
                // Boxed: hyper's future would make every request's future several times larger.
                AppClient::Http2(client) => {
                    let body = body.take().unwrap_or_else(|| CountingBody::new(RequestBody::Empty, None));
                    let req = Request::from_parts(head, body);
                    match tokio::time::timeout_at(deadline, Box::pin(client.request(req))).await {
                        Ok(Ok(resp)) => Ok(ProxyBody::split_upstream(resp)),
                        Ok(Err(e)) => Err(ProxyError::from_client(&e, self.app, self.connect_timeout_ms)),
                        Err(_) => Err(self.response_timed_out(response_timeout)),
                    }
                }
            };
            let (mut parts, body) = match sent {
                Ok(sent) => sent,
                Err(e) => return self.fail(e, finish),
            };
            if let Some(r) = finish.record_mut() {
                r.upstream_service_time = Some(sent_at.elapsed());
                r.response_code = parts.status.as_u16();
                r.note_grpc_status(&parts.headers);
            }
            headers::strip_hop_by_hop(&mut parts.headers, false);
            if h1_trailers {
                declare_grpc_trailers(&mut parts.headers);
            }
            Response::from_parts(parts, body.with_finish(finish))
        }
    }

    /// The error for a request the codec's client could not get an answer to.
    pub(crate) fn app_error(&self, err: crate::upstream::http1::SendError) -> ProxyError {
        let upstream = self.app.to_string();
        match err {
            crate::upstream::http1::SendError::Connect(io) => {
                ProxyError::from_connect(&io, self.app, self.connect_timeout_ms)
            }
            crate::upstream::http1::SendError::Closed => ProxyError::UpstreamClosed { upstream },
            crate::upstream::http1::SendError::Protocol(cause) => ProxyError::UpstreamProtocol { upstream, cause },
            crate::upstream::http1::SendError::ClientBody => {
                ProxyError::BadRequest { what: "the request body failed before the app answered".into() }
            }
        }
    }

    /// The error for an app that did not answer within `timeout` (the request's
    /// `timeouts.response`; `UT`).
    pub(crate) fn response_timed_out(&self, timeout: Duration) -> ProxyError {
        ProxyError::UpstreamTimeout { upstream: self.app.to_string(), timeout_ms: timeout.as_millis() as u64 }
    }

    /// Answers with tandem's own error response (in gRPC's form to a gRPC request), logging
    /// upstream failures (rate-limited).
    fn fail(&self, err: ProxyError, mut finish: Finish) -> Response<ProxyBody> {
        let grpc = self.fail_record(&err, &mut finish);
        let resp: Response<ProxyBody> = error_response(&err, grpc);
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, body.with_finish(finish))
    }

    /// Notes an error answer in the request's record, and logs upstream failures
    /// (rate-limited). True if the request is gRPC (answer it in that form).
    pub(crate) fn fail_record(&self, err: &ProxyError, finish: &mut Finish) -> bool {
        let grpc = note_error(err, finish.record_mut());
        if err.status().is_server_error() {
            self.errors.warn(err.reason().as_str(), err);
        }
        grpc
    }
}

/// An h2c gRPC app declares no trailers (HTTP/2 needs no declaration); an HTTP/1.1 client that
/// accepts trailers is told of the gRPC ones in `Trailer`, as HTTP/1.1 expects.
fn declare_grpc_trailers(headers: &mut http::HeaderMap) {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().get(..16).is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc")));
    if grpc && !headers.contains_key(header::TRAILER) {
        headers.insert(header::TRAILER, HeaderValue::from_static("grpc-status, grpc-message, grpc-status-details-bin"));
    }
}
