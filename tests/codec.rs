//! The inbound HTTP/1.1 codec (`tandem::http1::server`): response framings relayed as they come,
//! connections kept or closed as the framing says, pipelining, hand-over to hyper mid-connection,
//! the header-read timeout, early answers to uploads, and the failures only a relay can meet
//! (a body cut short, an oversized response head), all through real sockets.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response read off a raw connection.
#[derive(Debug)]
struct Raw {
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn status(&self) -> u16 {
        self.head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// A header's value (names compared case-insensitively).
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one response: the head, then a body framed by `content-length`, by chunked encoding
/// (returned raw, trailers included), or by the end of the connection. `head_only` for the
/// answer to a HEAD request.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Raw {
    let deadline = Duration::from_secs(10);
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let n =
            tokio::time::timeout(deadline, s.read(&mut chunk)).await.expect("a response head in time").expect("read");
        assert!(n > 0, "connection closed before a full head: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let mut raw = Raw { head, body: Vec::new() };
    if head_only || matches!(raw.status(), 204 | 304) {
        return raw;
    }
    let chunked = raw.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length = raw.header("content-length").and_then(|v| v.parse::<usize>().ok());
    loop {
        let done = if chunked {
            buf.windows(5).position(|w| w == b"0\r\n\r\n").map(|at| at + 5).or_else(|| {
                // A last chunk followed by trailers: ends with an empty line after them.
                let last = buf.windows(3).position(|w| w == b"0\r\n")?;
                buf[last..].windows(4).position(|w| w == b"\r\n\r\n").map(|e| last + e + 4)
            })
        } else {
            length.filter(|n| buf.len() >= *n)
        };
        if let Some(n) = done {
            raw.body = buf.drain(..n).collect();
            return raw;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(deadline, s.read(&mut chunk)).await.expect("the body in time").expect("read");
        if n == 0 {
            assert!(length.is_none() && !chunked, "connection closed mid-body: {raw:?} {buf:?}");
            raw.body = std::mem::take(buf);
            return raw;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Whether the peer closes the connection within a few seconds (reads EOF or a reset).
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Waits until the metrics count one request with `response_flags` `flag`.
async fn counted_once(proxy: &tandem::app::Running, flag: &str) {
    let want = format!("response_flags=\"{flag}\"");
    support::wait_for(&format!("the {flag} count"), Duration::from_secs(5), || {
        let m = support::metrics(proxy);
        let v = support::metric_value(&m, &["tandem_http_requests_total{", &want]);
        async move { (v == Some(1.0)).then_some(()) }
    })
    .await;
}

/// Reads (and drops) whatever the peer sends until it closes: an app that takes a body.
async fn read_until_closed(s: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    while let Ok(n) = s.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// A raw app that answers every request head it reads with `answer`, counting its connections;
/// the heads it got are sent to the returned channel.
async fn scripted_app(
    answer: &'static [u8],
) -> (SocketAddr, Arc<AtomicUsize>, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let conns = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let counted = conns.clone();
    let addr = support::raw_app(move |mut s| {
        counted.fetch_add(1, Ordering::SeqCst);
        let tx = tx.clone();
        async move {
            loop {
                let head = support::read_head(&mut s).await;
                if head.is_empty() {
                    return;
                }
                let _ = tx.send(head);
                if s.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, conns, rx)
}

#[tokio::test]
async fn chunked_answers_pass_unchanged_with_their_trailers_and_both_connections_stay_open() {
    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\nTransfer-Encoding: chunked\r\n\
        Keep-Alive: timeout=5\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n";
    let (app, conns, _heads) = scripted_app(ANSWER).await;
    let proxy = support::proxy(support::config(app)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    let mut buf = Vec::new();
    for i in 0..3 {
        s.write_all(b"GET /stream HTTP/1.1\r\nHost: pod\r\nTE: trailers\r\n\r\n").await.expect("write");
        let r = read_response(&mut s, &mut buf, false).await;
        assert_eq!(r.status(), 200, "request {i}: {r:?}");
        assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{r:?}");
        assert_eq!(r.header("keep-alive"), None, "hop-by-hop field removed: {r:?}");
        assert_eq!(r.body, b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1, "one app connection carried every request");
    let m = support::metrics(&proxy);
    let sent = support::metric_value(&m, &["tandem_http_response_bytes_total{", "direction=\"inbound\""]);
    assert_eq!(sent, Some(33.0), "chunk data counted, framing not: {m}");
}

#[tokio::test]
async fn an_answer_that_ends_with_the_apps_connection_closes_the_clients_after_it() {
    let app = support::raw_app(|mut s| async move {
        support::read_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end").await;
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
    let r = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert_eq!(r.body, b"until the end");
}

#[tokio::test]
async fn interim_answers_are_dropped_and_head_answers_have_no_body() {
    const ANSWER: &[u8] = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n\
        HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal";
    let (app, conns, _heads) = scripted_app(ANSWER).await;
    let proxy = support::proxy(support::config(app)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    let mut buf = Vec::new();
    s.write_all(b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!((r.status(), &r.body[..]), (200, &b"final"[..]), "{r:?}");

    // A HEAD answer's Content-Length describes the GET; nothing follows the head.
    let (app, _, _heads) = scripted_app(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").await;
    let proxy = support::proxy(support::config(app)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    for _ in 0..2 {
        s.write_all(b"HEAD / HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
        let r = read_response(&mut s, &mut buf, true).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.header("content-length"), Some("5"));
        assert!(buf.is_empty(), "no body after a HEAD answer: {buf:?}");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let echo = support::echo().await;
    let proxy = support::proxy(support::config(echo.addr)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    let mut all = Vec::new();
    for i in 0..5 {
        all.extend_from_slice(format!("GET /p{i} HTTP/1.1\r\nHost: pod\r\n\r\n").as_bytes());
    }
    s.write_all(&all).await.expect("write");
    let mut buf = Vec::new();
    for i in 0..5 {
        let r = read_response(&mut s, &mut buf, false).await;
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("echo JSON");
        assert_eq!(v["path"], format!("/p{i}"), "{v}");
    }
}

#[tokio::test]
async fn requests_the_codec_does_not_take_go_to_hyper_on_the_same_connection() {
    let echo = support::echo().await;
    let proxy = support::proxy(support::config(echo.addr)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    let mut buf = Vec::new();
    // The codec's request, then a chunked upload (hyper's from here on), then a plain one again.
    s.write_all(b"GET /first HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.status(), 200);
    s.write_all(
        b"POST /up?echo_body=1 HTTP/1.1\r\nHost: pod\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await
    .expect("write");
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(r.body, b"3\r\nabc\r\n0\r\n\r\n", "hyper answers this one, chunked: {r:?}");
    s.write_all(b"GET /third HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
    let r = read_response(&mut s, &mut buf, false).await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("echo JSON");
    assert_eq!(v["path"], "/third");

    // HTTP/1.0 from the start: hyper answers it, and closes.
    let out = support::raw(proxy.inbound_addr, b"GET /old HTTP/1.0\r\nHost: pod\r\n\r\n", Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.0 200 ") || out.starts_with("HTTP/1.1 200 "), "{out}");
    assert!(out.contains("\"/old\""), "{out}");
}

#[tokio::test]
async fn a_head_not_complete_within_header_read_closes_the_connection_however_it_trickles() {
    let echo = support::echo().await;
    let mut cfg = support::config(echo.addr);
    cfg.inbound.timeouts.header_read = tandem::config::Human::new(Duration::from_millis(300));
    let proxy = support::proxy(cfg).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    // One header byte every 50 ms for up to 5 s: each one arrives well inside the timeout, the
    // head never completes, and the connection must close anyway.
    let mut closed = false;
    let mut answer = Vec::new();
    for _ in 0..100 {
        if s.write_all(b"x").await.is_err() {
            closed = true;
            break;
        }
        let mut b = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            // The answer to a head that timed out: 408, then the close.
            Ok(Ok(n)) => {
                answer.extend_from_slice(&b[..n]);
                assert!(
                    answer.starts_with(b"HTTP/1.1 408 "),
                    "unexpected answer: {:?}",
                    String::from_utf8_lossy(&answer)
                );
            }
            Err(_) => {}
        }
    }
    assert!(closed, "a trickled head kept the connection open past header_read");

    // Between requests the idle timeout applies, not header_read.
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut s, &mut buf, false).await.status(), 200);
    let mut b = [0u8; 1];
    let quiet = tokio::time::timeout(Duration::from_millis(900), s.read(&mut b)).await;
    assert!(quiet.is_err(), "an idle keep-alive connection stays open past header_read: {quiet:?}");
}

#[tokio::test]
async fn an_app_answering_before_the_upload_ends_is_relayed_and_the_connection_closes() {
    let app = support::raw_app(|mut s| async move {
        support::read_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!").await;
        // Keep the connection open (unread body and all) until the proxy closes it.
        read_until_closed(&mut s).await;
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: pod\r\nContent-Length: 1000000\r\n\r\n").await.expect("write");
    s.write_all(&[b'x'; 10_000]).await.expect("write part of the body");
    let r = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.status(), 413, "{r:?}");
    assert_eq!(r.body, b"big!");
    assert_eq!(r.header("connection"), Some("close"), "the unsent body cannot be taken for a request: {r:?}");
    assert!(closed_by_peer(&mut s).await);
}

/// An app that answers a request head at once and then echoes its body as the body arrives.
async fn streaming_echo_app() -> SocketAddr {
    support::raw_app(|mut s| async move {
        let head = support::read_head(&mut s).await;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: ").or_else(|| l.strip_prefix("content-length: ")))
            .and_then(|v| v.trim().parse().ok())
            .expect("a Content-Length");
        if s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes()).await.is_err() {
            return;
        }
        let mut left = len;
        let mut chunk = vec![0u8; 8192];
        while left > 0 {
            let n = match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n.min(left),
            };
            if s.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            left -= n;
        }
        read_until_closed(&mut s).await;
    })
    .await
}

#[tokio::test]
async fn an_app_that_answers_at_once_and_echoes_the_upload_streams_both_ways() {
    // The app answers before any body byte; each piece of the body is echoed before the
    // client sends the next, so only a relay that goes on sending the body while it relays
    // the answer gets to the end (one that stops the upload at the answer waits for the idle
    // timeout, and one that buffers either body waits for ever).
    let proxy = support::proxy(support::config(streaming_echo_app().await)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    const PIECES: usize = 6;
    const PIECE: usize = 10_000;
    let head = format!("POST /echo HTTP/1.1\r\nHost: pod\r\nContent-Length: {}\r\n\r\n", PIECES * PIECE);
    let (head, mut buf) = head_then_answer_head(&mut s, &head).await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "the answer came before the body: {head}");
    for i in 0..PIECES {
        let piece = vec![b'a' + i as u8; PIECE];
        s.write_all(&piece).await.expect("write a piece of the body");
        while buf.len() < PIECE {
            let mut chunk = [0u8; 16384];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("piece {i} echoed in time"))
                .expect("read");
            assert!(n > 0, "closed at piece {i}");
            buf.extend_from_slice(&chunk[..n]);
        }
        assert!(buf.drain(..PIECE).eq(piece.into_iter()), "piece {i} came back whole");
    }
    assert!(buf.is_empty(), "nothing behind the answer");
    assert!(closed_by_peer(&mut s).await, "the client's connection ends after an early answer");
    counted_once(&proxy, "-").await;
    let m = support::metrics(&proxy);
    let sum = |name: &str| support::metric_value(&m, &[&format!("{name}{{"), "direction=\"inbound\""]);
    assert_eq!(sum("tandem_http_request_bytes_total"), Some((PIECES * PIECE) as f64));
    assert_eq!(sum("tandem_http_response_bytes_total"), Some((PIECES * PIECE) as f64));
}

/// Writes a request head alone and reads the answer's head (what follows it is returned).
async fn head_then_answer_head(s: &mut TcpStream, head: &str) -> (String, Vec<u8>) {
    s.write_all(head.as_bytes()).await.expect("write the head");
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await.expect("a head").expect("read");
        assert!(n > 0, "closed before the answer's head");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).into_owned();
            buf.drain(..at + 4);
            return (head, buf);
        }
    }
}

/// An app that answers every request but a POST with `conn N` (N counts its connections from
/// 0) and hands the connection of a POST, its head read, to `on_post`; returns its address and
/// the count of connections it took.
async fn numbering_app<F, Fut>(on_post: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    let on_post = Arc::new(on_post);
    let app = support::raw_app(move |mut s| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        let on_post = on_post.clone();
        async move {
            let head = support::read_head(&mut s).await;
            if head.starts_with("POST") {
                return on_post(s).await;
            }
            let body = format!("conn {n}");
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            let _ = s.write_all(answer.as_bytes()).await;
        }
    })
    .await;
    (app, conns)
}

#[tokio::test]
async fn an_early_answer_that_stops_reading_the_upload_ends_with_its_body_and_both_connections() {
    // The app answers at once, finishes its body once the upload has begun, and reads no more:
    // the answer is relayed whole while the upload is still open, then the client's connection
    // closes and the app's is not used again.
    let (app, conns) = numbering_app(|mut s| async move {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").await;
        let mut b = [0u8; 1];
        let _ = s.read(&mut b).await;
        let _ = s.write_all(b"done!").await;
        // Holds the connection, reading nothing more, for as long as the test runs.
        std::future::pending::<()>().await;
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    let (head, mut buf) =
        head_then_answer_head(&mut s, "POST /up HTTP/1.1\r\nHost: pod\r\nContent-Length: 1000000\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    s.write_all(&[b'x'; 1000]).await.expect("write part of the body");
    while buf.len() < 5 {
        let mut chunk = [0u8; 64];
        let n =
            tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await.expect("the body").expect("read");
        assert!(n > 0, "closed before the answer's body: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(buf, b"done!");
    assert!(closed_by_peer(&mut s).await, "the unsent body cannot be taken for a request");
    counted_once(&proxy, "-").await;
    let (status, _, body) = support::get(&format!("http://{}/after", proxy.inbound_addr)).await;
    assert_eq!(status, 200);
    assert_eq!(body, "conn 1", "the next request got a fresh app connection");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_client_gone_while_an_early_answer_waits_for_its_upload_counts_dc() {
    // The app answers at once and echoes what it reads; the client sends part of its body and
    // leaves.
    let proxy = support::proxy(support::config(streaming_echo_app().await)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    let (head, _) =
        head_then_answer_head(&mut s, "POST /up HTTP/1.1\r\nHost: pod\r\nContent-Length: 100000\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    s.write_all(&[b'x'; 100]).await.expect("write part of the body");
    drop(s);
    counted_once(&proxy, "DC").await;
    let m = support::metrics(&proxy);
    let sent = support::metric_value(&m, &["tandem_http_request_bytes_total{", "direction=\"inbound\""]);
    assert_eq!(sent, Some(100.0), "what the client sent before it left is counted");
}

#[tokio::test]
async fn a_body_cut_short_by_the_app_closes_the_clients_connection_and_counts_uc() {
    let app = support::raw_app(|mut s| async move {
        support::read_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten!!").await;
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await.expect("the proxy closes");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("only ten!!"), "{text}");
    counted_once(&proxy, "UC").await;
}

#[tokio::test]
async fn an_oversized_or_broken_response_head_is_502_upe() {
    let app = support::raw_app(|mut s| async move {
        support::read_head(&mut s).await;
        let big = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n", "b".repeat(1_100_000));
        let _ = s.write_all(big.as_bytes()).await;
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let resp = support::get(&format!("http://{}/x", proxy.inbound_addr)).await;
    support::assert_proxy_error(&resp, 502, "UPE", "upstream protocol error (UPE):");
    assert!(String::from_utf8_lossy(&resp.2).contains("too large"), "{:?}", resp.2);

    let app = support::raw_app(|mut s| async move {
        support::read_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n").await;
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let resp = support::get(&format!("http://{}/x", proxy.inbound_addr)).await;
    support::assert_proxy_error(&resp, 502, "UPE", "upstream protocol error (UPE):");
}

#[tokio::test]
async fn the_app_gets_the_clients_fields_byte_for_byte_minus_hop_by_hop_plus_tandems() {
    let (app, _, mut heads) = scripted_app(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let proxy = support::proxy(support::config(app)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    s.write_all(
        b"GET /a/b?c=d HTTP/1.1\r\nHost: shop\r\nX-Mixed-Case: Keep Me\r\nConnection: keep-alive, X-Secret\r\n\
          X-Secret: s\r\nProxy-Connection: keep-alive\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n\
          X-Forwarded-Client-Cert: forged\r\nX-Request-Id: \r\n\r\n",
    )
    .await
    .expect("write");
    let r = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.status(), 204);
    let head = heads.recv().await.expect("the app got the request");
    assert!(head.starts_with("GET /a/b?c=d HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nHost: shop\r\n") && head.contains("\r\nX-Mixed-Case: Keep Me\r\n"), "{head}");
    for gone in ["connection:", "x-secret:", "proxy-connection:", "https", "forged"] {
        assert!(!head.to_ascii_lowercase().contains(gone), "{gone} must not reach the app: {head}");
    }
    assert!(head.contains("\r\nx-forwarded-for: 10.0.0.1, 127.0.0.1\r\n"), "{head}");
    assert!(head.contains("\r\nx-forwarded-proto: http\r\n"), "{head}");
    let id = head.lines().find_map(|l| l.strip_prefix("x-request-id: ")).expect("a request id was made");
    assert_eq!(id.len(), 36, "{head}");
    assert!(!head.contains("X-Request-Id: \r\n"), "the empty id was replaced: {head}");
}

/// An h2c request (no body) to `addr`: status, body, trailers; `Err` if the stream failed.
async fn h2c_get(addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>, Option<http::HeaderMap>), String> {
    use http_body_util::BodyExt;
    let req = http::Request::get(format!("http://{addr}{path}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let resp = support::h2().request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let collected = resp.into_body().collect().await.map_err(|e| e.to_string())?;
    let trailers = collected.trailers().cloned();
    Ok((status, collected.to_bytes().to_vec(), trailers))
}

#[tokio::test]
async fn h2c_requests_without_a_body_get_chunked_answers_de_chunked_with_trailers_on_one_app_connection() {
    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\ngrpc-status: 0\r\ngrpc-message: fine\r\n\r\n";
    let (app, conns, mut heads) = scripted_app(ANSWER).await;
    let proxy = support::proxy(support::config(app)).await;
    for i in 0..3 {
        let (status, body, trailers) = h2c_get(proxy.inbound_addr, "/svc/Method").await.expect("answer");
        assert_eq!((status, &body[..]), (200, &b"hello world"[..]), "request {i}");
        let trailers = trailers.expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "fine");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1, "the codec's connection was reused");
    let head = heads.recv().await.expect("head");
    assert!(head.starts_with("GET /svc/Method HTTP/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("host: {}\r\n", proxy.inbound_addr)), "the h2 authority becomes Host: {head}");

    // Framed by the end of the connection, and by Content-Length.
    let app = support::raw_app(|mut s| async move {
        support::read_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").await;
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let (status, body, _) = h2c_get(proxy.inbound_addr, "/").await.expect("answer");
    assert_eq!((status, &body[..]), (200, &b"until the end"[..]));
}

#[tokio::test]
async fn an_h2c_answer_cut_short_fails_the_stream_and_counts_uc() {
    let app = support::raw_app(|mut s| async move {
        support::read_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten!!").await;
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let got = h2c_get(proxy.inbound_addr, "/").await;
    assert!(got.is_err(), "a body cut short must not look complete: {got:?}");
    counted_once(&proxy, "UC").await;

    // Refused, closed before an answer, garbage: the same reasons as the HTTP/1.1 paths.
    let proxy = support::proxy(support::config(support::dead_addr())).await;
    let r = h2c_get(proxy.inbound_addr, "/").await.expect("answer");
    assert_eq!(r.0, 502);
    let app = support::raw_app(|mut s| async move {
        support::read_head(&mut s).await;
        let _ = s.write_all(b"garbage\r\n\r\n").await;
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let r = h2c_get(proxy.inbound_addr, "/").await.expect("answer");
    assert_eq!(r.0, 502);
    assert!(String::from_utf8_lossy(&r.1).starts_with("upstream protocol error (UPE)"), "{r:?}");
}

#[tokio::test]
async fn a_connection_header_naming_content_length_cannot_smuggle_a_request() {
    let echo = support::echo().await;
    let proxy = support::proxy(support::config(echo.addr)).await;
    let hidden = "GET /hidden HTTP/1.1\r\nHost: pod\r\nX-Forwarded-Client-Cert: forged\r\n\r\n";
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    let req = format!(
        "POST /visible?echo_body=1 HTTP/1.1\r\nHost: pod\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n{hidden}",
        hidden.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let r = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(String::from_utf8_lossy(&r.body), hidden, "the body reached the app as the body");
    // Had the app seen two requests, its answer to the hidden one would wait on a pooled
    // connection for the next client.
    for _ in 0..3 {
        let (status, _, body) = support::get(&format!("http://{}/next", proxy.inbound_addr)).await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("echo JSON");
        assert_eq!(v["path"], "/next", "{v}");
    }
}

#[tokio::test]
async fn after_an_early_answer_the_apps_connection_is_not_used_again() {
    let (app, conns) = numbering_app(|mut s| async move {
        let _ = s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!").await;
        // Waits for the rest of the body it was promised, swallowing whatever comes.
        read_until_closed(&mut s).await;
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: pod\r\nContent-Length: 100000\r\n\r\n").await.expect("write");
    s.write_all(&[b'x'; 1000]).await.expect("write part of the body");
    let r = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.status(), 413);
    let (status, _, body) = support::get(&format!("http://{}/after", proxy.inbound_addr)).await;
    assert_eq!(status, 200, "the next request got a fresh app connection: {body:?}");
    assert_eq!(body, "conn 1");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_post_is_not_sent_twice_when_a_pooled_connection_ends_without_an_answer() {
    let posts = Arc::new(AtomicUsize::new(0));
    let seen = posts.clone();
    let app = support::raw_app(move |mut s| {
        let seen = seen.clone();
        async move {
            // Each connection answers its first request and drops the second without an answer.
            for i in 0..2 {
                let head = support::read_head(&mut s).await;
                if head.is_empty() {
                    return;
                }
                if head.starts_with("POST") {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                if i == 0 {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                }
            }
        }
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    let mut buf = Vec::new();
    s.write_all(b"GET /warm HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
    assert_eq!(read_response(&mut s, &mut buf, false).await.status(), 200);
    s.write_all(b"POST /order HTTP/1.1\r\nHost: pod\r\nContent-Length: 2\r\n\r\n{}").await.expect("write");
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.status(), 502, "{r:?}");
    assert_eq!(r.header("x-tandem-error"), Some("UC"));
    assert_eq!(posts.load(Ordering::SeqCst), 1, "the POST reached the app once");

    // A GET in the same spot is sent again on a fresh connection.
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    s.write_all(b"GET /a HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
    assert_eq!(read_response(&mut s, &mut buf, false).await.status(), 200);
    s.write_all(b"GET /b HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
    assert_eq!(read_response(&mut s, &mut buf, false).await.status(), 200);
}

#[tokio::test]
async fn a_stalled_upload_is_408_and_a_stalled_or_broken_answer_is_cut() {
    // An app that reads a whole 100-byte body before it answers.
    let app = support::raw_app(|mut s| async move {
        support::read_head(&mut s).await;
        let mut body = [0u8; 100];
        if s.read_exact(&mut body).await.is_ok() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        }
    })
    .await;
    let mut cfg = support::config(app);
    cfg.inbound.timeouts.idle = tandem::config::Human::new(Duration::from_millis(300));
    let proxy = support::proxy(cfg).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    s.write_all(b"POST /up HTTP/1.1\r\nHost: pod\r\nContent-Length: 100\r\n\r\n0123456789").await.expect("write");
    let r = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.status(), 408, "{r:?}");
    assert_eq!(r.header("x-tandem-error"), Some("DPE"));
    assert_eq!(r.header("connection"), Some("close"));
    // The 10 bytes the client did send are counted (and logged) for the failed request.
    support::wait_for("the request bytes counted", Duration::from_secs(5), || {
        let m = support::metrics(&proxy);
        let v = support::metric_value(&m, &["tandem_http_request_bytes_total{", "direction=\"inbound\""]);
        async move { (v == Some(10.0)).then_some(()) }
    })
    .await;

    // Broken chunked framing right behind the head: the head goes out, then the connection is cut.
    let app = support::raw_app(|mut s| async move {
        support::read_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n").await;
        let mut sink = [0u8; 64];
        let _ = s.read(&mut sink).await;
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await.expect("the proxy cuts it");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200 OK\r\n"));
    counted_once(&proxy, "UC").await;
}

#[tokio::test]
async fn an_answers_length_survives_its_connection_header_and_close_is_a_real_line() {
    let (app, conns, _heads) =
        scripted_app(b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nX-Note: keep-connection: close\r\nContent-Length: 2\r\n\r\nok")
            .await;
    let proxy = support::proxy(support::config(app)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
        let r = read_response(&mut s, &mut buf, false).await;
        assert_eq!((r.header("content-length"), &r.body[..]), (Some("2"), &b"ok"[..]), "{r:?}");
    }
    s.write_all(b"GET / HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n").await.expect("write");
    let r = read_response(&mut s, &mut buf, false).await;
    assert!(r.head.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{r:?}");
    assert!(closed_by_peer(&mut s).await);
    assert_eq!(conns.load(Ordering::SeqCst), 1);

    // h2c answers without a body free their app connection at once.
    let (app, conns, _heads) = scripted_app(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let proxy = support::proxy(support::config(app)).await;
    for _ in 0..3 {
        assert_eq!(h2c_get(proxy.inbound_addr, "/").await.expect("answer").0, 204);
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_upload_cut_by_either_side_is_dc_or_502_uc() {
    // The app reads the head, then the body until the client's side ends.
    let app = support::raw_app(|mut s| async move {
        support::read_head(&mut s).await;
        read_until_closed(&mut s).await;
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    s.write_all(b"POST /up HTTP/1.1\r\nHost: pod\r\nContent-Length: 100000\r\n\r\n").await.expect("write");
    s.write_all(&[b'x'; 10_000]).await.expect("write part of the body");
    drop(s);
    counted_once(&proxy, "DC").await;

    // The app closes while the body is still coming: 502 UC, and the client's connection closes.
    let app = support::raw_app(|mut s| async move {
        support::read_head(&mut s).await;
        drop(s);
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    s.write_all(b"POST /up HTTP/1.1\r\nHost: pod\r\nContent-Length: 100000\r\n\r\n").await.expect("write");
    s.write_all(&[b'x'; 10_000]).await.expect("write part of the body");
    let r = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.status(), 502, "{r:?}");
    assert_eq!(r.header("x-tandem-error"), Some("UC"));
    assert_eq!(r.header("connection"), Some("close"), "the unread body cannot be taken for a request");
    counted_once(&proxy, "UC").await;
}

#[tokio::test]
async fn h2c_answers_on_one_app_connection_keep_their_bytes_while_its_buffer_is_reused() {
    // The codec's client half writes each request head from, and reads each answer into, the
    // buffer that came back with the pooled connection. Every earlier body is held while later
    // answers arrive, so a buffer reused before its bytes were free would show up as a changed
    // body; every head must reach the app whole.
    let echo = support::echo().await;
    let proxy = support::proxy(support::config(echo.addr)).await;
    let mut held = Vec::new();
    for i in 0..24usize {
        // Small echoes (one read), larger bodies (several reads that grow the buffer), in turn.
        let path = if i % 3 == 2 { format!("/big/{i}?size={}", 5000 + i * 997) } else { format!("/echo/{i}?n={i}") };
        let (status, body, _) = h2c_get(proxy.inbound_addr, &path).await.expect("answer");
        assert_eq!(status, 200, "request {i}");
        held.push((i, path, body));
    }
    for (i, path, body) in &held {
        if i % 3 == 2 {
            assert_eq!(body.len(), 5000 + i * 997, "request {i}");
        } else {
            let echoed: serde_json::Value = serde_json::from_slice(body).expect("json echo");
            assert_eq!(echoed["path"], path.split('?').next().expect("path"), "request {i}: {echoed}");
            assert_eq!(echoed["method"], "GET", "request {i}");
        }
    }
    assert_eq!(proxy.app_idle_connections(), vec![1], "every request went over the one app connection");
}

#[tokio::test]
async fn a_busy_connections_timeouts_hold_after_each_request_moved_them_later() {
    // Every request moves the connection's deadlines later (the timer is re-armed lazily, when
    // it fires early): after several requests the response timeout and the idle timeout must
    // still end a stalled answer and an idle connection, and neither before its time.
    let app = support::raw_app(|mut s| async move {
        loop {
            let head = support::read_head(&mut s).await;
            if head.is_empty() {
                return;
            }
            if head.starts_with("GET /hang") {
                std::future::pending::<()>().await;
            }
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                return;
            }
        }
    })
    .await;
    let mut cfg = support::config(app);
    cfg.inbound.timeouts.response = tandem::config::Human::new(Duration::from_millis(300));
    cfg.inbound.timeouts.idle = tandem::config::Human::new(Duration::from_millis(400));
    let proxy = support::proxy(cfg).await;
    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    let mut buf = Vec::new();
    for _ in 0..5 {
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
        assert_eq!(read_response(&mut s, &mut buf, false).await.status(), 200);
    }
    let asked = std::time::Instant::now();
    s.write_all(b"GET /hang HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!((r.status(), r.header("x-tandem-error")), (504, Some("UT")), "{r:?}");
    assert!(asked.elapsed() >= Duration::from_millis(300), "answered 504 after {:?}", asked.elapsed());

    let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
    let mut buf = Vec::new();
    for _ in 0..5 {
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
        assert_eq!(read_response(&mut s, &mut buf, false).await.status(), 200);
    }
    let idle_from = std::time::Instant::now();
    assert!(closed_by_peer(&mut s).await, "an idle connection is closed after timeouts.idle");
    assert!(idle_from.elapsed() >= Duration::from_millis(400), "closed after {:?}", idle_from.elapsed());
}
