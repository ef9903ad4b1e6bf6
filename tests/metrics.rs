//! Prometheus metrics on the admin port: every metric in DESIGN.md's table with its type and
//! labels, exact counter and histogram deltas for N requests of several kinds, buckets, a fixed
//! label set, outbound series, one registry passed in, connection gauges, and promtool's lint.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use support::*;
use tandem::config::{ByteSize, Human};

/// DESIGN.md's metric table (plus the process collector's standard names), written out here.
const DESIGN_METRICS: [(&str, &str, &[&str]); 15] = [
    ("tandem_http_requests_total", "counter", &["direction", "method", "response_flags", "status_code", "upstream"]),
    ("tandem_http_request_duration_seconds", "histogram", &["direction", "upstream"]),
    ("tandem_http_requests_in_flight", "gauge", &["direction"]),
    ("tandem_http_request_bytes_total", "counter", &["direction"]),
    ("tandem_http_response_bytes_total", "counter", &["direction"]),
    ("tandem_tcp_connections_opened_total", "counter", &["direction"]),
    ("tandem_tcp_connections_closed_total", "counter", &["direction"]),
    ("tandem_tcp_connections_active", "gauge", &["direction"]),
    ("tandem_access_log_dropped_total", "counter", &[]),
    ("tandem_ready", "gauge", &[]),
    ("tandem_build_info", "gauge", &["commit", "profile", "rustc", "version"]),
    ("process_cpu_seconds_total", "counter", &[]),
    ("process_open_fds", "gauge", &[]),
    ("process_resident_memory_bytes", "gauge", &[]),
    ("process_start_time_seconds", "gauge", &[]),
];

async fn scrape_text(admin: std::net::SocketAddr) -> String {
    let (s, _, body) = get(&format!("http://{admin}/metrics")).await;
    assert_eq!(s, 200);
    String::from_utf8(body.to_vec()).expect("utf8")
}

#[tokio::test]
async fn every_design_metric_is_exported_with_its_type_and_labels() {
    let echo = echo().await;
    let p = proxy(config(echo.addr)).await;
    let (s, ..) = get(&format!("http://{}/x", p.inbound_addr)).await;
    assert_eq!(s, 200);
    let text = scrape_text(p.admin_addr).await;
    let types: HashMap<&str, &str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_once(' ')).collect();
    let samples = parse_metrics(&text);
    for (name, kind, labels) in DESIGN_METRICS {
        assert_eq!(types.get(name).copied(), Some(kind), "{name}");
        let series: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.name == name || (kind == "histogram" && s.name.strip_prefix(name).is_some_and(|r| r.starts_with('_')))
            })
            .collect();
        assert!(!series.is_empty(), "{name} has no series");
        for s in series {
            let got: BTreeSet<&str> = s.labels.iter().map(|(k, _)| k.as_str()).filter(|k| *k != "le").collect();
            assert_eq!(got, labels.iter().copied().collect::<BTreeSet<_>>(), "labels of {}", s.name);
        }
    }
    assert_eq!(
        metric_sum(&samples, "tandem_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0,
        "build info carries the version"
    );
    assert_eq!(metric_sum(&samples, "tandem_ready", &[]), 1.0);
    // Series that a dashboard needs before the first request exist at zero.
    for d in ["inbound", "outbound"] {
        assert!(samples.iter().any(
            |s| s.name == "tandem_http_requests_in_flight" && s.labels == [("direction".to_owned(), d.to_owned())]
        ));
    }
}

#[tokio::test]
async fn histogram_buckets_resolve_100us_to_60s() {
    let p = proxy(config(dead_addr())).await;
    let (s, ..) = get(&format!("http://{}/x", p.inbound_addr)).await;
    assert_eq!(s, 502);
    let samples = scrape(p.admin_addr).await;
    let mut les: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == "tandem_http_request_duration_seconds_bucket")
        .filter_map(|s| s.labels.iter().find(|(k, _)| k == "le").map(|(_, v)| v.clone()))
        .filter(|v| v != "+Inf")
        .map(|v| v.parse().expect("le"))
        .collect();
    les.sort_by(f64::total_cmp);
    les.dedup();
    assert!(les.first().is_some_and(|f| *f <= 0.0001), "{les:?}");
    assert!(les.last().is_some_and(|l| *l >= 60.0), "{les:?}");
    assert!(les.len() >= 12, "too coarse: {les:?}");
    // Roughly logarithmic: no gap of more than 3x between neighbours.
    for w in les.windows(2) {
        assert!(w[1] / w[0] <= 3.0 + 1e-9, "gap {} → {}", w[0], w[1]);
    }
}

