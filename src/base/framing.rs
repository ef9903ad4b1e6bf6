//! HTTP/1.1 message framing written once for both halves of tandem's codec (RFC 9112 sections
//! 6 and 7): where a body ends ([`Framing`], [`ChunkScan`], the one chunked state machine for
//! requests and answers), and what an answer's head says ([`final_answer`], [`AnswerHead`]).

use crate::base::fields::{eq, hop_by_hop, parse_length, Named};
use bytes::{Buf, BufMut, BytesMut};
use std::mem::MaybeUninit;

/// Header fields a head is parsed into without an allocation (a request with more, up to the
/// configured `max_headers`, is parsed into one made for it).
pub const MAX_FIELDS: usize = 100;
/// Most bytes of an upstream response head (hyper's client buffer limit on the other path).
pub(crate) const MAX_RESPONSE_HEAD: usize = 1024 * 1024;
pub(crate) const HEAD_TOO_LARGE: &str = "response head too large (over 1 MiB)";
/// Bytes asked of the kernel per read.
pub(crate) const READ_SIZE: usize = 16 * 1024;

/// Parses the final answer head at the front of `buf` for both halves of the codec: interim
/// (`1xx`) answers are consumed and skipped, a `101` (to a request that asked for no upgrade),
/// a head over 1 MiB or one httparse refuses is an error, and `Ok(None)` means incomplete. `f`
/// gets the parsed head, its framing and the head's bytes (which the parsed fields borrow);
/// its result comes back with the head's length, the head itself left in `buf`.
pub(crate) fn final_answer<R>(
    buf: &mut BytesMut,
    head_only: bool,
    upgrade: bool,
    f: impl FnOnce(&httparse::Response<'_, '_>, AnswerHead<'_>, &[u8]) -> Result<R, String>,
) -> Result<Option<(R, usize)>, String> {
    loop {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut resp = httparse::Response::new(&mut []);
        let len =
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut fields) {
                Ok(httparse::Status::Complete(n)) if n > MAX_RESPONSE_HEAD => return Err(HEAD_TOO_LARGE.to_owned()),
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::Version) => return Err(not_http1(buf)),
                Err(e) => return Err(format!("invalid response head: {e}")),
            };
        let (Some(status), Some(version)) = (resp.code, resp.version) else {
            return Err("invalid response head".to_owned());
        };
        if status == 101 && upgrade {
            let answer =
                AnswerHead { named: Named::default(), body: Framing::Length(0), encoded: false, reusable: false };
            return f(&resp, answer, &buf[..len]).map(|r| Some((r, len)));
        }
        if status == 101 {
            return Err("101 Switching Protocols to a request that asked for no upgrade".to_owned());
        }
        if (100..200).contains(&status) {
            buf.advance(len);
            continue;
        }
        let answer = AnswerHead::read(resp.headers, status, version, head_only)?;
        return f(&resp, answer, &buf[..len]).map(|r| Some((r, len)));
    }
}

/// The error for an answer that does not start with `HTTP/1.x`: most often an app that speaks
/// only HTTP/2 (a gRPC server), which answers an HTTP/1.1 request with its SETTINGS frame.
fn not_http1(buf: &[u8]) -> String {
    // A frame header (RFC 9113 section 4.1): type 0x4 (SETTINGS), stream 0.
    let settings = buf.len() >= 9 && buf[3] == 0x4 && buf[5..9] == [0; 4];
    if settings {
        "an HTTP/2 SETTINGS frame, not an HTTP/1.x answer: the app speaks only HTTP/2 (as gRPC servers \
         do) and needs `app_protocol: http2`"
            .to_owned()
    } else {
        "invalid HTTP version (the app may need `app_protocol: http2`: an app that speaks only HTTP/2, as \
         gRPC servers do, cannot answer HTTP/1.1)"
            .to_owned()
    }
}

