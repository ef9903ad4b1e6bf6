//! SIGTERM in the middle of a steady, bounded load: no request fails for a client that honours
//! `Connection: close` and GOAWAY.
//!
//! - `a_client_honouring_close_and_goaway_loses_no_request`: always runs. Its own client (HTTP/1.1
//!   keep-alive connections and h2c connections with concurrent streams) counts exactly: a request
//!   fails if it was written to an open connection and no full response came back. A connection
//!   refused after tandem closed its listener carries no request: the client goes elsewhere (in a
//!   cluster, another endpoint), so it ends that client loop.
//! - `wrk_and_h2load_with_sigterm_in_the_middle`: runs wrk (HTTP/1.1) and h2load (h2c) when they are
//!   installed and prints why it skips when not. Their counters are checked against tandem's access
//!   log: every request tandem received was answered 200 in full.
//!
//! Both are bounded in requests and time and send traffic only to 127.0.0.1.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::procs::{echo, tandem};

const MAX_REQUESTS: u64 = 40_000;
const MAX_TIME: Duration = Duration::from_secs(40);
const EXIT_LIMIT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    /// Written to an open connection, no full 200 back.
    failed: AtomicU64,
    /// Refused before being sent or processed (hyper: canceled; h2: after GOAWAY, REFUSED_STREAM).
    not_sent: AtomicU64,
    /// Connection attempts refused once the listener had closed.
    refused_connects: AtomicU64,
    reconnects: AtomicU64,
    stopped: AtomicBool,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Counts {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.errors.lock() {
            if e.len() < 10 {
                e.push(what);
            }
        }
    }
    fn total(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
    fn done(&self, started: Instant) -> bool {
        self.total() >= MAX_REQUESTS || started.elapsed() >= MAX_TIME
    }
}

fn req(addr: SocketAddr) -> http::Request<Empty<Bytes>> {
    // hyper's connection-level client adds no Host; an HTTP/1.1 request must name one.
    http::Request::get(format!("http://{addr}/load"))
        .header(http::header::HOST, addr.to_string())
        .body(Empty::new())
        .expect("request")
}

