//! tandem's own HTTP/2 server (`src/h2/server.rs`), end to end: hyper's h2 client for the normal
//! paths (an independent implementation), and a raw frame client for every error path.

mod support;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;
use tandem::h2::hpack;
use tandem::h2::server::code;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;

type Frame = (u8, u8, u32, Bytes);
/// A frame to send: type, flags, stream, payload.
type Out = (u8, u8, u32, Vec<u8>);

/// A raw HTTP/2 client: frames written and read by hand, header blocks by tandem's HPACK.
struct Raw {
    s: TcpStream,
    buf: BytesMut,
    /// Frames read while looking for another, in order.
    stash: std::collections::VecDeque<Frame>,
    enc: hpack::Encoder,
    dec: hpack::Decoder,
}

impl Raw {
    /// Connects and sends the preface and an empty SETTINGS frame.
    async fn connect(addr: SocketAddr) -> Self {
        let mut r = Self::bare(addr).await;
        r.s.write_all(tandem::h2::server::PREFACE).await.expect("preface");
        r.send(SETTINGS, 0, 0, &[]).await;
        r
    }

    async fn bare(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).await.expect("connect");
        Raw {
            s,
            buf: BytesMut::new(),
            stash: Default::default(),
            enc: hpack::Encoder::default(),
            dec: hpack::Decoder::default(),
        }
    }

    async fn send(&mut self, typ: u8, flags: u8, id: u32, payload: &[u8]) {
        let mut f = BytesMut::new();
        f.put_uint(payload.len() as u64, 3);
        f.put_u8(typ);
        f.put_u8(flags);
        f.put_u32(id);
        f.put_slice(payload);
        // The peer may have closed already; what it sent is what the test reads.
        let _ = self.s.write_all(&f).await;
    }

    fn block(&mut self, fields: &[(&str, &str)]) -> Bytes {
        let mut b = BytesMut::new();
        self.enc.begin(&mut b);
        for (n, v) in fields {
            self.enc.field(n.as_bytes(), v.as_bytes(), false, &mut b);
        }
        b.freeze()
    }

    /// A GET-like request head on `id`.
    async fn request(&mut self, id: u32, path: &str, extra: &[(&str, &str)], end_stream: bool) {
        let mut fields = vec![(":method", "GET"), (":scheme", "http"), (":authority", "pod"), (":path", path)];
        fields.extend_from_slice(extra);
        let block = self.block(&fields);
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        self.send(HEADERS, flags, id, &block).await;
    }

    /// The next frame, or `None` once the connection is closed.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = ((self.buf[0] as usize) << 16) | ((self.buf[1] as usize) << 8) | self.buf[2] as usize;
                if self.buf.len() >= 9 + len {
                    let typ = self.buf[3];
                    let flags = self.buf[4];
                    let id = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]) & 0x7fff_ffff;
                    self.buf.advance(9);
                    return Some((typ, flags, id, self.buf.split_to(len).freeze()));
                }
            }
            let mut chunk = [0u8; 16384];
            let n = tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut chunk))
                .await
                .expect("a frame or the close within 10 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame that `want` picks (the others are kept for later), or `None` at the close.
    async fn next_where(&mut self, want: impl Fn(&Frame) -> bool) -> Option<Frame> {
        if let Some(i) = self.stash.iter().position(&want) {
            return self.stash.remove(i);
        }
        while let Some(f) = self.frame().await {
            if want(&f) {
                return Some(f);
            }
            self.stash.push_back(f);
        }
        None
    }

    /// The next frame of type `typ`.
    async fn next_of(&mut self, typ: u8) -> Option<Frame> {
        self.next_where(|f| f.0 == typ).await
    }

    /// The GOAWAY that ends the connection: (last stream ID, error code); then the close.
    async fn goaway(&mut self) -> (u32, u32) {
        let (_, _, _, p) = self.next_of(GOAWAY).await.expect("GOAWAY");
        let last = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
        let code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        (last, code)
    }

    /// Reads until the connection closes.
    async fn closed(&mut self) {
        while self.frame().await.is_some() {}
    }

    /// The response on `id`: status, fields, body; or the RST_STREAM code that ended it.
    async fn response(&mut self, id: u32) -> Result<(u16, Vec<(String, String)>, Vec<u8>), u32> {
        let (status, fields, body, reset) = self.outcome(id).await;
        match reset {
            Some(code) => Err(code),
            None => Ok((status, fields, body)),
        }
    }

    /// A malformed request's answer (RFC 9113 section 8.1.1): a response without END_STREAM,
    /// then RST_STREAM(PROTOCOL_ERROR). Its status and fields.
    async fn refused(&mut self, id: u32) -> (u16, Vec<(String, String)>) {
        let (status, fields, _, reset) = self.outcome(id).await;
        assert_eq!(reset, Some(code::PROTOCOL_ERROR), "stream {id} ends with RST_STREAM(PROTOCOL_ERROR)");
        (status, fields)
    }

    /// What came on `id` until END_STREAM or RST_STREAM: status (0 if none), fields, body, and
    /// the RST_STREAM code.
    async fn outcome(&mut self, id: u32) -> (u16, Vec<(String, String)>, Vec<u8>, Option<u32>) {
        let mut status = 0;
        let mut fields = Vec::new();
        let mut body = Vec::new();
        let mut block = BytesMut::new();
        while let Some((typ, flags, _, payload)) = self.next_where(|f| f.2 == id).await {
            match typ {
                HEADERS | CONTINUATION => {
                    block.extend_from_slice(&payload);
                    if flags & END_HEADERS != 0 {
                        let b = block.split().freeze();
                        self.dec
                            .decode(&b, usize::MAX / 2, |n, v| {
                                let (n, v) = (
                                    String::from_utf8_lossy(&n).into_owned(),
                                    String::from_utf8_lossy(&v).into_owned(),
                                );
                                if n == ":status" {
                                    status = v.parse().expect("status");
                                } else {
                                    fields.push((n, v));
                                }
                            })
                            .expect("response headers decode");
                    }
                    if flags & END_STREAM != 0 {
                        return (status, fields, body, None);
                    }
                }
                DATA => {
                    body.extend_from_slice(&payload);
                    if flags & END_STREAM != 0 {
                        return (status, fields, body, None);
                    }
                }
                RST_STREAM => {
                    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    return (status, fields, body, Some(code));
                }
                _ => {}
            }
        }
        panic!("the connection closed before stream {id} ended");
    }
}

