//! Transparent mode without iptables (no root needed): the opaque relay connected directly to
//! servers on 127.0.0.1:0, its access-log line for every way a connection ends, protocol
//! detection on real sockets fed byte by byte, and the `transparent` configuration keys.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tandem::base::reason::Direction;
use tandem::config::{Config, Sources};
use tandem::listener::detect::{classify, detect, server_name, Found};
use tandem::tcp::relay::{connect, Ended, Relay};
use tandem::telemetry::access_log::AccessLog;
use tandem::telemetry::metrics::Metrics;
use tandem::telemetry::Telemetry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn telemetry(log: &std::path::Path) -> Arc<Telemetry> {
    let metrics = Metrics::new(prometheus::Registry::new()).expect("metrics");
    let mut cfg = Config::default().access_log;
    cfg.destination = log.to_string_lossy().into_owned();
    let log =
        AccessLog::start(&cfg, metrics.access_log_written.clone(), metrics.access_log_dropped.clone()).expect("log");
    Arc::new(Telemetry::new(metrics, log))
}

/// A client connection accepted by a listener of the test's own: (the test's end, the end the
/// relay gets, the client's address).
async fn client_pair() -> (TcpStream, TcpStream, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (ours, accepted) = tokio::join!(TcpStream::connect(addr), l.accept());
    let ours = ours.expect("connect");
    let (theirs, peer) = accepted.expect("accept");
    (ours, theirs, peer)
}

/// A server that takes one connection and runs `f` on it.
async fn server<F, Fut>(f: F) -> SocketAddr
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        if let Ok((s, _)) = l.accept().await {
            f(s).await;
        }
    });
    addr
}

