//! The access log, end to end: the keys of a line, when it is written, refusals and clients that
//! go away, hostile request bytes, the text format, every destination, rotation, reopen (SIGUSR1,
//! `POST /reopen-logs`, Debian's logrotate) and dropping when the writer cannot keep up.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;
use support::*;
use tandem::config::{AccessLogFormat, ByteSize, Human};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// DESIGN.md's key list, written out here so that a change in the code has to show up in a test.
const DESIGN_KEYS: [&str; 19] = [
    "start_time",
    "direction",
    "method",
    "authority",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "bytes_received",
    "bytes_sent",
    "duration_ms",
    "upstream_service_time_ms",
    "upstream_host",
    "upstream_cluster",
    "downstream_remote_address",
    "x_forwarded_for",
    "user_agent",
    "request_id",
    "trace_id",
];

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn by_id(lines: &[serde_json::Value]) -> HashMap<String, serde_json::Value> {
    lines.iter().map(|l| (request_id(l), l.clone())).collect()
}

#[tokio::test]
async fn a_line_has_exactly_the_design_keys_and_their_values() {
    let echo = echo().await;
    let dir = TempDir::new("keys");
    let path = dir.join("access.log");
    let p = proxy(config_with_log(echo.addr, &path)).await;
    let base = format!("http://{}", p.inbound_addr);

    let (s, ..) = request(
        "GET",
        &format!("{base}/hello?x=1"),
        &[("x-request-id", "k-get"), ("traceparent", TRACEPARENT), ("user-agent", "test/1")],
        "",
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, body) =
        request("POST", &format!("{base}/up?echo_body=1"), &[("x-request-id", "k-post")], "hello tandem").await;
    assert_eq!((s.as_u16(), &body[..]), (200, &b"hello tandem"[..]));
    let (s, ..) = request(
        "GET",
        &format!("{base}/missing?status=404"),
        &[("x-request-id", "k-404"), ("x-forwarded-for", "203.0.113.9")],
        "",
    )
    .await;
    assert_eq!(s, 404);
    let req = http::Request::get(format!("{base}/h2"))
        .header("x-request-id", "k-h2")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let (s, ..) = send(&h2(), req).await;
    assert_eq!(s, 200);
    p.telemetry().flush_access_log().await;

    let raw = std::fs::read_to_string(&path).expect("read log");
    assert_eq!(raw.lines().count(), 4, "{raw}");
    for text in raw.lines() {
        // Key order as in DESIGN.md: find each key after the previous one.
        let mut at = 0;
        for k in DESIGN_KEYS {
            let needle = format!("\"{k}\":");
            let i = text[at..].find(&needle).unwrap_or_else(|| panic!("{k} missing or out of order in {text}"));
            at += i + needle.len();
        }
    }
    let lines = json_lines(&path);
    for l in &lines {
        let keys: HashSet<&str> = l.as_object().expect("object").keys().map(String::as_str).collect();
        assert_eq!(keys, DESIGN_KEYS.iter().copied().collect::<HashSet<_>>());
    }
    let lines = by_id(&lines);
    let get = &lines["k-get"];
    let start = get["start_time"].as_str().expect("start_time");
    assert!(start.len() == 24 && start.ends_with('Z') && start.as_bytes()[10] == b'T', "{start}");
    assert_eq!(get["direction"], "inbound");
    assert_eq!(get["method"], "GET");
    assert_eq!(get["authority"], p.inbound_addr.to_string());
    assert_eq!(get["path"], "/hello?x=1");
    assert_eq!(get["protocol"], "HTTP/1.1");
    assert_eq!(get["response_code"], 200);
    assert_eq!(get["response_flags"], "-");
    assert_eq!(get["bytes_received"], 0);
    assert!(get["bytes_sent"].as_u64().expect("bytes_sent") > 100);
    assert!(get["duration_ms"].is_u64() && get["upstream_service_time_ms"].is_u64());
    assert_eq!(get["upstream_host"], echo.addr.to_string());
    assert_eq!(get["upstream_cluster"], "app");
    assert!(get["downstream_remote_address"].as_str().expect("peer").starts_with("127.0.0.1:"));
    assert_eq!(get["x_forwarded_for"], "127.0.0.1");
    assert_eq!(get["user_agent"], "test/1");
    assert_eq!(get["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");

    let post = &lines["k-post"];
    assert_eq!(
        (post["method"].as_str(), post["bytes_received"].as_u64(), post["bytes_sent"].as_u64()),
        (Some("POST"), Some(12), Some(12))
    );
    assert_eq!(post["trace_id"], serde_json::Value::Null);
    assert_eq!(post["user_agent"], serde_json::Value::Null);

    let missing = &lines["k-404"];
    assert_eq!((missing["response_code"].as_u64(), missing["response_flags"].as_str()), (Some(404), Some("-")));
    assert_eq!(missing["x_forwarded_for"], "203.0.113.9, 127.0.0.1");

    let h2 = &lines["k-h2"];
    assert_eq!(h2["protocol"], "HTTP/2");
    assert_eq!(h2["authority"], p.inbound_addr.to_string());
}

#[tokio::test]
async fn a_generated_request_id_is_logged_and_matches_what_the_app_saw() {
    let echo = echo().await;
    let dir = TempDir::new("genid");
    let path = dir.join("access.log");
    let p = proxy(config_with_log(echo.addr, &path)).await;
    let (_, _, body) = get(&format!("http://{}/id", p.inbound_addr)).await;
    let seen: serde_json::Value = serde_json::from_slice(&body).expect("echo json");
    p.telemetry().flush_access_log().await;
    let lines = json_lines(&path);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["request_id"], seen["headers"]["x-request-id"]);
}