/// The echo app, a proxy in front of it, and a raw client connected to the proxy.
async fn echo_proxy_raw() -> (tandem::app::Echo, tandem::app::Running, Raw) {
    let echo = support::echo().await;
    let proxy = support::proxy(support::config(echo.addr)).await;
    let raw = Raw::connect(proxy.inbound_addr).await;
    (echo, proxy, raw)
}

async fn proxy_with_log(tag: &str) -> (tandem::app::Running, support::TempDir, std::path::PathBuf, tandem::app::Echo) {
    let echo = support::echo().await;
    let dir = support::TempDir::new(tag);
    let log = dir.join("access.log");
    let proxy = support::proxy(support::config_with_log(echo.addr, &log)).await;
    (proxy, dir, log, echo)
}

async fn log_lines(proxy: &tandem::app::Running, log: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let t = proxy.telemetry();
    support::wait_for("access-log lines", Duration::from_secs(5), || {
        let t = t.clone();
        let log = log.to_path_buf();
        async move {
            t.flush_access_log().await;
            let lines = support::json_lines(&log);
            (lines.len() >= n).then_some(lines)
        }
    })
    .await
}

/// An h2c client with small windows, so both sides' flow control is exercised.
fn small_window_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .http2_initial_stream_window_size(65_535)
        .http2_initial_connection_window_size(65_535)
        .http2_adaptive_window(false)
        .build_http()
}