type Key = (&'static str, &'static str, &'static str);

#[tokio::test]
async fn n_requests_of_several_kinds_move_counters_and_histograms_by_exactly_n() {
    let echo = echo().await;
    let mut c = config(echo.addr);
    c.inbound.limits.max_header_bytes = Human::new(ByteSize(2048));
    let good = proxy(c).await;
    let down = proxy(config(dead_addr())).await;
    let before_good = scrape(good.admin_addr).await;
    let before_down = scrape(down.admin_addr).await;

    let base = format!("http://{}", good.inbound_addr);
    let big = "b".repeat(4000);
    let body = "twelve bytes";
    // (method, status, flags) → how many.
    let mut want: HashMap<Key, usize> = HashMap::new();
    for _ in 0..7 {
        let (s, ..) = request("GET", &format!("{base}/ok"), &[], "").await;
        assert_eq!(s, 200);
        *want.entry(("GET", "200", "-")).or_default() += 1;
    }
    for _ in 0..3 {
        let (s, ..) = request("POST", &format!("{base}/post?echo_body=1"), &[], body).await;
        assert_eq!(s, 200);
        *want.entry(("POST", "200", "-")).or_default() += 1;
    }
    for _ in 0..5 {
        let (s, ..) = request("GET", &format!("{base}/missing?status=404"), &[], "").await;
        assert_eq!(s, 404);
        *want.entry(("GET", "404", "-")).or_default() += 1;
    }
    for _ in 0..4 {
        let (s, ..) = request("GET", &format!("{base}/big"), &[("x-big", &big)], "").await;
        assert_eq!(s, 431);
        *want.entry(("GET", "431", "DPE")).or_default() += 1;
    }
    for _ in 0..6 {
        let (s, ..) = request("DELETE", &format!("http://{}/gone", down.inbound_addr), &[], "").await;
        assert_eq!(s, 502);
    }
    let after_good = scrape(good.admin_addr).await;
    let after_down = scrape(down.admin_addr).await;

    let delta = |before: &[Sample], after: &[Sample], name: &str, labels: &[(&str, &str)]| {
        metric_sum(after, name, labels) - metric_sum(before, name, labels)
    };
    let inbound_app = [("direction", "inbound"), ("upstream", "app")];
    let mut n = 0;
    for ((method, status, flags), count) in &want {
        let labels =
            [inbound_app[0], inbound_app[1], ("method", method), ("status_code", status), ("response_flags", flags)];
        assert_eq!(
            delta(&before_good, &after_good, "tandem_http_requests_total", &labels),
            *count as f64,
            "{method} {status} {flags}"
        );
        n += count;
    }
    assert_eq!(n, 19);
    assert_eq!(delta(&before_good, &after_good, "tandem_http_requests_total", &[]), n as f64, "no other series moved");
    assert_eq!(delta(&before_good, &after_good, "tandem_http_request_duration_seconds_count", &inbound_app), n as f64);
    assert_eq!(
        delta(
            &before_good,
            &after_good,
            "tandem_http_request_duration_seconds_bucket",
            &[inbound_app[0], inbound_app[1], ("le", "+Inf")]
        ),
        n as f64
    );
    assert!(delta(&before_good, &after_good, "tandem_http_request_duration_seconds_sum", &inbound_app) > 0.0);
    assert_eq!(
        delta(&before_good, &after_good, "tandem_http_request_bytes_total", &[("direction", "inbound")]),
        (3 * body.len()) as f64
    );
    assert!(delta(&before_good, &after_good, "tandem_http_response_bytes_total", &[("direction", "inbound")]) > 0.0);
    assert_eq!(metric_sum(&after_good, "tandem_http_requests_in_flight", &[]), 0.0);

    let uf = [inbound_app[0], inbound_app[1], ("method", "DELETE"), ("status_code", "502"), ("response_flags", "UF")];
    assert_eq!(delta(&before_down, &after_down, "tandem_http_requests_total", &uf), 6.0);
    assert_eq!(delta(&before_down, &after_down, "tandem_http_requests_total", &[]), 6.0);
    assert_eq!(delta(&before_down, &after_down, "tandem_http_request_duration_seconds_count", &[]), 6.0);
    assert_eq!(metric_sum(&after_down, "tandem_http_requests_in_flight", &[]), 0.0);
}

#[tokio::test]
async fn labels_never_carry_a_path_an_authority_or_an_unknown_method() {
    let echo = echo().await;
    let p = proxy(config(echo.addr)).await;
    for i in 0..40 {
        let method = if i % 2 == 0 { "GET" } else { "PURGE" };
        let (s, ..) = request(
            method,
            &format!("http://{}/user/{i}?q={i}", p.inbound_addr),
            &[("host", &format!("h{i}.example"))],
            "",
        )
        .await;
        assert_eq!(s, 200);
    }
    let samples = scrape(p.admin_addr).await;
    let series: Vec<&Sample> = samples.iter().filter(|s| s.name == "tandem_http_requests_total").collect();
    assert_eq!(series.len(), 2, "{series:?}");
    assert_eq!(metric_sum(&samples, "tandem_http_requests_total", &[("method", "other")]), 20.0);
    for s in &samples {
        for (k, v) in &s.labels {
            assert!(!v.contains('/') && !v.contains("example"), "{} {k}={v}", s.name);
        }
    }
}

#[tokio::test]
async fn outbound_requests_get_their_own_upstream_series_and_no_app_one() {
    use tandem::base::reason::Direction;
    use tandem::telemetry::record::RequestRecord;
    // A live proxy exports no outbound series with upstream="app".
    let p = proxy(config(dead_addr())).await;
    let samples = scrape(p.admin_addr).await;
    assert!(
        !samples.iter().any(|s| s.labels.contains(&("direction".into(), "outbound".into()))
            && s.labels.contains(&("upstream".into(), "app".into()))),
        "an outbound upstream=\"app\" series exists"
    );

    // Outbound records are counted under the upstream they carry.
    let registry = prometheus::Registry::new();
    let metrics = tandem::telemetry::metrics::Metrics::new(registry.clone()).expect("metrics");
    let (parts, ()) = http::Request::get("http://svc.example/x").body(()).expect("request").into_parts();
    for cluster in ["passthrough", "passthrough", "payments"] {
        let mut r = RequestRecord::start(Direction::Outbound, "127.0.0.1:5000".parse().expect("addr"), &parts);
        r.upstream_cluster = cluster;
        r.response_code = 200;
        metrics.request_started(Direction::Outbound);
        metrics.request_finished(&r);
    }
    let samples = parse_metrics(&String::from_utf8(metrics.render()).expect("utf8"));
    let out = |u: &'static str| [("direction", "outbound"), ("upstream", u)];
    assert_eq!(metric_sum(&samples, "tandem_http_request_duration_seconds_count", &out("passthrough")), 2.0);
    assert_eq!(metric_sum(&samples, "tandem_http_request_duration_seconds_count", &out("payments")), 1.0);
    assert_eq!(metric_sum(&samples, "tandem_http_request_duration_seconds_count", &out("app")), 0.0);
    assert_eq!(metric_sum(&samples, "tandem_http_requests_total", &out("passthrough")), 2.0);
    assert_eq!(metric_sum(&samples, "tandem_http_requests_total", &[("direction", "inbound")]), 0.0);
    assert_eq!(metric_sum(&samples, "tandem_http_requests_in_flight", &[("direction", "outbound")]), 0.0);
}

#[test]
fn metrics_live_on_the_registry_passed_in_and_nowhere_else() {
    let registry = prometheus::Registry::new();
    let _m = tandem::telemetry::metrics::Metrics::new(registry.clone()).expect("metrics");
    let names: Vec<String> = registry.gather().iter().map(|f| f.name().to_owned()).collect();
    // (Vectors with no child yet, like tandem_http_requests_total before the first request, are
    // not gathered.)
    assert!(names.iter().any(|n| n == "tandem_http_requests_in_flight"), "{names:?}");
    // Registering twice on one registry is refused (an error, not a panic).
    assert!(tandem::telemetry::metrics::Metrics::new(registry.clone()).is_err());
    // Nothing leaked into the process-wide default registry.
    assert!(!prometheus::gather().iter().any(|f| f.name().starts_with("tandem_")));
    // A second tandem (a second registry) in one process is fine.
    assert!(tandem::telemetry::metrics::Metrics::new(prometheus::Registry::new()).is_ok());
}

#[tokio::test]
async fn connection_metrics_follow_connections() {
    let echo = echo().await;
    let p = proxy(config(echo.addr)).await;
    let before = scrape(p.admin_addr).await;
    let inbound = [("direction", "inbound")];
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(tokio::net::TcpStream::connect(p.inbound_addr).await.expect("connect"));
    }
    let admin = p.admin_addr;
    let opened = |s: &[Sample]| metric_sum(s, "tandem_tcp_connections_opened_total", &inbound);
    let base_opened = opened(&before);
    let mut now = scrape(admin).await;
    while opened(&now) < base_opened + 3.0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        now = scrape(admin).await;
    }
    assert_eq!(opened(&now), base_opened + 3.0);
    assert_eq!(metric_sum(&now, "tandem_tcp_connections_active", &inbound), 3.0);
    drop(conns);
    let closed_before = metric_sum(&before, "tandem_tcp_connections_closed_total", &inbound);
    loop {
        let s = scrape(admin).await;
        if metric_sum(&s, "tandem_tcp_connections_closed_total", &inbound) == closed_before + 3.0 {
            assert_eq!(metric_sum(&s, "tandem_tcp_connections_active", &inbound), 0.0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn promtool_accepts_a_live_tandems_output() {
    if std::process::Command::new("promtool").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED promtool_accepts...: promtool is not installed (Debian package `prometheus`; CI installs it)"
        );
        return;
    }
    let echo = echo().await;
    let p = proxy(config(echo.addr)).await;
    for path in ["/a", "/b?status=404", "/c?status=503"] {
        get(&format!("http://{}{path}", p.inbound_addr)).await;
    }
    let text = scrape_text(p.admin_addr).await;
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).await.expect("write");
    }
    let out = child.wait_with_output().await.expect("promtool output");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads one HTTP/2 frame (type, flags, payload) from a raw connection; `None` once it closes.
