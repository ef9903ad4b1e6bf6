//! tandem's HTTP/1.x server for the inbound listener (the codec): every HTTP/1.0 and HTTP/1.1
//! request on that listener, plaintext or TLS, is read, checked and answered here; nothing else
//! parses the stream. A request head is parsed in place, checked, rewritten straight into the
//! upstream head and written to a pooled TCP connection to an HTTP/1.1 app; the answer's head is
//! parsed and rewritten the same way and its body relayed from one buffer per connection.
//! Nothing is built per request beyond the access-log record. To an app that speaks h2, the
//! rewritten head goes through the proxy's client for it instead, the body through a pipe
//! ([`Conn::forward_service`]).
//!
//! # What it refuses, what it hands over
//!
//! Every rule of RFC 9112 about a request's framing and target is checked here, for every
//! request of a connection (the answer is tandem's, with `x-tandem-error: DPE`, logged and
//! counted like any request): a head httparse refuses (400), one over the buffer (414 while the
//! request line has not ended, 431 after), one not complete within `timeouts.header_read` (408);
//! `CONNECT` (405); a target that is not origin form, absolute form or `*` for `OPTIONS` (400);
//! no `Host` in HTTP/1.1, two, or an invalid one (400); `Content-Length` invalid or repeated,
//! or beside `Transfer-Encoding`, or `Transfer-Encoding` in HTTP/1.0 (400, and the connection
//! closes); a transfer coding other than `chunked` (501) or `chunked` not applied exactly once
//! and last (400); an expectation other than `100-continue` (417); a `Connection` header naming
//! more than [`crate::base::fields::MAX_NAMED`] fields (400). An absolute-form target's
//! authority replaces `Host` (RFC 9112 section 3.2.2); `Connection` cannot remove `Host` or
//! `Content-Length`; an HTTP/1.0 request without `Host` gets the app's authority. A chunked body
//! is relayed as it comes and its framing checked on the way ([`crate::base::framing`]): broken
//! framing is answered 400 before the app answers. `Expect: 100-continue` is answered by tandem
//! once the app's connection is there. An `Upgrade` (not h2c) goes to the app on a connection of
//! its own; a `101` turns the client's connection into a tunnel, logged when it ends with the
//! bytes each way. Only a connection that starts with the HTTP/2 preface line (however TCP
//! splits it) is handed over: to [`crate::h2::server`], which checks the rest of the preface.
//!
//! # The request path
//!
//! The same checks, rewrites and reports as [`crate::proxy::inbound`] (and in the same order): the
//! access-log/metrics record, load shedding over `max_in_flight` (503 `UO`), the configured
//! head limits (431 `DPE`), hop-by-hop removal both ways (`Connection` and the fields it names,
//! `Keep-Alive`, `Proxy-Connection`, `TE` except `TE: trailers`, `Upgrade`), `x-forwarded-for`
//! appended, `x-forwarded-proto` set, a client's `x-forwarded-client-cert` replaced by tandem's
//! own, `x-request-id` kept or made, `traceparent` untouched. Header names and values pass byte
//! for byte, in order.
//!
//! Responses: interim `1xx` answers are dropped (the client did not ask for them); a body framed
//! by `Content-Length` or chunked encoding is relayed as it arrives (chunked bytes, trailers
//! included, pass unchanged: the decoder only finds the end); a body that ends with the app's
//! connection is relayed and the client's connection closes after it (`Connection: close`).
//! Upstream failures map to the same reasons as every other path: `UF` (connect), `UC` (closed or
//! reset before a full response; a body cut short closes the client's connection), `UPE` (not a
//! valid response head, or one over 1 MiB), `UT` (no response head within `timeouts.response`).
//! A pooled connection the app closed while it was idle is noticed before use. One that fails
//! while the request is written, or (for an idempotent method, RFC 9110 section 9.2.2) before
//! any response byte, is replaced by another, when the request's bytes are all still at hand; a
//! fresh connection is not retried. A request body and an answer's body get `timeouts.idle` per
//! step (a stalled upload is answered 408 `DPE`, a stalled answer is cut as `UC`). After an app
//! answers before the whole body was sent, neither connection is used again.
//!
//! # Connection rules
//!
//! Between requests a connection waits at most `timeouts.idle`; once a request's first byte has
//! arrived its head must be complete within `timeouts.header_read`, or it is answered 408 and the
//! connection closes. A client that goes away while its request is in flight is reported `DC` and the
//! app's connection is dropped. Once a stop begins, every response carries `Connection: close`
//! and an idle connection is closed after [`DRAIN_IDLE_GRACE`] without a new request (the
//! [`crate::lifecycle::shutdown`] rules).

use crate::base::body::{RecvBody, RecvShared, RequestBody};
use crate::base::conn::ConnMeta;
use crate::base::conn::H2_PREFACE_LINE as PREFACE_LINE;
use crate::base::fields::{eq, hop_by_hop, is_idempotent, parse_length, push_decimal, push_field, tokens, Named};
use crate::base::framing::{
    final_answer, ChunkScan, Framing, HEAD_TOO_LARGE, MAX_FIELDS, MAX_RESPONSE_HEAD, READ_SIZE,
};
use crate::base::framing::{put_chunk_size, put_last_chunk, Chunk};
use crate::base::reason::Direction;
use crate::http1::request::{absolute_form, head_too_large, valid_authority, Codings};
use crate::lifecycle::shutdown::{Drain, DRAIN_IDLE_GRACE};
use crate::proxy::error::{error_response, ProxyError};
use crate::proxy::inbound::InboundProxy;
use crate::telemetry::record::{Finish, RequestRecord, Strings};
use crate::upstream::pool::AppStreams;
use bytes::{Buf, Bytes, BytesMut};
use http::HeaderValue;
use http_body::SizeHint;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The first buffer for a request head (it grows for bigger heads and for bodies).
const HEAD_READ: usize = 4096;
/// A connection idle this long releases its buffers.
const RELEASE_AFTER: Duration = Duration::from_millis(100);
/// A body part at most this long is copied behind its head and sent in the same write.
const COPY_BEHIND_HEAD: usize = 4096;

/// How a connection left the codec.
pub enum Outcome {
    /// The connection is finished: closed by either side, timed out, or drained.
    Closed,
    /// The HTTP/2 preface: the HTTP/2 server serves the connection, starting with these bytes.
    H2(BytesMut),
}

/// The codec for one worker's inbound listener: the worker's proxy and its connections to the
/// app.
pub struct Codec {
    proxy: Arc<InboundProxy>,
    /// The codec's connections to an HTTP/1.1 app (none for an app that speaks h2, whose
    /// requests go through the proxy's client for it).
    streams: Option<Arc<AppStreams>>,
}

impl Codec {
    /// The codec for `proxy`'s listener: relaying on its own connections to an HTTP/1.1 app, or
    /// through the proxy's client to an app that speaks h2.
    pub fn new(proxy: &Arc<InboundProxy>) -> Self {
        Self { proxy: proxy.clone(), streams: proxy.codec_streams().cloned() }
    }

    /// The worker's inbound proxy (for [`crate::h2::server`], which serves this listener's
    /// HTTP/2 connections).
    pub fn proxy(&self) -> &Arc<InboundProxy> {
        &self.proxy
    }

    /// Serves HTTP/1.1 requests on `io` until the connection ends or a request needs hyper.
    pub async fn serve<IO>(
        &self,
        io: &mut IO,
        meta: &ConnMeta,
        peer_ip: Option<&HeaderValue>,
        drain: &mut Drain,
        rules: Rules,
    ) -> Outcome
    where
        IO: AsyncRead + AsyncWrite + ReadReady + Unpin,
    {
        let conn = Conn {
            proxy: &self.proxy,
            streams: self.streams.as_ref(),
            meta,
            peer_ip,
            rules,
            rbuf: BytesMut::new(),
            ubuf: BytesMut::new(),
            out: Vec::new(),
            draining: drain.is_draining(),
            drain,
            head_deadline: None,
        };
        conn.run(io).await
    }
}

/// A byte stream that can wait until it is readable without a buffer to read into, so that an
/// idle connection holds none.
pub trait ReadReady {
    /// Ready when a read may make progress (a stream that cannot tell is always ready).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// The listener's rules the codec applies to one connection.
#[derive(Clone, Copy)]
pub struct Rules {
    pub header_read: Duration,
    pub idle: Duration,
    /// Most bytes of a request head (hyper's buffer limit on the other path).
    pub max_head: usize,
}

/// A connection's one timer. Moving its deadline later, as every request and every relayed
/// read does, only notes the new deadline: the timer fires at the one it has and re-arms itself
/// for the noted one (nginx keeps its timers the same lazy way), so a busy connection does not
/// go back to tokio's timer wheel at every step. Moving it earlier re-arms it at once.
struct Deadline<'a> {
    sleep: Pin<&'a mut tokio::time::Sleep>,
    /// The deadline last set (the timer may be armed earlier).
    due: tokio::time::Instant,
}