#[tokio::test]
async fn bodies_larger_than_every_window_pass_both_ways_intact() {
    let echo = support::echo().await;
    let proxy = support::proxy(support::config(echo.addr)).await;
    // 3 MiB: three times tandem's stream and connection windows, 48 times the client's.
    let body: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    for client in [support::h2(), small_window_client()] {
        let req = http::Request::post(format!("http://{}/up?echo_body=1", proxy.inbound_addr))
            .body(Full::new(Bytes::from(body.clone())))
            .expect("req");
        // Bounded: a window never given back would stall the transfer for good.
        let limit = Duration::from_secs(30);
        let resp = tokio::time::timeout(limit, client.request(req)).await.expect("in time").expect("response");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        let got =
            tokio::time::timeout(limit, resp.into_body().collect()).await.expect("in time").expect("body").to_bytes();
        assert_eq!(got.len(), body.len());
        assert!(got[..] == body[..], "the echoed body differs");
        // A large answer the client's window holds back.
        let req = http::Request::get(format!("http://{}/down?size=2MiB", proxy.inbound_addr))
            .body(Full::new(Bytes::new()))
            .expect("req");
        let resp = tokio::time::timeout(limit, client.request(req)).await.expect("in time").expect("response");
        assert_eq!(resp.status(), 200);
        let got = tokio::time::timeout(limit, resp.into_body().collect()).await.expect("in time").expect("body");
        assert_eq!(got.to_bytes().len(), 2 * 1024 * 1024);
    }
}

#[tokio::test]
async fn many_streams_on_one_connection_are_all_answered() {
    let echo = support::echo().await;
    let proxy = support::proxy(support::config(echo.addr)).await;
    let client = support::h2();
    let mut tasks = Vec::new();
    for i in 0..150 {
        let client = client.clone();
        let url = format!("http://{}/n{i}?delay=20ms", proxy.inbound_addr);
        tasks.push(tokio::spawn(async move {
            let resp = client.request(http::Request::get(url).body(Full::new(Bytes::new())).expect("req")).await;
            let resp = resp.expect("response");
            (resp.status(), resp.into_body().collect().await.expect("body").to_bytes())
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, body) = t.await.expect("task");
        assert_eq!(status, 200);
        let j: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(j["path"], format!("/n{i}"));
    }
}

#[tokio::test]
async fn an_answer_with_a_head_over_one_frame_goes_out_in_continuation_frames() {
    let big = "v".repeat(40 * 1024);
    let b = big.clone();
    let app =
        support::app(false, move |_req| {
            let b = b.clone();
            async move {
                http::Response::builder().header("x-big", b).body(Full::new(Bytes::from_static(b"ok"))).expect("resp")
            }
        })
        .await;
    let proxy = support::proxy(support::config(app)).await;
    let mut raw = Raw::connect(proxy.inbound_addr).await;
    raw.request(1, "/", &[], true).await;
    let (status, fields, body) = raw.response(1).await.expect("answered");
    assert_eq!(status, 200);
    assert_eq!(body, b"ok");
    assert!(fields.iter().any(|(n, v)| n == "x-big" && *v == big), "the 40 KiB field arrives whole");
}

#[tokio::test]
async fn padded_frames_and_split_cookies_are_understood() {
    let (_echo, _proxy, mut raw) = echo_proxy_raw().await;
    let block = raw.block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "pod"),
        (":path", "/p?echo_body=1"),
        ("cookie", "a=1"),
        ("cookie", "b=2"),
    ]);
    let mut padded = vec![3u8];
    padded.extend_from_slice(&block);
    padded.extend_from_slice(&[0, 0, 0]);
    raw.send(HEADERS, END_HEADERS | PADDED, 1, &padded).await;
    raw.send(DATA, PADDED | END_STREAM, 1, &[2, b'h', b'i', 0, 0]).await;
    let (status, _, body) = raw.response(1).await.expect("answered");
    assert_eq!(status, 200);
    assert_eq!(body, b"hi", "padding is not data");
    // The cookie fields reach the HTTP/1.1 app as one (RFC 9113 section 8.2.3).
    raw.request(3, "/c", &[("cookie", "a=1"), ("cookie", "b=2")], true).await;
    let (status, _, body) = raw.response(3).await.expect("answered");
    assert_eq!(status, 200);
    let j: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(j["headers"]["cookie"], "a=1; b=2");
}