#[tokio::test]
async fn upstream_failures_and_bad_requests_are_logged_with_their_reason_code() {
    let dir = TempDir::new("refused");
    let path = dir.join("access.log");
    let mut c = config_with_log(dead_addr(), &path);
    c.inbound.limits.max_header_bytes = Human::new(ByteSize(2048));
    let p = proxy(c).await;
    let base = format!("http://{}", p.inbound_addr);

    let (s, h, _) = request("GET", &format!("{base}/a"), &[("x-request-id", "r-uf")], "").await;
    assert_eq!((s.as_u16(), h["x-tandem-error"].to_str().ok()), (502, Some("UF")));
    let big = "b".repeat(4000);
    let (s, h, _) = request("GET", &format!("{base}/b"), &[("x-request-id", "r-431"), ("x-big", &big)], "").await;
    assert_eq!((s.as_u16(), h["x-tandem-error"].to_str().ok()), (431, Some("DPE")));
    p.telemetry().flush_access_log().await;

    let lines = by_id(&json_lines(&path));
    assert_eq!(lines.len(), 2);
    let uf = &lines["r-uf"];
    assert_eq!((uf["response_code"].as_u64(), uf["response_flags"].as_str()), (Some(502), Some("UF")));
    assert_eq!(uf["upstream_service_time_ms"], serde_json::Value::Null);
    assert!(uf["bytes_sent"].as_u64().expect("bytes") > 0, "the error body is counted");
    let dpe = &lines["r-431"];
    assert_eq!((dpe["response_code"].as_u64(), dpe["response_flags"].as_str()), (Some(431), Some("DPE")));
}

#[tokio::test]
async fn overload_and_upstream_timeouts_are_logged_with_their_reason_code() {
    let echo = echo().await;
    let dir = TempDir::new("uo-ut");
    let path = dir.join("access.log");
    let mut c = config_with_log(echo.addr, &path);
    c.inbound.limits.max_in_flight = 1;
    c.inbound.timeouts.response = Human::new(Duration::from_millis(500));
    let p = proxy(c).await;
    let base = format!("http://{}", p.inbound_addr);
    let admin = p.admin_addr;

    let slow = tokio::spawn({
        let url = format!("{base}/slow?delay=5s");
        async move { request("GET", &url, &[("x-request-id", "r-ut")], "").await }
    });
    // Wait until the slow request holds the only slot.
    loop {
        let m = scrape(admin).await;
        if metric_sum(&m, "tandem_http_requests_in_flight", &[("direction", "inbound")]) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (s, h, _) = request("GET", &format!("{base}/b"), &[("x-request-id", "r-uo")], "").await;
    assert_eq!((s.as_u16(), h["x-tandem-error"].to_str().ok()), (503, Some("UO")));
    let (s, h, _) = slow.await.expect("task");
    assert_eq!((s.as_u16(), h["x-tandem-error"].to_str().ok()), (504, Some("UT")));
    p.telemetry().flush_access_log().await;

    let lines = by_id(&json_lines(&path));
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines["r-uo"]["response_code"].as_u64(), lines["r-uo"]["response_flags"].as_str()),
        (Some(503), Some("UO"))
    );
    assert_eq!(
        (lines["r-ut"]["response_code"].as_u64(), lines["r-ut"]["response_flags"].as_str()),
        (Some(504), Some("UT"))
    );
    assert!(lines["r-ut"]["duration_ms"].as_u64().expect("duration") >= 500);
}

