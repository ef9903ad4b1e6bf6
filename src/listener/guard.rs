//! The HTTP/1 request-framing guard: marks requests that carry both `Content-Length` and
//! `Transfer-Encoding` so the inbound service can refuse them (hyper silently drops the length).
//!
//! hyper's HTTP/1 parser resolves such a request itself (Transfer-Encoding wins and
//! `Content-Length` never reaches the `HeaderMap`), so a service cannot see the conflict that
//! request smuggling relies on. [`H1Guard`] sits between the downstream socket and hyper and
//! follows the request framing byte for byte the way hyper does (RFC 9112 section 6):
//!
//! - request heads line by line (leading empty lines, the request line, header lines);
//! - `Content-Length` bodies, skipped in bulk;
//! - chunked bodies: chunk-size lines (with extensions) and trailers are scanned, chunk data is
//!   skipped in bulk;
//! - pipelined requests, one after the other.
//!
//! It mirrors hyper's HTTP/1 server with its default parser settings (httparse's request rules,
//! hyper's chunked decoder state for state); a unit test runs hyper's own server behind the guard
//! on random pipelined streams cut at random places to keep the two in step. A listener that
//! relaxes hyper's parser (obsolete line folding, invalid header lines) must revisit this module.
//!
//! When a head carries both fields, every `Content-Length` field name in it is rewritten in place
//! to the same-length reserved name [`CL_TE_MARK`] (`x-tandem-cl-te`). hyper then frames the body
//! by `Transfer-Encoding` exactly as it would have, and the service sees the mark and answers
//! 400 `DPE` with `Connection: close`. Nothing else is ever modified.
//!
//! To rewrite a `Content-Length` line that arrives before the `Transfer-Encoding` line, the guard
//! holds back a head's header lines while they are incomplete or while a `Content-Length` line
//! waits for the end of its head (at most `limit` bytes, hyper's own head-buffer limit; beyond it
//! the guard gives up and passes everything on). The request line is never held, so hyper (and
//! its header-read timer) starts as soon as the first byte arrives; hyper cannot parse a head
//! before it is complete anyway, so holding costs no latency.
//!
//! The guard stops inspecting a connection, for good, when anything is not what it expects: a
//! request with `Upgrade` or `CONNECT` (the bytes after it may be a tunnel), the HTTP/2 preface
//! (`PRI * HTTP/2.0`, h2c prior knowledge), anything hyper would refuse anyway (HTTP/1.0 with
//! `Transfer-Encoding`, a final encoding other than chunked, a bad length, a malformed chunk line),
//! or a head over the limit. Giving up is always safe: the bytes pass untouched and hyper decides.
//!
//! On the hot path the cost is a scan of head bytes for line ends and a few length-and-byte
//! comparisons per header line; body bytes are counted, not read, and the held-back path (a copy)
//! only runs when a head arrives split across reads.

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use crate::base::fields::CL_TE_MARK;

const MARK: &[u8; 14] = b"x-tandem-cl-te";
const CONTENT_LENGTH: &[u8; 14] = b"content-length";
const TRANSFER_ENCODING: &[u8; 17] = b"transfer-encoding";
const UPGRADE: &[u8; 7] = b"upgrade";

/// The framing tracker: a pure state machine over the downstream byte stream.
#[derive(Debug)]
pub struct Tracker {
    state: State,
    /// Bytes at the front of the next window that the last call kept back.
    kept: usize,
    /// Where scanning resumes in the next window (a header-line start within the kept bytes).
    resume: usize,
    /// Offsets, in the kept bytes, of `Content-Length` lines waiting for the end of their head.
    held_cl: Vec<usize>,
    /// Most bytes ever kept back; beyond it the tracker gives up.
    limit: usize,
    /// Requests marked so far.
    marked: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Between requests: skipping the empty lines a parser accepts before a request line.
    Idle,
    /// Inside a request line (released as it arrives; only its ends are remembered).
    RequestLine(RequestLine),
    /// Inside the header lines of a head.
    Headers(Head),
    /// A `Content-Length` body with this many bytes left.
    Fixed(u64),
    /// A chunked body.
    Chunked(Chunk),
    /// No more inspection on this connection.
    Passthrough,
}