#[tokio::test]
async fn a_malformed_request_is_answered_400_logged_reset_and_the_connection_kept() {
    let (proxy, _dir, log, _echo) = proxy_with_log("h2-malformed").await;
    let mut raw = Raw::connect(proxy.inbound_addr).await;
    raw.request(1, "/", &[("X-Upper", "1")], true).await;
    let (status, fields) = raw.refused(1).await;
    assert_eq!(status, 400);
    assert!(fields.iter().any(|(n, v)| n == "x-tandem-error" && v == "DPE"), "{fields:?}");
    raw.request(3, "/", &[("connection", "close")], true).await;
    assert_eq!(raw.refused(3).await.0, 400);
    // The connection still serves.
    raw.request(5, "/fine", &[], true).await;
    assert_eq!(raw.response(5).await.expect("answered").0, 200);
    let lines = log_lines(&proxy, &log, 3).await;
    let refused: Vec<_> = lines.iter().filter(|l| l["response_code"] == 400).collect();
    assert_eq!(refused.len(), 2, "{lines:?}");
    for l in refused {
        assert_eq!(l["response_flags"], "DPE");
        assert_eq!(l["protocol"], "HTTP/2");
    }
}

#[tokio::test]
async fn a_header_list_over_the_limit_is_answered_431_and_the_connection_kept() {
    let (_echo, _proxy, mut raw) = echo_proxy_raw().await;
    // The limit is twice limits.max_header_bytes (64 KiB): 200 KiB in HEADERS + CONTINUATION.
    let big = "x".repeat(200 * 1024);
    let block =
        raw.block(&[(":method", "GET"), (":scheme", "http"), (":authority", "pod"), (":path", "/"), ("x-big", &big)]);
    let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
    for (i, c) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let typ = if i == 0 { HEADERS } else { CONTINUATION };
        let flags = if last { END_HEADERS } else { 0 } | if i == 0 { END_STREAM } else { 0 };
        raw.send(typ, flags, 1, c).await;
    }
    let (status, _, _) = raw.response(1).await.expect("answered");
    assert_eq!(status, 431);
    raw.request(3, "/after", &[], true).await;
    assert_eq!(raw.response(3).await.expect("answered").0, 200, "HPACK state stayed in step");
}

