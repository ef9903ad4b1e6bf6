//! The record of one request as it crosses the proxy, and its completion report: when the response
//! ends (or the client goes away) the record goes once to the metrics and the access log.

use crate::base::grpc;
use crate::base::reason::Direction;
use crate::base::reason::Reason;
use crate::telemetry::Telemetry;
use http::{HeaderValue, Method, Version};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// The request id header, kept when the client sent one and generated otherwise.
pub static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
/// Looked up by name: a `&str` key is parsed on every lookup (about 400 instructions a request).
pub static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
/// Looked up by a ready-made name: a `&str` key is parsed and validated on every lookup.
static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

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
    /// The target's bytes when they are not a valid URI path (`"`, `{`, `\\`, … which HTTP/1.1
    /// servers accept and forward): logged as they came, escaped.
    pub raw_path: Option<bytes::Bytes>,
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
    pub tls: Option<Arc<crate::base::conn::ConnTls>>,
    /// A gRPC request ([`grpc::is_grpc`]): tandem answers it in gRPC's form, and its line
    /// carries `grpc_status`.
    pub grpc: bool,
    /// The `grpc-status` the client was given: the app's (in its answer's head or trailers) or
    /// that of tandem's own answer.
    pub grpc_status: Option<u16>,
    /// A connection relayed as opaque TCP (transparent mode), not a request: logged with
    /// protocol `tcp` and no method ([`crate::telemetry::access_log`]).
    pub tcp: bool,
    /// The strings already sit in a buffer of the record's own ([`RequestRecord::set_strings`]):
    /// [`RequestRecord::detach`] has nothing to do.
    pub detached: bool,
}