impl Deadline<'_> {
    fn set(&mut self, at: tokio::time::Instant) {
        // A timer that already fired is re-armed by `expired` when it is next waited on.
        if at < self.sleep.deadline() {
            self.sleep.as_mut().reset(at);
        }
        self.due = at;
    }

    /// Resolves once the deadline last set has passed.
    async fn expired(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if self.sleep.deadline() >= self.due {
                return;
            }
            let due = self.due;
            self.sleep.as_mut().reset(due);
        }
    }
}

impl Conn<'_> {
    /// Requests, one after the other, until the connection ends or one needs hyper.
    async fn run<IO: AsyncRead + AsyncWrite + ReadReady + Unpin>(mut self, io: &mut IO) -> Outcome {
        let conn = &mut self;
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let due = sleep.deadline();
        let timer = &mut Deadline { sleep, due };
        loop {
            // 1. A complete request head.
            let parsed = loop {
                if !conn.rbuf.is_empty() {
                    match conn.parse_request() {
                        Parsed::Partial if conn.rbuf.len() >= conn.rules.max_head => {
                            let rbuf = std::mem::take(&mut conn.rbuf);
                            let err = head_too_large(&rbuf, conn.rules.max_head);
                            break conn.refuse_raw(&rbuf, err);
                        }
                        Parsed::Partial => {}
                        Parsed::H2 => return Outcome::H2(std::mem::take(&mut conn.rbuf)),
                        done => break done,
                    }
                }
                match conn.wait_for_head(io, timer).await {
                    Ok(true) => {}
                    // A head begun and not finished within timeouts.header_read: 408, logged.
                    Ok(false) if conn.head_deadline.is_some_and(|d| d <= tokio::time::Instant::now()) => {
                        let rbuf = std::mem::take(&mut conn.rbuf);
                        let what =
                            format!("request head not complete within {} ms", conn.rules.header_read.as_millis());
                        break conn.refuse_raw(&rbuf, ProxyError::RequestTimeout { what });
                    }
                    Ok(false) | Err(_) => return Outcome::Closed,
                }
            };
            conn.head_deadline = None;
            // 2. Answer it.
            let keep = match parsed {
                Parsed::Refused { finish, head_len, close } => {
                    conn.rbuf.advance(head_len.min(conn.rbuf.len()));
                    conn.answer_refusal(io, finish, close).await
                }
                Parsed::Forward(req) => conn.forward(io, req, timer).await,
                Parsed::Partial | Parsed::H2 => false,
            };
            if !keep {
                let _ = io.shutdown().await;
                return Outcome::Closed;
            }
        }
    }
}

/// One client connection's state.
struct Conn<'a> {
    proxy: &'a Arc<InboundProxy>,
    streams: Option<&'a Arc<AppStreams>>,
    meta: &'a ConnMeta,
    peer_ip: Option<&'a HeaderValue>,
    rules: Rules,
    /// Bytes from the client not consumed yet.
    rbuf: BytesMut,
    /// Bytes from the app not consumed yet.
    ubuf: BytesMut,
    /// The head being written (upstream request or client response).
    out: Vec<u8>,
    /// A stop has begun: answers carry `Connection: close` (checked again before every answer).
    draining: bool,
    drain: &'a mut Drain,
    /// When the head begun in `rbuf` must be complete (`timeouts.header_read` after its first
    /// byte).
    head_deadline: Option<tokio::time::Instant>,
}

/// What a request head turned into.
enum Parsed {
    Partial,
    /// The HTTP/2 preface: the connection goes to the HTTP/2 server.
    H2,
    /// Answered here: the response is in `out`.
    Refused {
        finish: Finish,
        head_len: usize,
        close: bool,
    },
    Forward(Request),
}

/// A request on its way to the app; its upstream head is in `out`.
struct Request {
    finish: Finish,
    head_len: usize,
    /// How the request body is framed (`Content-Length`, 0 without one, or chunked).
    body: Framing,
    /// The client asked to close after this request (or must, because part of its body
    /// was left unread).
    close: bool,
    /// Part of the request body is still to be read from the client.
    body_pending: bool,
    /// A `HEAD` request: the response has no body whatever its head says.
    head_only: bool,
    /// An idempotent method (RFC 9110 section 9.2.2): it may be sent again after a pooled
    /// connection failed without an answer.
    idempotent: bool,
    /// `Expect: 100-continue` with a body: tandem answers `100 Continue` before reading it.
    continue_100: bool,
    /// An upgrade was asked for (and forwarded): a `101` turns the connection into a tunnel.
    upgrade: bool,
    /// An HTTP/1.0 request (its answer cannot be chunked).
    http10: bool,
    /// `timeouts.response` as it was when the request was admitted (a reload changes it for the
    /// requests after).
    response_timeout: Duration,
}