async fn h2_frame(s: &mut tokio::net::TcpStream) -> Option<(u8, u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.ok()?;
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], payload))
}

/// The error code of the GOAWAY the server ends `s` with, reading until a PING ACK with `sync`
/// (`None`: no GOAWAY yet), or until the connection closes.
async fn h2_goaway_or_sync(s: &mut tokio::net::TcpStream, sync: &[u8; 8]) -> Result<Option<u32>, &'static str> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), h2_frame(s)).await {
            Err(_) => return Err("no frame within 10 s"),
            Ok(None) => return Err("closed without GOAWAY"),
            Ok(Some((0x7, _, p))) if p.len() >= 8 => return Ok(Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]))),
            Ok(Some((0x6, 0x1, p))) if p == sync => return Ok(None),
            Ok(Some(_)) => {}
        }
    }
}

#[tokio::test]
async fn h2_abuse_is_counted_by_kind_in_metrics() {
    use tokio::io::AsyncWriteExt;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let abuse = |samples: &[Sample], kind: &str| metric_sum(samples, "tandem_h2_abuse_total", &[("kind", kind)]);
    let echo = echo().await;
    let p = proxy(config(echo.addr)).await;
    let before = scrape(p.admin_addr).await;
    for kind in ["rapid_reset", "ping_flood", "continuation_flood", "empty_data", "stalled_stream", "unread"] {
        assert!(before.iter().any(|s| s.name == "tandem_h2_abuse_total" && s.labels == [("kind".into(), kind.into())]));
    }
    let start = || async {
        let mut s = tokio::net::TcpStream::connect(p.inbound_addr).await.expect("connect");
        let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        b.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // SETTINGS
        s.write_all(&b).await.expect("preface");
        s
    };

    // A PING flood, every answer read: 500 at a time, then one to wait for.
    let mut s = start().await;
    let ping = [0u8, 0, 8, 0x6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let mut batch: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 500).collect();
    batch.extend_from_slice(&[0, 0, 8, 0x6, 0, 0, 0, 0, 0]);
    batch.extend_from_slice(b"syncsync");
    let mut code = None;
    for _ in 0..100 {
        if s.write_all(&batch).await.is_err() {
            break;
        }
        code = h2_goaway_or_sync(&mut s, b"syncsync").await.expect("a PING ACK or GOAWAY");
        if code.is_some() {
            break;
        }
    }
    assert_eq!(code, Some(ENHANCE_YOUR_CALM), "PING flood");

    // A header block in 10,000 empty CONTINUATION frames.
    let mut s = start().await;
    let mut flood = vec![0u8, 0, 1, 0x1, 0x1, 0, 0, 0, 1, 0x82]; // HEADERS, END_STREAM, `:method GET`
    for _ in 0..10_000 {
        flood.extend_from_slice(&[0, 0, 0, 0x9, 0, 0, 0, 0, 1]);
    }
    // The server may close before it has read it all.
    let _ = s.write_all(&flood).await;
    assert_eq!(h2_goaway_or_sync(&mut s, b"unneeded").await, Ok(Some(ENHANCE_YOUR_CALM)), "CONTINUATION flood");

    let after = scrape(p.admin_addr).await;
    for kind in ["ping_flood", "continuation_flood"] {
        assert!(abuse(&after, kind) >= abuse(&before, kind) + 1.0, "{kind} counted");
    }
    // It served others all along.
    let (s, ..) = get(&format!("http://{}/after", p.inbound_addr)).await;
    assert_eq!(s, 200);
}

