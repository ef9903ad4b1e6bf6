//! The admin port: every endpoint in `src/admin.rs`'s module doc, loopback-only endpoints refused
//! (403) to a peer in another network namespace, admin requests kept out of the access log and
//! the metrics, secrets masked in `GET /config`, and `GET`/`PUT /log-level` on a real process.

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

#[tokio::test]
async fn every_endpoint_answers_as_documented() {
    let echo = echo().await;
    let p = proxy(config(echo.addr)).await;
    let a = format!("http://{}", p.admin_addr);
    let call = |m: &'static str, path: &'static str| {
        let url = format!("{a}{path}");
        async move {
            let (s, h, b) = request(m, &url, &[], "").await;
            (s.as_u16(), h, String::from_utf8_lossy(&b).into_owned())
        }
    };

    assert_eq!(call("GET", "/live").await.2, "live\n");
    assert_eq!(call("HEAD", "/live").await.0, 200);
    let (s, _, b) = call("GET", "/ready").await;
    assert_eq!((s, b.as_str()), (200, "ready\n"));
    let (s, _, b) = call("GET", "/ready/app").await;
    assert_eq!((s, b.as_str()), (200, "app ready\n"));
    let (s, h, b) = call("GET", "/metrics").await;
    assert_eq!(s, 200);
    assert_eq!(h["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    assert!(b.contains("# TYPE tandem_ready gauge"));
    let (s, _, b) = call("POST", "/reopen-logs").await;
    assert_eq!((s, b.as_str()), (200, "access log is off\n"));
    let (s, h, b) = call("GET", "/config").await;
    assert_eq!((s, h["content-type"].to_str().ok()), (200, Some("application/yaml")));
    let cfg: serde_yaml_ng::Value = serde_yaml_ng::from_str(&b).expect("yaml");
    assert_eq!(cfg["inbound"]["app"].as_str(), Some(echo.addr.to_string().as_str()));
    assert_eq!(cfg["access_log"]["destination"].as_str(), Some("off"));
    assert!(!b.contains("***"), "nothing in today's configuration is secret:\n{b}");
    // An embedded tandem has no reloadable diagnostics filter.
    assert_eq!(call("GET", "/log-level").await.0, 404);
    assert_eq!(call("PUT", "/log-level").await.0, 404);
    // Unknown paths and wrong methods.
    let (s, _, b) = call("GET", "/nope").await;
    assert_eq!(s, 404);
    assert!(b.contains("/live /ready /ready/app /metrics /shutdown /reopen-logs /reload /config /log-level"), "{b}");
    // An embedded tandem was given its configuration in code: a reload has nothing to re-read.
    let (s, _, b) = call("POST", "/reload").await;
    assert_eq!(s, 409);
    assert!(b.contains("nothing to re-read"), "{b}");
    for (m, path) in [
        ("POST", "/live"),
        ("DELETE", "/metrics"),
        ("GET", "/shutdown"),
        ("GET", "/reopen-logs"),
        ("GET", "/reload"),
        ("POST", "/config"),
    ] {
        assert_eq!(call(m, path).await.0, 405, "{m} {path}");
    }

    // POST /shutdown: /ready turns 503 at once, the process may exit.
    let (s, _, b) = call("POST", "/shutdown").await;
    assert_eq!((s, b.as_str()), (200, "draining\n"));
    let (s, _, b) = call("GET", "/ready").await;
    assert_eq!((s, b.as_str()), (503, "draining\n"));
    assert_eq!(call("GET", "/live").await.0, 200);
    tokio::time::timeout(Duration::from_secs(10), p.wait()).await.expect("stopped after POST /shutdown");
}

#[tokio::test]
async fn the_app_readiness_endpoint_says_why_the_app_is_not_ready() {
    let app = dead_addr();
    let p = proxy(config(app)).await;
    let (s, _, b) = get(&format!("http://{}/ready/app", p.admin_addr)).await;
    assert_eq!(s, 503);
    let b = String::from_utf8_lossy(&b);
    assert!(b.starts_with(&format!("app not ready: tcp connect to {app}")), "{b}");
    // tandem itself is ready even though the app is not.
    assert_eq!(get(&format!("http://{}/ready", p.admin_addr)).await.0, 200);
}

#[tokio::test]
async fn admin_requests_are_neither_access_logged_nor_counted() {
    let echo = echo().await;
    let dir = TempDir::new("admin-log");
    let path = dir.join("access.log");
    let p = proxy(config_with_log(echo.addr, &path)).await;
    let a = format!("http://{}", p.admin_addr);
    for _ in 0..3 {
        for (m, path) in [
            ("GET", "/live"),
            ("GET", "/ready"),
            ("GET", "/ready/app"),
            ("GET", "/metrics"),
            ("GET", "/config"),
            ("GET", "/log-level"),
            ("POST", "/reopen-logs"),
            ("GET", "/nope"),
        ] {
            request(m, &format!("{a}{path}"), &[], "").await;
        }
    }
    let (s, ..) =
        request("GET", &format!("http://{}/proxied", p.inbound_addr), &[("x-request-id", "only-one")], "").await;
    assert_eq!(s, 200);
    p.telemetry().flush_access_log().await;
    let lines = json_lines(&path);
    assert_eq!(lines.iter().map(request_id).collect::<Vec<_>>(), ["only-one"]);
    let m = scrape(p.admin_addr).await;
    assert_eq!(metric_sum(&m, "tandem_http_requests_total", &[]), 1.0);
    assert_eq!(metric_sum(&m, "tandem_tcp_connections_opened_total", &[]), 1.0);
}

#[test]
fn config_masks_secret_values_but_shows_file_paths() {
    let yaml = r#"
inbound:
  app: 127.0.0.1:8080
  tls:
    key: /etc/tandem/tls.key
    cert: /etc/tandem/tls.crt
    key_password: hunter2
upstreams:
  - name: payments
    api_token: abc123
    auth:
      client_secret: s3cr3t
      secret_file: ./secrets/payments
  - name: other
    TOKEN_TTL: 30
    monkey_keys: [plain, /path/ok]
    keep_alive: true
empty_key: ""
"#;
    let out = tandem::admin::masked_yaml(yaml);
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&out).expect("yaml");
    assert_eq!(v["inbound"]["app"].as_str(), Some("127.0.0.1:8080"));
    assert_eq!(v["inbound"]["tls"]["key"].as_str(), Some("/etc/tandem/tls.key"));
    assert_eq!(v["inbound"]["tls"]["cert"].as_str(), Some("/etc/tandem/tls.crt"));
    assert_eq!(v["inbound"]["tls"]["key_password"].as_str(), Some("***"));
    let up = &v["upstreams"];
    assert_eq!(up[0]["name"].as_str(), Some("payments"));
    assert_eq!(up[0]["api_token"].as_str(), Some("***"));
    assert_eq!(up[0]["auth"]["client_secret"].as_str(), Some("***"));
    assert_eq!(up[0]["auth"]["secret_file"].as_str(), Some("./secrets/payments"));
    assert_eq!(up[1]["TOKEN_TTL"].as_str(), Some("***"));
    assert_eq!(up[1]["monkey_keys"][0].as_str(), Some("***"));
    assert_eq!(up[1]["monkey_keys"][1].as_str(), Some("/path/ok"));
    assert_eq!(up[1]["keep_alive"].as_bool(), Some(true));
    assert_eq!(v["empty_key"].as_str(), Some(""));
    assert!(!out.contains("hunter2") && !out.contains("abc123") && !out.contains("s3cr3t"), "{out}");
    assert!(tandem::admin::masked_yaml("a: [unclosed").starts_with("# cannot render"));
}

#[tokio::test]
async fn log_level_can_be_read_and_changed_at_run_time() {
    let echo = echo().await;
    let dir = TempDir::new("log-level");
    let log = dir.join("access.log");
    let t = Tandem::run(
        &["--app", &echo.addr.to_string(), "--log-level", "info", "--access-log", log.to_str().expect("path")],
        &[],
    );
    let a = format!("http://{}", t.admin);
    let call = |m: &'static str, body: &'static str| {
        let url = format!("{a}/log-level");
        async move {
            let (s, _, b) = request(m, &url, &[], body).await;
            (s.as_u16(), String::from_utf8_lossy(&b).into_owned())
        }
    };
    let reopened = |t: &Tandem| t.json_stderr().iter().filter(|l| l["message"] == "access log reopened").count();

    assert_eq!(call("GET", "").await, (200, "info\n".to_owned()));
    // At info the writer's debug line does not come out.
    assert_eq!(request("POST", &format!("{a}/reopen-logs"), &[], "").await.0, 200);

    assert_eq!(call("PUT", "debug\n").await, (200, "debug\n".to_owned()));
    assert_eq!(call("GET", "").await, (200, "debug\n".to_owned()));
    assert_eq!(request("POST", &format!("{a}/reopen-logs"), &[], "").await.0, 200);
    poll(Duration::from_secs(10), "the debug line", || (reopened(&t) >= 1).then_some(())).await;
    assert_eq!(reopened(&t), 1, "the reopen at info was logged too");
    assert!(t.json_stderr().iter().any(|l| l["message"] == "log level changed" && l["filter"] == "debug"));

    // Invalid filters are refused and the old one kept.
    let (s, b) = call("PUT", "tandem=[nope").await;
    assert_eq!(s, 400);
    assert!(b.starts_with("invalid filter"), "{b}");
    let (s, b) = call("PUT", "  ").await;
    assert_eq!(s, 400, "{b}");
    let (s, _, b) = request("PUT", &format!("{a}/log-level"), &[], &"debug,".repeat(1000)).await;
    assert_eq!(s, 400);
    assert!(String::from_utf8_lossy(&b).starts_with("cannot read body"), "{b:?}");
    assert_eq!(call("GET", "").await, (200, "debug\n".to_owned()));
}

#[test]
fn rust_log_wins_over_the_flag_and_an_invalid_one_is_reported() {
    let t = Tandem::run(
        &["--app", &dead_addr().to_string(), "--log-level", "debug"],
        &[("RUST_LOG", "warn,tandem::app=info")],
    );
    assert_eq!(curl_local(t.admin, "GET", "/log-level"), "warn,tandem::app=info\n");
    drop(t);

    let t = Tandem::run(&["--app", &dead_addr().to_string(), "--log-level", "info"], &[("RUST_LOG", "tandem=[oops")]);
    assert_eq!(curl_local(t.admin, "GET", "/log-level"), "info\n");
    let warned = t.json_stderr().iter().any(|l| {
        l["level"] == "WARN" && l["message"].as_str().is_some_and(|m| m.contains("RUST_LOG is not a valid filter"))
    });
    assert!(warned, "{:?}", t.stderr_lines());
}

/// A blocking HTTP/1.1 exchange on 127.0.0.1 (for synchronous tests): the response body.
fn curl_local(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(s, "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// Two network namespaces joined by a veth pair; deleted (with the pair) on drop, even when the
/// test fails.
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (network namespaces need it; CI runs as root)".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => return Some(format!("`ip netns` does not work here: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => return Some(format!("`ip` is not available ({e}); install iproute2")),
    }
    if Command::new("curl").arg("--version").output().is_err() {
        return Some("curl is not installed".into());
    }
    None
}

#[test]
fn a_peer_in_another_network_namespace_gets_403_on_all_but_the_public_endpoints() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED a_peer_in_another_network_namespace...: {why}");
        return;
    }
    let id = std::process::id();
    let (ns_a, ns_b) = (format!("tandem-test-a-{id}"), format!("tandem-test-b-{id}"));
    let (veth_a, veth_b) = (format!("tda{}", id % 100_000_000), format!("tdb{}", id % 100_000_000));
    let _guard = Namespaces { names: vec![ns_a.clone(), ns_b.clone()] };
    Namespaces::ip(&["netns", "add", &ns_a]);
    Namespaces::ip(&["netns", "add", &ns_b]);
    Namespaces::ip(&["link", "add", &veth_a, "netns", &ns_a, "type", "veth", "peer", "name", &veth_b, "netns", &ns_b]);
    Namespaces::ip(&["-n", &ns_a, "addr", "add", "10.231.7.1/30", "dev", &veth_a]);
    Namespaces::ip(&["-n", &ns_b, "addr", "add", "10.231.7.2/30", "dev", &veth_b]);
    for (ns, dev) in [(&ns_a, &veth_a), (&ns_b, &veth_b)] {
        Namespaces::ip(&["-n", ns, "link", "set", dev, "up"]);
        Namespaces::ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    // tandem in namespace A with its admin port on every interface; the app is absent.
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns_a, bin(), "run"])
        .args(["--inbound", "127.0.0.1:0", "--outbound", "127.0.0.1:0", "--admin", "0.0.0.0:0"])
        .args(["--app", "127.0.0.1:9", "--access-log", "off", "--log-format", "json"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null());
    let mut t = Tandem::spawn(cmd);
    let port = t.admin.port();

    let curl = |ns: &str, host: &str, method: &str, path: &str| -> u16 {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
            .args(["-X", method, &format!("http://{host}:{port}{path}")])
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    };
    let remote = |m: &str, p: &str| curl(&ns_b, "10.231.7.1", m, p);
    let local = |m: &str, p: &str| curl(&ns_a, "127.0.0.1", m, p);

    // Public endpoints answer anyone (/ready/app says 503: the app is absent, but not 403).
    assert_eq!(remote("GET", "/live"), 200);
    assert_eq!(remote("GET", "/ready"), 200);
    assert_eq!(remote("GET", "/ready/app"), 503);
    assert_eq!(remote("GET", "/metrics"), 200);
    // Everything else is refused to the other namespace, unknown paths included.
    for (m, p) in [
        ("POST", "/shutdown"),
        ("POST", "/reopen-logs"),
        ("GET", "/config"),
        ("GET", "/log-level"),
        ("PUT", "/log-level"),
        ("GET", "/nope"),
    ] {
        assert_eq!(remote(m, p), 403, "{m} {p} from {ns_b}");
    }
    assert!(t.child.try_wait().expect("try_wait").is_none(), "a remote POST /shutdown stopped tandem");
    // The same endpoints answer loopback callers in tandem's own namespace.
    assert_eq!(local("GET", "/config"), 200);
    assert_eq!(local("GET", "/log-level"), 200);
    assert_eq!(local("POST", "/reopen-logs"), 200);
    assert_eq!(local("POST", "/shutdown"), 200);
    assert!(t.wait_exit(Duration::from_secs(20)).success());
}