/// The first and last bytes of a request line: enough for the method and the version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct RequestLine {
    first: [u8; 8],
    first_len: usize,
    last: [u8; 10],
    last_len: usize,
}

impl RequestLine {
    fn push(&mut self, bytes: &[u8]) {
        if self.first_len < self.first.len() {
            let n = bytes.len().min(self.first.len() - self.first_len);
            self.first[self.first_len..self.first_len + n].copy_from_slice(&bytes[..n]);
            self.first_len += n;
        }
        let cap = self.last.len();
        if bytes.len() >= cap {
            self.last.copy_from_slice(&bytes[bytes.len() - cap..]);
            self.last_len = cap;
        } else {
            let keep = (cap - bytes.len()).min(self.last_len);
            self.last.copy_within(self.last_len - keep..self.last_len, 0);
            self.last[keep..keep + bytes.len()].copy_from_slice(bytes);
            self.last_len = keep + bytes.len();
        }
    }

    /// What the complete line says: `None` if the guard should stop inspecting.
    fn finish(&self) -> Option<Head> {
        let mut tail = &self.last[..self.last_len];
        if let [rest @ .., b'\r'] = tail {
            tail = rest;
        }
        let http11 = match tail {
            [.., b' ', b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'1'] => true,
            [.., b' ', b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'0'] => false,
            // `PRI * HTTP/2.0` (the h2 preface), HTTP/0.9, garbage: not ours to follow.
            _ => return None,
        };
        let connect = self.first[..self.first_len].starts_with(b"CONNECT ");
        Some(Head { http11, connect, ..Head::default() })
    }
}

/// What the header lines of one head said so far.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Head {
    http11: bool,
    connect: bool,
    upgrade: bool,
    cl_seen: bool,
    /// The length every `Content-Length` line agreed on (`None` while unseen or if invalid).
    cl: Option<u64>,
    cl_invalid: bool,
    te_seen: bool,
    /// Whether the last `Transfer-Encoding` line ends in `chunked` (hyper's rule).
    te_chunked: bool,
}

impl Head {
    /// The state after this head: how its body is framed, or `Passthrough`.
    fn body(&self) -> State {
        if self.upgrade || self.connect {
            return State::Passthrough;
        }
        if self.te_seen {
            // hyper refuses Transfer-Encoding on HTTP/1.0 and a final encoding other than
            // chunked; either way the connection ends, and there is nothing left to follow.
            return if self.http11 && self.te_chunked { State::Chunked(Chunk::Start) } else { State::Passthrough };
        }
        if self.cl_seen {
            return match (self.cl_invalid, self.cl) {
                (false, Some(0)) => State::Idle,
                (false, Some(n)) => State::Fixed(n),
                _ => State::Passthrough,
            };
        }
        State::Idle
    }
}

/// The chunked-body states, mirroring hyper's decoder one for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting the first hex digit of a chunk size.
    Start,
    Size(u64),
    /// Whitespace after the size.
    SizeLws(u64),
    /// A chunk extension, up to CR.
    Extension(u64),
    SizeLf(u64),
    /// Chunk data, this many bytes left.
    Data(u64),
    DataCr,
    DataLf,
    /// A trailer line, up to CR.
    Trailer,
    TrailerLf,
    /// After the last chunk or a trailer line: CR ends the body, anything else starts a trailer.
    EndCr,
    EndLf,
}