async fn echo_until_eof(mut s: TcpStream) {
    let (mut r, mut w) = s.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// Closes with a reset (SO_LINGER 0) instead of an orderly end of stream.
fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

async fn log_lines(t: &Arc<Telemetry>, log: &std::path::Path) -> Vec<serde_json::Value> {
    t.flush_access_log().await;
    support::json_lines(log)
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn the_relay_copies_both_ways_honours_the_half_close_and_logs_one_tcp_line() {
    let dir = support::TempDir::new("relay-ok");
    let log = dir.join("access.log");
    let t = telemetry(&log);
    let upstream = server(echo_until_eof).await;
    let (mut ours, theirs, peer) = client_pair().await;
    let relay = Relay::new(t.clone(), Direction::Outbound, "passthrough", Duration::from_secs(30));
    let run = tokio::spawn(async move { relay.run(theirs, peer, None, connect(upstream, WAIT)).await });

    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = ours.split();
    let send = async {
        w.write_all(&payload).await.expect("send");
        // The half-close: the echo server sees the end, and ends its side after echoing.
        w.shutdown().await.expect("half-close");
    };
    let mut back = Vec::new();
    let (_, read) = tokio::join!(send, r.read_to_end(&mut back));
    read.expect("read to the end");
    assert!(back == payload, "byte for byte ({} of {} bytes)", back.len(), payload.len());
    assert_eq!(tokio::time::timeout(WAIT, run).await.expect("ends").expect("join"), Ended::Closed);

    let lines = log_lines(&t, &log).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["protocol"], "tcp");
    assert!(l["method"].is_null());
    assert_eq!(l["direction"], "outbound");
    assert_eq!(l["upstream_host"], upstream.to_string());
    assert_eq!(l["downstream_remote_address"], peer.to_string());
    assert_eq!(l["bytes_received"], 300_000);
    assert_eq!(l["bytes_sent"], 300_000);
    assert_eq!(l["response_flags"], "-");
}

#[tokio::test]
async fn an_unreachable_destination_is_uf_and_the_client_is_closed() {
    let dir = support::TempDir::new("relay-uf");
    let log = dir.join("access.log");
    let t = telemetry(&log);
    let (_refusing, dead) = support::refusing_port();
    let (mut ours, theirs, peer) = client_pair().await;
    let relay = Relay::new(t.clone(), Direction::Inbound, "app", Duration::from_secs(30));
    let ended = relay.run(theirs, peer, None, connect(dead, WAIT)).await;
    assert_eq!(ended, Ended::Unreachable(tandem::base::reason::Reason::UF));
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(WAIT, ours.read(&mut buf)).await.expect("closed");
    assert!(matches!(n, Ok(0) | Err(_)), "the client's connection ends: {n:?}");
    let lines = log_lines(&t, &log).await;
    assert_eq!(lines[0]["response_flags"], "UF", "{lines:?}");
    assert_eq!(lines[0]["upstream_host"], dead.to_string());
}

#[tokio::test]
async fn a_destination_that_resets_is_uc_and_a_client_that_resets_is_dc() {
    let dir = support::TempDir::new("relay-reset");
    let log = dir.join("access.log");
    let t = telemetry(&log);
    let relay = Arc::new(Relay::new(t.clone(), Direction::Inbound, "app", Duration::from_secs(30)));

    // The destination reads a little and resets.
    let upstream = server(|mut s| async move {
        let mut buf = [0u8; 4];
        let _ = s.read_exact(&mut buf).await;
        reset(s);
    })
    .await;
    let (mut ours, theirs, peer) = client_pair().await;
    let r = relay.clone();
    let run = tokio::spawn(async move { r.run(theirs, peer, None, connect(upstream, WAIT)).await });
    ours.write_all(b"\x00abc").await.expect("send");
    assert_eq!(
        tokio::time::timeout(WAIT, run).await.expect("ends").expect("join"),
        Ended::Failed(tandem::base::reason::Reason::UC)
    );

    // The client resets while the destination waits.
    let upstream = server(|mut s| async move {
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(WAIT, s.read(&mut buf)).await;
    })
    .await;
    let (ours, theirs, peer) = client_pair().await;
    let r = relay.clone();
    let run = tokio::spawn(async move { r.run(theirs, peer, None, connect(upstream, WAIT)).await });
    // The relay is connected once the destination has accepted; a reset before that is a UF-free DC too.
    reset(ours);
    assert_eq!(
        tokio::time::timeout(WAIT, run).await.expect("ends").expect("join"),
        Ended::Failed(tandem::base::reason::Reason::DC)
    );

    let flags: Vec<_> = log_lines(&t, &log).await.iter().map(|l| l["response_flags"].clone()).collect();
    assert_eq!(flags, ["UC", "DC"]);
}

#[tokio::test]
async fn a_connection_that_moves_nothing_for_the_idle_timeout_is_closed() {
    let dir = support::TempDir::new("relay-idle");
    let log = dir.join("access.log");
    let t = telemetry(&log);
    let upstream = server(|mut s| async move {
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(WAIT, s.read(&mut buf)).await;
    })
    .await;
    let (_ours, theirs, peer) = client_pair().await;
    let relay = Relay::new(t.clone(), Direction::Inbound, "app", Duration::from_millis(50));
    let ended = tokio::time::timeout(WAIT, relay.run(theirs, peer, None, connect(upstream, WAIT))).await.expect("ends");
    assert_eq!(ended, Ended::Idle);
    assert_eq!(log_lines(&t, &log).await[0]["response_flags"], "-");
}

#[tokio::test]
async fn a_relay_cut_while_open_is_still_logged_with_its_bytes() {
    let dir = support::TempDir::new("relay-cut");
    let log = dir.join("access.log");
    let t = telemetry(&log);
    let upstream = server(echo_until_eof).await;
    let (mut ours, theirs, peer) = client_pair().await;
    let relay = Relay::new(t.clone(), Direction::Inbound, "app", Duration::from_secs(30));
    let run = tokio::spawn(async move { relay.run(theirs, peer, None, connect(upstream, WAIT)).await });
    ours.write_all(b"\x00ping").await.expect("send");
    let mut buf = [0u8; 5];
    ours.read_exact(&mut buf).await.expect("echoed");
    // What the accept loop does at the drain deadline: drop the serving future.
    t.begin_local_reset();
    run.abort();
    let _ = run.await;
    let lines = log_lines(&t, &log).await;
    assert_eq!(lines[0]["response_flags"], "LR", "{lines:?}");
    assert_eq!(lines[0]["bytes_received"], 5);
    assert_eq!(lines[0]["bytes_sent"], 5);
}

/// Detection on a real connection whose client writes `parts` one by one.
async fn detect_parts(parts: &'static [&'static [u8]], timeout: Duration) -> (Found, Vec<u8>) {
    let (mut ours, theirs, _) = client_pair().await;
    let feed = tokio::spawn(async move {
        for p in parts {
            ours.write_all(p).await.expect("send");
            tokio::task::yield_now().await;
        }
        ours
    });
    let (found, mut theirs) = detect(theirs, timeout).await.expect("detect");
    let _ours = feed.await.expect("feed");
    // Peeked, not read: the server chosen reads the connection from its first byte (also after
    // a timeout, when the bytes came long before).
    let want: usize = parts.iter().map(|p| p.len()).sum();
    let mut first = vec![0u8; want];
    if want > 0 {
        tokio::time::timeout(WAIT, theirs.read_exact(&mut first))
            .await
            .expect("readable")
            .expect("the bytes are still there");
    }
    (found, first)
}