/// A request's logged strings, as [`RequestRecord::set_strings`] takes them.
#[derive(Default)]
pub struct Strings<'a> {
    pub path: &'a [u8],
    pub authority: Option<&'a [u8]>,
    /// Concatenated (an appended `x-forwarded-for` comes in parts).
    pub x_forwarded_for: &'a [&'a [u8]],
    pub user_agent: Option<&'a [u8]>,
    pub request_id: Option<&'a [u8]>,
    pub traceparent: Option<&'a [u8]>,
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
            method: req.method.clone(),
            authority,
            path: req.uri.path_and_query().cloned(),
            protocol: req.version,
            // As received; the stack replaces both with what it forwards (the appended
            // x-forwarded-for, a generated request id), so a request refused before that still
            // carries the client's values.
            x_forwarded_for: req.headers.get(&X_FORWARDED_FOR).cloned(),
            user_agent: req.headers.get(http::header::USER_AGENT).cloned(),
            request_id: req.headers.get(&X_REQUEST_ID).filter(|v| !v.is_empty()).cloned(),
            traceparent: req.headers.get(&TRACEPARENT).cloned(),
            grpc: req.headers.get(http::header::CONTENT_TYPE).is_some_and(|v| grpc::is_grpc(v.as_bytes())),
            ..Self::empty(direction, peer)
        }
    }

    /// A record with no request strings yet (method `GET` until set): what
    /// [`crate::http1::server`] fills from the head it parsed itself.
    pub fn empty(direction: Direction, peer: SocketAddr) -> Self {
        Self {
            start: SystemTime::now(),
            started: Instant::now(),
            direction,
            method: Method::GET,
            authority: None,
            path: None,
            raw_path: None,
            protocol: Version::HTTP_11,
            response_code: 0,
            response_flags: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration: std::time::Duration::ZERO,
            upstream_service_time: None,
            upstream_host: None,
            upstream_cluster: "app",
            downstream_remote_address: peer,
            x_forwarded_for: None,
            user_agent: None,
            request_id: None,
            traceparent: None,
            tls: None,
            grpc: false,
            grpc_status: None,
            tcp: false,
            detached: false,
        }
    }

    /// Takes the app's `grpc-status` from an answer's head (a trailers-only answer) or its
    /// trailers, for a gRPC request; nothing is looked up for any other.
    pub fn note_grpc_status(&mut self, fields: &http::HeaderMap) {
        if self.grpc {
            if let Some(s) = fields.get(&GRPC_STATUS).and_then(|v| grpc::parse_status(v.as_bytes())) {
                self.grpc_status = Some(s);
            }
        }
    }

    /// Sets the logged strings from `s`, copied into one buffer of the record's own (one
    /// allocation of their total size; values that are not valid header text are left out).
    /// The logged path: the URI's path and query, or the target's raw bytes.
    pub fn path_bytes(&self) -> Option<&[u8]> {
        self.path.as_ref().map(|p| p.as_str().as_bytes()).or(self.raw_path.as_deref())
    }

    pub fn set_strings(&mut self, s: &Strings<'_>) {
        let parts = [s.authority, s.user_agent, s.request_id, s.traceparent];
        let xff_len: usize = s.x_forwarded_for.iter().map(|p| p.len()).sum();
        let len = s.path.len() + xff_len + parts.iter().flatten().map(|p| p.len()).sum::<usize>();
        let mut buf = bytes::BytesMut::with_capacity(len);
        buf.extend_from_slice(s.path);
        for p in parts.iter().flatten() {
            buf.extend_from_slice(p);
        }
        for p in s.x_forwarded_for {
            buf.extend_from_slice(p);
        }
        let all = buf.freeze();
        let mut at = s.path.len();
        self.path =
            (!s.path.is_empty()).then(|| http::uri::PathAndQuery::from_maybe_shared(all.slice(..at)).ok()).flatten();
        self.raw_path = (self.path.is_none() && !s.path.is_empty()).then(|| all.slice(..at));
        let mut next = |part: Option<&[u8]>| {
            let n = part?.len();
            let v = HeaderValue::from_maybe_shared(all.slice(at..at + n)).ok();
            at += n;
            v
        };
        self.authority = next(s.authority);
        self.user_agent = next(s.user_agent);
        self.request_id = next(s.request_id);
        self.traceparent = next(s.traceparent);
        self.x_forwarded_for = (xff_len > 0).then(|| HeaderValue::from_maybe_shared(all.slice(at..)).ok()).flatten();
        self.detached = true;
    }

    /// Copies the record's strings (authority, path, and the logged headers) into one small
    /// buffer of its own, so that it no longer shares the request head's bytes.
    ///
    /// Header values and the path are slices of the connection's read buffer (hyper's, 8 KiB or
    /// more). A record handed to the access-log writer lives until the writer's next batch, and
    /// while it does, that whole buffer stays allocated and hyper has to allocate a fresh one for
    /// the connection: under load that pinned megabytes and made every request's buffer cold. The
    /// copy is one allocation of the strings' own size.
    pub fn detach(&mut self) {
        if self.detached {
            return;
        }
        let path_len = self.path.as_ref().map_or(0, |p| p.as_str().len());
        let values = [
            &mut self.authority,
            &mut self.x_forwarded_for,
            &mut self.user_agent,
            &mut self.request_id,
            &mut self.traceparent,
        ];
        let len = path_len + values.iter().map(|v| v.as_ref().map_or(0, |v| v.len())).sum::<usize>();
        if len == 0 {
            return;
        }
        let mut buf = bytes::BytesMut::with_capacity(len);
        if let Some(p) = &self.path {
            buf.extend_from_slice(p.as_str().as_bytes());
        }
        for v in values.iter().filter_map(|v| v.as_ref()) {
            buf.extend_from_slice(v.as_bytes());
        }
        let all = buf.freeze();
        let mut at = 0;
        if let Some(p) = &mut self.path {
            // Valid already (it was parsed from these bytes); a failure keeps the original.
            if let Ok(copy) = http::uri::PathAndQuery::from_maybe_shared(all.slice(at..at + path_len)) {
                *p = copy;
            }
            at += path_len;
        }
        for v in values.into_iter().filter_map(|v| v.as_mut()) {
            let n = v.len();
            if let Ok(mut copy) = HeaderValue::from_maybe_shared(all.slice(at..at + n)) {
                copy.set_sensitive(v.is_sensitive());
                *v = copy;
            }
            at += n;
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

    /// Counts the request body's bytes through `received` (see [`crate::base::body::CountingBody`]).
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

    /// Reports the request: `sent` body bytes went downstream; `client_gone` if its connection
    /// went before the end: `DC` (the client left), or `LR` once tandem is closing connections
    /// itself ([`Telemetry::begin_local_reset`]).
    pub fn finish(mut self, sent: u64, client_gone: bool) {
        self.report(sent, client_gone);
    }

    fn report(&mut self, sent: u64, client_gone: bool) {
        // The in-flight slot is given back after the line is queued, so whoever waits for the
        // count to reach zero (the exit, before it flushes the access log) finds the line there.
        let _slot = self.guard.take();
        let Some(mut r) = self.record.take() else { return };
        r.bytes_sent = sent;
        r.duration = r.started.elapsed();
        if let Some(c) = &self.received {
            r.bytes_received = c.load(Ordering::Relaxed);
        }
        if client_gone && r.response_flags.is_none() {
            r.response_flags = Some(self.telemetry.cut_reason());
        }
        // A gRPC request that ended with no status sent (the client left, tandem cut it, the
        // app's body broke off): the status of its reason, from the one table.
        if r.grpc && r.grpc_status.is_none() {
            if let Some(reason) = r.response_flags {
                r.grpc_status = Some(grpc::status_for(reason, r.response_code));
            }
        }
        self.telemetry.request_finished(&r);
        self.telemetry.log(r);
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        // Dropped unreported: the response future was cancelled because the connection went (the
        // client left, or tandem closed it at the drain deadline).
        self.report(0, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::access_log::{format_json, format_text};
    use bytes::Bytes;

    /// A record whose strings are slices of `head`, the way hyper's are slices of its read buffer.
    fn record_sharing(head: &Bytes) -> RequestRecord {
        let slice = |s: &str| {
            let at = head.windows(s.len()).position(|w| w == s.as_bytes()).expect("in head");
            head.slice(at..at + s.len())
        };
        let mut req = http::Request::builder()
            .uri(http::Uri::from_maybe_shared(slice("/orders/7?page=2")).expect("uri"))
            .body(())
            .expect("request")
            .into_parts()
            .0;
        for (name, value) in [
            ("host", "shop.example:8080"),
            ("user-agent", "curl/8.5.0"),
            ("x-forwarded-for", "10.0.0.9"),
            ("x-request-id", "r-1"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ] {
            let mut v = HeaderValue::from_maybe_shared(slice(value)).expect("value");
            v.set_sensitive(name == "x-forwarded-for");
            req.headers.insert(http::HeaderName::from_static(name), v);
        }
        RequestRecord::start(Direction::Inbound, "10.0.0.9:4000".parse().expect("addr"), &req)
    }

    #[test]
    fn detach_keeps_every_logged_string_and_lets_the_head_buffer_go() {
        let head = Bytes::from(
            b"GET /orders/7?page=2 HTTP/1.1\r\nhost: shop.example:8080\r\nuser-agent: curl/8.5.0\r\n\
              x-forwarded-for: 10.0.0.9\r\nx-request-id: r-1\r\n\
              traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"
                .to_vec(),
        );
        let mut r = record_sharing(&head);
        assert!(!head.is_unique(), "the record holds slices of the head");
        let (mut json, mut text) = (Vec::new(), Vec::new());
        format_json(&r, &mut json);
        format_text(&r, &mut text);

        r.detach();
        assert!(head.is_unique(), "after detach nothing refers to the head buffer");
        let (mut json_after, mut text_after) = (Vec::new(), Vec::new());
        format_json(&r, &mut json_after);
        format_text(&r, &mut text_after);
        assert_eq!(String::from_utf8_lossy(&json_after), String::from_utf8_lossy(&json));
        assert_eq!(String::from_utf8_lossy(&text_after), String::from_utf8_lossy(&text));
        assert!(String::from_utf8_lossy(&json).contains("/orders/7?page=2"));
        assert_eq!(r.trace_id(), Some("0af7651916cd43dd8448eb211c80319c"));
        assert!(r.x_forwarded_for.as_ref().expect("xff").is_sensitive(), "the sensitive flag is kept");
    }

    #[test]
    fn detach_of_a_record_without_strings_changes_nothing() {
        let req = http::Request::builder().uri("*").body(()).expect("request").into_parts().0;
        let mut r = RequestRecord::start(Direction::Outbound, "127.0.0.1:1".parse().expect("addr"), &req);
        r.path = None;
        r.detach();
        assert!(r.path.is_none() && r.authority.is_none() && r.user_agent.is_none());
    }
}
