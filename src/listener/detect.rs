//! Protocol detection for a redirected connection (transparent mode): its first bytes are peeked
//! at (left in the socket, so the server chosen reads the connection from its first byte) until
//! they show HTTP/1.x, the HTTP/2 preface, a TLS ClientHello or something else, or until the
//! detection timeout passes (a server-first protocol: the client waits for the server's greeting).
//!
//! - **HTTP/1.x**: a method token, a space, a target, a space and `HTTP/1.` (the request line up
//!   to the version; a target longer than what is looked at is taken as HTTP/1.x, and the codec
//!   judges it).
//! - **HTTP/2**: the 24-byte preface.
//! - **TLS**: a handshake record (`0x16 0x03 0x0N`). The record is read whole (up to
//!   [`PEEK_LIMIT`]) for its server name (SNI), which the opaque relay logs.
//! - anything else as soon as it is clear it is none of these.

use crate::base::conn::H2_PREFACE;
use crate::telemetry::metrics::Detection;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Most bytes looked at: a request line or a ClientHello longer than this is judged on this much.
pub const PEEK_LIMIT: usize = 4096;

/// Longest method token taken for HTTP/1.x (`PROPPATCH`, `VERSION-CONTROL`, ...).
const MAX_METHOD: usize = 20;

/// What a connection's first bytes showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Http1,
    Http2,
    /// A TLS ClientHello, with its server name when it carries one.
    Tls {
        server_name: Option<String>,
    },
    /// Something else.
    Other,
    /// Nothing decisive within the timeout (or the client closed first).
    Timeout,
}

impl Found {
    /// The `result` label it is counted under.
    pub fn detection(&self) -> Detection {
        match self {
            Found::Http1 => Detection::Http1,
            Found::Http2 => Detection::Http2,
            Found::Tls { .. } => Detection::Tls,
            Found::Other => Detection::Opaque,
            Found::Timeout => Detection::Timeout,
        }
    }
}

/// Judges `bytes`, the first ones a client sent: `None` while more are needed to tell. `full`:
/// no more will be looked at, so judge what is there.
pub fn classify(bytes: &[u8], full: bool) -> Option<Found> {
    let first = *bytes.first()?;
    if first == 0x16 {
        return tls(bytes, full);
    }
    if first == H2_PREFACE[0] {
        let n = bytes.len().min(H2_PREFACE.len());
        if bytes[..n] == H2_PREFACE[..n] {
            if n == H2_PREFACE.len() {
                return Some(Found::Http2);
            }
            if !full {
                return None;
            }
        }
    }
    http1(bytes, full)
}

/// `METHOD SP TARGET SP HTTP/1.`, decided as early as the bytes allow.
fn http1(bytes: &[u8], full: bool) -> Option<Found> {
    let undecided = if full { Some(Found::Other) } else { None };
    let method = bytes.iter().position(|b| !is_method_char(*b)).unwrap_or(bytes.len());
    if method == bytes.len() {
        return if method <= MAX_METHOD { undecided } else { Some(Found::Other) };
    }
    if method == 0 || method > MAX_METHOD || bytes[method] != b' ' {
        return Some(Found::Other);
    }
    let rest = &bytes[method + 1..];
    let Some(target) = rest.iter().position(|b| *b == b' ' || b.is_ascii_control()) else {
        // The target continues past what was read: a long URI is still HTTP/1.x.
        return if bytes.len() >= PEEK_LIMIT && !rest.is_empty() { Some(Found::Http1) } else { undecided };
    };
    if target == 0 || rest[target] != b' ' {
        return Some(Found::Other);
    }
    let version = &rest[target + 1..];
    const V: &[u8] = b"HTTP/1.";
    let n = version.len().min(V.len());
    if version[..n] != V[..n] {
        return Some(Found::Other);
    }
    if n == V.len() {
        Some(Found::Http1)
    } else {
        undecided
    }
}

/// Methods are tokens; real ones are upper-case letters and `-` (`M-SEARCH`, `VERSION-CONTROL`).
fn is_method_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'-' || b == b'_'
}

/// A TLS handshake record: `0x16`, version `0x03 0x00..=0x04`, then the length.
fn tls(bytes: &[u8], full: bool) -> Option<Found> {
    if bytes.len() < 3 {
        return if full { Some(Found::Other) } else { None };
    }
    if bytes[1] != 0x03 || bytes[2] > 0x04 {
        return Some(Found::Other);
    }
    let whole = bytes.len() >= 5 && bytes.len() >= 5 + usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
    if !whole && !full && bytes.len() < PEEK_LIMIT {
        return None;
    }
    Some(Found::Tls { server_name: server_name(bytes) })
}