/// Reads from `s` until the end of the response head; returns the bytes read so far.
async fn read_head(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "connection closed before the response head");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[tokio::test]
async fn a_client_that_goes_away_is_logged_with_dc() {
    let echo = echo().await;
    let dir = TempDir::new("dc");
    let path = dir.join("access.log");
    let p = proxy(config_with_log(echo.addr, &path)).await;

    // Before the response head: the client closes while the app is still thinking.
    let mut early = tokio::net::TcpStream::connect(p.inbound_addr).await.expect("connect");
    early.write_all(b"GET /slow?delay=10s HTTP/1.1\r\nHost: t\r\nx-request-id: dc-early\r\n\r\n").await.expect("write");
    loop {
        let m = scrape(p.admin_addr).await;
        if metric_sum(&m, "tandem_http_requests_in_flight", &[("direction", "inbound")]) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(early);

    // In the middle of the body.
    let mut mid = tokio::net::TcpStream::connect(p.inbound_addr).await.expect("connect");
    mid.write_all(b"GET /big?size=256MiB HTTP/1.1\r\nHost: t\r\nx-request-id: dc-mid\r\n\r\n").await.expect("write");
    read_head(&mut mid).await;
    drop(mid);

    let t = p.telemetry();
    let lines = poll(Duration::from_secs(20), "two DC lines", || {
        let l = by_id(&json_lines(&path));
        (l.len() == 2).then_some(l)
    })
    .await;
    t.flush_access_log().await;
    let early = &lines["dc-early"];
    assert_eq!((early["response_code"].as_u64(), early["response_flags"].as_str()), (Some(0), Some("DC")));
    assert_eq!(early["bytes_sent"], 0);
    let mid = &lines["dc-mid"];
    assert_eq!((mid["response_code"].as_u64(), mid["response_flags"].as_str()), (Some(200), Some("DC")));
    assert!(mid["bytes_sent"].as_u64().expect("bytes") < 256 << 20);
}

#[tokio::test]
async fn the_line_is_written_when_the_response_body_ends() {
    const SIZE: u64 = 64 << 20;
    let echo = echo().await;
    let dir = TempDir::new("body-end");
    let path = dir.join("access.log");
    let p = proxy(config_with_log(echo.addr, &path)).await;
    let t = p.telemetry();

    let mut s = tokio::net::TcpStream::connect(p.inbound_addr).await.expect("connect");
    s.write_all(format!("GET /big?size={SIZE} HTTP/1.1\r\nHost: t\r\nx-request-id: body-end\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let head = read_head(&mut s).await;
    let head_len = head.windows(4).position(|w| w == b"\r\n\r\n").expect("head end") + 4;
    // The head is here but 64 MiB cannot all be in flight in socket buffers: no line yet.
    t.flush_access_log().await;
    assert!(json_lines(&path).is_empty(), "logged before the body ended");

    let mut body = (head.len() - head_len) as u64;
    let mut buf = vec![0u8; 1 << 16];
    while body < SIZE {
        let n = s.read(&mut buf).await.expect("read body");
        assert!(n > 0, "body cut at {body}");
        body += n as u64;
    }
    let lines = poll(Duration::from_secs(10), "the line after the body", || {
        let l = json_lines(&path);
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["bytes_sent"].as_u64(), Some(SIZE));
    assert_eq!(lines[0]["response_flags"], "-");
}

/// What the proxy answers to raw bytes, and whether a line is expected.
struct Raw {
    id: &'static str,
    bytes: Vec<u8>,
    /// True for requests hyper parses (answered 200, one line with this id expected); false for
    /// those its codec refuses with 400 before tandem's service sees them.
    logged: bool,
}

#[tokio::test]
async fn hostile_request_bytes_never_split_a_line_and_the_json_stays_valid() {
    let echo = echo().await;
    let dir = TempDir::new("hostile");
    let path = dir.join("access.log");
    let p = proxy(config_with_log(echo.addr, &path)).await;

    let req = |id: &str, line: &[u8], headers: &[u8]| {
        let mut v = Vec::new();
        v.extend_from_slice(line);
        v.extend_from_slice(b"\r\nHost: t\r\nConnection: close\r\nx-request-id: ");
        v.extend_from_slice(id.as_bytes());
        v.extend_from_slice(b"\r\n");
        v.extend_from_slice(headers);
        v.extend_from_slice(b"\r\n");
        v
    };
    let euro_8k = "€".repeat(2800);
    let cases = vec![
        Raw {
            id: "h-ua-bytes",
            bytes: req("h-ua-bytes", b"GET /a HTTP/1.1", b"User-Agent: a\tb\xff\xfe\"q\" \\ }{\r\n"),
            logged: true,
        },
        Raw {
            id: "h-ua-8k",
            bytes: req("h-ua-8k", b"GET /b HTTP/1.1", format!("User-Agent: {}\r\n", "A".repeat(8192)).as_bytes()),
            logged: true,
        },
        Raw {
            id: "h-ua-8k-utf8",
            bytes: req("h-ua-8k-utf8", b"GET /c HTTP/1.1", format!("User-Agent: {euro_8k}\r\n").as_bytes()),
            logged: true,
        },
        Raw {
            id: "h-ua-8k-invalid",
            bytes: req(
                "h-ua-8k-invalid",
                b"GET /c2 HTTP/1.1",
                &[b"User-Agent: ".as_slice(), &[0xc3u8; 8192], b"\r\n"].concat(),
            ),
            logged: true,
        },
        Raw { id: "h-path", bytes: req("h-path", b"GET /e\"\\{}|%0d%0a%00 HTTP/1.1", b""), logged: true },
        Raw {
            id: "h-host",
            bytes: [
                b"GET /f HTTP/1.1\r\nHost: x\xff\"y\r\nConnection: close\r\nx-request-id: h-host\r\n\r\n".as_slice()
            ]
            .concat(),
            logged: true,
        },
        Raw { id: "h-xff", bytes: req("h-xff", b"GET /g HTTP/1.1", b"X-Forwarded-For: \xff\"\\\r\n"), logged: true },
        Raw { id: "h-method", bytes: req("h-method", b"FOO /h HTTP/1.1", b""), logged: true },
        Raw { id: "h-http10", bytes: req("h-http10", b"GET /i HTTP/1.0", b""), logged: true },
        // Refused with 400 by the parser (no head to take an id from): logged without one.
        Raw { id: "h-ctl", bytes: req("h-ctl", b"GET /j HTTP/1.1", b"User-Agent: a\x01b\r\n"), logged: false },
        Raw { id: "h-lone-cr", bytes: req("h-lone-cr", b"GET /k HTTP/1.1", b"User-Agent: a\rb\r\n"), logged: false },
        Raw { id: "h-lone-lf", bytes: req("h-lone-lf", b"GET /l HTTP/1.1", b"User-Agent: a\nb\r\n"), logged: false },
        Raw { id: "h-path-bytes", bytes: req("h-path-bytes", b"GET /m\xff\x01 HTTP/1.1", b""), logged: false },
    ];
    for c in &cases {
        let mut s = tokio::net::TcpStream::connect(p.inbound_addr).await.expect("connect");
        s.write_all(&c.bytes).await.expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("answer").expect("read");
        let status = String::from_utf8_lossy(&out[..out.len().min(12)]).into_owned();
        // An invalid Host is refused (RFC 9112 section 3.2), and logged with the client's strings.
        let want = if c.logged && c.id != "h-host" { "200" } else { "400" };
        assert!(status.ends_with(want), "{}: got {status:?}", c.id);
    }
    p.telemetry().flush_access_log().await;

    let raw = std::fs::read(&path).expect("read log");
    let lines = json_lines(&path);
    let logged: Vec<&str> = cases.iter().filter(|c| c.logged).map(|c| c.id).collect();
    // Heads the parser refused carry no request id; each is logged once (400 DPE).
    let (codec, lines): (Vec<_>, Vec<_>) = lines.into_iter().partition(|l| l["request_id"].is_null());
    let refused = cases.len() - logged.len();
    assert_eq!(codec.len(), refused, "one line per refused head");
    for l in &codec {
        assert_eq!(
            (l["method"].as_str(), l["response_code"].as_u64(), l["response_flags"].as_str()),
            (Some("GET"), Some(400), Some("DPE"))
        );
    }
    assert_eq!(
        lines.len(),
        logged.len(),
        "one line per parsed request, nothing split:\n{}",
        String::from_utf8_lossy(&raw)
    );
    assert!(raw.split(|b| *b == b'\n').all(|l| l.len() < 16 * 1024), "a line is longer than 16 KiB");
    let lines = by_id(&lines);
    for id in &logged {
        assert!(lines.contains_key(*id), "{id} not logged");
    }
    let ua = |id: &str| lines[id]["user_agent"].as_str().expect("user_agent").to_owned();
    assert_eq!(ua("h-ua-bytes"), "a\tb\u{fffd}\u{fffd}\"q\" \\ }{");
    for id in ["h-ua-8k", "h-ua-8k-utf8", "h-ua-8k-invalid"] {
        let v = ua(id);
        assert!(
            v.ends_with("...") && v.len() <= tandem::telemetry::access_log::MAX_FIELD_BYTES + 3,
            "{id}: {} bytes",
            v.len()
        );
    }
    assert_eq!(lines["h-path"]["path"], "/e\"\\{}|%0d%0a%00");
    assert_eq!(lines["h-host"]["authority"], "x\u{fffd}\"y");
    assert_eq!(lines["h-method"]["method"], "FOO");
    assert_eq!(lines["h-http10"]["protocol"], "HTTP/1.0");
}

#[tokio::test]
async fn the_text_format_is_one_escaped_line_per_request() {
    let echo = echo().await;
    let dir = TempDir::new("text");
    let path = dir.join("access.log");
    let mut c = config_with_log(echo.addr, &path);
    c.access_log.format = AccessLogFormat::Text;
    let p = proxy(c).await;
    let base = format!("http://{}", p.inbound_addr);
    request("GET", &format!("{base}/t?x=1"), &[("x-request-id", "t-1"), ("user-agent", "ua \"quoted\"")], "").await;
    let mut s = tokio::net::TcpStream::connect(p.inbound_addr).await.expect("connect");
    s.write_all(
        b"GET /u HTTP/1.1\r\nHost: t\r\nConnection: close\r\nUser-Agent: a\xff\tb\r\nx-request-id: t-2\r\n\r\n",
    )
    .await
    .expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    p.telemetry().flush_access_log().await;

    let text = std::fs::read_to_string(&path).expect("the text format is UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let first = lines[0];
    assert!(first.starts_with('[') && first.as_bytes()[25] == b']', "{first}");
    let rest = &first[27..];
    assert!(rest.starts_with("\"GET /t?x=1 HTTP/1.1\" 200 - 0 "), "{rest}");
    assert!(rest.contains(" \"127.0.0.1\" \"ua \\\"quoted\\\"\" \"t-1\" "), "{rest}");
    assert!(rest.ends_with(&format!(" \"{}\" inbound app", echo.addr)), "{rest}");
    assert!(lines[1].contains(" \"a\u{fffd}\\x09b\" \"t-2\" "), "{}", lines[1]);
}

#[tokio::test]
async fn a_file_destination_that_cannot_be_opened_stops_the_start() {
    let mut c = config(dead_addr());
    c.access_log.destination = "/nonexistent-tandem-dir/sub/access.log".into();
    match tandem::app::start(c, None).await {
        Ok(_) => panic!("started with an unopenable access log"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("access_log.destination:"), "{msg}");
            assert!(msg.contains("/nonexistent-tandem-dir/sub/access.log"), "{msg}");
        }
    }
}

#[tokio::test]
async fn stdout_is_the_default_destination_and_off_writes_nothing() {
    let echo = echo().await;
    for (dest, want) in [(None, 3usize), (Some("stdout"), 3), (Some("off"), 0)] {
        let mut args = vec!["--app".to_owned(), echo.addr.to_string()];
        if let Some(d) = dest {
            args.extend(["--access-log".to_owned(), d.to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = Tandem::command(&args, &[]);
        cmd.env_remove("TANDEM_ACCESS_LOG_DESTINATION").stdout(std::process::Stdio::piped());
        let mut t = Tandem::spawn(cmd);
        for i in 0..3 {
            let (s, ..) =
                request("GET", &format!("http://{}/o{i}", t.inbound), &[("x-request-id", &format!("o-{i}"))], "").await;
            assert_eq!(s, 200);
        }
        let (s, ..) = request("POST", &format!("http://{}/shutdown", t.admin), &[], "").await;
        assert_eq!(s, 200);
        assert!(t.wait_exit(Duration::from_secs(20)).success());
        let mut out = String::new();
        std::io::Read::read_to_string(&mut t.child.stdout.take().expect("stdout"), &mut out).expect("read stdout");
        let lines: Vec<serde_json::Value> =
            out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{dest:?}: {e}: {l}"))).collect();
        assert_eq!(lines.len(), want, "{dest:?}: {out}");
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(request_id(l), format!("o-{i}"));
        }
    }
}

#[tokio::test]
async fn rotation_renames_and_keeps_max_files() {
    let echo = echo().await;
    let dir = TempDir::new("rotate");
    let path = dir.join("access.log");
    let mut c = config_with_log(echo.addr, &path);
    c.access_log.max_size = Human::new(ByteSize(4096));
    c.access_log.max_files = 3;
    let p = proxy(c).await;
    let base = format!("http://{}", p.inbound_addr);
    let ids: Vec<String> = (0..80).map(|i| format!("rot-{i:03}")).collect();
    for id in &ids {
        let (s, ..) = request("GET", &format!("{base}/r"), &[("x-request-id", id)], "").await;
        assert_eq!(s, 200);
    }
    p.telemetry().flush_access_log().await;

    let numbered = |n: usize| dir.join(&format!("access.log.{n}"));
    for n in 1..=3 {
        let len = std::fs::metadata(numbered(n)).expect("rotated file").len();
        assert!(len > 0 && len <= 4096, "access.log.{n} is {len} bytes");
    }
    assert!(!numbered(4).exists(), "more than max_files kept");
    let lines = json_lines_rotated(&path, 3);
    let got: Vec<String> = lines.iter().map(request_id).collect();
    // Oldest first across .3, .2, .1, access.log: a contiguous run of the newest requests.
    assert!(got.len() >= 24, "{} lines", got.len());
    assert_eq!(got[..], ids[ids.len() - got.len()..], "lines lost, repeated or out of order");
}

/// A reader that follows `access.log` and its rotated files the way a log shipper does: by inode,
/// reading each file to its end, consuming only whole lines.
struct Follower {
    base: std::path::PathBuf,
    max: usize,
    open: HashMap<u64, (std::fs::File, Vec<u8>)>,
    lines: Vec<String>,
}

impl Follower {
    fn poll(&mut self) {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let mut paths = vec![self.base.clone()];
        paths.extend((1..=self.max).map(|n| {
            let mut p = self.base.as_os_str().to_owned();
            p.push(format!(".{n}"));
            std::path::PathBuf::from(p)
        }));
        for p in paths {
            if let Ok(f) = std::fs::File::open(&p) {
                let ino = f.metadata().expect("metadata").ino();
                self.open.entry(ino).or_insert((f, Vec::new()));
            }
        }
        let mut buf = vec![0u8; 1 << 16];
        for (f, partial) in self.open.values_mut() {
            loop {
                let n = f.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                partial.extend_from_slice(&buf[..n]);
            }
            while let Some(i) = partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = partial.drain(..=i).collect();
                self.lines.push(String::from_utf8(line).expect("utf8 line"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_following_the_rotations_finds_every_request_exactly_once() {
    const CLIENTS: usize = 4;
    const EACH: usize = 400;
    const MAX_FILES: usize = 200;
    let echo = echo().await;
    let dir = TempDir::new("follow");
    let path = dir.join("access.log");
    let mut c = config_with_log(echo.addr, &path);
    c.access_log.max_size = Human::new(ByteSize(16 * 1024));
    c.access_log.max_files = MAX_FILES;
    let p = proxy(c).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = std::thread::spawn({
        let stop = stop.clone();
        let mut f = Follower { base: path.clone(), max: MAX_FILES, open: HashMap::new(), lines: Vec::new() };
        move || {
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                f.poll();
                std::thread::sleep(Duration::from_millis(2));
            }
            f.poll();
            f
        }
    });
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let base = format!("http://{}", p.inbound_addr);
        tasks.push(tokio::spawn(async move {
            let c = h1();
            for i in 0..EACH {
                let req = http::Request::get(format!("{base}/f"))
                    .header("x-request-id", format!("f-{client}-{i}"))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .expect("request");
                let (s, ..) = send(&c, req).await;
                assert_eq!(s, 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    p.telemetry().flush_access_log().await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let f = reader.join().expect("reader");

    assert!(f.open.len() >= 20, "only {} files: the reader did not see rotations", f.open.len());
    assert!(!dir.join(&format!("access.log.{MAX_FILES}")).exists(), "a file was deleted: the test would be void");
    for (_, partial) in f.open.values() {
        assert!(partial.is_empty(), "a partial line was left: {}", String::from_utf8_lossy(partial));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for l in &f.lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        *seen.entry(request_id(&v)).or_default() += 1;
    }
    for client in 0..CLIENTS {
        for i in 0..EACH {
            let id = format!("f-{client}-{i}");
            assert_eq!(seen.get(&id).copied(), Some(1), "{id}");
        }
    }
    assert_eq!(f.lines.len(), CLIENTS * EACH);
}

fn lines_in(path: &std::path::Path) -> Vec<String> {
    json_lines(path).iter().map(request_id).collect()
}

#[tokio::test]
async fn sigusr1_and_post_reopen_logs_reopen_the_file() {
    let echo = echo().await;
    let dir = TempDir::new("reopen");
    let path = dir.join("access.log");
    let t = Tandem::run(&["--app", &echo.addr.to_string(), "--access-log", path.to_str().expect("path")], &[]);
    let send_id = |id: &'static str| {
        let url = format!("http://{}/x", t.inbound);
        async move {
            let (s, ..) = request("GET", &url, &[("x-request-id", id)], "").await;
            assert_eq!(s, 200);
        }
    };
    let wait_for = |p: std::path::PathBuf, id: &'static str| {
        poll(Duration::from_secs(10), id, move || lines_in(&p).contains(&id.to_owned()).then_some(()))
    };

    send_id("a1").await;
    wait_for(path.clone(), "a1").await;
    let moved = dir.join("moved-1");
    std::fs::rename(&path, &moved).expect("rename");
    send_id("a2").await;
    wait_for(moved.clone(), "a2").await;
    assert!(!path.exists(), "reopened without being asked");

    t.signal(libc::SIGUSR1);
    poll(Duration::from_secs(10), "the file to reappear after SIGUSR1", || path.exists().then_some(())).await;
    send_id("a3").await;
    wait_for(path.clone(), "a3").await;
    assert_eq!(lines_in(&moved), ["a1", "a2"]);

    let moved2 = dir.join("moved-2");
    std::fs::rename(&path, &moved2).expect("rename");
    let (s, _, body) = request("POST", &format!("http://{}/reopen-logs", t.admin), &[], "").await;
    assert_eq!((s.as_u16(), &body[..]), (200, &b"access log reopened\n"[..]));
    assert!(path.exists(), "POST /reopen-logs answered before the reopen");
    send_id("a4").await;
    wait_for(path.clone(), "a4").await;
    assert_eq!(lines_in(&moved2), ["a3"]);
    assert_eq!(lines_in(&path), ["a4"]);
}

fn have(cmd: &str) -> bool {
    std::process::Command::new(cmd)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_logrotate_in_rename_mode_with_a_postrotate_reopen_loses_nothing() {
    for tool in ["logrotate", "curl"] {
        if !have(tool) {
            eprintln!(
                "SKIPPED debian_logrotate...: `{tool}` is not installed (CI installs it: apt-get install {tool})"
            );
            return;
        }
    }
    let echo = echo().await;
    let dir = TempDir::new("logrotate");
    let path = dir.join("access.log");
    let t = Tandem::run(&["--app", &echo.addr.to_string(), "--access-log", path.to_str().expect("path")], &[]);
    let conf = dir.join("logrotate.conf");
    std::fs::write(
        &conf,
        format!(
            "{log} {{\n    rotate 10\n    size 1\n    missingok\n    notifempty\n    nocompress\n    create 0640\n    postrotate\n        curl -sf -X POST http://{admin}/reopen-logs\n    endscript\n}}\n",
            log = path.display(),
            admin = t.admin
        ),
    )
    .expect("write conf");
    let state = dir.join("logrotate.state");

    // Traffic keeps flowing while logrotate renames the file and tandem reopens it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = tokio::spawn({
        let url = format!("http://{}/lr", t.inbound);
        let stop = stop.clone();
        async move {
            let c = h1();
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let req = http::Request::get(&url)
                    .header("x-request-id", format!("lr-{n}"))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .expect("request");
                let (s, ..) = send(&c, req).await;
                assert_eq!(s, 200);
                n += 1;
            }
            n
        }
    });
    for round in 1..=3 {
        poll(Duration::from_secs(10), "lines to rotate", || {
            (std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) > 0).then_some(())
        })
        .await;
        let out = tokio::process::Command::new("logrotate")
            .arg("-v")
            .arg("-s")
            .arg(&state)
            .arg(&conf)
            .output()
            .await
            .expect("run logrotate");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "logrotate round {round} failed: {log}");
        assert!(dir.join(&format!("access.log.{round}")).exists(), "round {round} did not rotate: {log}");
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let sent = sender.await.expect("sender");
    assert!(sent > 0);

    let all = poll(Duration::from_secs(10), "every line", || {
        let ids: Vec<String> = json_lines_rotated(&path, 10).iter().map(request_id).collect();
        (ids.len() >= sent).then_some(ids)
    })
    .await;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for id in &all {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    for n in 0..sent {
        assert_eq!(seen.get(format!("lr-{n}").as_str()).copied(), Some(1), "lr-{n}");
    }
    assert_eq!(all.len(), sent);
    // Each rotated file holds lines (tandem followed each rename), none is a copy.
    for n in 1..=3 {
        assert!(!json_lines(&dir.join(&format!("access.log.{n}"))).is_empty(), "access.log.{n} is empty");
    }
}

#[tokio::test]
async fn a_stuck_writer_drops_and_counts_lines_and_never_blocks_requests() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    const N: usize = 1500;
    let echo = echo().await;
    let dir = TempDir::new("stuck");
    let fifo = dir.join("access.fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().expect("path")).expect("cstring");
    // SAFETY: mkfifo(3) on a path we own.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    // A reader that reads nothing yet: the writer fills the pipe and blocks.
    let mut reader =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).expect("open fifo");
    let t = Tandem::run(
        &["--app", &echo.addr.to_string(), "--access-log", fifo.to_str().expect("path")],
        &[("TANDEM_ACCESS_LOG_QUEUE", "4")],
    );
    let started = std::time::Instant::now();
    let c = h1();
    for i in 0..N {
        let req = http::Request::get(format!("http://{}/s", t.inbound))
            .header("x-request-id", format!("s-{i}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let (s, ..) = send(&c, req).await;
        assert_eq!(s, 200, "request {i} while the writer is stuck");
    }
    let elapsed = started.elapsed();
    let m = scrape(t.admin).await;
    let dropped = metric_sum(&m, "tandem_access_log_dropped_total", &[]);
    assert!(dropped > 0.0, "nothing dropped: the test did not block the writer");
    assert_eq!(metric_sum(&m, "tandem_http_requests_total", &[]), N as f64);

    // Said in tandem's own log, rate-limited.
    let warnings = t
        .json_stderr()
        .iter()
        .filter(|l| l["message"].as_str().unwrap_or_default().contains("lines are being dropped"))
        .count();
    assert!(warnings >= 1 && warnings as u64 <= 1 + elapsed.as_secs() / 5, "{warnings} warnings in {elapsed:?}");

    // Unblock the writer: what was queued arrives whole; written + dropped == requests.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let lines = poll(Duration::from_secs(20), "the queued lines", || {
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read fifo: {e}"),
            }
        }
        let n = got.iter().filter(|b| **b == b'\n').count();
        (n as f64 + dropped >= N as f64).then_some(n)
    })
    .await;
    assert_eq!(lines as f64 + dropped, N as f64);
    assert!(got.ends_with(b"\n"));
    for l in got.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        serde_json::from_slice::<serde_json::Value>(l).expect("whole JSON line");
    }
    let m = scrape(t.admin).await;
    assert_eq!(metric_sum(&m, "tandem_access_log_lines_total", &[]), lines as f64);
}

fn warnings_containing(t: &Tandem, text: &str) -> usize {
    t.json_stderr()
        .iter()
        .filter(|l| l["level"] == "WARN" && l["message"].as_str().unwrap_or_default().contains(text))
        .count()
}

#[tokio::test]
async fn lines_that_cannot_be_written_are_counted_as_dropped_and_reported_once() {
    const N: usize = 25;
    let echo = echo().await;
    // /dev/full opens fine and fails every write with ENOSPC.
    let t = Tandem::run(&["--app", &echo.addr.to_string(), "--access-log", "/dev/full"], &[]);
    for i in 0..N {
        let (s, ..) =
            request("GET", &format!("http://{}/full", t.inbound), &[("x-request-id", &format!("full-{i}"))], "").await;
        assert_eq!(s, 200, "the request path does not notice a failing disk");
    }
    let admin = t.admin;
    loop {
        let m = scrape(admin).await;
        if metric_sum(&m, "tandem_access_log_dropped_total", &[]) == N as f64 {
            assert_eq!(metric_sum(&m, "tandem_access_log_lines_total", &[]), 0.0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reported = poll(Duration::from_secs(5), "the write warning", || {
        let n = warnings_containing(&t, "access log write failed; lines lost");
        (n > 0).then_some(n)
    })
    .await;
    assert_eq!(reported, 1, "{:#?}", t.stderr_lines());
}

#[tokio::test]
async fn a_failed_rotation_keeps_writing_to_the_current_file() {
    let echo = echo().await;
    let dir = TempDir::new("rotate-fails");
    let path = dir.join("access.log");
    // The oldest rotated name is a non-empty directory: it cannot be removed to make room.
    std::fs::create_dir_all(dir.join("access.log.1/occupied")).expect("mkdir");
    let t = Tandem::run(
        &["--app", &echo.addr.to_string(), "--access-log", path.to_str().expect("path")],
        &[("TANDEM_ACCESS_LOG_MAX_SIZE", "4KiB"), ("TANDEM_ACCESS_LOG_MAX_FILES", "1")],
    );
    for i in 0..30 {
        let (s, ..) =
            request("GET", &format!("http://{}/rf", t.inbound), &[("x-request-id", &format!("rf-{i}"))], "").await;
        assert_eq!(s, 200);
    }
    let mut ids = poll(Duration::from_secs(10), "30 lines", || {
        let ids = lines_in(&path);
        (ids.len() == 30).then_some(ids)
    })
    .await;
    // A line is written when its exchange ends, after the client has its last byte: two requests
    // on separate connections, one after the other, may finish on two workers in either order.
    // What counts here is that every line is in the file exactly once.
    ids.sort_by_key(|id| id.trim_start_matches("rf-").parse::<u32>().unwrap_or(u32::MAX));
    assert_eq!(ids, (0..30).map(|i| format!("rf-{i}")).collect::<Vec<_>>());
    assert!(std::fs::metadata(&path).expect("log").len() > 4096, "it did rotate after all");
    assert!(dir.join("access.log.1/occupied").is_dir());
    let n = poll(Duration::from_secs(5), "the rotation warning", || {
        let n = warnings_containing(&t, "access log rotation failed");
        (n > 0).then_some(n)
    })
    .await;
    assert_eq!(n, 1, "rotation failures are rate-limited: {:#?}", t.stderr_lines());
}

#[tokio::test]
async fn a_failed_reopen_answers_500_and_keeps_the_old_file() {
    let echo = echo().await;
    let dir = TempDir::new("reopen-fails");
    let path = dir.join("access.log");
    let t = Tandem::run(&["--app", &echo.addr.to_string(), "--access-log", path.to_str().expect("path")], &[]);
    let reopen = || {
        let url = format!("http://{}/reopen-logs", t.admin);
        async move {
            let (s, _, b) = request("POST", &url, &[], "").await;
            (s.as_u16(), String::from_utf8_lossy(&b).into_owned())
        }
    };
    let moved = dir.join("moved");
    std::fs::rename(&path, &moved).expect("rename");
    std::fs::create_dir(&path).expect("a directory where the log should be");
    let (s, b) = reopen().await;
    assert_eq!(s, 500, "{b}");
    assert!(b.starts_with("access log reopen failed; still writing to the file opened before:"), "{b}");
    let (s, ..) = request("GET", &format!("http://{}/x", t.inbound), &[("x-request-id", "kept")], "").await;
    assert_eq!(s, 200);
    poll(Duration::from_secs(10), "the line in the old file", || {
        lines_in(&moved).contains(&"kept".to_owned()).then_some(())
    })
    .await;

    std::fs::remove_dir(&path).expect("rmdir");
    assert_eq!(reopen().await, (200, "access log reopened\n".to_owned()));
    let (s, ..) = request("GET", &format!("http://{}/x", t.inbound), &[("x-request-id", "new")], "").await;
    assert_eq!(s, 200);
    poll(Duration::from_secs(10), "the line in the new file", || (lines_in(&path) == ["new"]).then_some(())).await;
    assert_eq!(lines_in(&moved), ["kept"]);
}

/// Runs hyper's HTTP/1.1 server codec on `input` and returns the error the connection ended with
/// and what it answered.
async fn codec_error(input: Vec<u8>) -> (hyper::Error, String) {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let conn = tokio::spawn(async move {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.max_buf_size(8192);
        b.serve_connection(
            hyper_util::rt::TokioIo::new(server),
            hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
            }),
        )
        .await
    });
    client.write_all(&input).await.expect("write");
    client.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer)).await;
    drop(client);
    let err = conn.await.expect("task").expect_err("the codec refuses this");
    (err, String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn requests_refused_by_the_codec_can_be_logged_and_counted() {
    use tandem::base::reason::Direction;
    let dir = TempDir::new("codec");
    let path = dir.join("access.log");
    let cfg = config_with_log(dead_addr(), &path);
    let metrics = tandem::telemetry::metrics::Metrics::new(prometheus::Registry::new()).expect("metrics");
    let log = tandem::telemetry::access_log::AccessLog::start(
        &cfg.access_log,
        metrics.access_log_written.clone(),
        metrics.access_log_dropped.clone(),
    )
    .expect("access log");
    let t = std::sync::Arc::new(tandem::telemetry::Telemetry::new(metrics, log));
    let peer: std::net::SocketAddr = "192.0.2.10:4711".parse().expect("addr");

    let (bad, answer) = codec_error(b"GET /x HTTP/1.1\r\nHost: t\r\nUser-Agent: a\x01b\r\n\r\n".to_vec()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(tandem::telemetry::codec_refusal(&bad), Some(400));
    // As the accept loop holds it: boxed, Send + Sync.
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(bad);
    assert!(t.connection_error(Direction::Inbound, peer, &*boxed));

    let big = format!("GET /y HTTP/1.1\r\nHost: t\r\nx-big: {}\r\n\r\n", "b".repeat(10_000));
    let (large, answer) = codec_error(big.into_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(t.connection_error(Direction::Inbound, peer, &large));

    // Not a refusal: the client left in the middle of its head. Nothing is reported.
    let (cut, answer) = codec_error(b"GET /z HTTP/1.1\r\nHost: t\r\n".to_vec()).await;
    assert!(answer.is_empty(), "{answer}");
    assert_eq!(tandem::telemetry::codec_refusal(&cut), None, "{cut}");
    assert!(!t.connection_error(Direction::Inbound, peer, &cut));
    let io = std::io::Error::other("reset");
    assert!(!t.connection_error(Direction::Inbound, peer, &io));

    t.flush_access_log().await;
    let lines = json_lines(&path);
    assert_eq!(lines.len(), 2);
    for (l, code) in lines.iter().zip([400, 431]) {
        assert_eq!(l["method"], "-");
        assert_eq!((l["response_code"].as_u64(), l["response_flags"].as_str()), (Some(code), Some("DPE")));
        assert_eq!(l["downstream_remote_address"], "192.0.2.10:4711");
        assert_eq!(l["path"], serde_json::Value::Null);
    }
    let samples = parse_metrics(&String::from_utf8(t.metrics.render()).expect("utf8"));
    assert_eq!(
        metric_sum(&samples, "tandem_http_requests_total", &[("response_flags", "DPE"), ("method", "other")]),
        2.0
    );
    assert_eq!(metric_sum(&samples, "tandem_http_requests_in_flight", &[]), 0.0);
}

#[tokio::test]
async fn the_queue_bound_costs_no_memory_until_lines_wait_in_it() {
    // 4 million places: made up front (as a fixed array of slots) that would be over 100 MiB
    // resident before the first request.
    let echo = echo().await;
    let dir = TempDir::new("queue-mem");
    let path = dir.join("access.log");
    let t = Tandem::run(
        &["--app", &echo.addr.to_string(), "--access-log", path.to_str().expect("path")],
        &[("TANDEM_ACCESS_LOG_QUEUE", "4000000")],
    );
    let c = h1();
    for i in 0..200 {
        let req = http::Request::get(format!("http://{}/q", t.inbound))
            .header("x-request-id", format!("q-{i}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        assert_eq!(send(&c, req).await.0, 200);
    }
    let lines = poll(Duration::from_secs(10), "200 lines", || {
        let n = json_lines(&path).len();
        (n >= 200).then_some(n)
    })
    .await;
    assert_eq!(lines, 200);
    let anon = t.rss_kib().1;
    assert!(anon < 32 * 1024, "RssAnon {anon} kB with an empty queue bounded at 4,000,000 lines");
}