/// This process's user + system CPU time in seconds (getrusage, microsecond resolution).
fn own_cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data; getrusage fills it for RUSAGE_SELF.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut ru), 0);
        ru
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

#[tokio::test]
async fn process_cpu_seconds_are_fractional() {
    let p = proxy(config(dead_addr())).await;
    // Burn a little CPU in this process (the proxy's own), bounded in time and in work.
    let start = own_cpu_seconds();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut x = 0u64;
    while own_cpu_seconds() - start < 0.05 && std::time::Instant::now() < deadline {
        for i in 0..100_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    let text = scrape_text(p.admin_addr).await;
    let cpu = metric_value(&text, &["process_cpu_seconds_total"]).expect("process_cpu_seconds_total");
    let own = own_cpu_seconds();
    // Whole seconds would read 0 here (or a whole number): the counter has the rusage resolution.
    assert!(cpu > 0.0 && cpu <= own, "process_cpu_seconds_total {cpu}, getrusage {own}");
    assert!(cpu.fract() != 0.0, "process_cpu_seconds_total {cpu} is a whole number of seconds");
}

#[tokio::test]
async fn version_and_build_info_name_the_commit_profile_and_rust_version() {
    // The binary cargo built beside this test's library: the same build, so the same values.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem")).arg("--version").output().expect("run");
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).expect("utf8");
    let p = proxy(config(dead_addr())).await;
    let samples = scrape(p.admin_addr).await;
    let info = samples.iter().find(|s| s.name == "tandem_build_info").expect("tandem_build_info");
    let label = |k: &str| info.labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).expect(k);
    let (version, commit, profile, rustc) = (label("version"), label("commit"), label("profile"), label("rustc"));
    assert_eq!(
        line.trim(),
        format!("tandem {version} (commit {commit}, profile {profile}, rustc {rustc})"),
        "--version and tandem_build_info agree"
    );
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert!(!profile.is_empty() && profile != "unknown", "profile {profile}");
    assert!(rustc.split('.').take(2).all(|n| n.parse::<u32>().is_ok()), "rustc version {rustc}");
    // Built from a git checkout (as here and in CI), the commit is HEAD's; elsewhere "unknown".
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    assert_eq!(commit, head.as_deref().unwrap_or("unknown"));
}