#[tokio::test]
async fn protocol_errors_end_the_connection_with_goaway_and_their_code() {
    let echo = support::echo().await;
    let proxy = support::proxy(support::config(echo.addr)).await;
    let addr = proxy.inbound_addr;
    let big = vec![0u8; 16_385];
    let max_window = 0x7fff_ffffu32.to_be_bytes();
    // (what, frames after the preface and SETTINGS, expected code)
    let cases: Vec<(&str, Vec<Out>, u32)> = vec![
        ("DATA on stream 0", vec![(DATA, 0, 0, b"x".to_vec())], code::PROTOCOL_ERROR),
        ("DATA on an idle stream", vec![(DATA, 0, 7, b"x".to_vec())], code::PROTOCOL_ERROR),
        ("a frame over 16 KiB", vec![(DATA, 0, 1, big.clone())], code::FRAME_SIZE_ERROR),
        ("HPACK index 0", vec![(HEADERS, END_HEADERS | END_STREAM, 1, vec![0x80])], code::COMPRESSION_ERROR),
        ("an even stream ID", vec![(HEADERS, END_HEADERS | END_STREAM, 2, vec![0x82])], code::PROTOCOL_ERROR),
        ("CONTINUATION without HEADERS", vec![(CONTINUATION, END_HEADERS, 1, vec![0x82])], code::PROTOCOL_ERROR),
        (
            "a header block interrupted",
            vec![(HEADERS, END_STREAM, 1, vec![0x82]), (PING, 0, 0, vec![0; 8])],
            code::PROTOCOL_ERROR,
        ),
        (
            "PUSH_PROMISE from a client",
            vec![(PUSH_PROMISE, END_HEADERS, 1, vec![0, 0, 0, 2, 0x82])],
            code::PROTOCOL_ERROR,
        ),
        ("SETTINGS of 5 bytes", vec![(SETTINGS, 0, 0, vec![0; 5])], code::FRAME_SIZE_ERROR),
        ("SETTINGS_ENABLE_PUSH of 2", vec![(SETTINGS, 0, 0, vec![0, 2, 0, 0, 0, 2])], code::PROTOCOL_ERROR),
        ("PING of 4 bytes", vec![(PING, 0, 0, vec![0; 4])], code::FRAME_SIZE_ERROR),
        (
            "the connection window over 2^31-1",
            vec![(WINDOW_UPDATE, 0, 0, max_window.to_vec()), (WINDOW_UPDATE, 0, 0, max_window.to_vec())],
            code::FLOW_CONTROL_ERROR,
        ),
        ("WINDOW_UPDATE of 0 on the connection", vec![(WINDOW_UPDATE, 0, 0, vec![0; 4])], code::PROTOCOL_ERROR),
        ("RST_STREAM on an idle stream", vec![(RST_STREAM, 0, 9, vec![0, 0, 0, 8])], code::PROTOCOL_ERROR),
    ];
    for (what, frames, want) in cases {
        let mut raw = Raw::connect(addr).await;
        for (t, f, id, p) in frames {
            raw.send(t, f, id, &p).await;
        }
        let (_, got) = raw.goaway().await;
        assert_eq!(got, want, "{what}");
        raw.closed().await;
    }
    // The preface itself, and a first frame that is not SETTINGS.
    let mut raw = Raw::bare(addr).await;
    raw.s.write_all(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n").await.expect("write");
    assert_eq!(raw.goaway().await.1, code::PROTOCOL_ERROR, "a bad preface");
    let mut raw = Raw::bare(addr).await;
    raw.s.write_all(tandem::h2::server::PREFACE).await.expect("write");
    raw.send(PING, 0, 0, &[0; 8]).await;
    assert_eq!(raw.goaway().await.1, code::PROTOCOL_ERROR, "PING before SETTINGS");
}

#[tokio::test]
async fn stream_errors_reset_only_their_stream() {
    let (_echo, _proxy, mut raw) = echo_proxy_raw().await;
    // A body shorter than its content-length.
    raw.request(1, "/p?echo_body=1", &[("content-length", "10")], false).await;
    raw.send(DATA, END_STREAM, 1, b"abc").await;
    assert_eq!(raw.response(1).await.err(), Some(code::PROTOCOL_ERROR));
    // Trailers without END_STREAM.
    raw.request(3, "/p?echo_body=1&delay=200ms", &[], false).await;
    let trailers = raw.block(&[("x-t", "1")]);
    raw.send(HEADERS, END_HEADERS, 3, &trailers).await;
    assert_eq!(raw.response(3).await.err(), Some(code::PROTOCOL_ERROR));
    // A stream window pushed over 2^31-1.
    raw.request(5, "/p?delay=200ms", &[], true).await;
    raw.send(WINDOW_UPDATE, 0, 5, &0x7fff_ffffu32.to_be_bytes()).await;
    assert_eq!(raw.response(5).await.err(), Some(code::FLOW_CONTROL_ERROR));
    // The connection is still there: PING is answered with its payload, and requests are served.
    raw.send(PING, 0, 0, b"12345678").await;
    let (_, flags, _, payload) = raw.next_of(PING).await.expect("PING ACK");
    assert_eq!((flags, &payload[..]), (0x1, &b"12345678"[..]));
    raw.request(7, "/ok", &[], true).await;
    assert_eq!(raw.response(7).await.expect("answered").0, 200);
}

#[tokio::test]
async fn a_request_with_trailers_reaches_the_app_whole() {
    let (_echo, _proxy, mut raw) = echo_proxy_raw().await;
    raw.request(1, "/p?echo_body=1", &[("content-length", "5")], false).await;
    raw.send(DATA, 0, 1, b"hel").await;
    raw.send(DATA, 0, 1, b"lo").await;
    let trailers = raw.block(&[("x-checksum", "abc")]);
    raw.send(HEADERS, END_HEADERS | END_STREAM, 1, &trailers).await;
    let (status, _, body) = raw.response(1).await.expect("answered");
    assert_eq!(status, 200);
    assert_eq!(body, b"hello");
}

#[tokio::test]
async fn a_stream_reset_by_the_client_is_logged_dc() {
    let (proxy, _dir, log, _echo) = proxy_with_log("h2-reset").await;
    let mut raw = Raw::connect(proxy.inbound_addr).await;
    raw.request(1, "/slow?delay=5s", &[], true).await;
    support::wait_for("the request in flight", Duration::from_secs(5), || {
        let text = support::metrics(&proxy);
        async move {
            support::metric_value(&text, &["tandem_http_requests_in_flight", "inbound"]).filter(|v| *v >= 1.0)
        }
    })
    .await;
    raw.send(RST_STREAM, 0, 1, &code::CANCEL.to_be_bytes()).await;
    let lines = log_lines(&proxy, &log, 1).await;
    assert_eq!(lines[0]["response_flags"], "DC", "{lines:?}");
    assert_eq!(lines[0]["protocol"], "HTTP/2");
}

#[tokio::test]
async fn streams_opened_and_reset_at_once_end_in_enhance_your_calm() {
    let (_echo, _proxy, mut raw) = echo_proxy_raw().await;
    let mut id = 1;
    for _ in 0..=200 {
        raw.request(id, "/slow?delay=5s", &[], true).await;
        raw.send(RST_STREAM, 0, id, &code::CANCEL.to_be_bytes()).await;
        id += 2;
    }
    assert_eq!(raw.goaway().await.1, code::ENHANCE_YOUR_CALM);
}

#[tokio::test]
async fn streams_the_server_is_made_to_reset_count_as_resets_too() {
    // The "MadeYouReset" variant: the client never sends RST_STREAM, it provokes ours (here
    // with a WINDOW_UPDATE of 0 on the stream, a stream error).
    let (_echo, _proxy, mut raw) = echo_proxy_raw().await;
    let mut id = 1;
    for _ in 0..=200 {
        raw.request(id, "/slow?delay=5s", &[], true).await;
        raw.send(WINDOW_UPDATE, 0, id, &[0, 0, 0, 0]).await;
        id += 2;
    }
    assert_eq!(raw.goaway().await.1, code::ENHANCE_YOUR_CALM);
}

#[tokio::test]
async fn a_body_in_one_byte_padded_frames_arrives_whole() {
    const N_FRAMES: u32 = 3000;
    let (_echo, _proxy, mut raw) = echo_proxy_raw().await;
    let block =
        raw.block(&[(":method", "POST"), (":scheme", "http"), (":authority", "pod"), (":path", "/p?echo_body=1")]);
    raw.send(HEADERS, END_HEADERS, 1, &block).await;
    let mut want = Vec::new();
    for i in 0..N_FRAMES {
        let b = b'a' + (i % 26) as u8;
        want.push(b);
        // One byte of data behind 200 bytes of padding.
        let mut p = vec![200u8, b];
        p.extend_from_slice(&[0; 200]);
        raw.send(DATA, PADDED, 1, &p).await;
    }
    raw.send(DATA, END_STREAM, 1, &[]).await;
    let (status, _, body) = raw.response(1).await.expect("answered");
    assert_eq!(status, 200);
    assert_eq!(body, want);
}

#[tokio::test]
async fn a_get_with_a_body_of_unknown_length_reaches_the_app_with_it() {
    let (_echo, _proxy, mut raw) = echo_proxy_raw().await;
    raw.request(1, "/g?echo_body=1", &[], false).await;
    raw.send(DATA, 0, 1, b"query ").await;
    raw.send(DATA, END_STREAM, 1, b"body").await;
    let (status, _, body) = raw.response(1).await.expect("answered");
    assert_eq!(status, 200);
    assert_eq!(body, b"query body", "a GET body of unknown length goes to the app chunked");
}

#[tokio::test]
async fn content_lengths_that_differ_or_lie_are_refused_400() {
    let (_echo, _proxy, mut raw) = echo_proxy_raw().await;
    raw.request(1, "/", &[("content-length", "0"), ("content-length", "50")], true).await;
    assert_eq!(raw.refused(1).await.0, 400);
    // A length the stream's END_STREAM already contradicts.
    raw.request(3, "/", &[("content-length", "5")], true).await;
    assert_eq!(raw.refused(3).await.0, 400);
    raw.request(5, "/", &[("content-length", "0")], true).await;
    assert_eq!(raw.response(5).await.expect("answered").0, 200);
}

#[tokio::test]
async fn streams_over_the_concurrency_limit_are_refused() {
    let (_echo, _proxy, mut raw) = echo_proxy_raw().await;
    let limit = tandem::h2::server::MAX_CONCURRENT_STREAMS as u32;
    for i in 0..=limit {
        raw.request(1 + 2 * i, "/slow?delay=3s", &[], true).await;
    }
    let refused = 1 + 2 * limit;
    let (_, _, id, payload) = raw.next_of(RST_STREAM).await.expect("RST_STREAM");
    assert_eq!(id, refused);
    assert_eq!(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]), code::REFUSED_STREAM);
}