impl Conn<'_> {
    /// Waits for more request bytes: `Ok(false)` when the connection should close (the client
    /// closed, the idle or header timeout passed, or the drain grace passed with nothing sent).
    async fn wait_for_head<IO: AsyncRead + ReadReady + Unpin>(
        &mut self,
        io: &mut IO,
        timer: &mut Deadline<'_>,
    ) -> io::Result<bool> {
        let between = self.rbuf.is_empty();
        let now = tokio::time::Instant::now();
        if !between && self.head_deadline.is_none() {
            self.head_deadline = Some(now + self.rules.header_read);
        }
        let (head_deadline, rules) = (self.head_deadline, self.rules);
        let deadline = move |draining: bool| {
            if !between {
                head_deadline
            } else if draining {
                Some(tokio::time::Instant::now() + DRAIN_IDLE_GRACE)
            } else if rules.idle.is_zero() {
                None
            } else {
                Some(now + rules.idle)
            }
        };
        let mut limit = deadline(self.draining);
        // A connection idle for RELEASE_AFTER gives its buffers back (as nginx does); they are
        // made again when the next request's first bytes are there to read. A busy connection
        // keeps them from one request to the next.
        let mut release = (between && self.rbuf.capacity() > 0).then(|| now + RELEASE_AFTER);
        let wake = |limit: Option<tokio::time::Instant>, release: Option<tokio::time::Instant>| match (limit, release) {
            (Some(l), Some(r)) => Some(l.min(r)),
            (l, r) => l.or(r),
        };
        if let Some(at) = wake(limit, release) {
            timer.set(at);
        }
        if !between && self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(HEAD_READ);
        }
        let rbuf = &mut self.rbuf;
        loop {
            let read = async {
                if rbuf.capacity() == 0 {
                    std::future::poll_fn(|cx| io.poll_read_ready(cx)).await?;
                    rbuf.reserve(HEAD_READ);
                }
                io.read_buf(rbuf).await
            };
            tokio::select! {
                biased;
                r = read => {
                    // A head still partial after this read gets its deadline from the next
                    // wait, which follows at once.
                    return Ok(r? > 0);
                }
                _ = timer.expired(), if limit.is_some() || release.is_some() => {
                    let now = tokio::time::Instant::now();
                    if limit.is_some_and(|l| l <= now) {
                        return Ok(false);
                    }
                    if release.is_some_and(|r| r <= now) {
                        release = None;
                        *rbuf = BytesMut::new();
                        self.ubuf = BytesMut::new();
                        self.out = Vec::new();
                    }
                    if let Some(at) = wake(limit, release) {
                        timer.set(at);
                    }
                }
                _ = self.drain.wait(), if !self.draining => {
                    self.draining = true;
                    limit = deadline(true);
                    if let Some(at) = wake(limit, release) {
                        timer.set(at);
                    }
                }
            }
        }
    }

    /// Parses the head at the front of `rbuf` and prepares its answer (see [`Parsed`]). Every
    /// HTTP/1.x request is answered here: what tandem does not forward is refused with its
    /// status and `DPE`, logged like any other request.
    fn parse_request(&mut self) -> Parsed {
        // h2c with prior knowledge: the preface's first line, however it was split by TCP.
        if self.rbuf.len() < PREFACE_LINE.len() && PREFACE_LINE.starts_with(&self.rbuf) {
            return Parsed::Partial;
        }
        if self.rbuf.starts_with(PREFACE_LINE) {
            return Parsed::H2;
        }
        // The head is parsed from a buffer taken out of `self` for the call (a move, no copy),
        // so that its fields can borrow it while the answer is written into `self.out`.
        let rbuf = std::mem::take(&mut self.rbuf);
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let parsed = match req.parse_with_uninit_headers(&rbuf, &mut fields) {
            Err(httparse::Error::TooManyHeaders) if self.proxy.admission.max_headers() > MAX_FIELDS => {
                // A configured limit above the inline array: the rare head with that many
                // fields is parsed into one allocated for it.
                let mut many = vec![httparse::EMPTY_HEADER; self.proxy.admission.max_headers() + 1];
                let mut req = httparse::Request::new(&mut many);
                match req.parse(&rbuf) {
                    Ok(httparse::Status::Complete(n)) => self.prepare(&req, n),
                    Ok(httparse::Status::Partial) => Parsed::Partial,
                    Err(e) => self.refuse_unparsed(&rbuf, e),
                }
            }
            Ok(httparse::Status::Complete(n)) => self.prepare(&req, n),
            Ok(httparse::Status::Partial) => Parsed::Partial,
            Err(e) => self.refuse_unparsed(&rbuf, e),
        };
        self.rbuf = rbuf;
        parsed
    }

    /// The answer to a head httparse refused: 431 for too many fields, else 400; the connection
    /// closes after it (where the next request would start is unknown).
    fn refuse_unparsed(&mut self, rbuf: &[u8], e: httparse::Error) -> Parsed {
        let err = match e {
            httparse::Error::TooManyHeaders => ProxyError::HeadersTooLarge {
                what: format!("more than {} header fields", self.proxy.admission.max_headers().max(MAX_FIELDS)),
            },
            e => ProxyError::BadRequest { what: format!("invalid request head: {e}") },
        };
        self.refuse_raw(rbuf, err)
    }

    /// A refusal for a head that could not be parsed whole (invalid, too large, or too slow):
    /// the record gets what the request line says, and the connection closes after the answer.
    fn refuse_raw(&mut self, rbuf: &[u8], err: ProxyError) -> Parsed {
        let p = self.proxy;
        let mut record = RequestRecord::empty(Direction::Inbound, self.meta.peer);
        record.upstream_host = Some(p.app);
        record.tls = self.meta.tls.clone();
        let line = rbuf.split(|b| *b == b'\n').next().unwrap_or_default();
        let mut words = line.trim_ascii().splitn(3, |b| *b == b' ');
        if let Some(m) = words.next().and_then(|m| http::Method::from_bytes(m).ok()) {
            record.method = m;
        }
        let path = words.next().unwrap_or_default();
        let mut finish = Finish::new(record, None, p.telemetry.clone());
        if let Some(r) = finish.record_mut().filter(|_| p.telemetry.access_log.enabled()) {
            r.set_strings(&Strings { path, ..Strings::default() });
        }
        // The head did not parse: whether it was gRPC is unknown, and the answer is plain HTTP.
        let grpc = p.fail_record(&err, &mut finish);
        write_error(&mut self.out, &err, grpc, true);
        Parsed::Refused { finish, head_len: rbuf.len(), close: true }
    }

    /// Checks and rewrites a complete request head (`head_len` bytes) into the upstream head in
    /// `out`, or prepares its refusal.
    fn prepare(&mut self, req: &httparse::Request<'_, '_>, head_len: usize) -> Parsed {
        let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
            return Parsed::Partial;
        };
        let p = self.proxy;
        let logging = p.telemetry.access_log.enabled();
        let http10 = version == 0;

        // The target (RFC 9112 section 3.2): origin form, `*` for OPTIONS, or absolute form,
        // whose authority replaces `Host`.
        let mut target_authority = None;
        let mut bad_target = None;
        let path: &[u8] = if target.starts_with('/') || (target == "*" && method == "OPTIONS") {
            target.as_bytes()
        } else if let Some((authority, path)) = absolute_form(target.as_bytes()) {
            target_authority = Some(authority);
            path
        } else {
            bad_target = Some("the request target is not origin form, absolute form or * (OPTIONS)");
            target.as_bytes()
        };

        // What the head says about framing and hop-by-hop fields.
        let mut named = Named::default();
        let mut too_many_named = false;
        let mut length = None;
        let mut bad_length = false;
        let mut codings = Codings::default();
        let mut size = target.len();
        let mut hosts = 0usize;
        let mut authority = None;
        let mut forwarded_for: Option<&[u8]> = None;
        let mut request_id: Option<&[u8]> = None;
        let mut user_agent = None;
        let mut traceparent = None;
        let mut expect: Option<&[u8]> = None;
        let mut upgrade: Option<&[u8]> = None;
        let mut grpc = false;
        for h in req.headers.iter() {
            let (name, value) = (h.name.as_bytes(), h.value);
            size += name.len() + value.len() + 4;
            match name.len() {
                4 if eq(name, b"host") => {
                    hosts += 1;
                    authority = authority.or(Some(value));
                }
                6 if eq(name, b"expect") => expect = Some(value),
                7 if eq(name, b"upgrade") => upgrade = Some(value),
                10 if eq(name, b"connection") => too_many_named |= !named.add(value),
                10 if eq(name, b"user-agent") => user_agent = user_agent.or(Some(value)),
                11 if eq(name, b"traceparent") => traceparent = traceparent.or(Some(value)),
                12 if eq(name, b"x-request-id") => request_id = request_id.or(Some(value)),
                12 if eq(name, b"content-type") => grpc = crate::base::grpc::is_grpc(value),
                14 if eq(name, b"content-length") => match (length, parse_length(value)) {
                    (None, Some(n)) => length = Some(n),
                    _ => bad_length = true,
                },
                15 if eq(name, b"x-forwarded-for") => forwarded_for = forwarded_for.or(Some(value)),
                17 if eq(name, b"transfer-encoding") => codings.add(value),
                _ => {}
            }
        }
        // `Connection` may not remove what tandem frames or sets itself; the fields tandem sets
        // are replaced anyway.
        if named.names(b"x-forwarded-for") {
            forwarded_for = None;
        }
        if named.names(b"x-request-id") {
            request_id = None;
        }
        let logged_authority = target_authority.or(authority);
        // HTTP/1.0 closes after the answer (tandem does not keep 1.0 connections alive).
        let mut close = named.close || http10;

        // The record, then the checks in order: load, the head's validity, the head limits.
        let mut record = RequestRecord::empty(Direction::Inbound, self.meta.peer);
        record.method = http::Method::from_bytes(method.as_bytes()).unwrap_or_default();
        record.upstream_host = Some(p.app);
        record.tls = self.meta.tls.clone();
        if http10 {
            record.protocol = http::Version::HTTP_10;
        }
        record.grpc = grpc;
        let strings = Strings { path, authority: logged_authority, user_agent, traceparent, ..Strings::default() };
        let crate::proxy::admission::Entered { mut finish, rules, over } =
            p.admission.enter(record, None, &p.telemetry);
        let chunked = codings.chunked();
        let bad = |what: &str| Some(ProxyError::BadRequest { what: what.to_owned() });
        let refusal = if over.is_some() {
            over
        } else if method == "CONNECT" {
            close = true;
            Some(ProxyError::MethodNotAllowed { what: "CONNECT is served on the outbound listener only".into() })
        } else if let Some(what) = bad_target {
            bad(what)
        } else if hosts > 1 {
            bad("more than one Host field")
        } else if hosts == 0 && !http10 {
            bad("an HTTP/1.1 request without Host")
        } else if authority.is_some_and(|a| !valid_authority(a)) {
            bad("an invalid Host")
        } else if too_many_named {
            bad("Connection names too many fields")
        } else if bad_length {
            close = true;
            bad("an invalid or repeated Content-Length")
        } else if codings.any() && length.is_some() {
            close = true;
            bad("the request has both Content-Length and Transfer-Encoding")
        } else if codings.any() && http10 {
            close = true;
            bad("Transfer-Encoding in an HTTP/1.0 request")
        } else if let Some(err) = codings.refusal() {
            close = true;
            Some(err)
        } else if expect.is_some_and(|e| !eq(e.trim_ascii(), b"100-continue")) && !http10 {
            Some(ProxyError::ExpectationFailed { what: "only 100-continue is supported".into() })
        } else {
            rules.head(req.headers.len(), size)
        };
        if let Some(err) = refusal {
            // The client's own strings, as a refused request is logged.
            if let Some(r) = finish.record_mut().filter(|_| logging) {
                let xff = [forwarded_for.unwrap_or_default()];
                let request_id = request_id.filter(|v| !v.is_empty());
                r.set_strings(&Strings { request_id, x_forwarded_for: &xff, ..strings });
            }
            let grpc = p.fail_record(&err, &mut finish);
            // An unread body would be taken for the next request: close after the answer.
            let close = close || length.is_some_and(|n| n > 0) || chunked;
            write_error(&mut self.out, &err, grpc, close);
            return Parsed::Refused { finish, head_len, close };
        }
        // An upgrade other than h2c (which tandem's own HTTP/2 server would take) goes to the
        // app; a 101 then turns the connection into a tunnel.
        let upgrade = upgrade.filter(|u| !http10 && named.upgrade && !eq(u.trim_ascii(), b"h2c"));

        // The upstream head: request line, the client's fields minus hop-by-hop ones, then
        // tandem's.
        let out = &mut self.out;
        out.clear();
        out.reserve(head_len + 256);
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(path);
        out.extend_from_slice(if http10 { b" HTTP/1.0\r\n" } else { b" HTTP/1.1\r\n" });
        let keep_id = request_id.is_some_and(|v| !v.is_empty());
        for h in req.headers.iter() {
            let (name, value) = (h.name.as_bytes(), h.value);
            if hop_by_hop(name) || (named.names(name) && !eq(name, b"host") && !eq(name, b"content-length")) {
                continue;
            }
            match name.len() {
                2 if eq(name, b"te") => {
                    if tokens(value).any(|t| eq(t, b"trailers")) {
                        out.extend_from_slice(b"te: trailers\r\n");
                    }
                    continue;
                }
                4 if eq(name, b"host") && target_authority.is_some() => continue,
                6 if eq(name, b"expect") => continue,
                12 if eq(name, b"x-request-id") && !keep_id => continue,
                13 if eq(name, b"http2-settings") => continue,
                15 if eq(name, b"x-forwarded-for") => continue,
                17 if eq(name, b"x-forwarded-proto") => continue,
                23 if eq(name, b"x-forwarded-client-cert") => continue,
                _ => {}
            }
            push_field(out, name, value);
        }
        if let Some(a) = target_authority {
            push_field(out, b"host", a);
        } else if hosts == 0 {
            // An HTTP/1.0 request without Host: the app gets a valid request.
            push_field(out, b"host", p.app_authority().as_bytes());
        }
        if chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if let Some(u) = upgrade {
            push_field(out, b"upgrade", u);
            out.extend_from_slice(b"connection: upgrade\r\n");
        }
        let ip: &[u8] = self.peer_ip.map_or(b"", |v| v.as_bytes());
        let prev = forwarded_for.map(<[u8]>::trim_ascii).filter(|v| !v.is_empty());
        let appended = [prev.unwrap_or_default(), b", ", ip];
        let xff: &[&[u8]] = if prev.is_some() { &appended } else { &appended[2..] };
        out.extend_from_slice(b"x-forwarded-for: ");
        for part in xff {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(b"\r\n");
        push_field(out, b"x-forwarded-proto", p.proto.as_bytes());
        if let Some(xfcc) = self.meta.tls.as_ref().and_then(|t| t.xfcc.as_ref()) {
            push_field(out, b"x-forwarded-client-cert", xfcc.as_bytes());
        }
        let made;
        let request_id = if keep_id {
            request_id
        } else {
            made = crate::proxy::headers::request_id_bytes();
            push_field(out, b"x-request-id", &made);
            Some(&made[..])
        };
        out.extend_from_slice(b"\r\n");
        if let Some(r) = finish.record_mut().filter(|_| logging) {
            r.set_strings(&Strings { request_id, x_forwarded_for: xff, ..strings });
        }
        let framing = if chunked { Framing::Chunked } else { Framing::Length(length.unwrap_or(0)) };
        let body_pending = chunked || length.is_some_and(|n| n > 0);
        Parsed::Forward(Request {
            finish,
            head_len,
            body: framing,
            close,
            body_pending,
            head_only: method == "HEAD",
            idempotent: is_idempotent(method.as_bytes()),
            continue_100: body_pending && !http10 && expect.is_some(),
            upgrade: upgrade.is_some(),
            http10,
            response_timeout: rules.response_timeout,
        })
    }

    /// Writes a refusal made by [`Conn::parse_request`]; true if the connection stays open.
    async fn answer_refusal<IO: AsyncWrite + Unpin>(&mut self, io: &mut IO, finish: Finish, close: bool) -> bool {
        self.draining = self.draining || self.drain.is_draining();
        let close = close || self.draining;
        if self.draining {
            add_close(&mut self.out);
        }
        let body_len = error_body_len(&self.out);
        let ok = io.write_all(&self.out).await.is_ok() && io.flush().await.is_ok();
        finish.finish(body_len, !ok);
        ok && !close
    }

    /// Sends a request to the app and relays its answer; true if the client's connection stays
    /// open for the next request.
    async fn forward<IO: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        mut req: Request,
        timer: &mut Deadline<'_>,
    ) -> bool {
        let Some(streams) = self.streams else {
            // Boxed: the path to an h2 app is the rare one, and inline its state would make every
            // connection's task larger.
            return Box::pin(self.forward_service(io, req, timer)).await;
        };
        let p = self.proxy;
        self.rbuf.advance(req.head_len);

        // The request body that came with the head rides behind it when it is small, and then
        // the whole request can be sent again on a fresh connection. Broken chunked framing is
        // the client's fault, found before the app is asked anything.
        let mut body = Inflow::new(req.body);
        if let Err(why) = body.scan(&self.rbuf) {
            return self.answer_error(io, req, bad_body(why)).await;
        }
        let whole = body.ended && body.ready <= COPY_BEHIND_HEAD;
        if whole {
            self.out.extend_from_slice(&self.rbuf[..body.ready]);
            self.rbuf.advance(body.ready);
            body.ready = 0;
            req.body_pending = false;
        }
        if let Some(r) = req.finish.record_mut() {
            r.bytes_received = body.data();
        }
        let mut continued = false;

        // Connect (or reuse), write, and read the response head, within timeouts.response
        // (the body upload aside, which the client paces).
        let sent_at = tokio::time::Instant::now();
        timer.set(sent_at + req.response_timeout);
        // A pooled connection that fails before any answer is replaced while the whole request
        // is at hand; each attempt uses up a pooled connection, and a fresh one is not retried.
        // The app answered before the whole body was sent (the rest goes while its answer is
        // relayed).
        let mut early = false;
        let (mut up, resp) = loop {
            let (mut up, reused) = match streams.take() {
                Some(s) => (s, true),
                None => {
                    let connected = tokio::select! {
                        biased;
                        c = streams.connect() => Some(c),
                        _ = timer.expired() => None,
                    };
                    match connected {
                        Some(Ok(s)) => (s, false),
                        Some(Err(e)) => {
                            let err = ProxyError::from_connect(&e, p.app, p.connect_timeout_ms);
                            return self.answer_error(io, req, err).await;
                        }
                        None => {
                            let err = p.response_timed_out(req.response_timeout);
                            return self.answer_error(io, req, err).await;
                        }
                    }
                }
            };
            if up.write_all(&self.out).await.is_err() {
                if reused && whole {
                    continue;
                }
                return self.answer_error(io, req, ProxyError::UpstreamClosed { upstream: p.app.to_string() }).await;
            }
            if !whole {
                // A client that asked to be told before sending its body is told now, once
                // the app's connection is there (as nginx does).
                if req.continue_100 && !continued && self.rbuf.is_empty() {
                    continued = true;
                    if io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                        return false;
                    }
                }
                // The rest of the body, as the client sends it.
                let uploaded = self.upload(io, &mut up, &mut req, &mut body, timer).await;
                // Every way the request ends from here reports what the client sent.
                if let Some(r) = req.finish.record_mut() {
                    r.bytes_received = body.data();
                }
                match uploaded {
                    Upload::Done => {}
                    Upload::Early => early = true,
                    Upload::ClientGone => return false,
                    Upload::Bad(why) => return self.answer_error(io, req, bad_body(why)).await,
                    Upload::AppGone => {
                        let err = ProxyError::UpstreamClosed { upstream: p.app.to_string() };
                        return self.answer_error(io, req, err).await;
                    }
                    Upload::Stalled => {
                        let what = format!(
                            "the request body stalled for {} ms ({} bytes received)",
                            self.rules.idle.as_millis(),
                            body.data()
                        );
                        return self.answer_error(io, req, ProxyError::RequestTimeout { what }).await;
                    }
                }
                timer.set(tokio::time::Instant::now() + req.response_timeout);
            }
            match self.read_response_head(io, &mut up, &req, timer).await {
                Ok(resp) => break (up, resp),
                Err(HeadError::Replay) if reused && whole && req.idempotent => self.ubuf.clear(),
                Err(HeadError::Replay) => {
                    let err = ProxyError::UpstreamClosed { upstream: p.app.to_string() };
                    return self.answer_error(io, req, err).await;
                }
                Err(HeadError::Proxy(err)) => return self.answer_error(io, req, err).await,
                Err(HeadError::ClientGone) => return false,
            }
        };
        if let Some(r) = req.finish.record_mut() {
            r.bytes_received = body.data();
            r.upstream_service_time = Some(sent_at.elapsed());
            r.response_code = resp.status;
        }
        if resp.status == 101 {
            // Boxed for the same reason: an upgrade is rare.
            return Box::pin(self.tunnel(io, up, req)).await;
        }

        // The response head, then its body.
        self.draining = self.draining || self.drain.is_draining();
        let close = req.close || self.draining || resp.body == Framing::UntilClose;
        if close {
            add_close(&mut self.out);
        }
        let mut relay = Relay { framing: resp.body, sent: 0, chunked: ChunkScan::default(), ended: false };
        let buffered = relay.feed_buffered(&mut self.ubuf, &mut self.out);
        if io.write_all(&self.out).await.is_err() {
            req.finish.finish(0, true);
            return false;
        }
        let result = match buffered {
            Ok(true) => Ok(()),
            Ok(false) if early && !body.done() => {
                let r = self.relay_duplex(io, &mut up, &mut relay, &mut body, timer).await;
                if body.done() {
                    req.body_pending = false;
                }
                if let Some(r) = req.finish.record_mut() {
                    r.bytes_received = body.data();
                }
                r
            }
            Ok(false) => self.relay_body(io, &mut up, &mut relay, timer).await,
            Err(_) => Err(BodyError::AppGone),
        };
        let flushed = io.flush().await.is_ok();
        match result {
            Ok(()) if flushed => {
                req.finish.finish(relay.sent, false);
                if resp.reusable && self.ubuf.is_empty() && !req.body_pending {
                    streams.put(up);
                }
                self.ubuf.clear();
                !close
            }
            Ok(()) | Err(BodyError::ClientGone) => {
                req.finish.finish(relay.sent, true);
                false
            }
            Err(BodyError::AppGone) => {
                req.finish.upstream_body_failed();
                req.finish.finish(relay.sent, false);
                false
            }
        }
    }

    /// Streams the rest of a request body from the client to the app. An app that answers
    /// before the body is complete pauses the upload ([`Upload::Early`] with the bytes still to
    /// come): its answer head is read next, and the rest of the body goes to the app while its
    /// answer is relayed ([`Conn::relay_duplex`]), as a streaming app (an echo, a transcoder)
    /// needs.
    ///
    /// An early answer sets `close`: the client's connection ends after the answer, and
    /// `body_pending` stays set (neither connection is used again) unless the whole body went
    /// through. Each step, reading from the client or writing to the app, gets `timeouts.idle`.
    async fn upload<IO: AsyncRead + Unpin>(
        &mut self,
        io: &mut IO,
        up: &mut TcpStream,
        req: &mut Request,
        body: &mut Inflow,
        timer: &mut Deadline<'_>,
    ) -> Upload {
        let idle = self.rules.idle;
        loop {
            if !idle.is_zero() {
                timer.set(tokio::time::Instant::now() + idle);
            }
            if let Err(why) = body.scan(&self.rbuf) {
                return Upload::Bad(why);
            }
            let n = body.ready;
            if n > 0 {
                let (up_read, mut up_write) = up.split();
                // One write at a time, not write_all: a write that loses the race to the app's
                // answer has sent nothing, so what the app got is exactly what was counted.
                let wrote = tokio::select! {
                    biased;
                    r = up_write.write(&self.rbuf[..n]) => match r {
                        Ok(0) | Err(_) => return Upload::AppGone,
                        Ok(w) => w,
                    },
                    r = up_read.readable() => {
                        if r.is_err() {
                            return Upload::AppGone;
                        }
                        req.close = true;
                        return Upload::Early;
                    }
                    _ = timer.expired(), if !idle.is_zero() => return Upload::Stalled,
                };
                self.rbuf.advance(wrote);
                body.ready -= wrote;
                continue;
            }
            if body.ended {
                req.body_pending = false;
                return Upload::Done;
            }
            self.rbuf.reserve(READ_SIZE);
            tokio::select! {
                biased;
                r = up.readable() => {
                    if r.is_err() {
                        return Upload::AppGone;
                    }
                    // An early answer: the rest of the body goes with its relay.
                    req.close = true;
                    return Upload::Early;
                }
                r = io.read_buf(&mut self.rbuf) => match r {
                    Ok(0) | Err(_) => return Upload::ClientGone,
                    Ok(_) => {}
                },
                _ = timer.expired(), if !idle.is_zero() => return Upload::Stalled,
            }
        }
    }

    /// Reads and rewrites the app's response head into `out`, its first body bytes left in
    /// `ubuf`. Meanwhile the client is watched: if it goes away the request is cancelled.
    async fn read_response_head<IO: AsyncRead + Unpin>(
        &mut self,
        io: &mut IO,
        up: &mut TcpStream,
        req: &Request,
        timer: &mut Deadline<'_>,
    ) -> Result<Response, HeadError> {
        let app = self.proxy.app;
        let upstream = move || app.to_string();
        let mut any = false;
        loop {
            if !self.ubuf.is_empty() {
                any = true;
                match self.parse_response(req) {
                    Ok(Some(resp)) => return Ok(resp),
                    Ok(None) if self.ubuf.len() > MAX_RESPONSE_HEAD => {
                        let cause = HEAD_TOO_LARGE.to_owned();
                        return Err(HeadError::Proxy(ProxyError::UpstreamProtocol { upstream: upstream(), cause }));
                    }
                    Ok(None) => {}
                    Err(cause) => {
                        return Err(HeadError::Proxy(ProxyError::UpstreamProtocol { upstream: upstream(), cause }))
                    }
                }
            }
            if self.ubuf.capacity() - self.ubuf.len() < 1024 {
                self.ubuf.reserve(READ_SIZE);
            }
            // Pipelined bytes from the client are kept for the next request, up to the head
            // limit; past it the client is no longer read until this answer is sent.
            let watch = self.rbuf.len() < self.rules.max_head;
            if watch && self.rbuf.capacity() == self.rbuf.len() {
                self.rbuf.reserve(1024);
            }
            tokio::select! {
                biased;
                r = up.read_buf(&mut self.ubuf) => match r {
                    Ok(0) | Err(_) if !any => return Err(HeadError::Replay),
                    Ok(0) | Err(_) => return Err(HeadError::Proxy(ProxyError::UpstreamClosed { upstream: upstream() })),
                    Ok(_) => {}
                },
                _ = timer.expired() => return Err(HeadError::Proxy(self.proxy.response_timed_out(req.response_timeout))),
                r = io.read_buf(&mut self.rbuf), if watch => match r {
                    Ok(0) | Err(_) => return Err(HeadError::ClientGone),
                    Ok(_) => {}
                },
            }
        }
    }

    /// Parses the response head at the front of `ubuf` and rewrites it into `out` (see
    /// [`final_answer`]); the head is consumed, its first body bytes stay in `ubuf`.
    fn parse_response(&mut self, req: &Request) -> Result<Option<Response>, String> {
        let out = &mut self.out;
        let parsed = final_answer(&mut self.ubuf, req.head_only, req.upgrade, |resp, answer, _head| {
            let status = resp.code.unwrap_or_default();
            out.clear();
            out.extend_from_slice(b"HTTP/1.1 ");
            push_decimal(out, u64::from(status));
            out.push(b' ');
            out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
            out.extend_from_slice(b"\r\n");
            for h in resp.headers.iter() {
                // A 101's `Connection: upgrade` and `Upgrade` are the switch itself.
                if status == 101 || !answer.drops(h.name.as_bytes()) {
                    push_field(out, h.name.as_bytes(), h.value);
                }
            }
            if answer.body == Framing::Chunked {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
            out.extend_from_slice(b"\r\n");
            Ok(Response { status, body: answer.body, reusable: answer.reusable })
        })?;
        Ok(parsed.map(|(resp, len)| {
            self.ubuf.advance(len);
            resp
        }))
    }

    /// Relays the body bytes that follow what was already in `ubuf`.
    /// Each step (a read from the app, its write to the client) gets `timeouts.idle`: an app
    /// that stalls mid-body is cut (`UC`), and so is a client that stops reading (`DC`).
    async fn relay_body<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        up: &mut TcpStream,
        relay: &mut Relay,
        timer: &mut Deadline<'_>,
    ) -> Result<(), BodyError> {
        let idle = self.rules.idle;
        loop {
            self.ubuf.clear();
            self.ubuf.reserve(READ_SIZE);
            if !idle.is_zero() {
                timer.set(tokio::time::Instant::now() + idle);
            }
            let read = tokio::select! {
                biased;
                r = up.read_buf(&mut self.ubuf) => r,
                _ = timer.expired(), if !idle.is_zero() => return Err(BodyError::AppGone),
            };
            let n = read.map_err(|_| BodyError::AppGone)?;
            if n == 0 {
                return if relay.framing == Framing::UntilClose { Ok(()) } else { Err(BodyError::AppGone) };
            }
            let (take, ended) = relay.scan(&self.ubuf).map_err(|_| BodyError::AppGone)?;
            tokio::select! {
                biased;
                r = io.write_all(&self.ubuf[..take]) => r.map_err(|_| BodyError::ClientGone)?,
                _ = timer.expired(), if !idle.is_zero() => return Err(BodyError::ClientGone),
            }
            self.ubuf.advance(take);
            if ended {
                return Ok(());
            }
        }
    }

    /// [`Conn::relay_body`] for an answer that began before its request body was all sent: the
    /// app's body goes to the client and the client's remaining `left` bytes go to the app, each
    /// direction as fast as its reader takes it, so that neither waits on the other (a client
    /// that reads nothing until it has sent its body, an app that echoes what it reads). The
    /// relay ends with the answer, whatever is left of the upload; an app that stops reading
    /// the body ends the upload, not the answer. Any progress restarts `timeouts.idle`.
    async fn relay_duplex<IO: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        up: &mut TcpStream,
        relay: &mut Relay,
        body: &mut Inflow,
        timer: &mut Deadline<'_>,
    ) -> Result<(), BodyError> {
        let idle = self.rules.idle;
        let (mut client_read, mut client_write) = tokio::io::split(io);
        let (mut app_read, mut app_write) = up.split();
        let (ubuf, rbuf) = (&mut self.ubuf, &mut self.rbuf);
        ubuf.clear();
        // Answer bytes read and scanned, not yet written to the client.
        let mut to_client = 0usize;
        let mut uploading = true;
        loop {
            if !idle.is_zero() {
                timer.set(tokio::time::Instant::now() + idle);
            }
            if to_client == 0 {
                ubuf.clear();
                ubuf.reserve(READ_SIZE);
            }
            // Broken framing in the rest of the body ends the upload (the app's connection is
            // then not used again); the answer goes on.
            if uploading && body.scan(rbuf).is_err() {
                uploading = false;
            }
            let up_n = if uploading { body.ready } else { 0 };
            let want_body = uploading && !body.ended && up_n == 0;
            if want_body {
                rbuf.reserve(READ_SIZE);
            }
            // One future per direction, each writing what it holds or else reading more.
            let down = async {
                if to_client > 0 {
                    Duplex::ToClient(client_write.write(&ubuf[..to_client]).await)
                } else {
                    Duplex::FromApp(app_read.read_buf(&mut *ubuf).await)
                }
            };
            let upward = async {
                if up_n > 0 {
                    Duplex::ToApp(app_write.write(&rbuf[..up_n]).await)
                } else if want_body {
                    Duplex::FromClient(client_read.read_buf(&mut *rbuf).await)
                } else {
                    std::future::pending().await
                }
            };
            let step = tokio::select! {
                biased;
                d = down => d,
                u = upward => u,
                _ = timer.expired(), if !idle.is_zero() => Duplex::Stalled,
            };
            match step {
                Duplex::ToClient(Ok(0) | Err(_)) => return Err(BodyError::ClientGone),
                Duplex::ToClient(Ok(w)) => {
                    ubuf.advance(w);
                    to_client -= w;
                    if to_client == 0 && relay.ended {
                        return Ok(());
                    }
                }
                Duplex::FromApp(Ok(0) | Err(_)) => {
                    return if relay.framing == Framing::UntilClose { Ok(()) } else { Err(BodyError::AppGone) };
                }
                Duplex::FromApp(Ok(_)) => {
                    // Bytes behind the body's end stay in `ubuf` (the caller then does not
                    // pool the app's connection).
                    let (take, ended) = relay.scan(ubuf).map_err(|_| BodyError::AppGone)?;
                    to_client = take;
                    relay.ended = ended;
                    if ended && take == 0 {
                        return Ok(());
                    }
                }
                // The app no longer reads the body: its answer goes on.
                Duplex::ToApp(Ok(0) | Err(_)) => uploading = false,
                Duplex::ToApp(Ok(w)) => {
                    rbuf.advance(w);
                    body.ready -= w;
                }
                Duplex::FromClient(Ok(0) | Err(_)) => return Err(BodyError::ClientGone),
                Duplex::FromClient(Ok(_)) => {}
                Duplex::Stalled => {
                    return Err(if to_client > 0 { BodyError::ClientGone } else { BodyError::AppGone });
                }
            }
        }
    }

    /// A request to an app that speaks h2: the head this server checked and rewrote goes to the
    /// proxy's client for that app ([`InboundProxy::forward_checked`]), the client's body
    /// follows through a pipe as it arrives (at most [`PIPE_LIMIT`] queued), and the answer is
    /// written back in HTTP/1.1 framing (chunked when it has no length, trailers for a client
    /// that sent `TE: trailers`). True if the connection stays open.
    async fn forward_service<IO: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        req: Request,
        timer: &mut Deadline<'_>,
    ) -> bool {
        let Request {
            mut finish,
            head_len,
            body: framing,
            mut close,
            head_only,
            continue_100,
            http10,
            response_timeout,
            ..
        } = req;
        self.rbuf.advance(head_len);
        let (parts, h1_trailers) = match service_parts(&self.out) {
            Ok(p) => p,
            Err(what) => {
                let err = ProxyError::BadRequest { what };
                let grpc = self.proxy.fail_record(&err, &mut finish);
                write_error(&mut self.out, &err, grpc, true);
                let body_len = error_body_len(&self.out);
                let ok = io.write_all(&self.out).await.is_ok();
                finish.finish(body_len, !ok);
                return false;
            }
        };
        let mut inflow = PipeIn::new(framing);
        let body = inflow.body();
        if continue_100 && self.rbuf.is_empty() && io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
            return false;
        }
        let mut answer = self.proxy.forward_checked(parts, body, finish, h1_trailers, response_timeout);

        // The answer's head, while the body goes to the app.
        // Broken framing in the request body: the app's request was reset for it, and what
        // tandem then answers is the client's 400, not the app's failure.
        let mut broken = None;
        let resp = loop {
            let want = inflow.pump(&mut self.rbuf).unwrap_or_else(|why| {
                broken = Some(why);
                close = true;
                false
            });
            tokio::select! {
                biased;
                resp = answer.as_mut() => break resp,
                r = io.read_buf(&mut self.rbuf), if want => match r {
                    Ok(0) | Err(_) => {
                        // The client went away: the request is cancelled (reported DC).
                        inflow.fail("the client went away");
                        return false;
                    }
                    Ok(_) => {}
                },
                _ = inflow.room(), if !want => {}
            }
        };

        if let Some(why) = broken.filter(|_| resp.headers().contains_key(crate::proxy::error::ERROR_HEADER)) {
            let err = bad_body(why);
            let (_, mut body) = resp.into_parts();
            let grpc = crate::proxy::error::note_error(&err, body.record_mut());
            write_error(&mut self.out, &err, grpc, true);
            let _ = io.write_all(&self.out).await;
            // Reported as the refusal it is, with the bytes of the answer.
            http_body_util::BodyExt::collect(body).await.ok();
            return false;
        }

        // The head: status line, the app's fields, tandem's framing.
        let (parts, mut body) = resp.into_parts();
        let status = parts.status.as_u16();
        let bodiless = head_only || status == 204 || status == 304 || (100..200).contains(&status);
        let length = parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| parse_length(v.as_bytes()));
        // An answer that ended with its head (a gRPC trailers-only answer, tandem's own to a
        // gRPC request) is sent with `content-length: 0`, not as an empty chunked body.
        let empty = !bodiless && length.is_none() && http_body::Body::is_end_stream(&body);
        let open_ended = !bodiless && length.is_none() && !empty;
        let chunked = open_ended && !http10;
        self.draining = self.draining || self.drain.is_draining();
        close = close || self.draining || (open_ended && http10);
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(out, u64::from(status));
        out.push(b' ');
        out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &parts.headers {
            push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        } else if empty {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if io.write_all(&self.out).await.is_err() {
            return false;
        }

        // The body, frame by frame, while the rest of the request body still goes to the app.
        let idle = self.rules.idle;
        let mut ok = true;
        let mut trailers_sent = false;
        if !bodiless {
            loop {
                if !idle.is_zero() {
                    timer.set(tokio::time::Instant::now() + idle);
                }
                let want = inflow.pump(&mut self.rbuf).unwrap_or_else(|_| {
                    close = true;
                    false
                });
                let frame = tokio::select! {
                    biased;
                    f = http_body_util::BodyExt::frame(&mut body) => f,
                    r = io.read_buf(&mut self.rbuf), if want => match r {
                        Ok(0) | Err(_) => {
                            ok = false;
                            break;
                        }
                        Ok(_) => continue,
                    },
                    _ = timer.expired(), if !idle.is_zero() => {
                        ok = false;
                        break;
                    }
                };
                let out = &mut self.out;
                out.clear();
                let end = match frame {
                    None => {
                        if chunked && !trailers_sent {
                            put_last_chunk(out, None);
                        }
                        true
                    }
                    Some(Err(_)) => {
                        // The app's body failed: the client's connection is cut (reported UC).
                        ok = false;
                        break;
                    }
                    Some(Ok(f)) => match f.into_data() {
                        Ok(data) if data.is_empty() => continue,
                        Ok(data) => {
                            if chunked {
                                put_chunk_size(out, data.len());
                            }
                            if io.write_all(out).await.is_err() || io.write_all(&data).await.is_err() {
                                ok = false;
                                break;
                            }
                            out.clear();
                            if chunked {
                                out.extend_from_slice(b"\r\n");
                            }
                            false
                        }
                        Err(f) => {
                            // Trailers end the body; a client that did not ask for them gets
                            // none (HTTP/1.1 cannot carry them without chunked).
                            if chunked {
                                let trailers = f.into_trailers().ok().filter(|_| h1_trailers);
                                put_last_chunk(out, trailers.as_ref());
                                trailers_sent = true;
                            }
                            false
                        }
                    },
                };
                if !out.is_empty() && io.write_all(out).await.is_err() {
                    ok = false;
                    break;
                }
                if end {
                    break;
                }
            }
        }
        // Polled to its end, the body has made the request's report; dropped early, it reports
        // the client gone (or the app's failure).
        drop(body);
        let flushed = ok && io.flush().await.is_ok();
        if !inflow.ended {
            inflow.fail("the answer ended before the request body");
            close = true;
        }
        flushed && !close
    }

    /// After a `101`: the answer's head goes to the client, and from then on bytes are copied
    /// both ways until either side closes (or the drain deadline cuts the connection). The
    /// request is reported when the tunnel ends, with the bytes each way and its duration.
    async fn tunnel<IO: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        mut up: TcpStream,
        mut req: Request,
    ) -> bool {
        let mut sent = self.ubuf.len() as u64;
        let mut received = self.rbuf.len() as u64;
        let start = io.write_all(&self.out).await.is_ok()
            && io.write_all(&self.ubuf).await.is_ok()
            && io.flush().await.is_ok()
            && up.write_all(&self.rbuf).await.is_ok();
        self.ubuf.clear();
        self.rbuf.clear();
        if start {
            if let Ok((to_app, to_client)) = tokio::io::copy_bidirectional(io, &mut up).await {
                received += to_app;
                sent += to_client;
            }
        }
        if let Some(r) = req.finish.record_mut() {
            r.bytes_received += received;
        }
        req.finish.finish(sent, !start);
        false
    }

    /// Answers a request that could not be forwarded; true if the connection stays open.
    async fn answer_error<IO: AsyncWrite + Unpin>(&mut self, io: &mut IO, mut req: Request, err: ProxyError) -> bool {
        let grpc = self.proxy.fail_record(&err, &mut req.finish);
        self.draining = self.draining || self.drain.is_draining();
        // The client's unsent body (if any) is still in the way: close after the answer.
        let close = req.close || self.draining || req.body_pending;
        write_error(&mut self.out, &err, grpc, close);
        let body_len = error_body_len(&self.out);
        let ok = io.write_all(&self.out).await.is_ok() && io.flush().await.is_ok();
        req.finish.finish(body_len, !ok);
        ok && !close
    }
}

