//! The codec's client half to an HTTP/1.1 app, for requests a server other than the codec
//! parsed (tandem's HTTP/2 server, [`crate::h2::server`]): the request is written to one of the
//! codec's connections to the app ([`AppStreams`], the one pool), its body streamed as it comes,
//! and the answer comes back as an `http::Response` whose body ([`AppBody`]) is read from that
//! connection, de-chunked, as the server polls it; the rest of the request body goes out
//! meanwhile. The connection goes back to the pool when both have ended.
//!
//! Failures map as on every other path: `UF` for the connect, `UC` for a connection that ends
//! before a full answer (a pooled one that fails before any answer byte is replaced when the
//! request could not have reached the app or its method is idempotent), `UPE` for a head that
//! is not HTTP/1.1 or is over 1 MiB. A body cut short
//! ends with an error, which the server turns into a reset stream (h2) or a cut connection.

use crate::base::body::CountingBody;
use crate::base::framing::{
    final_answer, put_chunk_size, put_last_chunk, Chunk, ChunkScan, Framing, HEAD_TOO_LARGE, MAX_RESPONSE_HEAD,
    READ_SIZE,
};
use crate::upstream::pool::AppStreams;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What polling a body gives.
type Polled = Poll<Option<Result<Frame<Bytes>, io::Error>>>;

/// Most bytes of a chunked body's trailer section.
const MAX_TRAILERS: usize = 64 * 1024;

/// The buffer an answer's head is read into (most answers to a bodiless request arrive whole
/// in it): 4 KiB, kept with the app's connection while it idles and reused for its next
/// request once the bytes of the last answer have been sent on.
const FIRST_READ: usize = 4096;

/// Why a request to the app got no answer (the proxy maps it to its reason code).
#[derive(Debug)]
pub enum SendError {
    /// The connect failed or timed out (`TimedOut`).
    Connect(io::Error),
    /// The connection ended before a full answer head.
    Closed,
    /// The answer head was not valid HTTP/1.1, or over 1 MiB.
    Protocol(String),
    /// The client's request body failed before the answer came (the client's fault).
    ClientBody,
}

/// Sends a request (`parts`: origin-form URI, headers already rewritten for the app; `body`,
/// taken when it is sent, `None` for none) and
/// returns the app's answer, its body still on the connection. A request body is streamed as
/// its frames come (`Content-Length` as the request says, else chunked, trailers included),
/// before and while the answer arrives: the rest of it goes out as the answer's body is polled
/// ([`AppBody`]), so an app that answers at once and then reads (an echo) gets all of it.
pub async fn send(
    streams: &Arc<AppStreams>,
    parts: &http::request::Parts,
    body: &mut Option<CountingBody>,
) -> Result<Response<AppBody>, SendError> {
    let closed = || SendError::Closed;
    let head_only = parts.method == http::Method::HEAD;
    // Sent again after a pooled connection ended without an answer only if idempotent (RFC 9110
    // section 9.2.2), and only while none of its body was taken.
    let idempotent = crate::base::fields::is_idempotent(parts.method.as_str().as_bytes());
    let has_body = body.is_some();
    let chunked = has_body && !parts.headers.contains_key(http::header::CONTENT_LENGTH);
    'attempt: loop {
        let (mut up, mut buf, reused) = match streams.take_with_buf() {
            Some((s, b)) => (s, b, true),
            // Boxed: a new connection is the rare case, and its future would otherwise make
            // every request's future larger.
            None => match Box::pin(streams.connect()).await {
                Ok(s) => (s, BytesMut::new(), false),
                Err(e) => return Err(SendError::Connect(e)),
            },
        };
        // The request head goes out from the buffer its answer is then read into.
        buf.clear();
        if !buf.try_reclaim(FIRST_READ) {
            buf = BytesMut::with_capacity(FIRST_READ);
        }
        write_head(&mut buf, parts, chunked);
        if up.write_all(&buf).await.is_err() {
            if reused {
                continue 'attempt;
            }
            return Err(closed());
        }
        buf.clear();
        let mut upload = if has_body {
            match body.take() {
                Some(body) => Some(Box::new(Upload { body, out: BytesMut::new(), chunked, done: false })),
                // A body already partly sent cannot be sent again.
                None => return Err(closed()),
            }
        } else {
            None
        };
        loop {
            let read = std::future::poll_fn(|cx| {
                if let Some(u) = upload.as_mut() {
                    match u.poll_send(&up, cx) {
                        Poll::Ready(Ok(())) => upload = None,
                        // The app stopped reading: its answer may still come.
                        Poll::Ready(Err(UploadError::App)) => upload = None,
                        Poll::Ready(Err(UploadError::Client)) => return Poll::Ready(Err(SendError::ClientBody)),
                        Poll::Pending => {}
                    }
                }
                if buf.capacity() == buf.len() {
                    buf.reserve(READ_SIZE);
                }
                poll_read_app(&mut up, cx, &mut buf).map_err(|_| SendError::Closed)
            });
            match read.await {
                Err(SendError::ClientBody) => return Err(SendError::ClientBody),
                Ok(0) | Err(_) if buf.is_empty() && reused && idempotent && !has_body => continue 'attempt,
                Ok(0) | Err(_) => return Err(closed()),
                Ok(_) => {}
            }
            match answer(&mut buf, head_only) {
                Ok(Some((resp, state, reusable))) => {
                    let done = matches!(state, State::Done);
                    let mut body = AppBody { stream: Some(up), buf, state, pool: streams.clone(), reusable, upload };
                    if done {
                        // No body: the connection is free at once (once the upload is done).
                        body.end();
                    }
                    let (parts, ()) = resp.into_parts();
                    return Ok(Response::from_parts(parts, body));
                }
                Ok(None) if buf.len() > MAX_RESPONSE_HEAD => return Err(SendError::Protocol(HEAD_TOO_LARGE.into())),
                Ok(None) => {}
                Err(cause) => return Err(SendError::Protocol(cause)),
            }
        }
    }
}