#[tokio::test]
async fn an_idle_connection_gets_goaway_and_is_closed() {
    let echo = support::echo().await;
    let mut cfg = support::config(echo.addr);
    cfg.inbound.timeouts.idle = tandem::config::Human::new(Duration::from_millis(200));
    let proxy = support::proxy(cfg).await;
    let mut raw = Raw::connect(proxy.inbound_addr).await;
    raw.request(1, "/", &[], true).await;
    assert_eq!(raw.response(1).await.expect("answered").0, 200);
    assert_eq!(raw.goaway().await, (1, code::NO_ERROR));
    raw.closed().await;
}

#[tokio::test]
async fn the_stop_announces_goaway_pings_then_names_the_last_stream() {
    let (_echo, proxy, mut raw) = echo_proxy_raw().await;
    raw.request(1, "/slow?delay=300ms", &[], true).await;
    // Stream 1 is in flight when the stop begins.
    raw.request(3, "/", &[], true).await;
    assert_eq!(raw.response(3).await.expect("answered").0, 200);
    proxy.shutdown_handle().trigger();
    let (last, c) = raw.goaway().await;
    assert_eq!((last, c), (0x7fff_ffff, code::NO_ERROR), "first GOAWAY: every stream may still come");
    let (_, flags, _, ping) = raw.next_of(PING).await.expect("PING");
    assert_eq!(flags, 0);
    // A request sent before the client saw the PING is still taken.
    raw.request(5, "/late", &[], true).await;
    raw.send(PING, 0x1, 0, &ping).await;
    let (last, c) = raw.goaway().await;
    assert_eq!((last, c), (5, code::NO_ERROR), "final GOAWAY names the last stream taken");
    // Both open streams are answered, then the connection closes.
    assert_eq!(raw.response(1).await.expect("answered").0, 200);
    assert_eq!(raw.response(5).await.expect("answered").0, 200);
    raw.closed().await;
}