enum Upload {
    Done,
    /// The app began to answer before the whole body was sent.
    Early,
    ClientGone,
    /// The body's chunked framing is broken (the client's fault).
    Bad(&'static str),
    AppGone,
    /// The client or the app moved nothing for `timeouts.idle`.
    Stalled,
}

/// A request body on its way from the client to the app: where it ends (the same scanner as an
/// answer's body), and how much of the client's buffer is body not yet sent.
struct Inflow {
    framing: Relay,
    /// Bytes at the front of the client's buffer that belong to the body, not yet sent.
    ready: usize,
    /// The body's last byte has been scanned.
    ended: bool,
}

impl Inflow {
    fn new(framing: Framing) -> Self {
        let ended = framing == Framing::Length(0);
        Self { framing: Relay { framing, sent: 0, chunked: ChunkScan::default(), ended }, ready: 0, ended }
    }

    /// Scans what arrived behind the bytes already known to be body.
    fn scan(&mut self, rbuf: &[u8]) -> Result<(), &'static str> {
        if !self.ended && rbuf.len() > self.ready {
            let (take, ended) = self.framing.scan(&rbuf[self.ready..])?;
            self.ready += take;
            self.ended = ended;
        }
        Ok(())
    }

    /// Every byte of the body has been sent.
    fn done(&self) -> bool {
        self.ended && self.ready == 0
    }