/// Reads what the app sent into `buf` through `AsyncRead`, which clears the socket's readiness
/// after a short read, so the pool's check of the idle connection ([`AppStreams::take`]) costs
/// no system call. `try_read_buf` leaves the readiness set: that check then cost a `recvfrom`
/// (`EAGAIN`) per request, two reads per answer instead of one.
fn poll_read_app(up: &mut TcpStream, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
    tokio_util::io::poll_read_buf(Pin::new(up), cx, buf)
}

/// A request body on its way to the app, driven by whoever waits for the answer.
pub struct Upload {
    body: CountingBody,
    /// Encoded bytes not yet written.
    out: BytesMut,
    chunked: bool,
    /// The body's last frame has been encoded.
    done: bool,
}

enum UploadError {
    /// The app's connection failed while the body was written.
    App,
    /// The client's body failed (its stream reset, its framing broken).
    Client,
}

impl Upload {
    /// Writes what it can: `Ready(Ok)` once the whole body is sent.
    fn poll_send(&mut self, up: &TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), UploadError>> {
        loop {
            while !self.out.is_empty() {
                if ready!(up.poll_write_ready(cx)).is_err() {
                    return Poll::Ready(Err(UploadError::App));
                }
                match up.try_write(&self.out) {
                    Ok(n) => self.out.advance(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Poll::Ready(Err(UploadError::App)),
                }
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => {
                    if self.chunked {
                        put_last_chunk(&mut self.out, None);
                    }
                    self.done = true;
                }
                Some(Err(_)) => return Poll::Ready(Err(UploadError::Client)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        if self.chunked {
                            put_chunk_size(&mut self.out, data.len());
                            self.out.extend_from_slice(&data);
                            self.out.extend_from_slice(b"\r\n");
                        } else {
                            self.out.extend_from_slice(&data);
                        }
                    }
                    Err(frame) => {
                        if self.chunked {
                            put_last_chunk(&mut self.out, frame.into_trailers().ok().as_ref());
                        }
                        self.done = true;
                    }
                },
            }
        }
    }
}