/// One HTTP/1.1 client loop: keep-alive, reconnects after `Connection: close`.
async fn h1_client(addr: SocketAddr, c: Arc<Counts>, started: Instant) {
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
    while !c.done(started) {
        if let Some(s) = sender.as_mut() {
            if s.ready().await.is_err() {
                // Closed while idle (after `Connection: close` or by the server): nothing was sent.
                sender = None;
            }
        }
        let s = match sender.as_mut() {
            Some(s) => s,
            None => {
                let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
                    if c.stopped.load(Ordering::Relaxed) {
                        c.refused_connects.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    c.fail("connect refused before the stop".into());
                    return;
                };
                c.reconnects.fetch_add(1, Ordering::Relaxed);
                let io = hyper_util::rt::TokioIo::new(tcp);
                let Ok((s, conn)) = hyper::client::conn::http1::handshake(io).await else { continue };
                tokio::spawn(conn);
                sender.insert(s)
            }
        };
        match s.send_request(req(addr)).await {
            Ok(resp) => {
                let close = resp.headers().get(http::header::CONNECTION).is_some_and(|v| v == "close");
                let status = resp.status();
                match resp.into_body().collect().await {
                    Ok(_) if status == 200 => {
                        c.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => c.fail(format!("h1 status {status}")),
                    Err(e) => c.fail(format!("h1 body: {e}")),
                }
                if close {
                    sender = None;
                }
            }
            Err(e) if e.is_canceled() => {
                c.not_sent.fetch_add(1, Ordering::Relaxed);
                sender = None;
            }
            Err(e) => {
                c.fail(format!("h1: {e}"));
                sender = None;
            }
        }
    }
}

/// One h2c connection with `streams` concurrent request loops; reconnects after GOAWAY.
async fn h2_client(addr: SocketAddr, streams: usize, c: Arc<Counts>, started: Instant) {
    while !c.done(started) {
        let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
            if c.stopped.load(Ordering::Relaxed) {
                c.refused_connects.fetch_add(1, Ordering::Relaxed);
                return;
            }
            c.fail("connect refused before the stop".into());
            return;
        };
        c.reconnects.fetch_add(1, Ordering::Relaxed);
        let Ok((client, conn)) = h2::client::handshake(tcp).await else { continue };
        let conn = tokio::spawn(conn);
        let mut loops = Vec::new();
        for _ in 0..streams {
            let client = client.clone();
            let c = c.clone();
            loops.push(tokio::spawn(async move {
                let Ok(mut client) = client.ready().await else { return };
                while !c.done(started) {
                    let r = http::Request::get(format!("http://{addr}/load")).body(()).expect("request");
                    // An error here means GOAWAY arrived: the stream was never opened.
                    let Ok((resp, _)) = client.send_request(r, true) else {
                        c.not_sent.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    match resp.await {
                        Ok(resp) => {
                            let status = resp.status();
                            let mut body = resp.into_body();
                            let mut err = None;
                            while let Some(d) = body.data().await {
                                match d {
                                    Ok(d) => {
                                        let _ = body.flow_control().release_capacity(d.len());
                                    }
                                    Err(e) => {
                                        err = Some(e);
                                        break;
                                    }
                                }
                            }
                            match (status.as_u16(), err) {
                                (200, None) => {
                                    c.ok.fetch_add(1, Ordering::Relaxed);
                                }
                                (s, e) => c.fail(format!("h2 status {s} body error {e:?}")),
                            }
                        }
                        // Refused, or above the last stream id of the final GOAWAY: not processed
                        // by the server (RFC 9113 §6.8), so safe to retry elsewhere. The access-log
                        // check below confirms tandem never answered them.
                        Err(e)
                            if e.reason() == Some(h2::Reason::REFUSED_STREAM)
                                || (e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR)) =>
                        {
                            c.not_sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => c.fail(format!("h2: {e}")),
                    }
                    match client.clone().ready().await {
                        Ok(cl) => client = cl,
                        Err(_) => return,
                    }
                }
            }));
        }
        for l in loops {
            let _ = l.await;
        }
        conn.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_honouring_close_and_goaway_loses_no_request() {
    let (_echo, app) = echo().await;
    let log = std::env::temp_dir().join(format!("tandem-load-{}-own.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let log_s = log.display().to_string();
    let mut t = tandem(app, &["--access-log", &log_s], &[]).await;
    let c = Arc::new(Counts::default());
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(tokio::spawn(h1_client(t.inbound, c.clone(), started)));
    }
    for _ in 0..2 {
        clients.push(tokio::spawn(h2_client(t.inbound, 4, c.clone(), started)));
    }
    // SIGTERM in the middle: once a steady stream of answers is flowing.
    while c.ok.load(Ordering::Relaxed) < 1500 {
        assert!(!c.done(started), "the load never reached 1500 answers");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.stopped.store(true, Ordering::Relaxed);
    t.proc.signal(libc::SIGTERM);
    let code = t.proc.exit(EXIT_LIMIT).await;
    for cl in clients {
        tokio::time::timeout(EXIT_LIMIT, cl).await.expect("the clients stop").expect("join");
    }
    let (ok, failed) = (c.ok.load(Ordering::Relaxed), c.failed.load(Ordering::Relaxed));
    let (lines, lines_ok) = access_log_counts(&log);
    let _ = std::fs::remove_file(&log);
    println!(
        "load: {ok} answered 200, {failed} failed, {} refused or not processed (GOAWAY) before reaching tandem, \
         {} connections, {} connection attempts refused after the listener closed; access log: {lines} lines, \
         {lines_ok} 200",
        c.not_sent.load(Ordering::Relaxed),
        c.reconnects.load(Ordering::Relaxed),
        c.refused_connects.load(Ordering::Relaxed),
    );
    assert_eq!(code.code(), Some(0), "stderr:\n{}", t.proc.stderr());
    assert_eq!(failed, 0, "failures: {:?}", c.errors.lock().map(|e| e.clone()).unwrap_or_default());
    assert!(ok >= 1500);
    // Every request that reached tandem was answered 200 and received in full by the client.
    assert_eq!((lines, lines_ok), (ok, ok));
}

/// The line of a tool's summary that starts with `prefix` (after leading spaces).
fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines().map(str::trim_start).find(|l| l.starts_with(prefix)).unwrap_or("")
}

/// In a line like `connect 0, read 0, write 12, timeout 0`: the number after `key`.
fn number_after(line: &str, key: &str) -> Option<u64> {
    line.split(',').map(str::trim).find_map(|part| part.strip_prefix(key)).and_then(|n| n.trim().parse().ok())
}

/// In a line like `40000 total, 6596 started, 6596 done`: the number before `key`.
fn number_before(line: &str, key: &str) -> Option<u64> {
    line.split(',').map(str::trim).find_map(|part| {
        let (n, k) = part.rsplit_once(' ')?;
        (k == key).then(|| n.rsplit(' ').next()?.parse().ok()).flatten()
    })
}

/// Access-log lines: (total, answered 200 with no response flag).
fn access_log_counts(path: &std::path::Path) -> (u64, u64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut total = 0;
    let mut ok = 0;
    for line in text.lines() {
        total += 1;
        let v: serde_json::Value = serde_json::from_str(line).expect("json access log line");
        if v["response_code"] == 200 && v["response_flags"] == "-" {
            ok += 1;
        }
    }
    (total, ok)
}

fn have(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// Runs `tool args` against a fresh tandem, sends SIGTERM once `tandem_http_requests_total`
/// reaches 2000 (or 1.5 s have passed with load flowing), lets the tool run to its own end, and
/// returns (the tool's output, access-log lines, of which 200s).
async fn run_under_load(tool: &str, args: &[&str]) -> (String, u64, u64) {
    let (_echo, app) = echo().await;
    let log = std::env::temp_dir().join(format!("tandem-load-{}-{tool}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let log_s = log.display().to_string();
    let mut t = tandem(app, &["--access-log", &log_s], &[]).await;
    let url = format!("http://{}/load", t.inbound);
    let out = std::env::temp_dir().join(format!("tandem-load-{}-{tool}.out", std::process::id()));
    let out_f = std::fs::File::create(&out).expect("output file");
    let mut all: Vec<&str> = args.to_vec();
    all.push(&url);
    let mut cmd = tokio::process::Command::new(tool);
    cmd.args(&all).stdout(out_f).stderr(std::process::Stdio::null()).kill_on_drop(true);
    let mut load = cmd.spawn().expect("spawn load tool");

    let started = Instant::now();
    loop {
        let (_, _, body) = support::procs::get(t.admin, "/metrics").await.expect("metrics");
        let total: f64 = String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.starts_with("tandem_http_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if total >= 2000.0 || (total >= 200.0 && started.elapsed() >= Duration::from_millis(1500)) {
            break;
        }
        assert!(started.elapsed() < MAX_TIME, "{tool} never reached 2000 requests");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.proc.signal(libc::SIGTERM);
    let code = t.proc.exit(EXIT_LIMIT).await;
    assert_eq!(code.code(), Some(0), "stderr:\n{}", t.proc.stderr());
    // Both end by themselves: wrk at its duration, h2load once it cannot reconnect. Stopping wrk
    // early would lose answers it has received but not yet counted.
    let _ = tokio::time::timeout(EXIT_LIMIT, load.wait()).await.expect("the load tool stops");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let (lines, ok) = access_log_counts(&log);
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&out);
    (text, lines, ok)
}

#[test]
fn summary_lines_parse() {
    let wrk = "  10555 requests in 4.01s, 3.19MB read\n  Socket errors: connect 0, read 2, write 106939, timeout 3\n";
    let e = line(wrk, "Socket errors:").trim_start_matches("Socket errors:");
    assert_eq!(
        (number_after(e, "read"), number_after(e, "write"), number_after(e, "timeout")),
        (Some(2), Some(106939), Some(3))
    );
    let h2 =
        "progress: 10% done\nrequests: 40000 total, 6596 started, 6596 done, 6588 succeeded, 33412 failed, 0 timeout\n";
    let r = line(h2, "requests:").trim_start_matches("requests:");
    assert_eq!(
        (number_before(r, "done"), number_before(r, "succeeded"), number_before(r, "timeout")),
        (Some(6596), Some(6588), Some(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrk_and_h2load_with_sigterm_in_the_middle() {
    if !have("wrk") || !have("h2load") {
        println!("skipped: wrk and h2load are not both installed (apt-get install wrk nghttp2-client)");
        return;
    }
    // wrk: 16 keep-alive connections for 4 s; tandem is stopped within the first 1.5 s.
    let (text, lines, ok) = run_under_load("wrk", &["-t", "1", "-c", "16", "-d", "4s"]).await;
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("wrk summary");
    let errors = line(&text, "Socket errors:").trim_start_matches("Socket errors:");
    let read = number_after(errors, "read").unwrap_or(0);
    let write = number_after(errors, "write").unwrap_or(0);
    let timeout = number_after(errors, "timeout").unwrap_or(0);
    let non2xx = line(&text, "Non-2xx or 3xx responses:")
        .trim_start_matches("Non-2xx or 3xx responses:")
        .trim()
        .parse()
        .unwrap_or(0u64);
    println!(
        "wrk: {requests} requests answered; errors: read {read}, timeout {timeout}, non-2xx {non2xx}; \
         {write} writes to connections refused after the listener closed; access log: {lines} lines, {ok} 200"
    );
    assert_eq!((read, timeout, non2xx), (0, 0, 0), "{text}");
    assert_eq!((lines, ok), (requests, requests), "every request tandem received was answered 200: {text}");

    // h2load: 8 h2c connections with 4 concurrent streams, at most 200000 requests.
    let (text, lines, ok) = run_under_load("h2load", &["-n", "200000", "-c", "8", "-m", "4", "-t", "1"]).await;
    let reqs = line(&text, "requests:").trim_start_matches("requests:");
    let codes = line(&text, "status codes:").trim_start_matches("status codes:");
    let succeeded = number_before(reqs, "succeeded").expect("h2load summary");
    let done = number_before(reqs, "done").expect("h2load summary");
    let timeouts = number_before(reqs, "timeout").unwrap_or(0);
    let s4 = number_before(codes, "4xx").unwrap_or(0);
    let s5 = number_before(codes, "5xx").unwrap_or(0);
    println!(
        "h2load: {succeeded} succeeded of {done} streams opened by the client library; 4xx {s4}, 5xx {s5}, \
         timeouts {timeouts}; access log: {lines} lines, {ok} 200"
    );
    assert_eq!((s4, s5, timeouts), (0, 0, 0), "{text}");
    // Streams h2load counts as done without a status were refused by its own library after GOAWAY
    // and never reached tandem: tandem's log has exactly the succeeded ones, all 200.
    assert_eq!((lines, ok), (succeeded, succeeded), "{text}");
}