/// Floods of each kind the HTTP/2 server cuts short, against a spawned tandem, several rounds:
/// each connection is cut, and the process's heap does not grow with
/// the rounds (what the first round allocated, buffers and the allocator's arenas, is reused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_floods_leave_memory_flat_and_tandem_serving() {
    use tokio::io::AsyncWriteExt;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    const ROUNDS: usize = 6;
    let (_echo, app) = procs::echo().await;
    let t = procs::tandem(app, &[], &[]).await;
    let inbound = t.inbound;
    let start = || async move {
        let mut s = tokio::net::TcpStream::connect(inbound).await.expect("connect");
        let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        b.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // SETTINGS
        s.write_all(&b).await.expect("preface");
        s
    };
    // The frames of each flood, written until the server answers GOAWAY (or closes).
    let ping = [0u8, 0, 8, 0x6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let ping_flood: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 20_000).collect();
    let mut continuation = vec![0u8, 0, 1, 0x1, 0x1, 0, 0, 0, 1, 0x82]; // HEADERS, END_STREAM, :method GET
    for _ in 0..20_000 {
        continuation.extend_from_slice(&[0, 0, 0, 0x9, 0, 0, 0, 0, 1]);
    }
    // POST / on stream 1 (static table: :method POST, :scheme http, :path /), then empty DATA.
    let mut empty_data = vec![0u8, 0, 3, 0x1, 0x4, 0, 0, 0, 1, 0x83, 0x86, 0x84];
    for _ in 0..20_000 {
        empty_data.extend_from_slice(&[0, 0, 0, 0x0, 0, 0, 0, 0, 1]);
    }
    // Streams opened and reset at once (CVE-2023-44487).
    let mut rapid_reset = Vec::new();
    for id in (1u32..40_000).step_by(2) {
        let sid = id.to_be_bytes();
        rapid_reset.extend_from_slice(&[0, 0, 3, 0x1, 0x5, sid[0], sid[1], sid[2], sid[3], 0x82, 0x86, 0x84]);
        rapid_reset.extend_from_slice(&[0, 0, 4, 0x3, 0, sid[0], sid[1], sid[2], sid[3], 0, 0, 0, 0x8]);
    }
    let floods = [
        ("PING", &ping_flood),
        ("CONTINUATION", &continuation),
        ("empty DATA", &empty_data),
        ("rapid reset", &rapid_reset),
    ];
    let mut after_first = None;
    for round in 0..ROUNDS {
        for (what, bytes) in floods {
            let mut s = start().await;
            // The server may close before it has read it all.
            let _ = s.write_all(bytes).await;
            // Cut: GOAWAY ENHANCE_YOUR_CALM, or, when the flood was still being written as the
            // server closed, a reset that can overtake the GOAWAY; never left open.
            let end = h2_goaway_or_sync(&mut s, b"unneeded").await;
            assert!(
                matches!(end, Ok(Some(ENHANCE_YOUR_CALM)) | Err("closed without GOAWAY")),
                "{what}, round {round}: {end:?}"
            );
        }
        let (status, ..) = get(&format!("http://{inbound}/between")).await;
        assert_eq!(status, 200, "tandem serves others after round {round}");
        if round == 0 {
            after_first = Some(t.rss_kib());
        }
    }
    let samples = scrape(t.admin).await;
    let abuse = |kind: &str| metric_sum(&samples, "tandem_h2_abuse_total", &[("kind", kind)]);
    // Each cut counted as the abuse it was. PINGs whose answers are never read count as a PING
    // flood or, once the answers back up unsent, a control-frame flood, as the timing falls.
    for kind in ["continuation_flood", "empty_data", "rapid_reset"] {
        assert_eq!(abuse(kind), ROUNDS as f64, "{kind}");
    }
    assert_eq!(abuse("ping_flood") + abuse("control_flood"), ROUNDS as f64, "PING floods");
    let first = after_first.expect("round 0 ran");
    let last = t.rss_kib();
    println!("VmRSS, RssAnon in KiB after round 1: {first:?}, after round {ROUNDS}: {last:?}");
    // Flat: five more rounds of every flood may not add 2 MiB of heap (each round writes about
    // 2 MB of frames to the server).
    assert!(last.1 <= first.1 + 2048, "the heap grew with the floods: {first:?} then {last:?}");
}