fn eq_ignore_case(a: &[u8], lower: &[u8]) -> bool {
    a.len() == lower.len() && a.iter().zip(lower).all(|(x, y)| x.to_ascii_lowercase() == *y)
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn is_chunked(v: &[u8]) -> bool {
    let last = v.rsplit(|&b| b == b',').next().unwrap_or(v);
    eq_ignore_case(trim(last), b"chunked")
}

/// The first `needle` in `hay`, eight bytes at a time (the line scan is most of the guard's cost).
fn find(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * u64::from(needle);
    let mut chunks = hay.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ pattern;
        // The lowest set bit marks the first zero byte of `x` exactly (borrows only run upward).
        let found = x.wrapping_sub(LO) & !x & HI;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks.remainder().iter().position(|&b| b == needle).map(|i| at + i)
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

/// A header line, classified by its exact name (requests allow no space before the colon).
enum Field<'a> {
    ContentLength(&'a [u8]),
    TransferEncoding(&'a [u8]),
    Upgrade,
    Other,
}

fn classify(line: &[u8]) -> Field<'_> {
    if line.get(14) == Some(&b':') && eq_ignore_case(&line[..14], CONTENT_LENGTH) {
        Field::ContentLength(trim(&line[15..]))
    } else if line.get(17) == Some(&b':') && eq_ignore_case(&line[..17], TRANSFER_ENCODING) {
        Field::TransferEncoding(trim(&line[18..]))
    } else if line.get(7) == Some(&b':') && eq_ignore_case(&line[..7], UPGRADE) {
        Field::Upgrade
    } else {
        Field::Other
    }
}

impl Tracker {
    /// A tracker that keeps back at most `limit` bytes of a head.
    pub fn new(limit: usize) -> Self {
        Self { state: State::Idle, kept: 0, resume: 0, held_cl: Vec::new(), limit, marked: 0 }
    }

    /// A tracker that never inspects anything.
    pub fn passthrough() -> Self {
        Self { state: State::Passthrough, ..Self::new(0) }
    }

    /// Whether the tracker has stopped inspecting this connection.
    pub fn is_passthrough(&self) -> bool {
        self.state == State::Passthrough
    }

    /// Requests marked so far.
    pub fn marked(&self) -> u64 {
        self.marked
    }

    /// How many bytes the last call kept back (they must open the next window).
    pub fn kept(&self) -> usize {
        self.kept
    }

    /// Stops inspecting (end of stream while a head was held back).
    pub fn give_up(&mut self) {
        self.state = State::Passthrough;
        self.kept = 0;
        self.resume = 0;
        self.held_cl.clear();
    }

    /// Scans a window: the bytes the last call kept back, then the new ones. Marks what needs
    /// marking in place and returns how many leading bytes may go on to the parser; the rest
    /// must be kept and passed again, at the front of the next window.
    pub fn feed(&mut self, window: &mut [u8]) -> usize {
        debug_assert!(window.len() >= self.kept, "the kept bytes must open the window");
        let len = window.len();
        let mut p = self.resume.min(len);
        // The first byte that must be kept back: a held Content-Length line or an incomplete
        // header line.
        let mut hold_from: Option<usize> = self.held_cl.first().copied();
        while p < len {
            match &mut self.state {
                State::Passthrough => break,
                State::Idle => match window[p..].iter().position(|&b| b != b'\r' && b != b'\n') {
                    Some(i) => {
                        p += i;
                        self.state = State::RequestLine(RequestLine::default());
                    }
                    None => p = len,
                },
                State::RequestLine(line) => match find(&window[p..], b'\n') {
                    None => {
                        line.push(&window[p..]);
                        p = len;
                    }
                    Some(i) => {
                        line.push(&window[p..p + i]);
                        p += i + 1;
                        self.state = match line.finish() {
                            Some(head) => State::Headers(head),
                            None => State::Passthrough,
                        };
                    }
                },
                State::Headers(head) => {
                    let Some(i) = find(&window[p..], b'\n') else {
                        // An incomplete header line: it may be a Content-Length line.
                        hold_from = Some(hold_from.map_or(p, |h| h.min(p)));
                        break;
                    };
                    let start = p;
                    let end = p + i;
                    p = end + 1;
                    let line = match &window[start..end] {
                        [rest @ .., b'\r'] => rest,
                        l => l,
                    };
                    if line.is_empty() {
                        // The end of the head.
                        if head.cl_seen && head.te_seen {
                            self.marked += 1;
                        }
                        self.state = head.body();
                        self.held_cl.clear();
                        hold_from = None;
                        continue;
                    }
                    if matches!(line[0], b' ' | b'\t') {
                        // Obsolete line folding: hyper refuses it.
                        self.state = State::Passthrough;
                        break;
                    }
                    match classify(line) {
                        Field::ContentLength(v) => {
                            head.cl_seen = true;
                            match (crate::base::fields::parse_length(v), head.cl) {
                                (Some(n), None) if !head.cl_invalid => head.cl = Some(n),
                                (Some(n), Some(prev)) if n == prev => {}
                                _ => {
                                    head.cl_invalid = true;
                                    head.cl = None;
                                }
                            }
                            if head.te_seen {
                                window[start..start + MARK.len()].copy_from_slice(MARK);
                            } else {
                                self.held_cl.push(start);
                                hold_from = Some(hold_from.map_or(start, |h| h.min(start)));
                            }
                        }
                        Field::TransferEncoding(v) => {
                            head.te_seen = true;
                            head.te_chunked = is_chunked(v);
                            for &at in &self.held_cl {
                                window[at..at + MARK.len()].copy_from_slice(MARK);
                            }
                            self.held_cl.clear();
                            hold_from = None;
                        }
                        Field::Upgrade => head.upgrade = true,
                        Field::Other => {}
                    }
                }
                State::Fixed(n) => {
                    let take = (len - p).min(usize::try_from(*n).unwrap_or(usize::MAX));
                    p += take;
                    *n -= take as u64;
                    if *n == 0 {
                        self.state = State::Idle;
                    }
                }
                State::Chunked(c) => {
                    match *c {
                        Chunk::Data(n) => {
                            let take = (len - p).min(usize::try_from(n).unwrap_or(usize::MAX));
                            p += take;
                            let left = n - take as u64;
                            *c = if left == 0 { Chunk::DataCr } else { Chunk::Data(left) };
                            continue;
                        }
                        Chunk::Extension(n) => {
                            match window[p..].iter().position(|&b| b == b'\r' || b == b'\n') {
                                None => p = len,
                                Some(i) if window[p + i] == b'\r' => {
                                    p += i + 1;
                                    *c = Chunk::SizeLf(n);
                                }
                                Some(_) => self.state = State::Passthrough,
                            }
                            continue;
                        }
                        Chunk::Trailer => {
                            match find(&window[p..], b'\r') {
                                None => p = len,
                                Some(i) => {
                                    p += i + 1;
                                    *c = Chunk::TrailerLf;
                                }
                            }
                            continue;
                        }
                        _ => {}
                    }
                    let b = window[p];
                    p += 1;
                    let next = match (*c, b) {
                        (Chunk::Start, _) => hex(b).map(Chunk::Size),
                        (Chunk::Size(n), _) if hex(b).is_some() => {
                            n.checked_mul(16).and_then(|m| m.checked_add(hex(b).unwrap_or(0))).map(Chunk::Size)
                        }
                        (Chunk::Size(n) | Chunk::SizeLws(n), b' ' | b'\t') => Some(Chunk::SizeLws(n)),
                        (Chunk::Size(n) | Chunk::SizeLws(n), b';') => Some(Chunk::Extension(n)),
                        (Chunk::Size(n) | Chunk::SizeLws(n), b'\r') => Some(Chunk::SizeLf(n)),
                        (Chunk::SizeLf(0), b'\n') => Some(Chunk::EndCr),
                        (Chunk::SizeLf(n), b'\n') => Some(Chunk::Data(n)),
                        (Chunk::DataCr, b'\r') => Some(Chunk::DataLf),
                        (Chunk::DataLf, b'\n') => Some(Chunk::Start),
                        (Chunk::TrailerLf, b'\n') => Some(Chunk::EndCr),
                        (Chunk::EndCr, b'\r') => Some(Chunk::EndLf),
                        // Any other byte opens a trailer line (and is part of it).
                        (Chunk::EndCr, _) => Some(Chunk::Trailer),
                        (Chunk::EndLf, b'\n') => {
                            self.state = State::Idle;
                            continue;
                        }
                        _ => None,
                    };
                    match next {
                        Some(n) => *c = n,
                        None => self.state = State::Passthrough,
                    }
                }
            }
        }
        if self.state == State::Passthrough {
            self.kept = 0;
            self.resume = 0;
            self.held_cl.clear();
            return len;
        }
        let release = hold_from.unwrap_or(len).min(len);
        let kept = len - release;
        if kept > self.limit {
            // A head larger than hyper accepts: let hyper see it and refuse it.
            self.give_up();
            return len;
        }
        for at in &mut self.held_cl {
            *at -= release;
        }
        self.kept = kept;
        self.resume = if matches!(self.state, State::Headers(_)) { p - release } else { 0 };
        release
    }
}

/// The downstream stream of an HTTP/1 connection, with its request framing tracked (see the
/// module doc). Writes pass straight through.
pub struct H1Guard<T> {
    inner: T,
    tracker: Tracker,
    /// Scanned bytes ready for the reader, ahead of `kept`.
    ready: BytesMut,
    /// Bytes held back: the tail of a head the tracker has not finished.
    kept: BytesMut,
}

impl<T> H1Guard<T> {
    /// Guards `inner`, keeping back at most `limit` bytes of a head (use hyper's `max_buf_size`).
    pub fn new(inner: T, limit: usize) -> Self {
        Self { inner, tracker: Tracker::new(limit), ready: BytesMut::new(), kept: BytesMut::new() }
    }

    /// Wraps `inner` without inspecting anything (listeners that do not need the guard).
    pub fn passthrough(inner: T) -> Self {
        Self { inner, tracker: Tracker::passthrough(), ready: BytesMut::new(), kept: BytesMut::new() }
    }

    /// Requests marked on this connection so far.
    pub fn marked(&self) -> u64 {
        self.tracker.marked()
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for H1Guard<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.kept.is_empty() {
                if this.tracker.is_passthrough() {
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                // Fast path: read straight into the caller's buffer and scan the new bytes.
                let before = buf.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let filled = buf.filled().len();
                if filled == before {
                    return Poll::Ready(Ok(()));
                }
                let release = this.tracker.feed(&mut buf.filled_mut()[before..]);
                if before + release < filled {
                    this.kept.extend_from_slice(&buf.filled()[before + release..]);
                    buf.set_filled(before + release);
                }
                if release > 0 {
                    return Poll::Ready(Ok(()));
                }
                // Everything new is held back: read on.
            } else {
                // Slow path: a head is held back; read behind it and scan again.
                let old = this.kept.len();
                let want = buf.remaining().max(4096);
                this.kept.resize(old + want, 0);
                let mut rb = ReadBuf::new(&mut this.kept[old..]);
                let polled = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
                let n = rb.filled().len();
                this.kept.truncate(old + n);
                ready!(polled)?;
                if n == 0 {
                    // The peer ended mid-head: hand over what there is; the parser decides.
                    this.tracker.give_up();
                    this.ready = std::mem::take(&mut this.kept);
                    continue;
                }
                let release = this.tracker.feed(&mut this.kept[..]);
                this.ready = this.kept.split_to(release);
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for H1Guard<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in the fragments that `cuts` (sorted offsets) make, the way [`H1Guard`] does,
    /// and returns what the parser would receive.
    fn run(input: &[u8], cuts: &[usize], limit: usize) -> (Vec<u8>, Tracker) {
        let mut t = Tracker::new(limit);
        let mut out = Vec::new();
        let mut kept: Vec<u8> = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&input.len())) {
            if to < from {
                continue;
            }
            let mut window = std::mem::take(&mut kept);
            window.extend_from_slice(&input[from..to]);
            from = to;
            let release = t.feed(&mut window);
            out.extend_from_slice(&window[..release]);
            kept = window[release..].to_vec();
            assert_eq!(t.kept(), kept.len(), "the tracker and the caller agree on what is kept");
        }
        if !kept.is_empty() {
            t.give_up();
            out.extend_from_slice(&kept);
        }
        (out, t)
    }

    /// Every split of `input` in one and two places, and byte by byte, gives `expected`.
    fn check_all_splits(input: &[u8], expected: &[u8], marked: u64, end: State) {
        let n = input.len();
        let mut splits: Vec<Vec<usize>> = vec![vec![], (1..n).collect()];
        for i in 0..=n {
            splits.push(vec![i]);
        }
        if n <= 400 {
            for i in 0..=n {
                for j in (i..=n).step_by(if n > 200 { 3 } else { 1 }) {
                    splits.push(vec![i, j]);
                }
            }
        }
        for cuts in splits {
            let (out, t) = run(input, &cuts, 64 * 1024);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(expected),
                "output differs when split at {cuts:?}"
            );
            assert_eq!(t.marked(), marked, "marks when split at {cuts:?}");
            assert_eq!(t.state, end, "end state when split at {cuts:?}");
        }
    }

    #[test]
    fn find_agrees_with_a_plain_scan() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let len = rng.usize(0..40);
            let hay: Vec<u8> = (0..len)
                .map(|_| *rng.choice(&[b'a', b'\n', b'\r', 0x0a ^ 0x80, 0x8a, 0x0b, 0]).unwrap_or(&b'a'))
                .collect();
            for needle in [b'\n', b'\r'] {
                assert_eq!(find(&hay, needle), hay.iter().position(|&b| b == needle), "{hay:?}");
            }
        }
    }

    #[test]
    fn a_plain_get_passes_untouched() {
        let req = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
        check_all_splits(req, req, 0, State::Idle);
    }

    #[test]
    fn content_length_before_transfer_encoding_is_marked() {
        let input = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        let expected = b"POST /p HTTP/1.1\r\nHost: x\r\nx-tandem-cl-te: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        check_all_splits(input, expected, 1, State::Idle);
    }

    #[test]
    fn transfer_encoding_before_content_length_is_marked_and_every_length_line_renamed() {
        let input = b"POST /p HTTP/1.1\r\ncontent-length: 3\r\nTRANSFER-ENCODING: gzip, chunked\r\nCONTENT-LENGTH: 7\r\nX: y\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let expected = b"POST /p HTTP/1.1\r\nx-tandem-cl-te: 3\r\nTRANSFER-ENCODING: gzip, chunked\r\nx-tandem-cl-te: 7\r\nX: y\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        check_all_splits(input, expected, 1, State::Idle);
    }

    #[test]
    fn body_bytes_that_look_like_heads_are_never_touched() {
        // A Content-Length body, a chunked body with extensions and trailers, all full of
        // header-looking text, pipelined, then a request that must be marked.
        let fake = "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut input = format!("POST /one HTTP/1.1\r\nContent-Length: {}\r\n\r\n{fake}", fake.len());
        input.push_str("\r\n"); // an empty line between requests is allowed
        input.push_str("POST /two HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        input.push_str(&format!("{:X};name=\"v\" \r\n{fake}\r\n", fake.len()));
        input.push_str(&format!("{:x} \t;ext\r\n{fake}\r\n", fake.len()));
        input.push_str("0\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        input.push_str("GET /three HTTP/1.1\nContent-Length: 2\nTransfer-Encoding: chunked\n\n0\r\n\r\n");
        let expected =
            input.replacen("GET /three HTTP/1.1\nContent-Length: 2", "GET /three HTTP/1.1\nx-tandem-cl-te: 2", 1);
        assert_ne!(input, expected);
        check_all_splits(input.as_bytes(), expected.as_bytes(), 1, State::Idle);
    }

    #[test]
    fn lookalike_names_are_not_content_length() {
        let input = b"POST / HTTP/1.1\r\nX-Content-Length: 1\r\nContent-Length-X: 2\r\nContent-Length : 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        check_all_splits(input, input, 0, State::Idle);
    }

    #[test]
    fn http10_lengths_and_leading_empty_lines_are_followed() {
        let input =
            b"\r\n\nPOST / HTTP/1.0\r\nContent-Length: 4\r\n\r\nabcd\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let expected =
            b"\r\n\nPOST / HTTP/1.0\r\nContent-Length: 4\r\n\r\nabcd\r\nPOST / HTTP/1.1\r\nx-tandem-cl-te: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        check_all_splits(input, expected, 1, State::Chunked(Chunk::Start));
    }

    #[test]
    fn upgrade_connect_and_the_h2_preface_stop_inspection() {
        let after = "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for first in [
            "GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            let input = format!("{first}{after}");
            check_all_splits(input.as_bytes(), input.as_bytes(), 0, State::Passthrough);
        }
        // An upgrade request that also has both fields is still marked.
        let input = "GET /ws HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\nUpgrade: x\r\n\r\n";
        let expected = input.replace("Content-Length", "x-tandem-cl-te");
        check_all_splits(input.as_bytes(), expected.as_bytes(), 1, State::Passthrough);
    }

    #[test]
    fn what_hyper_refuses_stops_inspection() {
        for input in [
            // a final encoding other than chunked
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            // Transfer-Encoding on HTTP/1.0
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            // conflicting and invalid lengths
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            // a chunk size that overflows, a bad chunk end, a newline in an extension
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naX\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;a\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            // obsolete line folding, an HTTP/0.9 line
            "POST / HTTP/1.1\r\nX: a\r\n b\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            check_all_splits(input.as_bytes(), input.as_bytes(), 0, State::Passthrough);
        }
    }

    #[test]
    fn the_request_line_is_never_held_back() {
        let mut t = Tracker::new(1024);
        let mut w = b"GE".to_vec();
        assert_eq!(t.feed(&mut w), 2);
        let mut w = b"T / HTTP/1.1\r\nHost: a\r\nConte".to_vec();
        assert_eq!(t.feed(&mut w), "T / HTTP/1.1\r\nHost: a\r\n".len(), "only the incomplete line waits");
        let mut w = b"Content-Length: 2\r\nAccept: x\r\n".to_vec();
        assert_eq!(t.feed(&mut w), 0, "a length line waits for the end of its head");
        let mut w = b"Content-Length: 2\r\nAccept: x\r\n\r\nok".to_vec();
        assert_eq!(t.feed(&mut w), w.len());
        assert_eq!(t.state, State::Idle);
    }

    #[test]
    fn a_head_over_the_limit_is_handed_over_untouched() {
        let mut input = b"POST / HTTP/1.1\r\nContent-Length: 1\r\n".to_vec();
        input.extend_from_slice(format!("X-Big: {}\r\n", "a".repeat(3000)).as_bytes());
        input.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        for cuts in [vec![10, 2000, 3000], (1..input.len()).step_by(7).collect()] {
            let (out, t) = run(&input, &cuts, 1024);
            assert!(out == input, "changed when split at {cuts:?}");
            assert!(t.is_passthrough());
            assert_eq!(t.marked(), 0);
        }
        // Kept back within the limit, the same head is marked: whole in the second read, or
        // with a larger limit.
        for (cuts, limit) in [(vec![100], 1024), ((1..input.len()).step_by(7).collect(), 8192)] {
            let (out, t) = run(&input, &cuts, limit);
            assert_eq!(t.marked(), 1);
            assert!(out != input);
        }
    }

    #[test]
    fn a_huge_length_is_skipped_in_bulk() {
        let mut t = Tracker::new(1024);
        let mut head = b"PUT / HTTP/1.1\r\nContent-Length: 1099511627776\r\n\r\n".to_vec();
        assert_eq!(t.feed(&mut head), head.len());
        let mut body = vec![b'x'; 1 << 20];
        for _ in 0..4 {
            assert_eq!(t.feed(&mut body), body.len());
        }
        assert_eq!(t.state, State::Fixed((1 << 40) - (4 << 20)));
    }

    /// A stream that hands out scripted fragments, one per read, then stays pending.
    struct Script {
        fragments: std::collections::VecDeque<Vec<u8>>,
    }

    impl AsyncRead for Script {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let Some(mut f) = self.fragments.pop_front() else { return Poll::Pending };
            let n = f.len().min(buf.remaining());
            buf.put_slice(&f[..n]);
            if n < f.len() {
                self.fragments.push_front(f.split_off(n));
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Script {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Seen {
        path: String,
        marked: bool,
        content_length: Option<String>,
        body: Vec<u8>,
        trailer: Option<String>,
    }

    /// Random pipelined requests of every framing, with bodies full of header-looking text.
    fn random_stream(rng: &mut fastrand::Rng, n: usize) -> (Vec<u8>, Vec<Seen>) {
        const PIECES: [&str; 6] = [
            "Content-Length: 9\r\n",
            "Transfer-Encoding: chunked\r\n",
            "\r\n",
            "0\r\n\r\n",
            "GET / HTTP/1.1\r\n",
            "xyz",
        ];
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for i in 0..n {
            let mut body = Vec::new();
            for _ in 0..rng.usize(0..6) {
                body.extend_from_slice(PIECES[rng.usize(..PIECES.len())].as_bytes());
            }
            let path = format!("/r{i}");
            let kind = rng.u8(0..4);
            let mut trailer = None;
            match kind {
                0 => {
                    out.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
                    body.clear();
                }
                1 => {
                    out.extend_from_slice(
                        format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
                    );
                    out.extend_from_slice(&body);
                }
                _ => {
                    let head = if kind == 2 {
                        format!("POST {path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: t\r\n\r\n")
                    } else if rng.bool() {
                        format!("POST {path} HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
                    } else {
                        format!("POST {path} HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n")
                    };
                    out.extend_from_slice(head.as_bytes());
                    let mut rest = &body[..];
                    while !rest.is_empty() {
                        let take = rng.usize(1..=rest.len());
                        let ext = if rng.bool() { ";a=b" } else { "" };
                        out.extend_from_slice(format!("{take:x}{ext}\r\n").as_bytes());
                        out.extend_from_slice(&rest[..take]);
                        out.extend_from_slice(b"\r\n");
                        rest = &rest[take..];
                    }
                    out.extend_from_slice(b"0\r\n");
                    if rng.bool() {
                        trailer = Some(format!("t{i}"));
                        out.extend_from_slice(format!("x-trailer: t{i}\r\n").as_bytes());
                    }
                    out.extend_from_slice(b"\r\n");
                }
            }
            seen.push(Seen {
                path,
                marked: kind == 3,
                content_length: (kind == 1).then(|| body.len().to_string()),
                body,
                trailer,
            });
        }
        (out, seen)
    }

    /// The guard in front of hyper's own HTTP/1 server: random pipelined streams, cut at random
    /// places, reach the service request by request, bodies intact, exactly the conflicting ones
    /// marked.
    #[tokio::test]
    async fn hyper_behind_the_guard_sees_every_request_intact() {
        use http_body_util::BodyExt;
        use std::sync::{Arc, Mutex};
        let mut rng = fastrand::Rng::with_seed(0x7a6d);
        for round in 0..150 {
            let (stream, expected) = random_stream(&mut rng, 1 + round % 12);
            let mut fragments = std::collections::VecDeque::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let max = if rng.bool() { 7 } else { 300 };
                let take = rng.usize(1..=rest.len().min(max));
                fragments.push_back(rest[..take].to_vec());
                rest = &rest[take..];
            }
            let seen = Arc::new(Mutex::new(Vec::new()));
            let done = Arc::new(tokio::sync::Notify::new());
            let want = expected.len();
            let (s, d) = (seen.clone(), done.clone());
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (s, d) = (s.clone(), d.clone());
                async move {
                    let path = req.uri().path().to_owned();
                    let marked = req.headers().contains_key(&CL_TE_MARK);
                    let content_length =
                        req.headers().get(http::header::CONTENT_LENGTH).map(|v| v.to_str().unwrap_or("?").to_owned());
                    let collected = req.into_body().collect().await?;
                    let trailer = collected
                        .trailers()
                        .and_then(|t| t.get("x-trailer"))
                        .map(|v| v.to_str().unwrap_or("?").to_owned());
                    let body = collected.to_bytes().to_vec();
                    let mut s = s.lock().expect("lock");
                    s.push(Seen { path, marked, content_length, body, trailer });
                    if s.len() == want {
                        d.notify_one();
                    }
                    Ok::<_, hyper::Error>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
                }
            });
            let io = hyper_util::rt::TokioIo::new(H1Guard::new(Script { fragments }, 64 * 1024));
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            tokio::select! {
                r = conn => panic!("round {round}: the connection ended early: {r:?}"),
                _ = done.notified() => {}
                _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
            }
            let seen = seen.lock().expect("lock").clone();
            assert_eq!(seen, expected, "round {round}: {}", String::from_utf8_lossy(&stream));
        }
    }
}