/// The HTTP/1.1 request head for `req`, appended to `buf` (with `Transfer-Encoding: chunked`
/// for a body of unknown length).
fn write_head(buf: &mut BytesMut, req: &http::request::Parts, chunked: bool) {
    buf.extend_from_slice(req.method.as_str().as_bytes());
    buf.extend_from_slice(b" ");
    buf.extend_from_slice(req.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    if chunked {
        buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    for (name, value) in &req.headers {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
}

/// Parses the answer head at the front of `buf` (skipping interim `1xx` answers) into a
/// response without hop-by-hop fields; `Ok(None)` if incomplete. The head's bytes are split
/// off `buf` and shared by the header values.
#[allow(clippy::type_complexity)]
fn answer(buf: &mut BytesMut, head_only: bool) -> Result<Option<(Response<()>, State, bool)>, String> {
    // One parse: the fields that stay are noted by name and by where their value lies in the
    // head, whose bytes do not move when they are split off below.
    let framing = final_answer(buf, head_only, false, |resp, answer, head| {
        let status = StatusCode::from_u16(resp.code.unwrap_or_default()).map_err(|e| format!("invalid status: {e}"))?;
        let base = head.as_ptr() as usize;
        let mut kept = Vec::with_capacity(resp.headers.len());
        for h in resp.headers.iter() {
            if answer.drops(h.name.as_bytes()) {
                continue;
            }
            let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
                return Err(format!("invalid header name {:?}", h.name));
            };
            kept.push((name, h.value.as_ptr() as usize - base, h.value.len()));
        }
        Ok((status, answer.body, answer.reusable, kept))
    })?;
    let Some(((status, body, reusable, kept), len)) = framing else { return Ok(None) };
    let state = match body {
        Framing::Length(0) => State::Done,
        Framing::Length(n) => State::Length(n),
        Framing::Chunked => State::Chunked(ChunkScan::decoder()),
        Framing::UntilClose => State::UntilClose,
    };
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(kept.len());
    for (name, at, n) in kept {
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(at..at + n)) else {
            return Err(format!("invalid value in {name}"));
        };
        headers.append(name, value);
    }
    let mut out = Response::new(());
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(Some((out, state, reusable)))
}

/// How the rest of an answer's body is framed.
#[derive(Debug)]
enum State {
    Length(u64),
    Chunked(ChunkScan),
    UntilClose,
    Done,
}

/// An answer's body, read from the app's connection as it is polled. The connection goes back
/// to the pool when the body ends (if it can carry another request) and is closed if the body
/// is dropped before its end.
pub struct AppBody {
    stream: Option<TcpStream>,
    buf: BytesMut,
    state: State,
    pool: Arc<AppStreams>,
    reusable: bool,
    /// The rest of the request body, sent while the answer is read.
    upload: Option<Box<Upload>>,
}

impl AppBody {
    /// The body has ended: the connection is returned if nothing else came on it.
    fn end(&mut self) {
        self.state = State::Done;
        if let Some(s) = self.stream.take() {
            // A request body not all sent leaves the connection mid-request: it is not reused.
            if self.reusable && self.buf.is_empty() && self.upload.is_none() {
                // The buffer goes along for the connection's next answer, unless a long body
                // grew it.
                let buf = std::mem::take(&mut self.buf);
                let buf = if buf.capacity() <= FIRST_READ { buf } else { BytesMut::new() };
                self.pool.put_with_buf(s, buf);
            }
        }
        self.buf = BytesMut::new();
    }

    fn fail(&mut self, why: &'static str) -> Polled {
        self.state = State::Done;
        self.stream = None;
        Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, why))))
    }

    /// The next frame from what is buffered; `None` if more bytes are needed.
    fn next_buffered(&mut self) -> Option<Polled> {
        loop {
            match &mut self.state {
                State::Done => return Some(Poll::Ready(None)),
                _ if self.buf.is_empty() => return None,
                State::Length(left) => {
                    let n = (self.buf.len() as u64).min(*left);
                    *left -= n;
                    let data = self.buf.split_to(n as usize).freeze();
                    if *left == 0 {
                        self.end();
                    }
                    return Some(Poll::Ready(Some(Ok(Frame::data(data)))));
                }
                State::UntilClose => {
                    let data = self.buf.split().freeze();
                    return Some(Poll::Ready(Some(Ok(Frame::data(data)))));
                }
                State::Chunked(scan) => match scan.state {
                    Chunk::Data => {
                        let n = (self.buf.len() as u64).min(scan.size);
                        scan.take_data(n);
                        let data = self.buf.split_to(n as usize).freeze();
                        return Some(Poll::Ready(Some(Ok(Frame::data(data)))));
                    }
                    Chunk::TrailerStart => return self.trailers(),
                    _ => match scan.feed(&self.buf) {
                        Ok((n, _)) => self.buf.advance(n),
                        Err(why) => return Some(self.fail(why)),
                    },
                },
            }
        }
    }

    /// The trailer section of a chunked body, once it is all buffered.
    fn trailers(&mut self) -> Option<Polled> {
        for end in [&b"\r\n"[..], b"\n"] {
            if self.buf.starts_with(end) {
                self.buf.advance(end.len());
                self.end();
                return Some(Poll::Ready(None));
            }
        }
        let mut fields = [httparse::EMPTY_HEADER; 64];
        match httparse::parse_headers(&self.buf, &mut fields) {
            Ok(httparse::Status::Complete((len, fields))) => {
                let mut trailers = HeaderMap::with_capacity(fields.len());
                for f in fields.iter() {
                    if let (Ok(n), Ok(v)) =
                        (HeaderName::from_bytes(f.name.as_bytes()), HeaderValue::from_bytes(f.value))
                    {
                        trailers.append(n, v);
                    }
                }
                self.buf.advance(len);
                self.end();
                Some(Poll::Ready(Some(Ok(Frame::trailers(trailers)))))
            }
            Ok(httparse::Status::Partial) if self.buf.len() <= MAX_TRAILERS => None,
            Ok(httparse::Status::Partial) => Some(self.fail("trailer section too large")),
            Err(_) => Some(self.fail("invalid trailer section")),
        }
    }
}