/// What an answer's head says about its body and about the app's connection.
pub(crate) struct AnswerHead<'h> {
    /// The fields `Connection` names (and its `close`, `keep-alive`).
    named: Named<'h>,
    pub(crate) body: Framing,
    /// `Transfer-Encoding` was there (a `Content-Length` beside it does not pass on).
    encoded: bool,
    /// The connection can carry another request once the body has ended.
    pub(crate) reusable: bool,
}

impl<'h> AnswerHead<'h> {
    /// Reads the framing fields of a final answer (`status` 200 or above) to a request that
    /// was a `HEAD` request if `head_only`.
    pub(crate) fn read(
        fields: &[httparse::Header<'h>],
        status: u16,
        version: u8,
        head_only: bool,
    ) -> Result<Self, String> {
        let mut named = Named::default();
        let mut length = None;
        let mut encoding: Option<&[u8]> = None;
        for h in fields {
            let (name, value) = (h.name.as_bytes(), h.value);
            if eq(name, b"connection") {
                if !named.add(value) {
                    return Err("Connection names too many fields".to_owned());
                }
            } else if eq(name, b"content-length") {
                match (length, parse_length(value)) {
                    (None, Some(n)) => length = Some(n),
                    (Some(a), Some(b)) if a == b => {}
                    _ => return Err("invalid Content-Length".to_owned()),
                }
            } else if eq(name, b"transfer-encoding") {
                encoding = Some(value);
            }
        }
        let body = match (encoding, length) {
            _ if head_only || status == 204 || status == 304 => Framing::Length(0),
            // The final encoding decides; anything but chunked runs until the connection ends.
            (Some(te), _) if te.rsplit(|b| *b == b',').next().is_some_and(|t| eq(t.trim_ascii(), b"chunked")) => {
                Framing::Chunked
            }
            (Some(_), _) | (None, None) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
        };
        let reusable = !named.close && (version == 1 || named.keep_alive) && body != Framing::UntilClose;
        Ok(Self { named, body, encoded: encoding.is_some(), reusable })
    }

    /// Whether a field of the answer stays behind (hop-by-hop, named by `Connection`, or a
    /// `Content-Length` beside `Transfer-Encoding`).
    pub(crate) fn drops(&self, name: &[u8]) -> bool {
        if eq(name, b"content-length") {
            // It frames the body for the client too, whatever `Connection` names.
            return self.encoded;
        }
        hop_by_hop(name) || self.named.names(name) || eq(name, b"te")
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// Follows chunked framing (RFC 9112 section 7.1) to find where a body ends; the bytes pass
/// unchanged. The one state machine for request and response bodies alike, and as strict as
/// hyper's: every line ends in CRLF, a size is hex digits only (no sign, no `0x`, at most 16),
/// chunk extensions and the trailer section are bounded ([`CHUNK_META_LIMIT`] each, per body),
/// and a trailer line is a field (a name, then `:`).
#[derive(Default, Debug)]
pub(crate) struct ChunkScan {
    pub(crate) state: Chunk,
    /// Data bytes left in the current chunk.
    pub(crate) size: u64,
    digits: u8,
    /// Chunk data bytes seen.
    pub(crate) data: u64,
    /// Extension and trailer bytes seen (bounded).
    meta: usize,
    /// The current trailer line has its name's colon.
    colon: bool,
    /// Stop at the start of chunk data and of the trailer section (a decoder takes those
    /// itself; see [`ChunkScan::take_data`]).
    pub(crate) decode: bool,
}

/// Most bytes of chunk extensions, and of trailer fields, one body may carry (hyper allows
/// 16 KiB of extensions too).
pub(crate) const CHUNK_META_LIMIT: usize = 16 * 1024;

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl ChunkScan {
    /// Consumes `bytes` up to the end of the body: how many belong to it, and whether it ended.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool), &'static str> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                Chunk::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        self.digits += 1;
                        if self.digits > 16 {
                            return Err("chunk size too large");
                        }
                        self.size = self.size * 16 + u64::from(d);
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = Chunk::Extension,
                    b'\r' if self.digits > 0 => self.state = Chunk::SizeLf,
                    _ => return Err("invalid chunk size line"),
                },
                Chunk::Extension => match b {
                    b'\r' => self.state = Chunk::SizeLf,
                    b'\n' => return Err("bare LF in a chunk size line"),
                    _ => self.count_meta()?,
                },
                Chunk::SizeLf => match b {
                    b'\n' => self.end_size_line(),
                    _ => return Err("invalid chunk size line"),
                },
                Chunk::Data => {
                    let n = ((bytes.len() - i) as u64).min(self.size);
                    self.size -= n;
                    self.data += n;
                    i += n as usize;
                    if self.size == 0 {
                        self.state = Chunk::DataCr;
                    }
                    continue;
                }
                Chunk::DataCr => match b {
                    b'\r' => self.state = Chunk::DataLf,
                    _ => return Err("chunk data longer than its size, or not followed by CRLF"),
                },
                Chunk::DataLf => match b {
                    b'\n' => self.state = Chunk::Size,
                    _ => return Err("chunk data longer than its size, or not followed by CRLF"),
                },
                Chunk::TrailerStart => match b {
                    b'\r' => self.state = Chunk::EndLf,
                    b':' | b'\n' | b' ' | b'\t' => return Err("invalid trailer line"),
                    _ => {
                        self.colon = false;
                        self.count_meta()?;
                        self.state = Chunk::Trailer;
                    }
                },
                Chunk::Trailer => match b {
                    b'\r' if self.colon => self.state = Chunk::TrailerLf,
                    b'\r' | b'\n' => return Err("invalid trailer line"),
                    b':' => {
                        self.colon = true;
                        self.count_meta()?;
                    }
                    _ => self.count_meta()?,
                },
                Chunk::TrailerLf => match b {
                    b'\n' => self.state = Chunk::TrailerStart,
                    _ => return Err("invalid trailer line"),
                },
                Chunk::EndLf => match b {
                    b'\n' => {
                        self.state = Chunk::Done;
                        return Ok((i + 1, true));
                    }
                    _ => return Err("invalid end of chunked body"),
                },
                Chunk::Done => return Ok((i, true)),
            }
            i += 1;
            if self.decode && matches!(self.state, Chunk::Data | Chunk::TrailerStart) {
                return Ok((i, false));
            }
        }
        Ok((i, self.state == Chunk::Done))
    }

    fn count_meta(&mut self) -> Result<(), &'static str> {
        self.meta += 1;
        if self.meta > CHUNK_META_LIMIT {
            return Err("chunk extensions or trailers over 16 KiB");
        }
        Ok(())
    }

    fn end_size_line(&mut self) {
        self.digits = 0;
        self.state = if self.size == 0 { Chunk::TrailerStart } else { Chunk::Data };
    }

    /// A scanner for a decoder (see [`ChunkScan::decode`]).
    pub(crate) fn decoder() -> Self {
        Self { decode: true, ..Self::default() }
    }

    /// A decoder took `n` data bytes of the current chunk.
    pub(crate) fn take_data(&mut self, n: u64) {
        self.size -= n.min(self.size);
        self.data += n;
        if self.size == 0 {
            self.state = Chunk::DataCr;
        }
    }
}