#[tokio::test]
async fn detection_waits_for_enough_bytes_and_leaves_them_in_the_socket() {
    let (found, bytes) = detect_parts(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\n"], WAIT).await;
    assert_eq!(found, Found::Http2);
    assert_eq!(bytes, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let (found, _) = detect_parts(&[b"GE", b"T /x HT", b"TP/1.1\r\n"], WAIT).await;
    assert_eq!(found, Found::Http1);
    let (found, _) = detect_parts(&[b"\x00\x01\x02"], WAIT).await;
    assert_eq!(found, Found::Other);
}

#[tokio::test]
async fn a_silent_client_is_passed_through_after_the_timeout() {
    let (found, _) = detect_parts(&[], Duration::from_millis(50)).await;
    assert_eq!(found, Found::Timeout);
    // A request line that stops short stays undecided until the timeout.
    let (found, _) = detect_parts(&[b"GET /slow"], Duration::from_millis(50)).await;
    assert_eq!(found, Found::Timeout);
}

#[test]
fn the_transparent_keys_are_checked_by_name() {
    let sources = Sources {
        env: vec![
            ("TANDEM_TRANSPARENT_OPAQUE_PORTS".into(), "5432,0,smtp".into()),
            ("TANDEM_TRANSPARENT_DETECT_TIMEOUT".into(), "30s".into()),
        ],
        ..Sources::default()
    };
    let problems: Vec<String> =
        Config::load_syntax(&sources).expect_err("invalid").0.iter().map(|p| p.to_string()).collect();
    assert!(problems.iter().any(|p| p.starts_with("transparent.opaque_ports[1]")), "{problems:?}");
    assert!(problems.iter().any(|p| p.starts_with("transparent.opaque_ports[2]")), "{problems:?}");
    assert!(
        problems.iter().any(|p| p.starts_with("transparent.detect_timeout") && p.contains("at most 10s")),
        "{problems:?}"
    );

    let sources =
        Sources { env: vec![("TANDEM_TRANSPARENT_OPAQUE_PORTS".into(), "5432, 9000".into())], ..Sources::default() };
    let config = Config::load_syntax(&sources).expect("valid").config;
    assert!(config.transparent.is_opaque(9000) && !config.transparent.is_opaque(3306));
    let defaults = Config::default().transparent;
    assert!([25, 587, 3306, 4444, 5432, 6379, 9300, 11211].iter().all(|p| defaults.is_opaque(*p)));
    assert_eq!(defaults.detect_timeout.value, Duration::from_millis(500));
}

#[test]
fn a_client_hello_is_tls_with_its_server_name() {
    let hello = support::client_hello("orders.shop.svc");
    assert_eq!(classify(&hello, false), Some(Found::Tls { server_name: Some("orders.shop.svc".into()) }));
    // Part of the record: wait for the rest, and at the end take it as TLS without a name.
    assert_eq!(classify(&hello[..20], false), None);
    assert_eq!(classify(&hello[..20], true), Some(Found::Tls { server_name: None }));
    // A name past the end of the bytes read is never invented.
    for cut in 0..hello.len() {
        if let Some(name) = server_name(&hello[..cut]) {
            assert_eq!(name, "orders.shop.svc", "cut at {cut}");
        }
    }
}