    /// Body bytes (chunk data, for a chunked body) received so far.
    fn data(&self) -> u64 {
        self.framing.sent
    }
}

/// Most request-body bytes queued for an app that speaks h2 before the client is read again.
const PIPE_LIMIT: usize = 256 * 1024;

/// A request body on its way into a pipe ([`RecvShared`]) the app's client reads: its framing
/// removed, data only, at most [`PIPE_LIMIT`] queued.
struct PipeIn {
    /// None for a request without a body.
    pipe: Option<Arc<RecvShared>>,
    framing: Framing,
    chunks: ChunkScan,
    ended: bool,
}

impl PipeIn {
    fn new(framing: Framing) -> Self {
        let ended = framing == Framing::Length(0);
        let pipe = (!ended).then(Arc::default);
        Self { pipe, framing, chunks: ChunkScan::decoder(), ended }
    }

    /// The request body as the app's client takes it.
    fn body(&self) -> RequestBody {
        let Some(shared) = &self.pipe else { return RequestBody::Empty };
        let hint = match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        };
        RequestBody::H2(RecvBody { shared: shared.clone(), hint })
    }

    /// Moves the body bytes at the front of `rbuf` into the pipe (what follows the body stays),
    /// and says whether to read more of it from the client now: true while the body goes on and
    /// the pipe has room (`rbuf` then has room for the read). `Err` once, when the body's
    /// framing broke: the pipe fails (the app's stream is reset) and nothing more is read.
    fn pump(&mut self, rbuf: &mut BytesMut) -> Result<bool, &'static str> {
        let Self { pipe: Some(pipe), framing, chunks, ended } = self else { return Ok(false) };
        let mut st = pipe.lock();
        let was_ended = *ended;
        let mut pushed = false;
        while !*ended && !rbuf.is_empty() {
            let data = match framing {
                Framing::Length(left) => {
                    let n = (rbuf.len() as u64).min(*left) as usize;
                    *left -= n as u64;
                    *ended = *left == 0;
                    rbuf.split_to(n).freeze()
                }
                Framing::Chunked if chunks.state == Chunk::Data => {
                    let n = (rbuf.len() as u64).min(chunks.size) as usize;
                    chunks.take_data(n as u64);
                    rbuf.split_to(n).freeze()
                }
                Framing::Chunked | Framing::UntilClose => match chunks.feed(rbuf) {
                    Ok((used, done)) => {
                        rbuf.advance(used);
                        *ended = done;
                        continue;
                    }
                    Err(why) => {
                        drop(st);
                        self.fail(why);
                        return Err(why);
                    }
                },
            };
            let len = data.len();
            st.push(data, len);
            pushed = true;
        }
        if *ended {
            st.end = true;
        }
        let want = !*ended && st.queued() < PIPE_LIMIT;
        let reader = if pushed || (*ended && !was_ended) { st.reader.take() } else { None };
        drop(st);
        if let Some(w) = reader {
            w.wake();
        }
        if want {
            rbuf.reserve(READ_SIZE);
        }
        Ok(want)
    }

    /// The body cannot be completed: its reader gets an error (the app's stream is reset).
    fn fail(&mut self, why: &'static str) {
        self.ended = true;
        let Some(pipe) = &self.pipe else { return };
        let reader = {
            let mut st = pipe.lock();
            st.failed = Some(why);
            st.reader.take()
        };
        if let Some(w) = reader {
            w.wake();
        }
    }

    /// Waits until the app has taken from a full pipe (or dropped it); never, once the body
    /// has ended or when there is none.
    async fn room(&self) {
        let Some(pipe) = self.pipe.as_ref().filter(|_| !self.ended) else { return std::future::pending().await };
        std::future::poll_fn(|cx| {
            let mut st = pipe.lock();
            if st.dropped || st.queued() < PIPE_LIMIT {
                Poll::Ready(())
            } else {
                st.conn = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// The rewritten head in `out` as request parts for the proxy's client (origin-form target;
/// the fields that frame HTTP/1.1 or belong to its connection left out), and whether the
/// client accepts trailers.
fn service_parts(out: &[u8]) -> Result<(http::request::Parts, bool), String> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut head = httparse::Request::new(&mut []);
    let mut many;
    let parsed = match head.parse_with_uninit_headers(out, &mut fields) {
        Err(httparse::Error::TooManyHeaders) => {
            many = vec![httparse::EMPTY_HEADER; 4096];
            head = httparse::Request::new(&mut many);
            head.parse(out)
        }
        r => r,
    };
    if !matches!(parsed, Ok(httparse::Status::Complete(_))) {
        return Err("cannot rewrite the request for the app".into());
    }
    let mut builder = http::Request::builder()
        .method(head.method.unwrap_or("GET"))
        .uri(head.path.unwrap_or("/"))
        .version(http::Version::HTTP_11);
    let mut trailers = false;
    for h in head.headers.iter() {
        let name = h.name.as_bytes();
        if eq(name, b"transfer-encoding") || eq(name, b"connection") || eq(name, b"upgrade") {
            continue;
        }
        if eq(name, b"te") {
            trailers = true;
        }
        builder = builder.header(h.name, h.value);
    }
    let (parts, ()) =
        builder.body(()).map_err(|e| format!("cannot rewrite the request for the app: {e}"))?.into_parts();
    Ok((parts, trailers))
}

/// The client's broken request body, as the error it is answered with.
fn bad_body(why: &str) -> ProxyError {
    ProxyError::BadRequest { what: format!("invalid chunked request body: {why}") }
}

/// What one step of [`Conn::relay_duplex`] did.
enum Duplex {
    ToClient(io::Result<usize>),
    FromApp(io::Result<usize>),
    ToApp(io::Result<usize>),
    FromClient(io::Result<usize>),
    Stalled,
}

enum HeadError {
    /// The connection ended before any response byte: a reused one may be replaced.
    Replay,
    Proxy(ProxyError),
    ClientGone,
}

enum BodyError {
    ClientGone,
    AppGone,
}

/// A parsed response head (rewritten into `out`).
struct Response {
    status: u16,
    body: Framing,
    /// The app's connection can carry another request once this body has ended.
    reusable: bool,
}

/// A response body on its way: where it ends and how much of it was sent.
struct Relay {
    framing: Framing,
    /// Body bytes (chunk data only, for chunked bodies) sent to the client.
    sent: u64,
    chunked: ChunkScan,
    /// The body's last byte has been scanned ([`Conn::relay_duplex`]).
    ended: bool,
}

impl Relay {
    /// How much of `bytes` belongs to the body, and whether the body ends there.
    fn scan(&mut self, bytes: &[u8]) -> Result<(usize, bool), &'static str> {
        match &mut self.framing {
            Framing::Length(left) => {
                let n = (bytes.len() as u64).min(*left);
                *left -= n;
                self.sent += n;
                Ok((n as usize, *left == 0))
            }
            Framing::Chunked => {
                let before = self.chunked.data;
                let r = self.chunked.feed(bytes);
                self.sent += self.chunked.data - before;
                r
            }
            Framing::UntilClose => {
                self.sent += bytes.len() as u64;
                Ok((bytes.len(), false))
            }
        }
    }

    /// Moves the body bytes already read (behind the head) into `out`, so head and body leave
    /// in one write: `Ok(true)` if the body has ended with them, `Err` if their framing is
    /// broken (the head alone is sent and the connection cut).
    fn feed_buffered(&mut self, ubuf: &mut BytesMut, out: &mut Vec<u8>) -> Result<bool, &'static str> {
        if self.framing == Framing::Length(0) {
            return Ok(true);
        }
        if ubuf.is_empty() {
            return Ok(false);
        }
        let (take, ended) = self.scan(ubuf)?;
        out.extend_from_slice(&ubuf[..take]);
        ubuf.advance(take);
        Ok(ended)
    }
}

/// Writes tandem's answer for `err` (status, `x-tandem-error`, the one-line body; for a gRPC
/// request, `grpc`, a 200 with the error in `grpc-status` and `grpc-message` and no body, as
/// Envoy answers an HTTP/1.1 gRPC client) into `out`.
fn write_error(out: &mut Vec<u8>, err: &ProxyError, grpc: bool, close: bool) {
    let resp: http::Response<Bytes> = error_response(err, grpc);
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(resp.status().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.status().canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in resp.headers() {
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, resp.body().len() as u64);
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(resp.body());
}

/// The body length of an answer made by [`write_error`].
fn error_body_len(out: &[u8]) -> u64 {
    out.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |at| (out.len() - at - 4) as u64)
}

/// Adds `connection: close` to the head in `out` (before its final empty line), once.
fn add_close(out: &mut Vec<u8>) {
    let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") else { return };
    let head = &out[..end + 2];
    if head.windows(21).any(|w| w.eq_ignore_ascii_case(b"\r\nconnection: close\r\n")) {
        return;
    }
    let at = end + 2;
    out.splice(at..at, b"connection: close\r\n".iter().copied());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::framing::CHUNK_META_LIMIT;

    fn scan_all(input: &[u8], cut: usize) -> Result<(usize, bool, u64), &'static str> {
        let mut s = ChunkScan::default();
        let (a, done) = s.feed(&input[..cut])?;
        if done {
            return Ok((a, true, s.data));
        }
        let (b, done) = s.feed(&input[cut..])?;
        Ok((a + b, done, s.data))
    }

    #[test]
    fn chunked_bodies_end_where_their_framing_says_at_every_cut() {
        let body = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\ngrpc-status: 0\r\n\r\nGET /next";
        let end = body.len() - b"GET /next".len();
        for cut in 0..body.len() {
            let (n, done, data) = scan_all(body, cut).expect("valid");
            assert!(done, "cut {cut}");
            assert_eq!(n, end, "cut {cut}");
            assert_eq!(data, 15);
        }
        let (n, done, _) = scan_all(b"0\r\n\r\n", 2).expect("valid");
        assert!(done && n == 5);
    }

    #[test]
    fn broken_chunked_framing_is_an_error() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"11111111111111111\r\n",
            b"0\r\n\rX",
            b"5\nhello\r\n",
            b"5\r\nhello\n",
            b"5;e\nhello",
            b"0x5\r\n",
            b"-5\r\n",
            b"+5\r\n",
            b"0\r\nno colon\r\n",
            b"0\r\n: empty name\r\n",
            b"0\r\nx: bare lf\n",
        ] {
            assert!(ChunkScan::default().feed(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let (n, done) = ChunkScan::default().feed(b"5\r\nhel").expect("valid so far");
        assert_eq!((n, done), (6, false));
    }

    #[test]
    fn chunk_extensions_and_trailers_are_bounded_per_body() {
        let ext = format!("5;{}\r\n", "e".repeat(CHUNK_META_LIMIT + 1));
        assert!(ChunkScan::default().feed(ext.as_bytes()).is_err());
        let trailer = format!("0\r\nx-t: {}\r\n\r\n", "t".repeat(CHUNK_META_LIMIT));
        assert!(ChunkScan::default().feed(trailer.as_bytes()).is_err());
        let fits = format!("5;{}\r\nhello\r\n0\r\nx-t: 1\r\n\r\n", "e".repeat(CHUNK_META_LIMIT - 100));
        assert_eq!(ChunkScan::default().feed(fits.as_bytes()), Ok((fits.len(), true)));
    }

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_length(b"42"), Some(42));
        assert_eq!(parse_length(b" 7 "), Some(7));
        for bad in [&b""[..], b"-1", b"1,2", b"+3", b"99999999999999999999"] {
            assert_eq!(parse_length(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn connection_tokens_name_fields_up_to_the_limit() {
        let mut n = Named::default();
        assert!(n.add(b"keep-alive, X-Secret ,close"));
        assert!(n.close && n.keep_alive);
        assert!(n.names(b"x-secret") && !n.names(b"close"));
        assert!(n.add(b"a, b, c, d, e, f, g, h, i, j, k, l, m, n, o"), "sixteen named fields fit");
        assert!(!n.add(b"p"), "a seventeenth named field is too many");
    }

    #[test]
    fn close_is_added_once_before_the_end_of_the_head() {
        let mut out = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi".to_vec();
        add_close(&mut out);
        add_close(&mut out);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi");
    }

    #[test]
    fn error_answers_carry_status_reason_code_and_length() {
        let err = ProxyError::TooManyRequests { limit: 3 };
        let mut out = Vec::new();
        write_error(&mut out, &err, false, true);
        let text = String::from_utf8(out.clone()).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{text}");
        assert!(text.contains("x-tandem-error: UO\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        let body = "overloaded (UO): 3 requests already in flight\n";
        assert!(text.ends_with(&format!("content-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())));
        assert_eq!(error_body_len(&out), body.len() as u64);
    }

    #[test]
    fn decimals() {
        for n in [0u64, 7, 10, 404, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }
}