/// Writes a chunk's size line (RFC 9112 section 7.1): `n` in hexadecimal, then CRLF.
pub(crate) fn put_chunk_size(out: &mut impl BufMut, n: usize) {
    let nibbles = ((usize::BITS - n.leading_zeros()) as usize).div_ceil(4).max(1);
    for i in (0..nibbles).rev() {
        out.put_u8(b"0123456789abcdef"[(n >> (i * 4)) & 0xf]);
    }
    out.put_slice(b"\r\n");
}

/// Writes the last chunk, the trailer fields (if any), and the empty line that ends the body.
pub(crate) fn put_last_chunk(out: &mut impl BufMut, trailers: Option<&http::HeaderMap>) {
    out.put_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http2_answer_names_app_protocol() {
        let head = |bytes: &[u8]| {
            let mut buf = BytesMut::from(bytes);
            final_answer(&mut buf, false, false, |_, _, _| Ok(())).expect_err("refused")
        };
        // What an HTTP/2-only server (grpcio's) writes first: its SETTINGS frame.
        let settings = head(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64");
        assert!(settings.contains("SETTINGS") && settings.contains("`app_protocol: http2`"), "{settings}");
        let other = head(b"SSH-2.0-OpenSSH\r\n\r\n");
        assert!(other.starts_with("invalid HTTP version") && other.contains("`app_protocol: http2`"), "{other}");
    }

    #[test]
    fn chunk_framing_is_written_as_the_scanner_reads_it() {
        for n in [1usize, 9, 10, 255, 4096, 0x1_0000] {
            let mut out = Vec::new();
            put_chunk_size(&mut out, n);
            assert_eq!(out, format!("{n:x}\r\n").into_bytes());
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let mut body = Vec::new();
        put_chunk_size(&mut body, 3);
        body.extend_from_slice(b"abc\r\n");
        put_last_chunk(&mut body, Some(&trailers));
        assert_eq!(body, b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\n\r\n");
        assert_eq!(ChunkScan::default().feed(&body), Ok((body.len(), true)));
        let mut end = Vec::new();
        put_last_chunk(&mut end, None);
        assert_eq!(end, b"0\r\n\r\n");
    }

    /// Property: any body, cut into random chunks and written with [`put_chunk_size`] and
    /// [`put_last_chunk`] (trailers or not), is read back whole by the scanner wherever TCP
    /// splits it, and by the decoder byte for byte; bytes after it are never taken. 400 seeded
    /// cases (the seed is in the failure message).
    #[test]
    fn chunked_bodies_written_here_are_scanned_back_at_any_split() {
        for seed in 0..400u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let body: Vec<u8> = (0..rng.usize(0..5000)).map(|_| rng.u8(..)).collect();
            let mut wire = Vec::new();
            let mut at = 0;
            while at < body.len() {
                let most = if rng.bool() { 16 } else { 4096 };
                let n = rng.usize(1..=(body.len() - at).min(most));
                put_chunk_size(&mut wire, n);
                wire.extend_from_slice(&body[at..at + n]);
                wire.extend_from_slice(b"\r\n");
                at += n;
            }
            let mut trailers = http::HeaderMap::new();
            for i in 0..rng.usize(0..3) {
                let name = http::HeaderName::try_from(format!("x-t{i}")).unwrap();
                trailers.insert(name, http::HeaderValue::from_str(&"v".repeat(rng.usize(0..40))).unwrap());
            }
            put_last_chunk(&mut wire, Some(&trailers).filter(|t| !t.is_empty()));
            let end = wire.len();
            // What follows the body on the connection (the next request).
            wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let cuts: Vec<usize> = (0..rng.usize(0..8)).map(|_| rng.usize(0..=wire.len())).collect();
            assert_eq!(
                crate::fuzzing::chunked(&wire, &cuts),
                Ok((end, true, body.len() as u64)),
                "seed {seed}, cuts {cuts:?}"
            );
            // The decoder hands out exactly the body's bytes.
            let mut d = ChunkScan::decoder();
            let (mut got, mut i) = (Vec::new(), 0);
            while i < end {
                if d.state == Chunk::Data {
                    let n = (end - i).min(d.size as usize);
                    got.extend_from_slice(&wire[i..i + n]);
                    d.take_data(n as u64);
                    i += n;
                } else {
                    let (n, done) = d.feed(&wire[i..end]).unwrap();
                    i += n;
                    assert_eq!(done, i == end, "seed {seed}");
                }
            }
            assert!(got == body, "seed {seed}: the decoded body differs");
        }
    }
}
