//! The pod lifecycle through the built binary: readiness, the drain on SIGTERM / SIGINT /
//! `POST /shutdown` (HTTP/1.1 `Connection: close`, idle keep-alive connections closed, HTTP/2
//! GOAWAY, in-flight requests finishing, the deadline), the second signal, app readiness checks,
//! the rate-limited "app is down" log, and the worker count.

mod support;

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::procs::{echo, get, inbound_in_flight, poll_metric, poll_status, request, tandem};
use support::{bin, dead_addr, refusing_port, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const EXIT_LIMIT: Duration = Duration::from_secs(30);

/// Reads one HTTP/1.1 response (head and a Content-Length body) from a raw connection.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(EXIT_LIMIT, s.read(&mut chunk)).await.expect("response in time").expect("read");
        assert!(n > 0, "connection closed before a full response head: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("content-length"))
        .expect("a content-length body");
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "connection closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    head
}

/// Asserts that the peer closes `s` (a read returns end of file) within the limit.
async fn assert_closed_by_peer(s: &mut TcpStream) {
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(EXIT_LIMIT, s.read(&mut b)).await.expect("closed in time").unwrap_or(0);
    assert_eq!(n, 0, "expected the connection to be closed, got {:?}", String::from_utf8_lossy(&b[..n]));
}

/// Polls until a new TCP connection to `addr` is refused.
async fn poll_refused(addr: SocketAddr) {
    let start = Instant::now();
    while TcpStream::connect(addr).await.is_ok() {
        assert!(start.elapsed() < EXIT_LIMIT, "{addr} still accepts connections");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn count_lines(stderr: &str, needle: &str) -> usize {
    stderr.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_in_flight_at_sigterm_completes_and_ready_turns_503_at_once() {
    let (_echo, app) = echo().await;
    let mut t = tandem(app, &["--drain-timeout", "20s"], &[]).await;
    let (_, _, body) = get(t.admin, "/ready").await.expect("ready");
    assert_eq!(&body[..], b"ready\n");

    let inbound = t.inbound;
    let slow = tokio::spawn(async move { get(inbound, "/slow?delay=1500ms").await });
    poll_metric(t.admin, &inbound_in_flight(1)).await;
    t.proc.signal(libc::SIGTERM);

    // /ready answers 503 while the request is still in flight; new connections are refused.
    poll_status(t.admin, "/ready", 503).await;
    let (_, _, body) = get(t.admin, "/ready").await.expect("admin still answers during the drain");
    assert_eq!(&body[..], b"draining\n");
    poll_refused(t.inbound).await;

    let (status, headers, _) = slow.await.expect("join").expect("the slow request completes");
    assert_eq!(status, 200);
    assert_eq!(headers.get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
    let code = t.proc.exit(EXIT_LIMIT).await;
    assert_eq!(code.code(), Some(0), "stderr:\n{}", t.proc.stderr());
    let stderr = t.proc.stderr();
    assert!(stderr.contains("stop requested"), "{stderr}");
    assert!(stderr.contains("drained; exiting"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_clients_get_connection_close_and_idle_ones_are_closed() {
    let (_echo, app) = echo().await;
    let mut t = tandem(app, &[], &[]).await;

    let mut busy = TcpStream::connect(t.inbound).await.expect("connect");
    busy.write_all(b"GET /one HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
    let head = read_response(&mut busy).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "keep-alive before the stop: {head}");

    let mut idle = TcpStream::connect(t.inbound).await.expect("connect");
    idle.write_all(b"GET /two HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
    let head = read_response(&mut idle).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");

    busy.write_all(b"GET /slow?delay=1500ms HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
    poll_metric(t.admin, &inbound_in_flight(1)).await;
    t.proc.signal(libc::SIGTERM);

    // The idle keep-alive connection is closed by tandem during the drain.
    assert_closed_by_peer(&mut idle).await;
    // The request in flight is answered, with Connection: close, and then the connection closes.
    let head = read_response(&mut busy).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_closed_by_peer(&mut busy).await;
    assert_eq!(t.proc.exit(EXIT_LIMIT).await.code(), Some(0), "stderr:\n{}", t.proc.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_gets_goaway_and_its_open_stream_completes() {
    let (_echo, app) = echo().await;
    let mut t = tandem(app, &[], &[]).await;

    let tcp = TcpStream::connect(t.inbound).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let req = http::Request::get(format!("http://{}/slow?delay=1500ms", t.inbound)).body(()).expect("request");
    let (response, _) = client.send_request(req, true).expect("send");
    poll_metric(t.admin, &inbound_in_flight(1)).await;
    t.proc.signal(libc::SIGTERM);

    // The open stream completes in full.
    let response = response.await.expect("the open stream is answered");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut got = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body data");
        got += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    assert!(got > 0, "an echo body");

    // GOAWAY: the connection ends cleanly (no error) and accepts no new stream.
    let ended = tokio::time::timeout(EXIT_LIMIT, connection).await.expect("connection ends").expect("join");
    assert!(ended.is_ok(), "the server closed the connection with GOAWAY(NO_ERROR), not an error: {ended:?}");
    let req = http::Request::get(format!("http://{}/after", t.inbound)).body(()).expect("request");
    match client.send_request(req, true) {
        Err(e) => assert!(e.is_go_away() || e.is_io() || e.to_string().contains("closed"), "{e}"),
        Ok((resp, _)) => {
            let e = resp.await.expect_err("no new stream after GOAWAY");
            assert!(e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM) || e.is_io(), "{e}");
        }
    }
    assert_eq!(t.proc.exit(EXIT_LIMIT).await.code(), Some(0), "stderr:\n{}", t.proc.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_longer_than_the_deadline_are_cut_and_the_exit_code_is_still_zero() {
    let (_echo, app) = echo().await;
    let mut t = tandem(app, &["--drain-timeout", "1s"], &[]).await;

    // An h2 stream that echoes a request body the client keeps sending.
    let tcp = TcpStream::connect(t.inbound).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let req = http::Request::post(format!("http://{}/stream?echo_body=1", t.inbound)).body(()).expect("request");
    let (response, mut send) = client.send_request(req, false).expect("send");
    send.send_data(Bytes::from_static(b"first chunk\n"), false).expect("send data");
    let response = response.await.expect("response head");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.data().await.expect("a first echoed chunk").expect("data");
    let _ = body.flow_control().release_capacity(first.len());

    // And an HTTP/1.1 request that takes far longer than the deadline.
    let inbound = t.inbound;
    let slow = tokio::spawn(async move { get(inbound, "/slow?delay=60s").await });
    poll_metric(t.admin, &inbound_in_flight(2)).await;

    let started = Instant::now();
    t.proc.signal(libc::SIGTERM);
    let sender = tokio::spawn(async move {
        // Keep the stream busy; pacing the client is not waiting for the server.
        while send.send_data(Bytes::from_static(b"more\n"), false).is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let cut = async {
        while let Some(chunk) = body.data().await {
            match chunk {
                Ok(c) => {
                    let _ = body.flow_control().release_capacity(c.len());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let result = tokio::time::timeout(EXIT_LIMIT, cut).await.expect("the stream ends");
    assert!(result.is_err(), "the stream was cut, not completed");
    assert!(slow.await.expect("join").is_err(), "the slow HTTP/1.1 request was cut");
    let code = t.proc.exit(EXIT_LIMIT).await;
    assert_eq!(code.code(), Some(0), "stderr:\n{}", t.proc.stderr());
    // Bounded far above the 1 s deadline: this checks the deadline is enforced, not how fast.
    assert!(started.elapsed() < Duration::from_secs(20));
    let stderr = t.proc.stderr();
    assert!(stderr.contains("drain deadline reached; closing what remains"), "{stderr}");
    assert!(stderr.contains("2 requests in flight"), "what remained is logged: {stderr}");
    sender.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let (_echo, app) = echo().await;
    let mut t = tandem(app, &["--drain-timeout", "5m"], &[]).await;
    let inbound = t.inbound;
    let slow = tokio::spawn(async move { get(inbound, "/slow?delay=5m").await });
    poll_metric(t.admin, &inbound_in_flight(1)).await;
    t.proc.signal(libc::SIGTERM);
    poll_status(t.admin, "/ready", 503).await;
    t.proc.signal(libc::SIGINT);
    let code = t.proc.exit(EXIT_LIMIT).await;
    assert_eq!(code.code(), Some(0));
    assert!(t.proc.stderr().contains("second stop signal; exiting now"), "{}", t.proc.stderr());
    assert!(slow.await.expect("join").is_err(), "the request was cut by the exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_and_post_shutdown_start_the_same_stop() {
    let (_echo, app) = echo().await;
    let mut t = tandem(app, &[], &[]).await;
    t.proc.signal(libc::SIGINT);
    assert_eq!(t.proc.exit(EXIT_LIMIT).await.code(), Some(0));

    let mut t = tandem(app, &[], &[]).await;
    let (status, _, _) = request(t.admin, http::Method::GET, "/shutdown").await.expect("answer");
    assert_eq!(status, 405, "GET does not stop tandem");
    let (status, _, body) = request(t.admin, http::Method::POST, "/shutdown").await.expect("answer");
    assert_eq!((status.as_u16(), &body[..]), (200, &b"draining\n"[..]));
    assert_eq!(t.proc.exit(EXIT_LIMIT).await.code(), Some(0), "stderr:\n{}", t.proc.stderr());
    assert!(t.proc.stderr().contains("stop requested through POST /shutdown"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_signal_sent_the_moment_ready_is_logged_is_handled() {
    // The handlers were installed in a task spawned after the ready line, so a signal sent at once
    // could meet the default action and kill the process (CI saw exit None). Repeated because the
    // window was narrow; each start is a fresh process.
    let (_echo, app) = echo().await;
    for (i, sig) in [libc::SIGINT, libc::SIGTERM].iter().cycle().take(12).enumerate() {
        let mut t = tandem(app, &[], &[]).await;
        t.proc.signal(*sig);
        let code = t.proc.exit(EXIT_LIMIT).await;
        assert_eq!(code.code(), Some(0), "start {i}, signal {sig}: {code:?}\n{}", t.proc.stderr());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_until_every_listener_is_bound() {
    // An inbound address already taken: tandem reports the key and exits 1; /ready never says 200.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let admin = dead_addr();
    let mut p = Proc::spawn(
        "tandem",
        bin(),
        &["run", "--inbound", &taken_addr, "--admin", &admin.to_string(), "--outbound", "127.0.0.1:0"],
        &[],
    );
    let code = p.exit(EXIT_LIMIT).await;
    assert_eq!(code.code(), Some(1));
    assert!(p.stderr().contains("inbound.listen: cannot bind"), "{}", p.stderr());
    assert!(get(admin, "/ready").await.is_err(), "the admin port never served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_app_is_down_requests_get_502_uf_at_once_and_the_log_says_so_rate_limited() {
    let app = dead_addr();
    let mut t = tandem(app, &["--log-format", "json"], &[]).await;
    let (status, _, body) = get(t.admin, "/ready/app").await.expect("answer");
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains("tcp connect to"), "{body:?}");
    let (status, _, _) = get(t.admin, "/ready").await.expect("answer");
    assert_eq!(status, 200, "tandem itself is ready while the app is not");

    for _ in 0..20 {
        let (status, headers, _) = get(t.inbound, "/x").await.expect("answer");
        assert_eq!(status, 502);
        assert_eq!(headers.get("x-tandem-error").map(|v| v.as_bytes()), Some(&b"UF"[..]));
    }
    // The app comes up on its port: the same tandem now forwards.
    let _app = Proc::spawn("echo", bin(), &["echo", "--listen", &app.to_string(), "--workers", "1"], &[]);
    poll_status(t.admin, "/ready/app", 200).await;
    let (status, _, _) = get(t.inbound, "/x").await.expect("answer");
    assert_eq!(status, 200);

    t.proc.signal(libc::SIGTERM);
    t.proc.exit(EXIT_LIMIT).await;
    let stderr = t.proc.stderr();
    let uf_lines = stderr.lines().filter(|l| l.contains("\"code\":\"UF\"")).count();
    assert!((1..=2).contains(&uf_lines), "20 refused requests, {uf_lines} log lines:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_readiness_checks_http_file_and_none() {
    let (_echo, app) = echo().await;
    let (_held, dead) = refusing_port();

    let t = tandem(app, &[], &[("TANDEM_READINESS_APP", "http:/health")]).await;
    assert_eq!(get(t.admin, "/ready/app").await.expect("answer").0, 200);
    let t = tandem(app, &[], &[("TANDEM_READINESS_APP", "http:/x?status=503")]).await;
    let (status, _, body) = get(t.admin, "/ready/app").await.expect("answer");
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains("503"), "the reason names the answer: {body:?}");

    let file = std::env::temp_dir().join(format!("tandem-ready-{}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let check = format!("file:{}", file.display());
    let t = tandem(dead, &[], &[("TANDEM_READINESS_APP", &check)]).await;
    let (status, _, body) = get(t.admin, "/ready/app").await.expect("answer");
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains(&file.display().to_string()), "{body:?}");
    std::fs::write(&file, b"").expect("write");
    assert_eq!(get(t.admin, "/ready/app").await.expect("answer").0, 200);
    let _ = std::fs::remove_file(&file);

    let t = tandem(dead, &[], &[("TANDEM_READINESS_APP", "none")]).await;
    assert_eq!(get(t.admin, "/ready/app").await.expect("answer").0, 200);

    // An invalid check is a configuration error named by its key.
    let mut p = Proc::spawn("check", bin(), &["check"], &[("TANDEM_READINESS_APP", "icmp")]);
    assert_eq!(p.exit(EXIT_LIMIT).await.code(), Some(1));
    assert!(p.stderr().contains("readiness.app"), "{}", p.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_count_is_logged_and_the_flag_overrides_it() {
    let (_echo, app) = echo().await;
    let mut t = tandem(app, &["--workers", "3", "--log-format", "json"], &[]).await;
    t.proc.signal(libc::SIGTERM);
    t.proc.exit(EXIT_LIMIT).await;
    let line = t.proc.stderr().lines().find(|l| l.contains("runtime workers")).map(str::to_owned).expect("logged");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v["workers"], 3);
    assert_eq!(v["source"], "configured");

    let mut t = tandem(app, &["--workers", "0", "--log-format", "json"], &[]).await;
    t.proc.signal(libc::SIGTERM);
    t.proc.exit(EXIT_LIMIT).await;
    let line = t.proc.stderr().lines().find(|l| l.contains("runtime workers")).map(str::to_owned).expect("logged");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    let expected = tandem::lifecycle::workers::workers(0);
    assert_eq!(v["workers"], expected.count, "{line}");
    assert_eq!(v["source"], expected.source.as_str(), "{line}");
    assert!(count_lines(&t.proc.stderr(), "runtime workers") == 1);
}

/// A CPU cgroup this test made; removed on drop (after the processes in it have exited).
struct CpuCgroup(std::path::PathBuf);

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        // A process killed on a failed assertion may still be leaving the group: retry briefly.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Makes a cgroup limited to `quota_us` per 100 ms period (50000 is half a CPU): cgroup v1 (`cpu`
/// hierarchy) or v2 (`cpu.max`, when the cpu controller is enabled for the root's children).
/// `Err` says why not.
fn cpu_cgroup(tag: &str, quota_us: u32) -> Result<CpuCgroup, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root to create a cgroup".into());
    }
    let name = format!("tandem-test-{tag}-{}", std::process::id());
    let v1 = std::path::Path::new("/sys/fs/cgroup/cpu");
    if v1.join("cpu.cfs_quota_us").exists() {
        let dir = v1.join(&name);
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cg = CpuCgroup(dir.clone());
        std::fs::write(dir.join("cpu.cfs_period_us"), "100000").map_err(|e| e.to_string())?;
        std::fs::write(dir.join("cpu.cfs_quota_us"), quota_us.to_string()).map_err(|e| e.to_string())?;
        return Ok(cg);
    }
    let v2 = std::path::Path::new("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(v2.join("cgroup.subtree_control")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "cpu") {
        let dir = v2.join(&name);
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cg = CpuCgroup(dir.clone());
        std::fs::write(dir.join("cpu.max"), format!("{quota_us} 100000")).map_err(|e| e.to_string())?;
        return Ok(cg);
    }
    Err("no writable cgroup v1 cpu hierarchy and no cgroup v2 cpu controller for new groups".into())
}

/// Runs tandem in a cgroup of `quota_us` per 100 ms until it is ready, stops it, and returns its
/// "runtime workers" log line; `None` (saying why) where no such cgroup can be made.
async fn workers_line_under(tag: &str, quota_us: u32) -> Option<serde_json::Value> {
    let cg = match cpu_cgroup(tag, quota_us) {
        Ok(cg) => cg,
        Err(reason) => {
            println!("skipped: {reason}");
            return None;
        }
    };
    // The shell moves itself into the cgroup, then becomes tandem, which reads its own cgroup.
    let procs_file = cg.0.join("cgroup.procs");
    let script = format!("echo $$ > {} && exec \"$0\" \"$@\"", procs_file.display());
    let (_echo, app) = echo().await;
    let mut p = Proc::spawn(
        "tandem",
        "sh",
        &[
            "-c",
            &script,
            bin(),
            "run",
            "--app",
            &app.to_string(),
            "--inbound",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--outbound",
            "127.0.0.1:0",
            "--access-log",
            "off",
            "--log-format",
            "json",
        ],
        &[],
    );
    p.logged("tandem is ready").await;
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit(EXIT_LIMIT).await.code(), Some(0));
    let line = p.stderr().lines().find(|l| l.contains("runtime workers")).map(str::to_owned).expect("logged");
    Some(serde_json::from_str(&line).expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_follow_a_real_cgroup_cpu_limit() {
    let Some(v) = workers_line_under("half", 50_000).await else { return };
    assert_eq!(v["workers"], 1, "{v}");
    assert_eq!(v["source"], "cgroup CPU limit 0.50", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fractional_cgroup_cpu_limit_rounds_up() {
    // std's available_parallelism() rounds a cgroup quota down (1.5 CPUs is 1), so the core count
    // tandem caps the workers at must come from the CPU affinity mask instead.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        println!("skipped: {cores} core(s) here, 1.5 CPUs cannot round up to 2 workers");
        return;
    }
    let Some(v) = workers_line_under("one-and-a-half", 150_000).await else { return };
    assert_eq!(v["workers"], 2, "{v}");
    assert_eq!(v["source"], "cgroup CPU limit 1.50", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_comes_back_after_bursts_of_connections() {
    const CONNS: usize = 500;
    let (_echo, app) = echo().await;
    let t = tandem(app, &[], &[]).await;
    // Idle, once one request has set up what every request uses (the pool to the app).
    assert_eq!(get(t.inbound, "/warm").await.expect("answer").0, 200);
    let idle = t.rss_kib();
    let mut peak = idle;
    let request = format!("GET /burst HTTP/1.1\r\nhost: {}\r\n\r\n", t.inbound);
    for _ in 0..2 {
        let mut conns = Vec::with_capacity(CONNS);
        for _ in 0..CONNS {
            let mut s = TcpStream::connect(t.inbound).await.expect("connect");
            s.write_all(request.as_bytes()).await.expect("write");
            conns.push(s);
        }
        for s in &mut conns {
            let head = read_response(s).await;
            assert!(head.starts_with("http/1.1 200"), "{head}");
        }
        let now = t.rss_kib();
        peak = (peak.0.max(now.0), peak.1.max(now.1));
        drop(conns);
    }
    // Within 15 s of the close: the total within 2x the idle figure, and at least half of what
    // the bursts took from the heap given back (glibc keeps it all unless told).
    let back = |(rss, anon): (u64, u64)| rss <= 2 * idle.0 && anon <= idle.1 + (peak.1 - idle.1) / 2;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut now = t.rss_kib();
    while !back(now) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        now = t.rss_kib();
    }
    assert!(back(now), "VmRSS, RssAnon in KiB: idle {idle:?}, peak {peak:?}, 15 s after the close {now:?}");
    println!("VmRSS, RssAnon in KiB: idle {idle:?}, peak {peak:?}, after {now:?}");
}