impl Body for AppBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = &mut *self;
        // The rest of the request body goes out as the answer is read (an app may answer first
        // and read after).
        if let (Some(u), Some(stream)) = (this.upload.as_mut(), this.stream.as_ref()) {
            match u.poll_send(stream, cx) {
                Poll::Ready(Ok(())) => this.upload = None,
                Poll::Ready(Err(UploadError::App)) => {}
                Poll::Ready(Err(UploadError::Client)) => return this.fail("the request body failed"),
                Poll::Pending => {}
            }
        }
        loop {
            if let Some(ready) = this.next_buffered() {
                return ready;
            }
            let Some(stream) = this.stream.as_mut() else { return this.fail("the app's connection is gone") };
            if this.buf.capacity() - this.buf.len() < 1024 {
                this.buf.reserve(READ_SIZE);
            }
            match ready!(poll_read_app(stream, cx, &mut this.buf)) {
                Ok(0) if matches!(this.state, State::UntilClose) => {
                    this.state = State::Done;
                    this.stream = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail("the app closed the connection before the end of the body"),
                Ok(_) => {}
                Err(e) => {
                    this.state = State::Done;
                    this.stream = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_head_loses_its_hop_by_hop_fields_and_keeps_the_rest() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
               Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nX-App: yes\r\n\r\n3\r\nabc"
                [..],
        );
        let (resp, state, reusable) = answer(&mut buf, false).expect("valid").expect("complete");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers().len(), 1, "{:?}", resp.headers());
        assert_eq!(resp.headers()["x-app"], "yes");
        assert!(matches!(state, State::Chunked(_)) && reusable);
        assert_eq!(&buf[..], b"3\r\nabc", "the body's first bytes stay buffered");

        let mut buf = BytesMut::from(&b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n"[..]);
        let (_, state, reusable) = answer(&mut buf, false).expect("valid").expect("complete");
        assert!(matches!(state, State::Length(2)) && !reusable, "HTTP/1.0 without keep-alive closes");
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"[..]);
        let (_, state, _) = answer(&mut buf, true).expect("valid").expect("complete");
        assert!(matches!(state, State::Done), "a HEAD answer has no body");
        assert!(answer(&mut BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Len"[..]), false).expect("valid").is_none());
        assert!(answer(&mut BytesMut::from(&b"SMTP ready\r\n\r\n"[..]), false).is_err());
    }
}