/// The `server_name` extension's host name in a ClientHello record, if it is in `record`.
pub fn server_name(record: &[u8]) -> Option<String> {
    let mut r = Reader(record.get(5..)?);
    if r.u8()? != 0x01 {
        return None; // not a ClientHello
    }
    r.skip(3)?; // handshake length
    r.skip(2 + 32)?; // client version, random
    let session = usize::from(r.u8()?);
    r.skip(session)?;
    let suites = usize::from(r.u16()?);
    r.skip(suites)?;
    let compression = usize::from(r.u8()?);
    r.skip(compression)?;
    // The extensions, or as many of them as were read.
    let len = usize::from(r.u16()?);
    let mut exts = Reader(&r.0[..len.min(r.0.len())]);
    while let (Some(kind), Some(len)) = (exts.u16(), exts.u16()) {
        let Some(body) = exts.take(usize::from(len)) else { break };
        if kind != 0 {
            continue;
        }
        let mut names = Reader(body);
        let len = usize::from(names.u16()?);
        let mut list = Reader(names.take(len)?);
        while let Some(name_type) = list.u8() {
            let len = usize::from(list.u16()?);
            let name = list.take(len)?;
            if name_type == 0 {
                return std::str::from_utf8(name)
                    .ok()
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic()))
                    .map(str::to_owned);
            }
        }
    }
    None
}

/// Reads a ClientHello's fields, failing (None) past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Peeks at `stream`'s first bytes until [`classify`] can tell, or `timeout` passes; gives the
/// stream back, its bytes unread.
pub async fn detect(stream: TcpStream, timeout: Duration) -> io::Result<(Found, TcpStream)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; PEEK_LIMIT];
    let mut have = 0usize;
    // Set when a peek found nothing new and cleared tokio's readiness for the socket.
    let mut cleared = false;
    // Bounded by the deadline: each pass waits for the socket to turn readable again.
    loop {
        if tokio::time::timeout_at(deadline, stream.readable()).await.is_err() {
            let found = timed_out(&buf[..have]);
            // Bytes are waiting, but tokio believes the socket drained (the clear below) and, its
            // epoll registration being edge-triggered, would wait for more before reading:
            // registering it afresh reports what is there.
            let stream = if cleared { TcpStream::from_std(stream.into_std()?)? } else { stream };
            return Ok((found, stream));
        }
        // A peek that finds nothing new clears the readiness (WouldBlock), so the next wait
        // sleeps until more bytes come, instead of spinning on the bytes already seen.
        let peeked = stream.try_io(Interest::READABLE, || {
            let n = peek(&stream, &mut buf)?;
            if n == have && n != 0 && n < buf.len() {
                cleared = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match peeked {
            // Closed before sending anything.
            Ok(0) => return Ok((Found::Other, stream)),
            Ok(n) => {
                have = n;
                if let Some(found) = classify(&buf[..have], have == buf.len()) {
                    return Ok((found, stream));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Ok((Found::Other, stream)),
        }
    }
}

/// What the bytes seen show at the timeout: a TLS record not yet whole is still TLS; anything
/// else undecided is counted as a timeout (and passed through).
fn timed_out(bytes: &[u8]) -> Found {
    match classify(bytes, true) {
        Some(found @ Found::Tls { .. }) => found,
        _ => Found::Timeout,
    }
}

/// `recv(MSG_PEEK)`: the bytes stay in the socket for whoever reads it next.
fn peek(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call, and the descriptor is
    // the stream's, open while it is borrowed.
    let n = unsafe {
        libc::recv(stream.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT)
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_line_is_http1_once_the_version_shows() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n", false), Some(Found::Http1));
        assert_eq!(classify(b"M-SEARCH * HTTP/1.1\r\n", false), Some(Found::Http1));
        assert_eq!(classify(b"GET /x HTTP/1.", false), Some(Found::Http1));
        for partial in [&b"G"[..], b"GET", b"GET ", b"GET /a", b"GET /a ", b"GET /a HTTP/"] {
            assert_eq!(classify(partial, false), None, "{:?}", String::from_utf8_lossy(partial));
        }
    }

    #[test]
    fn the_preface_is_http2_and_its_prefix_waits() {
        assert_eq!(classify(H2_PREFACE, false), Some(Found::Http2));
        assert_eq!(classify(&H2_PREFACE[..10], false), None);
        // "PRI * HTTP/2.0" alone is not HTTP/1.x.
        assert_eq!(classify(&H2_PREFACE[..16], true), Some(Found::Other));
    }

    #[test]
    fn other_bytes_are_opaque_as_soon_as_they_differ() {
        for bytes in
            [&b"\x00\x01"[..], b"get / HTTP/1.1", b"SET k v\r\n", b"GET / SSH-2.0", b"PING\r\n", b"\x16\x01\x00"]
        {
            assert_eq!(classify(bytes, false), Some(Found::Other), "{:?}", String::from_utf8_lossy(bytes));
        }
        // A redis-style inline command without a space waits, and is opaque when no more comes.
        assert_eq!(classify(b"PING", false), None);
        assert_eq!(classify(b"PING", true), Some(Found::Other));
    }

    #[test]
    fn at_the_timeout_a_partial_record_is_tls_and_anything_else_a_timeout() {
        assert_eq!(timed_out(&[0x16, 0x03, 0x01]), Found::Tls { server_name: None });
        assert_eq!(timed_out(b"GET /"), Found::Timeout);
        assert_eq!(timed_out(b""), Found::Timeout);
    }
}
