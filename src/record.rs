//! The record of one request as it crosses the proxy, and its completion report: when the response
//! ends (or the client goes away) the record goes once to the metrics and the access log.

use crate::error::Reason;
use crate::telemetry::Telemetry;
use bytes::Bytes;
use http::{HeaderValue, Method, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

/// Looked up by a ready-made name: a `&str` key is parsed and validated on every lookup.
static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Which side of the pod a request crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// What is known about one request; cheap to fill (header values are reference-counted bytes).
#[derive(Debug)]
pub struct RequestRecord {
    pub start: SystemTime,
    pub started: Instant,
    pub direction: Direction,
    pub method: Method,
    pub authority: Option<HeaderValue>,
    /// Path and query as received.
    pub path: Option<http::uri::PathAndQuery>,
    pub protocol: Version,
    pub response_code: u16,
    pub response_flags: Option<Reason>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Whole request, until the response body ended.
    pub duration: std::time::Duration,
    /// From sending the request upstream until its response head arrived.
    pub upstream_service_time: Option<std::time::Duration>,
    pub upstream_host: Option<SocketAddr>,
    /// The upstream's name as a metrics label (`app` inbound).
    pub upstream_cluster: &'static str,
    pub downstream_remote_address: SocketAddr,
    pub x_forwarded_for: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub request_id: Option<HeaderValue>,
    pub traceparent: Option<HeaderValue>,
    /// What TLS negotiated on the downstream connection (absent in plaintext).
    pub tls: Option<Arc<crate::tls::ConnTls>>,
}

impl RequestRecord {
    /// Starts a record for a request from `peer`.
    pub fn start(direction: Direction, peer: SocketAddr, req: &http::request::Parts) -> Self {
        let authority = req
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| req.headers.get(http::header::HOST).cloned());
        Self {
            start: SystemTime::now(),
            started: Instant::now(),
            direction,
            method: req.method.clone(),
            authority,
            path: req.uri.path_and_query().cloned(),
            protocol: req.version,
            response_code: 0,
            response_flags: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration: std::time::Duration::ZERO,
            upstream_service_time: None,
            upstream_host: None,
            upstream_cluster: "app",
            downstream_remote_address: peer,
            // As received; the stack replaces both with what it forwards (the appended
            // x-forwarded-for, a generated request id), so a request refused before that still
            // carries the client's values.
            x_forwarded_for: req.headers.get("x-forwarded-for").cloned(),
            user_agent: req.headers.get(http::header::USER_AGENT).cloned(),
            request_id: req.headers.get(&crate::forward::X_REQUEST_ID).filter(|v| !v.is_empty()).cloned(),
            traceparent: req.headers.get(&TRACEPARENT).cloned(),
            tls: None,
        }
    }

    /// The W3C trace id out of `traceparent` (`00-<trace-id>-<span-id>-<flags>`), if well formed.
    pub fn trace_id(&self) -> Option<&str> {
        let tp = self.traceparent.as_ref()?.to_str().ok()?;
        let mut parts = tp.split('-');
        let _version = parts.next()?;
        let id = parts.next()?;
        (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    }
}

/// The pending completion of one request: reported exactly once, by [`Finish::finish`] or on drop.
pub struct Finish {
    /// Boxed: the record is a few hundred bytes and travels with the response body (and to the
    /// access-log writer) by pointer instead of being copied at every move.
    record: Option<Box<RequestRecord>>,
    received: Option<Arc<AtomicU64>>,
    telemetry: Arc<Telemetry>,
    /// Released with the report: the request stops counting against `max_in_flight`.
    guard: Option<InFlight>,
}

/// Holds one slot of a listener's `max_in_flight` until the request is fully done.
pub struct InFlight(pub Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Finish {
    pub fn new(record: RequestRecord, received: Option<Arc<AtomicU64>>, telemetry: Arc<Telemetry>) -> Self {
        telemetry.request_started(record.direction);
        Self { record: Some(Box::new(record)), received, telemetry, guard: None }
    }

    /// Counts the request body's bytes through `received` (see [`CountingBody`]).
    pub fn set_received(&mut self, received: Option<Arc<AtomicU64>>) {
        self.received = received;
    }

    /// Attaches the in-flight slot, released when the request is reported.
    pub fn with_guard(mut self, guard: InFlight) -> Self {
        self.guard = Some(guard);
        self
    }

    /// The record, for filling in the response side.
    pub fn record_mut(&mut self) -> Option<&mut RequestRecord> {
        self.record.as_deref_mut()
    }

    /// The upstream's body failed mid-stream: the response is cut (UC).
    pub fn upstream_body_failed(&mut self) {
        if let Some(r) = self.record.as_mut() {
            r.response_flags.get_or_insert(Reason::UC);
        }
    }

    /// Reports the request: `sent` body bytes went downstream; `client_gone` if the client left
    /// before the end (DC).
    pub fn finish(mut self, sent: u64, client_gone: bool) {
        self.report(sent, client_gone);
    }

    fn report(&mut self, sent: u64, client_gone: bool) {
        self.guard.take();
        let Some(mut r) = self.record.take() else { return };
        r.bytes_sent = sent;
        r.duration = r.started.elapsed();
        if let Some(c) = &self.received {
            r.bytes_received = c.load(Ordering::Relaxed);
        }
        if client_gone && r.response_flags.is_none() {
            r.response_flags = Some(Reason::DC);
        }
        self.telemetry.request_finished(&r);
        self.telemetry.log(r);
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        // Dropped unreported: the response future was cancelled because the client went away.
        self.report(0, true);
    }
}

/// The request body on its way upstream, counting the bytes it carries.
pub struct CountingBody {
    inner: Incoming,
    count: Option<Arc<AtomicU64>>,
}

impl CountingBody {
    /// Wraps a request body; `count` is `None` for bodies known to be empty.
    pub fn new(inner: Incoming, count: Option<Arc<AtomicU64>>) -> Self {
        Self { inner, count }
    }
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(f))), Some(count)) = (&polled, &self.count) {
            if let Some(d) = f.data_ref() {
                count.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
